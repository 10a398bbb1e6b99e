"""Spatially varying defocus: deconvolution driven by a blur map.

Each pixel's blur level (from :func:`~.blur_map.estimate_blur_map` or given;
the smallest within :data:`SAFE_LEVEL_WINDOW` px, see :func:`safe_levels`)
picks its PSF from a bank of defocus kernels at the levels of
:data:`DEFOCUS_LEVELS` (Gaussian or disk). Wiener-net's input is made for
every kernel of the bank that some pixel needs (its Wiener stack, normalised
alike for all kernels), and the inputs are blended per pixel with weights that
interpolate between the two bank levels around the pixel's level, linearly in
variance (blur adds in variance); the network then runs once on the blended
input. Its output is corrected by the residual for every kernel of the bank
(:func:`~.wiener_net.correct_by_residual`) and those corrections are blended
with the same weights. A level that changes across the image thus changes the
deconvolution smoothly: no seams and no tiles per level. Large planes run in
tiles, each blending only the levels its own pixels need. See
docs/methods/defocus-deblur.md.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from ...options import DEFAULT_ENSEMBLE
from ..core.devices import cpu_bfloat16_is_fast, select_device
from ..core.jobs import JobProgress, JobSteps, job_facade, scaled_steps
from ..core.lazy import is_dask_array, lazy_layout, lazy_planewise
from ..core.planes import PlaneLayout, iter_planewise
from ..core.tiling import device_tile_size, iter_one_channel_at_a_time
from ..core.validation import as_float_image
from ..nets.layers import check_ensemble_size
from ..nets.wiener_net import WienerNet, load_wiener_net
from ..physics.psf import disk_psf, gaussian_psf
from .blur_map import check_blur_levels, is_auto_blur, iter_estimate_blur_map
from .wiener import WIENER_STACK_SNRS_DB
from .wiener_net import (
    TILE_SIZE,
    correct_by_residual,
    iter_correction_tiles,
    iter_network_tiles,
    plane_statistics,
    tile_context,
    wiener_net_features,
)

PSF_MODELS: tuple[str, ...] = ("gaussian", "disk")
"""Defocus kernel shapes: a Gaussian (soft optics, microscopes) or a uniform disk (a camera lens)."""

DEFOCUS_LEVELS: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 7.0, 8.0)
"""Blur levels (px, PSF standard deviation as :func:`~napari_deblur.engine.psf_blur_level`) of the
kernel bank. Levels between two of them blend their neighbours; levels above the last are
treated as the last (the blur map's own ceiling)."""

SAFE_LEVEL_WINDOW = 15
"""Each pixel is deconvolved with the smallest level of the map within this window (px, odd):
near a change of focus the image mixes both blurs, and deconvolving that with the larger level
rings while the smaller one only leaves a few pixels soft. Chosen on training images (protocol
2c's generator): it raised the mean gain over the input by 0.3 dB with estimated maps and by
0.1 dB with true maps."""

MAP_SHARE = 0.3
"""Share of the progress bar given to estimating the map when none is given."""

AUTO_MAP = None
"""``blur_map=None`` (or :data:`~.blur_map.AUTO_BLUR`, as :func:`~.gwis.sharpen_gwis` takes): the map
is estimated by :func:`~.blur_map.estimate_blur_map`."""


def _is_auto(blur_map) -> bool:
    return blur_map is AUTO_MAP or is_auto_blur(blur_map)


def _check_psf_model(psf_model) -> str:
    if not isinstance(psf_model, str) or psf_model not in PSF_MODELS:
        raise ValueError(f"psf_model must be one of {PSF_MODELS}, got {psf_model!r}.")
    return psf_model


def defocus_psf(psf_model: str, level: float) -> np.ndarray:
    """The bank's kernel of ``psf_model`` at blur ``level`` px (a point at level 0).

    A Gaussian of standard deviation ``level``, or a disk of radius ``2 * level``
    (whose standard deviation per axis is ``level``). Returns float32 ``(k, k)``
    summing to 1. Raises ValueError for an unknown model.
    """
    _check_psf_model(psf_model)
    if level <= 0:
        return np.ones((1, 1), np.float32)
    return gaussian_psf(level) if psf_model == "gaussian" else disk_psf(2.0 * level)


def level_weights(levels: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Per-pixel blending weights of the bank's kernels.

    Parameters
    ----------
    levels : Tensor, shape (H, W)
        Blur level of each pixel (px, >= 0).
    bank : Tensor, shape (K,)
        Increasing bank levels starting at 0.

    Returns
    -------
    Tensor, shape (K, H, W)
        For each pixel, weights on the two bank levels around its level,
        linear in variance (``level**2``), summing to 1; a level above the
        last bank level puts all its weight on the last.
    """
    variance = levels.clamp(0.0, float(bank[-1])).square()
    bank_variance = bank.square()
    upper = torch.searchsorted(bank_variance, variance.contiguous()).clamp(1, len(bank) - 1)
    lower = upper - 1
    share = ((variance - bank_variance[lower]) / (bank_variance[upper] - bank_variance[lower])).clamp(
        0.0, 1.0
    )
    weights = levels.new_zeros((len(bank),) + levels.shape)
    weights.scatter_add_(0, lower[None], (1.0 - share)[None])
    weights.scatter_add_(0, upper[None], share[None])
    return weights


def safe_levels(levels: torch.Tensor, window: int = SAFE_LEVEL_WINDOW) -> torch.Tensor:
    """The smallest level of ``levels`` ``(H, W)`` within a ``window`` px square around each pixel."""
    padded = F.pad(-levels[None, None], (window // 2,) * 4, mode="replicate")
    # A square's maximum is the maximum over its columns of the maxima over its rows:
    # two 1D pools cost 2 * window comparisons a pixel instead of window**2.
    rows = F.max_pool2d(padded, (window, 1), stride=1)
    return -F.max_pool2d(rows, (1, window), stride=1)[0, 0]


def kernel_bank(levels: torch.Tensor, psf_model: str) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """The bank's weights for ``levels`` and the kernels some pixel needs.

    Parameters
    ----------
    levels : Tensor, shape (H, W)
        Blur level of each pixel in px.
    psf_model : {"gaussian", "disk"}

    Returns
    -------
    weights : Tensor, shape (K, 1, 1, H, W)
        :func:`level_weights`, shaped to scale ``(B, C, H, W)`` planes.
    kernels : dict
        Bank index -> kernel ``(1, k, k)`` on ``levels``' device, for the
        levels with a non-zero weight somewhere.
    """
    bank = torch.tensor(DEFOCUS_LEVELS, dtype=levels.dtype, device=levels.device)
    weights = level_weights(levels, bank)[:, None, None]
    kernels = {
        index: torch.from_numpy(defocus_psf(psf_model, DEFOCUS_LEVELS[index])).to(
            levels.device, levels.dtype
        )[None]
        for index in range(len(bank))
        if bool(weights[index].any())
    }
    return weights, kernels


def blended_features(
    y: torch.Tensor,
    levels: torch.Tensor,
    psf_model: str,
    statistics: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """Wiener-net's input for a per-pixel defocus kernel.

    Parameters
    ----------
    y : Tensor, shape (B, 1, H, W)
        Blurred planes (the channels of one image plane, or a tile of them).
    levels : Tensor, shape (H, W)
        Blur level of each pixel in px.
    psf_model : {"gaussian", "disk"}
    statistics : (mean, scale, noise), each Tensor of shape (B, 1, 1, 1)
        :func:`~.wiener_net.plane_statistics` of the whole plane ``y`` belongs to.

    Returns
    -------
    Tensor, shape (B, S + 2, H, W)
        :func:`~.wiener_net.wiener_net_features` of every kernel of the bank
        that some pixel needs, blended per pixel by :func:`level_weights`.
    """
    weights, kernels = kernel_bank(levels.to(y.dtype), psf_model)
    snrs = torch.tensor(WIENER_STACK_SNRS_DB, dtype=y.dtype, device=y.device)
    blended = None
    for index, kernel in kernels.items():
        features = wiener_net_features(y, kernel, snrs, statistics=statistics)[0].mul_(weights[index])
        blended = features if blended is None else blended.add_(features)
        del features
    return blended


def blended_residual_correction(
    y: torch.Tensor, restored: torch.Tensor, levels: torch.Tensor, psf_model: str, noise: torch.Tensor
) -> torch.Tensor:
    """:func:`~.wiener_net.correct_by_residual` for every kernel of the bank, blended per pixel.

    Parameters
    ----------
    y, restored : Tensor, shape (B, 1, H, W)
    levels : Tensor, shape (H, W)
    psf_model : {"gaussian", "disk"}
    noise : Tensor, shape (B, 1, 1, 1)
        The plane's noise standard deviation.
    """
    weights, kernels = kernel_bank(levels.to(y.dtype), psf_model)
    corrected = torch.zeros_like(restored)
    for index, kernel in kernels.items():
        corrected.add_(correct_by_residual(y, restored, kernel, noise_std=noise).mul_(weights[index]))
    return corrected


def _defocus_plane_steps(model: WienerNet, psf_model: str, ensemble: int, scalar_level: float | None):
    def plane_steps(plane: torch.Tensor, level_map: torch.Tensor | None) -> JobSteps[torch.Tensor]:
        yield JobProgress(0.0, "Defocus deblur")
        grey = plane.transpose(0, 1)  # (C, 1, H, W): every channel is a grayscale plane
        height, width = grey.shape[-2:]
        if level_map is None:
            level_map = grey.new_full((height, width), float(scalar_level))
        level_map = safe_levels(level_map.to(grey.dtype))
        bfloat16 = cpu_bfloat16_is_fast(plane.device)
        widest = defocus_psf(psf_model, float(level_map.clamp_max(DEFOCUS_LEVELS[-1]).max())).shape
        halo, residual_halo = tile_context(widest)
        tile_size = device_tile_size(TILE_SIZE, plane.device)
        restore = partial(
            _iter_restore_tiled,
            model=model,
            level_map=level_map,
            psf_model=psf_model,
            ensemble=ensemble,
            bfloat16=bfloat16,
            halos=(halo, residual_halo),
            tile_size=tile_size,
        )
        if max(height, width) > tile_size:  # tiles of one channel: their memory does not grow with colour
            corrected = yield from iter_one_channel_at_a_time(restore, grey)
        else:
            corrected = yield from restore(grey)
        return corrected.transpose(0, 1)  # (1, C, H, W)

    return plane_steps


def _iter_restore_tiled(
    grey: torch.Tensor,
    *,
    model: WienerNet,
    level_map: torch.Tensor,
    psf_model: str,
    ensemble: int,
    bfloat16: bool,
    halos: tuple[int, int],
    tile_size: int,
) -> JobSteps[torch.Tensor]:
    """Map-driven Wiener-net on ``(B, 1, H, W)`` planes sharing ``level_map`` ``(H, W)``, in tiles."""
    statistics = plane_statistics(grey)
    noise = statistics[2]
    halo, residual_halo = halos
    restored = yield from scaled_steps(
        iter_network_tiles(
            model,
            grey,
            lambda tile, window: blended_features(
                tile, level_map[window.rows, window.cols], psf_model, statistics
            ),
            statistics,
            halo=halo,
            tile_size=tile_size,
            ensemble=ensemble,
            bfloat16=bfloat16,
        ),
        0.0,
        0.85,
    )
    yield JobProgress(0.85, "Residual correction")
    corrected = yield from scaled_steps(
        iter_correction_tiles(
            grey,
            restored,
            lambda y, x, window: blended_residual_correction(
                y, x, level_map[window.rows, window.cols], psf_model, noise
            ),
            halo=residual_halo,
            tile_size=tile_size,
        ),
        0.85,
        1.0,
    )
    return corrected


def iter_deblur_defocus(
    image,
    blur_map=AUTO_MAP,
    *,
    psf_model: str = "gaussian",
    channel_axis: int | None = None,
    device=None,
    ensemble: int = DEFAULT_ENSEMBLE,
) -> JobSteps[np.ndarray]:
    """Generator twin of :func:`deblur_defocus` (progress for the map, then per plane and tile)."""
    check_ensemble_size(ensemble)
    psf_model = _check_psf_model(psf_model)
    pixels = as_float_image(image)
    layout = PlaneLayout.of(pixels.shape, channel_axis)
    map_share = 0.0
    if _is_auto(blur_map):
        map_share = MAP_SHARE
        steps = iter_estimate_blur_map(pixels, channel_axis=channel_axis, device=device)
        blur_map = yield from scaled_steps(steps, 0.0, map_share)
    levels = check_blur_levels(blur_map, layout)
    target = select_device(device)
    model = load_wiener_net(target)
    scalar = isinstance(levels, float)
    steps = _defocus_plane_steps(model, psf_model, ensemble, levels if scalar else None)
    with torch.inference_mode():
        restored = yield from scaled_steps(
            iter_planewise(
                pixels,
                layout,
                steps,
                device=target,
                psf=None if scalar else levels,
                message="Defocus deblur",
            ),
            map_share,
            1.0,
        )
    return restored


def _lazy_deblur_defocus(facade, image, blur_map, **kwargs):
    check_ensemble_size(kwargs["ensemble"])  # now, not when the first plane is computed
    _check_psf_model(kwargs["psf_model"])
    channel_axis = kwargs["channel_axis"]
    if not _is_auto(blur_map) and (is_dask_array(blur_map) or np.ndim(blur_map) > 0):
        return lazy_planewise(
            lambda block, _plane, levels: facade(block, levels, **kwargs),
            image,
            channel_axis=channel_axis,
            per_plane=blur_map,
        )
    if not _is_auto(blur_map):
        blur_map = check_blur_levels(blur_map, lazy_layout(image, channel_axis))
    return lazy_planewise(
        lambda block, _plane: facade(block, blur_map, **kwargs), image, channel_axis=channel_axis
    )


@job_facade(iter_deblur_defocus, lazy=_lazy_deblur_defocus)
def deblur_defocus() -> np.ndarray:
    """Sharpen each part of an image by its own defocus: deconvolution driven by a blur map.

    Parameters
    ----------
    image : array_like, shape (..., H, W) or with a channel axis
        Any real dtype and intensity scale; leading axes (z, t) are processed
        plane by plane, every colour channel with the same map.
    blur_map : None, float or array_like
        Blur level of each pixel in px (PSF standard deviation, as
        :func:`~napari_deblur.engine.psf_blur_level`, >= 0): a map of the
        plane's shape ``(H, W)`` (every plane), of the image's non-channel
        shape, or one number for the whole image. ``None`` (default) or
        ``"auto"`` estimates it with :func:`~napari_deblur.engine.estimate_blur_map`.
        Levels above :data:`DEFOCUS_LEVELS`' last (8 px) are treated as 8 px.
    psf_model : {"gaussian", "disk"}
        Shape of the defocus kernel: a Gaussian of standard deviation equal to
        the level, or a disk of radius twice the level.
    channel_axis : int, optional
        Axis of colour channels (e.g. -1 for RGB); the map is estimated on the
        luminance.
    device : str or torch.device, optional
        ``None``/"auto" (CUDA, then MPS, then CPU), "cpu", "cuda" or "mps".
    ensemble : {1, 2, 4, 8}
        Wiener-net's flipped or turned views (each a network pass).
    progress, cancel
        See :func:`~napari_deblur.engine.core.jobs.run_job`.

    Returns
    -------
    numpy.ndarray, float32, same shape as ``image``, in the input's intensity
    scale (not clipped). A dask array ``image`` (and/or ``blur_map``) gives a
    lazy dask array at once, computed plane by plane.

    Raises
    ------
    ValueError
        For empty, complex or non-finite images; a map with NaN, infinite or
        negative levels or a shape that is neither the plane's nor the image's
        non-channel shape; an unknown ``psf_model``; a bad ``ensemble``; an
        unavailable device.
    TypeError
        For a non-numeric image or map.

    Notes
    -----
    Each pixel is deconvolved with the smallest level of the map within
    :data:`SAFE_LEVEL_WINDOW` (15) px: near a change of focus, too small a
    kernel leaves a few pixels soft where too large a one rings. Wiener-net's
    input is blended per pixel from a bank of kernels at the levels of
    :data:`DEFOCUS_LEVELS` and the network runs once, so the cost is
    one Wiener-net pass plus a Wiener stack and a residual correction per bank
    level the map covers. Large planes run in tiles. See
    docs/methods/defocus-deblur.md.
    """
