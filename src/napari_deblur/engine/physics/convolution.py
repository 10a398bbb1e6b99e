"""Blurring an image with a PSF (the forward model)."""

from __future__ import annotations

import numpy as np
import torch

from ..core.devices import select_device
from ..core.jobs import JobProgress, JobSteps, job_facade
from ..core.lazy import lazy_with_psf
from ..core.planes import PlaneLayout, iter_planewise
from ..core.validation import as_float_image, as_psf
from .fourier import kernel_to_otf, symmetric_pad


def convolve_planes(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve ``(B, C, H, W)`` planes with ``(K, h, w)`` kernels, mirrored boundaries.

    ``K`` is 1 (shared) or ``B``. The boundary is the half-sample mirror
    (``scipy.ndimage.convolve(..., mode="reflect")``). Uses the FFT, so the
    cost does not grow with the kernel size.
    """
    kh, kw = kernel.shape[-2:]
    top, left = kh // 2, kw // 2
    padded = symmetric_pad(x, top, kh - 1 - top, left, kw - 1 - left)
    shape = tuple(padded.shape[-2:])
    otf = kernel_to_otf(kernel.to(padded.dtype), shape)[:, None]  # (K, 1, H', W'/2+1)
    blurred = torch.fft.irfft2(torch.fft.rfft2(padded) * otf, s=shape)
    height, width = x.shape[-2:]
    return blurred[..., top : top + height, left : left + width]


def iter_blur(image, psf, *, channel_axis: int | None = None, device=None) -> JobSteps[np.ndarray]:
    """Generator twin of :func:`blur` (yields progress per plane)."""
    pixels = as_float_image(image)
    kernel = as_psf(psf)
    layout = PlaneLayout.of(pixels.shape, channel_axis)
    target = select_device(device)

    def plane_steps(plane, plane_kernel):
        yield JobProgress(0.0, "blurring")
        return convolve_planes(plane, plane_kernel[None])

    return (
        yield from iter_planewise(pixels, layout, plane_steps, device=target, psf=kernel, message="blurring")
    )


@job_facade(iter_blur, lazy=lazy_with_psf)
def blur() -> np.ndarray:
    """Blur an image with a PSF (convolution with mirrored boundaries).

    Parameters
    ----------
    image : array_like, shape (..., H, W) or with a channel axis
        Any real dtype; leading axes (z, t) are blurred plane by plane.
    psf : array_like, shape (h, w) or (n, h, w)
        Kernel (normalised to sum 1 here); a 3D stack gives one kernel per
        plane (see :class:`~napari_deblur.engine.core.planes.PlaneLayout`).
    channel_axis : int, optional
        Axis of colour channels; each channel is blurred alike.
    device : str or torch.device, optional
        ``None``/"auto" (CUDA, then MPS, then CPU), "cpu", "cuda" or "mps".
    progress, cancel
        See :func:`~napari_deblur.engine.core.jobs.run_job`.

    Returns
    -------
    numpy.ndarray, float32, same shape as ``image``, same intensity scale.

    Raises
    ------
    ValueError
        For empty, complex or non-finite input, a bad PSF, or a PSF larger
        than the image plane.


    Notes
    -----
    A dask array ``image`` gives a lazy dask array, plane by plane
    (:mod:`napari_deblur.engine.core.lazy`).
    """
