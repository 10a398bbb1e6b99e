"""Protocol 2c: spatially varying defocus, restored by map-driven deconvolution; plus speed.

Run from the repository root::

    python benchmarks/defocus_benchmark.py            # full run (about 10 min on 2 cores)
    python benchmarks/defocus_benchmark.py --quick    # 2 images, 1 draw, no speed: a smoke test

What it does (``shared/eval/README.md``, protocols 2c and 5), on the EVAL split only:

- images ``camera``, ``text``, ``cell``, ``hubble_deep_field``, ``retina``,
  ``rocket``, ``brick`` (grayscale [0, 1]), centre crops of at most
  ``--max-size`` (320) px, leaving room for the largest kernel's real-boundary
  context;
- blur maps of two kinds, levels in [0, 6] px (PSF standard deviation,
  :func:`psf_blur_level`): a smooth random field (bicubic from a coarse random
  grid of 3-8 nodes, between two levels drawn in [0, 6]) and piecewise-constant
  regions (2-6 Voronoi cells, one level each); Gaussian and disk defocus
  (Gaussian sigma = level, disk radius = 2 x level), ``--draws`` (2) cases
  each, fixed seeds;
- the blur is made with REAL boundaries: every level's kernel blurs a crop
  larger than the output (``mode="valid"``); a field's pixel mixes the two
  fine-grid levels (0.25 px apart) around its level, linearly in variance; a
  Voronoi cell takes its own level's blur; then Gaussian noise of variance
  drawn in [0, 10] on a 0..255 scale (protocol 1's noise);
- rows: the blurred input; GWIS driven by the estimated map; Wiener-net with
  the best single constant defocus kernel of the true shape (levels 0.5-6 px,
  chosen per case by PSNR against the sharp image: an oracle); map-driven
  deconvolution (``deblur_defocus``) with the estimated map; the same with the
  true map. The PSF model handed to ``deblur_defocus`` is the true blur shape; two
  more rows hand it the other shape (disk for Gaussian blur and the reverse), with the
  estimated and the true map: what a user who picked the wrong shape gets;
- outputs clipped to [0, 1]; PSNR (peak 1) and SSIM excluding a border of
  :data:`BORDER` px (the largest disk's width);
- speed: a 1024 x 1024 grayscale plane (retina) under a smooth Gaussian field
  of 0-6 px: ``estimate_blur_map`` and ``deblur_defocus(image, map)`` each
  against ``skimage.restoration.richardson_lucy(num_iter=30)`` with the
  Gaussian PSF of the map's median level, interleaved in the same run, median
  of three, as ratios.

Nothing is tuned on these images: the bank of kernels, the blending and the
networks were chosen on training images. Results: printed as Markdown and
written to ``benchmarks/results/defocus.md`` and ``.csv`` (``--quick`` writes
``defocus_quick.*``).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import eval_data as ed  # noqa: E402

from napari_deblur import engine  # noqa: E402
from napari_deblur.engine.methods.defocus_deblur import defocus_psf  # noqa: E402

log = logging.getLogger("defocus_benchmark")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MAX_LEVEL = 6.0
FINE_STEP = 0.25
FINE_LEVELS = np.arange(0.0, MAX_LEVEL + FINE_STEP / 2, FINE_STEP)
"""Levels (px) blurred with real boundaries; a smooth field mixes neighbours of this grid."""
BLUR_KINDS = ("gaussian", "disk")
MAP_KINDS = ("field", "regions")
NOISE_VARIANCE_RANGE = (0.0, 10.0)  # on a 0..255 scale
CONSTANT_LEVELS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0)
"""The oracle's grid of constant defocus levels (px)."""
BORDER = 25
"""Pixels excluded on every side when scoring (the side of a disk of level 6)."""

METHODS = {
    "blurred": "Blurred + noisy input",
    "gwis_map": "GWIS, estimated map",
    "constant_oracle": "Wiener-net, best constant kernel (oracle)",
    "map_estimated": "Map-driven deconvolution, estimated map",
    "map_true": "Map-driven deconvolution, true map",
    "map_estimated_other_shape": "Map-driven, estimated map, the other PSF shape",
    "map_true_other_shape": "Map-driven, true map, the other PSF shape",
}


@dataclasses.dataclass
class Result:
    image: str
    blur: str
    map_kind: str
    draw: int
    method: str
    psnr: float
    ssim: float
    detail: str = ""


def margin() -> int:
    """Real-boundary context (px) the largest kernel needs."""
    return max(defocus_psf(kind, MAX_LEVEL).shape[0] for kind in BLUR_KINDS) // 2 + 1


def level_map(kind: str, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A map of blur levels in [0, :data:`MAX_LEVEL`] px: a smooth field or Voronoi regions."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    if kind == "field":
        from scipy.interpolate import RectBivariateSpline

        nodes = int(rng.integers(3, 9))
        coarse = rng.normal(size=(nodes, nodes))
        grid = np.linspace(0, 1, nodes)
        degree = min(3, nodes - 1)
        spline = RectBivariateSpline(grid, grid, coarse, kx=degree, ky=degree)
        smooth = spline(np.linspace(0, 1, shape[0]), np.linspace(0, 1, shape[1]))
        smooth = (smooth - smooth.min()) / max(float(np.ptp(smooth)), 1e-9)
        low, high = sorted(rng.uniform(0.0, MAX_LEVEL, 2))
        return low + (high - low) * smooth
    count = int(rng.integers(2, 7))
    seeds = rng.uniform(0, 1, (count, 2)) * np.array(shape)
    distance = (rows[None] - seeds[:, 0, None, None]) ** 2 + (cols[None] - seeds[:, 1, None, None]) ** 2
    return rng.uniform(0.0, MAX_LEVEL, count)[np.argmin(distance, axis=0)]


def blur_by_map(source: np.ndarray, out_shape, levels: np.ndarray, blur: str, map_kind: str) -> tuple:
    """``(blurred, sharp)``: ``source``'s central window blurred per pixel by ``levels`` (real boundaries)."""
    if map_kind == "regions":
        blurred = np.zeros(out_shape)
        sharp = None
        for level in np.unique(levels):
            one, sharp = ed.blur_real_boundary(source, defocus_psf(blur, float(level)), out_shape)
            inside = levels == level
            blurred[inside] = one[inside]
        return blurred, sharp
    stack, sharp = [], None
    for level in FINE_LEVELS:
        one, sharp = ed.blur_real_boundary(source, defocus_psf(blur, float(level)), out_shape)
        stack.append(one)
    stack = np.stack(stack)
    position = np.clip(levels / FINE_STEP, 0, len(FINE_LEVELS) - 1 - 1e-9)
    lower = np.floor(position).astype(int)
    low, high = FINE_LEVELS[lower], FINE_LEVELS[lower + 1]
    share = np.clip((levels**2 - low**2) / (high**2 - low**2), 0, 1)
    rows, cols = np.indices(out_shape)
    return (1 - share) * stack[lower, rows, cols] + share * stack[lower + 1, rows, cols], sharp


def score(estimate: np.ndarray, sharp: np.ndarray) -> tuple[float, float]:
    clipped = np.clip(estimate, 0.0, 1.0)
    return (
        ed.psnr_excluding_border(clipped, sharp, BORDER),
        ed.ssim_excluding_border(clipped, sharp, BORDER),
    )


def run_case(name: str, source: np.ndarray, out_shape, blur: str, map_kind: str, draw: int) -> list[Result]:
    rng = ed.case_rng("defocus", name, blur, map_kind, draw)
    truth = level_map(map_kind, out_shape, rng)
    blurred, sharp = blur_by_map(source, out_shape, truth, blur, map_kind)
    variance = rng.uniform(*NOISE_VARIANCE_RANGE)
    observed = ed.add_gaussian_noise(blurred, np.sqrt(variance) / 255.0, rng).astype(np.float32)
    results = []

    def add(method, estimate, detail=""):
        p, s = score(estimate, sharp)
        results.append(Result(name, blur, map_kind, draw, method, p, s, detail))

    add("blurred", observed, f"noise variance {variance:.2f}")
    estimated = engine.estimate_blur_map(observed)
    add("gwis_map", engine.sharpen_gwis(observed, estimated))
    best = None
    for level in CONSTANT_LEVELS:
        restored = engine.wiener_net_deconvolve(observed, defocus_psf(blur, level))
        p, s = score(restored, sharp)
        if best is None or p > best[0]:
            best = (p, s, level)
    results.append(
        Result(name, blur, map_kind, draw, "constant_oracle", best[0], best[1], f"level {best[2]:g}")
    )
    add("map_estimated", engine.deblur_defocus(observed, estimated, psf_model=blur))
    add("map_true", engine.deblur_defocus(observed, truth.astype(np.float32), psf_model=blur))
    error = np.sqrt(np.mean((estimated - truth)[BORDER:-BORDER, BORDER:-BORDER] ** 2))
    results[-2].detail = f"map RMSE {error:.2f} px"
    other = next(kind for kind in BLUR_KINDS if kind != blur)  # a user who picked the wrong shape
    add("map_estimated_other_shape", engine.deblur_defocus(observed, estimated, psf_model=other), other)
    add(
        "map_true_other_shape",
        engine.deblur_defocus(observed, truth.astype(np.float32), psf_model=other),
        other,
    )
    return results


def quality_tables(results: list[Result]) -> tuple[str, dict]:
    lines = []
    groups = [("all cases", None), ("without cell", "no cell")]
    groups += [(f"{b}, {m}", (b, m)) for b in BLUR_KINDS for m in MAP_KINDS]

    def keep(result: Result, group) -> bool:
        if group == "no cell":  # out of focus as photographed: the map reads its own blur too
            return result.image != "cell"
        return group is None or (result.blur, result.map_kind) == group

    summary = {}
    lines.append("| method | " + " | ".join(g for g, _ in groups) + " | worst gain over input (dB) |")
    lines.append("|---|" + "---:|" * (len(groups) + 1))
    by_case = defaultdict(dict)
    for r in results:
        by_case[(r.image, r.blur, r.map_kind, r.draw)][r.method] = r
    for method, label in METHODS.items():
        cells = []
        for group, shape_and_map in groups:
            chosen = [r for r in results if r.method == method and keep(r, shape_and_map)]
            psnr, ssim = np.mean([r.psnr for r in chosen]), np.mean([r.ssim for r in chosen])
            cells.append(f"{psnr:.2f} / {ssim:.3f}")
            summary[(method, group)] = (float(psnr), float(ssim), len(chosen))
        worst = min(case[method].psnr - case["blurred"].psnr for case in by_case.values())
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {worst:+.2f} |")
    cases = len(by_case)
    lines.insert(
        0,
        f"Mean PSNR (dB) / SSIM over {cases} cases; then without `cell` (out of focus as photographed, "
        "so an estimated map also reads the blur it already had), and by blur shape and map kind.\n",
    )
    return "\n".join(lines), summary


def per_image_table(results: list[Result]) -> str:
    lines = [
        "| image | blurred | GWIS, map | constant (oracle) | estimated map | true map "
        "| estimated map, other shape | true map, other shape |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in dict.fromkeys(r.image for r in results):
        cells = [np.mean([r.psnr for r in results if r.image == name and r.method == m]) for m in METHODS]
        lines.append(f"| {name} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    return "\n".join(lines)


def bars(summary: dict) -> str:
    def mean(method):
        return summary[(method, "all cases")][0]

    estimated = mean("map_estimated")
    checks = [  # on all cases, cell included
        ("estimated map - best constant kernel >= +1 dB", estimated - mean("constant_oracle"), 1.0),
        ("estimated map - GWIS with the map >= +2 dB", estimated - mean("gwis_map"), 2.0),
        ("estimated map - true map >= -1 dB", estimated - mean("map_true"), -1.0),
    ]
    lines = ["| bar | measured (dB) | met |", "|---|---:|---|"]
    for label, value, bar in checks:
        lines.append(f"| {label} | {value:+.2f} | {'yes' if value >= bar else 'no'} |")
    return "\n".join(lines)


def _median_ratio(job, reference, repeats: int) -> tuple[float, float, float]:
    job_times, reference_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        job()
        job_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        reference()
        reference_times.append(time.perf_counter() - start)
    job_time, reference_time = float(np.median(job_times)), float(np.median(reference_times))
    return job_time, reference_time, job_time / reference_time


def speed_section(repeats: int) -> str:
    from skimage.restoration import richardson_lucy

    source = ed.load_eval_image("retina")
    shape = (1024, 1024)
    rng = ed.case_rng("defocus-speed")
    truth = level_map("field", shape, rng)
    blurred, _ = blur_by_map(source, shape, truth, "gaussian", "field")
    observed = ed.add_gaussian_noise(blurred, 2.0 / 255.0, rng).astype(np.float32)
    estimated = engine.estimate_blur_map(observed)
    median_level = float(np.median(estimated))
    kernel = defocus_psf("gaussian", median_level)
    engine.deblur_defocus(observed[:256, :256], estimated[:256, :256])  # warm-up

    def rl():
        richardson_lucy(np.clip(observed, 0, 1), kernel, num_iter=30)

    rows = [
        ("`estimate_blur_map`", lambda: engine.estimate_blur_map(observed)),
        ("`deblur_defocus(image, map)`", lambda: engine.deblur_defocus(observed, estimated)),
        ("`deblur_defocus(image)` (map included)", lambda: engine.deblur_defocus(observed)),
    ]
    lines = [
        f"1024 x 1024 grayscale (retina), Gaussian field of {truth.min():.1f}-{truth.max():.1f} px; the map "
        f"spans {estimated.min():.2f}-{estimated.max():.2f} px. Reference: `richardson_lucy(num_iter=30)` with "
        f"the Gaussian of the map's median level ({median_level:.2f} px, {kernel.shape[0]} px kernel), called "
        f"alternately, median of {repeats}.",
        "",
        "| job | time (s) | RL(30) (s) | ratio | bar |",
        "|---|---:|---:|---:|---|",
    ]
    for label, job in rows:
        job_time, rl_time, ratio = _median_ratio(job, rl, repeats)
        bar = "" if "included" in label else ("<= 1.0 (met)" if ratio <= 1.0 else "<= 1.0 (not met)")
        lines.append(f"| {label} | {job_time:.2f} | {rl_time:.2f} | {ratio:.2f} | {bar} |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", nargs="+", default=list(ed.EVAL_IMAGES))
    parser.add_argument("--max-size", type=int, default=320)
    parser.add_argument("--draws", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--quick", action="store_true", help="2 images, 1 draw, no speed")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if args.quick:
        args.images, args.draws, args.no_speed = args.images[:2], 1, True
    results = []
    context = margin()
    for name in args.images:
        source = ed.load_eval_image(name)
        out_shape = ed.eval_crop_shape(source.shape, args.max_size, context)
        for blur in BLUR_KINDS:
            for map_kind in MAP_KINDS:
                for draw in range(args.draws):
                    case = run_case(name, source, out_shape, blur, map_kind, draw)
                    results.extend(case)
                    log.info(
                        "%s %s %s %d: %s",
                        name,
                        blur,
                        map_kind,
                        draw,
                        ", ".join(f"{r.method} {r.psnr:.2f}" for r in case),
                    )
    table, summary = quality_tables(results)
    sections = [
        "# Spatially varying defocus (protocol 2c, eval split)",
        "",
        f"Command: `{ed.command_line('benchmarks/defocus_benchmark.py', argv)}`",
        "",
        ed.environment_line(),
        "",
        f"Images {', '.join(args.images)}; centre crops of at most {args.max_size} px; blur maps in [0, "
        f"{MAX_LEVEL:g}] px (smooth random fields; 2-6 Voronoi regions), Gaussian and disk defocus, real "
        f"boundaries, Gaussian noise of variance U[0, 10] on 0..255; {args.draws} draw(s) per image, shape "
        f"and map kind. Outputs clipped to [0, 1]; PSNR/SSIM exclude {BORDER} px on every side.",
        "",
        table,
        "",
        "Per image, mean PSNR (dB):",
        "",
        per_image_table(results),
        "",
        bars(summary),
    ]
    if not args.no_speed:
        sections += ["", "## Speed (1 MP, CPU)", "", speed_section(args.repeats)]
    report = "\n".join(sections) + "\n"
    print(report)
    stem = "defocus_quick" if args.quick else "defocus"
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / f"{stem}.md").write_text(report)
    with open(RESULTS_DIR / f"{stem}.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([f.name for f in dataclasses.fields(Result)])
        for r in results:
            writer.writerow([getattr(r, f.name) for f in dataclasses.fields(Result)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
