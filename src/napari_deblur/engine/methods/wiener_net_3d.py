"""Wiener-net 3D: classical 3D deconvolutions of a volume fused by a compact learned 3D network.

A ``(Z, H, W)`` volume with a 3D PSF gives candidate restorations: the
volume itself, 3D Wiener filters at the SNRs of :data:`WIENER_SNRS_DB`, and
accelerated Richardson-Lucy after each count of :data:`RL_SNAPSHOTS`
iterations and where it stops by itself (one run with ``iterations="auto"``,
kept on the way). They are normalised by the volume's
background and bright level, and :class:`~napari_deblur.engine.nets.wiener_net_3d.WienerNet3D`
weighs them per voxel and corrects the blend. The network runs in lateral
tiles. See docs/methods/wiener-net-3d.md.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..core.devices import select_device
from ..core.image_stats import estimate_noise_std
from ..core.jobs import JobProgress, JobSteps, job_facade, run_job, scaled_steps
from ..core.lazy import lazy_by_volume
from ..core.tiling import iter_tiled
from ..core.validation import as_float_image
from ..core.volumes import MIN_SLAB_PLANES, iter_depth_slabs, iter_volumewise
from ..nets.wiener_net_3d import SIZE_MULTIPLE, load_wiener_net_3d
from .richardson_lucy import AUTO_ITERATIONS, iter_rl_tensor
from .wiener import wiener_filter_3d

WIENER_SNRS_DB = (10.0, 20.0, 30.0, 40.0)
"""SNRs (dB) of the 3D Wiener candidates."""

RL_SNAPSHOTS = (10, 20, 50, 100)
"""Iteration counts of the accelerated Richardson-Lucy candidates, kept on the way of one run that stops
by itself (``iterations="auto"``); a count the run does not reach takes the run's result."""

N_CANDIDATES = 1 + len(WIENER_SNRS_DB) + len(RL_SNAPSHOTS) + 1
"""The volume itself, the Wiener candidates, the Richardson-Lucy snapshots and Richardson-Lucy's own stop
(the last channel)."""

BACKGROUND_QUANTILE = 0.01
BRIGHT_QUANTILE = 0.999
"""The volume is normalised as ``(v - q(0.01)) / (q(0.999) - q(0.01))`` (quantiles of its voxels)."""

TILE_SIZE = 160
"""Lateral core of a network tile (voxels); the whole depth goes in every tile."""

TILE_HALO = 24
"""Lateral context of a network tile on each inner side (the network's reach is about 20 voxels)."""

TILE_BLEND = 16

MAX_WHOLE_VOXELS = 1 << 24
"""Largest volume (voxels) whose candidates are made in one piece (about 4.8 GB of working memory on the
CPU for 64 x 512 x 512); larger volumes run in lateral tiles of about this many voxels with their halos."""

MIN_VOLUME_TILE = 64
"""Smallest lateral core of a tile of a large volume (voxels); a volume too deep for tiles this narrow
goes in slabs of planes first."""


def volume_normalisation(volume: torch.Tensor) -> tuple[float, float]:
    """``(offset, scale)``: the volume's background and bright-minus-background levels.

    Quantiles :data:`BACKGROUND_QUANTILE` and :data:`BRIGHT_QUANTILE` of (up to
    about 2 million evenly spaced) voxels; ``scale`` is at least 1e-12.
    """
    flat = volume.reshape(-1)
    step = max(1, flat.numel() // 2_000_000)
    sample = flat[::step].float()
    low, high = torch.quantile(
        sample, torch.tensor([BACKGROUND_QUANTILE, BRIGHT_QUANTILE], device=sample.device)
    )
    return float(low), max(float(high - low), 1e-12)


def iter_candidates(
    volume: torch.Tensor, kernel: torch.Tensor, normalisation: tuple[float, float] | None = None
) -> JobSteps[tuple[torch.Tensor, float, float]]:
    """The normalised candidates of one volume.

    Parameters
    ----------
    volume : Tensor, shape (Z, H, W), float32
        Non-negative blurred volume (negative values count as 0 in Richardson-Lucy).
    kernel : Tensor, shape (kz, ky, kx), float32
        Centred 3D PSF summing to 1, no larger than the volume.
    normalisation : (offset, scale), optional
        Default :func:`volume_normalisation` of ``volume``; a tile of a larger
        volume takes the whole volume's.

    Returns
    -------
    (candidates, offset, scale)
        ``candidates`` ``(N_CANDIDATES, Z, H, W)`` float32 in normalised units;
        a restored ``c`` maps back to the volume's units as ``c * scale + offset``.
    """
    offset, scale = volume_normalisation(volume) if normalisation is None else normalisation
    candidates = [(volume - offset) / scale]
    for snr in WIENER_SNRS_DB:
        candidates.append((wiener_filter_3d(volume, kernel, snr) - offset) / scale)
    yield JobProgress(0.1, "3D Wiener candidates")
    kept = {}

    def keep(count: int, estimate: torch.Tensor) -> None:
        if count in RL_SNAPSHOTS:
            kept[count] = (estimate - offset) / scale

    steps = iter_rl_tensor(
        volume, kernel, iterations=AUTO_ITERATIONS, acceleration=True, tv_weight=0.0, snapshot=keep
    )
    stopped = yield from scaled_steps(steps, 0.1, 1.0)
    stopped = (stopped - offset) / scale
    candidates += [kept.get(count, stopped) for count in RL_SNAPSHOTS] + [stopped]
    return torch.stack(candidates), offset, scale


def noise_channel(normalised: torch.Tensor) -> float:
    """The network's noise input from the normalised ``(Z, H, W)`` volume (the first candidate).

    log10 of its noise (:func:`~napari_deblur.engine.core.image_stats.estimate_noise_std`,
    median over planes), at least -4.
    """
    noise = float(estimate_noise_std(normalised[:, None]).median())
    return float(np.log10(max(noise, 1e-4)))


def wiener_net_3d_features(candidates: torch.Tensor, noise: float) -> torch.Tensor:
    """Network input ``(1, N_CANDIDATES + 1, Z, H, W)``: the candidates and a constant noise channel."""
    constant = candidates.new_full((1,) + tuple(candidates.shape[1:]), noise)
    return torch.cat([candidates, constant])[None]


def run_network(model, features: torch.Tensor) -> torch.Tensor:
    """``model`` on ``(B, C, Z, H, W)`` features replicate-padded to :data:`SIZE_MULTIPLE`; ``(B, 1, Z, H, W)``."""
    sizes = features.shape[-3:]
    pads = [(-n) % SIZE_MULTIPLE for n in sizes]
    if any(pads):
        features = F.pad(features, (0, pads[2], 0, pads[1], 0, pads[0]), mode="replicate")
    out = model(features)
    return out[..., : sizes[0], : sizes[1], : sizes[2]]


def iter_network_tiled(model, features: torch.Tensor) -> JobSteps[torch.Tensor]:
    """:func:`run_network` in lateral tiles (whole depth); ``(1, C, Z, H, W)`` -> ``(Z, H, W)``."""
    _, channels, depth, height, width = features.shape

    def tile_fn(tile: torch.Tensor) -> torch.Tensor:  # (1, C * Z, h, w): channels and depth folded
        h, w = tile.shape[-2:]
        with torch.no_grad():
            return run_network(model, tile.reshape(1, channels, depth, h, w))[:, 0]

    folded = features.reshape(1, channels * depth, height, width)
    restored = yield from iter_tiled(tile_fn, folded, tile_size=TILE_SIZE, halo=TILE_HALO, blend=TILE_BLEND)
    return restored[0]


def iter_restore_volume(model, volume: torch.Tensor, kernel: torch.Tensor) -> JobSteps[torch.Tensor]:
    """Wiener-net 3D on one ``(Z, H, W)`` volume, in the volume's units.

    A volume of at most :data:`MAX_WHOLE_VOXELS` voxels runs whole (the
    network in lateral tiles); a larger one runs candidates and network
    together in lateral tiles with the whole depth, each tile with a halo of
    the PSF's lateral size plus :data:`TILE_HALO`; a volume so deep that even
    tiles of :data:`MIN_VOLUME_TILE` voxels exceed the budget first goes in
    slabs of planes with the PSF's depth as context
    (:func:`~napari_deblur.engine.core.volumes.iter_depth_slabs`). Every piece
    is normalised by the whole volume's levels and noise; Richardson-Lucy's
    automatic stop is each piece's own; pieces are cross-faded.
    """
    offset, scale = volume_normalisation(volume)
    noise = noise_channel((volume - offset) / scale)
    halo = max(kernel.shape[1:]) + TILE_HALO
    column = (MIN_VOLUME_TILE + 2 * halo) ** 2  # voxels per plane of the narrowest tile with its halo
    depth = volume.shape[0]
    if volume.numel() > MAX_WHOLE_VOXELS and depth * column > MAX_WHOLE_VOXELS and depth > MIN_SLAB_PLANES:
        restored = yield from iter_depth_slabs(
            volume,
            kernel.shape[0],  # the Wiener candidates reach further than the PSF's half depth
            lambda slab: _iter_restore_normalised(model, slab, kernel, (offset, scale), noise),
            planes=MAX_WHOLE_VOXELS // column - 2 * kernel.shape[0],
            method="Wiener-net 3D",
        )
    else:
        restored = yield from _iter_restore_normalised(model, volume, kernel, (offset, scale), noise)
    return restored * scale + offset


def _iter_restore_normalised(
    model, volume: torch.Tensor, kernel: torch.Tensor, normalisation: tuple[float, float], noise: float
) -> JobSteps[torch.Tensor]:
    """The network's normalised output for a volume (or slab): whole up to :data:`MAX_WHOLE_VOXELS`, else in
    lateral tiles with the whole depth."""
    if volume.numel() <= MAX_WHOLE_VOXELS:
        steps = iter_candidates(volume, kernel, normalisation)
        candidates, _, _ = yield from scaled_steps(steps, 0.0, 0.7)
        features = wiener_net_3d_features(candidates, noise)
        del candidates
        yield JobProgress(0.7, "Wiener-net 3D: network")
        return (yield from scaled_steps(iter_network_tiled(model, features), 0.7, 1.0))
    depth = volume.shape[0]
    halo = max(kernel.shape[1:]) + TILE_HALO
    side = int(math.sqrt(MAX_WHOLE_VOXELS / depth)) - 2 * halo
    side = max(side // SIZE_MULTIPLE * SIZE_MULTIPLE, MIN_VOLUME_TILE)

    def tile_fn(tile: torch.Tensor) -> torch.Tensor:  # (1, Z, h, w)
        candidates, _, _ = run_job(iter_candidates(tile[0], kernel, normalisation))
        features = wiener_net_3d_features(candidates, noise)
        del candidates
        with torch.no_grad():
            return run_network(model, features)[:, 0]

    yield JobProgress(0.0, f"Wiener-net 3D in {side} px lateral tiles")
    restored = yield from iter_tiled(tile_fn, volume[None], tile_size=side, halo=halo, blend=TILE_BLEND)
    return restored[0]


def iter_wiener_net_3d(
    image,
    psf,
    *,
    channel_axis: int | None = None,
    device=None,
) -> JobSteps[np.ndarray]:
    """Generator twin of :func:`wiener_net_3d`."""
    pixels = as_float_image(image)
    target = select_device(device)
    model = load_wiener_net_3d(target, N_CANDIDATES)
    return (
        yield from iter_volumewise(
            pixels,
            psf,
            lambda volume, kernel: iter_restore_volume(model, volume, kernel),
            channel_axis=channel_axis,
            device=target,
            message="Wiener-net 3D",
        )
    )


@job_facade(iter_wiener_net_3d, lazy=lazy_by_volume)
def wiener_net_3d() -> np.ndarray:
    """Deconvolve a 3D volume with a 3D PSF by Wiener-net 3D (classical candidates fused by a network).

    Parameters
    ----------
    image : array_like, shape (..., Z, H, W) or with a channel axis
        Blurred volume(s), any real dtype, non-negative (fluorescence counts;
        negative values count as 0 in the Richardson-Lucy candidates); axes
        before z (t) and channels are deconvolved one volume at a time.
    psf : array_like, shape (kz, ky, kx)
        The 3D PSF, centred at ``k // 2``, normalised to sum 1 here; no larger
        than the volume in any axis.
    channel_axis : int, optional
        Axis of colour channels.
    device : str or torch.device, optional
        ``None``/"auto" (CUDA, then MPS, then CPU), "cpu", "cuda" or "mps".
    progress, cancel
        See :func:`~napari_deblur.engine.core.jobs.run_job`; checked at every
        Richardson-Lucy iteration and network tile.

    Returns
    -------
    numpy.ndarray, float32, same shape as ``image``, in the input's intensity
    scale (not clipped).

    Raises
    ------
    ValueError
        For bad input, a PSF that is not 3D or is larger than the volume, or
        a 2D image.
    FileNotFoundError
        If the network's weights are missing from the installed package.

    Notes
    -----
    Candidates: the volume, 3D Wiener filters (:func:`wiener_deconvolve_3d`'s
    filter) at :data:`WIENER_SNRS_DB`, and accelerated Richardson-Lucy
    (:func:`richardson_lucy`'s iteration) after :data:`RL_SNAPSHOTS`
    iterations and where its automatic stop ends; the network weighs them per
    voxel and adds a correction. A volume of up to :data:`MAX_WHOLE_VOXELS`
    voxels has its candidates made whole (about 10 float32 copies of it,
    plus Richardson-Lucy's padded grid) and the network run in lateral tiles
    of :data:`TILE_SIZE` voxels; a larger volume runs both in lateral tiles
    with the whole depth, and a very deep one in slabs of planes first
    (:func:`iter_restore_volume`), so memory follows the piece, not the volume.
    """
