"""Classical Wiener deconvolution, at one SNR or at a stack of SNRs from one FFT.

The filter uses a power-law model of a sharp image's spectrum and mirrors and
fades each plane beyond its frame before the FFT (no ringing at the border);
large planes are filtered in tiles. See docs/methods/wiener-net.md for the method.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..core.devices import is_out_of_memory, release_cached_memory, select_device
from ..core.jobs import JobProgress, JobSteps, job_facade
from ..core.lazy import lazy_by_volume, lazy_with_psf
from ..core.planes import PlaneLayout, iter_planewise
from ..core.tiling import MIN_TILE_SIZE, budget_tile_size, device_tile_size, iter_tiled, out_of_memory_error
from ..core.validation import as_float_image, as_psf, is_volume_psf
from ..core.volumes import iter_in_pieces, iter_volumewise
from ..physics.fourier import (
    fast_fft_length,
    kernel_to_otf,
    squared_frequency,
    symmetric_indices,
    taper_fft_shape,
    taper_pad,
    taper_weights,
)

WIENER_STACK_SNRS_DB: tuple[float, ...] = tuple(float(s) for s in range(9, 66, 4))
"""The 15 SNRs (dB) of the Wiener stack of Gilbert, Messinger & Patel: 9, 13, ..., 65."""

BOUNDARIES = ("taper", "periodic")
"""Boundary handling of :func:`wiener_deconvolve`: mirrored and faded, or periodic."""

SPECTRUM_EXPONENT = 3.0
"""Exponent of the sharp-image spectrum model ``P(f) = (|f|^2 + f0^2) ** (-SPECTRUM_EXPONENT / 2)``
(``f`` in cycles per pixel), scaled to mean 1."""

SPECTRUM_KNEE = 0.01
"""``f0`` in cycles per pixel: below it the model spectrum flattens out."""


def signal_power_spectrum(
    fft_shape: tuple[int, int], device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Model power spectrum of a sharp image on a real-FFT grid, mean 1.

    Parameters
    ----------
    fft_shape : (H, W)
        FFT grid in pixels.

    Returns
    -------
    Tensor, shape (H, W // 2 + 1), positive.
    """
    power = (squared_frequency(fft_shape, device, dtype) + SPECTRUM_KNEE**2) ** (-SPECTRUM_EXPONENT / 2)
    # Mean over the full (two-sided) spectrum: columns 1..W/2-1 stand for two.
    weights = torch.full((1, power.shape[1]), 2.0, device=device, dtype=dtype)
    weights[0, 0] = 1.0
    if fft_shape[1] % 2 == 0:
        weights[0, -1] = 1.0
    mean = (power * weights).sum() / (fft_shape[0] * fft_shape[1])
    return power / mean


def _check_snrs(snrs_db) -> list[float]:
    values = [float(s) for s in np.atleast_1d(np.asarray(snrs_db, dtype=np.float64))]
    if not values:
        raise ValueError("snrs_db is empty; give at least one SNR in dB.")
    if not all(np.isfinite(values)):
        raise ValueError(f"SNRs must be finite numbers of dB, got {values}.")
    return values


def wiener_filter(
    x: torch.Tensor, kernel: torch.Tensor, snrs_db: torch.Tensor, *, boundary: str = "taper"
) -> torch.Tensor:
    """Wiener-deconvolve planes at several SNRs.

    Parameters
    ----------
    x : Tensor, shape (B, C, H, W)
        Blurred planes (any intensity scale).
    kernel : Tensor, shape (K, h, w)
        Normalised PSFs, ``K`` 1 (shared) or ``B``.
    snrs_db : Tensor, shape (S,)
        Signal-to-noise ratios in dB.
    boundary : {"taper", "periodic"}
        "taper" for real images (no ringing at the frame); "periodic"
        treats the plane as one period (for periodically blurred data).

    Returns
    -------
    Tensor, shape (B, S, C, H, W), on ``x``'s device.
    """
    if boundary not in BOUNDARIES:
        raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}.")
    height, width = x.shape[-2:]
    kh, kw = kernel.shape[-2:]
    if boundary == "periodic":
        margin_h = margin_w = 0
        fft_shape = (height, width)
        padded = x
    else:
        margin_h, margin_w = kh, kw
        fft_shape = taper_fft_shape((height, width), kh, kw)
        padded = taper_pad(x, margin_h, margin_w, fft_shape)
    spectrum = torch.fft.rfft2(padded)[:, None]  # (B, 1, C, Hf, Wf)
    otf = kernel_to_otf(kernel.to(x.dtype), fft_shape)[:, None, None]  # (K, 1, 1, Hf, Wf)
    noise_to_signal = torch.pow(10.0, -snrs_db.to(x.dtype) / 10.0).view(1, -1, 1, 1, 1)
    regulariser = noise_to_signal / signal_power_spectrum(fft_shape, x.device, x.dtype)
    # Gain conj(H) / (|H|^2 + r): the complex numerator once for every SNR, and a real
    # reciprocal per SNR (cheaper than a complex division on the CPU).
    inverse_denominator = (otf.abs().square() + regulariser).reciprocal_()  # (K, S, 1, Hf, Wf)
    inverse_denominator[..., 0, 0] = otf[..., 0, 0].abs().square().reciprocal()  # DC gain 1/H(0)
    numerator = spectrum * otf.conj()
    restored = torch.fft.irfft2(numerator * inverse_denominator, s=fft_shape)
    return restored[..., margin_h : margin_h + height, margin_w : margin_w + width]


TILE_HALO_KERNELS = 16
"""Context of a tile, in kernel sides (at least :data:`MIN_TILE_HALO` px): where the
Wiener filter's response has died away at moderate SNRs."""

MIN_TILE_HALO = 64

TILE_BLEND = 32
"""Overlap of neighbouring tiles, cross-faded."""


def wiener_bytes_per_pixel(n_snrs: int, n_channels: int = 1) -> float:
    """Peak working memory of :func:`wiener_filter` per pixel of its FFT grid, in bytes (CPU, measured)."""
    return 4.0 * (12 + 6 * n_snrs) * n_channels


def wiener_tile_size(n_snrs: int, n_channels: int, device) -> int:
    """Tile side for :func:`wiener_filter` within :data:`~napari_deblur.engine.core.tiling.TILE_MEMORY_BUDGET_BYTES`
    (at least :data:`~napari_deblur.engine.core.tiling.GPU_TILE_SIZE` on CUDA)."""
    return device_tile_size(budget_tile_size(wiener_bytes_per_pixel(n_snrs, n_channels)), device)


def _wiener_plane_steps(snrs: torch.Tensor, boundary: str, message: str):
    """Per-plane job: the whole plane at once when it fits the tile budget, else tiles.

    A plane whose FFT grid fits one tile (:func:`wiener_tile_size`) is filtered in
    one piece; an out-of-memory error there falls back to tiles half its side. Larger
    planes are filtered in tiles with :data:`TILE_HALO_KERNELS` kernel sides of
    context, so that memory is bounded by the tile. A "periodic" plane is one
    period and is never tiled.
    """

    def plane_steps(plane: torch.Tensor, kernel: torch.Tensor) -> JobSteps[torch.Tensor]:
        yield JobProgress(0.0, message)
        height, width = plane.shape[-2:]
        kh, kw = kernel.shape[-2:]
        halo = max(MIN_TILE_HALO, TILE_HALO_KERNELS * max(kh, kw))
        budget_side = wiener_tile_size(len(snrs), plane.shape[1], plane.device)
        tile_size = max(budget_side - 2 * halo, MIN_TILE_SIZE)  # the tile's core; its FFT grid fits
        if boundary == "periodic" or max(taper_fft_shape((height, width), kh, kw)) <= budget_side:
            try:
                return wiener_filter(plane, kernel[None], snrs, boundary=boundary)[0]
            except Exception as error:  # only memory errors fall back to tiles; others re-raised
                if not is_out_of_memory(error):
                    raise
                release_cached_memory(plane.device)
                if boundary == "periodic" or max(height, width) // 2 < MIN_TILE_SIZE:
                    raise out_of_memory_error(error, plane, max(height, width), 0) from error
                tile_size = max(height, width) // 2

        def tile_fn(tile):
            restored = wiener_filter(tile, kernel[None], snrs, boundary=boundary)
            return restored.flatten(1, 2)  # (1, S*C, h, w)

        tiled = yield from iter_tiled(tile_fn, plane, tile_size=tile_size, halo=halo, blend=TILE_BLEND)
        return tiled.view(len(snrs), plane.shape[1], *plane.shape[-2:])

    return plane_steps


def iter_wiener_deconvolve_snr_stack(
    image,
    psf,
    snrs_db: Sequence[float] = WIENER_STACK_SNRS_DB,
    *,
    channel_axis: int | None = None,
    device=None,
    boundary: str = "taper",
    psf_per_plane: bool = False,
) -> JobSteps[np.ndarray]:
    """Generator twin of :func:`wiener_deconvolve_snr_stack`."""
    pixels = as_float_image(image)
    kernel = as_psf(psf)
    if is_volume_psf(kernel, psf_per_plane):
        raise ValueError(
            f"psf has shape {kernel.shape}: a 3D PSF. The Wiener stack is plane by plane; for one 2D "
            "kernel per plane pass psf_per_plane=True, for a 3D deconvolution use wiener_deconvolve_3d."
        )
    snrs = _check_snrs(snrs_db)
    if boundary not in BOUNDARIES:
        raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}.")
    layout = PlaneLayout.of(pixels.shape, channel_axis)
    target = select_device(device)
    snr_tensor = torch.tensor(snrs, dtype=torch.float32, device=target)
    steps = _wiener_plane_steps(snr_tensor, boundary, "Wiener deconvolution")
    stack = yield from iter_planewise(
        pixels,
        layout,
        steps,
        device=target,
        psf=kernel,
        outputs_per_plane=len(snrs),
        message="Wiener deconvolution",
    )
    return stack if len(snrs) > 1 else stack[None]


@job_facade(iter_wiener_deconvolve_snr_stack)
def wiener_deconvolve_snr_stack() -> np.ndarray:
    """Wiener-deconvolve an image at many SNRs in one pass (one FFT of the image).

    Parameters
    ----------
    image, psf, channel_axis, device, boundary
        As in :func:`wiener_deconvolve`, with 2D kernels only: a 3D ``psf``
        needs ``psf_per_plane=True`` (one kernel per plane).
    psf_per_plane : bool
        Read a 3D ``psf`` as one 2D kernel per plane.
    snrs_db : sequence of float
        SNRs in dB; default the 15 values 9, 13, ..., 65
        (:data:`WIENER_STACK_SNRS_DB`).
    progress, cancel
        See :func:`~napari_deblur.engine.core.jobs.run_job`.

    Returns
    -------
    numpy.ndarray, float32, shape ``(len(snrs_db),) + image.shape``

    Raises
    ------
    ValueError
        As :func:`wiener_deconvolve`, and for an empty or non-finite ``snrs_db``.
    EngineMemoryError
        When memory runs out even in the smallest tiles. Planes are tiled as
        in :func:`wiener_deconvolve`, with tiles smaller by the number of
        SNRs (the output itself holds ``len(snrs_db)`` planes per plane).
    """


def iter_wiener_deconvolve(
    image,
    psf,
    *,
    snr_db: float = 30.0,
    channel_axis: int | None = None,
    device=None,
    boundary: str = "taper",
    psf_per_plane: bool = False,
) -> JobSteps[np.ndarray]:
    """Generator twin of :func:`wiener_deconvolve` (for the napari runner)."""
    if is_volume_psf(as_psf(psf), psf_per_plane):
        if boundary != "taper":
            raise ValueError(f"A 3D PSF is deconvolved with the 'taper' boundary only, got {boundary!r}.")
        return (
            yield from iter_wiener_deconvolve_3d(
                image, psf, snr_db=snr_db, channel_axis=channel_axis, device=device
            )
        )
    stack = yield from iter_wiener_deconvolve_snr_stack(
        image, psf, [snr_db], channel_axis=channel_axis, device=device, boundary=boundary, psf_per_plane=True
    )
    return stack[0]


@job_facade(iter_wiener_deconvolve, lazy=lazy_with_psf)
def wiener_deconvolve() -> np.ndarray:
    """Classical Wiener deconvolution with boundary handling for real photos.

    Parameters
    ----------
    image : array_like, shape (..., H, W) or with a channel axis
        Blurred image, any real dtype; with a 2D PSF leading axes (z, t) are
        processed plane by plane.
    psf : array_like, shape (h, w) or (n, h, w)
        The blur kernel (normalised to sum 1 here). A 2D PSF applies to every
        plane. A 3D PSF means a 3D deconvolution of each ``(z, y, x)`` volume
        (:func:`wiener_deconvolve_3d`); with ``psf_per_plane`` it is a stack
        of 2D kernels, one per plane (or per z of a t-z stack).
    snr_db : float
        Assumed signal-to-noise power ratio in dB; lower values regularise
        more (smoother, less noise), higher values sharpen more.
    channel_axis : int, optional
        Axis of colour channels (e.g. -1 for RGB).
    device : str or torch.device, optional
        ``None``/"auto" (CUDA, then MPS, then CPU), "cpu", "cuda" or "mps".
    boundary : {"taper", "periodic"}
        "taper" (default) mirrors and fades the plane beyond its frame so a
        real photo does not ring at its border; "periodic" assumes the image
        is one period of a periodic blur (2D PSFs only).
    psf_per_plane : bool
        Read a 3D ``psf`` as one 2D kernel per plane instead of a 3D PSF.
    progress : callable, optional
        Called with :class:`~napari_deblur.engine.core.jobs.JobProgress` per plane.
    cancel : callable or threading.Event, optional
        Checked between planes; raises ``JobCancelled`` when set.

    Returns
    -------
    numpy.ndarray, float32, same shape as ``image``, in the input's intensity
    scale (not clipped: values may slightly leave the input's range).

    Raises
    ------
    ValueError
        For empty, complex or non-finite input, a bad PSF or one larger than
        the image plane, or an unavailable device.
    EngineMemoryError
        When memory runs out even in the smallest tiles
        (:class:`~napari_deblur.engine.core.jobs.EngineMemoryError`, a ``MemoryError``).

    Notes
    -----
    A plane is filtered in one piece when its FFT grid fits
    :data:`~napari_deblur.engine.core.tiling.TILE_MEMORY_BUDGET_BYTES` (about
    3800 x 3800 px for one SNR and channel), else in tiles with
    :data:`TILE_HALO_KERNELS` kernel sides of context, cross-faded; memory
    is then bounded by the tile, and the result differs from the untiled
    one only by the Wiener filter's response beyond that context.


    A dask array ``image`` gives a lazy dask array at once, computed plane by
    plane with this same function (:mod:`napari_deblur.engine.core.lazy`).
    """


def _signal_power_spectrum_3d(fft_shape: tuple[int, int, int], device, dtype) -> torch.Tensor:
    """:func:`signal_power_spectrum` on a 3D real-FFT grid (``|f|`` over z, y and x), mean 1."""
    freqs = [torch.fft.fftfreq(n, device=device, dtype=dtype) for n in fft_shape[:2]]
    freqs.append(torch.fft.rfftfreq(fft_shape[2], device=device, dtype=dtype))
    squared = freqs[0][:, None, None] ** 2 + freqs[1][None, :, None] ** 2 + freqs[2][None, None, :] ** 2
    power = (squared + SPECTRUM_KNEE**2) ** (-SPECTRUM_EXPONENT / 2)
    weights = torch.full((power.shape[-1],), 2.0, device=device, dtype=dtype)
    weights[0] = 1.0
    if fft_shape[2] % 2 == 0:
        weights[-1] = 1.0
    return power / ((power * weights).sum() / float(np.prod(fft_shape)))


def _taper_pad_3d(volume: torch.Tensor, margins: tuple[int, int, int], fft_shape) -> torch.Tensor:
    """:func:`~napari_deblur.engine.physics.fourier.taper_pad` in z, y and x: mirrored by ``margins``
    (and further to ``fft_shape``), faded to the volume's mean with raised cosines."""
    padded = volume
    for axis, (length, margin, size) in enumerate(zip(volume.shape, margins, fft_shape)):
        indices = symmetric_indices(length, margin, size - length - margin, volume.device)
        padded = padded.index_select(axis, indices)
    nz = volume.shape[0]
    weight_z = taper_weights((nz, 1), margins[0], 0, (fft_shape[0], 1), volume.device, volume.dtype)[:, 0]
    weight_yx = taper_weights(
        tuple(volume.shape[1:]), margins[1], margins[2], tuple(fft_shape[1:]), volume.device, volume.dtype
    )
    mean = volume.mean()
    return mean + (padded - mean) * (weight_z[:, None, None] * weight_yx[None])


def wiener_filter_3d(volume: torch.Tensor, kernel: torch.Tensor, snr_db: float) -> torch.Tensor:
    """Wiener-deconvolve one ``(Z, H, W)`` volume with a centred ``(kz, ky, kx)`` PSF summing to 1.

    The volume is mirrored and faded by the PSF's size in every axis before
    the FFT (as :func:`wiener_filter` does in 2D), so the first and last planes
    do not ring. Returns a ``(Z, H, W)`` tensor on the volume's device.
    """
    margins = tuple(int(k) for k in kernel.shape)
    fft_shape = tuple(fast_fft_length(n + 2 * m) for n, m in zip(volume.shape, margins))
    padded = _taper_pad_3d(volume, margins, fft_shape)
    otf_grid = kernel.new_zeros(fft_shape)
    otf_grid[: margins[0], : margins[1], : margins[2]] = kernel
    otf_grid = torch.roll(otf_grid, shifts=tuple(-(k // 2) for k in margins), dims=(0, 1, 2))
    otf = torch.fft.rfftn(otf_grid)
    del otf_grid
    regulariser = 10.0 ** (-float(snr_db) / 10.0) / _signal_power_spectrum_3d(
        fft_shape, volume.device, volume.dtype
    )
    gain = otf.conj() / (otf.abs().square() + regulariser)
    gain[0, 0, 0] = 1.0 / otf[0, 0, 0]
    restored = torch.fft.irfftn(torch.fft.rfftn(padded) * gain, s=fft_shape)
    return restored[margins[0] :, margins[1] :, margins[2] :][
        : volume.shape[0], : volume.shape[1], : volume.shape[2]
    ]


WIENER_3D_HALO_KERNELS = 2
"""Lateral context of a 3D Wiener tile, in the PSF's lateral sides (after an out-of-memory error)."""


def iter_wiener_deconvolve_3d(
    image,
    psf,
    *,
    snr_db: float = 30.0,
    channel_axis: int | None = None,
    device=None,
) -> JobSteps[np.ndarray]:
    """Generator twin of :func:`wiener_deconvolve_3d`."""
    pixels = as_float_image(image)
    snr = _check_snrs([snr_db])[0]

    def filter_steps(volume: torch.Tensor, kernel: torch.Tensor) -> JobSteps[torch.Tensor]:
        yield JobProgress(0.0, "3D Wiener deconvolution")
        return wiener_filter_3d(volume, kernel, snr)

    def volume_steps(volume: torch.Tensor, kernel: torch.Tensor) -> JobSteps[torch.Tensor]:
        return (
            yield from iter_in_pieces(
                volume,
                lambda piece: filter_steps(piece, kernel),
                lateral_halo=WIENER_3D_HALO_KERNELS * max(kernel.shape[1:]),
                depth_halo=kernel.shape[0],  # the filter reaches further than the PSF: its whole depth
                blend=TILE_BLEND,
                method="3D Wiener",
            )
        )

    return (
        yield from iter_volumewise(
            pixels,
            psf,
            volume_steps,
            channel_axis=channel_axis,
            device=select_device(device),
            message="3D Wiener deconvolution",
        )
    )


@job_facade(iter_wiener_deconvolve_3d, lazy=lazy_by_volume)
def wiener_deconvolve_3d() -> np.ndarray:
    """Wiener deconvolution of a 3D volume with a 3D PSF (one filter in 3D Fourier space).

    Parameters
    ----------
    image : array_like, shape (..., Z, H, W) or with a channel axis
        Blurred volume(s), any real dtype; axes before z (t) and channels are
        deconvolved one volume at a time.
    psf : array_like, shape (kz, ky, kx)
        The 3D PSF, centred at ``k // 2``, normalised to sum 1 here; no larger
        than the volume in any axis.
    snr_db : float
        Assumed signal-to-noise power ratio in dB (as :func:`wiener_deconvolve`).
    channel_axis : int, optional
        Axis of colour channels.
    device : str or torch.device, optional
        ``None``/"auto" (CUDA, then MPS, then CPU), "cpu", "cuda" or "mps".
    progress, cancel
        See :func:`~napari_deblur.engine.core.jobs.run_job`; checked per volume.

    Returns
    -------
    numpy.ndarray, float32, same shape as ``image``, in the input's intensity
    scale (not clipped).

    Raises
    ------
    ValueError
        For bad input, a PSF that is not 3D or is larger than the volume, or
        a 2D image.
    EngineMemoryError
        When even lateral tiles of :data:`~napari_deblur.engine.core.tiling.MIN_TILE_SIZE`
        voxels of a slab of :data:`~napari_deblur.engine.core.volumes.MIN_SLAB_PLANES`
        planes do not fit the device (the volume is tried whole, then in lateral tiles
        with the whole depth, then in slabs of planes).

    Notes
    -----
    The volume is mirrored by the PSF's size in z, y and x and faded to its
    mean with raised cosines (the 3D form of :func:`~napari_deblur.engine.physics.fourier.taper_pad`),
    so the first and last planes do not ring; the filter is
    ``conj(H) / (|H|^2 + 10^(-snr/10) / P(f))`` with the power-law spectrum
    model of :func:`signal_power_spectrum` over 3D frequencies (voxel units),
    and DC gain ``1 / H(0)``.
    """
