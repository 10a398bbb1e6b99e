"""Oracle study on the TRAINING split: which GWIS warp scale suits which blur level?

Run from the repository root::

    python benchmarks/gwis_oracle_study.py            # full study (a few minutes on 2 cores)
    python benchmarks/gwis_oracle_study.py --quick    # 2 images, smoke test

For every training image (scikit-image ``astronaut``, ``chelsea``, ``coffee``,
``coins``, ``immunohistochemistry``, ``microaneurysms``, ``moon``, ``page``,
``grass``, ``gravel``, plus two procedural dead-leaves images; grayscale in
[0, 1], centre crop of at most ``--max-size`` px), for Gaussian, disk and ring
blur (Nasonov, Krylov & Lyukov, section 3) at blur levels 0.5 .. 6 px (the
project's unit, :func:`psf_blur_level`), with Gaussian noise of a variance
drawn uniformly in [0, 10] on a 0..255 scale (fixed seed per case) and REAL
boundaries, GWIS is run with a grid of constant warp scales ``sigma_p``; the
one with the best SSIM (a border of half the kernel size excluded) is the oracle
pick. A line ``sigma_p = a * level + b`` is fitted to the picks by least
squares on relative errors (weights ``1 / level^2``: the paper notes that the
quality loss follows the relative, not the absolute, parameter error), and
the fitted mapping is scored against the oracle on the same training cases.

The eval split is never touched here. The constants ``WARP_SCALE_SLOPE`` and
``WARP_SCALE_OFFSET`` in ``napari_deblur/engine/gwis.py`` come from this
script's output, ``benchmarks/results/gwis_oracle_study.md``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import eval_data as ed  # noqa: E402

log = logging.getLogger("gwis_oracle_study")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TRAIN_IMAGES = (
    "astronaut",
    "chelsea",
    "coffee",
    "coins",
    "immunohistochemistry",
    "microaneurysms",
    "moon",
    "page",
    "grass",
    "gravel",
)
PROCEDURAL = ("dead_leaves_1", "dead_leaves_2")
LEVELS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0)
BLUR_TYPES = ("gaussian", "disk", "ring")
NOISE_VARIANCE_RANGE = (0.0, 10.0)  # on a 0..255 scale
#: Candidate warp scales: geometric grid, 20 % apart; each case uses those in [0.5, 3.5] x level, up to 16 px.
SCALE_GRID = tuple(round(0.2 * 1.2**k, 3) for k in range(30))
SCALE_RANGE = (0.5, 3.5)
#: Smallest side (px) of the scored region; smaller cases are skipped and listed.
MIN_SCORED = 32
MAX_SCALE = 16.0


def dead_leaves(size: int, seed: int, n_disks: int = 3000) -> np.ndarray:
    """Procedural dead-leaves image: opaque disks of random grey, power-law radii, in [0, 1]."""
    rng = np.random.default_rng(seed)
    image = np.full((size, size), rng.uniform(), dtype=np.float64)
    rows, cols = np.mgrid[:size, :size]
    r_min, r_max = 2.0, size / 5.0
    # Radii with density ~ r^-3 (scale invariance), sampled by inverting the CDF.
    u = rng.uniform(size=n_disks)
    radii = 1.0 / np.sqrt(1.0 / r_min**2 - u * (1.0 / r_min**2 - 1.0 / r_max**2))
    for radius in radii[::-1]:  # later disks lie on top; biggest drawn first
        cy, cx = rng.uniform(-radius, size + radius, size=2)
        mask = (rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2
        image[mask] = rng.uniform()
    return image


def load_train_image(name: str) -> np.ndarray:
    """A training image as grayscale float64 in [0, 1] (never an eval image)."""
    if name in ed.EVAL_IMAGES:
        raise ValueError(f"{name!r} is an eval-split image; the study uses the training split only")
    if name in PROCEDURAL:
        return dead_leaves(384, seed=PROCEDURAL.index(name) + 1)
    import skimage.data

    return ed.to_gray_unit(getattr(skimage.data, name)())


def make_psf(engine, blur_type: str, level: float) -> np.ndarray:
    """A PSF of the given type whose blur level (:func:`psf_blur_level`) is ``level``."""
    if blur_type == "gaussian":
        return engine.gaussian_psf(level)
    if blur_type == "disk":
        kernel = engine.disk_psf(2.0 * level)
    else:
        ratio = engine.psf_blur_level(engine.ring_psf(20.0)) / 20.0
        kernel = engine.ring_psf(level / ratio)
    return kernel


@dataclasses.dataclass
class Case:
    image: str
    blur_type: str
    level: float
    true_level: float
    noise_variance: float
    blurred_ssim: float
    blurred_psnr: float
    best_scale: float
    best_ssim: float
    best_psnr: float
    fit_ssim: float = float("nan")
    fit_psnr: float = float("nan")


def sharpen_with_scales(gw, observed: np.ndarray, level: float, scales):
    """GWIS outputs for several constant warp scales, sharing one edge detection."""
    from napari_deblur.engine.core.image_stats import luminance

    x = torch.from_numpy(observed.astype(np.float32))[None, None]
    lum = luminance(x)
    placeholder = torch.ones_like(lum)  # every pixel may hold an edge point
    edges = gw.detect_edge_points(lum, placeholder, gradient_scale=gw.gradient_scale_for_level(level))
    outputs = []
    for scale in scales:
        scaled = dataclasses.replace(edges, scale=torch.full_like(edges.scale, float(scale)))
        field = gw.field_from_edges(scaled, (1,) + observed.shape)
        outputs.append(gw.warp_planes(x, field.inverse)[0, 0].numpy().astype(np.float64))
    return outputs


def score(estimate, sharp, border):
    est = np.clip(estimate, 0.0, 1.0)
    return ed.ssim_excluding_border(est, sharp, border), ed.psnr_excluding_border(est, sharp, border)


def run_case(engine, gw, name, source, out_shape, blur_type, level) -> Case:
    psf = make_psf(engine, blur_type, level).astype(np.float64)
    blurred, sharp = ed.blur_real_boundary(source, psf, out_shape)
    rng = ed.case_rng("gwis-study", name, blur_type, int(round(level * 10)))
    variance = float(rng.uniform(*NOISE_VARIANCE_RANGE))
    observed = ed.add_gaussian_noise(blurred, np.sqrt(variance) / 255.0, rng)
    border = psf.shape[0] // 2  # the real boundary leaves no artefact; half the kernel suffices
    if min(out_shape) - 2 * border < MIN_SCORED:
        return None, None
    blurred_ssim, blurred_psnr = score(observed, sharp, border)
    scales = [s for s in SCALE_GRID if SCALE_RANGE[0] * level <= s <= min(SCALE_RANGE[1] * level, MAX_SCALE)]
    outputs = sharpen_with_scales(gw, observed, level, scales)
    scores = [score(out, sharp, border) for out in outputs]
    best = int(np.argmax([s[0] for s in scores]))
    case = Case(
        name,
        blur_type,
        level,
        engine.psf_blur_level(psf),
        variance,
        blurred_ssim,
        blurred_psnr,
        scales[best],
        scores[best][0],
        scores[best][1],
    )
    return case, (observed, sharp, border)


def fit_line(cases) -> tuple[float, float]:
    """Least squares ``scale = a * level + b`` on relative errors ``(fit - pick) / level``."""
    level = np.array([c.level for c in cases])
    best = np.array([c.best_scale for c in cases])
    design = np.stack([level, np.ones_like(level)], 1) / level[:, None]
    (a, b), *_ = np.linalg.lstsq(design, best / level, rcond=None)
    return float(a), float(b)


def tables(cases, a, b) -> str:
    lines = [
        "### Oracle warp scale per blur type and level (median over images; ratio = scale / level)",
        "",
        "| level (px) | " + " | ".join(f"{t} scale | {t} ratio" for t in BLUR_TYPES) + " | fit a*level+b |",
        "|---:|" + "---:|---:|" * len(BLUR_TYPES) + "---:|",
    ]
    for level in sorted({c.level for c in cases}):
        cells = []
        for t in BLUR_TYPES:
            picks = [c.best_scale for c in cases if c.level == level and c.blur_type == t]
            med = float(np.median(picks)) if picks else float("nan")
            cells.append(f"{med:.2f} | {med / level:.2f}")
        lines.append(f"| {level:g} | " + " | ".join(cells) + f" | {a * level + b:.2f} |")
    lines += [
        "",
        "### SSIM / PSNR on the training cases: blurred, GWIS oracle (best constant scale), "
        "GWIS with the fitted mapping",
        "",
        "| blur | cases | blurred SSIM | oracle SSIM | fitted SSIM | blurred PSNR | oracle PSNR | fitted PSNR |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in (*BLUR_TYPES, "all"):
        rs = [c for c in cases if t in ("all", c.blur_type)]
        lines.append(
            f"| {t} | {len(rs)} | {np.mean([c.blurred_ssim for c in rs]):.4f} | "
            f"{np.mean([c.best_ssim for c in rs]):.4f} | {np.mean([c.fit_ssim for c in rs]):.4f} | "
            f"{np.mean([c.blurred_psnr for c in rs]):.2f} | {np.mean([c.best_psnr for c in rs]):.2f} | "
            f"{np.mean([c.fit_psnr for c in rs]):.2f} |"
        )
    lines.append("")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="2 images, 3 levels: smoke test")
    parser.add_argument(
        "--max-size", type=int, default=128, help="largest output side in pixels (centre crop; default 128)"
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    command = ed.command_line("benchmarks/gwis_oracle_study.py", argv)
    from napari_deblur import engine
    from napari_deblur.engine.methods import gwis as gw

    torch.set_grad_enabled(False)
    images = ["astronaut", "dead_leaves_1"] if args.quick else [*TRAIN_IMAGES, *PROCEDURAL]
    levels = (1.0, 3.0, 6.0) if args.quick else LEVELS
    margin = max(make_psf(engine, t, max(levels)).shape[0] for t in BLUR_TYPES) // 2
    header = [
        f"Command: `{command}`",
        "",
        ed.environment_line(),
        "",
        f"TRAINING split only: {', '.join(images)} (grayscale [0, 1], centre crop of at most "
        f"{args.max_size} px, {margin} px kept for the real-boundary context). Blur: "
        f"{', '.join(BLUR_TYPES)} at levels {', '.join(f'{v:g}' for v in levels)} px; Gaussian noise "
        f"variance uniform in {list(NOISE_VARIANCE_RANGE)} (0..255 scale), fixed seed per case. "
        "Warp-scale grid: 20 % steps within [0.5, 3.5] x level (at most 16 px); pick = best SSIM (border of half the "
        "kernel excluded). Fit: least squares on relative errors.",
        "",
    ]
    print("\n".join(header), flush=True)
    cases: list[Case] = []
    skipped = []  # cases whose scored region would be too small (the 102 px microaneurysms)
    inputs = []  # (observed, sharp, border) per case, to score the fitted mapping afterwards
    t0 = time.perf_counter()
    for name in images:
        source = load_train_image(name)
        out_shape = ed.eval_crop_shape(source.shape, args.max_size, margin)
        for blur_type in BLUR_TYPES:
            for level in levels:
                case, data = run_case(engine, gw, name, source, out_shape, blur_type, level)
                if case is None:
                    skipped.append(f"{name} {blur_type} {level:g}")
                    continue
                cases.append(case)
                inputs.append(data)
        log.info("%s done (%.0f s)", name, time.perf_counter() - t0)

    a, b = fit_line(cases)
    # Score the fitted mapping on the same (training) cases.
    for case, (observed, sharp, border) in zip(cases, inputs):
        out = sharpen_with_scales(gw, observed, case.level, [a * case.level + b])[0]
        case.fit_ssim, case.fit_psnr = score(out, sharp, border)

    per_type = {t: fit_line([c for c in cases if c.blur_type == t]) for t in BLUR_TYPES}
    summary = [
        f"**Fitted mapping (all {len(cases)} cases): warp scale = {a:.3f} * level + {b:+.3f} px.**",
        "",
        "Per blur type: " + "; ".join(f"{t}: {pa:.3f} * level {pb:+.3f}" for t, (pa, pb) in per_type.items()),
        "",
    ]
    if skipped:
        summary += [f"Skipped (scored region under {MIN_SCORED} px): {', '.join(skipped)}.", ""]
    body = "\n".join(summary) + "\n" + tables(cases, a, b)
    print(body, flush=True)

    args.results_dir.mkdir(parents=True, exist_ok=True)
    stem = "gwis_oracle_study_quick" if args.quick else "gwis_oracle_study"
    md_path = args.results_dir / f"{stem}.md"
    md_path.write_text(
        "# GWIS oracle study (training split): blur level -> warp scale\n\n" + "\n".join(header) + "\n" + body
    )
    csv_path = args.results_dir / f"{stem}.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        names = [fld.name for fld in dataclasses.fields(Case)]
        writer.writerow(names)
        for c in cases:
            writer.writerow([getattr(c, n) for n in names])
    print(f"Wrote {md_path} and {csv_path} ({time.perf_counter() - t0:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
