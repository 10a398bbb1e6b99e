"""Sparse-prior non-blind deconvolution, the fixed step behind the error ratios of the blind papers.

Levin, Fergus, Durand & Freeman (SIGGRAPH 2007) deconvolve with a hyper-Laplacian prior on
first and second derivatives; Levin et al. (CVPR 2009) and the blind methods compared on their
data (Xu & Jia; Pan et al.) compute every error ratio with that one step, weight 0.0068 and 70
conjugate-gradient iterations, for the estimated and the true kernel alike. This is our own
implementation of the method as described there, for the benchmarks only:

    min_x  || k * x - y ||^2  +  w * sum_d  rho_d(D_d x),   rho(t) = |t|^0.8

with ``D_d`` the differences along x and y (weight 1) and the second differences xx, yy, xy
(weight 1/4). ``x`` is larger than ``y`` by the kernel (the content beyond the frame is unknown
and estimated: real boundaries, no wrap-around). Iteratively reweighted least squares: a
quadratic solve with unit weights, then two solves with weights ``0.1 * max(|D_d x|, 0.01)^(0.8 - 2)``
from the previous solution, each by conjugate gradients on the normal equations.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SPARSE_WEIGHT = 0.0068
"""Prior weight ``w`` of the papers' evaluations (intensities in [0, 1])."""
CG_ITERATIONS = 70
EXPONENT = 0.8
REWEIGHT_SCALE = 0.1
REWEIGHT_FLOOR = 0.01
REWEIGHT_ROUNDS = 2
SECOND_ORDER_SHARE = 0.25

_DERIVATIVES = (  # (filter, share of the prior)
    ([[1.0, -1.0]], 1.0),
    ([[1.0], [-1.0]], 1.0),
    ([[-1.0, 2.0, -1.0]], SECOND_ORDER_SHARE),
    ([[-1.0], [2.0], [-1.0]], SECOND_ORDER_SHARE),
    ([[-1.0, 1.0], [1.0, -1.0]], SECOND_ORDER_SHARE),
)


def sparse_deconvolve(
    observed: np.ndarray, kernel: np.ndarray, weight: float = SPARSE_WEIGHT, iterations: int = CG_ITERATIONS
) -> np.ndarray:
    """Deconvolve a ``(H, W)`` plane blurred by ``kernel`` ``(kh, kw)`` (true convolution).

    Returns the ``(H, W)`` float64 estimate aligned with ``observed`` (the centre of the
    larger estimated scene, as a ``"same"`` convolution would place it). Raises ValueError
    for a kernel larger than the plane or one that does not sum to a positive number.
    """
    y = torch.as_tensor(np.array(observed, np.float64))
    k = torch.as_tensor(np.array(kernel, np.float64))
    if y.ndim != 2 or k.ndim != 2 or any(s < t for s, t in zip(y.shape, k.shape)):
        raise ValueError(f"need a 2D plane at least as large as a 2D kernel, got {y.shape} and {k.shape}")
    if not float(k.sum()) > 0:
        raise ValueError("the kernel must sum to a positive number")
    k = k / k.sum()
    (height, width), (kh, kw) = y.shape, k.shape
    scene = (height + kh - 1, width + kw - 1)
    fft_shape = (scene[0] + kh - 1, scene[1] + kw - 1)
    otf = torch.fft.rfft2(k, s=fft_shape)

    def blur(x):  # scene -> observed frame ("valid" convolution)
        full = torch.fft.irfft2(torch.fft.rfft2(x, s=fft_shape) * otf, s=fft_shape)
        return full[kh - 1 : kh - 1 + height, kw - 1 : kw - 1 + width]

    def blur_adjoint(r):  # observed frame -> scene (full correlation)
        padded = F.pad(r, (kw - 1, fft_shape[1] - width - kw + 1, kh - 1, fft_shape[0] - height - kh + 1))
        return torch.fft.irfft2(torch.fft.rfft2(padded) * otf.conj(), s=fft_shape)[: scene[0], : scene[1]]

    filters = [torch.tensor(f, dtype=y.dtype)[None, None] for f, _ in _DERIVATIVES]

    def derivatives(x):
        return [F.conv2d(x[None, None], f)[0, 0] for f in filters]

    def prior(x, weights):
        return sum(
            F.conv_transpose2d((w * d)[None, None], f)[0, 0]
            for f, w, d in zip(filters, weights, derivatives(x))
        )

    data_term = blur_adjoint(y)

    def solve(start, weights):
        def normal(x):
            return blur_adjoint(blur(x)) + weight * prior(x, weights)

        x = start.clone()
        residual = data_term - normal(x)
        direction = residual.clone()
        power = torch.sum(residual * residual)
        for _ in range(iterations):
            if float(power) <= 1e-20:
                break
            image = normal(direction)
            step = power / torch.sum(direction * image)
            x += step * direction
            residual -= step * image
            new_power = torch.sum(residual * residual)
            direction = residual + (new_power / power) * direction
            power = new_power
        return x

    start = F.pad(y[None, None], ((kw - 1) // 2, kw // 2, (kh - 1) // 2, kh // 2), mode="replicate")[0, 0]
    x = solve(start, [torch.ones(()) for _ in filters])
    for _ in range(REWEIGHT_ROUNDS):
        weights = [
            share * REWEIGHT_SCALE * d.abs().clamp_min(REWEIGHT_FLOOR).pow(EXPONENT - 2.0)
            for (_, share), d in zip(_DERIVATIVES, derivatives(x))
        ]
        x = solve(x, weights)
    top, left = (kh - 1) // 2, (kw - 1) // 2
    return x[top : top + height, left : left + width].numpy()
