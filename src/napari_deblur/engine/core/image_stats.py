"""Statistics of image planes that every method uses: luminance and the noise level."""

from __future__ import annotations

import torch

REC709_WEIGHTS = (0.2125, 0.7154, 0.0721)
"""Luminance weights of red, green and blue (as ``skimage.color.rgb2gray``)."""


def luminance(x: torch.Tensor) -> torch.Tensor:
    """Luminance of ``(B, C, H, W)`` planes, shape ``(B, 1, H, W)``.

    Rec. 709 weights for 3 or 4 channels (alpha ignored), the plain mean for
    other channel counts, ``x`` itself for one channel.
    """
    channels = x.shape[1]
    if channels == 1:
        return x
    if channels in (3, 4):
        weights = torch.tensor(REC709_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x[:, :3] * weights).sum(dim=1, keepdim=True)
    return x.mean(dim=1, keepdim=True)


def estimate_noise_std(lum: torch.Tensor) -> torch.Tensor:
    """Robust white-noise standard deviation of ``(B, 1, H, W)`` planes, shape ``(B,)``.

    Median absolute value of the finest diagonal Haar wavelet band divided by
    0.6745 (Donoho's estimator); the band holds little of a natural or blurred
    image, so mostly noise. Planes smaller than 2 x 2 give 0.
    """
    height, width = lum.shape[-2:]
    h2, w2 = height // 2 * 2, width // 2 * 2
    if h2 == 0 or w2 == 0:
        return lum.new_zeros(lum.shape[0])
    q = lum[:, 0, :h2, :w2]
    diagonal = (q[:, 0::2, 0::2] - q[:, 1::2, 0::2] - q[:, 0::2, 1::2] + q[:, 1::2, 1::2]) / 2.0
    return diagonal.flatten(1).abs().median(dim=1).values / 0.6745
