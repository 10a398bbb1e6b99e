"""Offline, deterministic sample data for napari-deblur.

Everything is made at run time from scikit-image's bundled images and fixed
seeds, so the samples work without a network connection and give the same
arrays on every call.

Two levels:

* plain-numpy builders (``*_arrays``) used by the command line and the tests;
* npe2 sample-data functions (``*_sample``) returning napari LayerData lists.

Importing this module imports neither Qt nor napari; the engine (and torch) is
imported only by the builders that need its PSFs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_deblur.layer_roles import BLUR_MAP_ROLE, ROLE_KEY, psf_metadata

__all__ = [
    "DEFOCUS_RAMP_MAX_SIGMA",
    "camera_shake_arrays",
    "camera_shake_sample",
    "defocus_ramp_arrays",
    "defocus_ramp_sample",
    "defocused_zstack_arrays",
    "defocused_zstack_sample",
    "WIDEFIELD_VOLUME_OPTICS",
    "widefield_volume_arrays",
    "widefield_volume_sample",
]

LayerData = tuple[np.ndarray, dict[str, Any], str]

DEFOCUS_RAMP_MAX_SIGMA = 6.0
"""Gaussian sigma (pixels) at the bottom row of the defocus-ramp sample."""

_RAMP_SIGMA_STEP = 0.25  # spacing of the pre-blurred levels the ramp interpolates between


def _grey_photo(name: str) -> np.ndarray:
    """A bundled scikit-image photo as grey float64 in [0, 1]."""
    import skimage.data
    from skimage.color import rgb2gray
    from skimage.util import img_as_float

    image = getattr(skimage.data, name)()
    if image.ndim == 3:
        return rgb2gray(image[..., :3]).astype(np.float64)
    return img_as_float(image).astype(np.float64)


def _fit_photo(photo: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Centre-crop ``photo`` to ``shape``'s aspect ratio, then resize to ``shape``."""
    from skimage.transform import resize

    height, width = shape
    ph, pw = photo.shape
    if (ph, pw) == (height, width):
        return photo
    scale = min(ph / height, pw / width)
    ch, cw = round(height * scale), round(width * scale)
    top, left = (ph - ch) // 2, (pw - cw) // 2
    crop = photo[top : top + ch, left : left + cw]
    return resize(crop, (height, width), order=1, anti_aliasing=scale > 1, mode="reflect")


def _check_shape(shape: Any, ndim: int, minimum: int, name: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError as exc:
        raise TypeError(f"{name} must be a tuple of {ndim} integers, got {shape!r}.") from exc
    if len(shape) != ndim or min(shape) < minimum:
        raise ValueError(f"{name} must be {ndim} integers, each at least {minimum}; got {shape!r}.")
    return shape


# --------------------------------------------------------------------------- defocus ramp


def defocus_ramp_arrays(
    shape: tuple[int, int] = (384, 384),
    *,
    max_sigma: float = DEFOCUS_RAMP_MAX_SIGMA,
    photo: str = "camera",
) -> tuple[np.ndarray, np.ndarray]:
    """A photo whose Gaussian blur grows linearly from the top row to the bottom row.

    The scenario of Nasonov et al. (Fig. 9): sigma is 0 at the top row and
    ``max_sigma`` at the bottom row. The photo is blurred at sigmas
    0, 0.25, 0.5, ... (a grid that covers ``max_sigma``) and every row is
    linearly interpolated between the two levels nearest to its own sigma,
    which is exact at the grid levels and cheap.

    Parameters
    ----------
    shape : tuple of int
        ``(rows, columns)`` of the output, each at least 8. The photo is
        centre-cropped and resized to it.
    max_sigma : float
        Gaussian sigma in pixels at the bottom row (>= 0).
    photo : str
        Name of a bundled grey or colour image in :mod:`skimage.data`.

    Returns
    -------
    blurred : numpy.ndarray
        ``shape``, float32 in [0, 1]; noise-free.
    true_blur_map : numpy.ndarray
        ``shape``, float32: the Gaussian sigma (pixels) used at each pixel,
        ``max_sigma * row / (rows - 1)``.

    Raises
    ------
    ValueError
        Bad ``shape`` or negative / non-finite ``max_sigma``.
    """
    from scipy.ndimage import gaussian_filter

    rows, columns = _check_shape(shape, 2, 8, "shape")
    max_sigma = float(max_sigma)
    if not np.isfinite(max_sigma) or max_sigma < 0:
        raise ValueError(f"max_sigma must be a finite number >= 0 (pixels), got {max_sigma}.")
    sharp = _fit_photo(_grey_photo(photo), (rows, columns))
    sigma_rows = max_sigma * np.arange(rows) / (rows - 1)
    true_map = np.repeat(sigma_rows[:, np.newaxis], columns, axis=1).astype(np.float32)
    if max_sigma == 0:
        return np.clip(sharp, 0.0, 1.0).astype(np.float32), true_map

    n_steps = max(1, int(np.ceil(max_sigma / _RAMP_SIGMA_STEP - 1e-9)))
    levels = np.linspace(0.0, max_sigma, n_steps + 1)
    position = np.interp(sigma_rows, levels, np.arange(levels.size))
    lower = np.minimum(np.floor(position).astype(int), levels.size - 2)
    weight = (position - lower)[:, np.newaxis]

    blurred = np.empty((rows, columns), dtype=np.float64)
    for k in range(levels.size - 1):
        selected = np.flatnonzero(lower == k)
        if selected.size == 0:
            continue
        # Only the rows that use levels k and k+1 are needed, plus a margin for the Gaussian's support.
        margin = int(np.ceil(4.0 * levels[k + 1])) + 1
        top = max(0, selected[0] - margin)
        bottom = min(rows, selected[-1] + margin + 1)
        band = sharp[top:bottom]
        below = gaussian_filter(band, levels[k], mode="reflect") if levels[k] > 0 else band
        above = gaussian_filter(band, levels[k + 1], mode="reflect")
        w = weight[selected]
        blurred[selected] = (1.0 - w) * below[selected - top] + w * above[selected - top]

    # Gaussian filtering of values in [0, 1] stays in [0, 1] up to rounding.
    blurred = np.clip(blurred, 0.0, 1.0).astype(np.float32)
    return blurred, true_map


def defocus_ramp_sample() -> list[LayerData]:
    """npe2 sample: a photo whose defocus grows down the image, with its true blur map.

    Returns
    -------
    list of LayerData
        The blurred image ``"Defocus ramp (blurred)"`` and the true Gaussian
        sigma map in pixels ``"Defocus ramp: true blur map (px)"`` (marked as
        a blur map in its metadata).
    """
    blurred, true_map = defocus_ramp_arrays()
    return [
        (blurred, {"name": "Defocus ramp (blurred)", "colormap": "gray"}, "image"),
        (
            true_map,
            {
                "name": "Defocus ramp: true blur map (px)",
                "colormap": "inferno",
                "contrast_limits": (0.0, DEFOCUS_RAMP_MAX_SIGMA),
                "metadata": {ROLE_KEY: BLUR_MAP_ROLE, "source": "sample: defocus ramp", "units": "px"},
            },
            "image",
        ),
    ]


# --------------------------------------------------------------------------- camera shake


def camera_shake_arrays(
    seed: int = 7,
    *,
    shape: tuple[int, int] = (384, 384),
    psf_size: int = 25,
    noise_sigma: float = 0.01,
    photo: str = "astronaut",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A photo blurred by a random camera-shake PSF with real boundaries, plus noise.

    A crop of the photo larger than the output by the PSF size is convolved
    with ``mode="valid"`` (:func:`scipy.signal.fftconvolve`), so content from
    outside the frame bleeds in as it does in a camera; then Gaussian noise is
    added. The result is not clipped, so it follows the linear blur model.

    Parameters
    ----------
    seed : int
        Seeds both the PSF (:func:`napari_deblur.engine.random_motion_psf`)
        and the noise.
    shape : tuple of int
        ``(rows, columns)`` of the output; the photo (512 x 512) must hold
        ``shape + psf_size - 1``.
    psf_size : int
        Odd PSF size in pixels.
    noise_sigma : float
        Standard deviation of the Gaussian noise (image scale [0, 1]).
    photo : str
        Name of a bundled image in :mod:`skimage.data`.

    Returns
    -------
    blurred : numpy.ndarray
        ``shape``, float32, blurred and noisy (about [0, 1]).
    psf : numpy.ndarray
        ``(psf_size, psf_size)`` float32, sums to 1, centred.
    sharp : numpy.ndarray
        ``shape``, float32 in [0, 1]: the part of the photo that ``blurred``
        shows, pixel-aligned with it.

    Raises
    ------
    ValueError
        Even or too small ``psf_size``, negative noise, or a ``shape`` the
        photo cannot hold.
    """
    from scipy.signal import fftconvolve

    from napari_deblur.engine import random_motion_psf

    rows, columns = _check_shape(shape, 2, 8, "shape")
    psf_size = int(psf_size)
    if psf_size < 3 or psf_size % 2 == 0:
        raise ValueError(f"psf_size must be an odd integer >= 3, got {psf_size}.")
    noise_sigma = float(noise_sigma)
    if not np.isfinite(noise_sigma) or noise_sigma < 0:
        raise ValueError(f"noise_sigma must be a finite number >= 0, got {noise_sigma}.")
    source = _grey_photo(photo)
    need = (rows + psf_size - 1, columns + psf_size - 1)
    if need[0] > source.shape[0] or need[1] > source.shape[1]:
        raise ValueError(
            f"shape {shape} with psf_size {psf_size} needs a {need[0]} x {need[1]} crop, but the "
            f"{photo!r} photo is {source.shape[0]} x {source.shape[1]}; ask for a smaller shape."
        )
    top = (source.shape[0] - need[0]) // 2
    left = (source.shape[1] - need[1]) // 2
    crop = source[top : top + need[0], left : left + need[1]]

    psf = np.asarray(random_motion_psf(psf_size, rng=int(seed)), dtype=np.float32)
    blurred = fftconvolve(crop, psf.astype(np.float64), mode="valid")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 1]))
    blurred = blurred + rng.normal(0.0, noise_sigma, size=blurred.shape)
    radius = psf_size // 2
    sharp = crop[radius : radius + rows, radius : radius + columns]
    return blurred.astype(np.float32), psf, sharp.astype(np.float32)


def camera_shake_sample() -> list[LayerData]:
    """npe2 sample: a photo blurred by camera shake, and the PSF that did it.

    Returns
    -------
    list of LayerData
        ``"Camera shake (blurred)"`` and ``"Camera shake PSF"`` (PSF metadata).
    """
    from napari_deblur.engine import psf_blur_level

    seed = 7
    blurred, psf, _sharp = camera_shake_arrays(seed)
    meta = psf_metadata(source="sample: camera shake", seed=seed, blur_level_px=float(psf_blur_level(psf)))
    return [
        (blurred, {"name": "Camera shake (blurred)", "colormap": "gray"}, "image"),
        (psf, {"name": "Camera shake PSF", "colormap": "magma", "metadata": meta}, "image"),
    ]


# --------------------------------------------------------------------------- defocused z-stack


def _render_specimen(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Sparse beads and curvy filaments on a dark background, float64 in [0, 1]."""
    from scipy.ndimage import gaussian_filter

    depth, rows, columns = shape
    extent = np.array(shape, dtype=np.float64)

    # Beads: points of random brightness, rounded into blobs of two sizes.
    beads = np.zeros(shape)
    n_beads = max(4, int(round(rows * columns * depth / 3000)))
    centres = rng.uniform(0.0, 1.0, size=(n_beads, 3)) * (extent - 1)
    index = np.round(centres).astype(int)
    np.add.at(beads, tuple(index.T), rng.uniform(0.5, 1.0, n_beads))
    small = gaussian_filter(beads, sigma=(1.2, 1.0, 1.0))
    big_beads = np.zeros(shape)
    n_big = max(2, n_beads // 4)
    index = np.round(rng.uniform(0.0, 1.0, size=(n_big, 3)) * (extent - 1)).astype(int)
    np.add.at(big_beads, tuple(index.T), rng.uniform(0.5, 1.0, n_big))
    big = gaussian_filter(big_beads, sigma=(1.5, 2.2, 2.2))

    # Filaments: smooth random curves, sampled densely and splatted into the volume.
    lines = np.zeros(shape)
    n_filaments = max(2, int(round(rows * columns / 2500)))
    t = np.linspace(0.0, 1.0, 4 * (rows + columns))
    for _ in range(n_filaments):
        start = rng.uniform(0.1, 0.9, 3) * (extent - 1)
        direction = rng.normal(size=3) * np.array([0.04, 1.0, 1.0])  # mostly lying in the xy plane
        direction /= np.linalg.norm(direction)
        length = rng.uniform(0.6, 1.2) * max(rows, columns)
        path = start + (t - 0.5)[:, np.newaxis] * length * direction
        for _harmonic in range(2):  # gentle wiggles across the line
            amplitude = rng.normal(size=3) * np.array([0.8, 6.0, 6.0])
            frequency = rng.uniform(0.5, 2.5)
            phase = rng.uniform(0.0, 2.0 * np.pi)
            path = path + np.sin(2.0 * np.pi * frequency * t + phase)[:, np.newaxis] * amplitude
        inside = np.all((path >= 0) & (path <= extent - 1), axis=1)
        voxels = np.unique(np.round(path[inside]).astype(int), axis=0)
        np.add.at(lines, tuple(voxels.T), rng.uniform(0.3, 0.6))
    filaments = gaussian_filter(lines, sigma=(1.2, 0.7, 0.7))

    specimen = small + big + filaments
    specimen /= max(float(np.percentile(specimen, 99.9)), 1e-12)
    return np.clip(specimen, 0.0, 1.0)


def defocused_zstack_arrays(
    shape: tuple[int, int, int] = (16, 128, 128),
    *,
    focal_plane: int | None = None,
    sigma_in_focus: float = 0.6,
    sigma_per_plane: float = 0.5,
    photons: float = 300.0,
    background: float = 0.03,
    seed: int = 3,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A small fluorescence-like z-stack whose planes go out of focus away from a focal plane.

    The specimen (sparse beads of two sizes and curvy filaments on a dark
    background) is blurred plane by plane with a Gaussian PSF of sigma
    ``sigma_in_focus + sigma_per_plane * |z - focal_plane|`` pixels
    (:func:`napari_deblur.engine.blur` with a per-plane PSF stack), then
    Poisson (shot) noise is drawn for ``photons`` photons at intensity 1.

    Parameters
    ----------
    shape : tuple of int
        ``(Z, Y, X)``; Z >= 1, Y and X >= 16.
    focal_plane : int, optional
        Index of the sharpest plane; default ``Z // 2``.
    sigma_in_focus, sigma_per_plane : float
        Gaussian sigma (pixels) at the focal plane and its growth per plane.
    photons : float
        Expected photon count at intensity 1 (lower: noisier).
    background : float
        Constant background level added before the noise (intensity scale).
    seed : int
        Seeds the specimen and the noise.

    Returns
    -------
    stack : numpy.ndarray
        ``(Z, Y, X)`` float32, non-negative, about [0, 1]: blurred and noisy.
    psf_stack : numpy.ndarray
        ``(Z, n, n)`` float32, one centred Gaussian PSF per plane, each
        summing to 1; n is odd and the same for every plane.
    sharp : numpy.ndarray
        ``(Z, Y, X)`` float32 in [0, 1]: the specimen plus background, no
        blur and no noise.

    Raises
    ------
    ValueError
        Bad shape, focal plane outside the stack, or non-positive sigmas /
        photon count.
    """
    from napari_deblur.engine import blur, gaussian_psf

    depth, rows, columns = _check_shape(shape, 3, 1, "shape")
    if min(rows, columns) < 16:
        raise ValueError(f"shape must have Y and X of at least 16 pixels, got {shape!r}.")
    if focal_plane is None:
        focal_plane = depth // 2
    focal_plane = int(focal_plane)
    if not 0 <= focal_plane < depth:
        raise ValueError(f"focal_plane must be in [0, {depth - 1}], got {focal_plane}.")
    if not (sigma_in_focus > 0 and sigma_per_plane >= 0 and photons > 0 and background >= 0):
        raise ValueError(
            "sigma_in_focus and photons must be > 0, sigma_per_plane and background >= 0; got "
            f"{sigma_in_focus}, {photons}, {sigma_per_plane}, {background}."
        )

    rng = np.random.default_rng(seed)
    specimen = _render_specimen((depth, rows, columns), rng)
    sharp = specimen * (1.0 - background) + background

    sigmas = sigma_in_focus + sigma_per_plane * np.abs(np.arange(depth) - focal_plane)
    size = 2 * int(np.ceil(3.5 * sigmas.max())) + 1
    psf_stack = np.stack([np.asarray(gaussian_psf(float(s), size=size), dtype=np.float32) for s in sigmas])

    blurred = np.asarray(blur(sharp.astype(np.float32), psf_stack, psf_per_plane=True), dtype=np.float64)
    counts = rng.poisson(np.clip(blurred, 0.0, None) * photons)
    stack = (counts / photons).astype(np.float32)
    return stack, psf_stack, sharp.astype(np.float32)


def defocused_zstack_sample() -> list[LayerData]:
    """npe2 sample: an out-of-focus fluorescence z-stack and its per-plane PSF stack.

    Returns
    -------
    list of LayerData
        ``"Out-of-focus z-stack"`` with ``scale=(2.0, 1.0, 1.0)`` (z steps
        twice the pixel size) and ``"Out-of-focus z-stack PSF"`` (PSF
        metadata, one kernel per plane, same z scale so the planes line up).
    """
    from napari_deblur.engine import psf_blur_level

    stack, psf_stack, _sharp = defocused_zstack_arrays()
    levels = [float(psf_blur_level(plane)) for plane in psf_stack]
    meta = psf_metadata(
        source="sample: defocused z-stack",
        psf_per_plane=True,
        blur_level_px=float(np.mean(levels)),
        blur_levels_px=levels,
        focal_plane=stack.shape[0] // 2,
    )
    scale = (2.0, 1.0, 1.0)
    return [
        (stack, {"name": "Out-of-focus z-stack", "scale": scale, "colormap": "gray"}, "image"),
        (
            psf_stack,
            {"name": "Out-of-focus z-stack PSF", "scale": scale, "colormap": "magma", "metadata": meta},
            "image",
        ),
    ]


# --------------------------------------------------------------------------- widefield volume

WIDEFIELD_VOLUME_OPTICS: dict[str, float] = {
    "na": 1.4,
    "wavelength": 0.52,
    "dxy": 0.1,
    "dz": 0.2,
    "ni": 1.515,
}
"""Optics of the widefield-volume sample: NA, emission wavelength (µm), voxel sizes (µm), oil index."""


def widefield_volume_arrays(
    shape: tuple[int, int, int] = (32, 128, 128),
    *,
    psf_shape: tuple[int, int, int] = (21, 41, 41),
    photons: float = 1000.0,
    background: float = 10.0,
    seed: int = 5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A widefield fluorescence volume blurred in 3D by a vectorial microscope PSF, with its PSF.

    The specimen (beads and curvy filaments) is made larger than ``shape`` by
    the PSF size minus one in every axis and convolved with ``mode="valid"``
    (:func:`scipy.signal.fftconvolve`), so out-of-focus light from above,
    below and beside the field reaches it as in a real stack. The PSF is
    :func:`napari_deblur.engine.microscope_psf` (vectorial model) for
    :data:`WIDEFIELD_VOLUME_OPTICS`. Poisson noise is drawn for ``photons``
    at the blurred volume's 99.9th percentile over ``background`` photons.

    Parameters
    ----------
    shape : tuple of int
        ``(Z, Y, X)`` of the volume; Z >= the PSF's z size, Y and X >= 16.
    psf_shape : tuple of int
        ``(kz, ky, kx)`` of the PSF, odd sides, no larger than ``shape``.
    photons : float
        Photon count at the blurred volume's 99.9th percentile (> 0).
    background : float
        Background photons added to every voxel (>= 0).
    seed : int
        Seeds the specimen and the noise.

    Returns
    -------
    volume : numpy.ndarray
        ``(Z, Y, X)`` float32 photon counts (non-negative), blurred and noisy.
    psf : numpy.ndarray
        ``psf_shape`` float32, sums to 1, centred.
    sharp : numpy.ndarray
        ``(Z, Y, X)`` float32: the specimen in the same photon scale plus the
        background, without blur or noise, voxel-aligned with ``volume``.

    Raises
    ------
    ValueError
        A bad shape, a PSF larger than the volume, or non-positive photons.
    """
    from scipy.signal import fftconvolve

    from napari_deblur.engine import microscope_psf

    depth, rows, columns = _check_shape(shape, 3, 1, "shape")
    kernel_shape = _check_shape(psf_shape, 3, 1, "psf_shape")
    if min(rows, columns) < 16:
        raise ValueError(f"shape must have Y and X of at least 16 voxels, got {shape!r}.")
    if any(k > n for k, n in zip(kernel_shape, (depth, rows, columns), strict=True)):
        raise ValueError(f"psf_shape {psf_shape!r} must be no larger than shape {shape!r}.")
    if not (photons > 0 and background >= 0):
        raise ValueError(f"photons must be > 0 and background >= 0, got {photons} and {background}.")

    psf = np.asarray(microscope_psf(kernel_shape, **WIDEFIELD_VOLUME_OPTICS, model="vectorial"), np.float32)
    big = tuple(n + k - 1 for n, k in zip((depth, rows, columns), kernel_shape, strict=True))
    rng = np.random.default_rng(seed)
    specimen = _render_specimen(big, rng).astype(np.float32)
    blurred = fftconvolve(specimen, psf, mode="valid").astype(np.float64)
    gain = float(photons) / max(float(np.percentile(blurred, 99.9)), 1e-12)
    counts = rng.poisson(np.clip(blurred, 0.0, None) * gain + background)
    start = tuple(k // 2 for k in kernel_shape)
    sharp = specimen[tuple(slice(s, s + n) for s, n in zip(start, (depth, rows, columns), strict=True))]
    return counts.astype(np.float32), psf, (sharp * gain + background).astype(np.float32)


def widefield_volume_sample() -> list[LayerData]:
    """npe2 sample: a widefield fluorescence volume and its 3D PSF, both with voxel sizes in µm.

    Returns
    -------
    list of LayerData
        ``"Widefield volume"`` and ``"Widefield volume PSF"`` (PSF metadata
        with the optics), both with ``scale=(0.2, 0.1, 0.1)`` µm.
    """
    volume, psf, _sharp = widefield_volume_arrays()
    optics = WIDEFIELD_VOLUME_OPTICS
    scale = (optics["dz"], optics["dxy"], optics["dxy"])
    meta = psf_metadata(source="sample: widefield volume", model="vectorial", **optics)
    units = ("micrometer",) * 3
    return [
        (volume, {"name": "Widefield volume", "scale": scale, "units": units, "colormap": "gray"}, "image"),
        (
            psf,
            {
                "name": "Widefield volume PSF",
                "scale": scale,
                "units": units,
                "colormap": "magma",
                "metadata": meta,
            },
            "image",
        ),
    ]
