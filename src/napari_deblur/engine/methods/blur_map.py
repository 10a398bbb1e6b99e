"""Blur-map estimation: the blur level of every pixel from one image, by a compact learned network.

The level is the PSF's standard deviation in pixels
(:func:`~napari_deblur.engine.psf_blur_level`), the number
:func:`~napari_deblur.engine.sharpen_gwis` takes. Features of the luminance
(:func:`blur_map_features`) go through
:class:`~napari_deblur.engine.nets.blur_map.BlurMapNet` on several flipped or
turned views; stacks run plane by plane, large planes in tiles.
See docs/methods/blur-map.md for the method.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.devices import cpu_bfloat16_is_fast, select_device
from ..core.image_stats import estimate_noise_std, luminance
from ..core.jobs import JobProgress, JobSteps, job_facade
from ..core.lazy import lazy_planewise
from ..core.planes import PlaneLayout, iter_planewise
from ..core.tiling import device_tile_size, iter_tiled
from ..core.validation import as_float_image

# The network's names stay importable from here (training, tests).
from ..nets.blur_map import RETRAIN_COMMAND as RETRAIN_COMMAND
from ..nets.blur_map import SIZE_MULTIPLE, load_blur_map_net, output_stride
from ..nets.blur_map import WEIGHTS_FILE as WEIGHTS_FILE
from ..nets.blur_map import WIDTHS as WIDTHS
from ..nets.blur_map import BlurMapNet as BlurMapNet
from ..nets.layers import mean_over_views
from ..physics.gaussian import gaussian_kernel_1d

LEVEL_OFFSET = 0.5
"""The network predicts ``log(1 + level / LEVEL_OFFSET)``."""

MAX_LEVEL = 8.0
"""Estimates are clipped to ``[0, MAX_LEVEL]`` px (training covers 0..6 px)."""

LOCAL_SCALE = 4
"""Local statistics: 4x4 average pooling, then a Gaussian of this many pooled
pixels (about ``4 * LOCAL_SCALE`` = 16 px at full resolution)."""

NOISE_FLOOR = 2.0
"""Floor of the local scale: this many noise standard deviations ..."""

RANGE_FLOOR = 0.01
"""... or this fraction of the plane's intensity range, whichever is larger."""

INPUT_CLIP = 6.0
"""Normalised inputs are clipped to +-this."""

MAP_VIEWS = 4
"""Views :class:`BlurMapNet` is run on by the engine (:func:`predict_log_level`'s ``ensemble``):
the plane, its half turn and its two mirror images, the map the mean of the four turned back."""

TILE_SIZE = 2048
TILE_HALO = 128
TILE_BLEND = 64
"""Tiles for large planes (all multiples of :data:`SIZE_MULTIPLE`, so every tile
sees the same pooling grid); the halo covers most of the receptive field and the
blend hides the rest. A plane larger than one tile has its features made tile by
tile too, so its working memory is that of a tile plus a few planes (luminance,
output, blend weights)."""

FEATURE_HALO = 64
"""Context (px) beyond a tile's window from which its features are made: more than
their reach (4 px pooling, a Gaussian of 3 * :data:`LOCAL_SCALE` pooled px, bilinear
upsampling: 56 px), and a multiple of 4 so the pooling grid is the plane's."""

#: Blur classes of :func:`blur_classes`: label ``i + 1`` holds levels in
#: ``[BLUR_CLASS_EDGES[i], BLUR_CLASS_EDGES[i + 1])`` px.
BLUR_CLASS_EDGES: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0, math.inf)
BLUR_CLASS_NAMES: tuple[str, ...] = ("sharp", "slight", "moderate", "strong", "severe")


# --- tensor level: (B, 1, H, W) -------------------------------------------------------------


def level_to_target(level: torch.Tensor) -> torch.Tensor:
    """Blur level (px) -> network target ``log(1 + level / LEVEL_OFFSET)``."""
    return torch.log1p(level.clamp_min(0) / LEVEL_OFFSET)


def target_to_level(target: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`level_to_target`, clipped to ``[0, MAX_LEVEL]`` px."""
    return (torch.expm1(target) * LEVEL_OFFSET).clamp(0.0, MAX_LEVEL)


def _smooth(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian of ``(B, C, h, w)`` with reflected borders."""
    g = gaussian_kernel_1d(sigma, x.dtype, x.device)
    r = g.numel() // 2
    channels = x.shape[1]
    pad_h, pad_w = min(r, x.shape[-2] - 1), min(r, x.shape[-1] - 1)
    mode = "reflect" if pad_h > 0 and pad_w > 0 else "replicate"
    x = F.pad(x, (pad_w, pad_w, pad_h, pad_h), mode=mode)
    if pad_h < r or pad_w < r:
        x = F.pad(x, (r - pad_w, r - pad_w, r - pad_h, r - pad_h), mode="replicate")
    x = F.conv2d(x, g.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return F.conv2d(x, g.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)


def plane_noise_and_range(lum: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise standard deviation and intensity range of ``(B, 1, H, W)`` planes, each ``(B, 1, 1, 1)``."""
    noise = estimate_noise_std(lum).view(-1, 1, 1, 1)
    flat = lum.flatten(1)
    value_range = (flat.max(dim=1).values - flat.min(dim=1).values).view(-1, 1, 1, 1)
    return noise, value_range


def blur_map_features(
    lum: torch.Tensor, noise: torch.Tensor | None = None, value_range: torch.Tensor | None = None
) -> torch.Tensor:
    """Locally normalised network input of grayscale planes.

    Parameters
    ----------
    lum : Tensor, shape (B, 1, H, W)
        Luminance planes, any intensity scale.
    noise, value_range : Tensor, shape (B, 1, 1, 1), optional
        The plane's noise standard deviation and intensity range (default:
        estimated from ``lum``; pass the whole plane's values for tiles).

    Returns
    -------
    Tensor, shape (B, 2, H, W)
        Channel 0: ``(x - m) / (s + f)`` clipped to ``+-INPUT_CLIP``;
        channel 1: ``noise / (s + f)``, with ``m, s`` the local mean and
        standard deviation (about 16 px) and ``f`` the floor
        ``max(NOISE_FLOOR * noise, RANGE_FLOOR * range)``.
    """
    if noise is None or value_range is None:
        est_noise, est_range = plane_noise_and_range(lum)
        noise = est_noise if noise is None else noise
        value_range = est_range if value_range is None else value_range
    height, width = lum.shape[-2:]
    pool = 4 if min(height, width) >= 8 else 1
    ph, pw = -height % pool, -width % pool
    padded = F.pad(lum, (0, pw, 0, ph), mode="replicate") if ph or pw else lum
    moments = F.avg_pool2d(torch.cat([padded, padded * padded], dim=1), pool)
    moments = _smooth(moments, LOCAL_SCALE if pool == 4 else 4 * LOCAL_SCALE)
    if pool > 1:
        moments = F.interpolate(moments, scale_factor=float(pool), mode="bilinear", align_corners=False)[
            ..., :height, :width
        ]
    mean, second = moments[:, :1], moments[:, 1:]
    std = (second - mean * mean).clamp_min(0).sqrt()
    floor = torch.maximum(NOISE_FLOOR * noise, RANGE_FLOOR * value_range).clamp_min(1e-8)
    scale = std + floor
    normalised = ((lum - mean) / scale).clamp(-INPUT_CLIP, INPUT_CLIP)
    snr = (noise / scale).clamp(0, INPUT_CLIP)
    return torch.cat([normalised, snr], dim=1)


def predict_log_level(
    model: nn.Module, features: torch.Tensor, ensemble: int = 1, *, bfloat16: bool = False
) -> torch.Tensor:
    """Run a blur-map network on features of any size; ``(B, 1, H, W)`` target at full resolution.

    The features are padded to :data:`SIZE_MULTIPLE` (replicated border) and
    the network's coarse output is bilinearly upsampled and cropped back.
    ``ensemble`` > 1 averages the target over that many flipped or turned views
    of the padded features, each turned back
    (:func:`~napari_deblur.engine.nets.layers.mean_over_views`): the training crops
    come in every orientation, so each view is an equally good input, and the
    network's errors differ from view to view (:data:`MAP_VIEWS`).
    ``bfloat16=True`` (CPU only) runs the convolutions in bfloat16 and returns
    float32, as Wiener-net does on CPUs with native bfloat16
    (:func:`~napari_deblur.engine.core.devices.cpu_bfloat16_is_fast`).
    """
    height, width = features.shape[-2:]
    pad_h = -height % SIZE_MULTIPLE
    pad_w = -width % SIZE_MULTIPLE
    padded = F.pad(features, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else features
    stride = float(output_stride(model))

    def full_resolution_target(view: torch.Tensor) -> torch.Tensor:
        # Channels-last runs the CPU convolutions several times faster than NCHW (oneDNN).
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
            coarse = model(view.contiguous(memory_format=torch.channels_last))
        return F.interpolate(coarse.float(), scale_factor=stride, mode="bilinear", align_corners=False)

    full = mean_over_views(full_resolution_target, padded, ensemble)
    return full[..., :height, :width].contiguous()


def _target_to_level_(target: torch.Tensor) -> torch.Tensor:
    """:func:`target_to_level` in place (no plane-sized temporaries)."""
    return target.expm1_().mul_(LEVEL_OFFSET).clamp_(0.0, MAX_LEVEL)


def _tiled_log_level(
    model: nn.Module,
    lum: torch.Tensor,
    noise: torch.Tensor,
    value_range: torch.Tensor,
    views: int,
    bfloat16: bool,
    tile_size: int,
) -> JobSteps[torch.Tensor]:
    """Network target of a plane larger than one tile, features made tile by tile.

    Parameters
    ----------
    lum : Tensor, shape (1, 1, H, W)
        The plane's luminance.
    noise, value_range : Tensor, shape (1, 1, 1, 1)
        The whole plane's (:func:`plane_noise_and_range`).
    tile_size : int
        Side of a tile's core (px); the halo is :data:`TILE_HALO`.

    Returns
    -------
    Tensor, shape (1, 1, H', W')
        ``log(1 + level / LEVEL_OFFSET)`` on the plane padded to multiples of
        :data:`SIZE_MULTIPLE` (``H' >= H``, ``W' >= W``).

    Notes
    -----
    Each tile's features are computed from its window of ``lum`` widened by
    :data:`FEATURE_HALO` px, more than the features' reach, so they equal the
    whole plane's within float rounding; only the luminance, the output and
    the blend weights are plane-sized.
    """
    height, width = lum.shape[-2:]
    pad_h, pad_w = -height % SIZE_MULTIPLE, -width % SIZE_MULTIPLE
    padded = F.pad(lum, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else lum

    def tile_target(_tile: torch.Tensor, window) -> torch.Tensor:
        rows, cols = window.rows, window.cols
        y0, x0 = max(rows.start - FEATURE_HALO, 0), max(cols.start - FEATURE_HALO, 0)
        y1, x1 = min(rows.stop + FEATURE_HALO, height), min(cols.stop + FEATURE_HALO, width)
        features = blur_map_features(lum[..., y0:y1, x0:x1], noise, value_range)
        # The window minus its part beyond the unpadded plane, then that part replicated as
        # the whole plane's features are padded.
        keep_h, keep_w = min(rows.stop, height), min(cols.stop, width)
        features = features[..., rows.start - y0 : keep_h - y0, cols.start - x0 : keep_w - x0]
        extra_h, extra_w = rows.stop - keep_h, cols.stop - keep_w
        if extra_h or extra_w:
            features = F.pad(features, (0, extra_w, 0, extra_h), mode="replicate")
        target = predict_log_level(model, features, views, bfloat16=bfloat16)
        core_rows, core_cols = window.core_in_tile
        return target[..., core_rows, core_cols]

    with torch.inference_mode():
        return (
            yield from iter_tiled(
                tile_target,
                padded,
                tile_size=tile_size,
                halo=TILE_HALO,
                blend=TILE_BLEND,
                align=SIZE_MULTIPLE,
                core_only=True,
            )
        )


def _blur_map_plane_steps(model: nn.Module, views: int, shipped: bool):
    """Plane steps running ``model`` on ``views`` views; only the shipped network runs in bfloat16."""

    def plane_steps(plane: torch.Tensor, _unused: torch.Tensor | None) -> JobSteps[torch.Tensor]:
        bfloat16 = shipped and cpu_bfloat16_is_fast(plane.device)
        yield JobProgress(0.0, "blur map: features")
        lum = luminance(plane)
        noise, value_range = plane_noise_and_range(lum)
        height, width = lum.shape[-2:]
        pad_h, pad_w = -height % SIZE_MULTIPLE, -width % SIZE_MULTIPLE
        tile_size = device_tile_size(TILE_SIZE, lum.device)
        if max(height + pad_h, width + pad_w) > tile_size:
            target = yield from _tiled_log_level(model, lum, noise, value_range, views, bfloat16, tile_size)
            return _target_to_level_(target)[..., :height, :width]  # (1, 1, H, W)
        features = blur_map_features(lum, noise, value_range)
        # Pad to the network's multiple first: then every tile starts on the same
        # 16-px grid as the whole plane, and tiled and untiled results agree.
        if pad_h or pad_w:
            features = F.pad(features, (0, pad_w, 0, pad_h), mode="replicate")
        with torch.inference_mode():
            target = yield from iter_tiled(
                lambda tile: predict_log_level(model, tile, views, bfloat16=bfloat16),
                features,
                tile_size=tile_size,
                halo=TILE_HALO,
                blend=TILE_BLEND,
                align=SIZE_MULTIPLE,
            )
        return target_to_level(target[..., :height, :width])  # (1, 1, H, W)

    return plane_steps


def iter_estimate_blur_map(
    image,
    *,
    channel_axis: int | None = None,
    device=None,
    network: nn.Module | None = None,
    views: int = MAP_VIEWS,
) -> JobSteps[np.ndarray]:
    """Generator twin of :func:`estimate_blur_map` (yields progress per plane and tile)."""
    pixels = as_float_image(image)
    layout = PlaneLayout.of(pixels.shape, channel_axis)
    target = select_device(device)
    shipped = network is None
    if shipped:
        network = load_blur_map_net(target)
    else:
        network = network.to(target, memory_format=torch.channels_last).eval()
    with torch.inference_mode():
        levels = yield from _planewise_levels(
            pixels, layout, _blur_map_plane_steps(network, views, shipped), target
        )
    return levels


def _planewise_levels(
    pixels: np.ndarray, layout: PlaneLayout, plane_steps, device: torch.device
) -> JobSteps[np.ndarray]:
    """Run the network on every plane's luminance; the map has the non-channel shape."""
    # iter_planewise returns the image's own layout (channels included); a map has one value per
    # pixel, so the luminance of each plane is taken first and the planes laid out as grayscale.
    if layout.channel_axis is not None:
        lum = yield from _luminance_planes(pixels, layout)
        grey_layout = PlaneLayout.of(lum.shape)
        return (
            yield from iter_planewise(
                lum, grey_layout, plane_steps, device=device, message="Blur map", intensity_output=False
            )
        )
    return (
        yield from iter_planewise(
            pixels, layout, plane_steps, device=device, message="Blur map", intensity_output=False
        )
    )


def _luminance_planes(pixels: np.ndarray, layout: PlaneLayout) -> JobSteps[np.ndarray]:
    planes = layout.to_planes(pixels)  # (N, C, H, W)
    lum = np.empty((planes.shape[0],) + planes.shape[2:], dtype=np.float32)
    for index in range(planes.shape[0]):
        plane = torch.from_numpy(np.array(planes[index : index + 1], dtype=np.float32))
        lum[index] = luminance(plane)[0, 0].numpy()
    yield JobProgress(0.0, "luminance")
    return lum.reshape(layout.leading_shape + layout.plane_shape)


def _lazy_estimate_blur_map(facade, image, *, channel_axis, device, network, views):
    return lazy_planewise(
        lambda block, _plane: facade(
            block, channel_axis=channel_axis, device=device, network=network, views=views
        ),
        image,
        channel_axis=channel_axis,
        drop_channels=True,
    )


@job_facade(iter_estimate_blur_map, lazy=_lazy_estimate_blur_map)
def estimate_blur_map() -> np.ndarray:
    """Estimate the blur level of every pixel with the shipped network.

    Parameters
    ----------
    image : array_like, shape (..., H, W) or with a channel axis
        Any real dtype and intensity scale; planes at least 2x2 px. Leading
        axes (z, t) are estimated plane by plane; colour images on their
        luminance (Rec. 709 for RGB/RGBA, the channel mean otherwise).
    channel_axis : int, optional
        Axis of colour channels (e.g. -1 for RGB).
    device : str or torch.device, optional
        ``None``/"auto" (CUDA, then MPS, then CPU), "cpu", "cuda" or "mps".
    network : torch.nn.Module, optional
        A blur-map network to run instead of the shipped :class:`BlurMapNet`
        (e.g. a baseline for a benchmark): it takes :func:`blur_map_features`
        and returns ``log(1 + level / LEVEL_OFFSET)`` at 1/:func:`output_stride`
        resolution; it is moved to the device and run in float32.
    views : int
        Flipped or turned views averaged (:data:`MAP_VIEWS`; 1 runs the
        network once), one of :data:`~napari_deblur.engine.nets.layers.ENSEMBLE_SIZES`.
    progress, cancel
        See :func:`~napari_deblur.engine.core.jobs.run_job`.

    Returns
    -------
    numpy.ndarray, float32
        The image's shape without the channel axis: the blur level of each
        pixel in pixels (PSF standard deviation, as
        :func:`~napari_deblur.engine.psf_blur_level`), in ``[0, MAX_LEVEL]``.
        The unit :func:`~napari_deblur.engine.sharpen_gwis` takes.

    Raises
    ------
    ValueError
        For empty, complex or non-finite input, planes smaller than 2x2, a
        bad ``channel_axis``, or an unavailable device.
    TypeError
        For a non-numeric image.

    Notes
    -----
    Where the image has no edge or texture (flat areas) the level cannot be
    seen; the network fills in the level of the structure around (within
    about 100 px). Trained on Gaussian, disk and ring blur of 0..6 px with
    noise up to about 1.2 % of the range; motion blur is outside its
    training. See docs/methods/blur-map.md.

    A dask array ``image`` gives a lazy dask array at once, computed plane by
    plane with this same function (:mod:`napari_deblur.engine.core.lazy`); each
    worker process loads the network once per device.
    """


AUTO_BLUR = "auto"
"""The blur argument that means "estimate each plane's levels with :func:`estimate_blur_map`"
(:func:`~.gwis.sharpen_gwis`, :func:`~.defocus_deblur.deblur_defocus`)."""


def is_auto_blur(blur) -> bool:
    """Whether ``blur`` is :data:`AUTO_BLUR` (arrays and numbers are not)."""
    return isinstance(blur, str) and blur == AUTO_BLUR


def check_blur_levels(blur, layout: PlaneLayout):
    """``blur`` as a float level, or a float32 map of shape (1, H, W) or (N, H, W) for ``layout``.

    Accepts one number of pixels (>= 0), a map of the plane's shape (every plane) or of the
    image's non-channel shape. Raises TypeError for bools, strings and non-numbers, ValueError
    for negative, non-finite or misshapen levels.
    """
    if isinstance(blur, (bool, np.bool_)):
        raise TypeError("blur must be a number of pixels or an array of blur levels, not a bool.")
    if isinstance(blur, str):
        raise TypeError(
            f"blur must be a number of pixels, an array of blur levels or {AUTO_BLUR!r}, not {blur!r}."
        )
    if np.ndim(blur) == 0:
        try:
            level = float(blur)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"blur must be a number of pixels or an array, not {blur!r}.") from exc
        if not math.isfinite(level) or level < 0:
            raise ValueError(f"blur must be a finite blur level >= 0 pixels, got {level}.")
        return level
    levels = as_float_image(blur, name="blur map")
    plane_shape = layout.plane_shape
    full_shape = layout.leading_shape + plane_shape
    if levels.shape == plane_shape:
        levels = levels[None]
    elif levels.shape == full_shape:
        levels = levels.reshape((layout.n_planes,) + plane_shape)
    else:
        allowed = f"{plane_shape}" + (f" or {full_shape}" if layout.leading_shape else "")
        raise ValueError(
            f"The blur map has shape {levels.shape} but the image's planes are {plane_shape} "
            f"(image shape {layout.shape}); give a map of shape {allowed}, or one number."
        )
    if levels.min() < 0:
        raise ValueError(
            f"The blur map has negative levels (min {levels.min():.3g}); blur levels are PSF standard "
            f"deviations in pixels, >= 0. Clip it first (np.clip(blur, 0, None))."
        )
    return levels


def blur_classes(blur_map, edges=BLUR_CLASS_EDGES) -> np.ndarray:
    """Bin a blur map into classes (labels for napari).

    Parameters
    ----------
    blur_map : array_like
        Blur levels in pixels (>= 0).
    edges : sequence of float
        Strictly increasing bin edges in pixels, at least two and at most
        256, starting at 0 or above, all finite except the last, which may be
        ``inf``. Default :data:`BLUR_CLASS_EDGES` (sharp < 0.5 <= slight < 1
        <= moderate < 2 <= strong < 4 <= severe).

    Returns
    -------
    numpy.ndarray, uint8, same shape
        Label ``i + 1`` for levels in ``[edges[i], edges[i + 1])`` (0 is never
        used, so every pixel is shown).

    Raises
    ------
    ValueError
        For edges that are not such a sequence (NaN, negative, not
        increasing, an infinite edge before the last, too few or too many),
        and for a blur map that :func:`~napari_deblur.engine.as_float_image`
        refuses.
    """
    levels = as_float_image(blur_map, name="blur map", min_ndim=1)
    try:
        bounds = np.asarray(edges, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"edges must be a sequence of numbers (pixels), got {edges!r}.") from exc
    if bounds.ndim != 1 or not 2 <= bounds.size <= 256:
        raise ValueError(
            f"edges must be one sequence of 2 to 256 increasing numbers (one more than the uint8 "
            f"classes), got {edges!r}."
        )
    if np.isnan(bounds).any() or not np.isfinite(bounds[:-1]).all() or bounds[0] < 0:
        raise ValueError(
            f"edges must be finite blur levels >= 0 pixels (only the last may be inf), got {edges!r}."
        )
    if np.any(np.diff(bounds) <= 0):
        raise ValueError(f"edges must be strictly increasing, got {edges!r}.")
    inner = bounds[1:-1]
    return (np.searchsorted(inner, levels, side="right") + 1).astype(np.uint8)
