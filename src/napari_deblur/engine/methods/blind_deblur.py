"""Blind deblurring in one call: each plane's kernel estimated from the image, then Wiener-net.

The loop a user with a shaken photo needs: :func:`~.blind_psf.iter_estimate_psf` on the
plane's luminance (colour) or grey values, then
:func:`~.wiener_net.iter_wiener_net_deconvolve` of every channel with that kernel, then
:func:`~.clipped_highlights.repair_clipped` where lights saturated.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ...options import DEFAULT_ENSEMBLE
from ..core.jobs import JobProgress, JobSteps, job_facade, scaled_steps
from ..core.planes import PlaneLayout, colour_axis
from ..core.validation import as_float_image
from .blind_psf import iter_estimate_psf, stack_kernels
from .clipped_highlights import clipped_mask, repair_clipped
from .wiener_net import iter_wiener_net_deconvolve

ESTIMATION_SHARE = 0.7
"""Share of the progress bar given to the kernel estimates (they take most of the time)."""

REPAIR_START = 0.97
"""Progress at which the deconvolution ends and clipped highlights are repaired."""


class BlindDeblurResult(NamedTuple):
    """What :func:`deblur_blind` returns (unpacks as ``image, psf``)."""

    image: np.ndarray
    """The restored image, float32, the input's shape and intensity scale."""
    psf: np.ndarray
    """The estimated kernel, float32 ``(k, k)`` for one plane, ``(N, k, k)`` for ``N`` planes
    (one per plane, all cut or padded to the largest support); each sums to 1."""


def iter_deblur_blind(
    image,
    *,
    size: int | None = None,
    region=None,
    channel_axis: int | None = None,
    device=None,
    ensemble: int = DEFAULT_ENSEMBLE,
) -> JobSteps[BlindDeblurResult]:
    """Generator twin of :func:`deblur_blind` (progress per pyramid level, then per plane)."""
    pixels = as_float_image(image)
    channel_axis = colour_axis(pixels.shape, channel_axis)  # as estimate_psf reads colour
    layout = PlaneLayout.of(pixels.shape, channel_axis)
    planes = layout.to_planes(pixels)  # (N, C, H, W), a view
    count = layout.n_planes
    kernels = []
    for index, plane in enumerate(planes):
        start, stop = ESTIMATION_SHARE * index / count, ESTIMATION_SHARE * (index + 1) / count
        one = plane if plane.shape[0] > 1 else plane[0]
        steps = iter_estimate_psf(
            one, size=size, region=region, channel_axis=0 if plane.shape[0] > 1 else None, device=device
        )
        kernels.append((yield from scaled_steps(steps, start, stop)))
    psf = stack_kernels(kernels)
    if count == 1:
        psf = psf[0]
    yield JobProgress(ESTIMATION_SHARE, "Blind deblurring: deconvolving")
    restored = yield from scaled_steps(
        iter_wiener_net_deconvolve(
            pixels, psf, channel_axis=channel_axis, device=device, ensemble=ensemble, psf_per_plane=True
        ),
        ESTIMATION_SHARE,
        REPAIR_START,
    )
    yield JobProgress(REPAIR_START, "Blind deblurring: clipped highlights")
    restored_planes, repaired = layout.to_planes(restored), False  # (N, C, H, W)
    for index, kernel in enumerate(psf if count > 1 else psf[None]):
        for channel in range(restored_planes.shape[1]):
            mask = clipped_mask(planes[index, channel])
            if mask is None:
                continue  # nothing clipped: no copy, no work
            if not repaired:
                restored_planes, repaired = np.array(restored_planes), True
            restored_planes[index, channel] = repair_clipped(
                planes[index, channel], restored_planes[index, channel], kernel, mask=mask
            )
    return BlindDeblurResult(layout.from_planes(restored_planes) if repaired else restored, psf)


@job_facade(iter_deblur_blind)
def deblur_blind() -> BlindDeblurResult:
    """Sharpen an image blurred by an unknown kernel (camera shake, defocus): estimate, then deconvolve.

    Parameters
    ----------
    image : array_like, shape (H, W), (H, W, 3|4) colour, or a stack (..., H, W)
        Any real dtype and intensity scale. A trailing axis of 3 or 4 on a 3D
        array is taken as colour without ``channel_axis``. Every plane of a
        stack gets its own kernel (shake differs from frame to frame).
    size : int, optional
        Largest kernel side in pixels (odd); ``None`` chooses it (up to 75 px),
        see :func:`~napari_deblur.engine.estimate_psf`.
    region : (y, x, height, width), optional
        Window of each plane to estimate the kernel from; the whole plane is
        deconvolved.
    channel_axis : int, optional
        Axis of colour channels: the kernel is estimated on the luminance and
        every channel is deconvolved with it.
    device : str or torch.device, optional
        ``None``/"auto", "cpu", "cuda" or "mps".
    ensemble : int
        Wiener-net's test-time ensemble (1, 2, 4 or 8 flips and rotations).
    progress, cancel
        See :func:`~napari_deblur.engine.core.jobs.run_job`.

    Returns
    -------
    BlindDeblurResult
        ``(image, psf)``: the restored image (float32, the input's shape and
        scale) and the kernel(s), float32 ``(k, k)`` or ``(N, k, k)``.

    Raises
    ------
    ValueError, TypeError
        As :func:`~napari_deblur.engine.estimate_psf` and
        :func:`~napari_deblur.engine.wiener_net_deconvolve` for bad images,
        sizes, regions or devices.

    Notes
    -----
    Where a channel is clipped (at least 16 pixels at its maximum value: saturated
    lights), the result within a kernel's reach of them is redone by
    Richardson-Lucy iterations that ignore the clipped pixels, so lights do not
    ring (:func:`~napari_deblur.engine.methods.clipped_highlights.repair_clipped`).
    The input is never modified. Time is mostly the estimate: about 15 s
    for a plane of 1 MP or more on two CPU cores (the estimate works on the
    most textured 1 MP window), then Wiener-net on the whole plane.
    """
