"""Blind PSF estimation: a blur kernel from the blurred image alone.

Coarse-to-fine maximum-a-posteriori estimation with an L0 prior on the latent
sharp image (after Xu, Zheng & Jia 2013; Pan, Hu, Su & Yang 2014), on one
grey plane or window of at most :data:`MAX_ESTIMATION_PIXELS`; and
:func:`kernel_similarity`, the shift-invariant measure of how close two
kernels are (Hu & Yang 2012). See docs/methods/blind-psf.md for the method.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F
from scipy.signal import fftconvolve

from ..core.devices import select_device
from ..core.jobs import JobProgress, JobSteps, job_facade
from ..core.planes import single_grey_plane
from ..core.validation import as_float_image
from ..physics.fourier import (
    kernel_centroid_offsets,
    kernel_to_otf,
    squared_frequency,
    taper_fft_shape,
    taper_pad,
)

logger = logging.getLogger(__name__)

MIN_KERNEL_SIZE = 3
"""Smallest kernel side accepted (odd)."""

REGION_SIZE_FACTOR = 2
"""A region (or the whole image) must be at least this many kernel sides on each side."""

PYRAMID_RATIO = 1.0 / math.sqrt(2.0)
"""Scale between two pyramid levels (images and kernels)."""

COARSEST_KERNEL = 5.0
"""The pyramid stops when the kernel would be smaller than this (px)."""

COARSEST_IMAGE_SIDE = 64
"""The pyramid stops before the image's smaller side would fall below this (px)."""

SUPPORT_GROWTH = 1.3
"""Between pyramid levels the kernel box is cut to the support found so far times this, plus
:data:`SUPPORT_MARGIN` px a side (at most the level's size bound)."""

SUPPORT_MARGIN = 2
"""Pixels added on each side of the support when the kernel box is cut between levels."""

AUTO_KERNEL_BOUND = 75
"""Largest kernel side (px) looked for when no size is given (also at most half the
region's smaller side)."""

AUTO_MIN_KERNEL = 5
"""With the size chosen automatically, a region must be at least
:data:`REGION_SIZE_FACTOR` times this on each side."""

LAMBDA_GRADIENT = 8e-3
"""L0 weight on the latent image's gradients, for intensities scaled to [0, 1]."""

LAMBDA_INTENSITY = 0.0
"""L0 weight on the latent image's intensities (Pan et al.'s text prior); 0 for photos."""

LAMBDA_DECAY = 1.1
"""The L0 weights shrink by this factor every outer iteration (finer detail joins in)."""

LAMBDA_FLOOR = 2e-3
"""Lowest L0 weight on the gradients (intensities in [0, 1]), so the latent image stays
piecewise flat at the finest levels."""

SPLITTING_GROWTH = 2.0
"""Half-quadratic splitting: the penalty weights grow by this factor per inner iteration."""

SPLITTING_MAX = 1e4
"""Half-quadratic splitting stops when the penalty weight reaches this."""

OUTER_ITERATIONS = 10
"""Alternations of latent image and kernel per pyramid level."""

KERNEL_TIKHONOV = 0.1
"""Tikhonov weight of the kernel step, relative to the mean gradient power of the latent image."""

KERNEL_PREFILTER_SIGMA = 0.6
"""Standard deviation (px) of the Gaussian that smooths both the latent and the blurred plane
in the kernel step (``k * x = y`` still holds; the noise of ``y``'s gradients is damped)."""

KERNEL_FAINT = 0.02
"""Kernel values below this fraction of the kernel's maximum are set to 0."""

KERNEL_NEGATIVE_FLOOR = 0.5
"""Kernel values below this multiple of the depth of the raw kernel's most negative value are set
to 0 as well. A kernel has no negative values, so the depth of the raw least-squares kernel's
negative lobes measures its noise: smooth or dim images make noisy kernels and lose more of their
faint values, images rich in edges keep the faint tails of the camera's path."""

CPU_THREADS = 1
"""Torch threads used on the CPU while estimating (restored afterwards)."""

MAX_ESTIMATION_PIXELS = 1 << 20
"""Most pixels the estimator works on (1 MP, e.g. 1024 x 1024).

The alternation runs FFTs over its whole window at full resolution, so its
time and memory grow with the window (about 15 s and 0.2 GiB for 1 MP). A
larger image or region is estimated from its most textured window of at most
this many pixels (:func:`estimation_window`); the kernel is the same
everywhere, and a window with strong edges shows it best."""

TEXTURE_REDUCTION = 4
""":func:`estimation_window` scores windows on the image averaged over blocks of this many
pixels squared (less noise, 1/16 of the memory)."""

KERNEL_MIN_PART = 0.1
"""Connected parts of the kernel with less than this fraction of its mass are removed."""

KERNEL_SHARPENING_POWER = 1.0
"""Exponent the finished kernel is raised to (then normalised and centred, :func:`sharpen_kernel`):
it moves the mass of the band the alternation returns back onto its ridge. Dimensionless."""


# --- input ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EstimatorSettings:
    """Settings of the blind estimator that may differ from the shipped ones.

    The defaults are the shipped values (:data:`LAMBDA_FLOOR`,
    :data:`KERNEL_FAINT`, :data:`KERNEL_SHARPENING_POWER`); training labels
    and studies pass other values to :func:`estimate_psf` as ``settings``.
    """

    lambda_floor: float = LAMBDA_FLOOR
    """Lowest weight of the L0 gradient prior (:data:`LAMBDA_FLOOR`)."""
    kernel_faint: float = KERNEL_FAINT
    """Kernel values below this fraction of the peak are removed (:data:`KERNEL_FAINT`)."""
    sharpening_power: float = KERNEL_SHARPENING_POWER
    """Power the finished kernel is raised to (:data:`KERNEL_SHARPENING_POWER`)."""
    negative_floor: float = KERNEL_NEGATIVE_FLOOR
    """Values below this multiple of the raw kernel's deepest negative value are removed too
    (:data:`KERNEL_NEGATIVE_FLOOR`)."""


SHIPPED_SETTINGS = EstimatorSettings()
"""The settings :func:`estimate_psf` uses by default."""


def check_kernel_size(size, name: str = "size") -> int:
    """``size`` as an int if it is an odd kernel side >= :data:`MIN_KERNEL_SIZE`; else a clear error."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise TypeError(f"{name} must be an odd integer >= {MIN_KERNEL_SIZE} (pixels), not {size!r}.")
    size = int(size)
    if size < MIN_KERNEL_SIZE or size % 2 == 0:
        suggestion = size + 1 if size > MIN_KERNEL_SIZE else MIN_KERNEL_SIZE
        raise ValueError(
            f"{name} must be an odd integer >= {MIN_KERNEL_SIZE} pixels (the kernel has a centre "
            f"pixel), got {size}; use e.g. {suggestion}."
        )
    return size


def _grey_plane(image, channel_axis: int | None) -> np.ndarray:
    return single_grey_plane(image, channel_axis, caller="estimate_psf")


def _check_region(region, plane_shape: tuple[int, int], size: int) -> tuple[int, int, int, int]:
    height, width = plane_shape
    if region is None:
        y, x, h, w = 0, 0, height, width
    else:
        if isinstance(region, (str, bytes)) or not isinstance(region, Sequence | np.ndarray):
            raise TypeError(f"region must be (y, x, height, width) or None, not {region!r}.")
        values = list(region)
        if len(values) != 4:
            raise ValueError(f"region must have 4 numbers (y, x, height, width), got {region!r}.")
        try:
            y, x, h, w = (int(v) for v in values)
        except (TypeError, ValueError) as error:
            raise TypeError(f"region must hold 4 integers (y, x, height, width), got {region!r}.") from error
        if any(float(v) != int(v) for v in values):
            raise ValueError(f"region must hold whole pixel numbers (y, x, height, width), got {region!r}.")
        if h <= 0 or w <= 0:
            raise ValueError(f"region height and width must be positive, got {h}x{w}.")
        if y < 0 or x < 0 or y + h > height or x + w > width:
            raise ValueError(
                f"region (y={y}, x={x}, height={h}, width={w}) is not inside the {height}x{width} "
                f"image; rows run 0..{height} and columns 0..{width}."
            )
    need = REGION_SIZE_FACTOR * size
    if h < need or w < need:
        where = "The image" if region is None else "The region"
        raise ValueError(
            f"{where} ({h}x{w} px) is too small to estimate a {size}x{size} kernel: each side must "
            f"be at least {REGION_SIZE_FACTOR} kernel sides ({need} px), since a blur can only be "
            f"seen from edges longer than it. Use a larger region or a smaller size."
        )
    return y, x, h, w


# --- FFT operators ------------------------------------------------------------------


def _difference_otfs(shape: tuple[int, int], device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Transfer functions of forward differences along columns (x) and rows (y)."""
    dx = torch.zeros((1,) + shape, device=device, dtype=dtype)
    dy = torch.zeros_like(dx)
    dx[0, 0, 0], dx[0, 0, -1] = -1.0, 1.0  # (x * dx)[i, j] = x[i, j + 1] - x[i, j]
    dy[0, 0, 0], dy[0, -1, 0] = -1.0, 1.0
    return torch.fft.rfft2(dx)[0], torch.fft.rfft2(dy)[0]


def _odd(value: float) -> int:
    return max(MIN_KERNEL_SIZE, 2 * round((value - 1.0) / 2.0) + 1)


def _pyramid(size: int, image_side: int | None = None) -> list[tuple[float, int]]:
    """(image scale, kernel size bound) per level, coarsest first.

    Levels stop when the kernel would be smaller than :data:`COARSEST_KERNEL` px or the image's
    smaller side (``image_side``) smaller than :data:`COARSEST_IMAGE_SIDE` px."""
    levels = [(1.0, size)]
    scale = 1.0
    min_scale = 0.0 if image_side is None else COARSEST_IMAGE_SIDE / image_side
    while size * scale * PYRAMID_RATIO >= COARSEST_KERNEL and scale * PYRAMID_RATIO >= min_scale:
        scale *= PYRAMID_RATIO
        levels.append((scale, _odd(size * scale)))
    return levels[::-1]


def _frame_window(
    shape: tuple[int, int], inner: tuple[int, int, int, int], ramp: int, device, dtype
) -> torch.Tensor:
    """1 inside ``inner`` shrunk by ``ramp``, falling to 0 by a raised cosine at its edge."""

    def axis(length: int, start: int, stop: int) -> torch.Tensor:
        pos = torch.arange(length, device=device, dtype=dtype)
        dist = torch.minimum(pos - start, stop - 1 - pos)  # distance inside the frame
        t = (dist / max(ramp, 1)).clamp(0.0, 1.0)
        return 0.5 - 0.5 * torch.cos(math.pi * t)

    top, left, height, width = inner
    rows = axis(shape[0], top, top + height)
    cols = axis(shape[1], left, left + width)
    return rows[:, None] * cols[None, :]


# --- the two steps ------------------------------------------------------------------


def latent_l0(
    spectrum: torch.Tensor,
    otf: torch.Tensor,
    dx: torch.Tensor,
    dy: torch.Tensor,
    shape: tuple[int, int],
    lambda_gradient: float,
    lambda_intensity: float = 0.0,
    *,
    growth: float = SPLITTING_GROWTH,
    max_weight: float = SPLITTING_MAX,
) -> torch.Tensor:
    """Latent sharp image under an L0 gradient (and intensity) prior, periodic model.

    Parameters
    ----------
    spectrum : Tensor, complex, shape (Hf, Wf)
        ``rfft2`` of the (padded) blurred plane, grid ``shape``.
    otf : Tensor, complex, shape (Hf, Wf)
        The kernel's transfer function on the same grid.
    dx, dy : Tensor, complex, shape (Hf, Wf)
        Transfer functions of the forward differences.
    shape : (H, W)
        Spatial grid.
    lambda_gradient, lambda_intensity : float
        L0 weights (intensities in [0, 1]); ``lambda_intensity = 0`` drops the
        intensity term.

    Returns
    -------
    Tensor, shape (H, W), real.
    """
    data_num = otf.conj() * spectrum
    data_den = otf.abs().square()
    diff_den = dx.abs().square() + dy.abs().square()
    x = torch.fft.irfft2(spectrum, s=shape)
    mu = 2.0 * lambda_gradient
    beta = 2.0 * lambda_intensity
    while mu < max_weight:
        # The periodic forward differences of _difference_otfs, taken in space (no FFT pair).
        gx = torch.roll(x, -1, dims=-1) - x
        gy = torch.roll(x, -1, dims=-2) - x
        keep = (gx.square() + gy.square()) >= lambda_gradient / mu
        g_spec = torch.fft.rfft2(torch.stack((gx * keep, gy * keep)))
        numerator = data_num + mu * (dx.conj() * g_spec[0] + dy.conj() * g_spec[1])
        denominator = data_den + mu * diff_den
        if lambda_intensity > 0:
            u = x * (x.square() >= lambda_intensity / beta)
            numerator = numerator + beta * torch.fft.rfft2(u)
            denominator = denominator + beta
            beta *= growth
        x = torch.fft.irfft2(numerator / denominator, s=shape)
        mu *= growth
    return x


def _gaussian_transfer(shape: tuple[int, int], sigma: float, device, dtype) -> torch.Tensor:
    """``rfft2``-shaped transfer function of a Gaussian of ``sigma`` px (1 everywhere for 0)."""
    return torch.exp(-2.0 * math.pi**2 * sigma**2 * squared_frequency(shape, device, dtype))


def kernel_least_squares(
    latent: torch.Tensor,
    blurred: torch.Tensor,
    window: torch.Tensor,
    dx: torch.Tensor,
    dy: torch.Tensor,
    size: int,
) -> torch.Tensor:
    """Kernel minimising ``sum_d ||window (D_d x * k - D_d y)||^2 + gamma ||k||^2`` (approximately).

    Both images are first smoothed by a Gaussian of
    :data:`KERNEL_PREFILTER_SIGMA` px (damping the noise of ``y`` without
    changing the kernel relation); the window multiplies the gradients of both
    (inside the frame, a smooth fade), and the Tikhonov-regularised least squares is then solved in
    closed form in the Fourier domain and cut to ``size x size`` around the
    centre. Returns a raw kernel (may be negative; not normalised).
    """
    shape = tuple(latent.shape[-2:])
    smoothing = _gaussian_transfer(shape, KERNEL_PREFILTER_SIGMA, latent.device, latent.dtype)
    lat_spec = torch.fft.rfft2(latent) * smoothing
    blur_spec = torch.fft.rfft2(blurred) * smoothing
    numerator = torch.zeros_like(lat_spec)
    denominator = torch.zeros(lat_spec.shape, device=latent.device, dtype=latent.dtype)
    for diff in (dx, dy):
        lat_grad = torch.fft.rfft2(window * torch.fft.irfft2(lat_spec * diff, s=shape))
        blur_grad = torch.fft.rfft2(window * torch.fft.irfft2(blur_spec * diff, s=shape))
        numerator = numerator + lat_grad.conj() * blur_grad
        denominator = denominator + lat_grad.abs().square()
    gamma = KERNEL_TIKHONOV * denominator.mean() + torch.finfo(denominator.dtype).tiny
    full = torch.fft.irfft2(numerator / (denominator + gamma), s=shape)
    half = size // 2
    full = torch.roll(full, shifts=(half, half), dims=(0, 1))
    return full[:size, :size]


def clean_kernel(
    kernel: np.ndarray, faint: float = KERNEL_FAINT, negative_floor: float = KERNEL_NEGATIVE_FLOOR
) -> np.ndarray:
    """Non-negative, faint values and small disconnected parts removed, centred, sum 1.

    Parameters
    ----------
    kernel : numpy.ndarray, shape (h, w)
        Raw kernel estimate (may be negative).
    faint : float
        Values below this fraction of the peak are removed (:data:`KERNEL_FAINT`).
    negative_floor : float
        Values below this multiple of ``-min(kernel)`` are removed too
        (:data:`KERNEL_NEGATIVE_FLOOR`; 0 turns it off).

    Returns
    -------
    numpy.ndarray, float64, same shape; a centred delta when nothing is left.
    """
    raw = np.nan_to_num(np.asarray(kernel, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    k = np.clip(raw, 0.0, None)
    peak = k.max()
    if not peak > 0:
        return _delta(k.shape)
    k[k < max(faint * peak, -negative_floor * raw.min())] = 0.0
    labels, count = ndi.label(k > 0, structure=np.ones((3, 3), bool))
    if count > 1:
        masses = np.asarray(ndi.sum(k, labels, index=np.arange(1, count + 1)))
        keep = masses >= KERNEL_MIN_PART * masses.sum()
        keep[np.argmax(masses)] = True
        k[~np.concatenate(([False], keep))[labels]] = 0.0
    k /= k.sum()
    return _centred(k)


def _delta(shape: tuple[int, int]) -> np.ndarray:
    k = np.zeros(shape, np.float64)
    k[shape[0] // 2, shape[1] // 2] = 1.0
    return k


def _centred(kernel: np.ndarray) -> np.ndarray:
    """Shift by whole pixels so that the centre of mass is nearest the middle pixel."""
    offset = kernel_centroid_offsets(torch.from_numpy(np.asarray(kernel, np.float64))[None])[0]
    shift_r, shift_c = (round(-float(value)) for value in offset)
    if shift_r == 0 and shift_c == 0:
        return kernel
    moved = ndi.shift(kernel, (shift_r, shift_c), order=0, mode="constant", cval=0.0)
    total = moved.sum()
    return moved / total if total > 0 else kernel


def _resized_kernel(kernel: np.ndarray, size: int) -> np.ndarray:
    """Resize a kernel to ``size x size`` (bilinear), cleaned and normalised."""
    if kernel.shape[0] == size:
        return kernel
    tensor = torch.from_numpy(np.ascontiguousarray(kernel))[None, None]
    resized = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=True)
    return clean_kernel(resized[0, 0].numpy())


def _initial_kernel(size: int) -> np.ndarray:
    """A small blob at the centre: an unbiased start (a delta would be a fixed point)."""
    axis = np.arange(size) - size // 2
    profile = np.exp(-(axis**2) / 2.0)
    kernel = np.outer(profile, profile)
    return kernel / kernel.sum()


# --- the estimator -----------------------------------------------------------------


def _positions(length: int, size: int) -> list[int]:
    """Starts of windows of ``size`` every quarter window along ``length``, the last at the end."""
    step = max(1, size // 4)
    starts = list(range(0, length - size + 1, step))
    return starts if starts[-1] == length - size else [*starts, length - size]


def estimation_window(
    plane: np.ndarray, region: tuple[int, int, int, int], max_pixels: int | None = None
) -> tuple[int, int, int, int]:
    """The window of ``region`` the estimator works on: all of it, or its most textured part.

    Parameters
    ----------
    plane : numpy.ndarray, shape (H, W)
        The grey plane.
    region : (y, x, height, width)
        A window of ``plane`` (pixels).
    max_pixels : int, optional
        Most pixels of the result; :data:`MAX_ESTIMATION_PIXELS` by default.

    Returns
    -------
    (y, x, height, width)
        ``region`` itself when it has at most ``max_pixels`` pixels. Otherwise
        a window inside it of ``h = min(height, max(isqrt(max_pixels),
        max_pixels // width))`` by ``min(width, max_pixels // h)`` px (square
        where the region allows), placed every quarter window, the one whose
        mean absolute gradient on the plane averaged over
        :data:`TEXTURE_REDUCTION`-px blocks is largest (the first of equals).
        Working memory: about half a float32 copy of the region (float64
        block means, made in strips, and their running sums).
    """
    max_pixels = MAX_ESTIMATION_PIXELS if max_pixels is None else max_pixels
    top, left, height, width = region
    if height * width <= max_pixels:
        return region
    win_h = min(height, max(math.isqrt(max_pixels), max_pixels // width))
    win_w = min(width, max_pixels // win_h)
    factor = TEXTURE_REDUCTION
    rows, cols = max(height // factor, 1), max(width // factor, 1)
    f_rows, f_cols = min(factor, height), min(factor, width)
    reduced = np.empty((rows, cols), np.float64)
    for r0 in range(0, rows, 256):  # strips: no region-sized temporaries
        r1 = min(r0 + 256, rows)
        block = plane[top + r0 * f_rows : top + r1 * f_rows, left : left + cols * f_cols]
        reduced[r0:r1] = block.reshape(r1 - r0, f_rows, cols, f_cols).mean(axis=(1, 3), dtype=np.float64)
    texture = np.zeros((rows + 1, cols + 1))
    texture[1:, 1:] = np.abs(np.diff(reduced, axis=0, append=reduced[-1:]))
    texture[1:, 1:] += np.abs(np.diff(reduced, axis=1, append=reduced[:, -1:]))
    del reduced
    integral = texture.cumsum(axis=0).cumsum(axis=1)
    size_r, size_c = max(min(win_h // f_rows, rows), 1), max(min(win_w // f_cols, cols), 1)
    best, where = -1.0, (0, 0)
    for y in _positions(rows, size_r):
        for x in _positions(cols, size_c):
            score = (
                integral[y + size_r, x + size_c]
                - integral[y, x + size_c]
                - integral[y + size_r, x]
                + integral[y, x]
            )
            if score > best:
                best, where = score, (y, x)
    y = min(where[0] * f_rows, height - win_h)
    x = min(where[1] * f_cols, width - win_w)
    return top + y, left + x, win_h, win_w


def _normalised_intensity(plane: np.ndarray) -> np.ndarray:
    """Scale to about [0, 1] (robust percentiles) so the L0 weights have one meaning."""
    low, high = np.percentile(plane, [0.5, 99.5])
    if high - low <= 1e-12 * max(1.0, abs(high)):
        low, high = float(plane.min()), float(plane.max())
    span = high - low
    if span <= 0:
        return np.zeros_like(plane)
    return ((plane - low) / span).astype(np.float32)


def _estimate_level(
    blurred: torch.Tensor, kernel: np.ndarray, steps: int, lambda_gradient: float, settings: EstimatorSettings
) -> tuple[np.ndarray, float]:
    """Alternate latent image and kernel ``steps`` times at one pyramid level."""
    height, width = blurred.shape
    size = kernel.shape[0]
    margin = size
    fft_shape = taper_fft_shape((height, width), margin, margin)
    padded = taper_pad(blurred[None, None], margin, margin, fft_shape)[0, 0]
    spectrum = torch.fft.rfft2(padded)
    dx, dy = _difference_otfs(fft_shape, blurred.device, blurred.dtype)
    window = _frame_window(
        fft_shape, (margin, margin, height, width), max(size // 2, 1), blurred.device, blurred.dtype
    )
    for _ in range(steps):
        otf = kernel_to_otf(torch.from_numpy(kernel).to(blurred)[None], fft_shape)[0]
        latent = latent_l0(
            spectrum,
            otf,
            dx,
            dy,
            fft_shape,
            lambda_gradient,
            LAMBDA_INTENSITY,
            growth=SPLITTING_GROWTH,
            max_weight=SPLITTING_MAX,
        )
        raw = kernel_least_squares(latent, padded, window, dx, dy, size)
        kernel = clean_kernel(
            raw.detach().to("cpu", torch.float64).numpy(), settings.kernel_faint, settings.negative_floor
        )
        lambda_gradient = max(lambda_gradient / LAMBDA_DECAY, settings.lambda_floor)
    return kernel, lambda_gradient


def iter_estimate_psf(
    image,
    *,
    size: int | None = None,
    region=None,
    channel_axis: int | None = None,
    device=None,
    settings: EstimatorSettings = SHIPPED_SETTINGS,
) -> JobSteps[np.ndarray]:
    """Generator twin of :func:`estimate_psf` (yields progress per pyramid level)."""
    plane = _grey_plane(image, channel_axis)
    if size is None:
        checked = _check_region(region, plane.shape, AUTO_MIN_KERNEL)
        bound = min(checked[2], checked[3]) // REGION_SIZE_FACTOR
        bound = min(AUTO_KERNEL_BOUND, bound if bound % 2 else bound - 1)
    else:
        bound = check_kernel_size(size)
        checked = _check_region(region, plane.shape, bound)
    top, left, height, width = estimation_window(plane, checked)
    if (height, width) != checked[2:]:
        logger.info(
            "estimating from the most textured %dx%d window at (%d, %d) of the %dx%d %s",
            height,
            width,
            top,
            left,
            checked[2],
            checked[3],
            "image" if region is None else "region",
        )
    window = _normalised_intensity(plane[top : top + height, left : left + width])
    target = select_device(device)
    if not window.any():
        logger.warning("the image window is flat: no blur can be seen; returning a point kernel")
        yield JobProgress(1.0, "PSF estimation: flat image")
        return _delta((size or MIN_KERNEL_SIZE,) * 2).astype(np.float32)
    full = torch.from_numpy(np.array(window, dtype=np.float32)).to(target)
    levels = _pyramid(bound, min(height, width))
    kernel = _initial_kernel(levels[0][1])
    # Thousands of small FFTs: torch's CPU thread pool gains little on them and, on a busy
    # machine, loses a lot waiting for its threads, so CPU work runs on one thread and the
    # setting is restored afterwards.
    threads = torch.get_num_threads()
    if target.type == "cpu":
        torch.set_num_threads(CPU_THREADS)
    try:
        kernel = yield from _coarse_to_fine(full, levels, kernel, settings)
    finally:
        torch.set_num_threads(threads)
    yield JobProgress(1.0, "PSF estimation: done")
    kernel = sharpen_kernel(kernel, settings.sharpening_power)
    kernel = fit_kernel(kernel, max(MIN_KERNEL_SIZE, support_side(kernel)) if size is None else size)
    return kernel.astype(np.float32)


def sharpen_kernel(kernel: np.ndarray, power: float) -> np.ndarray:
    """``kernel ** power``, normalised to sum 1 and centred (:data:`KERNEL_SHARPENING_POWER`).

    Parameters
    ----------
    kernel : numpy.ndarray, shape (h, w)
        Non-negative kernel with some mass.
    power : float
        Exponent, > 0; 1 returns the kernel unchanged.

    Returns
    -------
    numpy.ndarray, float64, same shape.
    """
    if not power > 0:
        raise ValueError(f"power must be positive, got {power!r}.")
    kernel = np.asarray(kernel, np.float64)
    if power == 1.0:
        return kernel
    raised = np.clip(kernel, 0.0, None) ** power
    total = raised.sum()
    if not total > 0:
        return kernel
    return _centred(raised / total)


def support_side(kernel: np.ndarray) -> int:
    """Odd side of the smallest centred square holding every positive value of ``kernel``."""
    rows, cols = np.nonzero(np.asarray(kernel) > 0)
    if rows.size == 0:
        return 1
    reach = max(np.abs(rows - kernel.shape[0] // 2).max(), np.abs(cols - kernel.shape[1] // 2).max())
    return int(2 * reach + 1)


def fit_kernel(kernel: np.ndarray, size: int) -> np.ndarray:
    """An odd square ``kernel`` cropped or zero-padded about its centre to ``size x size``, sum 1."""
    side = kernel.shape[0]
    if side == size:
        return kernel
    if side > size:
        cut = (side - size) // 2
        out = kernel[cut : cut + size, cut : cut + size].copy()
    else:
        out = np.pad(kernel, (size - side) // 2)
    total = out.sum()
    return out / total if total > 0 else _delta((size, size))


def stack_kernels(kernels) -> np.ndarray:
    """Odd square kernels as one float32 ``(N, k, k)`` stack, each cut or padded about its centre
    to the largest side ``k`` (:func:`fit_kernel`), each summing to 1."""
    side = max(np.shape(kernel)[-1] for kernel in kernels)
    return np.stack([fit_kernel(np.asarray(kernel, np.float64), side) for kernel in kernels]).astype(
        np.float32
    )


def _working_size(kernel: np.ndarray, level_size: int) -> int:
    """Kernel box for a level: the support grown by :data:`SUPPORT_GROWTH` and
    :data:`SUPPORT_MARGIN` px a side, at most ``level_size``."""
    grown = _odd(support_side(kernel) * SUPPORT_GROWTH + 2 * SUPPORT_MARGIN)
    return min(level_size, max(grown, _odd(COARSEST_KERNEL)))


def _coarse_to_fine(
    full: torch.Tensor, levels: list[tuple[float, int]], kernel: np.ndarray, settings: EstimatorSettings
) -> JobSteps[np.ndarray]:
    height, width = full.shape
    lambda_gradient = LAMBDA_GRADIENT
    previous_bound = levels[0][1]
    with torch.inference_mode():
        for index, (scale, level_size) in enumerate(levels):
            yield JobProgress(index / len(levels), f"PSF estimation: level {index + 1}/{len(levels)}")
            # the previous box seen at this level's scale, then cut to the support found so far
            kernel = _resized_kernel(kernel, _odd(kernel.shape[0] * level_size / previous_bound))
            kernel = fit_kernel(kernel, _working_size(kernel, level_size))
            previous_bound = level_size
            if scale < 1.0:
                shape = (max(2, round(height * scale)), max(2, round(width * scale)))
                blurred = F.interpolate(
                    full[None, None], size=shape, mode="bilinear", antialias=True, align_corners=False
                )[0, 0]
            else:
                blurred = full
            kernel, lambda_gradient = _estimate_level(
                blurred, kernel, OUTER_ITERATIONS, lambda_gradient, settings
            )
            logger.debug(
                "level %d/%d: kernel box %d of at most %d px",
                index + 1,
                len(levels),
                kernel.shape[0],
                level_size,
            )
    return kernel


@job_facade(iter_estimate_psf)
def estimate_psf() -> np.ndarray:
    """Estimate the blur kernel (PSF) of an image from the image alone (blind).

    Parameters
    ----------
    image : array_like, shape (H, W), or (H, W, 3|4) colour
        One plane, any real dtype and intensity scale. Colour images are
        estimated on their luminance (Rec. 709 for RGB/RGBA, the channel mean
        otherwise); a trailing axis of 3 or 4 channels is taken as colour
        without ``channel_axis``.
    size : int, optional
        Largest side of the kernel in pixels, odd and >= 3; the kernel is
        looked for in a box that follows its support up to this bound, and
        returned in a ``size x size`` array. ``None`` (default) chooses the
        size: up to :data:`AUTO_KERNEL_BOUND` px (75) and half the region's
        smaller side, and returns the kernel cut to its support.
    region : (y, x, height, width), optional
        Window of the image to estimate from (pixels, rows and columns of the
        plane); ``None`` uses the whole image. Each side must be at least
        ``2 * size`` px (10 px with ``size=None``). Windows with strong edges in several directions work
        best; flat areas carry no information about the blur. An image or
        region of more than :data:`MAX_ESTIMATION_PIXELS` (1 MP) is estimated
        from its most textured window of that many pixels
        (:func:`estimation_window`).
    channel_axis : int, optional
        Axis of colour channels.
    device : str or torch.device, optional
        ``None``/"auto" (CUDA, then MPS, then CPU), "cpu", "cuda" or "mps".
    settings : EstimatorSettings
        Estimator settings (default: the shipped ones).
    progress, cancel
        See :func:`~napari_deblur.engine.core.jobs.run_job`.

    Returns
    -------
    numpy.ndarray, float32, shape (size, size), or (n, n) with n odd for ``size=None``
        Non-negative kernel summing to 1, its centre of mass at the middle
        pixel (within half a pixel), in the convention of
        :func:`~napari_deblur.engine.blur`.

    Raises
    ------
    ValueError
        For an empty, complex or non-finite image, more than one plane, an
        even or too small ``size``, a region outside the image or smaller than
        ``2 * size`` px per side, or an unavailable device.
    TypeError
        For a non-numeric image, or a ``size`` or ``region`` of the wrong type.

    Notes
    -----
    Coarse-to-fine MAP estimation with an L0 gradient prior (Xu et al. 2013,
    Pan et al. 2014); see docs/methods/blind-psf.md for the maths. The kernel is
    known only up to a shift (the latent image shifts with it), so it is
    returned centred. The input is never modified. About 1 s for a 256x256
    window on one CPU core, about 15 s for 1 MP; time and
    memory are bounded by :data:`MAX_ESTIMATION_PIXELS` whatever the image's size.
    """


# --- comparing kernels ----------------------------------------------------------------


def _as_kernel(kernel, name: str) -> np.ndarray:
    array = as_float_image(kernel, name=name).astype(np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2D kernel (h, w), got shape {array.shape}.")
    if not np.any(array):
        raise ValueError(f"{name} is all zeros; a kernel needs some mass to be compared.")
    return array


def kernel_similarity(estimate, truth) -> float:
    """Kernel similarity of Hu & Yang: the best normalised cross-correlation over shifts.

    Parameters
    ----------
    estimate, truth : array_like, shape (h1, w1) and (h2, w2)
        Two kernels, any sizes (the smaller is in effect zero-padded), any
        scale (each is normalised by its L2 norm).

    Returns
    -------
    float
        ``max_s sum_p a(p) b(p + s) / (||a|| ||b||)`` over all integer shifts
        ``s``; in [0, 1] for non-negative kernels, 1 exactly when one is a
        shifted copy of the other. Symmetric in its arguments.

    Raises
    ------
    ValueError
        If a kernel is not 2D, is empty, non-finite, complex or all zeros.
    TypeError
        For a non-numeric kernel.
    """
    a = _as_kernel(estimate, "estimate")
    b = _as_kernel(truth, "truth")
    correlation = fftconvolve(a, b[::-1, ::-1], mode="full")
    value = float(correlation.max()) / (np.linalg.norm(a) * np.linalg.norm(b))
    return float(min(value, 1.0))
