"""3D PSFs and the volumes of an image: checks, and a job that runs one volume at a time.

The 3D counterpart of :mod:`~napari_deblur.engine.core.planes`: an image with a
3D PSF is a set of ``(z, y, x)`` volumes (colour channels and axes before z,
such as t, taken one at a time), each processed whole by a method's
``volume_steps``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch

from .devices import is_out_of_memory, release_cached_memory
from .jobs import EngineMemoryError, JobProgress, JobSteps, run_job, scaled_steps
from .planes import PlaneLayout, magnitude_exponent, scaled_back, scaled_down
from .tiling import MIN_TILE_SIZE, iter_tiled, out_of_memory_error, tile_layout
from .validation import as_float_image

logger = logging.getLogger(__name__)

MIN_SLAB_PLANES = 8
"""Fewest planes in a slab of a volume processed in slabs (:func:`iter_depth_slabs`)."""

SLAB_BLEND = 4
"""Overlap of neighbouring slabs, in planes, cross-faded."""

VolumeSteps = Callable[[torch.Tensor, torch.Tensor], JobSteps[torch.Tensor]]
"""``volume_steps(volume, kernel)``: a job restoring one ``(z, y, x)`` float32 volume with the PSF."""


def check_volume_psf(psf, name: str = "psf") -> np.ndarray:
    """A 3D PSF as float32 summing to 1 as a whole (not plane by plane); ValueError otherwise."""
    kernel = as_float_image(psf, name=name, min_ndim=3).astype(np.float64)
    if kernel.ndim != 3:
        raise ValueError(f"{name} must be a 3D PSF (kz, ky, kx) here, got shape {kernel.shape}.")
    total = kernel.sum()
    if not total > 0:
        raise ValueError(
            f"{name} sums to {total:.3g}; a PSF must have a positive sum (it is normalised to 1)."
        )
    return (kernel / total).astype(np.float32)


def volumes_of(pixels: np.ndarray, channel_axis: int | None) -> tuple[np.ndarray, tuple[int, ...]]:
    """``pixels`` as ``(N, z, y, x)`` volumes (channels and axes before z flattened) and the moved shape."""
    if channel_axis is not None:
        PlaneLayout.of(pixels.shape, channel_axis)  # checks the axis
        moved = np.moveaxis(pixels, channel_axis, 0)
    else:
        moved = pixels[None]
    if moved.ndim < 4:
        raise ValueError(
            f"A 3D PSF needs a 3D volume (z, y, x), got an image of shape {pixels.shape}"
            f"{' with channel_axis=' + str(channel_axis) if channel_axis is not None else ''}. "
            f"Use a 2D PSF for 2D images."
        )
    return moved.reshape((-1,) + moved.shape[-3:]), moved.shape


def from_volumes(volumes: np.ndarray, moved_shape: tuple[int, ...], channel_axis: int | None) -> np.ndarray:
    """Inverse of :func:`volumes_of`."""
    moved = volumes.reshape(moved_shape)
    return np.moveaxis(moved, 0, channel_axis) if channel_axis is not None else moved[0]


def check_psf_fits_volume(
    psf_shape: tuple[int, ...], volume_shape: tuple[int, ...], *, deeper_in_z: bool = False
) -> None:
    """Raise ``ValueError`` unless a ``(kz, ky, kx)`` PSF fits a ``(z, y, x)`` volume.

    Laterally the PSF must be no larger than the volume; in z no deeper, or with
    ``deeper_in_z`` at most ``2 z + 1`` planes (light from planes outside the stack).
    """
    depth_limit = 2 * volume_shape[0] + 1 if deeper_in_z else volume_shape[0]
    limits = (depth_limit, *volume_shape[1:])
    if any(k > n for k, n in zip(psf_shape, limits, strict=True)):
        raise ValueError(
            f"The 3D PSF {psf_shape} is larger than the volume {volume_shape} allows (at most "
            f"{tuple(limits)}); crop the PSF (e.g. prepare_measured_psf(psf, shape=...)) or give a larger volume."
        )


def iter_volumewise(
    pixels: np.ndarray,
    psf,
    volume_steps: VolumeSteps,
    *,
    channel_axis: int | None,
    device: torch.device,
    message: str,
    deeper_in_z: bool = False,
) -> JobSteps[np.ndarray]:
    """Run ``volume_steps`` on every ``(z, y, x)`` volume of ``pixels`` with the 3D ``psf``.

    Parameters
    ----------
    pixels : numpy.ndarray
        A checked float image (:func:`~napari_deblur.engine.core.validation.as_float_image`)
        with at least three spatial axes.
    psf : array_like
        The 3D PSF; checked and normalised by :func:`check_volume_psf`, then
        :func:`check_psf_fits_volume` (with ``deeper_in_z``).
    volume_steps : callable
        See :data:`VolumeSteps`. Each volume is handed over scaled by an exact
        power of two into the float32 range (as planes are) and scaled back.
    channel_axis : int, optional
    device : torch.device
    message : str
        Progress text after each volume when there are several (with its number);
        ``volume_steps`` reports its own progress within a volume.

    Returns
    -------
    numpy.ndarray, float32, the shape of ``pixels``.

    Raises
    ------
    ValueError
        A PSF that is not 3D, sums to 0 or does not fit, or an image with fewer
        than three spatial axes.
    """
    kernel = check_volume_psf(psf)
    volumes, moved_shape = volumes_of(pixels, channel_axis)
    check_psf_fits_volume(kernel.shape, volumes.shape[1:], deeper_in_z=deeper_in_z)
    kernel_tensor = torch.from_numpy(kernel).to(device)
    result = np.empty(volumes.shape, dtype=np.float32)
    count = len(volumes)
    for index in range(count):
        volume = np.array(volumes[index], dtype=np.float32)
        exponent = magnitude_exponent(volume)
        tensor = torch.from_numpy(scaled_down(volume, exponent)).to(device)
        steps = volume_steps(tensor, kernel_tensor)
        restored = yield from scaled_steps(steps, index / count, (index + 1) / count)
        del tensor
        result[index] = scaled_back(restored.detach().to("cpu", torch.float32).numpy(), exponent)
        del restored
        release_cached_memory(device)
        if count > 1:
            yield JobProgress((index + 1) / count, f"{message}: volume {index + 1}/{count}")
    return from_volumes(result, moved_shape, channel_axis)


def _slab_ramp(size: int, blend: int, first: bool, last: bool, like: torch.Tensor) -> torch.Tensor:
    ramp = like.new_ones(size)
    if not first:
        ramp[:blend] = (torch.arange(blend, device=like.device) + 0.5) / blend
    if not last:
        falling = (torch.arange(blend, 0, -1, device=like.device) - 0.5) / blend
        ramp[size - blend :] = torch.minimum(ramp[size - blend :], falling)
    return ramp


def iter_depth_slabs(
    volume: torch.Tensor,
    halo: int,
    slab_steps: Callable[[torch.Tensor], JobSteps[torch.Tensor]],
    *,
    planes: int,
    method: str,
) -> JobSteps[torch.Tensor]:
    """``slab_steps`` on slabs of planes of a ``(z, y, x)`` volume, cross-faded into one volume.

    Parameters
    ----------
    volume : Tensor, shape (Z, H, W)
    halo : int
        Planes of context on each inner side of a slab (a PSF's reach in z),
        discarded after.
    slab_steps : callable
        ``slab_steps(slab)`` -> a job restoring a ``(z', H, W)`` slab (same shape).
    planes : int
        Planes per slab to start with (at least :data:`MIN_SLAB_PLANES`); while
        a slab raises :class:`~napari_deblur.engine.core.jobs.EngineMemoryError`
        the slabs are halved, down to :data:`MIN_SLAB_PLANES`, then it is raised.
    method : str
        Name for the progress message and the log.

    Returns
    -------
    Tensor, shape (Z, H, W); neighbouring slabs overlap by up to :data:`SLAB_BLEND`
    planes, cross-faded linearly.
    """
    depth = volume.shape[0]
    planes = max(planes, MIN_SLAB_PLANES)
    while True:
        blend = min(SLAB_BLEND, planes // 2)
        size, starts = tile_layout(depth, planes, blend)
        logger.warning("%s in slabs of %d planes", method, size)
        yield JobProgress(0.0, f"{method} in slabs of {size} planes")
        restored = volume.new_zeros(volume.shape)
        weight = volume.new_zeros(depth)
        try:
            for index, start in enumerate(starts):
                low, high = max(0, start - halo), min(depth, start + size + halo)
                steps = slab_steps(volume[low:high])
                slab = yield from scaled_steps(steps, index / len(starts), (index + 1) / len(starts))
                ramp = _slab_ramp(size, blend, start == 0, start + size == depth, volume)
                restored[start : start + size] += slab[start - low : start - low + size] * ramp[:, None, None]
                weight[start : start + size] += ramp
                del slab
            return restored / weight[:, None, None]
        except EngineMemoryError:
            if planes // 2 < MIN_SLAB_PLANES:
                raise
            del restored
            release_cached_memory(volume.device)
            planes //= 2


def iter_in_pieces(
    volume: torch.Tensor,
    whole_steps: Callable[[torch.Tensor], JobSteps[torch.Tensor]],
    *,
    lateral_halo: int,
    depth_halo: int,
    blend: int,
    method: str,
) -> JobSteps[torch.Tensor]:
    """``whole_steps`` on a ``(Z, H, W)`` volume in as few pieces as memory allows.

    The volume is tried whole; after an out-of-memory error
    (:func:`~napari_deblur.engine.core.devices.is_out_of_memory`) in lateral
    tiles with the whole depth (starting at half the plane, halving while memory
    runs out, :func:`~napari_deblur.engine.core.tiling.iter_tiled`, cross-faded
    over ``blend`` px); when even the smallest tiles do not fit, in slabs of
    planes (:func:`iter_depth_slabs`), each tried whole and then in lateral
    tiles.

    Parameters
    ----------
    volume : Tensor, shape (Z, H, W)
    whole_steps : callable
        ``whole_steps(piece)`` -> a job restoring a ``(z', h, w)`` piece (same shape).
    lateral_halo, depth_halo : int
        Context of a tile in px, of a slab in planes, on each inner side.
    blend : int
        Overlap of neighbouring lateral tiles, px.
    method : str
        Name for the progress messages and the log.

    Raises
    ------
    EngineMemoryError
        When a slab of :data:`MIN_SLAB_PLANES` planes does not fit even in the
        smallest lateral tiles.
    """

    def whole_or_lateral(piece: torch.Tensor) -> JobSteps[torch.Tensor]:
        try:
            return (yield from whole_steps(piece))
        except Exception as error:  # only memory errors fall back to tiles; others re-raised
            if not is_out_of_memory(error):
                raise
            release_cached_memory(piece.device)
            side = max(piece.shape[-2:])
            if side <= MIN_TILE_SIZE:
                raise out_of_memory_error(error, piece[None], side, 0) from error
        tile_size = max(side // 2, MIN_TILE_SIZE)
        logger.warning("%s: out of memory on the whole volume; %d px lateral tiles", method, tile_size)
        yield JobProgress(0.0, f"out of memory: {method} in {tile_size} px lateral tiles")

        def tile_fn(tile: torch.Tensor) -> torch.Tensor:  # (1, z, h, w): z is carried as channels
            return run_job(whole_steps(tile[0]))[None]

        tiled = yield from iter_tiled(
            tile_fn, piece[None], tile_size=tile_size, halo=lateral_halo, blend=blend
        )
        return tiled[0]

    try:
        return (yield from whole_or_lateral(volume))
    except EngineMemoryError:
        if volume.shape[0] <= MIN_SLAB_PLANES:
            raise
        release_cached_memory(volume.device)
    return (
        yield from iter_depth_slabs(
            volume, depth_halo, whole_or_lateral, planes=volume.shape[0] // 2, method=method
        )
    )
