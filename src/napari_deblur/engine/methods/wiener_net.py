"""Wiener-net: a stack of Wiener deconvolutions fused by a compact learned network.

Each grayscale plane (every colour channel on its own) is Wiener-deconvolved
at the 15 SNRs of :data:`~napari_deblur.engine.methods.wiener.WIENER_STACK_SNRS_DB`,
normalised, fused per pixel by :class:`~napari_deblur.engine.nets.wiener_net.WienerNet`
(averaged over ``ensemble`` flipped or turned views), mapped back to the
plane's scale and corrected by the part of the residual that stands above the
noise (:func:`correct_by_residual`). Large planes run in tiles. See
docs/methods/wiener-net.md for the method.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ...options import DEFAULT_ENSEMBLE as DEFAULT_ENSEMBLE  # the plane and the plane turned by 180 degrees
from ..core.devices import cpu_bfloat16_is_fast, is_out_of_memory, release_cached_memory, select_device
from ..core.image_stats import estimate_noise_std
from ..core.jobs import JobProgress, JobSteps, job_facade, scaled_steps
from ..core.lazy import lazy_with_psf
from ..core.planes import PlaneLayout, iter_planewise
from ..core.tiling import (
    MIN_TILE_SIZE,
    TileWindow,
    device_tile_size,
    iter_one_channel_at_a_time,
    iter_tiled,
    out_of_memory_error,
)
from ..core.validation import as_float_image, as_psf, is_volume_psf
from ..nets.layers import ENSEMBLE_SIZES as ENSEMBLE_SIZES
from ..nets.layers import check_ensemble_size, mean_over_views

# The network's names stay importable from here (training, tests).
from ..nets.wiener_net import RETRAIN_COMMAND as RETRAIN_COMMAND
from ..nets.wiener_net import SIZE_MULTIPLE, WienerNet, load_wiener_net
from ..nets.wiener_net import WEIGHTS_FILE as WEIGHTS_FILE
from ..nets.wiener_net import WIDTHS as WIDTHS
from ..nets.wiener_net import wiener_net_from_weights as wiener_net_from_weights
from ..physics.convolution import convolve_planes
from ..physics.fourier import (
    kernel_centroid_offsets,
    kernel_to_otf,
    taper_fft_shape,
    taper_pad,
    taper_weights,
)
from .wiener import WIENER_STACK_SNRS_DB, wiener_filter
from .wiener_net_3d import iter_wiener_net_3d

INPUT_CLIP = 8.0
"""Normalised inputs are clipped to +-this many standard deviations of ``y``
(the high-SNR members of the stack amplify noise without bound)."""

NOISE_FEATURE_GAIN = 10.0
"""The noise channel is ``NOISE_FEATURE_GAIN * noise_std / std(y)``."""

CENTROID_TOLERANCE = 0.05
"""Kernels whose centre of mass is within this many px of their centre count as centred
(:func:`align_with_kernel_centroid`)."""

TILE_SIZE = 1024
"""Core side of the tiles a plane larger than this is restored in, on the CPU
(:func:`~napari_deblur.engine.core.tiling.device_tile_size` on a GPU). Everything
per pixel (Wiener stack, features, network, residual correction) is then
bounded by a tile."""

TILE_HALO = 96
"""Context of the network on every inner side of a tile (a multiple of :data:`SIZE_MULTIPLE`),
covering its receptive field."""

WIENER_HALO_KERNELS = 8
"""The Wiener stack of a tile is computed with this many kernel sides of further context
(beyond :data:`TILE_HALO`), where a Wiener filter's response has died away."""

RESIDUAL_HALO_KERNELS = 4
"""Context, in kernel sides (plus :data:`TILE_BLEND`), of a tile's residual correction."""

RESIDUAL_TILE_FACTOR = 2
"""The residual correction runs in tiles this many times the network's side: it needs a
few planes of memory per pixel where the network needs dozens, and larger tiles see a
spectrum closer to the whole plane's."""

TILE_BLEND = 32
"""Overlap of neighbouring tiles' cores, cross-faded."""


RESIDUAL_NOISE_MARGIN = 1.5
""":func:`correct_by_residual` keeps a frequency of the residual only where its
local power exceeds this many times the white-noise power."""

RESIDUAL_REGULARISER = 0.03
"""``eps`` in the residual's inverse filter ``conj(H) / (|H|^2 + eps)``."""

RESIDUAL_SPECTRUM_SMOOTHING = 15
"""Side, in frequency bins, of the box that averages the residual's periodogram."""


def plane_statistics(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, scale and noise standard deviation of ``(B, 1, H, W)`` planes, each ``(B, 1, 1, 1)``."""
    mean = y.mean(dim=(-2, -1), keepdim=True)
    std = y.std(dim=(-2, -1), keepdim=True) if y[0, 0].numel() > 1 else torch.zeros_like(mean)
    floor = 1e-3 * y.abs().amax(dim=(-2, -1), keepdim=True) + 1e-8
    scale = torch.maximum(std, floor)
    noise = estimate_noise_std(y).view(-1, 1, 1, 1)
    return mean, scale, noise


def align_with_kernel_centroid(y: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``y`` moved back by its kernel's centroid offset, so that it lines up with the sharp plane.

    A kernel whose mass is off its centre shifts the blurred plane by that
    offset, while the Wiener members (which use the kernel's phase) line up
    with the sharp plane. The training kernels are centred, so the network
    learned its blend and residual from a blurred plane that lines up with
    the members; off-centre kernels (measured PSFs, Levin's, blind estimates)
    get the same here. Bilinear, with the border replicated; kernels offset by
    less than :data:`CENTROID_TOLERANCE` px leave their plane as it is.
    """
    offsets = kernel_centroid_offsets(kernel).to(y.dtype)
    if offsets.shape[0] == 1:
        offsets = offsets.expand(y.shape[0], 2)
    moved = offsets.abs().amax(dim=-1) >= CENTROID_TOLERANCE
    if not bool(moved.any()):
        return y
    height, width = y.shape[-2:]
    rows = torch.arange(height, dtype=y.dtype, device=y.device)
    cols = torch.arange(width, dtype=y.dtype, device=y.device)
    # Sample y at p + offset (grid_sample's normalised coordinates, pixel centres at -1..1).
    sample_rows = (rows[None, :] + offsets[:, :1]) * (2.0 / max(height - 1, 1)) - 1.0
    sample_cols = (cols[None, :] + offsets[:, 1:]) * (2.0 / max(width - 1, 1)) - 1.0
    grid = torch.stack(torch.broadcast_tensors(sample_cols[:, None, :], sample_rows[:, :, None]), dim=-1)
    aligned = F.grid_sample(y, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return torch.where(moved.view(-1, 1, 1, 1), aligned, y)


def wiener_net_features(
    y: torch.Tensor,
    kernel: torch.Tensor,
    snrs_db: torch.Tensor,
    *,
    statistics: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised network input for grayscale planes.

    Parameters
    ----------
    y : Tensor, shape (B, 1, H, W)
        Blurred planes.
    kernel : Tensor, shape (K, h, w)
        Normalised PSFs, ``K`` 1 or ``B``.
    snrs_db : Tensor, shape (S,)
    statistics : (mean, scale, noise), each Tensor of shape (B, 1, 1, 1), optional
        :func:`plane_statistics` of ``y``, or of the plane ``y`` is a tile of
        (so that every tile is normalised alike); by default those of ``y``.

    Returns
    -------
    features : Tensor, shape (B, S + 2, H, W), channels-last
    mean, scale : Tensor, shape (B, 1, 1, 1)
        To map the normalised output back: ``x = out * scale + mean``.
    """
    mean, scale, noise = plane_statistics(y) if statistics is None else statistics
    n = len(snrs_db)
    # Assembled in place, channels-last (the layout the network runs in, so
    # apply_network copies nothing) instead of cat + normalise + a layout copy.
    features = torch.empty(
        (y.shape[0], n + 2) + y.shape[-2:], dtype=y.dtype, device=y.device, memory_format=torch.channels_last
    )
    features[:, :n] = wiener_filter(y, kernel, snrs_db)[:, :, 0]
    features[:, n : n + 1] = align_with_kernel_centroid(y, kernel)
    features[:, : n + 1].sub_(mean).mul_(scale.reciprocal())
    features[:, n + 1 :] = NOISE_FEATURE_GAIN * noise / scale
    return features.clamp_(-INPUT_CLIP, INPUT_CLIP), mean, scale


def apply_network(model: WienerNet, features: torch.Tensor, *, bfloat16: bool = False) -> torch.Tensor:
    """Run ``model`` on features of any size (padded to :data:`SIZE_MULTIPLE`, cropped back).

    ``bfloat16=True`` (CPU only) runs the convolutions in bfloat16, with the input, the
    blend and the output in float32: the engine asks for it on CPUs with native bfloat16
    (:func:`~napari_deblur.engine.core.devices.cpu_bfloat16_is_fast`); training keeps float32.
    """
    height, width = features.shape[-2:]
    pad_h = -height % SIZE_MULTIPLE
    pad_w = -width % SIZE_MULTIPLE
    padded = F.pad(features, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else features
    # Channels-last runs the CPU convolutions several times faster than NCHW (oneDNN).
    padded = padded.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
        restored = model(padded)
    return restored[..., :height, :width].contiguous()


def apply_network_ensemble(
    model: WienerNet, features: torch.Tensor, ensemble: int = DEFAULT_ENSEMBLE, *, bfloat16: bool = False
) -> torch.Tensor:
    """The mean of :func:`apply_network` over ``ensemble`` flipped or turned views of ``features``.

    The Wiener stack of a flipped plane and kernel is the flipped stack, and the
    training kernels come in every orientation, so each view is an equally good
    input; the network's errors differ from view to view, and their mean is
    closer to the sharp plane. Costs ``ensemble`` network passes.

    Parameters
    ----------
    model : WienerNet
        On the features' device.
    features : Tensor, shape (B, S + 2, H, W)
        From :func:`wiener_net_features`.
    ensemble : {1, 2, 4, 8}
        Number of views.
    bfloat16 : bool
        Run the convolutions under a CPU bfloat16 autocast.

    Returns
    -------
    Tensor, shape (B, 1, H, W), float32, on the features' device.
    """
    return mean_over_views(lambda view: apply_network(model, view, bfloat16=bfloat16), features, ensemble)


def correct_by_residual(
    y: torch.Tensor, restored: torch.Tensor, kernel: torch.Tensor, noise_std: torch.Tensor | None = None
) -> torch.Tensor:
    """``restored`` plus what the blurred planes still say about it, above their noise.

    The residual ``r = y - k * x`` of a restoration ``x`` is the blurred
    restoration error plus the noise. Where the network missed something
    (the points of a star field, a fine texture), ``r`` holds more power
    than white noise at the frequencies the kernel passes; where it did not
    (smooth scenes), ``r`` is noise alone. So the residual is filtered per
    frequency by an empirical Wiener gain ``max(0, 1 - m sigma^2 / P(f))``
    (``P`` the residual's periodogram averaged over
    :data:`RESIDUAL_SPECTRUM_SMOOTHING` bins, ``sigma`` the noise estimated on
    ``r`` itself, ``m`` :data:`RESIDUAL_NOISE_MARGIN`), deconvolved by
    ``conj(H) / (|H|^2 + eps)`` (:data:`RESIDUAL_REGULARISER`) and added:
    a plane whose residual is noise comes back unchanged.

    Parameters
    ----------
    y, restored : Tensor, shape (B, 1, H, W)
        Blurred planes and their restorations, in the same intensity units.
    kernel : Tensor, shape (K, h, w)
        Normalised PSFs, ``K`` 1 or ``B``.
    noise_std : Tensor, shape (B, 1, 1, 1), optional
        ``sigma``; by default estimated on the residual of these planes. A tile
        of a larger plane is given the whole plane's (:func:`residual_noise_std`).
    """
    height, width = y.shape[-2:]
    kh, kw = kernel.shape[-2:]
    residual = y - convolve_planes(restored, kernel)
    sigma = estimate_noise_std(residual).view(-1, 1, 1, 1) if noise_std is None else noise_std
    fft_shape = taper_fft_shape((height, width), kh, kw)
    spectrum = torch.fft.rfft2(taper_pad(residual, kh, kw, fft_shape))
    # White noise of variance sigma^2, tapered like the plane, has E|R(f)|^2 = sigma^2 sum(w^2).
    noise_power = (
        sigma.square() * taper_weights((height, width), kh, kw, fft_shape, y.device, y.dtype).square().sum()
    )
    side = RESIDUAL_SPECTRUM_SMOOTHING
    power = spectrum.abs().square()
    power = F.avg_pool2d(power, (side, 1), stride=1, padding=(side // 2, 0), count_include_pad=False)
    power = F.avg_pool2d(power, (1, side), stride=1, padding=(0, side // 2), count_include_pad=False)
    gain = 1.0 - RESIDUAL_NOISE_MARGIN * noise_power / power.clamp_min(torch.finfo(y.dtype).tiny)
    otf = kernel_to_otf(kernel.to(y.dtype), fft_shape)[:, None]
    inverse = otf.conj() / (otf.abs().square() + RESIDUAL_REGULARISER)
    correction = torch.fft.irfft2(spectrum * inverse * gain.clamp_min_(0.0), s=fft_shape)
    return restored + correction[..., kh : kh + height, kw : kw + width]


def residual_noise_std(
    y: torch.Tensor, restored: torch.Tensor, kernel: torch.Tensor, *, tile_size: int
) -> JobSteps[torch.Tensor]:
    """The noise level :func:`correct_by_residual` estimates on ``y - k * restored``, tile by tile.

    The residual is formed in tiles with a kernel-wide halo (the same numbers
    as on the whole plane) and its noise is estimated once on the whole of it
    (:func:`~napari_deblur.engine.methods.gwis.estimate_noise_std`).

    Parameters
    ----------
    y, restored : Tensor, shape (B, 1, H, W)
    kernel : Tensor, shape (K, h, w)
    tile_size : int

    Returns
    -------
    Tensor, shape (B, 1, 1, 1)
    """

    def residual_tile(tile: torch.Tensor, window: TileWindow) -> torch.Tensor:
        rows, cols = window.core_in_tile
        residual = y[..., window.rows, window.cols] - convolve_planes(tile, kernel)
        return residual[..., rows, cols]

    halo = max(kernel.shape[-2:])
    residual = yield from iter_tiled(
        residual_tile, restored, tile_size=tile_size, halo=halo, blend=0, core_only=True
    )
    return estimate_noise_std(residual).view(-1, 1, 1, 1)


def aligned_span(start: int, stop: int, context: int, length: int) -> slice:
    """``[start - context, stop + context)`` widened so that both ends lie a multiple of
    :data:`SIZE_MULTIPLE` from the plane's ends (``0`` and ``length``), clipped to the plane.

    The network pools on a :data:`SIZE_MULTIPLE` grid from its input's first pixel (and,
    for turned views, from its last); a window whose ends sit on that grid of the plane
    sees the grid the whole plane would.
    """
    first = max(0, (start - context) // SIZE_MULTIPLE * SIZE_MULTIPLE)
    last = length - max(0, (length - stop - context) // SIZE_MULTIPLE * SIZE_MULTIPLE)
    return slice(first, last)


def network_on_tile_core(
    model: WienerNet, features: torch.Tensor, window: TileWindow, *, ensemble: int, bfloat16: bool
) -> torch.Tensor:
    """The network's normalised output on a tile's core, from the features of the whole tile.

    The network runs on the core plus :data:`TILE_HALO` px, widened to the plane's
    :data:`SIZE_MULTIPLE` grid (:func:`aligned_span`), so a tile sees the pooling grid the whole
    plane would. ``features``: ``(B, S + 2, h, w)`` over ``window``'s tile; returns ``(B, 1, h_core,
    w_core)``.
    """
    height, width = window.plane
    rows = aligned_span(window.core_rows.start, window.core_rows.stop, TILE_HALO, height)
    cols = aligned_span(window.core_cols.start, window.core_cols.stop, TILE_HALO, width)
    top, left = window.rows.start, window.cols.start
    features = features[..., rows.start - top : rows.stop - top, cols.start - left : cols.stop - left]
    normalised = apply_network_ensemble(model, features, ensemble, bfloat16=bfloat16)
    return normalised[
        ...,
        window.core_rows.start - rows.start : window.core_rows.stop - rows.start,
        window.core_cols.start - cols.start : window.core_cols.stop - cols.start,
    ]


def tile_context(kernel_shape: tuple[int, int]) -> tuple[int, int]:
    """``(halo, residual_halo)``: context of a tile for the network and Wiener stack, and for
    the residual correction, in px (see :data:`TILE_HALO`, :data:`WIENER_HALO_KERNELS`,
    :data:`RESIDUAL_HALO_KERNELS`)."""
    side = max(kernel_shape)
    halo = TILE_HALO + SIZE_MULTIPLE + math.ceil(WIENER_HALO_KERNELS * side)
    return halo, math.ceil(RESIDUAL_HALO_KERNELS * side) + TILE_BLEND


def iter_wiener_net_tiled(
    model: WienerNet,
    grey: torch.Tensor,
    kernel: torch.Tensor,
    snrs: torch.Tensor,
    *,
    ensemble: int,
    bfloat16: bool,
    tile_size: int,
) -> JobSteps[torch.Tensor]:
    """Wiener-net on ``(B, 1, H, W)`` planes in tiles: memory bounded by the tile, not the plane.

    The plane's statistics (:func:`plane_statistics`) are taken once on the
    whole plane and every tile is normalised with them. Each tile then gets
    its Wiener stack and features over its core plus :func:`tile_context`
    (the Wiener filter's reach and the network's receptive field), the
    network over its core plus :data:`TILE_HALO` (on the plane's
    :data:`SIZE_MULTIPLE` grid); the restorations are cross-faded over
    :data:`TILE_BLEND` px. The residual correction's noise level is
    estimated once on the whole residual (:func:`residual_noise_std`) and
    the correction is applied tile by tile. A plane of one tile gives the
    untiled result up to float rounding; on larger planes the tiled result
    differs from the untiled one by about 1e-3 of the plane's range at most
    (the residual correction adapts to each tile's spectrum), 1e-5 typically.

    Parameters
    ----------
    model : WienerNet
    grey : Tensor, shape (B, 1, H, W)
    kernel : Tensor, shape (K, h, w)
        Normalised PSFs, ``K`` 1 or ``B``.
    snrs : Tensor, shape (S,)
    ensemble : int
    bfloat16 : bool
        See :func:`apply_network`.
    tile_size : int
        Core side of a tile; halved on an out-of-memory error
        (:func:`~napari_deblur.engine.core.tiling.iter_tiled`).

    Returns
    -------
    Tensor, shape (B, 1, H, W), in ``grey``'s intensity units.

    Raises
    ------
    EngineMemoryError
        When even tiles of :data:`~napari_deblur.engine.core.tiling.MIN_TILE_SIZE` px run out of memory.
    """
    statistics = plane_statistics(grey)
    halo, residual_halo = tile_context(tuple(kernel.shape[-2:]))
    restored = yield from scaled_steps(
        iter_network_tiles(
            model,
            grey,
            lambda tile, _window: wiener_net_features(tile, kernel, snrs, statistics=statistics)[0],
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
    sigma = yield from scaled_steps(
        residual_noise_std(grey, restored, kernel, tile_size=tile_size), 0.85, 0.9
    )
    corrected = yield from scaled_steps(
        iter_correction_tiles(
            grey,
            restored,
            lambda y, x, _window: correct_by_residual(y, x, kernel, sigma),
            halo=residual_halo,
            tile_size=tile_size,
        ),
        0.9,
        1.0,
    )
    return corrected


def iter_network_tiles(
    model: WienerNet,
    grey: torch.Tensor,
    features_of: Callable[[torch.Tensor, TileWindow], torch.Tensor],
    statistics: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    halo: int,
    tile_size: int,
    ensemble: int,
    bfloat16: bool,
) -> JobSteps[torch.Tensor]:
    """The network's restoration of ``(B, 1, H, W)`` planes, tile by tile, before the residual correction.

    ``features_of(tile, window)`` gives a tile's ``(B, S + 2, h, w)`` features (with its
    ``halo`` px of context, normalised by the whole plane's ``statistics``, :func:`plane_statistics`);
    the network runs on each core (:func:`network_on_tile_core`) and the cores are cross-faded
    over :data:`TILE_BLEND` px. Returns ``(B, 1, H, W)`` in ``grey``'s intensity units.
    """
    mean, scale, _ = statistics

    def restore_tile(tile: torch.Tensor, window: TileWindow) -> torch.Tensor:
        features = features_of(tile, window)
        return (
            network_on_tile_core(model, features, window, ensemble=ensemble, bfloat16=bfloat16) * scale + mean
        )

    return (
        yield from iter_tiled(
            restore_tile, grey, tile_size=tile_size, halo=halo, blend=TILE_BLEND, core_only=True
        )
    )


def iter_correction_tiles(
    grey: torch.Tensor,
    restored: torch.Tensor,
    correct: Callable[[torch.Tensor, torch.Tensor, TileWindow], torch.Tensor],
    *,
    halo: int,
    tile_size: int,
) -> JobSteps[torch.Tensor]:
    """A residual correction of ``restored`` ``(B, 1, H, W)`` applied in tiles of
    :data:`RESIDUAL_TILE_FACTOR` x ``tile_size`` px with ``halo`` px of context.

    ``correct(y, x, window)`` returns the corrected tile from the blurred tile ``y`` and the
    restored tile ``x`` (same window); only its core is kept and cores are cross-faded.
    """

    def correct_tile(tile: torch.Tensor, window: TileWindow) -> torch.Tensor:
        rows, cols = window.core_in_tile
        return correct(grey[..., window.rows, window.cols], tile, window)[..., rows, cols]

    return (
        yield from iter_tiled(
            correct_tile,
            restored,
            tile_size=RESIDUAL_TILE_FACTOR * tile_size,
            halo=halo,
            blend=TILE_BLEND,
            core_only=True,
        )
    )


def _wiener_net_plane_steps(model: WienerNet, snrs: torch.Tensor, ensemble: int, bfloat16: bool):
    def tiled_by_channel(grey: torch.Tensor, kernel: torch.Tensor, tile_size: int) -> JobSteps[torch.Tensor]:
        return (
            yield from iter_one_channel_at_a_time(
                lambda channel: iter_wiener_net_tiled(
                    model,
                    channel,
                    kernel[None],
                    snrs,
                    ensemble=ensemble,
                    bfloat16=bfloat16,
                    tile_size=tile_size,
                ),
                grey,
            )
        )

    def plane_steps(plane: torch.Tensor, kernel: torch.Tensor) -> JobSteps[torch.Tensor]:
        grey = plane.transpose(0, 1)  # (C, 1, H, W): every channel is a grayscale plane
        tile_size = device_tile_size(TILE_SIZE, plane.device)
        if max(grey.shape[-2:]) > tile_size:
            restored = yield from tiled_by_channel(grey, kernel, tile_size)
            return restored.transpose(0, 1)
        try:
            restored = yield from _whole_plane_steps(model, grey, kernel[None], snrs, ensemble, bfloat16)
        except Exception as error:  # only memory errors fall back to tiles; others re-raised
            if not is_out_of_memory(error):
                raise
            release_cached_memory(plane.device)
            tile_size = max(grey.shape[-2:]) // 2
            if tile_size < MIN_TILE_SIZE:
                raise out_of_memory_error(error, grey, max(grey.shape[-2:]), 0) from error
            yield JobProgress(0.0, f"out of memory: retrying with {tile_size} px tiles")
            restored = yield from tiled_by_channel(grey, kernel, tile_size)
        return restored.transpose(0, 1)  # (1, C, H, W)

    return plane_steps


def _whole_plane_steps(
    model: WienerNet,
    grey: torch.Tensor,
    kernel: torch.Tensor,
    snrs: torch.Tensor,
    ensemble: int,
    bfloat16: bool,
) -> JobSteps[torch.Tensor]:
    """Wiener-net on ``(B, 1, H, W)`` planes of at most one tile, in one piece."""
    yield JobProgress(0.0, "Wiener stack")
    features, mean, scale = wiener_net_features(grey, kernel, snrs)
    yield JobProgress(0.2, "Wiener-net")
    normalised = apply_network_ensemble(model, features, ensemble, bfloat16=bfloat16)
    del features
    yield JobProgress(0.9, "Residual correction")
    return correct_by_residual(grey, normalised * scale + mean, kernel)


def iter_wiener_net_deconvolve(
    image,
    psf,
    *,
    channel_axis: int | None = None,
    device=None,
    ensemble: int = DEFAULT_ENSEMBLE,
    psf_per_plane: bool = False,
) -> JobSteps[np.ndarray]:
    """Generator twin of :func:`wiener_net_deconvolve` (for the napari runner)."""
    check_ensemble_size(ensemble)
    pixels = as_float_image(image)
    kernel = as_psf(psf)
    if is_volume_psf(kernel, psf_per_plane):
        return (yield from iter_wiener_net_3d(pixels, psf, channel_axis=channel_axis, device=device))
    layout = PlaneLayout.of(pixels.shape, channel_axis)
    target = select_device(device)
    model = load_wiener_net(target)
    snrs = torch.tensor(WIENER_STACK_SNRS_DB, dtype=torch.float32, device=target)
    with torch.inference_mode():
        restored = yield from iter_planewise(
            pixels,
            layout,
            _wiener_net_plane_steps(model, snrs, ensemble, cpu_bfloat16_is_fast(target)),
            device=target,
            psf=kernel,
            message="Wiener-net",
        )
    return restored


def _lazy_wiener_net_deconvolve(facade, image, psf, *, ensemble: int, **kwargs):
    check_ensemble_size(ensemble)  # now, not when the first plane is computed
    return lazy_with_psf(facade, image, psf, ensemble=ensemble, **kwargs)


@job_facade(iter_wiener_net_deconvolve, lazy=_lazy_wiener_net_deconvolve)
def wiener_net_deconvolve() -> np.ndarray:
    """Learned non-blind deconvolution: a Wiener stack fused by a compact network.

    Parameters
    ----------
    image : array_like, shape (..., H, W) or with a channel axis
        Blurred image, any real dtype; with a 2D PSF leading axes (z, t) are
        processed plane by plane and every colour channel on its own.
    psf : array_like, shape (h, w) or (n, h, w)
        The blur kernel (normalised to sum 1 here), at most the plane's size.
        A 2D PSF applies to every plane. A 3D PSF means a 3D deconvolution of
        each ``(z, y, x)`` volume by :func:`~napari_deblur.engine.wiener_net_3d`
        (``ensemble`` does not apply); with ``psf_per_plane`` it is a stack of
        2D kernels, one per plane (or per z when the stack also has a t axis).
    channel_axis : int, optional
        Axis of colour channels (e.g. -1 for RGB).
    device : str or torch.device, optional
        ``None``/"auto" (CUDA, then MPS, then CPU), "cpu", "cuda" or "mps".
    ensemble : {1, 2, 4, 8}
        How many flipped or turned views of each plane the network runs on,
        their results averaged (:func:`apply_network_ensemble`): each view is a
        network pass; more views are a little sharper and proportionally slower.
    psf_per_plane : bool
        Read a 3D ``psf`` as one 2D kernel per plane instead of a 3D PSF.
    progress, cancel
        See :func:`~napari_deblur.engine.core.jobs.run_job`.

    Returns
    -------
    numpy.ndarray, float32, same shape as ``image``, in the input's intensity
    scale (not clipped).

    Raises
    ------
    ValueError
        For empty, complex or non-finite input, a bad PSF, a PSF larger than
        the plane, a PSF stack whose depth matches no axis, an unavailable
        device, or an ``ensemble`` size not in :data:`ENSEMBLE_SIZES`.
    EngineMemoryError
        When memory runs out even in the smallest tiles
        (:class:`~napari_deblur.engine.core.jobs.EngineMemoryError`, a ``MemoryError``).
        A plane larger than :data:`TILE_SIZE` is restored in tiles
        (:func:`iter_wiener_net_tiled`), and one that fits a tile falls back to
        tiles when memory runs out.

    Notes
    -----
    A dask array ``image`` gives a lazy dask array at once, computed plane by
    plane with this same function (:mod:`napari_deblur.engine.core.lazy`); each
    worker process loads the network once per device.
    """
