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
    observed: np.ndarray, restored: np.ndarray, psf: np.ndarray, *, iterations: int = REPAIR_ITERATIONS
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

    Returns
    -------
    numpy.ndarray, float32, shape (H, W)
        ``restored`` itself (a copy) when nothing is clipped. Otherwise, within
        a kernel's reach of clipped pixels, Richardson-Lucy from ``restored``
        with the clipped pixels (and one pixel around them) left out of the
        data term, blended in with a weight rising from 0 at the zone's edge
        to 1 half a kernel inside; elsewhere unchanged.
        Each clipped area is worked on in its own window (memory is bounded
        by the windows, not the plane).
    """
    restored = np.asarray(restored, dtype=np.float32)
    out = restored.copy()
    mask = clipped_mask(observed)
    if mask is None:
        return out
    reach = max(psf.shape)
    zone = ndi.binary_dilation(mask, structure=np.ones((3, 3), bool), iterations=reach)
    labels, _ = ndi.label(zone)
    height, width = observed.shape
    for box in ndi.find_objects(labels):
        rows = slice(max(box[0].start - reach, 0), min(box[0].stop + reach, height))
        cols = slice(max(box[1].start - reach, 0), min(box[1].stop + reach, width))
        window = (rows, cols)
        usable = ~ndi.binary_dilation(mask[window], iterations=1)
        refined = _masked_richardson_lucy(
            np.asarray(observed[window], np.float64),
            restored[window].astype(np.float64),
            psf,
            usable,
            iterations,
        )
        # 0 at the zone's edge, 1 from half a kernel inside it (the clipped pixels are a kernel deep)
        weight = np.clip(ndi.distance_transform_edt(zone[window]) / (reach / 2.0), 0.0, 1.0)
        out[window] = (weight * refined + (1.0 - weight) * out[window]).astype(np.float32)
    return out
