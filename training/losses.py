"""Losses for training: SSIM (Gaussian window) in torch."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _gaussian_window(size: int, sigma: float, dtype, device) -> torch.Tensor:
    k = torch.arange(size, dtype=dtype, device=device) - size // 2
    g = torch.exp(-(k**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_map(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    data_range: float | torch.Tensor = 1.0,
    window: int = 11,
    sigma: float = 1.5,
) -> torch.Tensor:
    """Local SSIM of ``(B, 1, H, W)`` images, ``(B, 1, H - window + 1, W - window + 1)``.

    Wang et al. 2004 constants; the index at each pixel is taken over the
    ``window`` x ``window`` Gaussian neighbourhood centred on it (valid window:
    no padding). ``data_range`` is a number or a ``(B, 1, 1, 1)`` tensor.
    """
    g = _gaussian_window(window, sigma, x.dtype, x.device)
    rows, cols = g.view(1, 1, -1, 1), g.view(1, 1, 1, -1)

    def smooth(v):
        return F.conv2d(F.conv2d(v, rows), cols)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = smooth(x), smooth(y)
    vx = smooth(x * x) - mx * mx
    vy = smooth(y * y) - my * my
    cov = smooth(x * y) - mx * my
    index = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return index


def ssim(
    x: torch.Tensor, y: torch.Tensor, *, data_range: float = 1.0, window: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """Mean SSIM of ``(B, 1, H, W)`` images (the mean of :func:`ssim_map`)."""
    return ssim_map(x, y, data_range=data_range, window=window, sigma=sigma).mean()
