"""Wiener-net weight files compared on blind kernel estimates of train-split images.

The cases are those of ``blind_psf_heldout_check.py --like-protocol-4 --span 0.85 1.0`` (every
train-split image, centre crops of at most 384 px, hand-shake kernels of 13-27 px, 1 % noise); each
kernel is estimated once by the shipped estimator (``estimate_psf``, size chosen automatically), then
every weight file restores each case with the true kernel and with the estimate (the engine's
pipeline: two network passes, residual correction). Printed per file: mean PSNR with the true kernels
and with the estimates, ER (estimate's error / true kernel's error, each up to a shift, border as wide
as the kernel) against its own true-kernel result and against the first file's, and how often the
restoration with the estimate is below classical Wiener at the best of 15 SNRs with the same estimate
(an oracle). About 6 minutes for two files on 2 CPUs.

    python -m training.checks.wiener_net_blind_check SHIPPED.pt CANDIDATE.pt
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

SEED = 20261127
SPAN = (0.85, 1.0)
CLASSICAL_SNRS_DB = tuple(range(9, 66, 4))


def _estimate(case: tuple) -> np.ndarray:
    import torch

    from napari_deblur.engine.methods.blind_psf import estimate_psf

    torch.set_num_threads(1)
    return estimate_psf(case[1], device="cpu").astype(np.float32)


def _restorer(path: str):
    import torch

    import napari_deblur.engine.methods.wiener_net as wiener_net
    from napari_deblur.engine import wiener_net_deconvolve
    from napari_deblur.engine.nets.wiener_net import wiener_net_from_weights

    state = torch.load(path, map_location="cpu", weights_only=True)
    model = wiener_net_from_weights(state).eval().to(memory_format=torch.channels_last)

    def restore(blurred: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        shipped = wiener_net.load_wiener_net
        wiener_net.load_wiener_net = lambda device: model.to(device)
        try:
            return wiener_net_deconvolve(blurred, kernel)
        finally:
            wiener_net.load_wiener_net = shipped

    return restore


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "weights", nargs="+", help="Wiener-net weight files (.pt); the first is the reference"
    )
    parser.add_argument("--per-image", type=int, default=8)
    args = parser.parse_args(argv)
    from region_selection_benchmark import error_upto_shift

    from napari_deblur.engine import wiener_deconvolve
    from training.checks.blind_psf_heldout_check import protocol_4_like_cases

    cases = protocol_4_like_cases(SEED, args.per_image, SPAN)
    with ProcessPoolExecutor(2) as pool:
        estimates = list(pool.map(_estimate, cases))
    classical = []
    for (_, blurred, kernel, sharp), estimate in zip(cases, estimates):
        border = kernel.shape[0]
        classical.append(
            max(
                error_upto_shift(wiener_deconvolve(blurred, estimate, snr_db=float(snr)), sharp, border)[1]
                for snr in CLASSICAL_SNRS_DB
            )
        )
    classical = np.array(classical)
    rows = {}
    for path in args.weights:
        restore = _restorer(path)
        scores = []
        for (_, blurred, kernel, sharp), estimate in zip(cases, estimates):
            border = kernel.shape[0]
            true_error, true_psnr = error_upto_shift(
                restore(blurred, kernel.astype(np.float32)), sharp, border
            )
            error, psnr = error_upto_shift(restore(blurred, estimate), sharp, border)
            scores.append((true_error, error, true_psnr, psnr))
        rows[path] = np.array(scores)
    reference = rows[args.weights[0]]
    print(
        f"{len(cases)} cases (train split), classical Wiener at its best SNR with the estimates: {classical.mean():.2f} dB"
    )
    print(
        "| weights | PSNR, true kernels | PSNR, estimates | ER <= 3 | ER <= 3 vs the first's reference | ER <= 2 | median ER | below classical (by > 0.5 dB) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for path, scores in rows.items():
        own = scores[:, 1] / scores[:, 0]
        shared = scores[:, 1] / reference[:, 0]
        below = scores[:, 3] < classical
        print(
            f"| {path} | {scores[:, 2].mean():.2f} | {scores[:, 3].mean():.2f} | {np.mean(own <= 3):.0%} | "
            f"{np.mean(shared <= 3):.0%} | {np.mean(own <= 2):.0%} | {np.median(own):.2f} | "
            f"{int(below.sum())} ({int((scores[:, 3] < classical - 0.5).sum())}) |"
        )


if __name__ == "__main__":
    main()
