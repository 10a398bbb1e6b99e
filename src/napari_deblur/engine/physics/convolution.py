"""Blurring an image with a PSF (the forward model)."""

from __future__ import annotations

import numpy as np
import torch

from ..core.devices import select_device
from ..core.jobs import JobProgress, JobSteps, job_facade
from ..core.lazy import lazy_with_psf
from ..core.planes import PlaneLayout, iter_planewise
from ..core.validation import as_float_image, as_psf, is_volume_psf
from ..core.volumes import iter_volumewise
from .fourier import kernel_to_otf, symmetric_indices, symmetric_pad


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


def convolve_volume(volume: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve a ``(Z, H, W)`` volume with a centred ``(kz, ky, kx)`` kernel, mirrored boundaries.

    The 3D form of :func:`convolve_planes` (half-sample mirror in z, y and x, FFT).
    """
    pads = [(k // 2, k - 1 - k // 2) for k in kernel.shape]
    padded = volume
    for axis, (before, after) in enumerate(pads):
        padded = padded.index_select(
            axis, symmetric_indices(volume.shape[axis], before, after, volume.device)
        )
    shape = tuple(padded.shape)
    grid = padded.new_zeros(shape)
    grid[: kernel.shape[0], : kernel.shape[1], : kernel.shape[2]] = kernel.to(padded.dtype)
    otf = torch.fft.rfftn(torch.roll(grid, shifts=tuple(-(k // 2) for k in kernel.shape), dims=(0, 1, 2)))
    blurred = torch.fft.irfftn(torch.fft.rfftn(padded) * otf, s=shape)
    return blurred[
        tuple(slice(before, before + n) for (before, _), n in zip(pads, volume.shape, strict=True))
    ]


def iter_blur(
    image, psf, *, channel_axis: int | None = None, device=None, psf_per_plane: bool = False
) -> JobSteps[np.ndarray]:
    """Generator twin of :func:`blur` (yields progress per plane, or per volume for a 3D PSF)."""
    pixels = as_float_image(image)
    kernel = as_psf(psf)
    target = select_device(device)
    if is_volume_psf(kernel, psf_per_plane):  # normalised as one 3D PSF, not kernel by kernel

        def volume_steps(volume: torch.Tensor, volume_kernel: torch.Tensor) -> JobSteps[torch.Tensor]:
            yield JobProgress(0.0, "blurring in 3D")
            return convolve_volume(volume, volume_kernel)

        return (
            yield from iter_volumewise(
                pixels, psf, volume_steps, channel_axis=channel_axis, device=target, message="blurring in 3D"
            )
        )
    layout = PlaneLayout.of(pixels.shape, channel_axis)

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
        Any real dtype; with a 2D PSF leading axes (z, t) are blurred plane by
        plane, with a 3D PSF each ``(z, y, x)`` volume is blurred in 3D.
    psf : array_like, shape (h, w) or (n, h, w)
        Kernel (normalised to sum 1 here). A 3D PSF is a 3D convolution (no
        larger than the volume); with ``psf_per_plane`` it is a stack of 2D
        kernels, one per plane (see :class:`~napari_deblur.engine.core.planes.PlaneLayout`).
    channel_axis : int, optional
        Axis of colour channels; each channel is blurred alike.
    device : str or torch.device, optional
        ``None``/"auto" (CUDA, then MPS, then CPU), "cpu", "cuda" or "mps".
    psf_per_plane : bool
        Read a 3D ``psf`` as one 2D kernel per plane (or per z of a t-z stack)
        instead of a 3D PSF.
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
