"""The one input policy of the engine: what images and PSFs it accepts.

Any real dtype is accepted (bool, unsigned and signed integers, float16/32/64)
and converted to float32 *without rescaling*: a uint8 image comes back with
values in 0..255. The caller's array is never modified.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FLOAT32_MAX = float(np.finfo(np.float32).max)
"""Largest float32 value; the engine works in float32."""


def is_dask_array(x: Any) -> bool:
    """Whether ``x`` is a dask array (without importing dask)."""
    return type(x).__module__.split(".")[0] == "dask" and hasattr(x, "map_blocks")


def as_float_image(image, *, name: str = "image", min_ndim: int = 2) -> np.ndarray:
    """Check an image and return it as a float32 array in its own intensity scale.

    Parameters
    ----------
    image : array_like
        Real-valued array with at least ``min_ndim`` dimensions.
    name : str
        How the array is called in error messages.
    min_ndim : int
        Fewest dimensions accepted.

    Returns
    -------
    numpy.ndarray
        float32, C-contiguous, same shape. May share memory with ``image``
        when it already is float32; the engine never writes into it.

    Raises
    ------
    TypeError
        If ``image`` is not numeric (strings, objects, None).
    ValueError
        If it is empty, complex, has fewer than ``min_ndim`` dimensions,
        contains NaN or infinity, or exceeds the float32 range.
    """
    if image is None:
        raise TypeError(f"{name} is None; pass a numpy array.")
    array = np.asarray(image)
    if np.iscomplexobj(array):
        raise ValueError(
            f"{name} is complex ({array.dtype}); pass a real image, e.g. np.abs({name}) or {name}.real."
        )
    if array.dtype == bool:
        array = array.astype(np.float32)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise TypeError(f"{name} has dtype {array.dtype}, which is not a number type; pass a numeric array.")
    if array.size == 0:
        raise ValueError(f"{name} is empty (shape {array.shape}); pass an array with pixels.")
    if array.ndim < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dimensions (rows and columns), got shape {array.shape}."
        )
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        if not finite.all():
            bad = int(array.size - np.count_nonzero(finite))
            raise ValueError(
                f"{name} contains {bad} NaN or infinite value(s); replace them first "
                f"(e.g. np.nan_to_num) or crop them away."
            )
        if array.dtype.itemsize > 4 and np.abs(array).max() > FLOAT32_MAX:
            raise ValueError(
                f"{name} has values beyond the float32 range (|x| > {FLOAT32_MAX:.3g}); rescale it first."
            )
    return np.ascontiguousarray(array, dtype=np.float32)


def as_psf(psf, *, name: str = "psf") -> np.ndarray:
    """Check a PSF (2D kernel or a stack of 2D kernels) and normalise it.

    Parameters
    ----------
    psf : array_like, shape (h, w) or (n, h, w)
        Real, finite kernel(s) of any magnitude; each kernel must have a
        positive sum.

    Returns
    -------
    numpy.ndarray
        float32 copy, each 2D kernel scaled to sum to 1. A float kernel is
        first divided by the power of two that brings its peak into
        ``[0.5, 1)`` (exact), so kernels of float64 magnitudes beyond or below
        the float32 range are normalised without overflow or underflow.

    Raises
    ------
    ValueError
        If the PSF is empty, not 2D/3D, non-finite, complex, or a kernel's sum
        is zero or negative.
    """
    kernel = as_float_image(_kernels_peaking_near_one(psf), name=name)
    if kernel.ndim not in (2, 3):
        raise ValueError(
            f"{name} must be a 2D kernel (h, w) or a stack of kernels (n, h, w), got shape {kernel.shape}."
        )
    stack = kernel.reshape((-1,) + kernel.shape[-2:]).astype(np.float64)
    sums = stack.sum(axis=(1, 2))
    if np.any(sums <= 0):
        worst = int(np.argmin(sums))
        raise ValueError(
            f"{name} kernel {worst} sums to {sums[worst]:.3g}; a PSF must have a positive sum "
            f"(it is normalised to 1). Check that it is not empty, inverted or zero."
        )
    stack /= sums[:, None, None]
    return stack.reshape(kernel.shape).astype(np.float32)


def is_volume_psf(kernel: np.ndarray, psf_per_plane: bool) -> bool:
    """Whether a checked PSF (:func:`as_psf`) is a 3D PSF, to be applied in 3D.

    A PSF with more than one plane is a 3D PSF unless ``psf_per_plane`` says
    it is a stack of 2D kernels, one per image plane. A ``(1, h, w)`` PSF is a
    2D kernel either way.
    """
    return kernel.ndim == 3 and kernel.shape[0] > 1 and not psf_per_plane


def _kernels_peaking_near_one(psf):
    """``psf`` with each float 2D kernel divided by a power of two so it peaks in ``[0.5, 1)``.

    Anything else (non-float, other shapes, empty, non-finite or all-zero
    kernels) comes back as it is, for :func:`as_float_image` to check.
    """
    array = np.asarray(psf) if psf is not None else psf
    if (
        not isinstance(array, np.ndarray)
        or array.dtype.kind != "f"
        or array.ndim not in (2, 3)
        or not array.size
    ):
        return psf
    with np.errstate(all="ignore"):
        stack = array.astype(np.float64).reshape((-1,) + array.shape[-2:])
        peaks = np.abs(stack).max(axis=(1, 2))
    if not (np.isfinite(peaks).all() and peaks.all()):
        return psf
    exponents = np.frexp(peaks)[1]
    return np.ldexp(stack, -exponents[:, None, None]).reshape(array.shape)


def check_psf_fits(psf_shape: tuple[int, ...], plane_shape: tuple[int, int], *, name: str = "psf") -> None:
    """Raise ``ValueError`` when a kernel is larger than the image plane."""
    kh, kw = psf_shape[-2:]
    height, width = plane_shape
    if kh > height or kw > width:
        raise ValueError(
            f"The {name} ({kh}x{kw} px) is larger than the image plane ({height}x{width} px); "
            f"crop the PSF to its support or use a larger image."
        )
