"""3D point spread functions of fluorescence microscopes: computed models and measured bead stacks.

:func:`microscope_psf` computes a widefield (or confocal) PSF from the optics
(vectorial and scalar models from ``psfmodels``, or a Gaussian approximation);
:func:`prepare_measured_psf` turns a measured bead stack into a kernel the
deconvolutions accept. Both return float32 arrays that sum to 1, centred at
``(nz // 2, ny // 2, nx // 2)``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ..core.validation import as_float_image

PSF_MODELS = ("vectorial", "scalar", "gaussian")
"""Models of :func:`microscope_psf`."""

MAX_PSF_SIDE = 1025
"""Largest side (voxels) of a computed PSF."""

MAX_PSF_VOXELS = 1 << 26
"""Largest number of voxels of a computed PSF (64 Mi, 256 MiB in float32)."""

GAUSSIAN_LATERAL_FACTOR = 0.21
"""Lateral sigma of the Gaussian approximation in units of ``wavelength / na``."""

GAUSSIAN_AXIAL_FACTOR = 0.66
"""Axial sigma of the Gaussian approximation in units of ``wavelength * ni / na**2``."""


def _check_shape(shape) -> tuple[int, int, int]:
    try:
        sides = tuple(int(s) for s in shape)
    except TypeError as error:
        raise ValueError(f"shape must be (nz, ny, nx) or (nz, n), got {shape!r}.") from error
    if any(float(s) != int(s) for s in shape):
        raise ValueError(f"shape must hold whole numbers of voxels, got {shape!r}.")
    if len(sides) == 2:
        sides = (sides[0], sides[1], sides[1])
    if len(sides) != 3:
        raise ValueError(f"shape must be (nz, ny, nx) or (nz, n), got {shape!r}.")
    if any(s < 1 or s % 2 == 0 for s in sides):
        raise ValueError(
            f"PSF sides must be positive odd numbers (so the PSF has a centre voxel), got {sides}."
        )
    if max(sides) > MAX_PSF_SIDE or math.prod(sides) > MAX_PSF_VOXELS:
        raise ValueError(
            f"PSF shape {sides} is too large: at most {MAX_PSF_SIDE} voxels a side and "
            f"{MAX_PSF_VOXELS} voxels in all. A PSF a few times its FWHM wide is enough."
        )
    return sides


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if value is None:
            continue
        if not (isinstance(value, (int, float, np.number)) and np.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, got {value!r}.")


def _gaussian_psf(sides: tuple[int, int, int], *, na, wavelength, dxy, dz, ni) -> np.ndarray:
    sigma_xy = GAUSSIAN_LATERAL_FACTOR * wavelength / na / dxy
    sigma_z = GAUSSIAN_AXIAL_FACTOR * wavelength * ni / na**2 / dz
    axes = [np.arange(n, dtype=np.float64) - n // 2 for n in sides]
    pz = np.exp(-0.5 * (axes[0] / sigma_z) ** 2)
    py = np.exp(-0.5 * (axes[1] / sigma_xy) ** 2)
    px = np.exp(-0.5 * (axes[2] / sigma_xy) ** 2)
    return pz[:, None, None] * py[None, :, None] * px[None, None, :]


def _model_psf(sides, *, na, wavelength, dxy, dz, ni, ns, model) -> np.ndarray:
    if model == "gaussian":
        return _gaussian_psf(sides, na=na, wavelength=wavelength, dxy=dxy, dz=dz, ni=ni)
    import psfmodels  # imported when a model PSF is asked for

    nz, ny, nx = sides
    side = max(ny, nx)
    psf = psfmodels.make_psf(
        nz, side, dxy=dxy, dz=dz, NA=na, wvl=wavelength, ns=ns, ni=ni, ni0=ni, model=model
    )
    top, left = (side - ny) // 2, (side - nx) // 2
    return np.asarray(psf, dtype=np.float64)[:, top : top + ny, left : left + nx]


def microscope_psf(
    shape,
    *,
    na: float,
    wavelength: float,
    dxy: float,
    dz: float,
    ni: float = 1.515,
    ns: float | None = None,
    model: str = "vectorial",
    confocal: bool = False,
    excitation_wavelength: float | None = None,
) -> np.ndarray:
    """The 3D PSF of a widefield or confocal fluorescence microscope.

    Parameters
    ----------
    shape : (nz, ny, nx) or (nz, n)
        Size in voxels, each side odd (the point source sits in the centre
        voxel); ``(nz, n)`` means a square ``n x n`` lateral field. At most
        :data:`MAX_PSF_SIDE` a side and :data:`MAX_PSF_VOXELS` in all.
    na : float
        Numerical aperture of the objective, below ``ni``.
    wavelength : float
        Emission wavelength in µm.
    dxy, dz : float
        Lateral and axial voxel sizes in the sample, in µm.
    ni : float
        Refractive index of the immersion medium (design and actual).
    ns : float, optional
        Refractive index of the sample; default ``ni`` (index-matched, no
        spherical aberration). The point source is at the coverslip.
    model : {"vectorial", "scalar", "gaussian"}
        "vectorial" (Aguet et al.) and "scalar" (Gibson-Lanni) are computed
        with ``psfmodels``; "gaussian" is the Gaussian approximation below.
    confocal : bool
        A confocal (pinhole closed) PSF: the product of the excitation PSF
        (at ``excitation_wavelength``) and the emission PSF, renormalised.
    excitation_wavelength : float, optional
        In µm; default ``wavelength``. Only used when ``confocal``.

    Returns
    -------
    numpy.ndarray, float32, shape (nz, ny, nx)
        Non-negative, sums to 1, centred at ``(nz // 2, ny // 2, nx // 2)``.

    Raises
    ------
    ValueError
        For even, non-positive or too large sides, non-positive optics
        parameters, ``na >= ni``, or an unknown model.

    Notes
    -----
    The Gaussian model is the paraxial widefield approximation of Zhang et
    al.: lateral sigma ``0.21 λ / NA``, axial sigma ``0.66 λ n_i / NA²``.

    References
    ----------
    .. [1] B. Zhang, J. Zerubia and J.-C. Olivo-Marin, "Gaussian approximations
       of fluorescence microscope point-spread function models", Applied
       Optics 46(10), 1819-1829, 2007.
    .. [2] F. Aguet, D. Van De Ville and M. Unser, "An accurate PSF model with
       few parameters for axially shift-variant deconvolution", ISBI 2008;
       F. Aguet, PhD thesis, EPFL, 2009 (vectorial model of ``psfmodels``).
    .. [3] S. F. Gibson and F. Lanni, "Experimental test of an analytical
       model of aberration in an oil-immersion objective lens used in
       three-dimensional light microscopy", JOSA A 8(10), 1601-1613, 1991.
    """
    sides = _check_shape(shape)
    _check_positive(na=na, wavelength=wavelength, dxy=dxy, dz=dz, ni=ni, ns=ns)
    if model not in PSF_MODELS:
        raise ValueError(f"model must be one of {PSF_MODELS}, got {model!r}.")
    if na >= ni:
        raise ValueError(f"na ({na}) must be below the immersion index ni ({ni}).")
    ns = ni if ns is None else float(ns)
    optics = dict(na=float(na), dxy=float(dxy), dz=float(dz), ni=float(ni), ns=ns, model=model)
    psf = _model_psf(sides, wavelength=float(wavelength), **optics)
    if confocal:
        excitation = wavelength if excitation_wavelength is None else excitation_wavelength
        _check_positive(excitation_wavelength=excitation)
        psf = psf * _model_psf(sides, wavelength=float(excitation), **optics)
    psf = np.clip(psf, 0.0, None)
    total = psf.sum()
    if not total > 0:
        raise ValueError(f"The {model} PSF for these parameters is zero everywhere; check dxy, dz and shape.")
    return (psf / total).astype(np.float32)


MEASURED_PSF_SHELL = 2
"""Width (voxels) of the outer shell whose median is a measured stack's background."""

MEASURED_PSF_SMOOTHING = 1.0
"""Gaussian sigma (voxels) applied before looking for a measured stack's peak."""


def prepare_measured_psf(stack, *, shape=None) -> np.ndarray:
    """A PSF from a measured bead stack: background-free, cropped around its peak, sum 1.

    Parameters
    ----------
    stack : array_like, shape (nz, ny, nx) or (ny, nx)
        A bead image, any real dtype.
    shape : tuple of odd int, optional
        Size of the kernel, same number of axes as ``stack``. Default: the
        largest odd box centred on the peak that fits in the stack. Parts of
        a larger box that fall outside the stack are zero.

    Returns
    -------
    numpy.ndarray, float32, shape ``shape``
        Non-negative, sums to 1, the peak at the centre voxel.

    Raises
    ------
    ValueError
        For empty, NaN/infinite or flat stacks (nothing above the
        background), stacks that are not 2D or 3D, or a bad ``shape``.

    Notes
    -----
    The background is the median of the outer :data:`MEASURED_PSF_SHELL`
    voxels of every face; it is subtracted and negative values clipped to 0.
    The peak is the brightest voxel after a Gaussian smoothing of
    :data:`MEASURED_PSF_SMOOTHING` voxels (robust to hot pixels and noise).
    """
    data = as_float_image(stack, name="stack").astype(np.float64)
    if data.ndim not in (2, 3):
        raise ValueError(f"stack must be a 2D or 3D bead image, got shape {data.shape}.")
    shell = np.ones(data.shape, dtype=bool)
    inner = tuple(
        slice(MEASURED_PSF_SHELL, n - MEASURED_PSF_SHELL) if n > 2 * MEASURED_PSF_SHELL else slice(0, 0)
        for n in data.shape
    )
    shell[inner] = False
    background = float(np.median(data[shell]))
    data = np.clip(data - background, 0.0, None)
    if not data.max() > 0:
        raise ValueError(
            "stack is flat: nothing rises above its background (the median of its border). "
            "Pass a stack that contains a bead."
        )
    smoothed = ndimage.gaussian_filter(data, MEASURED_PSF_SMOOTHING, mode="nearest")
    peak = np.unravel_index(int(np.argmax(smoothed)), data.shape)
    if shape is None:
        sides = tuple(2 * min(p, n - 1 - p) + 1 for p, n in zip(peak, data.shape))
    else:
        try:
            sides = tuple(int(s) for s in shape)
        except TypeError as error:
            raise ValueError(f"shape must be a tuple of odd sizes, got {shape!r}.") from error
        if len(sides) != data.ndim or any(s < 1 or s % 2 == 0 for s in sides):
            raise ValueError(f"shape must hold {data.ndim} positive odd sizes, got {shape!r}.")
    kernel = np.zeros(sides, dtype=np.float64)
    source, target = [], []
    for p, n, s in zip(peak, data.shape, sides):
        start = p - s // 2
        lo, hi = max(start, 0), min(start + s, n)
        source.append(slice(lo, hi))
        target.append(slice(lo - start, hi - start))
    kernel[tuple(target)] = data[tuple(source)]
    total = kernel.sum()
    if not total > 0:
        raise ValueError("The cropped PSF is empty; give a larger shape.")
    return (kernel / total).astype(np.float32)
