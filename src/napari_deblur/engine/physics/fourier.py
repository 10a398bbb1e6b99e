"""FFT building blocks shared by blur and deconvolution: padding, tapering, OTFs.

Tensors are ``(B, C, H, W)``; kernels are ``(K, h, w)`` with ``K`` 1 or ``B``.
Everything follows the input tensor's device.
"""

from __future__ import annotations

import math

import torch


def symmetric_indices(length: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    """Indices that extend ``range(length)`` by half-sample mirroring (any width)."""
    positions = torch.arange(-before, length + after, device=device)
    period = 2 * length
    folded = torch.remainder(positions, period)
    return torch.where(folded < length, folded, period - 1 - folded)


def symmetric_pad(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Pad the last two axes by mirroring about the edge (``scipy`` 'reflect' mode).

    Works for pads wider than the image (the mirror repeats).
    """
    rows = symmetric_indices(x.shape[-2], top, bottom, x.device)
    cols = symmetric_indices(x.shape[-1], left, right, x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def fast_fft_length(n: int) -> int:
    """Smallest length >= n whose prime factors are 2, 3 and 5 (fast FFT sizes)."""
    best = 1 << math.ceil(math.log2(max(n, 1)))
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            candidate = power35
            while candidate < n:
                candidate *= 2
            best = min(best, candidate)
            power35 *= 3
        power5 *= 5
    return best


def squared_frequency(shape: tuple[int, int], device, dtype) -> torch.Tensor:
    """``fy**2 + fx**2`` (cycles per pixel) on the ``rfft2`` grid of ``shape``: (H, W // 2 + 1)."""
    rows = torch.fft.fftfreq(shape[0], device=device, dtype=dtype)[:, None]
    cols = torch.fft.rfftfreq(shape[1], device=device, dtype=dtype)[None, :]
    return rows.square() + cols.square()


def kernel_to_otf(kernel: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Real-FFT transfer function of centred kernels for a ``shape`` grid.

    Parameters
    ----------
    kernel : Tensor, shape (K, h, w)
        Kernels with their centre at ``(h // 2, w // 2)``.
    shape : (H, W)
        FFT grid, at least as large as the kernel.

    Returns
    -------
    Tensor, complex, shape (K, H, W // 2 + 1)
    """
    height, width = shape
    kh, kw = kernel.shape[-2:]
    padded = kernel.new_zeros(kernel.shape[:-2] + (height, width))
    padded[..., :kh, :kw] = kernel
    padded = torch.roll(padded, shifts=(-(kh // 2), -(kw // 2)), dims=(-2, -1))
    return torch.fft.rfft2(padded)


def kernel_centroid_offsets(kernel: torch.Tensor) -> torch.Tensor:
    """Centre of mass of each ``(K, h, w)`` kernel minus its centre ``(h // 2, w // 2)``.

    Shape ``(K, 2)``, (rows, columns) in pixels. The centre is the one
    :func:`kernel_to_otf` puts at the origin, so an even-sized symmetric
    kernel is half a pixel off it.
    """
    h, w = kernel.shape[-2:]
    weights = kernel.sum(dim=(-2, -1)).clamp_min(1e-12)
    rows = torch.arange(h, dtype=kernel.dtype, device=kernel.device) - h // 2
    cols = torch.arange(w, dtype=kernel.dtype, device=kernel.device) - w // 2
    return torch.stack(
        [
            (kernel.sum(dim=-1) * rows).sum(dim=-1) / weights,
            (kernel.sum(dim=-2) * cols).sum(dim=-1) / weights,
        ],
        dim=-1,
    )


def taper_fft_shape(shape: tuple[int, int], margin_h: int, margin_w: int) -> tuple[int, int]:
    """The fast FFT grid for :func:`taper_pad`: at least the plane plus its margins on both sides."""
    return fast_fft_length(shape[0] + 2 * margin_h), fast_fft_length(shape[1] + 2 * margin_w)


def taper_pad(x: torch.Tensor, margin_h: int, margin_w: int, fft_shape: tuple[int, int]) -> torch.Tensor:
    """Extend planes so that their periodic continuation is smooth.

    The plane is mirrored outward by the margins, then the mirrored band is
    blended with a raised cosine toward the plane's mean, so both outer edges
    meet at the same value: an FFT then sees no jump at the frame and a
    deconvolution does not ring there.

    Parameters
    ----------
    x : Tensor, shape (B, C, H, W)
    margin_h, margin_w : int
        Minimum extension on each side; the far side is extended further to
        reach ``fft_shape``.
    fft_shape : (Hp, Wp)
        Target size, ``>= (H + 2 margin_h, W + 2 margin_w)``.

    Returns
    -------
    Tensor, shape (B, C, Hp, Wp); the plane sits at ``[margin_h:, margin_w:]``.
    """
    height, width = x.shape[-2:]
    extra_h = fft_shape[0] - height - margin_h
    extra_w = fft_shape[1] - width - margin_w
    padded = symmetric_pad(x, margin_h, extra_h, margin_w, extra_w)
    mean = x.mean(dim=(-2, -1), keepdim=True)
    weight = taper_weights((height, width), margin_h, margin_w, fft_shape, x.device, x.dtype)
    return mean + (padded - mean) * weight


def taper_weights(
    shape: tuple[int, int], margin_h: int, margin_w: int, fft_shape: tuple[int, int], device, dtype
) -> torch.Tensor:
    """The ``(Hp, Wp)`` weight :func:`taper_pad` gives a plane of ``shape``: 1 on it, 0 mid-band."""
    height, width = shape
    weight_rows = _frame_weights(height, margin_h, fft_shape[0] - height - margin_h, device, dtype)
    weight_cols = _frame_weights(width, margin_w, fft_shape[1] - width - margin_w, device, dtype)
    return weight_rows[:, None] * weight_cols[None, :]


def _frame_weights(length: int, before: int, after: int, device, dtype) -> torch.Tensor:
    """1 over the plane, falling smoothly to 0 in the middle of the padding band.

    In the periodic picture the padding after the plane and the padding before
    it form one band of ``before + after`` samples that runs from the plane's
    end round to its start; the weight is a raised cosine that is 1 at both
    ends of that band and 0 in its middle.
    """
    weights = torch.ones(before + length + after, device=device, dtype=dtype)
    band = before + after
    if band == 0:
        return weights
    t = (torch.arange(band, device=device, dtype=dtype) + 1.0) / (band + 1.0)
    band_weights = 0.5 * (1.0 + torch.cos(2.0 * math.pi * t))
    weights[before + length :] = band_weights[:after]
    weights[:before] = band_weights[after:]
    return weights
