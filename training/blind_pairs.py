"""Blind kernel estimates paired with the kernels they estimate, to teach Wiener-net real kernel errors.

Each pair: a random window of a train-split photo (never the eval split) blurred with real
boundaries by a camera-shake kernel (hand-held shake from :func:`~.kernels.hand_shake_psf`, or a
random motion path), Gaussian noise, and the engine's own blind estimate of that kernel
(:func:`~napari_deblur.engine.methods.blind_psf.estimate_psf`, kernel size chosen automatically).
Both are returned in :data:`~.wiener_net.KERNEL_SIZE` boxes, the estimate moved by the whole-pixel
shift that best aligns it with the true kernel: a blind estimate is known only up to a shift, which
moves the restoration and is no error of its shape. Wiener-net's training hands the estimate to the
network while the crop is blurred by the true kernel (``--blind-share``).

    python -m training.blind_pairs --count 480 --out PAIRS.npz    # about 6 min on 2 cores
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

BOX = 31
"""Side of both kernels of a pair (Wiener-net's training kernel box)."""

KERNEL_SIDES = (9, 11, 13, 15, 17, 19, 21, 23, 25, 27)
CROP = 256
NOISE_RANGE = (0.005, 0.03)
"""Gaussian noise sigma of the blurred window (log-uniform), intensities in [0, 1]."""
BLIND_PAIRS_COUNT = 480
BLIND_PAIRS_SEED = 0
"""The pairs Wiener-net's ``--blind-share`` training uses."""
HAND_SHARE = 0.7
"""Share of the pairs with hand-held shake; the rest random motion paths."""


def aligned_in_box(estimate: np.ndarray, truth: np.ndarray, box: int = BOX) -> np.ndarray:
    """``estimate`` in a ``(box, box)`` array, shifted by the whole pixels that best match ``truth``.

    ``truth`` is ``(box, box)`` and centred; the shift maximises the cross-correlation of the
    two. What falls outside the box is dropped; the result sums to 1.
    """
    from scipy.signal import fftconvolve

    height, width = estimate.shape
    big = max(box, height, width) + box
    canvas = np.zeros((big, big), np.float64)
    top, left = (big - height) // 2, (big - width) // 2
    canvas[top : top + height, left : left + width] = estimate
    correlation = fftconvolve(canvas, truth[::-1, ::-1], mode="same")
    peak_row, peak_col = np.unravel_index(int(np.argmax(correlation)), correlation.shape)
    start_row, start_col = peak_row - box // 2, peak_col - box // 2
    out = np.zeros((box, box), np.float64)
    rows = slice(max(start_row, 0), min(start_row + box, big))
    cols = slice(max(start_col, 0), min(start_col + box, big))
    out[rows.start - start_row : rows.stop - start_row, cols.start - start_col : cols.stop - start_col] = (
        canvas[rows, cols]
    )
    out = np.clip(out, 0.0, None)
    total = out.sum()
    return (out / total if total > 0 else truth).astype(np.float32)


def _one_pair(task: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, float]:
    """``(true kernel, aligned estimate, kernel similarity)`` for pair ``index`` of ``seed``."""
    import torch
    from eval_data import blur_real_boundary

    from napari_deblur.engine import kernel_similarity, random_motion_psf
    from napari_deblur.engine.methods.blind_psf import estimate_psf
    from training.kernels import embed, hand_shake_psf

    torch.set_num_threads(1)
    seed, index = task
    rng = np.random.default_rng([seed, index])
    side = int(rng.choice(KERNEL_SIDES))
    if rng.uniform() < HAND_SHARE:
        kernel = hand_shake_psf(side, rng)
    else:
        kernel = random_motion_psf(side, rng=rng).astype(np.float32)
    images = _images()
    image = images[int(rng.integers(len(images)))]
    margin = BOX // 2
    need = CROP + 2 * margin
    top = int(rng.integers(0, image.shape[0] - need + 1))
    left = int(rng.integers(0, image.shape[1] - need + 1))
    window = image[top : top + need, left : left + need]
    if rng.uniform() < 0.5:
        window = window[:, ::-1]
    blurred, _ = blur_real_boundary(window, kernel.astype(np.float64), (CROP, CROP))
    sigma = float(np.exp(rng.uniform(*np.log(NOISE_RANGE))))
    blurred = (blurred + rng.normal(0.0, sigma, blurred.shape)).astype(np.float32)
    estimate = estimate_psf(blurred, device="cpu")
    truth = embed(kernel, BOX)
    return truth, aligned_in_box(estimate, truth), float(kernel_similarity(estimate, kernel))


_IMAGES: list[np.ndarray] | None = None


def _images() -> list[np.ndarray]:
    global _IMAGES
    if _IMAGES is None:
        from training.sources import train_split_images

        _IMAGES = train_split_images(min_size=CROP + BOX)
    return _IMAGES


def make_blind_pairs(count: int, seed: int, workers: int = 2) -> dict[str, np.ndarray]:
    """``count`` pairs from ``seed``: ``{"true": (N, 31, 31), "estimate": (N, 31, 31), "similarity": (N,)}``.

    The same ``seed`` and ``count`` give the same pairs whatever ``workers`` (each pair has its own
    generator).
    """
    import sys

    benchmarks = str(Path(__file__).resolve().parents[1] / "benchmarks")
    if benchmarks not in sys.path:
        sys.path.insert(0, benchmarks)
    tasks = [(seed, index) for index in range(count)]
    with ProcessPoolExecutor(workers) as pool:
        results = list(pool.map(_one_pair, tasks, chunksize=4))
    return {
        "true": np.stack([r[0] for r in results]),
        "estimate": np.stack([r[1] for r in results]),
        "similarity": np.array([r[2] for r in results], np.float32),
    }


def load_or_make_blind_pairs(path: Path, count: int, seed: int, workers: int = 2) -> dict[str, np.ndarray]:
    """The pairs in ``path`` if it holds ``count`` of them from ``seed``; otherwise made and saved there."""
    path = Path(path)
    if path.exists():
        with np.load(path) as saved:
            if int(saved["seed"]) == seed and len(saved["true"]) == count:
                return {key: saved[key] for key in ("true", "estimate", "similarity")}
    pairs = make_blind_pairs(count, seed, workers)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, seed=seed, **pairs)
    return pairs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=BLIND_PAIRS_COUNT)
    parser.add_argument("--seed", type=int, default=BLIND_PAIRS_SEED)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    pairs = load_or_make_blind_pairs(Path(args.out), args.count, args.seed, args.workers)
    similarity = pairs["similarity"]
    print(
        f"{len(similarity)} pairs in {time.perf_counter() - started:.0f} s: kernel similarity mean "
        f"{similarity.mean():.3f}, median {np.median(similarity):.3f}, under 0.75 {np.mean(similarity < 0.75):.0%}"
    )


if __name__ == "__main__":
    main()
