"""Tiled execution with context halos and seamless blending.

Large planes are cut into overlapping tiles so a model (or an FFT) fits in
GPU or CPU memory. Each tile is processed with ``halo`` pixels of context on
every inner side; that context is thrown away, and neighbouring tiles overlap
by a further ``blend`` pixels over which their outputs are cross-faded with
linear ramps. For any operation whose reach is at most ``halo`` pixels the
tiled result equals the untiled one; for wider operations the seams are
hidden by the blend. An out-of-memory error (on an accelerator or the CPU)
restarts the plane with tiles half as large; below :data:`MIN_TILE_SIZE` an
:class:`~napari_deblur.engine.core.jobs.EngineMemoryError` ends the job.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .devices import is_out_of_memory, release_cached_memory
from .jobs import EngineMemoryError, JobProgress, JobSteps, scaled_steps

logger = logging.getLogger(__name__)

MIN_TILE_SIZE = 32

GPU_TILE_SIZE = 4096
"""Smallest tile side on a CUDA GPU (:func:`device_tile_size`)."""

TILE_MEMORY_BUDGET_BYTES = 1 << 30
"""Working memory one tile of an FFT-based method may take (:func:`budget_tile_size`)."""


def budget_tile_size(bytes_per_pixel: float, budget: int | None = None, *, multiple: int = 256) -> int:
    """The largest tile side whose work fits ``budget`` bytes at ``bytes_per_pixel``.

    Parameters
    ----------
    bytes_per_pixel : float
        The method's working memory per pixel of a tile (its halo included).
    budget : int, optional
        Bytes; :data:`TILE_MEMORY_BUDGET_BYTES` by default.
    multiple : int
        The side is rounded down to a multiple of this, and is at least this.

    Returns
    -------
    int
    """
    budget = TILE_MEMORY_BUDGET_BYTES if budget is None else budget
    side = int(math.sqrt(max(budget, 1) / max(bytes_per_pixel, 1e-9)))
    return max(multiple, side // multiple * multiple)


def device_tile_size(tile_size: int, device) -> int:
    """The tile side to use on ``device``: ``tile_size``, or at least :data:`GPU_TILE_SIZE` on CUDA.

    The engines' tile sizes suit CPU memory. On a GPU the per-tile work is
    launch-bound, so small tiles are slow. A card too small for the larger tile still works: an out-of-memory error
    halves the tiles (:func:`iter_tiled`).
    """
    return max(tile_size, GPU_TILE_SIZE) if torch.device(device).type == "cuda" else tile_size


def tile_layout(length: int, tile: int, blend: int, align: int = 1) -> tuple[int, list[int]]:
    """The fewest tiles of at most ``tile`` px covering ``length``, overlapping by about ``blend``.

    Returns ``(size, starts)``: every tile is ``size`` px long (a multiple of
    ``align`` when ``length`` is) and the tiles are spread evenly, so a plane
    just over one tile long is not cut into a full tile and a sliver (2048 px
    with 1024-px tiles: 3 tiles of 694 px, not 0/1008/1024 of 1024). Starts
    are multiples of ``align`` when ``length`` is (networks that pool on a
    grid see the same grid in every tile).
    """
    if length <= tile:
        return length, [0]
    count = math.ceil((length - blend) / (tile - blend))
    size = min(tile, math.ceil((length + (count - 1) * blend) / count))
    size = min(-(-size // align) * align, length)
    step = (length - size) / (count - 1)
    starts = [int(round(i * step)) // align * align for i in range(count - 1)]
    return size, [*starts, length - size]


@dataclass(frozen=True)
class TileWindow:
    """Where a tile lies in its plane, for ``fn(tile, window)`` (:func:`iter_tiled` with ``core_only``).

    ``rows`` and ``cols`` are the tile's extent (core plus halo) and
    ``core_rows``, ``core_cols`` the part kept, all as slices of plane
    pixels; ``plane`` is the plane's ``(H, W)``.
    """

    rows: slice
    cols: slice
    core_rows: slice
    core_cols: slice
    plane: tuple[int, int]

    @property
    def core_in_tile(self) -> tuple[slice, slice]:
        """The core as slices of the tile's own pixels."""
        top, left = self.rows.start, self.cols.start
        return (
            slice(self.core_rows.start - top, self.core_rows.stop - top),
            slice(self.core_cols.start - left, self.core_cols.stop - left),
        )


def _edge_ramp(size: int, ramp_before: int, ramp_after: int, device, dtype) -> torch.Tensor:
    weights = torch.ones(size, device=device, dtype=dtype)
    if ramp_before:
        weights[:ramp_before] = (torch.arange(ramp_before, device=device, dtype=dtype) + 0.5) / ramp_before
    if ramp_after:
        weights[size - ramp_after :] = torch.minimum(
            weights[size - ramp_after :],
            (torch.arange(ramp_after, 0, -1, device=device, dtype=dtype) - 0.5) / ramp_after,
        )
    return weights


def iter_tiled(
    fn: Callable[..., torch.Tensor],
    x: torch.Tensor,
    *,
    tile_size: int,
    halo: int,
    blend: int = 16,
    align: int = 1,
    retry_on_oom: bool = True,
    core_only: bool = False,
) -> JobSteps[torch.Tensor]:
    """Apply ``fn`` tile by tile and blend the tiles back together.

    Parameters
    ----------
    fn : callable
        Maps a ``(B, C, h, w)`` tensor to ``(B, C_out, h, w)`` (same size).
        With ``core_only``, ``fn(tile, window)`` is given the tile and its
        :class:`TileWindow` (where the tile and the part of it that is kept lie
        in the plane) and returns that part alone, ``(B, C_out, h_core,
        w_core)``; it may then spend less work on the halo, or read the same
        window of other plane-sized tensors.
    x : Tensor, shape (B, C, H, W)
    tile_size : int
        Side of a tile's core (the part kept, before halo). Planes no larger
        than this run in one piece.
    halo : int
        Context pixels added on every inner side of a tile and discarded.
    blend : int
        Overlap of neighbouring cores, cross-faded linearly.
    align : int
        Tile starts and sizes are multiples of this (see :func:`tile_layout`).
    retry_on_oom : bool
        On an out-of-memory error (:func:`~napari_deblur.engine.core.devices.is_out_of_memory`:
        CPU allocation failures included), free the cache and restart with half
        the tile size, down to :data:`MIN_TILE_SIZE`.
    core_only : bool
        Call ``fn(tile, window)`` as described above.

    Returns
    -------
    Tensor, shape (B, C_out, H, W)

    Raises
    ------
    EngineMemoryError
        When ``fn`` runs out of memory on tiles of :data:`MIN_TILE_SIZE` px
        (or at once, without ``retry_on_oom``); the allocator's error is its
        ``__cause__``.
    """
    while True:
        try:
            result = yield from _iter_tiles_once(
                fn, x, tile_size=tile_size, halo=halo, blend=blend, align=align, core_only=core_only
            )
            return result
        except Exception as error:  # only memory errors are retried; others re-raised
            if not is_out_of_memory(error):
                raise
            release_cached_memory(x.device)
            if not retry_on_oom or tile_size // 2 < MIN_TILE_SIZE:
                raise out_of_memory_error(error, x, tile_size, halo) from error
            tile_size //= 2
            logger.warning("out of memory; retrying with %d px tiles", tile_size)
            yield JobProgress(0.0, f"out of memory: retrying with {tile_size} px tiles")


def iter_one_channel_at_a_time(
    restore: Callable[[torch.Tensor], JobSteps[torch.Tensor]], grey: torch.Tensor
) -> JobSteps[torch.Tensor]:
    """``restore`` on each ``(1, 1, H, W)`` plane of ``(C, 1, H, W)`` ``grey`` in turn, stacked back.

    For tiled methods whose tiles hold every plane given at once: one plane at a time keeps
    a tile's working memory that of one channel. ``restore`` returns ``(1, 1, H, W)``;
    progress is split evenly between the planes.
    """
    count = len(grey)
    if count == 1:
        return (yield from restore(grey))
    restored = torch.empty_like(grey)
    for channel in range(count):
        restored[channel : channel + 1] = yield from scaled_steps(
            restore(grey[channel : channel + 1]), channel / count, (channel + 1) / count
        )
    return restored


def out_of_memory_error(
    error: BaseException, x: torch.Tensor, tile_size: int, halo: int
) -> EngineMemoryError:
    """The :class:`~napari_deblur.engine.core.jobs.EngineMemoryError` for ``error`` on the last tile size tried."""
    height, width = x.shape[-2:]
    return EngineMemoryError(
        f"Not enough memory on {x.device} for a {height}x{width} plane even in tiles of "
        f"{min(tile_size, height)}x{min(tile_size, width)} px (+{halo} px context): "
        f"{str(error).strip() or type(error).__name__}. Close other programs, process a "
        f"smaller image or fewer planes at once, or use another device."
    )


def _iter_tiles_once(
    fn, x: torch.Tensor, *, tile_size: int, halo: int, blend: int, align: int, core_only: bool = False
):
    height, width = x.shape[-2:]
    blend = max(0, min(blend, tile_size // 2))
    tile_h, rows = tile_layout(height, tile_size, blend, align)
    tile_w, cols = tile_layout(width, tile_size, blend, align)
    output = None
    weight_sum = None
    total = len(rows) * len(cols)
    done = 0
    for top in rows:
        for left in cols:
            y0, x0 = max(top - halo, 0), max(left - halo, 0)
            y1, x1 = min(top + tile_h + halo, height), min(left + tile_w + halo, width)
            if core_only:
                window = TileWindow(
                    slice(y0, y1),
                    slice(x0, x1),
                    slice(top, top + tile_h),
                    slice(left, left + tile_w),
                    (height, width),
                )
                core = fn(x[..., y0:y1, x0:x1], window)
            else:
                processed = fn(x[..., y0:y1, x0:x1])
                core = processed[..., top - y0 : top - y0 + tile_h, left - x0 : left - x0 + tile_w]
            if output is None:
                output = x.new_zeros(core.shape[:2] + (height, width))
                weight_sum = x.new_zeros((height, width))
            ramp_rows = _edge_ramp(
                tile_h, blend if top > 0 else 0, blend if top + tile_h < height else 0, x.device, x.dtype
            )
            ramp_cols = _edge_ramp(
                tile_w, blend if left > 0 else 0, blend if left + tile_w < width else 0, x.device, x.dtype
            )
            weight = ramp_rows[:, None] * ramp_cols[None, :]
            output[..., top : top + tile_h, left : left + tile_w] += core * weight
            weight_sum[top : top + tile_h, left : left + tile_w] += weight
            del core
            done += 1
            yield JobProgress(done / total, f"tile {done}/{total}")
    return output.div_(weight_sum)
