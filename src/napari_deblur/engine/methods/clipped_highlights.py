"""Clipped highlights after a deconvolution: lights saturated by the camera must not ring.

A light brighter than the sensor's range is recorded flat at the top value; a
deconvolution that trusts those pixels sees a dark hole inside a bright blur
and answers with rings around it. :func:`repair_clipped` redoes the result near
clipped areas by Richardson-Lucy iterations, started from the deconvolution,
in which the clipped pixels carry no weight (treated as outliers, after Cho,
Wang & Lee 2011 and Whyte et al. 2014), and blends that back smoothly; the
result elsewhere is left exactly as it was.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi
from scipy.signal import fftconvolve

CLIPPED_MIN_PIXELS = 16
"""At least this many pixels at a plane's maximum value mean the plane is clipped."""

REPAIR_ITERATIONS = 10
"""Richardson-Lucy iterations near clipped areas (from the deconvolution's result)."""

REPAIR_TILE = 512
"""The repair works tile by tile (each with a halo of two kernels), on tiles that hold clipped
areas only, so its memory is bounded by the tile."""

_TINY = 1e-6


def clipped_mask(plane: np.ndarray) -> np.ndarray | None:
    """Pixels of ``plane`` at its maximum value, or ``None`` when fewer than :data:`CLIPPED_MIN_PIXELS`.

    Parameters
    ----------
    plane : numpy.ndarray, shape (H, W), real

    Returns
    -------
    numpy.ndarray of bool, shape (H, W), or None.
    """
    top = float(np.max(plane))
    at_top = plane >= top - 1e-6 * max(abs(top), 1e-30)
    return at_top if int(at_top.sum()) >= CLIPPED_MIN_PIXELS else None


def _masked_richardson_lucy(
    observed: np.ndarray, start: np.ndarray, psf: np.ndarray, usable: np.ndarray, iterations: int
) -> np.ndarray:
    """Richardson-Lucy from ``start``; pixels where ``usable`` is False do not pull (ratio 1)."""
    pad = psf.shape[0] // 2, psf.shape[1] // 2
    widths = ((pad[0], pad[0]), (pad[1], pad[1]))
    flipped = psf[::-1, ::-1]
    estimate = np.clip(start, _TINY, None)
    data = np.clip(observed, 0.0, None)
    for _ in range(iterations):
        predicted = fftconvolve(np.pad(estimate, widths, mode="reflect"), psf, mode="valid")
        ratio = np.where(usable, data / np.maximum(predicted, _TINY), 1.0)
        estimate = estimate * fftconvolve(np.pad(ratio, widths, mode="reflect"), flipped, mode="valid")
    return estimate


def repair_clipped(
    observed: np.ndarray,
    restored: np.ndarray,
    psf: np.ndarray,
    *,
    iterations: int = REPAIR_ITERATIONS,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """``restored`` with the neighbourhoods of ``observed``'s clipped pixels redone without them.

    Parameters
    ----------
    observed : numpy.ndarray, shape (H, W)
        The blurred plane as recorded (non-negative intensities; clipped at
        its maximum where a light saturated).
    restored : numpy.ndarray, shape (H, W)
        Its deconvolution with ``psf``, in the same intensity scale.
    psf : numpy.ndarray, shape (h, w)
        The kernel (sums to 1).
    iterations : int
        Richardson-Lucy iterations near the clipped areas.
    mask : numpy.ndarray of bool, shape (H, W), optional
        ``clipped_mask(observed)`` when the caller has it already (not
        computed again).

    Returns
    -------
    numpy.ndarray, float32, shape (H, W)
        ``restored`` itself (a copy) when nothing is clipped. Otherwise, within
        a kernel's reach of clipped pixels, Richardson-Lucy from ``restored``
        with the clipped pixels (and one pixel around them) left out of the
        data term, blended in with a weight rising from 0 at the zone's edge
        to 1 half a kernel inside; elsewhere unchanged.
        The work is done in :data:`REPAIR_TILE` px tiles with halos, on the
        tiles near clipped pixels only (memory is bounded by the tile).
    """
    restored = np.asarray(restored, dtype=np.float32)
    out = restored.copy()
    if mask is None:
        mask = clipped_mask(observed)
    if mask is None:
        return out
    reach = max(psf.shape)
    zone = ndi.binary_dilation(mask, structure=np.ones((3, 3), bool), iterations=reach)
    # 0 at the zone's edge, 1 from half a kernel inside it (the clipped pixels are a kernel deep)
    weight = np.clip(ndi.distance_transform_edt(zone) / (reach / 2.0), 0.0, 1.0).astype(np.float32)
    height, width = observed.shape
    halo = 2 * reach
    for top in range(0, height, REPAIR_TILE):
        for left in range(0, width, REPAIR_TILE):
            core = (slice(top, min(top + REPAIR_TILE, height)), slice(left, min(left + REPAIR_TILE, width)))
            if not zone[core].any():
                continue
            rows = slice(max(top - halo, 0), min(top + REPAIR_TILE + halo, height))
            cols = slice(max(left - halo, 0), min(left + REPAIR_TILE + halo, width))
            usable = ~ndi.binary_dilation(mask[rows, cols], iterations=1)
            refined = _masked_richardson_lucy(
                np.asarray(observed[rows, cols], np.float64),
                restored[rows, cols].astype(np.float64),
                psf,
                usable,
                iterations,
            )
            inner = (
                slice(top - rows.start, core[0].stop - rows.start),
                slice(left - cols.start, core[1].stop - cols.start),
            )
            w = weight[core]
            out[core] = (w * refined[inner] + (1.0 - w) * restored[core]).astype(np.float32)
    return out
