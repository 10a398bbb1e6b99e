"""Random blur kernels for training: camera shake, Gaussian (isotropic and anisotropic), disk, ring."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from napari_deblur.engine.physics.psf import disk_psf, gaussian_psf, random_motion_psf, ring_psf
from training.replay import replay_or_build


def anisotropic_gaussian_psf(sigma_major: float, sigma_minor: float, angle: float, size: int) -> np.ndarray:
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


WIDENING_SIZE = 7
"""Side of the Gaussians of :func:`widen_kernels` (three standard deviations of 1 px each way)."""


def widen_kernels(kernels: torch.Tensor, sigmas) -> torch.Tensor:
    """``(N, k, k)`` kernels each blurred by an isotropic Gaussian of its own sigma (px).

    A kernel a user measured or guessed a little too wide: the result keeps
    the size ``k`` (what spills past the box is dropped), sums to 1, and
    along each axis gains the variance of the Gaussian as sampled on its
    ``WIDENING_SIZE`` px grid (0.63 px^2 at sigma 0.8, but 0.08 at 0.4:
    a sampled Gaussian narrower than a pixel is mostly its centre).
    """
    sigmas = np.broadcast_to(np.asarray(sigmas, dtype=np.float64), (len(kernels),))
    gaussians = torch.from_numpy(np.stack([gaussian_psf(float(s), size=WIDENING_SIZE) for s in sigmas]))
    pad = WIDENING_SIZE // 2
    padded = F.pad(kernels, (pad, pad, pad, pad))
    # One Gaussian per kernel (groups); a Gaussian is symmetric, so no flip is needed.
    wide = F.conv2d(padded[None], gaussians.to(kernels)[:, None], groups=len(kernels))[0]
    return wide / wide.sum(dim=(-2, -1), keepdim=True)


KERNEL_ERROR_KINDS = ("wide", "narrow", "tails", "noise")
"""How :func:`perturb_kernels` can get a kernel wrong."""


def perturb_kernels(
    kernels: torch.Tensor, kinds, rng: np.random.Generator, sigma_range=(0.4, 1.0)
) -> torch.Tensor:
    """``(N, k, k)`` kernels each made wrong in its own way, as a blind estimate or a guess is.

    ``kinds`` (one name of :data:`KERNEL_ERROR_KINDS` per kernel): ``wide`` blurred by a Gaussian
    of sigma uniform in ``sigma_range`` px (:func:`widen_kernels`); ``narrow`` raised to a power
    of 1.3-2 (thinner, its faint parts fainter); ``tails`` with values under 10-30 % of the peak
    removed; ``noise`` with positive noise of up to 5-20 % of the peak added around its
    support (3 px). Every result sums to 1.
    """
    kinds = list(kinds)
    out = kernels.clone()
    n = len(kernels)
    sigmas = rng.uniform(*sigma_range, size=n)
    powers = rng.uniform(1.3, 2.0, size=n)
    cuts = rng.uniform(0.1, 0.3, size=n)
    levels = rng.uniform(0.05, 0.2, size=n)
    noise = torch.from_numpy(rng.uniform(size=tuple(kernels.shape)).astype(np.float32)).to(kernels)
    wide = widen_kernels(kernels, sigmas)
    peak = kernels.amax(dim=(-2, -1), keepdim=True)
    near = F.max_pool2d((kernels > 0).float()[:, None], 7, stride=1, padding=3)[:, 0]
    for i, kind in enumerate(kinds):
        if kind == "wide":
            out[i] = wide[i]
        elif kind == "narrow":
            out[i] = kernels[i].clamp_min(0) ** float(powers[i])
        elif kind == "tails":
            out[i] = torch.where(kernels[i] >= float(cuts[i]) * peak[i], kernels[i], 0.0)
        elif kind == "noise":
            out[i] = kernels[i] + float(levels[i]) * peak[i] * noise[i] * near[i]
        else:
            raise ValueError(f"unknown kernel error {kind!r}; choose from {KERNEL_ERROR_KINDS}")
    return out / out.sum(dim=(-2, -1), keepdim=True)


def random_training_psf(rng: np.random.Generator, size: int = 31, shake_fraction: float = 0.4) -> np.ndarray:
    """One PSF from the Wiener-net training mixture, embedded in ``(size, size)``.

    ``shake_fraction`` camera shake (trajectory box 7..size px); the rest is
    split 2:2:1:1 between isotropic Gaussian (sigma 0.3..5 px), anisotropic
    Gaussian (sigmas 0.3..5 px, any angle), disk and ring (radius 1..size/3
    px). The default, 0.4, gives 40/20/20/10/10 %.
    """
    kind = rng.uniform()
    rest = (kind - shake_fraction) / (1.0 - shake_fraction) if shake_fraction < 1 else 0.0
    if kind < shake_fraction:
        box = int(rng.integers(3, size // 2 + 1)) * 2 + 1
        kernel = random_motion_psf(box, rng=rng)
    elif rest < 1 / 3:
        kernel = gaussian_psf(rng.uniform(0.3, 5.0), size=size)
    elif rest < 2 / 3:
        sigmas = np.sort(rng.uniform(0.3, 5.0, 2))
        kernel = anisotropic_gaussian_psf(sigmas[1], sigmas[0], rng.uniform(0, np.pi), size)
    elif rest < 5 / 6:
        kernel = disk_psf(rng.uniform(1.0, size / 3), size=size)
    else:
        kernel = ring_psf(rng.uniform(1.0, size / 3), size=size)
    return embed(kernel, size)


def kernel_pool(
    count: int, rng: np.random.Generator, size: int = 31, shake_fraction: float = 0.4
) -> np.ndarray:
    """``(count, size, size)`` float32 random training PSFs (:func:`random_training_psf`), read-only.

    Built once per generator state and then replayed (:mod:`.replay`).
    """
    return replay_or_build(
        "kernel_pool",
        (count, size, shake_fraction),
        rng,
        lambda: np.stack([random_training_psf(rng, size, shake_fraction) for _ in range(count)]),
    )


def hand_shake_psf(
    size: int, rng: np.random.Generator, *, n_steps: int = 2000, span: tuple[float, float] = (0.4, 1.0)
) -> np.ndarray:
    """Camera-shake PSF of a hand-held exposure: a smooth random path sampled at equal times.

    The camera's acceleration is white noise low-pass filtered (a hand trembles at a few
    cycles per exposure) plus a random drift; the path is sampled at equal time steps,
    so the kernel is bright where the camera moved slowly (turning points, ends) and
    faint where it moved fast, as in recorded shake. Its span is a uniform draw from
    ``span`` (fractions of ``size - 3`` px; 40-100 % by default). Returns float32
    ``(size, size)``, sum 1, centred.
    """
    from scipy.ndimage import gaussian_filter1d

    from napari_deblur.engine.physics.psf import _normalised, _splat_points

    smoothing = n_steps * rng.uniform(0.02, 0.10)
    acceleration = gaussian_filter1d(rng.normal(size=(n_steps, 2)), smoothing, axis=0, mode="wrap")
    velocity = np.cumsum(acceleration, axis=0)
    velocity += rng.normal(size=2) * np.abs(velocity).mean() * rng.uniform(0.0, 1.0)
    points = np.cumsum(velocity, axis=0)
    points -= points.mean(axis=0)
    extent = np.abs(points).max()
    if extent > 0:
        points *= (size - 3) * rng.uniform(*span) / 2.0 / extent
    kernel = _splat_points(points, np.ones(n_steps), size)
    return _normalised(kernel).astype(np.float32)
