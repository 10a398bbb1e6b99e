"""Region selection where parts of the image mislead the estimator (protocol 4b).

Usage::

    python benchmarks/misleading_regions_benchmark.py [--quick] [--max-size 384]

As protocol 4 (``region_selection_benchmark.py``: every eval-split image, centre
crops of at most 384 px, each of Levin's 8 kernels, real boundaries, 1 % noise,
Wiener-net deconvolution of the whole image, ER up to a shift), with three parts
that fool a whole-image estimate, placed from the case's own fixed seed:

* **clipped highlights**: 10 small lights (radius 1.5-4 px, 3-8 times the top of
  the range) added to the scene before the blur; the observation is clipped to
  [0, 1] after the noise (the lights saturate into blobs, their streaks lost);
* **a large flat area**: a rectangle of 35-45 % of each side set to its mean
  before the blur (a sky, a wall);
* **a patch with another blur**: a rectangle of 25-35 % of each side of the
  observation replaced by the scene blurred with a 15 px linear motion at a
  random angle (a moving object) plus the same noise.

The sharp reference is the scene with its lights and flat area, clipped to [0, 1]. Errors are
counted only where the blur model holds: outside the pasted patch and outside a kernel's reach of a
clipped pixel (those parts are there to mislead the estimate; no kernel restores them, and
counting them would swamp the error with the true kernel that ER divides by).
Kernels are estimated (automatic size) from the whole image, from the region
selector's best window (consensus ranking) and from one random window (192 px).

Writes ``benchmarks/results/misleading_regions.{md,csv}``.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_data as ed
from region_selection_benchmark import (
    CONSENSUS_PSF_SIZE,
    NOISE_SIGMA,
    SUCCESS_ER,
    WINDOW,
    error_upto_shift,
    random_windows,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
STRATEGIES = ("selector (consensus ranking)", "whole image", "random window")
PATCH_MOTION = 15

log = logging.getLogger("misleading_regions")


def _rectangle(shape: tuple[int, int], low: float, high: float, rng) -> tuple[slice, slice]:
    height = int(shape[0] * rng.uniform(low, high))
    width = int(shape[1] * rng.uniform(low, high))
    top = int(rng.integers(0, shape[0] - height + 1))
    left = int(rng.integers(0, shape[1] - width + 1))
    return slice(top, top + height), slice(left, left + width)


def misleading_case(source: np.ndarray, truth: np.ndarray, shape: tuple[int, int], name: str, k: int):
    """``(observed float32, sharp reference, scored pixels, rng)`` for one image and kernel (module doc)."""
    from napari_deblur.engine import motion_psf

    rng = ed.case_rng("misleading-regions", name, k)
    scene = np.array(source, dtype=np.float64, copy=True)
    flat = _rectangle(scene.shape, 0.35, 0.45, rng)
    scene[flat] = scene[flat].mean()
    rows, cols = np.indices(scene.shape)
    for _ in range(10):
        cy, cx = rng.integers(0, scene.shape[0]), rng.integers(0, scene.shape[1])
        radius = rng.uniform(1.5, 4.0)
        scene[(rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2] = rng.uniform(3.0, 8.0)
    blurred, sharp = ed.blur_real_boundary(scene, truth, shape)
    other = motion_psf(PATCH_MOTION, float(rng.uniform(0.0, 180.0)))
    moving, _ = ed.blur_real_boundary(scene, other, shape)
    patch = _rectangle(shape, 0.25, 0.35, rng)
    blurred[patch] = moving[patch]
    noisy = ed.add_gaussian_noise(blurred, NOISE_SIGMA, rng)
    observed = np.clip(noisy, 0.0, 1.0)
    reach = truth.shape[0]
    unmodelled = np.zeros(shape, bool)
    unmodelled[patch] = True
    unmodelled |= noisy >= 1.0
    scored = ~ndi.binary_dilation(unmodelled, structure=np.ones((3, 3), bool), iterations=reach)
    return observed.astype(np.float32), np.clip(sharp, 0.0, 1.0), scored, rng


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 images, 2 kernels")
    parser.add_argument("--max-size", type=int, default=384)
    parser.add_argument("--window", type=int, default=WINDOW)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    command = ed.command_line("benchmarks/misleading_regions_benchmark.py", argv)
    import torch

    from napari_deblur.engine import estimate_psf, kernel_similarity, select_regions, wiener_net_deconvolve

    torch.set_num_threads(args.threads)
    kernels = ed.load_levin_kernels()
    images = ed.EVAL_IMAGES[:2] if args.quick else ed.EVAL_IMAGES
    kernel_ids = range(2) if args.quick else range(len(kernels))
    margin = max(k.shape[0] for k in kernels) // 2
    rows = []
    started = time.perf_counter()
    for name in images:
        source = ed.load_eval_image(name)
        shape = ed.eval_crop_shape(source.shape, args.max_size, margin)
        window = min(args.window, min(shape))
        for k in kernel_ids:
            truth = kernels[k]
            observed, sharp, scored, rng = misleading_case(source, truth, shape, name, k)
            border = truth.shape[0]
            reference_error, reference_psnr = error_upto_shift(
                wiener_net_deconvolve(observed, truth), sharp, border, mask=scored
            )
            best = select_regions(observed, size=window, count=1, psf_size=CONSENSUS_PSF_SIZE)[0]
            windows = [
                (STRATEGIES[0], tuple(best[:4])),
                (STRATEGIES[1], None),
                (STRATEGIES[2], random_windows(shape, window, 1, rng)[0]),
            ]
            for strategy, region in windows:
                kernel = estimate_psf(observed, region=region)
                error, psnr = error_upto_shift(
                    wiener_net_deconvolve(observed, kernel), sharp, border, mask=scored
                )
                rows.append(
                    {
                        "image": name,
                        "kernel": k + 1,
                        "strategy": strategy,
                        "region": "" if region is None else " ".join(map(str, region)),
                        "error_ratio": error / reference_error,
                        "similarity": kernel_similarity(kernel, truth),
                        "psnr": psnr,
                        "reference_psnr": reference_psnr,
                        "scored_share": float(scored.mean()),
                    }
                )
            log.info(
                "%s kernel %d: %s (%.0f s)",
                name,
                k + 1,
                ", ".join(f"{r['strategy']} ER {r['error_ratio']:.2f}" for r in rows[-len(windows) :]),
                time.perf_counter() - started,
            )

    args.results_dir.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    with open(args.results_dir / f"misleading_regions{suffix}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "# Misleading regions (protocol 4b, eval split)",
        "",
        f"Command: `{command}`",
        "",
        ed.environment_line(),
        "",
        f"Images: {', '.join(images)} (centre crops of at most {args.max_size} px), Levin's kernels "
        f"{', '.join(str(k + 1) for k in kernel_ids)}, with clipped lights, a flat area and a patch "
        f"blurred by a {PATCH_MOTION} px motion (see the script). Kernels estimated with "
        f"`estimate_psf` (automatic size) from the whole image or {window} px windows; Wiener-net "
        "deconvolves the whole image; ER up to a shift, as protocol 4, over the pixels where the blur "
        "model holds (outside the patch and a kernel's reach of clipped pixels: "
        f"{100 * np.mean([r['scored_share'] for r in rows]):.0f} % of the pixels on average).",
        "",
        "| kernel source | cases | ER <= 3 | ER <= 2 | median ER | mean kernel similarity | mean PSNR (dB) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for strategy in STRATEGIES:
        chosen = [r for r in rows if r["strategy"] == strategy]
        ers = np.array([r["error_ratio"] for r in chosen])
        lines.append(
            f"| {strategy} | {len(chosen)} | {100 * np.mean(ers <= SUCCESS_ER):.0f} % | "
            f"{100 * np.mean(ers <= 2):.0f} % | {np.median(ers):.2f} | "
            f"{np.mean([r['similarity'] for r in chosen]):.3f} | {np.mean([r['psnr'] for r in chosen]):.2f} |"
        )
    reference = [r["reference_psnr"] for r in rows if r["strategy"] == STRATEGIES[1]]
    lines += ["", f"With the true kernel, Wiener-net's mean PSNR is {np.mean(reference):.2f} dB.", ""]
    text = "\n".join(lines)
    (args.results_dir / f"misleading_regions{suffix}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
