"""Train-split study: the exponent of the image spectrum model in classical Wiener.

For each exponent, images from the TRAIN split are blurred (real boundaries)
by random camera-shake and disk kernels from the engine's own generators
(never Levin's kernels or eval images) with Gaussian noise, and deconvolved at
SNRs 1..65 dB. Reported per exponent: the mean PSNR at the best SNR of each
case, and the mean loss when the SNR is set to the case's true SNR (signal
variance over noise variance). The engine uses the exponent whose true-SNR
setting loses least without lowering the best-SNR PSNR.

    python benchmarks/wiener_prior_study.py
"""

from __future__ import annotations

import sys

import numpy as np
from scipy.signal import fftconvolve
from skimage import color, data
from skimage.metrics import peak_signal_noise_ratio

import napari_deblur.engine.methods.wiener as wiener_module
from napari_deblur.engine import disk_psf, random_motion_psf, wiener_deconvolve

TRAIN_IMAGES = ("coins", "moon", "astronaut", "grass", "gravel", "page", "chelsea", "coffee")
EXPONENTS = (0.0, 2.0, 2.5, 3.0)
SNRS = tuple(range(1, 66, 4))
NOISE_SIGMAS = (2.55 / 255, 7.65 / 255)


def train_image(name: str) -> np.ndarray:
    image = getattr(data, name)()
    if image.ndim == 3:
        image = color.rgb2gray(image)
    image = image.astype(np.float32)
    if image.max() > 1.5:
        image /= 255.0
    return image[:256, :256]


def main() -> int:
    rng = np.random.default_rng(2026)
    kernels = [random_motion_psf(21, seed) for seed in (1, 2, 3)] + [disk_psf(4.0)]
    cases = []
    for name in TRAIN_IMAGES:
        image = train_image(name)
        for kernel in kernels:
            radius = kernel.shape[0] // 2
            sharp = image[radius:-radius, radius:-radius]
            for sigma in NOISE_SIGMAS:
                blurred = fftconvolve(image, kernel, mode="valid") + rng.normal(0, sigma, sharp.shape)
                cases.append((sharp, blurred.astype(np.float32), kernel, sigma))
    print(f"{len(cases)} cases: {len(TRAIN_IMAGES)} train images x {len(kernels)} kernels x 2 noise levels\n")
    print("| exponent | mean PSNR at best SNR (dB) | mean loss at true SNR (dB) | best SNR picks (dB) |")
    print("|---:|---:|---:|---|")
    original = wiener_module.SPECTRUM_EXPONENT
    try:
        for exponent in EXPONENTS:
            wiener_module.SPECTRUM_EXPONENT = exponent
            best, losses, picks = [], [], []
            for sharp, blurred, kernel, sigma in cases:
                border = kernel.shape[0]

                def score(estimate):
                    inner = (slice(border, -border),) * 2
                    return peak_signal_noise_ratio(
                        sharp[inner], np.clip(estimate, 0, 1)[inner], data_range=1.0
                    )

                scores = [score(wiener_deconvolve(blurred, kernel, snr_db=s)) for s in SNRS]
                true_snr = 10 * np.log10(sharp.var() / sigma**2)
                best.append(max(scores))
                picks.append(SNRS[int(np.argmax(scores))])
                losses.append(max(scores) - score(wiener_deconvolve(blurred, kernel, snr_db=true_snr)))
            print(
                f"| {exponent:g} | {np.mean(best):.2f} | {np.mean(losses):.2f} | "
                f"{int(np.min(picks))}..{int(np.max(picks))} (median {int(np.median(picks))}) |"
            )
    finally:
        wiener_module.SPECTRUM_EXPONENT = original
    return 0


if __name__ == "__main__":
    sys.exit(main())
