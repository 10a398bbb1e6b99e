"""Compare Wiener-net weight files on held-out crops of the train sources, scored like the benchmark.

Crops of the train split and dead leaves (seed 2000, never the eval split), 256 px, blurred by
valid convolution with camera-shake kernels from two size ranges, Gaussian noise 0.01, sources as
they are or all smoothed first. Each crop is scored without a border of 31 px (the largest kernel),
as the benchmark leaves out a kernel-wide border, against the Wiener filter with the best of the
stack's SNRs for that crop (chosen on the same interior). Prints a markdown table.

    python scripts/wiener_net_heldout_check.py OLD.pt NEW.pt
"""

from __future__ import annotations

import sys

import numpy as np
import torch

KERNEL_SIZE = 31
CROPS = 16
PATCH = 256
NOISE = 0.01
BOX_HALF_WIDTHS = {"7-13": (3, 7), "23-31": (11, 16)}


def heldout_sets():
    from napari_deblur.engine.psf import random_motion_psf
    from napari_deblur.engine.training.kernels import embed
    from napari_deblur.engine.training.sources import PatchSampler
    from napari_deblur.engine.training.wiener_net import blur_valid

    for smooth in (0.0, 1.0):
        for label, (low, high) in BOX_HALF_WIDTHS.items():
            rng = np.random.default_rng(2000)
            sampler = PatchSampler(PATCH + KERNEL_SIZE - 1, rng, n_dead_leaves=20,
                                   smooth_fraction=smooth)
            big = torch.from_numpy(sampler.sample(CROPS))
            kernels = torch.from_numpy(np.stack([
                embed(random_motion_psf(int(rng.integers(low, high)) * 2 + 1, rng=rng), KERNEL_SIZE)
                for _ in range(CROPS)]))
            sharp, blurred = blur_valid(big, kernels)
            noise = torch.randn(blurred.shape, generator=torch.Generator().manual_seed(1))
            name = f"{'smoothed' if smooth else 'as they are'}, shake box {label} px"
            yield name, sharp, blurred + NOISE * noise, kernels


def interior_psnr(x: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
    from napari_deblur.engine.training.wiener_net import crop_psnr

    b = KERNEL_SIZE
    return crop_psnr(x[..., b:-b, b:-b], sharp[..., b:-b, b:-b])


def main(paths: list[str]) -> None:
    from napari_deblur.engine.wiener import WIENER_STACK_SNRS_DB, wiener_filter
    from napari_deblur.engine.wiener_net import WienerNet, apply_network, wiener_net_features

    models = []
    for path in paths:
        model = WienerNet()
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        models.append(model.eval())
    snrs = torch.tensor(WIENER_STACK_SNRS_DB)
    header = ["held-out crops (16, noise 0.01, interior)", "Wiener, best SNR"]
    for path in paths:
        header += [f"{path}: net - Wiener", "lost", "worst"]
    print("| " + " | ".join(header) + " |")
    print("|---|" + "---:|" * (len(header) - 1))
    with torch.no_grad():
        for name, sharp, blurred, kernels in heldout_sets():
            stack = wiener_filter(blurred, kernels, snrs)[:, :, 0]
            oracle = torch.stack([interior_psnr(stack[:, i:i + 1], sharp)
                                  for i in range(stack.shape[1])], 1).amax(1)
            features, mean, scale = wiener_net_features(blurred, kernels, snrs)
            row = [name, f"{oracle.mean():.2f}"]
            for model in models:
                gap = interior_psnr(apply_network(model, features) * scale + mean, sharp) - oracle
                row += [f"{gap.mean():+.2f}", f"{int((gap < 0).sum())}/{CROPS}", f"{gap.min():+.2f}"]
            print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(2)
    main(sys.argv[1:])
