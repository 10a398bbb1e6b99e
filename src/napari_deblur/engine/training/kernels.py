"""Random blur kernels for training: camera shake, Gaussian (isotropic and anisotropic), disk, ring."""

from __future__ import annotations

import numpy as np

from ..psf import disk_psf, gaussian_psf, random_motion_psf, ring_psf


def anisotropic_gaussian_psf(sigma_major: float, sigma_minor: float, angle: float,
                             size: int) -> np.ndarray:
    """Elliptic Gaussian PSF (``angle`` in radians), float32 ``(size, size)``, sum 1."""
    half = size // 2
    rows, cols = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    u = cols * np.cos(angle) + rows * np.sin(angle)
    v = -cols * np.sin(angle) + rows * np.cos(angle)
    kernel = np.exp(-0.5 * ((u / sigma_major) ** 2 + (v / sigma_minor) ** 2))
    return (kernel / kernel.sum()).astype(np.float32)


def embed(kernel: np.ndarray, size: int) -> np.ndarray:
    """Centre an odd ``kernel`` no larger than ``size`` in a ``(size, size)`` zero array."""
    out = np.zeros((size, size), dtype=np.float32)
    h, w = kernel.shape
    top, left = (size - h) // 2, (size - w) // 2
    out[top : top + h, left : left + w] = kernel
    return out


def random_training_psf(rng: np.random.Generator, size: int = 31) -> np.ndarray:
    """One PSF from the Wiener-net training mixture, embedded in ``(size, size)``.

    40 % camera shake (trajectory box 7..size px), 20 % isotropic Gaussian
    (sigma 0.3..5 px), 20 % anisotropic Gaussian (sigmas 0.3..5 px, any
    angle), 10 % disk and 10 % ring (radius 1..size/3 px).
    """
    kind = rng.uniform()
    if kind < 0.4:
        box = int(rng.integers(3, size // 2 + 1)) * 2 + 1
        kernel = random_motion_psf(box, rng=rng)
    elif kind < 0.6:
        kernel = gaussian_psf(rng.uniform(0.3, 5.0), size=size)
    elif kind < 0.8:
        sigmas = np.sort(rng.uniform(0.3, 5.0, 2))
        kernel = anisotropic_gaussian_psf(sigmas[1], sigmas[0], rng.uniform(0, np.pi), size)
    elif kind < 0.9:
        kernel = disk_psf(rng.uniform(1.0, size / 3), size=size)
    else:
        kernel = ring_psf(rng.uniform(1.0, size / 3), size=size)
    return embed(kernel, size)


def kernel_pool(count: int, rng: np.random.Generator, size: int = 31) -> np.ndarray:
    """``(count, size, size)`` float32 random training PSFs."""
    return np.stack([random_training_psf(rng, size) for _ in range(count)])
