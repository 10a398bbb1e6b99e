"""Richardson-Lucy deconvolution in 2D (plane by plane) and 3D (a volume with a 3D PSF).

FFT convolutions in torch on a grid padded by the PSF's half-size, with the
unknown-boundary normalisation of Bertero & Boccacci (no ringing or pile-up at
the frame or at a stack's first and last planes), Biggs-Andrews acceleration
and an optional total-variation term (Dey et al.). See
docs/methods/richardson-lucy.md for the maths.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..core.devices import select_device
from ..core.jobs import JobProgress, JobSteps, job_facade
from ..core.lazy import lazy_by_volume
from ..core.planes import PlaneLayout, iter_planewise
from ..core.validation import as_float_image, as_psf
from ..core.volumes import iter_in_pieces, iter_volumewise
from ..physics.fourier import fast_fft_length

MAX_ITERATIONS = 10_000
MAX_TV_WEIGHT = 0.1
"""Largest ``tv_weight``: it keeps the RL-TV denominator ``1 - λ div(...)`` at least 0.4 in 3D."""

NORMALISATION_FLOOR = 1e-3
"""Voxels of the padded grid whose normalisation ``H^T 1`` is below this (of 1) are not estimated."""

TV_EPSILON = 1e-4
"""Added to ``|∇x|`` (relative to the data's peak) in the TV term."""

TILE_BLEND = 16
"""Overlap of neighbouring lateral tiles after an out-of-memory error, cross-faded."""


AUTO_ITERATIONS = "auto"
"""``iterations="auto"``: stop when the residual is whitest (:class:`ResidualWhiteness`)."""

AUTO_MAX_ITERATIONS = 200
"""Most iterations ``iterations="auto"`` runs."""

AUTO_PATIENCE = 10
"""``iterations="auto"`` stops once the residual is no whiter than it was this many iterations before
(by :data:`AUTO_MIN_GAIN`)."""

AUTO_MIN_GAIN = 0.05
"""Least relative fall of the whiteness distance over :data:`AUTO_PATIENCE` iterations for
``iterations="auto"`` to go on. A residual that stops getting whiter while still far from white holds
what the model cannot explain (a PSF that is not the microscope's, background, camera patterns);
iterating on fits that with artefacts."""

WHITENESS_BINS = 64
"""Radial frequency bins of the residual's cumulative periodogram."""


class ResidualWhiteness:
    """How far the residual ``y - H x`` is from white noise: its normalised cumulative periodogram.

    While the estimate still misses structure, the residual holds it at low
    frequencies and its power spectrum falls; once the iterations start to fit
    the noise, the residual loses its high frequencies. White noise (Gaussian
    or Poisson, whatever its level) has a flat spectrum, so the iteration whose
    residual is whitest is where to stop (Hansen, Kilmer & Kjeldsen's NCP
    criterion, here with the power summed in radial frequency bins). No noise
    level needs to be known.

    Parameters
    ----------
    shape : tuple of int
        Spatial shape of the residuals (the data's last ``ndim`` axes).
    device : torch.device
    """

    def __init__(self, shape: tuple[int, ...], device) -> None:
        frequencies = [torch.fft.fftfreq(n, device=device) for n in shape[:-1]]
        frequencies.append(torch.fft.rfftfreq(shape[-1], device=device))
        grids = torch.meshgrid(*frequencies, indexing="ij")
        radius = torch.sqrt(sum(g.square() for g in grids))
        self._bins = (radius / radius.max() * WHITENESS_BINS).long().clamp_max_(WHITENESS_BINS - 1).ravel()
        # The half spectrum of a real signal stands for both halves, except its first (and last) column.
        weight = torch.full(radius.shape, 2.0, device=device)
        weight[..., 0] = 1.0
        if shape[-1] % 2 == 0:
            weight[..., -1] = 1.0
        weight.view(-1)[0] = 0.0  # the mean is not noise
        self._weight = weight.ravel()
        counts = torch.zeros(WHITENESS_BINS, device=device).index_add_(0, self._bins, self._weight)
        self._white = torch.cumsum(counts, 0) / counts.sum()
        self._dims = tuple(range(-len(shape), 0))

    def distance(self, residual: torch.Tensor) -> float:
        """Largest gap between the residual's cumulative periodogram and white noise's (0 to 1)."""
        power = torch.fft.rfftn(residual, dim=self._dims).abs().square()
        power = power.reshape(-1, self._weight.numel()).sum(dim=0) * self._weight
        spectrum = torch.zeros(WHITENESS_BINS, device=power.device).index_add_(0, self._bins, power)
        total = spectrum.sum()
        if not bool(total > 0):
            return 0.0
        return float((torch.cumsum(spectrum, 0) / total - self._white).abs().max())


def _otf(kernel: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """Real-FFT transfer function of a centred kernel (last ``len(grid)`` axes) on ``grid``."""
    ndim = len(grid)
    padded = kernel.new_zeros(grid)
    padded[tuple(slice(0, k) for k in kernel.shape[-ndim:])] = kernel
    shifts = tuple(-(k // 2) for k in kernel.shape[-ndim:])
    padded = torch.roll(padded, shifts=shifts, dims=tuple(range(-ndim, 0)))
    return torch.fft.rfftn(padded, dim=tuple(range(-ndim, 0)))


def _tv_denominator(x: torch.Tensor, ndim: int, weight: float, epsilon: float) -> torch.Tensor:
    """``1 - weight * div(∇x / |∇x|)`` over the last ``ndim`` axes (forward differences, backward divergence)."""
    dims = range(x.ndim - ndim, x.ndim)
    grads = []
    for d in dims:
        g = torch.diff(x, dim=d, append=x.narrow(d, x.shape[d] - 1, 1))  # 0 at the far edge
        grads.append(g)
    norm = torch.sqrt(sum(g.square() for g in grads) + epsilon**2)
    divergence = torch.zeros_like(x)
    for d, g in zip(dims, grads):
        unit = g / norm
        divergence += torch.diff(unit, dim=d, prepend=torch.zeros_like(unit.narrow(d, 0, 1)))
    return (1.0 - weight * divergence).clamp_min_(0.1)


def iter_rl_tensor(
    data: torch.Tensor,
    kernel: torch.Tensor,
    *,
    iterations: int | str,
    acceleration: bool,
    tv_weight: float,
    snapshot: Callable[[int, torch.Tensor], None] | None = None,
) -> JobSteps[torch.Tensor]:
    """Richardson-Lucy on the last ``kernel.ndim`` axes of ``data`` (the others are a batch).

    Parameters
    ----------
    data : Tensor, shape (..., *spatial), float32
        Non-negative observed data (negative values are treated as 0).
    kernel : Tensor, shape spatial-like, float32
        Centred PSF (centre at ``k // 2``) summing to 1, no larger than ``data``.
    iterations : int or "auto"
        A number of iterations, or :data:`AUTO_ITERATIONS`: up to
        :data:`AUTO_MAX_ITERATIONS`, stopping once the residual of the whole
        batch (:class:`ResidualWhiteness`) has not got whiter by
        :data:`AUTO_MIN_GAIN` over :data:`AUTO_PATIENCE` iterations, and
        returning the estimate whose residual was whitest.
    snapshot : callable, optional
        Called after every iteration as ``snapshot(n, estimate)`` with the
        iteration count ``n`` and that iteration's estimate (shape and units of
        ``data``; a new tensor the caller may keep).

    Returns
    -------
    Tensor, same shape as ``data``, non-negative; yields one progress step per iteration.
    """
    ndim = kernel.ndim
    dims = tuple(range(-ndim, 0))
    spatial = data.shape[-ndim:]
    halves = [k // 2 for k in kernel.shape]
    grid = tuple(fast_fft_length(n + 2 * h) for n, h in zip(spatial, halves))
    inside = tuple(slice(h, h + n) for h, n in zip(halves, spatial))
    lead = (slice(None),) * (data.ndim - ndim)

    peak = float(data.max())
    scale = peak if peak > 0 else 1.0
    observed = data.new_zeros(data.shape[:-ndim] + grid)
    observed[lead + inside] = data.clamp_min(0.0) / scale
    otf = _otf(kernel.to(data.dtype), grid)
    otf_conj = otf.conj()

    def forward(x):
        return torch.fft.irfftn(torch.fft.rfftn(x, dim=dims) * otf, s=grid, dim=dims)

    def adjoint(x):
        return torch.fft.irfftn(torch.fft.rfftn(x, dim=dims) * otf_conj, s=grid, dim=dims)

    mask = data.new_zeros(grid)
    mask[inside] = 1.0
    normalisation = adjoint(mask)
    del mask
    estimated = normalisation > NORMALISATION_FLOOR
    inverse_normalisation = torch.where(estimated, 1.0 / normalisation.clamp_min(NORMALISATION_FLOOR), 0.0)
    del normalisation
    mean = observed[lead + inside].mean(dim=dims, keepdim=True)
    estimate = mean * estimated.to(data.dtype)  # flat start where the object is estimated
    del estimated
    tiny = torch.finfo(data.dtype).tiny * 1e6

    automatic = iterations == AUTO_ITERATIONS
    limit = AUTO_MAX_ITERATIONS if automatic else int(iterations)
    whiteness = ResidualWhiteness(spatial, data.device) if automatic else None
    distances = []  # the whiteness distance of every step's residual
    whitest = None  # the point whose residual was whitest so far
    point = estimate  # where the next RL step starts (the extrapolated point)
    previous = None  # last estimate
    previous_step = None  # last g = RL(point) - point
    for index in range(limit):
        blurred = forward(point).clamp_min_(tiny)
        if automatic:  # the residual of the point this step starts from (the last estimate, extrapolated)
            distance = whiteness.distance(observed[lead + inside] - blurred[lead + inside])
            if not distances or distance < min(distances):
                whitest = point
            distances.append(distance)
            if index >= AUTO_PATIENCE and distance > (1.0 - AUTO_MIN_GAIN) * distances[index - AUTO_PATIENCE]:
                break
        ratio = observed / blurred
        del blurred
        updated = point * adjoint(ratio) * inverse_normalisation
        del ratio
        if tv_weight > 0:
            updated /= _tv_denominator(point, ndim, tv_weight, TV_EPSILON)
        updated.clamp_min_(0.0)
        if acceleration:
            step = updated - point
            alpha = 0.0
            if previous_step is not None:
                denominator = float((previous_step * previous_step).sum())
                if denominator > 0:
                    alpha = float((step * previous_step).sum()) / denominator
                alpha = min(max(alpha, 0.0), 0.99)  # a sign change resets the extrapolation
            if previous is not None and alpha > 0:
                point = (updated + alpha * (updated - previous)).clamp_min_(0.0)
            else:
                point = updated
            previous_step = step
            previous = updated
        else:
            point = updated
        estimate = updated
        if snapshot is not None:
            snapshot(index + 1, estimate[lead + inside] * scale)
        if automatic:
            message = f"Richardson-Lucy: iteration {index + 1} (stops when the residual is white)"
        else:
            message = f"Richardson-Lucy: iteration {index + 1}/{limit}"
        yield JobProgress((index + 1) / limit, message)
    if whitest is not None:
        estimate = whitest
    return estimate[lead + inside] * scale


def _volume_steps(volume: torch.Tensor, kernel: torch.Tensor, options: dict) -> JobSteps[torch.Tensor]:
    """RL of one ``(z, y, x)`` volume: whole, or in lateral tiles or slabs of planes when memory runs out
    (:func:`~napari_deblur.engine.core.volumes.iter_in_pieces`; a tile has the PSF's lateral size as
    context, a slab its reach in z, half its depth)."""
    return (
        yield from iter_in_pieces(
            volume,
            lambda piece: iter_rl_tensor(piece, kernel, **options),
            lateral_halo=max(kernel.shape[-2:]),
            depth_halo=kernel.shape[0] // 2,
            blend=TILE_BLEND,
            method="Richardson-Lucy",
        )
    )


def _check_options(iterations, tv_weight) -> None:
    if not (isinstance(iterations, str) and iterations == AUTO_ITERATIONS):
        if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)):
            raise TypeError(f"iterations must be an int or {AUTO_ITERATIONS!r}, got {iterations!r}.")
        if not 1 <= iterations <= MAX_ITERATIONS:
            raise ValueError(f"iterations must be between 1 and {MAX_ITERATIONS}, got {iterations}.")
    if not (np.isfinite(tv_weight) and 0.0 <= tv_weight <= MAX_TV_WEIGHT):
        raise ValueError(
            f"tv_weight must be between 0 and {MAX_TV_WEIGHT} (typically 0.001 to 0.01), got {tv_weight!r}."
        )


def iter_richardson_lucy(
    image,
    psf,
    *,
    iterations: int | str = AUTO_ITERATIONS,
    acceleration: bool = True,
    tv_weight: float = 0.0,
    channel_axis: int | None = None,
    device=None,
) -> JobSteps[np.ndarray]:
    """Generator twin of :func:`richardson_lucy`."""
    pixels = as_float_image(image)
    _check_options(iterations, tv_weight)
    iterations = iterations if isinstance(iterations, str) else int(iterations)
    options = dict(iterations=iterations, acceleration=bool(acceleration), tv_weight=float(tv_weight))
    kernel_array = np.asarray(psf) if psf is not None else psf
    if isinstance(kernel_array, np.ndarray) and kernel_array.ndim == 3:
        return (
            yield from iter_volumewise(
                pixels,
                kernel_array,
                lambda volume, kernel: _volume_steps(volume, kernel, options),
                channel_axis=channel_axis,
                device=select_device(device),
                message="Richardson-Lucy",
                deeper_in_z=True,
            )
        )

    kernel = as_psf(psf)
    if kernel.ndim != 2:
        raise ValueError(f"psf must be a 2D or 3D PSF, got shape {kernel.shape}.")
    layout = PlaneLayout.of(pixels.shape, channel_axis)
    target = select_device(device)

    def plane_steps(plane: torch.Tensor, plane_kernel: torch.Tensor) -> JobSteps[torch.Tensor]:
        return (yield from iter_rl_tensor(plane, plane_kernel, **options))

    return (
        yield from iter_planewise(
            pixels, layout, plane_steps, device=target, psf=kernel, message="Richardson-Lucy"
        )
    )


@job_facade(iter_richardson_lucy, lazy=lazy_by_volume)
def richardson_lucy() -> np.ndarray:
    """Richardson-Lucy deconvolution, 2D plane by plane or 3D with a 3D PSF.

    Parameters
    ----------
    image : array_like
        Blurred image, any real dtype, non-negative intensities (negative
        values are treated as 0). With a 2D PSF: shape ``(..., H, W)`` (or
        with a channel axis), every plane deconvolved on its own. With a 3D
        PSF: shape ``(..., Z, H, W)``, each ``(Z, H, W)`` volume deconvolved
        with a true 3D model (axes before z and channels one volume at a time).
    psf : array_like, shape (h, w) or (kz, ky, kx)
        The PSF, centred at ``k // 2`` in each axis, normalised to sum 1 here.
        A 3D PSF must be no larger than the volume laterally; in z it may be
        up to ``2 Z + 1`` planes deep, so that light from planes above and
        below the stack is part of the model (a deep widefield PSF removes
        more haze).
    iterations : int or "auto"
        Number of RL iterations (1 to :data:`MAX_ITERATIONS`), or ``"auto"``
        (default): iterate until the residual ``y - H x`` is whitest, i.e.
        looks most like noise (:class:`ResidualWhiteness`), at most
        :data:`AUTO_MAX_ITERATIONS`, and return that iteration's estimate.
        Too many iterations fit the noise (grainy, ringing results), too few
        leave blur; the best count depends on the blur and the noise (about
        10 for confocal stacks, 50-100 for low-noise widefield ones).
    acceleration : bool
        Biggs-Andrews vector extrapolation (order 1): about the same result in
        fewer iterations.
    tv_weight : float
        Total-variation regularisation ``λ`` (Dey et al.), 0 (off) to
        :data:`MAX_TV_WEIGHT`; 0.001 to 0.01 damps noise amplification.
    channel_axis : int, optional
        Axis of colour channels, each deconvolved separately.
    device : str or torch.device, optional
        ``None``/"auto" (CUDA, then MPS, then CPU), "cpu", "cuda" or "mps".
    progress, cancel
        See :func:`~napari_deblur.engine.core.jobs.run_job`; progress is
        reported, and cancel checked, after every iteration.

    Returns
    -------
    numpy.ndarray, float32, same shape as ``image``
        Non-negative, in the input's intensity scale (RL keeps the flux).

    Raises
    ------
    ValueError
        For empty, complex or non-finite input, a bad PSF, a 3D PSF with a 2D
        image or larger than the volume allows, or bad options.
    EngineMemoryError
        When even lateral tiles of :data:`~napari_deblur.engine.core.tiling.MIN_TILE_SIZE`
        px of a slab of :data:`~napari_deblur.engine.core.volumes.MIN_SLAB_PLANES` planes do not fit in memory.

    Notes
    -----
    The data are padded by the PSF's half-size in every axis and the
    unknown-boundary RL of Bertero & Boccacci is run on the padded grid: the
    data only count inside the original field and each update is divided by
    ``H^T 1``, so the estimate does not ring or pile up at the frame nor at
    the first and last planes of a stack. Memory: about 12 float32 copies of
    the padded volume with a fixed count (a 64 x 512 x 512 volume with a
    33 x 65 x 65 PSF: about 2.9 GB peak on the CPU); ``iterations="auto"``
    keeps one more (the whitest step's estimate) and the residual's spectrum
    while it is measured. If the volume does not fit the device, it is deconvolved in
    lateral (y, x) tiles with halos as wide as the PSF; if a full-depth column
    of the smallest tiles does not fit either, in slabs of planes with the
    PSF's reach in z as context (each slab whole or in lateral tiles),
    cross-faded. In tiles or slabs, cancel is
    checked between them. See docs/methods/richardson-lucy.md.

    References
    ----------
    .. [1] M. Bertero and P. Boccacci, "A simple method for the reduction of
       boundary effects in the Richardson-Lucy approach to image
       deconvolution", A&A 437, 369-374, 2005.
    .. [2] D. S. C. Biggs and M. Andrews, "Acceleration of iterative image
       restoration algorithms", Applied Optics 36(8), 1766-1775, 1997.
    .. [3] N. Dey et al., "Richardson-Lucy algorithm with total variation
       regularization for 3D confocal microscope deconvolution", Microscopy
       Research and Technique 69, 260-266, 2006.
    """
