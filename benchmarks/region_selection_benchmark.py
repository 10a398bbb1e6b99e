"""Region selection (protocol 4): which window to estimate the blur kernel from.

Usage::

    python benchmarks/region_selection_benchmark.py [--quick] [--whole-image-only] [--size auto|N]

Every eval-split image (centre crop of at most ``--max-size`` px) is blurred with
each of Levin's 8 camera-shake kernels (real boundaries) plus 1 % Gaussian
noise. The kernel is then estimated blindly (:func:`napari_deblur.engine.estimate_psf`,
with its automatic size by default, ``--size N`` for a fixed bound: a user does not know the
true size) from

(a) the region selector's best window (:func:`napari_deblur.engine.select_regions`, its default
    consensus ranking, with kernels of the same size 31),
(b) the whole image,
(c) ``--random-windows`` random windows (each counted as one case),
(d) the window with the most gradient energy (on a grid of stride size/4),
(e) the selector's best window with ``ranking="network"`` (the trained network's scores),

windows of ``--window`` px (default 192: half the side of a 384 px crop, the
proportion of the paper's 228 px windows in 450 px images). The whole image is
deconvolved with Wiener-net and each estimate, and with the true kernel; error
ratio ER = |x(k_est) - x|^2 / |x(k_true) - x|^2 (border as wide as the true
kernel excluded). As in Levin et al.'s evaluation (which the paper uses), each
error is taken up to a shift of the restored image (within +-4 px, in quarter
pixels): a blind estimate is only defined up to a shift, and a restoration
that is right but moved by half a pixel must not count as wrong. Reported: the
success rate at ER <= 3, the median ER, the mean kernel similarity (Hu & Yang),
the mean PSNR of the restoration with each estimate (up to the same shift; the
CSV keeps both errors behind every ER), the cumulative histogram of ER over
[1, 5] (plot), and the similarity of the whole-image estimate per Levin kernel.

Writes ``benchmarks/results/region_selection.{md,csv}`` and
``docs/images/region-selection-er.png``.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_data as ed

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PLOT = Path(__file__).resolve().parents[1] / "docs" / "images" / "region-selection-er.png"
NOISE_SIGMA = 0.01
WINDOW = 192
SHIFT_REACH = 4
CONSENSUS_PSF_SIZE = 31
SUCCESS_ER = 3.0
STRATEGIES = (
    "selector (consensus ranking, the default)",
    "whole image",
    "random window",
    "most gradient energy",
    "selector, network ranking",
)

log = logging.getLogger("region_selection")


def gradient_energy_window(image: np.ndarray, size: int) -> tuple[int, int, int, int]:
    """The ``size`` window (grid of stride size/4) with the largest sum of squared gradients."""
    gy, gx = np.gradient(image)
    energy = gy * gy + gx * gx
    integral = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    stride = max(1, size // 4)
    best, where = -1.0, (0, 0)
    for y in range(0, image.shape[0] - size + 1, stride):
        for x in range(0, image.shape[1] - size + 1, stride):
            total = (
                integral[y + size, x + size] - integral[y, x + size] - integral[y + size, x] + integral[y, x]
            )
            if total > best:
                best, where = total, (y, x)
    return (*where, size, size)


def random_windows(shape: tuple[int, int], size: int, count: int, rng) -> list[tuple[int, int, int, int]]:
    return [
        (int(rng.integers(0, shape[0] - size + 1)), int(rng.integers(0, shape[1] - size + 1)), size, size)
        for _ in range(count)
    ]


def error_upto_shift(
    restored: np.ndarray,
    sharp: np.ndarray,
    border: int,
    reach: int = SHIFT_REACH,
    mask: np.ndarray | None = None,
) -> tuple[float, float]:
    """Smallest sum of squared errors over shifts of ``restored`` within +-``reach`` px, and its PSNR.

    Whole-pixel shifts first, then quarter pixels (bilinear) within 3/4 px of
    the best; the border plus ``reach`` px is excluded, and with ``mask``
    (bool, ``sharp``'s shape) only its True pixels count. The PSNR (peak 1) is
    of that smallest error over the pixels compared.
    """
    import scipy.ndimage as ndi

    cut = border + reach
    inner = (slice(cut, -cut),) * 2
    target = sharp[inner]
    height, width = target.shape
    counted = np.ones(target.shape, bool) if mask is None else mask[inner]

    def whole_pixel(dy: int, dx: int) -> float:
        moved = restored[cut - dy : cut - dy + height, cut - dx : cut - dx + width]
        return float(np.sum(((moved - target) ** 2)[counted]))

    best, by, bx = min(
        (whole_pixel(dy, dx), dy, dx) for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1)
    )
    for dy in np.arange(by - 0.75, by + 0.76, 0.25):
        for dx in np.arange(bx - 0.75, bx + 0.76, 0.25):
            moved = ndi.shift(restored, (dy, dx), order=1, mode="nearest")[inner]
            best = min(best, float(np.sum(((moved - target) ** 2)[counted])))
    return best, float(10 * np.log10(int(counted.sum()) / max(best, 1e-12)))


def blurred_case(
    source: np.ndarray, truth: np.ndarray, shape: tuple[int, int], name: str, kernel_index: int
) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
    """One case: ``(observed float32, sharp, rng)``, ``source`` blurred by ``truth`` with real
    boundaries plus noise from the case's own generator, which goes on to draw its random windows."""
    blurred, sharp = ed.blur_real_boundary(source, truth, shape)
    rng = ed.case_rng("region-selection", name, kernel_index)
    return ed.add_gaussian_noise(blurred, NOISE_SIGMA, rng).astype(np.float32), sharp, rng


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 images, 2 kernels")
    parser.add_argument("--max-size", type=int, default=384)
    parser.add_argument("--random-windows", type=int, default=3)
    parser.add_argument("--window", type=int, default=WINDOW, help="window side (px)")
    parser.add_argument("--size", default="auto", help="kernel size bound for estimate_psf, or 'auto'")
    parser.add_argument(
        "--whole-image-only", action="store_true", help="only the whole-image estimate (the fast check)"
    )
    parser.add_argument(
        "--classical",
        action="store_true",
        help="also deconvolve with classical Wiener at its best of 15 SNRs (oracle) with each estimate",
    )
    parser.add_argument(
        "--deconvolver",
        choices=("wiener-net", "sparse", "richardson-lucy-30"),
        default="wiener-net",
        help="the non-blind step behind ER (both errors): Wiener-net (default); 'sparse', the "
        "hyper-Laplacian deconvolution of Levin et al. with which the blind papers compute ER "
        "(benchmarks/sparse_deconvolution.py); or 30 accelerated Richardson-Lucy iterations",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--plot", type=Path, default=PLOT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    command = ed.command_line("benchmarks/region_selection_benchmark.py", argv)
    import torch

    from napari_deblur.engine import (
        WIENER_STACK_SNRS_DB,
        estimate_psf,
        kernel_similarity,
        richardson_lucy,
        select_regions,
        wiener_deconvolve_snr_stack,
        wiener_net_deconvolve,
    )

    torch.set_num_threads(args.threads)
    if args.deconvolver == "wiener-net":
        restore, restorer = wiener_net_deconvolve, "Wiener-net"
    elif args.deconvolver == "sparse":
        from sparse_deconvolution import CG_ITERATIONS, SPARSE_WEIGHT, sparse_deconvolve

        restore = sparse_deconvolve
        restorer = (
            f"the sparse (hyper-Laplacian) deconvolution of Levin et al. 2007 with the weight and "
            f"iterations of the blind papers' evaluations ({SPARSE_WEIGHT:g}, {CG_ITERATIONS} "
            "conjugate-gradient iterations a solve)"
        )
    else:

        def restore(observed, kernel):
            return richardson_lucy(observed, kernel, iterations=30)

        restorer = "30 accelerated Richardson-Lucy iterations"
    estimate_size = None if args.size == "auto" else int(args.size)
    strategies = ("whole image",) if args.whole_image_only else STRATEGIES
    kernels = ed.load_levin_kernels()
    images = ed.EVAL_IMAGES[:2] if args.quick else ed.EVAL_IMAGES
    kernel_ids = range(2) if args.quick else range(len(kernels))
    margin = max(k.shape[0] for k in kernels) // 2
    rows = []
    started = time.perf_counter()
    for name in images:
        source = ed.load_eval_image(name)
        shape = ed.eval_crop_shape(source.shape, args.max_size, margin)
        window = min(args.window, min(shape))  # the largest square up to --window that fits
        for k in kernel_ids:
            truth = kernels[k]
            observed, sharp, rng = blurred_case(source, truth, shape, name, k)
            border = truth.shape[0]
            reference_error, reference_psnr = error_upto_shift(restore(observed, truth), sharp, border)
            windows = [("whole image", None)]
            if not args.whole_image_only:
                best = select_regions(observed, size=window, count=1, psf_size=CONSENSUS_PSF_SIZE)[0]
                by_network = select_regions(observed, size=window, count=1, ranking="network")[0]
                windows = [
                    (STRATEGIES[0], tuple(best[:4])),
                    *windows,
                    *[("random window", w) for w in random_windows(shape, window, args.random_windows, rng)],
                    ("most gradient energy", gradient_energy_window(observed, window)),
                    (STRATEGIES[-1], tuple(by_network[:4])),
                ]
            for strategy, region in windows:
                kernel = estimate_psf(observed, size=estimate_size, region=region)
                error, psnr = error_upto_shift(restore(observed, kernel), sharp, border)
                classical = {}
                if args.classical:
                    stack = wiener_deconvolve_snr_stack(observed, kernel, WIENER_STACK_SNRS_DB)
                    classical["classical_psnr"] = max(
                        error_upto_shift(plane, sharp, border)[1] for plane in stack
                    )
                rows.append(
                    {
                        **classical,
                        "image": name,
                        "kernel": k + 1,
                        "strategy": strategy,
                        "region": "" if region is None else " ".join(map(str, region)),
                        "error_ratio": error / reference_error,
                        "similarity": kernel_similarity(kernel, truth),
                        "error": error,
                        "reference_error": reference_error,
                        "psnr": psnr,
                        "reference_psnr": reference_psnr,
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
    suffix = ("_quick" if args.quick else "") + ("_whole" if args.whole_image_only else "")
    suffix += {"wiener-net": "", "sparse": "_sparse", "richardson-lucy-30": "_rl30"}[args.deconvolver]
    with open(args.results_dir / f"region_selection{suffix}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    def of(strategy):
        return [r for r in rows if r["strategy"] == strategy]

    lines = [
        "# Region selection (protocol 4, eval split)",
        "",
        f"Command: `{command}`",
        "",
        ed.environment_line(),
        "",
        f"Images: {', '.join(images)} (centre crops of at most {args.max_size} px), Levin's kernels "
        f"{', '.join(str(k + 1) for k in kernel_ids)}, real-boundary blur, noise sigma {NOISE_SIGMA:g}. "
        f"Kernels estimated with `estimate_psf(size={estimate_size})` ({'automatic size' if estimate_size is None else 'fixed bound'}) from {args.window} px windows (smaller images: the largest square that fits) or the "
        f"whole image; every estimate and the true kernel deconvolve the whole image with {restorer}; "
        "ER = error with the estimate / error with the true kernel, each up to a shift of the "
        f"restored image (+-{SHIFT_REACH} px, quarter pixels). {args.random_windows} random "
        "windows per image and kernel.",
        "",
        "| kernel source | cases | success rate (ER <= 3) | ER <= 2 | median ER | mean ER | "
        "mean kernel similarity | mean PSNR (dB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for strategy in strategies:
        chosen = of(strategy)
        ers = np.array([r["error_ratio"] for r in chosen])
        lines.append(
            f"| {strategy} | {len(chosen)} | {100 * np.mean(ers <= SUCCESS_ER):.0f} % | "
            f"{100 * np.mean(ers <= 2):.0f} % | {np.median(ers):.2f} | {np.mean(ers):.2f} | "
            f"{np.mean([r['similarity'] for r in chosen]):.3f} | "
            f"{np.mean([r['psnr'] for r in chosen]):.2f} |"
        )
    if args.classical:
        chosen = of("whole image")
        net = np.array([r["psnr"] for r in chosen])
        wiener = np.array([r["classical_psnr"] for r in chosen])
        lines += [
            "",
            "With the whole-image estimate, Wiener-net against classical Wiener at its best of "
            f"{len(WIENER_STACK_SNRS_DB)} SNRs (an oracle), mean PSNR: {net.mean():.2f} vs "
            f"{wiener.mean():.2f} dB; Wiener-net below it in {int(np.sum(net < wiener))} of "
            f"{len(chosen)} cases (by more than 0.5 dB in {int(np.sum(net < wiener - 0.5))}).",
        ]
    true_kernel = of("whole image")  # one row per case carries the true kernel's numbers
    lines += [
        "",
        f"With the true kernel ({len(true_kernel)} cases), the mean PSNR of {restorer} is "
        f"{np.mean([r['reference_psnr'] for r in true_kernel]):.2f} dB. PSNR here is of the "
        "whole restored image up to the same shift as ER, border excluded. ER divides by the "
        "error with the true kernel, so it also moves when the deconvolver changes; the PSNR "
        "with each estimate is the absolute measure beside it.",
    ]
    lines += [
        "",
        "Kernel similarity of the whole-image estimate per Levin kernel (mean over images):",
        "",
        "| kernel | " + " | ".join(str(k + 1) for k in kernel_ids) + " |",
        "|---|" + "---:|" * len(kernel_ids),
        "| similarity | "
        + " | ".join(
            f"{np.mean([r['similarity'] for r in of('whole image') if r['kernel'] == k + 1]):.3f}"
            for k in kernel_ids
        )
        + " |",
        "",
    ]
    text = "\n".join(lines)
    (args.results_dir / f"region_selection{suffix}.md").write_text(text)
    print(text)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(1, 5, 81)
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    for strategy in strategies:
        ers = np.array([r["error_ratio"] for r in of(strategy)])
        ax.plot(grid, [100 * np.mean(ers <= g) for g in grid], label=strategy)
    ax.axvline(SUCCESS_ER, color="0.6", linestyle=":")
    ax.set_xlabel("error ratio")
    ax.set_ylabel("cases with ER <= x (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Kernel estimated from ... (eval split, Levin kernels, 1 % noise)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plot = args.plot if not suffix else args.results_dir / f"region_selection{suffix}.png"
    plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(plot)
    print(f"Wrote {args.results_dir / f'region_selection{suffix}.md'} and {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
