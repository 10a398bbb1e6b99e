"""Point-spread functions: parametric models, camera shake, and the blur level.

Every builder returns a float32 ``(n, n)`` array with ``n`` odd, the kernel's
centre at ``(n // 2, n // 2)`` and a sum of 1. Lengths are in pixels. Sides
above :data:`MAX_PSF_SIZE` are refused with ``ValueError``.
"""

from __future__ import annotations

import math

import numpy as np

from ..core.validation import as_psf

_SUPERSAMPLING = 8  # sub-pixel samples per axis for anti-aliased shapes
_PROFILE_BLOCK_SAMPLES = 2**22  # sub-pixel samples evaluated at once (32 MiB of float64)

MAX_PSF_SIZE = 4095
"""Largest kernel side (pixels) the builders make.

A larger kernel (asked for with ``size`` or implied by the blur, e.g.
``gaussian_psf(1e6)`` or ``disk_psf(1e5)``) is refused with ``ValueError``
instead of asking for terabytes. 4095 is the largest odd side within 4096 px:
a 4095 x 4095 float32 kernel is 64 MiB, and a blur that wide already exceeds
most images the engine restores (a PSF larger than the image is refused)."""

MAX_MOTION_STEPS = 1_000_000
"""Most trajectory samples :func:`random_motion_psf` takes (``n_steps``); each is a Python step."""


def _odd_size(size, extent: float, *, name: str = "size", what: str = "this blur") -> int:
    """The kernel side: ``size`` if given (odd, 1..MAX_PSF_SIZE), else fits ``extent`` pixels of radius.

    Raises ``TypeError`` for a non-integer ``size`` and ``ValueError`` for an
    even, non-positive or too large one, or when ``extent`` needs a kernel
    wider than :data:`MAX_PSF_SIZE`.
    """
    if size is None:
        if not extent <= (MAX_PSF_SIZE - 1) // 2:  # also catches inf (and nan)
            raise ValueError(
                f"{what} needs a kernel of {2 * extent + 1:.4g} x {2 * extent + 1:.4g} px, more than "
                f"the largest of {MAX_PSF_SIZE} x {MAX_PSF_SIZE} px (MAX_PSF_SIZE); use a smaller "
                f"blur, or pass {name}= to crop the kernel."
            )
        return 2 * int(math.ceil(extent)) + 1
    if isinstance(size, (bool, np.bool_)) or not isinstance(size, (int, np.integer, float, np.floating)):
        raise TypeError(f"{name} must be an odd integer number of pixels, not {size!r}.")
    if not float(size).is_integer():  # also nan and inf
        raise ValueError(f"{name} must be an odd integer number of pixels, got {size!r}.")
    size = int(size)
    if size < 1 or size % 2 == 0:
        raise ValueError(f"{name} must be a positive odd integer (the kernel is centred), got {size}.")
    if size > MAX_PSF_SIZE:
        raise ValueError(
            f"{name}={size} is larger than the largest kernel side, {MAX_PSF_SIZE} px (MAX_PSF_SIZE)."
        )
    return size


def _check_length(value: float, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number of pixels, not {value!r}.")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0 pixels, got {value}.")
    return value


def _delta(size: int) -> np.ndarray:
    kernel = np.zeros((size, size), np.float32)
    kernel[size // 2, size // 2] = 1.0
    return kernel


def _normalised(kernel: np.ndarray) -> np.ndarray:
    kernel = np.asarray(kernel, np.float64)
    return (kernel / kernel.sum()).astype(np.float32)


def _radial_psf(profile, radius: float, size: int | None) -> np.ndarray:
    """A normalised, anti-aliased kernel from ``profile(r, radius)``; radius 0 is a point."""
    radius = _check_length(radius, "radius")
    size = _odd_size(size, radius, what=f"radius={radius:g}")
    if radius == 0:
        return _delta(size)
    return _normalised(_radial_profile_psf(lambda r: profile(r, radius), size))


def _radial_profile_psf(profile, size: int) -> np.ndarray:
    """Anti-aliased kernel: average ``profile(r)`` over sub-pixel samples of each pixel."""
    half = size // 2
    offsets = (np.arange(_SUPERSAMPLING) + 0.5) / _SUPERSAMPLING - 0.5
    coords = (np.arange(size) - half)[:, None] + offsets[None, :]  # (size, S)
    x = coords[None, :, None, :]
    kernel = np.empty((size, size), np.float64)
    # A block of rows at a time: all (size, size, S, S) samples at once would be 8 GiB at 4095 px.
    rows = max(1, _PROFILE_BLOCK_SAMPLES // (size * _SUPERSAMPLING**2))
    for top in range(0, size, rows):
        y = coords[top : top + rows, None, :, None]
        r = np.sqrt(y**2 + x**2)  # (rows, size, S, S)
        kernel[top : top + rows] = profile(r).mean(axis=(2, 3))
    if kernel.sum() <= 0:  # a shape smaller than the sub-pixel grid: a point
        kernel[half, half] = 1.0
    return kernel


def gaussian_psf(sigma: float, size: int | None = None) -> np.ndarray:
    """Isotropic Gaussian PSF (defocus and microscope blur model).

    Parameters
    ----------
    sigma : float
        Standard deviation in pixels (>= 0); 0 gives the identity kernel.
    size : int, optional
        Odd side length; default ``2 * ceil(4 * sigma) + 1``.

    Returns
    -------
    numpy.ndarray, float32, shape (size, size), sums to 1.

    Raises
    ------
    ValueError
        ``sigma`` negative or not finite; ``size`` even, below 1 or not whole; a kernel
        (given or implied, ``2 * ceil(4 * sigma) + 1``) wider than :data:`MAX_PSF_SIZE`.
    TypeError
        A parameter that is not a number (``size``: not an integer).
    """
    sigma = _check_length(sigma, "sigma")
    size = _odd_size(size, 4.0 * sigma, what=f"sigma={sigma:g}")
    if sigma * sigma == 0:  # 0, or so small that its square underflows: a point
        return _delta(size)
    axis = np.arange(size) - size // 2
    profile = np.exp(-(axis.astype(np.float64) ** 2) / (2.0 * sigma**2))
    return _normalised(np.outer(profile, profile))


def disk_psf(radius: float, size: int | None = None) -> np.ndarray:
    """Uniform disk PSF (out-of-focus lens) with an anti-aliased edge.

    Parameters
    ----------
    radius : float
        Disk radius in pixels (>= 0); 0 gives the identity kernel. Its blur
        level (:func:`psf_blur_level`) is about ``radius / 2``.
    size : int, optional
        Odd side length; default ``2 * ceil(radius) + 1``.

    Returns
    -------
    numpy.ndarray, float32, shape (size, size), sums to 1.

    Raises
    ------
    ValueError
        ``radius`` negative or not finite; ``size`` even, below 1 or not whole; a kernel
        (given or implied, ``2 * ceil(radius) + 1``) wider than :data:`MAX_PSF_SIZE`.
    TypeError
        A parameter that is not a number (``size``: not an integer).
    """
    return _radial_psf(lambda r, rad: (r <= rad).astype(np.float64), radius, size)


def ring_psf(radius: float, size: int | None = None) -> np.ndarray:
    """Ring PSF of Nasonov, Krylov & Lyukov: a bright rim around a dim disk.

    The unnormalised profile is 0.25 for ``|x| <= 0.75 r``, 1 for
    ``0.75 r < |x| <= r`` and 0 outside (lens with spherical aberration).

    Parameters
    ----------
    radius : float
        Outer radius ``r`` in pixels (>= 0); 0 gives the identity kernel.
    size : int, optional
        Odd side length; default ``2 * ceil(radius) + 1``.

    Returns
    -------
    numpy.ndarray, float32, shape (size, size), sums to 1.

    Raises
    ------
    ValueError
        ``radius`` negative or not finite; ``size`` even, below 1 or not whole; a kernel
        (given or implied, ``2 * ceil(radius) + 1``) wider than :data:`MAX_PSF_SIZE`.
    TypeError
        A parameter that is not a number (``size``: not an integer).
    """
    return _radial_psf(
        lambda r, rad: np.where(r <= 0.75 * rad, 0.25, np.where(r <= rad, 1.0, 0.0)), radius, size
    )


def _splat_points(points_yx: np.ndarray, weights: np.ndarray, size: int) -> np.ndarray:
    """Bilinear splatting of sub-pixel points (relative to the kernel centre)."""
    kernel = np.zeros((size + 1, size + 1), np.float64)
    coords = points_yx + size // 2
    base = np.floor(coords).astype(int)
    frac = coords - base
    for dy in (0, 1):
        for dx in (0, 1):
            share = (frac[:, 0] if dy else 1 - frac[:, 0]) * (frac[:, 1] if dx else 1 - frac[:, 1])
            np.add.at(kernel, (base[:, 0] + dy, base[:, 1] + dx), share * weights)
    return kernel[:size, :size]


def motion_psf(length: float, angle: float, size: int | None = None) -> np.ndarray:
    """Linear motion PSF: a uniform line segment through the centre.

    Parameters
    ----------
    length : float
        Length of the motion in pixels (>= 0); 0 gives the identity kernel.
    angle : float
        Direction in degrees, counter-clockwise from the +x (column) axis as
        seen on screen (rows grow downwards).
    size : int, optional
        Odd side length; default just fits the segment.

    Returns
    -------
    numpy.ndarray, float32, shape (size, size), sums to 1.

    Raises
    ------
    ValueError
        ``length`` negative or not finite, ``angle`` not finite; ``size`` even, below 1,
        not whole or too small for the motion; a kernel wider than :data:`MAX_PSF_SIZE`.
    TypeError
        A parameter that is not a number (``size``: not an integer).
    """
    length = _check_length(length, "length")
    if isinstance(angle, (bool, np.bool_)) or not isinstance(angle, (int, float, np.integer, np.floating)):
        raise TypeError(f"angle must be a number of degrees, not {angle!r}.")
    angle = float(angle)
    if not math.isfinite(angle):
        raise ValueError(f"angle must be a finite number of degrees, got {angle}.")
    size = _odd_size(size, length / 2.0 + 1.0, what=f"length={length:g}")
    if length == 0:
        return _delta(size)
    if length / 2.0 > size // 2:
        raise ValueError(f"A motion of {length} px does not fit a {size}x{size} kernel; use a larger size.")
    n_samples = max(int(math.ceil(length * 16)), 2)
    t = np.linspace(-length / 2.0, length / 2.0, n_samples)
    theta = math.radians(angle)
    points = np.stack([-t * math.sin(theta), t * math.cos(theta)], axis=1)
    return _normalised(_splat_points(points, np.ones(n_samples), size))


def _as_generator(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be None, an int seed or a numpy Generator, not {type(rng).__name__}.")


def random_motion_psf(size: int = 25, rng=None, *, n_steps: int = 1000) -> np.ndarray:
    """Random camera-shake PSF, after the trajectory model of Boracchi & Foi (2012).

    A point moves with inertia (its velocity changes little from step to
    step), is pulled back toward its start, is perturbed by Gaussian noise and
    now and then jerks to a new direction (impulsive shake). The path, scaled
    to fit the kernel, is rasterised with sub-pixel accuracy and centred on
    its centre of mass.

    Parameters
    ----------
    size : int
        Odd side length of the kernel in pixels (>= 3).
    rng : None, int or numpy.random.Generator
        Source of randomness; an int seed gives a reproducible kernel.
    n_steps : int
        Samples along the trajectory.

    Returns
    -------
    numpy.ndarray, float32, shape (size, size), sums to 1.

    Raises
    ------
    ValueError
        ``size`` even, below 3, not whole or wider than :data:`MAX_PSF_SIZE`; ``n_steps``
        outside 2..:data:`MAX_MOTION_STEPS`.
    TypeError
        A parameter that is not a number (``size``: not an integer).
    """
    size = _odd_size(size, 0)
    if size < 3:
        raise ValueError(f"size must be at least 3 for a camera-shake kernel, got {size}.")
    if isinstance(n_steps, (bool, np.bool_)) or not isinstance(n_steps, (int, np.integer)):
        raise TypeError(f"n_steps must be an integer, not {n_steps!r}.")
    if not 2 <= n_steps <= MAX_MOTION_STEPS:
        raise ValueError(
            f"n_steps must be between 2 and {MAX_MOTION_STEPS} (MAX_MOTION_STEPS), got {n_steps}."
        )
    n_steps = int(n_steps)
    gen = _as_generator(rng)
    max_extent = (size - 3) * gen.uniform(0.45, 1.0)  # trajectory span in pixels
    centripetal = 0.7 * gen.uniform()
    jerk_probability = 0.2 * gen.uniform()
    perturbation = 10.0 * gen.uniform()
    anxiety = 0.1 * gen.uniform()
    step = 1.0 / (n_steps - 1)
    position = np.zeros(n_steps, np.complex128)
    velocity = np.exp(1j * gen.uniform(0, 2 * np.pi)) * step
    for t in range(n_steps - 1):
        jerk = 0.0
        if gen.uniform() < jerk_probability * anxiety:
            jerk = 2.0 * velocity * np.exp(1j * (np.pi + gen.uniform(-0.5, 0.5)))
        noise = perturbation * complex(gen.normal(), gen.normal())
        velocity = velocity + jerk + anxiety * (noise - centripetal * position[t]) * step
        velocity = velocity / abs(velocity) * step
        position[t + 1] = position[t] + velocity
    points = np.stack([position.imag, position.real], axis=1)
    points -= points.mean(axis=0)
    span = np.abs(points).max()
    if span > 0:
        points *= (max_extent / 2.0) / span
    kernel = _splat_points(points, np.ones(n_steps), size)
    # Re-centre on the centre of mass (splatting keeps it within half a pixel).
    return _normalised(kernel)


def psf_blur_level(psf) -> float:
    """Blur level of a PSF: its standard deviation along one axis, in pixels.

    Defined as ``sqrt(trace(M) / 2)`` with ``M`` the second central moment
    matrix of the normalised kernel: ``sigma`` for a Gaussian, ``r / 2`` for a
    disk of radius ``r``. This is the unit of every blur map in the project.

    Parameters
    ----------
    psf : array_like, shape (h, w)
        Kernel with a positive sum.

    Returns
    -------
    float
    """
    kernel = as_psf(psf).astype(np.float64)
    if kernel.ndim != 2:
        raise ValueError(f"psf_blur_level takes one 2D kernel, got shape {kernel.shape}.")
    rows, cols = np.indices(kernel.shape, dtype=np.float64)
    mean_r = float((kernel * rows).sum())
    mean_c = float((kernel * cols).sum())
    var_r = float((kernel * (rows - mean_r) ** 2).sum())
    var_c = float((kernel * (cols - mean_c) ** 2).sum())
    return math.sqrt(max(var_r + var_c, 0.0) / 2.0)
