"""GWIS: grid-warping image sharpening driven by a blur level (constant or per pixel).

Blurred edges are thinned by moving the pixels of each edge's neighbourhood
toward the edge's centre line (Nasonova & Krylov 2015; Nasonov, Krylov &
Lyukov, sections 2.1-2.2). No blur kernel is needed, only a blur level per
pixel; the output is a resampling of the input, so it cannot ring or
overshoot, and flat (noisy) areas are left where they are.

Notes
-----
**1D warp.** For an edge at ``0`` and warp scale ``sigma`` the pixel at ``x``
moves to ``x + d(x)`` with

    d(x) = -x                          for |x| <= sigma,
    d(x) = -(3 sigma - 2|x|) sign(x)   for sigma < |x| <= 1.5 sigma,
    d(x) = 0                           beyond.

(The paper prints the middle branch without the leading minus, which makes
``d`` jump at ``|x| = sigma``; with the minus it is continuous, monotone,
``d' >= -1``, and zero from ``1.5 sigma`` on.) The band ``|x| <= sigma``
collapses onto the edge, the bands ``sigma < |x| <= 1.5 sigma`` are stretched
threefold to fill ``|y| <= 1.5 sigma``. The warp is forward,
``W[g, d](x + d(x)) = g(x)``; it is applied by inverting the mapping. The
inverse is closed form: the output pixel at ``y`` (``0 < |y| <= 1.5 sigma``)
reads the input at ``u = y + e(y)``, ``e(y) = sign(y) (sigma - 2|y| / 3)``.
(The fixed-point iteration ``u <- y - d(u)`` does not converge here: the
slope of ``d`` is 2 on the stretched bands, so that map is expansive.)

**2D.** Edge points ``p`` are local maxima of the gradient magnitude along
the gradient direction (non-maximum suppression, sub-pixel position from a
parabola) whose magnitude exceeds ``EDGE_THRESHOLD`` times the noise level of
the gradient (noise estimated from the median absolute diagonal wavelet
coefficient). Each edge point acts on the pixels ``x`` of its band,
``|<n(p), x - p>| <= 1.5 sigma_p`` and ``|Pr_perp(x - p)| <= PERP_CUTOFF *
sigma_p``, with weight ``w = |grad I(p)| exp(-Pr_perp(x - p)^2 / (2
sigma_p^2))``. The displacement is the normalised weighted mean of the 1D
displacements ``n(p) d(<n(p), x - p>, sigma_p)`` (the paper's formula); the
applied sampling map is the same weighted mean of the exact 1D *inverses*
``n(p) e(<n(p), y - p>, sigma_p)``. Along a straight edge, where ``d`` varies
fastest, all contributing edge points share the normal and the perpendicular
coordinate is unchanged by the warp, so this is the exact inverse of the
paper's forward warp. Where few edge points contribute (edge ends, isolated
points) the displacement fades with the coverage ``min(1, sum_p
exp(-Pr_perp^2 / 2 sigma_p^2) / (COVERAGE_FULL * sigma))``, which keeps the
map continuous at the end of an edge and leaves lone noise maxima almost
alone. The image is resampled bilinearly at ``u``: every output value is a
convex combination of nearby input values (no new extrema).

**Colour and stacks.** The edges and the field come from the luminance
(Rec. 709 weights for RGB/RGBA, channel mean otherwise); every channel is
warped with the same field. Leading axes (z, t) are processed plane by plane.

**Blur level to warp scale.** ``sigma_p = WARP_SCALE_SLOPE * level +
WARP_SCALE_OFFSET`` (level > 0), found by an oracle study on the training
images only (``benchmarks/gwis_oracle_study.py``, output
``benchmarks/results/gwis_oracle_study.md``).

The work is vectorised: a loop over the few window offsets (dy, dx) within
the reach of an edge point scatters the contributions of *all* edge points
at once (``scatter_add_``), so the cost grows with the number of edge points
times the window area, not with the image size times the window area.

References
----------
A. Nasonova, A. Krylov, "Deblurred images post-processing by Poisson
warping", IEEE Signal Processing Letters 22(4), 2015.
A. Nasonov, A. Krylov, D. Lyukov, "Image sharpening with blur map estimation
using convolutional neural network", ISPRS Archives XLII-2/W12, 2019.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .devices import select_device
from .jobs import JobProgress, JobSteps, run_job
from .planes import PlaneLayout, iter_planewise
from .tiling import iter_tiled
from .validation import as_float_image

logger = logging.getLogger(__name__)

# Blur level (PSF standard deviation, px) -> warp scale sigma_p (px): sigma_p = a * level + b.
# Oracle study on the TRAINING split only (Gaussian/disk/ring blur, levels 0.5..6, noise variance
# 0..10 on a 0..255 scale, best warp scale by SSIM per case, least-squares line through the picks
# on relative errors, 283 cases): benchmarks/gwis_oracle_study.py ->
# benchmarks/results/gwis_oracle_study.md, "warp scale = 2.739 * level + -0.651 px". Per type the
# slopes differ (Gaussian 2.04, disk 3.01, ring 3.12); one line serves all. Levels below ~0.24 px
# give no warp.
WARP_SCALE_SLOPE = 2.74
WARP_SCALE_OFFSET = -0.65
#: Warp scales are clipped to this many pixels (the window grows with the square of the scale).
MAX_WARP_SCALE = 16.0
#: Edge points with a smaller warp scale do not warp (blur level ~0: nothing to sharpen).
MIN_WARP_SCALE = 0.25
#: Edge points: gradient magnitude above this many noise standard deviations of the gradient.
EDGE_THRESHOLD = 4.0
#: ... and above this fraction of the plane's intensity range (per pixel), for noise-free images.
EDGE_FLOOR = 1e-3
#: An edge point acts up to this many warp scales along its edge (perpendicular to its normal).
PERP_CUTOFF = 2.0
#: Full displacement once the summed perpendicular weights reach this many warp scales
#: (a straight edge gives about 2.4, a diagonal one about 1.7, an isolated point 1 / sigma).
COVERAGE_FULL = 1.2
#: Gradients are Gaussian derivatives at scale clip(0.5 * median level, 1, 3) px.
GRADIENT_SCALE_RANGE = (1.0, 3.0)
#: Folded cells (Jacobian at most MIN_JACOBIAN) get their displacement halved up to this often.
UNFOLD_STEPS = 16
UNFOLD_SHRINK = 0.5
MIN_JACOBIAN = 0.05
#: Side of a tile's core for large planes (pixels).
TILE_SIZE = 1024

_REC709 = (0.2125, 0.7154, 0.0721)  # as skimage.color.rgb2gray


def warp_scale_for_level(level):
    """Warp scale ``sigma_p`` (px) for blur levels (px): the study's linear mapping.

    Parameters
    ----------
    level : float, numpy.ndarray or torch.Tensor
        Blur levels (PSF standard deviation in pixels, >= 0).

    Returns
    -------
    Same type as ``level``: ``WARP_SCALE_SLOPE * level + WARP_SCALE_OFFSET``,
    clipped to ``MAX_WARP_SCALE``, and 0 where the level is 0.
    """
    if isinstance(level, torch.Tensor):
        scale = (WARP_SCALE_SLOPE * level + WARP_SCALE_OFFSET).clamp(0.0, MAX_WARP_SCALE)
        return torch.where(level > 0, scale, torch.zeros_like(scale))
    array = np.asarray(level, dtype=np.float64)
    scale = np.clip(WARP_SCALE_SLOPE * array + WARP_SCALE_OFFSET, 0.0, MAX_WARP_SCALE)
    scale = np.where(array > 0, scale, 0.0)
    return float(scale) if scale.ndim == 0 else scale


def gradient_scale_for_level(level: float) -> float:
    """Scale (px) of the Gaussian derivative used to find edges at blur ``level``."""
    low, high = GRADIENT_SCALE_RANGE
    return float(min(max(0.5 * float(level), low), high))


# --- tensor level: (B, C, H, W) -------------------------------------------------------------


def luminance(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, 1, H, W)``: Rec. 709 luminance for 3/4 channels, else the mean."""
    channels = x.shape[1]
    if channels == 1:
        return x
    if channels in (3, 4):
        weights = torch.tensor(_REC709, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x[:, :3] * weights).sum(dim=1, keepdim=True)
    return x.mean(dim=1, keepdim=True)


def estimate_noise_std(lum: torch.Tensor) -> torch.Tensor:
    """Robust white-noise standard deviation per plane, shape ``(B,)``.

    Median absolute value of the finest diagonal Haar wavelet band divided by
    0.6745 (Donoho's estimator); the band holds little of a natural or blurred
    image, so mostly noise.
    """
    height, width = lum.shape[-2:]
    h2, w2 = height // 2 * 2, width // 2 * 2
    if h2 == 0 or w2 == 0:
        return lum.new_zeros(lum.shape[0])
    q = lum[:, 0, :h2, :w2]
    diagonal = (q[:, 0::2, 0::2] - q[:, 1::2, 0::2] - q[:, 0::2, 1::2] + q[:, 1::2, 1::2]) / 2.0
    return diagonal.flatten(1).abs().median(dim=1).values / 0.6745


def _gaussian_kernels(scale: float, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    radius = max(1, int(math.ceil(3.0 * scale)))
    k = torch.arange(-radius, radius + 1, dtype=torch.float64)
    smooth = torch.exp(-(k**2) / (2.0 * scale**2))
    smooth = smooth / smooth.sum()
    derivative = k * smooth
    derivative = derivative / (k * derivative).sum()  # gives 1 on a unit ramp
    return smooth.to(device=device, dtype=dtype), derivative.to(device=device, dtype=dtype)


def _separable(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Correlate ``(B, 1, H, W)`` with ``rows[:, None] * cols[None, :]`` (replicated border)."""
    ry, rx = rows.numel() // 2, cols.numel() // 2
    padded = F.pad(x, (rx, rx, ry, ry), mode="replicate")
    out = F.conv2d(padded, rows.view(1, 1, -1, 1))
    return F.conv2d(out, cols.view(1, 1, 1, -1))


def gradient_noise_gain(scale: float) -> float:
    """Standard deviation of one Gaussian-derivative component for unit white noise."""
    smooth, derivative = _gaussian_kernels(scale, torch.float64, "cpu")
    return float(smooth.norm() * derivative.norm())


@dataclass
class EdgePoints:
    """Edge points of a batch of planes (1D tensors of equal length)."""

    batch: torch.Tensor  # int64 plane index
    row: torch.Tensor  # int64 pixel row
    col: torch.Tensor  # int64 pixel column
    y: torch.Tensor  # sub-pixel position (rows)
    x: torch.Tensor  # sub-pixel position (columns)
    ny: torch.Tensor  # unit gradient direction, row component
    nx: torch.Tensor  # unit gradient direction, column component
    strength: torch.Tensor  # gradient magnitude
    scale: torch.Tensor  # warp scale sigma_p (px)


def _sample(values: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``(B, 1, H, W)`` at pixel coordinates ``(B, H, W)`` (clamped)."""
    height, width = values.shape[-2:]
    grid = torch.stack(
        (2.0 * cols / max(width - 1, 1) - 1.0, 2.0 * rows / max(height - 1, 1) - 1.0), dim=-1
    )
    return F.grid_sample(values, grid, mode="bilinear", padding_mode="border", align_corners=True)[:, 0]


def detect_edge_points(
    lum: torch.Tensor,
    warp_scale: torch.Tensor,
    *,
    gradient_scale: float = 1.0,
    noise_std: torch.Tensor | None = None,
    intensity_range: torch.Tensor | None = None,
) -> EdgePoints:
    """Gradient maxima along the gradient direction above a noise-aware threshold.

    Parameters
    ----------
    lum : Tensor, shape (B, 1, H, W)
        Luminance.
    warp_scale : Tensor, shape (B, 1, H, W)
        Warp scale per pixel (px); edge points below ``MIN_WARP_SCALE`` are dropped.
    gradient_scale : float
        Scale (px) of the Gaussian derivative.
    noise_std, intensity_range : Tensor, shape (B,), optional
        Noise level and intensity range of each plane (estimated on ``lum``
        when omitted; pass whole-plane values when ``lum`` is a tile).

    Returns
    -------
    EdgePoints
    """
    batch, _, height, width = lum.shape
    if noise_std is None:
        noise_std = estimate_noise_std(lum)
    if intensity_range is None:
        flat = lum.flatten(1)
        intensity_range = flat.max(dim=1).values - flat.min(dim=1).values
    smooth, derivative = _gaussian_kernels(gradient_scale, lum.dtype, lum.device)
    gy = _separable(lum, derivative, smooth)[:, 0]
    gx = _separable(lum, smooth, derivative)[:, 0]
    magnitude = torch.sqrt(gy * gy + gx * gx)
    safe = magnitude.clamp_min(torch.finfo(lum.dtype).tiny)
    ny, nx = gy / safe, gx / safe
    rows = torch.arange(height, device=lum.device, dtype=lum.dtype).view(1, -1, 1).expand_as(gy)
    cols = torch.arange(width, device=lum.device, dtype=lum.dtype).view(1, 1, -1).expand_as(gx)
    mag4 = magnitude[:, None]
    ahead = _sample(mag4, rows + ny, cols + nx)
    behind = _sample(mag4, rows - ny, cols - nx)
    threshold = torch.maximum(
        EDGE_THRESHOLD * gradient_noise_gain(gradient_scale) * noise_std,
        EDGE_FLOOR * intensity_range,
    ).view(-1, 1, 1)
    is_edge = (
        (magnitude >= behind)
        & (magnitude > ahead)
        & (magnitude > threshold)
        & (warp_scale[:, 0] >= MIN_WARP_SCALE)
    )
    b, r, c = torch.nonzero(is_edge, as_tuple=True)
    m0, mp, mm = magnitude[b, r, c], ahead[b, r, c], behind[b, r, c]
    curvature = mm - 2.0 * m0 + mp
    offset = torch.where(curvature < 0, 0.5 * (mm - mp) / curvature.clamp_max(-1e-12),
                         torch.zeros_like(m0)).clamp(-0.5, 0.5)
    pny, pnx = ny[b, r, c], nx[b, r, c]
    return EdgePoints(
        batch=b, row=r, col=c,
        y=r.to(lum.dtype) + offset * pny, x=c.to(lum.dtype) + offset * pnx,
        ny=pny, nx=pnx, strength=m0, scale=warp_scale[b, 0, r, c],
    )


def window_radius(max_warp_scale: float) -> int:
    """Reach (px) of an edge point with warp scale ``max_warp_scale``, sub-pixel offset included."""
    if max_warp_scale <= 0:
        return 0
    return int(math.ceil(math.hypot(1.5 * max_warp_scale, PERP_CUTOFF * max_warp_scale) + 1.0))


def _window_offsets(radius: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    k = torch.arange(-radius, radius + 1, device=device)
    oy, ox = torch.meshgrid(k, k, indexing="ij")
    inside = oy * oy + ox * ox <= radius * radius
    return oy[inside], ox[inside]


def _accumulate(edges: EdgePoints, shape: tuple[int, int, int], *, with_forward: bool = False,
                max_pairs: int = 1 << 22) -> torch.Tensor:
    """Scatter every edge point's contributions to the pixels of its band.

    All quantities are computed in units of the edge point's warp scale:
    ``a = <n, x - p> / sigma_p`` (across the edge) and ``b = Pr_perp(x - p) / sigma_p``
    (along it), each by one small matrix product over (edge points, window offsets).

    Returns ``(B, K, H, W)`` sums: weight, inverse-displacement numerator (rows, columns),
    coverage, and with ``with_forward`` the forward-displacement numerator (rows, columns).
    """
    batch, height, width = shape
    dtype, device = edges.y.dtype, edges.y.device
    n_sums = 6 if with_forward else 4
    count = edges.row.numel()
    if count == 0:
        return torch.zeros(batch, n_sums, height, width, dtype=dtype, device=device)
    radius = window_radius(float(edges.scale.max()))
    # A canvas padded by the reach: every target index is valid, no bounds checks per pair.
    ph, pw = height + 2 * radius, width + 2 * radius
    sums = [torch.zeros(batch * ph * pw, dtype=dtype, device=device) for _ in range(n_sums)]
    oy, ox = _window_offsets(radius, device)
    offsets = torch.stack((oy.to(dtype), ox.to(dtype), torch.ones_like(oy, dtype=dtype)))  # (3, K)
    flat_offsets = oy * pw + ox
    inv_sigma = 1.0 / edges.scale
    sub_y, sub_x = edges.y - edges.row.to(dtype), edges.x - edges.col.to(dtype)
    ny, nx = edges.ny, edges.nx
    to_across = torch.stack((ny, nx, -(sub_y * ny + sub_x * nx)), 1) * inv_sigma[:, None]
    to_along = torch.stack((-nx, ny, -(sub_x * ny - sub_y * nx)), 1) * inv_sigma[:, None]
    scaled_ny, scaled_nx = (edges.scale * ny)[:, None], (edges.scale * nx)[:, None]
    strength = edges.strength[:, None]
    coverage_gain = (inv_sigma / COVERAGE_FULL)[:, None]
    centre = ((edges.batch * ph + edges.row + radius) * pw + edges.col + radius)[:, None]
    floor = math.exp(-0.5 * PERP_CUTOFF**2)
    chunk = max(1, max_pairs // count)
    for start in range(0, flat_offsets.numel(), chunk):
        stop = start + chunk
        a = to_across @ offsets[:, start:stop]  # (N, k)
        b = to_along @ offsets[:, start:stop]
        # Perpendicular Gaussian, shifted to reach 0 at the cutoff (continuous field).
        geometric = torch.exp(-0.5 * b * b).sub_(floor).clamp_(min=0.0)
        dist = a.abs()
        # Fade to 0 over the outer third of the band: overlapping bands blend continuously.
        taper = (3.0 - 2.0 * dist).clamp_(0.0, 1.0)
        weight = geometric * taper * strength
        sign = torch.sign(a)
        inverse = weight * sign * (1.0 - dist * (2.0 / 3.0))  # e / sigma, weighted
        index = (centre + flat_offsets[start:stop][None]).reshape(-1)
        sums[0].scatter_add_(0, index, weight.reshape(-1))
        sums[1].scatter_add_(0, index, (inverse * scaled_ny).reshape(-1))
        sums[2].scatter_add_(0, index, (inverse * scaled_nx).reshape(-1))
        sums[3].scatter_add_(0, index, (geometric * (dist <= 1.5) * coverage_gain).reshape(-1))
        if with_forward:
            forward = weight * torch.where(dist <= 1.0, -a, -sign * (3.0 - 2.0 * dist))
            sums[4].scatter_add_(0, index, (forward * scaled_ny).reshape(-1))
            sums[5].scatter_add_(0, index, (forward * scaled_nx).reshape(-1))
    stacked = torch.stack(sums).view(n_sums, batch, ph, pw).transpose(0, 1)
    return stacked[..., radius : radius + height, radius : radius + width]


def _jacobian(displacement: torch.Tensor) -> torch.Tensor:
    """Jacobian determinant of ``y -> y + displacement`` on each pixel cell, ``(B, 1, H-1, W-1)``."""
    v_y, v_x = displacement[:, 0], displacement[:, 1]
    dyy = 1.0 + v_y[:, 1:, :-1] - v_y[:, :-1, :-1]
    dyx = v_y[:, :-1, 1:] - v_y[:, :-1, :-1]
    dxy = v_x[:, 1:, :-1] - v_x[:, :-1, :-1]
    dxx = 1.0 + v_x[:, :-1, 1:] - v_x[:, :-1, :-1]
    return (dyy * dxx - dyx * dxy)[:, None]


def _unfold(displacement: torch.Tensor) -> torch.Tensor:
    """Shrink the displacement where the sampling map would fold (non-positive Jacobian).

    Where edges of different directions overlap (texture, corners), the blend
    of their 1D warps can fold the grid. Around each folded cell the
    displacement factor is multiplied by ``UNFOLD_SHRINK``, then, near the
    folds, eroded and smoothed (3x3 min, then 3x3 mean) so that it changes
    gradually; this repeats until
    no cell folds (at most ``UNFOLD_STEPS`` times, after which the
    displacement is removed around the remaining folds). Elsewhere the
    displacement is untouched.
    """
    if displacement.shape[-1] < 2 or displacement.shape[-2] < 2:
        return displacement
    factor = torch.ones_like(displacement[:, :1])
    for step in range(UNFOLD_STEPS + 1):
        folded = (_jacobian(displacement * factor) <= MIN_JACOBIAN).to(displacement.dtype)
        if not bool(folded.any()):
            break
        # A cell involves its 4 corner pixels; widen by one more pixel around them.
        around = F.max_pool2d(F.pad(folded, (1, 1, 1, 1)), 2, stride=1)
        around = F.max_pool2d(around, 3, stride=1, padding=1) > 0
        if step == UNFOLD_STEPS:
            factor = torch.where(around, torch.zeros_like(factor), factor)
            break
        factor = torch.where(around, factor * UNFOLD_SHRINK, factor)
        eroded = -F.max_pool2d(-factor, 3, stride=1, padding=1)
        smoothed = F.avg_pool2d(F.pad(eroded, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        # Only near the current folds, so that the result stays local (tiles agree).
        near = F.max_pool2d(around.to(factor.dtype), 5, stride=1, padding=2) > 0
        factor = torch.where(near, torch.minimum(factor, smoothed), factor)
    return displacement * factor


@dataclass
class GwisField:
    """The warp of one batch of planes (tensors, pixel units, rows first).

    Attributes
    ----------
    source : Tensor, shape (B, 2, H, W)
        Where each output pixel reads the input: ``u = y + inverse``.
    inverse : Tensor, shape (B, 2, H, W)
        The inverse displacement ``u - y``.
    displacement : Tensor, shape (B, 2, H, W), or None
        The paper's forward displacement ``d(x)`` (pixel ``x`` moves to ``x + d(x)``),
        when asked for.
    coverage : Tensor, shape (B, 1, H, W)
        The fading factor in [0, 1] applied to both.
    edges : EdgePoints
    """

    source: torch.Tensor
    inverse: torch.Tensor
    displacement: torch.Tensor | None
    coverage: torch.Tensor
    edges: EdgePoints


def gwis_field(
    lum: torch.Tensor,
    warp_scale: torch.Tensor | float,
    *,
    gradient_scale: float = 1.0,
    noise_std: torch.Tensor | None = None,
    intensity_range: torch.Tensor | None = None,
    with_forward: bool = False,
) -> GwisField:
    """Compute the GWIS warp of luminance planes.

    Parameters
    ----------
    lum : Tensor, shape (B, 1, H, W)
    warp_scale : float or Tensor broadcastable to (B, 1, H, W)
        Warp scale ``sigma_p`` per pixel (px), read at the edge points.
    gradient_scale, noise_std, intensity_range
        See :func:`detect_edge_points`.
    with_forward : bool
        Also compute the paper's forward displacement (for inspection).

    Returns
    -------
    GwisField
    """
    batch, _, height, width = lum.shape
    scale_map = torch.as_tensor(warp_scale, dtype=lum.dtype, device=lum.device)
    scale_map = scale_map.expand(batch, 1, height, width)
    edges = detect_edge_points(lum, scale_map, gradient_scale=gradient_scale,
                               noise_std=noise_std, intensity_range=intensity_range)
    return field_from_edges(edges, (batch, height, width), with_forward=with_forward)


def field_from_edges(edges: EdgePoints, shape: tuple[int, int, int], *,
                     with_forward: bool = False) -> GwisField:
    """The warp of planes of ``shape`` ``(B, H, W)`` given their edge points (see :func:`gwis_field`)."""
    batch, height, width = shape
    dtype, device = edges.y.dtype, edges.y.device
    logger.debug("GWIS: %d edge points on %s planes", edges.row.numel(), shape)
    totals = _accumulate(edges, shape, with_forward=with_forward)
    weight = totals[:, 0:1]
    has = weight > 0
    safe_w = torch.where(has, weight, torch.ones_like(weight))
    coverage = torch.where(has, totals[:, 3:4].clamp(max=1.0), torch.zeros_like(weight))
    inverse = _unfold(coverage * totals[:, 1:3] / safe_w)
    forward = coverage * totals[:, 4:6] / safe_w if with_forward else None
    rows = torch.arange(height, device=device, dtype=dtype).view(1, 1, -1, 1)
    cols = torch.arange(width, device=device, dtype=dtype).view(1, 1, 1, -1)
    grid = torch.cat((rows.expand(batch, 1, height, width), cols.expand(batch, 1, height, width)), 1)
    return GwisField(source=grid + inverse, inverse=inverse, displacement=forward, coverage=coverage,
                     edges=edges)


def warp_planes(x: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """Resample ``(B, C, H, W)`` planes: output pixel ``y`` reads ``x`` at ``y + inverse[y]``.

    Bilinear, clamped at the frame; pixels with zero displacement are copied
    exactly (no interpolation round-off).
    """
    batch, _, height, width = x.shape
    rows = torch.arange(height, device=x.device, dtype=inverse.dtype).view(1, -1, 1)
    cols = torch.arange(width, device=x.device, dtype=inverse.dtype).view(1, 1, -1)
    grid = torch.stack(
        (2.0 * (cols + inverse[:, 1]) / max(width - 1, 1) - 1.0,
         2.0 * (rows + inverse[:, 0]) / max(height - 1, 1) - 1.0),
        dim=-1,
    )
    sampled = F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border",
                            align_corners=True)
    moved = (inverse != 0).any(dim=1, keepdim=True)
    return torch.where(moved, sampled, x)


def gwis_sharpen(
    x: torch.Tensor,
    warp_scale: torch.Tensor | float,
    *,
    gradient_scale: float = 1.0,
    noise_std: torch.Tensor | None = None,
    intensity_range: torch.Tensor | None = None,
) -> torch.Tensor:
    """GWIS on tensors: warp every channel with the field of the luminance.

    Parameters
    ----------
    x : Tensor, shape (B, C, H, W)
        Planes on any device (the work follows it).
    warp_scale : float or Tensor broadcastable to (B, 1, H, W)
        Warp scale ``sigma_p`` (px), not the blur level (see :func:`warp_scale_for_level`).
    gradient_scale, noise_std, intensity_range
        See :func:`detect_edge_points`.

    Returns
    -------
    Tensor, shape (B, C, H, W), same device and dtype.
    """
    field = gwis_field(luminance(x), warp_scale, gradient_scale=gradient_scale,
                       noise_std=noise_std, intensity_range=intensity_range)
    return warp_planes(x, field.inverse)


# --- numpy facade -------------------------------------------------------------------------


def _check_blur(blur, layout: PlaneLayout):
    """A float level, or a float32 map of shape (H, W) or (N, H, W). Raises ValueError."""
    if isinstance(blur, (bool, np.bool_)):
        raise TypeError("blur must be a number of pixels or an array of blur levels, not a bool.")
    if np.ndim(blur) == 0:
        try:
            level = float(blur)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"blur must be a number of pixels or an array, not {blur!r}.") from exc
        if not math.isfinite(level) or level < 0:
            raise ValueError(f"blur must be a finite blur level >= 0 pixels, got {level}.")
        return level
    levels = as_float_image(blur, name="blur map")
    plane_shape = layout.plane_shape
    full_shape = layout.leading_shape + plane_shape
    if levels.shape == plane_shape:
        levels = levels[None]
    elif levels.shape == full_shape:
        levels = levels.reshape((layout.n_planes,) + plane_shape)
    else:
        allowed = f"{plane_shape}" + (f" or {full_shape}" if layout.leading_shape else "")
        raise ValueError(
            f"The blur map has shape {levels.shape} but the image's planes are {plane_shape} "
            f"(image shape {layout.shape}); give a map of shape {allowed}, or one number."
        )
    if levels.min() < 0:
        raise ValueError(
            f"The blur map has negative levels (min {levels.min():.3g}); blur levels are PSF standard "
            f"deviations in pixels, >= 0. Clip it first (np.clip(blur, 0, None))."
        )
    return levels


def _gwis_plane_steps(message: str, scalar_level: float | None):
    def plane_steps(plane: torch.Tensor, level_map: torch.Tensor | None) -> JobSteps[torch.Tensor]:
        yield JobProgress(0.0, message)
        _, channels, height, width = plane.shape
        if level_map is None:
            level_map = plane.new_full((height, width), float(scalar_level))
        level_map = level_map.to(plane.dtype).view(1, 1, height, width)
        scale_map = warp_scale_for_level(level_map)
        max_scale = float(scale_map.max())
        if max_scale >= MAX_WARP_SCALE:
            logger.warning("blur levels up to %.3g px: warp scales clipped to %g px",
                           float(level_map.max()), MAX_WARP_SCALE)
        if max_scale < MIN_WARP_SCALE:
            return plane.clone()
        lum = luminance(plane)
        noise = estimate_noise_std(lum)
        flat = lum.flatten(1)
        value_range = flat.max(dim=1).values - flat.min(dim=1).values
        grad_scale = gradient_scale_for_level(float(level_map.median()))
        halo = window_radius(max_scale) + int(math.ceil(3 * grad_scale)) + 3 * UNFOLD_STEPS + 5

        def tile_fn(tile: torch.Tensor) -> torch.Tensor:
            return gwis_sharpen(tile[:, :channels], tile[:, channels:], gradient_scale=grad_scale,
                                noise_std=noise, intensity_range=value_range)

        stacked = torch.cat((plane, scale_map), dim=1)
        return (yield from iter_tiled(tile_fn, stacked, tile_size=TILE_SIZE, halo=halo,
                                      blend=min(16, halo)))

    return plane_steps


def iter_sharpen_gwis(image, blur, *, channel_axis: int | None = None, device=None) -> JobSteps[np.ndarray]:
    """Generator twin of :func:`sharpen_gwis` (yields progress per plane and tile)."""
    pixels = as_float_image(image)
    layout = PlaneLayout.of(pixels.shape, channel_axis)
    levels = _check_blur(blur, layout)
    target = select_device(device)
    scalar = isinstance(levels, float)
    if (levels == 0) if scalar else not levels.any():
        return pixels.copy()
    steps = _gwis_plane_steps("GWIS sharpening", levels if scalar else None)
    # iter_planewise hands each plane its own 2D array from a per-plane stack (its PSF
    # mechanism); here that array is the plane's blur map.
    return (yield from iter_planewise(pixels, layout, steps, device=target,
                                      psf=None if scalar else levels, message="GWIS sharpening"))


def sharpen_gwis(
    image,
    blur,
    *,
    channel_axis: int | None = None,
    device=None,
    progress=None,
    cancel=None,
) -> np.ndarray:
    """Sharpen an image by grid warping (GWIS), given its blur level(s).

    Pixels near each edge are moved toward the edge's centre line, which
    thins blurred edges without ringing, without overshoot and without
    amplifying noise. Needs no kernel, only the blur level.

    Parameters
    ----------
    image : array_like, shape (..., H, W) or with a channel axis
        Any real dtype; leading axes (z, t) are processed plane by plane.
    blur : float or array_like
        Blur level in pixels (PSF standard deviation, as :func:`psf_blur_level`;
        >= 0): one number, a map of shape ``(H, W)`` for every plane, or a map
        of the image's full non-channel shape (leading axes + ``(H, W)``).
        Level 0 leaves pixels as they are.
    channel_axis : int, optional
        Axis of colour channels; the warp is computed on the luminance and
        applied to every channel alike (no colour fringes).
    device : str or torch.device, optional
        ``None``/"auto" (CUDA, then MPS, then CPU), "cpu", "cuda" or "mps".
    progress : callable, optional
        Called with :class:`~napari_deblur.engine.jobs.JobProgress`.
    cancel : callable or threading.Event, optional
        Checked between planes and tiles; raises ``JobCancelled`` when set.

    Returns
    -------
    numpy.ndarray, float32, same shape as ``image``, in the input's intensity
    scale. Every value lies between the minimum and maximum of the input
    within ``1.5 * sigma_p + 1`` pixels (it is a bilinear resampling).

    Raises
    ------
    ValueError
        For empty, complex or non-finite images; a blur map with NaN or
        infinite values, negative levels, or a shape that is neither the
        plane's nor the image's non-channel shape; a negative or non-finite
        level; an unavailable device.
    TypeError
        For a non-numeric image or blur.

    Notes
    -----
    The warp scale is ``sigma_p = WARP_SCALE_SLOPE * level + WARP_SCALE_OFFSET``
    (clipped to ``MAX_WARP_SCALE`` px), found by an oracle study on the
    training images; see the module docstring for the algorithm.

    References
    ----------
    Nasonov, Krylov & Lyukov (2019), sections 2.1-2.2; Nasonova & Krylov (2015).
    """
    return run_job(
        iter_sharpen_gwis(image, blur, channel_axis=channel_axis, device=device), progress, cancel
    )


def gwis_field_of(image, blur, *, channel_axis: int | None = None, device=None) -> GwisField:
    """The GWIS warp of one plane (for inspection and tests).

    Parameters
    ----------
    image : array_like, shape (H, W) or (H, W, C) with ``channel_axis``
        One plane (no leading axes).
    blur : float or array_like of shape (H, W)
        Blur level(s) in pixels, as in :func:`sharpen_gwis`.

    Returns
    -------
    GwisField
        Tensors of batch 1 on the chosen device; ``source[0]`` is the
        ``(2, H, W)`` sampling map (rows, columns) the warp reads from.
    """
    pixels = as_float_image(image)
    layout = PlaneLayout.of(pixels.shape, channel_axis)
    if layout.n_planes != 1:
        raise ValueError(f"gwis_field_of takes one plane, got leading axes {layout.leading_shape}.")
    levels = _check_blur(blur, layout)
    target = select_device(device)
    plane = torch.from_numpy(np.ascontiguousarray(layout.to_planes(pixels))).to(target)
    height, width = layout.plane_shape
    level_map = (plane.new_full((1, 1, height, width), levels) if isinstance(levels, float)
                 else torch.from_numpy(levels).to(target).view(1, 1, height, width))
    lum = luminance(plane)
    return gwis_field(lum, warp_scale_for_level(level_map),
                      gradient_scale=gradient_scale_for_level(float(level_map.median())),
                      with_forward=True)
