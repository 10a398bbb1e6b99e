"""Protocol 1 (Nasonov, Krylov & Lyukov, Table 1) for the GWIS sharpener, plus speed.

Run from the repository root::

    python benchmarks/gwis_benchmark.py            # full run (about 5-10 min on 2 cores)
    python benchmarks/gwis_benchmark.py --quick    # 2 images, smoke test

What it does (``shared/eval/README.md``, protocols 1 and 5), on the EVAL split only:

- images ``camera``, ``text``, ``cell``, ``hubble_deep_field``, ``retina``,
  ``rocket``, ``brick`` (grayscale [0, 1], colour -> luminance), centre crop
  of at most ``--max-size`` (256) px per side to bound the run time, leaving
  room for the largest kernel's real-boundary context;
- for each image and each blur type (Gaussian, disk, ring; levels in the
  project's unit, :func:`psf_blur_level`) ``--draws`` (2) cases with a blur
  level drawn uniformly in [0, 6] px and a Gaussian noise variance drawn
  uniformly in [0, 10] on a 0..255 scale (fixed seed per case, not clipped);
  REAL boundaries (a larger crop convolved with ``mode="valid"``);
- methods: the blurred input; GWIS with the oracle constant parameter (the
  blur level handed to ``sharpen_gwis`` that maximises SSIM, from a grid that
  includes 0 = no change), as in the paper's Table 1; GWIS given the TRUE blur
  level (the study's mapping, no oracle: what a user with a good blur estimate
  gets); ``skimage.filters.unsharp_mask`` with the best SSIM over a grid of
  radius x amount (oracle); Wiener deconvolution with the true PSF at the best
  of the 15 SNRs by SSIM (oracle), and GWIS (oracle) applied after it;
- outputs clipped to [0, 1]; PSNR (peak 1) and SSIM after excluding a border
  as wide as the kernel; mean, gain over the blurred input, worst case;
- speed: 1024 x 1024 grayscale on the CPU at blur levels 1, 2, 4, 6 px,
  ``sharpen_gwis`` vs ``skimage.restoration.richardson_lucy(num_iter=30)`` with
  the matching Gaussian PSF on the same image, called alternately in the same
  run, as a RATIO; with torch's default threads and with 1 thread.

The GWIS mapping (blur level -> warp scale) was fitted on the training split
(``benchmarks/gwis_oracle_study.py``); nothing here is tuned on these images
except the oracles, which are labelled as such.

Results: printed as Markdown and written to ``benchmarks/results/gwis_benchmark.md``
and ``.csv`` (``--quick`` writes ``gwis_benchmark_quick.*``).
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
from gwis_oracle_study import BLUR_TYPES, make_psf  # noqa: E402

from napari_deblur.engine.methods.gwis import sharpen_gwis  # noqa: E402  (not yet exported by engine)

log = logging.getLogger("gwis_benchmark")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
LEVEL_RANGE = (0.0, 6.0)
NOISE_VARIANCE_RANGE = (0.0, 10.0)  # on a 0..255 scale
#: Oracle grid for GWIS: the blur level handed to sharpen_gwis (0 = leave the image as it is).
GWIS_GRID = (0.0, 0.5, 0.7, 1.0, 1.4, 2.0, 2.8, 4.0, 5.6)
USM_RADII = (0.5, 1.0, 2.0, 3.0, 5.0, 8.0)
USM_AMOUNTS = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0)
SPEED_LEVELS = (1.0, 2.0, 4.0, 6.0)

METHODS = {
    "blurred": "Blurred + noisy input",
    "gwis_oracle": "GWIS, oracle constant parameter (SSIM)",
    "gwis_true": "GWIS, true blur level (study mapping, no oracle)",
    "usm_oracle": "Unsharp mask, oracle radius x amount or none (SSIM)",
    "wiener_oracle": "Wiener (true PSF), oracle SNR (SSIM)",
    "wiener_gwis": "Wiener oracle + GWIS oracle",
}


@dataclasses.dataclass
class Result:
    image: str
    blur_type: str
    level: float
    noise_variance: float
    method: str
    psnr: float
    ssim: float
    choice: str = ""


def score(estimate, sharp, border):
    est = np.clip(np.asarray(estimate, np.float64), 0.0, 1.0)
    return ed.psnr_excluding_border(est, sharp, border), ed.ssim_excluding_border(est, sharp, border)


def best_by_ssim(candidates, sharp, border):
    """(psnr, ssim, label) of the candidate ``(label, image)`` with the highest SSIM."""
    best = None
    for label, estimate in candidates:
        psnr, ssim = score(estimate, sharp, border)
        if best is None or ssim > best[1]:
            best = (psnr, ssim, label)
    return best


def gwis_candidates(engine, image):
    for level in GWIS_GRID:
        yield f"{level:g}", sharpen_gwis(image, level)


def run_case(engine, name, source, out_shape, blur_type, draw) -> list[Result]:
    from skimage.filters import unsharp_mask

    rng = ed.case_rng("gwis-benchmark", name, blur_type, draw)
    level = float(rng.uniform(*LEVEL_RANGE))
    variance = float(rng.uniform(*NOISE_VARIANCE_RANGE))
    # Below 0.1 px the blur is nil (and the disk/ring builders have no pixel left): identity kernel.
    psf = make_psf(engine, blur_type, level).astype(np.float64) if level >= 0.1 else np.ones((1, 1))
    blurred, sharp = ed.blur_real_boundary(source, psf, out_shape)
    observed = ed.add_gaussian_noise(blurred, np.sqrt(variance) / 255.0, rng).astype(np.float32)
    border = max(psf.shape[0], 1)
    true_level = engine.psf_blur_level(psf)
    common = dict(image=name, blur_type=blur_type, level=true_level, noise_variance=variance)
    results = []

    def add(method, psnr, ssim, choice=""):
        results.append(Result(method=method, psnr=psnr, ssim=ssim, choice=choice, **common))

    add("blurred", *score(observed, sharp, border))
    add("gwis_oracle", *best_by_ssim(gwis_candidates(engine, observed), sharp, border))
    add("gwis_true", *score(sharpen_gwis(observed, true_level), sharp, border))
    # The identity is a candidate, as level 0 is in the GWIS grid.
    usm = [("none", observed)]
    usm += [
        (f"r{r:g} a{a:g}", unsharp_mask(observed, radius=r, amount=a, preserve_range=True))
        for r in USM_RADII
        for a in USM_AMOUNTS
    ]
    add("usm_oracle", *best_by_ssim(usm, sharp, border))
    snrs = list(engine.WIENER_STACK_SNRS_DB)
    stack = engine.wiener_deconvolve_snr_stack(observed, psf.astype(np.float32), snrs)
    w_psnr, w_ssim, w_label = best_by_ssim(((f"{s:g} dB", est) for s, est in zip(snrs, stack)), sharp, border)
    add("wiener_oracle", w_psnr, w_ssim, w_label)
    restored = stack[snrs.index(float(w_label.split()[0]))]
    add("wiener_gwis", *best_by_ssim(gwis_candidates(engine, restored), sharp, border))
    return results


def quality_tables(results: list[Result]) -> str:
    by_method = defaultdict(list)
    for r in results:
        by_method[r.method].append(r)
    base = {(r.image, r.blur_type, r.level, r.noise_variance): r for r in by_method["blurred"]}
    n_cases = len(base)
    lines = [
        f"### All cases ({n_cases}: images x blur types x draws; level U[0, 6] px, noise variance "
        "U[0, 10] on 0..255)",
        "",
        "| method | mean PSNR (dB) | mean SSIM | PSNR gain (dB) | SSIM gain | worst PSNR gain (dB) "
        "| worst SSIM gain | worst case (SSIM gain) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for method, label in METHODS.items():
        rs = by_method[method]
        ref = [base[(r.image, r.blur_type, r.level, r.noise_variance)] for r in rs]
        dpsnr = np.array([r.psnr - b.psnr for r, b in zip(rs, ref)])
        dssim = np.array([r.ssim - b.ssim for r, b in zip(rs, ref)])
        worst = rs[int(np.argmin(dssim))]
        lines.append(
            f"| {label} | {np.mean([r.psnr for r in rs]):.2f} | {np.mean([r.ssim for r in rs]):.4f} | "
            f"{dpsnr.mean():+.2f} | {dssim.mean():+.4f} | {dpsnr.min():+.2f} | {dssim.min():+.4f} | "
            f"{worst.image}, {worst.blur_type} {worst.level:.2f} px |"
        )
    lines += [
        "",
        "Paper (Table 1, its own test set): blurred 24.87 dB / 0.7022, GWIS oracle 25.22 / "
        "0.7207 (+0.35 dB, +0.0185).",
        "",
    ]
    # Per blur type, GWIS only.
    lines += [
        "### Per blur type: mean gain over the blurred input (PSNR dB / SSIM)",
        "",
        "| blur | cases | " + " | ".join(METHODS[m] for m in METHODS if m != "blurred") + " |",
        "|---|---:|" + "---:|" * (len(METHODS) - 1),
    ]
    for blur_type in BLUR_TYPES:
        cells = []
        for method in METHODS:
            if method == "blurred":
                continue
            rs = [r for r in by_method[method] if r.blur_type == blur_type]
            ref = [base[(r.image, r.blur_type, r.level, r.noise_variance)] for r in rs]
            cells.append(
                f"{np.mean([r.psnr - b.psnr for r, b in zip(rs, ref)]):+.2f} / "
                f"{np.mean([r.ssim - b.ssim for r, b in zip(rs, ref)]):+.4f}"
            )
        n = len([r for r in by_method["blurred"] if r.blur_type == blur_type])
        lines.append(f"| {blur_type} | {n} | " + " | ".join(cells) + " |")
    lines.append("")
    extra = by_method["wiener_gwis"]
    wien = {(r.image, r.blur_type, r.level, r.noise_variance): r for r in by_method["wiener_oracle"]}
    d_psnr = [r.psnr - wien[(r.image, r.blur_type, r.level, r.noise_variance)].psnr for r in extra]
    d_ssim = [r.ssim - wien[(r.image, r.blur_type, r.level, r.noise_variance)].ssim for r in extra]
    used = sum(1 for r in extra if r.choice != "0")
    lines += [
        f"GWIS after Wiener (paper, Fig. 10): extra gain {np.mean(d_psnr):+.2f} dB / "
        f"{np.mean(d_ssim):+.4f} SSIM on average (worst {min(d_psnr):+.2f} dB / {min(d_ssim):+.4f}); "
        f"the oracle applied GWIS (parameter > 0) in {used}/{len(extra)} cases.",
        "",
        "GWIS oracle parameter picks (blur level handed to sharpen_gwis): "
        + ", ".join(
            f"{k}: {v}"
            for k, v in sorted(
                _count(r.choice for r in by_method["gwis_oracle"]).items(), key=lambda kv: float(kv[0])
            )
        ),
        "",
    ]
    return "\n".join(lines)


def _count(items):
    counts = defaultdict(int)
    for item in items:
        counts[item] += 1
    return counts


def _interleaved_ratio(gwis_fn, rl_fn, pairs):
    """Median GWIS time / median RL time over ``pairs`` alternating calls (GWIS, RL, GWIS, ...)."""
    t_gwis, t_rl = [], []
    for _ in range(pairs):
        for fn, times in ((gwis_fn, t_gwis), (rl_fn, t_rl)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return float(np.median(t_gwis)) / float(np.median(t_rl)), float(np.median(t_gwis))


def speed_section(engine, pairs) -> str:
    import os

    import torch
    from skimage.restoration import richardson_lucy

    from napari_deblur.engine.methods import gwis

    source = ed.load_eval_image("retina")
    threads = torch.get_num_threads()
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    lines = [
        "### Speed: 1024x1024 grayscale (retina luminance, Gaussian blur, noise 2.55/255), CPU",
        "",
        f"`sharpen_gwis` and `richardson_lucy(num_iter=30, clip=False)` with the same Gaussian PSF, "
        f"called alternately {pairs} times each after one warm-up call; ratio = median GWIS time / "
        "median RL time in the same run (bar: <= 0.5; lower is faster). GWIS with torch's default "
        f"threads ({threads}) and with 1 thread (RL runs single-threaded in both). Load average "
        f"at the start: {load} on {os.cpu_count()} CPUs (with other load, torch's multi-threaded "
        "kernels wait for each other at every small operation and the default-threads column "
        "inflates; the 1-thread column much less).",
        "",
        "| blur level (px) | warp scale (px) | field grid step (px) | edge points | "
        f"GWIS / RL(30), {threads} threads | GWIS / RL(30), 1 thread | GWIS time, 1 thread (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for level in SPEED_LEVELS:
        psf = engine.gaussian_psf(level)
        blurred, _ = ed.blur_real_boundary(source, psf.astype(np.float64), (1024, 1024))
        observed = ed.add_gaussian_noise(blurred, 2.55 / 255, ed.case_rng("gwis-speed", level))
        observed = observed.astype(np.float32)

        def run_gwis(observed=observed, level=level):
            sharpen_gwis(observed, level, device="cpu")

        def run_rl(observed=observed, psf=psf):
            richardson_lucy(observed.clip(0, None), psf, num_iter=30, clip=False)

        run_gwis()  # warm-up
        ratio_default, _ = _interleaved_ratio(run_gwis, run_rl, pairs)
        torch.set_num_threads(1)
        try:
            run_gwis()
            ratio_single, seconds_single = _interleaved_ratio(run_gwis, run_rl, pairs)
        finally:
            torch.set_num_threads(threads)
        scale = gwis.warp_scale_for_level(level)
        n_edges = gwis.gwis_field_of(observed, level).edges.row.numel()
        lines.append(
            f"| {level:g} | {scale:.2f} | {gwis.coarse_factor(scale):.2f} | {n_edges} | "
            f"{ratio_default:.2f} | {ratio_single:.2f} | {seconds_single:.2f} |"
        )
    lines.append("")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="2 images, 1 draw, fewer repeats")
    parser.add_argument(
        "--max-size", type=int, default=256, help="largest output side in pixels (centre crop; default 256)"
    )
    parser.add_argument(
        "--draws", type=int, default=2, help="random (level, noise) cases per image and blur type (default 2)"
    )
    parser.add_argument("--no-speed", action="store_true", help="skip the speed section")
    parser.add_argument(
        "--quality-threads",
        type=int,
        default=1,
        help="torch threads for the quality cases (default 1: on a shared machine "
        "more threads wait for each other; the scores do not depend on it "
        "beyond float round-off). The speed section uses torch's default.",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    command = ed.command_line("benchmarks/gwis_benchmark.py", argv)
    import torch

    from napari_deblur import engine
    from napari_deblur.engine.methods import gwis

    torch.set_grad_enabled(False)
    default_threads = torch.get_num_threads()
    torch.set_num_threads(args.quality_threads)
    images = list(ed.EVAL_IMAGES[:2] if args.quick else ed.EVAL_IMAGES)
    draws = 1 if args.quick else args.draws
    margin = max(make_psf(engine, t, LEVEL_RANGE[1]).shape[0] for t in BLUR_TYPES) // 2
    header = [
        f"Command: `{command}`",
        "",
        ed.environment_line(),
        "",
        f"Protocol 1 of shared/eval/README.md on the EVAL split: {', '.join(images)} (grayscale "
        f"[0, 1], centre crop of at most {args.max_size} px, {margin} px kept for the real-boundary "
        f"context). Blur: {', '.join(BLUR_TYPES)}; {draws} draw(s) per image and type of a level "
        f"U{list(LEVEL_RANGE)} px and a noise variance U{list(NOISE_VARIANCE_RANGE)} (0..255 scale), "
        "fixed seeds. Outputs clipped to [0, 1]; PSNR/SSIM exclude a border as wide as the kernel. "
        f"GWIS mapping: warp scale = {gwis.WARP_SCALE_SLOPE:g} * level + {gwis.WARP_SCALE_OFFSET:g} "
        "px (training-split study). Oracles pick by SSIM per case. Quality cases run with "
        f"{args.quality_threads} torch thread(s).",
        "",
    ]
    print("\n".join(header), flush=True)
    results: list[Result] = []
    t0 = time.perf_counter()
    for name in images:
        source = ed.load_eval_image(name)
        out_shape = ed.eval_crop_shape(source.shape, args.max_size, margin)
        for blur_type in BLUR_TYPES:
            for draw in range(draws):
                results += run_case(engine, name, source, out_shape, blur_type, draw)
        log.info("%s %s done (%.0f s)", name, out_shape, time.perf_counter() - t0)
    sections = [quality_tables(results)]
    print(sections[-1], flush=True)
    if not args.no_speed:
        log.info("timing ...")
        torch.set_num_threads(default_threads)
        sections.append(speed_section(engine, 2 if args.quick else 3))
        print(sections[-1], flush=True)

    args.results_dir.mkdir(parents=True, exist_ok=True)
    stem = "gwis_benchmark_quick" if args.quick else "gwis_benchmark"
    md_path = args.results_dir / f"{stem}.md"
    md_path.write_text(
        "# GWIS sharpener (protocol 1, eval split)\n\n" + "\n".join(header) + "\n" + "\n".join(sections)
    )
    csv_path = args.results_dir / f"{stem}.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        names = [fld.name for fld in dataclasses.fields(Result)]
        writer.writerow(names)
        for r in results:
            writer.writerow([getattr(r, n) for n in names])
    print(f"Wrote {md_path} and {csv_path} ({time.perf_counter() - t0:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
