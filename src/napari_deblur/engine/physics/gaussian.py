"""The one sampled Gaussian kernel the engine's smoothing and derivative filters are built from."""

from __future__ import annotations

import math

import torch


def gaussian_kernel_1d(sigma: float, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Sampled, normalised 1D Gaussian of standard deviation ``sigma`` px.

    Parameters
    ----------
    sigma : float
        Standard deviation in pixels, > 0.
    dtype, device
        Of the returned tensor (computed in float64 first).

    Returns
    -------
    Tensor, shape (2 r + 1,)
        Sums to 1; radius ``r = max(1, ceil(3 sigma))``.
    """
    radius = max(1, int(math.ceil(3.0 * sigma)))
    k = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-(k**2) / (2.0 * sigma**2))
    return (g / g.sum()).to(device=device, dtype=dtype)
