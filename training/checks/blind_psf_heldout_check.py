"""Blind PSF estimation on train-split images: kernel similarity and deconvolution error ratio.

Sharp images: the train split (``TRAIN_SPLIT``, at least crop + 40 px a side; never the eval
split). Each gets 12 kernels of one kind (camera shake 13-27 px, Gaussian sigma 1-4 px or disk),
a real-boundary blur ('valid' convolution) and 1 % Gaussian noise, all from one seed. The kernel
is estimated blindly from the whole crop with ``estimate_psf(size=31)`` and its final sharpening
step switched off; each power in ``--powers`` is then applied to that raw estimate
(``blind_psf.sharpen_kernel``; power 1 is the estimator without sharpening). Printed per power:
kernel similarity to the true kernel, and the error ratio ER = squared error of the Wiener-net
deconvolution with the estimate / with the true kernel, each up to a shift of the restored image
(as in ``benchmarks/region_selection_benchmark.py``).

    python -m training.checks.blind_psf_heldout_check                          # shake, 256 px, ~45 s
    python -m training.checks.blind_psf_heldout_check --kind gaussian
    python -m training.checks.blind_psf_heldout_check --crop 384 --seed 7
    python -m training.checks.blind_psf_heldout_check --set lambda_floor=0.002   # try a setting of blind_psf
    python -m training.checks.blind_psf_heldout_check --like-protocol-4       # 72 cases, ~2 min
    python -m training.checks.blind_psf_heldout_check --like-protocol-4 --er-step sparse   # the papers' ER

``--like-protocol-4`` mirrors protocol 4 on the train split instead: every train image (centre
crop of at most 384 px, a 13 px margin kept for real boundaries, as ``eval_crop_shape``),
``--per-image`` hand-shake kernels of 13-27 px each (default 8), 1 % noise, the kernel size
chosen automatically (``estimate_psf(size=None)``) and ER's border as wide as the true kernel.
Text (``page``), textures (``grass``, ``gravel``) and soft images (``moon``) are among them, the
kinds of content that separate the estimators on the eval split.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from scipy.signal import fftconvolve

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

SHAKE_SIZES = (13, 15, 17, 19, 21, 23, 25, 27)
KERNELS_PER_IMAGE = 12
ESTIMATE_SIZE = 31
NOISE = 0.01
ER_BORDER = 16


def random_kernel(kind: str, rng: np.random.Generator) -> np.ndarray:
    from napari_deblur.engine import disk_psf, gaussian_psf, random_motion_psf
    from training.kernels import hand_shake_psf

    size = int(rng.choice(SHAKE_SIZES))
    if kind == "shake":
        kernel = random_motion_psf(size, rng=rng)
    elif kind == "hand":
        kernel = hand_shake_psf(size, rng)
    elif kind == "gaussian":
        kernel = gaussian_psf(rng.uniform(1.0, 4.0), size=size)
    else:
        kernel = disk_psf(rng.uniform(2.0, size / 2 - 1), size=size)
    return kernel.astype(np.float64)


def make_cases(
    kind: str,
    crop: int,
    seed: int,
    *,
    images: tuple[str, ...] | None = None,
    per_image: int = KERNELS_PER_IMAGE,
    sources: list[np.ndarray] | None = None,
) -> list[tuple]:
    """(image index, blurred crop, true kernel, sharp crop aligned with the blurred one).

    ``images``: train-split names to draw from (default: the whole split), ``per_image`` kernels each;
    ``sources``: sharp images (more than ``crop + 31`` px a side) to use instead of the split.
    """
    from training.sources import TRAIN_SPLIT, train_split_images

    rng = np.random.default_rng(seed)
    if sources is None:
        sources = train_split_images(min_size=crop + 40, names=images or TRAIN_SPLIT)
    cases = []
    for index, image in enumerate(sources):
        for _ in range(per_image):
            kernel = random_kernel(kind, rng)
            size = kernel.shape[0]
            top = int(rng.integers(0, image.shape[0] - crop - ESTIMATE_SIZE))
            left = int(rng.integers(0, image.shape[1] - crop - ESTIMATE_SIZE))
            source = image[top : top + crop + size - 1, left : left + crop + size - 1]
            # The images are float32 and so is this blur. benchmarks/eval_data.blur_real_boundary
            # does the same in float64, which moves the README's figures in the third decimal.
            blurred = fftconvolve(source, kernel, mode="valid")
            blurred = blurred + rng.normal(0.0, NOISE, blurred.shape)
            half = size // 2
            cases.append((index, blurred, kernel, source[half : half + crop, half : half + crop]))
    return cases


def protocol_4_like_cases(
    seed: int,
    per_image: int,
    span: tuple[float, float] = (0.4, 1.0),
    names: tuple[str, ...] | None = None,
    crop: int = 384,
    anywhere: bool = False,
) -> list[tuple]:
    """(image index, blurred, true kernel, sharp) for ``--like-protocol-4`` (see the module's text)."""
    from eval_data import blur_real_boundary, eval_crop_shape

    from training.kernels import hand_shake_psf
    from training.sources import TRAIN_SPLIT, train_split_images

    rng = np.random.default_rng(seed)
    cases = []
    margin = max(SHAKE_SIZES) // 2
    images = train_split_images(min_size=2 * 2 * margin + 64, names=names or TRAIN_SPLIT)
    for index, image in enumerate(images):
        shape = eval_crop_shape(image.shape, crop, margin)
        for _ in range(per_image):
            kernel = hand_shake_psf(int(rng.choice(SHAKE_SIZES)), rng, span=span).astype(np.float64)
            source = image
            if anywhere:  # a random window of the image (flat parts too), not its centre
                top = int(rng.integers(0, image.shape[0] - shape[0] - 2 * margin + 1))
                left = int(rng.integers(0, image.shape[1] - shape[1] - 2 * margin + 1))
                source = image[top : top + shape[0] + 2 * margin, left : left + shape[1] + 2 * margin]
            blurred, sharp = blur_real_boundary(source, kernel, shape)
            blurred = (blurred + rng.normal(0.0, NOISE, blurred.shape)).astype(np.float32)
            cases.append((index, blurred, kernel, sharp))
    return cases


def score_case(
    case: tuple,
    powers: tuple[float, ...],
    settings: dict[str, float],
    size: int | None = ESTIMATE_SIZE,
    er_step: str = "wiener-net",
) -> list[float]:
    """[image index, seconds, then similarity and ER per power].

    ``settings``: fields of :class:`~napari_deblur.engine.methods.blind_psf.EstimatorSettings` that differ
    from the shipped ones (the sharpening power is set by ``powers``). ``er_step``: the non-blind
    step behind both errors of ER, Wiener-net or ``"sparse"`` (the blind papers' step,
    ``benchmarks/sparse_deconvolution.py``).
    """
    import torch
    from region_selection_benchmark import error_upto_shift

    from napari_deblur.engine import kernel_similarity, wiener_net_deconvolve
    from napari_deblur.engine.methods import blind_psf

    if er_step == "sparse":
        from sparse_deconvolution import sparse_deconvolve as restore
    else:
        restore = wiener_net_deconvolve
    torch.set_num_threads(1)
    index, blurred, kernel, sharp = case
    start = time.perf_counter()
    # the raw estimate (sharpening power 1); the powers are applied below
    raw = blind_psf.estimate_psf(
        blurred,
        size=size,
        device="cpu",
        settings=blind_psf.EstimatorSettings(**{**settings, "sharpening_power": 1.0}),
    )
    row = [index, time.perf_counter() - start]
    border = ER_BORDER if size is not None else kernel.shape[0]
    reference = error_upto_shift(restore(blurred, kernel.astype(np.float32)), sharp, border)[0]
    for power in powers:
        estimate = blind_psf.sharpen_kernel(raw, power).astype(np.float32)
        error = error_upto_shift(restore(blurred, estimate), sharp, border)[0]
        row += [kernel_similarity(estimate, kernel), error / reference]
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("shake", "hand", "gaussian", "disk"), default="shake")
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--seed", type=int, default=20261127)
    parser.add_argument("--powers", type=float, nargs="+", default=(1.0, 1.25, 1.5, 2.0))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--like-protocol-4", action="store_true", help="see the module's text")
    parser.add_argument("--per-image", type=int, default=8, help="kernels per image with --like-protocol-4")
    parser.add_argument("--images", nargs="+", help="--like-protocol-4: these train-split images only")
    parser.add_argument("--max-crop", type=int, default=384, help="--like-protocol-4: crop side at most")
    parser.add_argument(
        "--anywhere", action="store_true", help="--like-protocol-4: random windows instead of centre crops"
    )
    parser.add_argument(
        "--span",
        type=float,
        nargs=2,
        default=(0.4, 1.0),
        help="--like-protocol-4: the hand-shake path's extent, fractions of the kernel side less 3 px",
    )
    parser.add_argument(
        "--er-step",
        choices=("wiener-net", "sparse"),
        default="wiener-net",
        help="the non-blind step behind ER: Wiener-net, or the sparse deconvolution the blind papers "
        "compute ER with (benchmarks/sparse_deconvolution.py)",
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="NAME=VALUE",
        help="a field of napari_deblur.engine.methods.blind_psf.EstimatorSettings, e.g. "
        "lambda_floor=0.002 (experiments)",
    )
    args = parser.parse_args(argv)
    powers = tuple(args.powers)
    from dataclasses import fields

    from napari_deblur.engine.methods.blind_psf import EstimatorSettings

    names = {field.name for field in fields(EstimatorSettings)} - {"sharpening_power"}
    settings = {}
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in names:
            raise SystemExit(f"--set takes {', '.join(sorted(names))}; got {name!r}")
        settings[name] = float(value)
    if args.like_protocol_4:
        cases = protocol_4_like_cases(
            args.seed, args.per_image, tuple(args.span), args.images, args.max_crop, args.anywhere
        )
        size, what = None, f"like protocol 4, kernel span {args.span}"
    else:
        cases, size = make_cases(args.kind, args.crop, args.seed), ESTIMATE_SIZE
        what = f"{args.kind} kernels, {args.crop} px crops"
    count = len(cases)
    with ProcessPoolExecutor(args.workers) as pool:
        rows = np.array(
            list(
                pool.map(
                    score_case,
                    cases,
                    [powers] * count,
                    [settings] * count,
                    [size] * count,
                    [args.er_step] * count,
                )
            )
        )
    for index in np.unique(rows[:, 0]):
        mine = rows[rows[:, 0] == index]
        print(
            f"image {int(index)}: ER <= 3 {np.sum(mine[:, 3] <= 3)}/{len(mine)}, similarity {mine[:, 2].mean():.3f}"
        )
    print(
        f"{what}, seed {args.seed}, settings {settings or 'shipped'}, ER by {args.er_step}: "
        f"{len(rows)} cases, "
        f"{len(np.unique(rows[:, 0]))} images; median estimate time {np.median(rows[:, 1]):.2f} s"
    )
    print("| power | mean similarity | similarity >= 0.75 | median ER | mean ER | ER <= 2 | ER <= 3 |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n, power in enumerate(powers):
        similarity, ratio = rows[:, 2 + 2 * n], rows[:, 3 + 2 * n]
        print(
            f"| {power:g} | {similarity.mean():.3f} | {np.mean(similarity >= 0.75):.0%} | "
            f"{np.median(ratio):.3f} | {ratio.mean():.3f} | {np.mean(ratio <= 2):.0%} | "
            f"{np.mean(ratio <= 3):.0%} |"
        )


if __name__ == "__main__":
    main()
