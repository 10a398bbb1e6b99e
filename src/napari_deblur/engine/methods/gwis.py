"""GWIS: grid-warping image sharpening driven by a blur level (constant or per pixel).

Blurred edges are thinned by moving the pixels of each edge's neighbourhood
toward the edge's centre line; the output is a bilinear resampling of the
input, so it cannot ring or overshoot. Needs a blur level in pixels, not a
kernel. Large planes run in tiles, stacks plane by plane, colour images
with one warp from the luminance. See docs/methods/gwis.md for the method.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..core.devices import select_device
from ..core.image_stats import estimate_noise_std, luminance
from ..core.jobs import JobProgress, JobSteps, job_facade
from ..core.lazy import is_dask_array, lazy_layout, lazy_planewise
from ..core.planes import PlaneLayout, iter_planewise
from ..core.tiling import TileWindow, device_tile_size, iter_tiled
from ..core.validation import as_float_image
from ..physics.gaussian import gaussian_kernel_1d
from .blur_map import check_blur_levels, is_auto_blur, iter_estimate_blur_map

logger = logging.getLogger(__name__)

#: Warp scale sigma_p (px) from a blur level (px): ``sigma_p = WARP_SCALE_SLOPE * level +
#: WARP_SCALE_OFFSET`` (a line fitted on training images; docs/methods/gwis.md).
WARP_SCALE_SLOPE = 2.72
WARP_SCALE_OFFSET = -0.64
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
#: Above this warp scale (px) the field is computed on a grid of spacing sigma_p / COARSE_WARP_SCALE
#: px, on which the warp scale spans COARSE_WARP_SCALE grid steps (docs/methods/gwis.md).
COARSE_WARP_SCALE = 4.0
#: Smallest spacing (px) of a coarse grid: a finer grid has nearly as many nodes as the plane
#: has pixels and costs more than the pixel grid. Warp scales of 4-6 px then span 2.7-4 steps.
MIN_COARSE_SPACING = 1.5
#: On the coarse grid one edge point per THIN_SPACING x THIN_SPACING nodes is kept (standing
#: for THIN_SPACING points along its edge): the perpendicular Gaussian of a band spans
#: COARSE_WARP_SCALE nodes, so its sum over points this far apart hardly changes.
THIN_SPACING = 2
#: Rounds of falling back to plain interpolation in coarse cells where the jump would fold.
MAX_JUMP_ROUNDS = 8
#: Edge points are grouped by normal direction (modulo 180 degrees) into this many sectors,
#: each visiting only the window offsets its bands can reach (fewer than a disk's).
ANGLE_SECTORS = 8
#: Side of a tile's core for large planes (pixels).
TILE_SIZE = 1024


def warp_scale_for_level(level):
    """Warp scale ``sigma_p`` (px) for blur levels (px): ``WARP_SCALE_SLOPE * level + WARP_SCALE_OFFSET``.

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


def _gaussian_kernels(scale: float, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    smooth = gaussian_kernel_1d(scale, torch.float64)
    radius = smooth.numel() // 2
    k = torch.arange(-radius, radius + 1, dtype=torch.float64)
    derivative = k * smooth
    derivative = derivative / (k * derivative).sum()  # gives 1 on a unit ramp
    return smooth.to(device=device, dtype=dtype), derivative.to(device=device, dtype=dtype)


def _separable(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Correlate ``(B, 1, H, W)`` with ``rows[:, None] * cols[None, :]`` (replicated border)."""
    ry, rx = rows.numel() // 2, cols.numel() // 2
    padded = F.pad(x, (rx, rx, ry, ry), mode="replicate")
    out = F.conv2d(padded, rows.view(1, 1, -1, 1))
    return F.conv2d(out, cols.view(1, 1, 1, -1))


def _gaussian_gradient(x: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian-derivative gradient ``(d/drow, d/dcol)`` of ``(B, 1, H, W)``, each ``(B, H, W)``.

    The same as :func:`_separable` with (derivative, smooth) and (smooth, derivative), in
    two convolutions instead of four (both column passes share one, then one grouped pass).
    """
    smooth, derivative = _gaussian_kernels(scale, x.dtype, x.device)
    radius = smooth.numel() // 2
    padded = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    down = F.conv2d(padded, torch.stack((derivative, smooth)).view(2, 1, -1, 1))
    both = F.conv2d(down, torch.stack((smooth, derivative)).view(2, 1, 1, -1), groups=2)
    return both[:, 0], both[:, 1]


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
    multiplicity: float = 1.0  # how many edge points along the edge each one stands for


def _sample(values: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``(B, 1, H, W)`` at pixel coordinates ``(B, H, W)`` (clamped)."""
    height, width = values.shape[-2:]
    grid = torch.stack((2.0 * cols / max(width - 1, 1) - 1.0, 2.0 * rows / max(height - 1, 1) - 1.0), dim=-1)
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
    gy, gx = _gaussian_gradient(lum, gradient_scale)
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
    offset = torch.where(
        curvature < 0, 0.5 * (mm - mp) / curvature.clamp_max(-1e-12), torch.zeros_like(m0)
    ).clamp(-0.5, 0.5)
    pny, pnx = ny[b, r, c], nx[b, r, c]
    return EdgePoints(
        batch=b,
        row=r,
        col=c,
        y=r.to(lum.dtype) + offset * pny,
        x=c.to(lum.dtype) + offset * pnx,
        ny=pny,
        nx=pnx,
        strength=m0,
        scale=warp_scale[b, 0, r, c],
    )


def window_radius(max_warp_scale: float) -> int:
    """Reach (px) of an edge point with warp scale ``max_warp_scale``, sub-pixel offset included."""
    if max_warp_scale <= 0:
        return 0
    return int(math.ceil(math.hypot(1.5 * max_warp_scale, PERP_CUTOFF * max_warp_scale) + 1.0))


def _band_offsets(
    max_warp_scale: float, angle_low: float, angle_high: float, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Window offsets (rows, columns) that can lie in the band of an edge point.

    The band of a point with warp scale up to ``max_warp_scale`` and normal angle in
    ``[angle_low, angle_high]`` (radians, ``atan2(ny, nx)``) is ``|<n, o>| < 1.5 sigma`` and
    ``|Pr_perp(o)| < PERP_CUTOFF sigma``, widened by the point's sub-pixel offset (up to
    ``sqrt(1/2)`` px) and by the angle sampling.
    """
    oy, ox = _band_offsets_cpu(float(max_warp_scale), float(angle_low), float(angle_high))
    return oy.to(device), ox.to(device)


@functools.lru_cache(maxsize=64)
def _band_offsets_cpu(
    max_warp_scale: float, angle_low: float, angle_high: float
) -> tuple[torch.Tensor, torch.Tensor]:
    radius = window_radius(max_warp_scale)
    k = torch.arange(-radius, radius + 1, dtype=torch.float64)
    oy, ox = torch.meshgrid(k, k, indexing="ij")
    steps = max(2, math.ceil((angle_high - angle_low) / math.radians(1.0)) + 1)
    angles = torch.linspace(angle_low, angle_high, steps, dtype=torch.float64).view(-1, 1, 1)
    margin = math.sqrt(0.5) + radius * (angle_high - angle_low) / (2 * (steps - 1)) + 1e-6
    ny, nx = torch.sin(angles), torch.cos(angles)
    across = (oy * ny + ox * nx).abs() < 1.5 * max_warp_scale + margin
    along = (ox * ny - oy * nx).abs() < PERP_CUTOFF * max_warp_scale + margin
    inside = (across & along).any(dim=0)
    return oy[inside].long(), ox[inside].long()


def _accumulate(
    edges: EdgePoints,
    shape: tuple[int, int, int],
    *,
    with_forward: bool = False,
    with_parts: bool = False,
    max_pairs: int = 1 << 22,
) -> torch.Tensor:
    """Scatter every edge point's contributions to the pixels of its band.

    All quantities are computed in units of the edge point's warp scale:
    ``a = <n, x - p> / sigma_p`` (across the edge) and ``b = Pr_perp(x - p) / sigma_p``
    (along it), each by one small matrix product over (edge points, window offsets). The
    points are grouped by normal direction (``ANGLE_SECTORS``); each group visits only the
    offsets its bands can reach (:func:`_band_offsets`).

    Returns ``(B, K, H, W)`` sums: weight, inverse-displacement numerator (rows, columns),
    coverage, and with ``with_forward`` the forward-displacement numerator (rows, columns).
    With ``with_parts`` the inverse numerator is replaced by that of the sign part
    ``n sigma sign(a)`` (rows, columns), and the numerators of the linear part
    ``n sigma a`` (rows, columns) and of the signed distance ``sigma a`` follow (see
    :func:`_upsample_inverse`); the inverse is the sign part minus 2/3 of the linear part.
    """
    batch, height, width = shape
    dtype, device = edges.y.dtype, edges.y.device
    n_forward = 6 if with_forward else 4
    n_sums = n_forward + (3 if with_parts else 0)
    count = edges.row.numel()
    if count == 0:
        return torch.zeros(batch, n_sums, height, width, dtype=dtype, device=device)
    radius = window_radius(float(edges.scale.max()))
    # A canvas padded by the reach: every target index is valid, no bounds checks per pair.
    ph, pw = height + 2 * radius, width + 2 * radius
    sums = torch.zeros(n_sums, batch * ph * pw, dtype=dtype, device=device)
    inv_sigma = 1.0 / edges.scale
    sub_y, sub_x = edges.y - edges.row.to(dtype), edges.x - edges.col.to(dtype)
    ny, nx = edges.ny, edges.nx
    to_across = torch.stack((ny, nx, -(sub_y * ny + sub_x * nx)), 1) * inv_sigma[:, None]
    to_along = torch.stack((-nx, ny, -(sub_x * ny - sub_y * nx)), 1) * inv_sigma[:, None]
    # A thinned point stands for `multiplicity` points along its edge (weight and coverage).
    per_point = torch.stack(
        (
            edges.strength * edges.multiplicity,
            inv_sigma * (edges.multiplicity / COVERAGE_FULL),
            edges.scale * ny,
            edges.scale * nx,
            edges.scale,
        ),
        1,
    )
    centre = (edges.batch * ph + edges.row + radius) * pw + edges.col + radius
    floor = math.exp(-0.5 * PERP_CUTOFF**2)
    # Normal direction modulo pi, in [0, pi): a band is symmetric under n -> -n.
    sector_width = math.pi / ANGLE_SECTORS
    angle = torch.remainder(torch.atan2(ny, nx), math.pi)
    sector = (angle / sector_width).long().clamp_(0, ANGLE_SECTORS - 1)
    for k in range(ANGLE_SECTORS):
        members = torch.nonzero(sector == k).flatten()
        if members.numel() == 0:
            continue
        oy, ox = _band_offsets(
            float(edges.scale[members].max()), k * sector_width, (k + 1) * sector_width, device
        )
        offsets = torch.stack((oy.to(dtype), ox.to(dtype), torch.ones_like(oy, dtype=dtype)))
        flat_offsets = oy * pw + ox
        across_k, along_k = to_across[members], to_along[members]
        centre_k = centre[members][:, None]
        strength, coverage_gain, scaled_ny, scaled_nx, scale = per_point[members].T[:, :, None]
        chunk = max(1, max_pairs // members.numel())
        for start in range(0, flat_offsets.numel(), chunk):
            stop = start + chunk
            a = across_k @ offsets[:, start:stop]  # (N, k)
            b = along_k @ offsets[:, start:stop]
            # Perpendicular Gaussian, shifted to reach 0 at the cutoff (continuous field).
            geometric = b.mul_(b).mul_(-0.5).exp_().sub_(floor).clamp_(min=0.0)
            dist = a.abs()
            # Fade to 0 over the outer third of the band: overlapping bands blend continuously.
            weight = (3.0 - 2.0 * dist).clamp_(0.0, 1.0).mul_(geometric).mul_(strength)
            sign = torch.sign(a)
            index = (centre_k + flat_offsets[start:stop][None]).reshape(-1)
            sums[0].scatter_add_(0, index, weight.reshape(-1))
            if with_parts:
                signed = weight * sign
            else:
                signed = weight * sign * (1.0 - dist * (2.0 / 3.0))  # e / sigma, weighted
            sums[1].scatter_add_(0, index, (signed * scaled_ny).reshape(-1))
            sums[2].scatter_add_(0, index, (signed * scaled_nx).reshape(-1))
            covered = geometric.mul_(dist <= 1.5).mul_(coverage_gain)
            sums[3].scatter_add_(0, index, covered.reshape(-1))
            if with_forward:
                forward = weight * torch.where(dist <= 1.0, -a, -sign * (3.0 - 2.0 * dist))
                sums[4].scatter_add_(0, index, (forward * scaled_ny).reshape(-1))
                sums[5].scatter_add_(0, index, (forward * scaled_nx).reshape(-1))
            if with_parts:
                linear = weight.mul_(a)
                sums[n_forward].scatter_add_(0, index, (linear * scaled_ny).reshape(-1))
                sums[n_forward + 1].scatter_add_(0, index, (linear * scaled_nx).reshape(-1))
                sums[n_forward + 2].scatter_add_(0, index, (linear * scale).reshape(-1))
    stacked = sums.view(n_sums, batch, ph, pw).transpose(0, 1)
    return stacked[..., radius : radius + height, radius : radius + width]


def _jacobian(displacement: torch.Tensor) -> torch.Tensor:
    """Jacobian determinant of ``y -> y + displacement`` on each pixel cell, ``(B, 1, H-1, W-1)``."""
    v_y, v_x = displacement[:, 0], displacement[:, 1]
    dyy = 1.0 + v_y[:, 1:, :-1] - v_y[:, :-1, :-1]
    dyx = v_y[:, :-1, 1:] - v_y[:, :-1, :-1]
    dxy = v_x[:, 1:, :-1] - v_x[:, :-1, :-1]
    dxx = 1.0 + v_x[:, :-1, 1:] - v_x[:, :-1, :-1]
    return (dyy * dxx - dyx * dxy)[:, None]


def _cell_jacobian_min(displacement: torch.Tensor) -> torch.Tensor:
    """Smallest Jacobian of the bilinear map ``y -> y + displacement`` on each cell, ``(B, 1, H-1, W-1)``.

    Inside a cell the bilinear map's Jacobian is affine in the cell coordinates, so its
    minimum is at one of the 4 corners; when it is positive, the bilinear interpolation
    of the map onto any finer grid keeps its order too.
    """
    v = displacement
    v00, v01 = v[..., :-1, :-1], v[..., :-1, 1:]
    v10, v11 = v[..., 1:, :-1], v[..., 1:, 1:]
    down_left, down_right = v10 - v00, v11 - v01  # derivative along rows, at columns 0 / 1
    right_top, right_bottom = v01 - v00, v11 - v10  # derivative along columns, at rows 0 / 1
    result = None
    for down, right in (
        (down_left, right_top),
        (down_left, right_bottom),
        (down_right, right_top),
        (down_right, right_bottom),
    ):
        det = (1.0 + down[:, 0]) * (1.0 + right[:, 1]) - right[:, 0] * down[:, 1]
        result = det if result is None else torch.minimum(result, det)
    return result[:, None]


def _window_max(x: torch.Tensor, before: int, after: int, out_size: tuple[int, int]) -> torch.Tensor:
    """``out[i, j] = max x[i - before : i + after + 1, j - before : j + after + 1]`` (zero outside).

    ``x`` is ``(B, 1, h, w)`` with values >= 0; the output is ``(B, 1) + out_size``. Slices and
    ``torch.maximum`` instead of ``max_pool2d`` (several times faster on the CPU).
    """
    height, width = out_size
    span = before + after + 1
    rows = F.pad(x, (0, 0, before, height + after - x.shape[-2]))
    out = rows[..., 0:height, :]
    for k in range(1, span):
        out = torch.maximum(out, rows[..., k : k + height, :])
    cols = F.pad(out, (before, width + after - x.shape[-1], 0, 0))
    result = cols[..., 0:width]
    for k in range(1, span):
        result = torch.maximum(result, cols[..., k : k + width])
    return result


def _replicate_3x3(x: torch.Tensor, reduce) -> torch.Tensor:
    """3x3 ``reduce`` (min, or sum) of ``(B, 1, h, w)`` with replicated borders, separable."""
    height, width = x.shape[-2:]
    rows = F.pad(x, (0, 0, 1, 1), mode="replicate") if height > 1 else x.expand(-1, -1, 3, -1)
    out = reduce(reduce(rows[..., 0:height, :], rows[..., 1 : height + 1, :]), rows[..., 2 : height + 2, :])
    cols = F.pad(out, (1, 1, 0, 0), mode="replicate") if width > 1 else out.expand(-1, -1, -1, 3)
    return reduce(reduce(cols[..., 0:width], cols[..., 1 : width + 1]), cols[..., 2 : width + 2])


def _unfold_round(
    displacement: torch.Tensor, factor: torch.Tensor, folded: torch.Tensor, last: bool
) -> torch.Tensor:
    """One round of the fold guard on a plane or crop: the new factor (see :func:`_unfold_factor`)."""
    size = tuple(factor.shape[-2:])
    # Pixel i is a corner of cells i-1 and i; widened by one more pixel: cells i-2 .. i+1.
    around = _window_max(folded.to(factor.dtype), 2, 1, size) > 0
    if last:
        return torch.where(around, torch.zeros_like(factor), factor)
    factor = torch.where(around, factor * UNFOLD_SHRINK, factor)
    eroded = _replicate_3x3(factor, torch.minimum)
    smoothed = _replicate_3x3(eroded, torch.add) / 9.0
    # Only near the current folds, so that the result stays local (tiles agree).
    near = _window_max(around.to(factor.dtype), 2, 2, size) > 0
    return torch.where(near, torch.minimum(factor, smoothed), factor)


#: After the first round of the fold guard, the few folds left are handled in crops of
#: blocks of this many pixels (plus context) when there are at most UNFOLD_MAX_CROPS of them.
UNFOLD_BLOCK = 64
UNFOLD_MAX_CROPS = 32
#: A round changes the factor up to 5 px from a folded cell and reads 6 px further.
_UNFOLD_REACH = 6
_UNFOLD_CONTEXT = 2 * _UNFOLD_REACH + 2


def _unfold_factor(displacement: torch.Tensor, *, whole_cells: bool = False) -> torch.Tensor:
    """Factor in [0, 1], shape ``(B, 1, H, W)``, that keeps ``displacement`` from folding the grid.

    Where edges of different directions overlap (texture, corners), the blend
    of their 1D warps can fold the grid. Around each folded cell (the cell's 4
    corner pixels and one more pixel around them) the displacement factor is
    multiplied by ``UNFOLD_SHRINK``, then, near the folds (2 more pixels),
    eroded and smoothed (3x3 min, then 3x3 mean) so that it changes
    gradually; this repeats until no cell folds (at most ``UNFOLD_STEPS``
    times, after which the displacement is removed around the remaining
    folds). Elsewhere the factor is 1: the guard is local, so tiles agree.

    A cell folds where the Jacobian of the sampling map at its first corner (forward
    differences) is at most ``MIN_JACOBIAN``; with ``whole_cells`` at any of its 4 corners
    (:func:`_cell_jacobian_min`), which keeps the bilinear interpolation of the map unfolded.

    The first round runs on the whole plane; as every step is local, later rounds only
    look at crops around the blocks (``UNFOLD_BLOCK``) that hold a fold, when they are few:
    the same result, without passes over the whole plane for a handful of folds.
    """
    jacobian = _cell_jacobian_min if whole_cells else _jacobian
    factor = torch.ones_like(displacement[:, :1])
    height, width = displacement.shape[-2:]
    if height < 2 or width < 2:
        return factor
    folded = jacobian(displacement) <= MIN_JACOBIAN
    for step in range(UNFOLD_STEPS + 1):
        if not bool(folded.any()):
            break
        last = step == UNFOLD_STEPS
        b, _, y, x = torch.nonzero(folded, as_tuple=True)
        blocks_h, blocks_w = -(-height // UNFOLD_BLOCK), -(-width // UNFOLD_BLOCK)
        keys = torch.unique((b * blocks_h + y // UNFOLD_BLOCK) * blocks_w + x // UNFOLD_BLOCK)
        if keys.numel() > UNFOLD_MAX_CROPS:
            factor = _unfold_round(displacement, factor, folded, last)
            folded = jacobian(displacement * factor) <= MIN_JACOBIAN
            continue
        # Crops: a block with context on every side, clipped to the plane. Each crop reads the
        # factor before this round; only its part at least _UNFOLD_REACH + 1 px inside the
        # context is written (computed there exactly as on the whole plane).
        crops = []
        for key in keys.tolist():
            plane, rest = divmod(key, blocks_h * blocks_w)
            block_row, block_col = divmod(rest, blocks_w)
            top, left = block_row * UNFOLD_BLOCK, block_col * UNFOLD_BLOCK
            y0, x0 = max(top - _UNFOLD_CONTEXT, 0), max(left - _UNFOLD_CONTEXT, 0)
            y1 = min(top + UNFOLD_BLOCK + _UNFOLD_CONTEXT, height)
            x1 = min(left + UNFOLD_BLOCK + _UNFOLD_CONTEXT, width)
            crops.append((plane, y0, y1, x0, x1))
        before = factor
        factor = factor.clone()
        keep = _UNFOLD_REACH + 1
        for plane, y0, y1, x0, x1 in crops:
            region = (slice(plane, plane + 1), slice(None), slice(y0, y1), slice(x0, x1))
            crop_folded = folded[plane : plane + 1, :, y0 : y1 - 1, x0 : x1 - 1]
            new = _unfold_round(displacement[region], before[region], crop_folded, last)
            iy0 = 0 if y0 == 0 else keep
            ix0 = 0 if x0 == 0 else keep
            iy1 = (y1 - y0) if y1 == height else (y1 - y0) - keep
            ix1 = (x1 - x0) if x1 == width else (x1 - x0) - keep
            factor[plane, :, y0 + iy0 : y0 + iy1, x0 + ix0 : x0 + ix1] = new[0, :, iy0:iy1, ix0:ix1]
        # Folds can only be in cells that touch a changed pixel, all inside the crops.
        folded = torch.zeros_like(folded)
        for plane, y0, y1, x0, x1 in crops:
            region = (slice(plane, plane + 1), slice(None), slice(y0, y1), slice(x0, x1))
            crop_folded = jacobian(displacement[region] * factor[region]) <= MIN_JACOBIAN
            folded[plane : plane + 1, :, y0 : y1 - 1, x0 : x1 - 1] |= crop_folded
    return factor


def _unfold(displacement: torch.Tensor) -> torch.Tensor:
    """``displacement`` times :func:`_unfold_factor` (no folded cell left)."""
    return displacement * _unfold_factor(displacement)


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
    grid_origin: tuple[float, float] = (0.0, 0.0),
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
    grid_origin : (float, float)
        Global pixel position (rows, columns) of ``lum``'s pixel ``(0, 0)`` when ``lum`` is
        a tile: the coarse grid's nodes sit at global multiples of the grid step.

    Returns
    -------
    GwisField
    """
    batch, _, height, width = lum.shape
    scale_map = torch.as_tensor(warp_scale, dtype=lum.dtype, device=lum.device)
    scale_map = scale_map.expand(batch, 1, height, width)
    edges = detect_edge_points(
        lum, scale_map, gradient_scale=gradient_scale, noise_std=noise_std, intensity_range=intensity_range
    )
    return field_from_edges(edges, (batch, height, width), with_forward=with_forward, grid_origin=grid_origin)


def coarse_factor(warp_scale: float) -> float:
    """Grid spacing (px) of the field for edge points of warp scale ``warp_scale`` (px).

    1 (the pixel grid) up to a warp scale of ``COARSE_WARP_SCALE`` px, above it
    ``max(warp_scale / COARSE_WARP_SCALE, MIN_COARSE_SPACING)``: the warp scale spans
    ``COARSE_WARP_SCALE`` grid steps, or fewer just above the switch, where a grid barely
    coarser than the pixels would cost more than it saves.
    """
    if not math.isfinite(warp_scale) or warp_scale <= COARSE_WARP_SCALE:
        return 1.0
    return max(warp_scale / COARSE_WARP_SCALE, MIN_COARSE_SPACING)


def thin_to_grid(edges: EdgePoints, grid: CoarseGrid, batch: int, spacing: int = 1) -> EdgePoints:
    """The strongest edge point per ``spacing x spacing`` nodes of ``grid``, in grid units.

    Every edge point belongs to the node (of the grid of spacing ``spacing`` grid steps)
    nearest to it; of each node's points the strongest is kept (ties: the first), so that
    the kept points are about ``spacing`` grid steps apart along an edge, as the pixel-grid
    points are one pixel apart; each stands for ``spacing`` points (``multiplicity``).
    Positions and warp scales are converted to grid units; normals and strengths are kept.
    """
    grid_h, grid_w = grid.shape
    y, x = grid.to_grid(edges.y, 0), grid.to_grid(edges.x, 1)
    row = torch.round(y).long().clamp_(0, grid_h - 1)
    col = torch.round(x).long().clamp_(0, grid_w - 1)
    # Blocks of nodes aligned to global node indices (tiles agree).
    first_row, first_col = grid.first_node(0), grid.first_node(1)
    block_row = torch.div(row + first_row, spacing, rounding_mode="floor") - first_row // spacing
    block_col = torch.div(col + first_col, spacing, rounding_mode="floor") - first_col // spacing
    cells_h, cells_w = grid_h // spacing + 2, grid_w // spacing + 2
    node = (edges.batch * cells_h + block_row) * cells_w + block_col
    size = batch * cells_h * cells_w
    best = edges.strength.new_full((size,), -math.inf).scatter_reduce_(0, node, edges.strength, "amax")
    candidate = edges.strength >= best[node]
    index = torch.arange(node.numel(), device=node.device)
    first = torch.full((size,), node.numel(), device=node.device, dtype=index.dtype).scatter_reduce_(
        0, node[candidate], index[candidate], "amin"
    )
    keep = candidate & (first[node] == index)
    return EdgePoints(
        batch=edges.batch[keep],
        row=row[keep],
        col=col[keep],
        y=y[keep],
        x=x[keep],
        ny=edges.ny[keep],
        nx=edges.nx[keep],
        strength=edges.strength[keep],
        scale=edges.scale[keep] / grid.factor,
        multiplicity=float(spacing) * edges.multiplicity,
    )


@dataclass(frozen=True)
class CoarseGrid:
    """Nodes at global pixel ``(i * factor, j * factor)`` covering a plane or tile.

    ``origin`` is the global pixel position of the plane's (tile's) pixel ``(0, 0)``, so that
    tiles share their nodes. Node ``(0, 0)`` of this grid lies at local pixel ``phase``
    (``-factor < phase <= 0``).
    """

    factor: float
    height: int
    width: int
    origin: tuple[float, float] = (0.0, 0.0)

    def first_node(self, axis: int) -> int:
        """Global index of this grid's node 0 along ``axis``."""
        return math.floor(self.origin[axis] / self.factor + 1e-6)

    def phase(self, axis: int) -> float:
        return self.first_node(axis) * self.factor - self.origin[axis]

    @property
    def shape(self) -> tuple[int, int]:
        """Nodes along rows and columns."""
        return tuple(
            math.ceil((max(length, 1) - 1 - self.phase(axis)) / self.factor - 1e-6) + 1
            for axis, length in ((0, self.height), (1, self.width))
        )

    def to_grid(self, position: torch.Tensor, axis: int) -> torch.Tensor:
        """Grid coordinates of local pixel positions along ``axis`` (0: rows, 1: columns)."""
        return (position - self.phase(axis)) / self.factor

    def pixel_coordinates(self, axis: int, device, dtype) -> torch.Tensor:
        length = self.height if axis == 0 else self.width
        return self.to_grid(torch.arange(length, device=device, dtype=dtype), axis)


def _upsample(x: torch.Tensor, grid: CoarseGrid) -> torch.Tensor:
    """Bilinear interpolation of node values ``(B, K, h, w)`` at the plane's pixels."""
    if grid.factor == 1 and grid.phase(0) == 0 and grid.phase(1) == 0:
        return x[..., : grid.height, : grid.width]
    grid_h, grid_w = x.shape[-2:]
    rows = grid.pixel_coordinates(0, x.device, x.dtype) * (2.0 / max(grid_h - 1, 1)) - 1.0
    cols = grid.pixel_coordinates(1, x.device, x.dtype) * (2.0 / max(grid_w - 1, 1)) - 1.0
    where = torch.stack(torch.broadcast_tensors(cols[None, :], rows[:, None]), dim=-1)
    where = where[None].expand(x.shape[0], -1, -1, -1)
    return F.grid_sample(x, where, mode="bilinear", padding_mode="border", align_corners=True)


def _clean_crossings(unsigned: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """Coarse cells ``(B, 1, h-1, w-1)`` that one edge crosses cleanly.

    The signed distance changes sign between the cell's corners, the unsigned sign part
    ``T = S sign(distance)`` points the same way at all four corners (``n sigma`` of one
    edge), and along it the distance grows (the inverse jumps forward: no fold).
    """
    corners_d = (
        distance[..., :-1, :-1],
        distance[..., :-1, 1:],
        distance[..., 1:, :-1],
        distance[..., 1:, 1:],
    )
    corners_t = (
        unsigned[..., :-1, :-1],
        unsigned[..., :-1, 1:],
        unsigned[..., 1:, :-1],
        unsigned[..., 1:, 1:],
    )
    low = torch.minimum(torch.minimum(corners_d[0], corners_d[1]), torch.minimum(corners_d[2], corners_d[3]))
    high = torch.maximum(torch.maximum(corners_d[0], corners_d[1]), torch.maximum(corners_d[2], corners_d[3]))
    clean = (low < 0) & (high > 0)
    for k in range(4):
        for m in range(k + 1, 4):
            clean &= (corners_t[k] * corners_t[m]).sum(1, keepdim=True) > 0
    # Gradient of the distance over the cell (rows, columns) against the mean direction of T.
    grad_y = corners_d[2] + corners_d[3] - corners_d[0] - corners_d[1]
    grad_x = corners_d[1] + corners_d[3] - corners_d[0] - corners_d[2]
    mean_t = corners_t[0] + corners_t[1] + corners_t[2] + corners_t[3]
    clean &= (mean_t[:, 0:1] * grad_y + mean_t[:, 1:2] * grad_x) > 0
    return clean


def _upsample_inverse(
    sign_part: torch.Tensor,
    linear: torch.Tensor,
    distance: torch.Tensor,
    grid: CoarseGrid,
    extra: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fine inverse displacement (px) from the coarse parts; keeps the jump at the edge line.

    On the coarse grid (grid units) the inverse is ``sign_part - 2/3 linear`` with
    ``sign_part`` the weighted mean of ``n sigma sign(a)``, ``linear`` that of ``n sigma a``
    and ``distance`` that of ``sigma a`` (all faded). Bilinear interpolation of the inverse
    would smear its jump at an edge line over a grid step. In coarse cells that one edge
    crosses cleanly (:func:`_clean_crossings`), ``linear``, ``distance`` and ``T = sign_part *
    sign(distance)`` are smooth (linear across a straight edge; ``T`` is ``n sigma`` on both
    sides), so they are interpolated instead and the sign is put back at each pixel's own
    ``sign(distance)``: the jump stays at the edge line, to the pixel. Elsewhere, and in
    crossing cells where that would fold the pixel grid, the inverse is interpolated
    bilinearly, which cannot fold when the coarse map does not (:func:`_cell_jacobian_min`).
    At the grid nodes both equal the coarse inverse (times ``factor``).

    Returns the fine inverse ``(B, 2, H, W)`` (px), ``extra`` (coarse, ``(B, 1, h, w)``)
    interpolated bilinearly in the same pass, and whether the fine inverse was checked to
    keep the pixel grid's order.
    """
    factor = grid.factor
    unsigned = sign_part * torch.sign(distance)
    clean = _clean_crossings(unsigned, distance)
    parts = _upsample(torch.cat((unsigned, linear, distance, sign_part, extra), 1), grid)
    extra = parts[:, 7:8]
    # In pixels from here on.
    linear_part = (2.0 * factor / 3.0) * parts[:, 2:4]
    jump = factor * parts[:, 0:2] * torch.sign(parts[:, 4:5]) - linear_part
    plain = factor * parts[:, 5:7] - linear_part
    cells_h, cells_w = clean.shape[-2:]

    def cell_of(axis: int, cells: int) -> torch.Tensor:
        # The cell of a pixel: floor of its grid coordinate (the last nodes: the cell before).
        coords = grid.pixel_coordinates(axis, clean.device, sign_part.dtype)
        return coords.floor().long().clamp_(0, cells - 1)

    for _ in range(MAX_JUMP_ROUNDS):
        if not bool(clean.any()):
            return plain, extra, False
        cell_rows = cell_of(0, cells_h)
        cell_cols = cell_of(1, cells_w)
        in_clean = clean[:, :, cell_rows][..., cell_cols]
        fine = torch.where(in_clean, jump, plain)
        folded = _jacobian(fine) <= MIN_JACOBIAN
        if not bool(folded.any()):
            return fine, extra, True
        # Interpolate plainly in every cell that holds a corner of a folded pixel cell, and in
        # the cells around those (fewer rounds).
        b, _, y, x = torch.nonzero(folded, as_tuple=True)
        for dy in (0, 1):
            for dx in (0, 1):
                rows, cols = cell_rows[y + dy], cell_cols[x + dx]
                for ny in (-1, 0, 1):
                    for nx in (-1, 0, 1):
                        clean[b, 0, (rows + ny).clamp(0, cells_h - 1), (cols + nx).clamp(0, cells_w - 1)] = (
                            False
                        )
    return plain, extra, False


def field_from_edges(
    edges: EdgePoints,
    shape: tuple[int, int, int],
    *,
    with_forward: bool = False,
    factor: float | None = None,
    grid_origin: tuple[float, float] = (0.0, 0.0),
) -> GwisField:
    """The warp of planes of ``shape`` ``(B, H, W)`` given their edge points (see :func:`gwis_field`).

    ``factor`` is the spacing (px) of the grid the field is computed on: 1 for the pixel
    grid, ``None`` for :func:`coarse_factor` of the smallest warp scale among the edge
    points. ``grid_origin`` is the global pixel position of the planes' pixel ``(0, 0)``
    (tiles pass theirs, so that they share the coarse grid's nodes).
    """
    batch, height, width = shape
    dtype, device = edges.y.dtype, edges.y.device
    if factor is None:
        factor = coarse_factor(float(edges.scale.min())) if edges.scale.numel() else 1.0
    logger.debug("GWIS: %d edge points on %s planes, grid step %.3g px", edges.row.numel(), shape, factor)
    rows = torch.arange(height, device=device, dtype=dtype).view(1, 1, -1, 1)
    cols = torch.arange(width, device=device, dtype=dtype).view(1, 1, 1, -1)
    pixels = torch.cat((rows.expand(batch, 1, height, width), cols.expand(batch, 1, height, width)), 1)
    if factor == 1:
        totals = _accumulate(edges, shape, with_forward=with_forward)
        weight = totals[:, 0:1]
        has = weight > 0
        safe_w = torch.where(has, weight, torch.ones_like(weight))
        coverage = torch.where(has, totals[:, 3:4].clamp(max=1.0), torch.zeros_like(weight))
        inverse = _unfold(coverage * totals[:, 1:3] / safe_w)
        forward = coverage * totals[:, 4:6] / safe_w if with_forward else None
        return GwisField(
            source=pixels + inverse, inverse=inverse, displacement=forward, coverage=coverage, edges=edges
        )
    grid = CoarseGrid(float(factor), height, width, (float(grid_origin[0]), float(grid_origin[1])))
    coarse = thin_to_grid(edges, grid, batch, THIN_SPACING)
    totals = _accumulate(coarse, (batch, *grid.shape), with_forward=with_forward, with_parts=True)
    weight = totals[:, 0:1]
    has = weight > 0
    safe_w = torch.where(has, weight, torch.ones_like(weight))
    coverage = torch.where(has, totals[:, 3:4].clamp(max=1.0), torch.zeros_like(weight))
    sign_part = totals[:, 1:3] / safe_w
    parts = 6 if with_forward else 4
    linear = totals[:, parts : parts + 2] / safe_w
    distance = totals[:, parts + 2 : parts + 3] / safe_w
    inverse = sign_part - (2.0 / 3.0) * linear
    # The fold guard on the coarse grid, for whole cells: the interpolated map keeps its order.
    fade = coverage * _unfold_factor(coverage * inverse, whole_cells=True)
    inverse, fine_coverage, checked = _upsample_inverse(
        fade * sign_part, fade * linear, distance, grid, extra=coverage
    )
    if not checked:
        # A pixel cell that straddles two grid cells (fractional spacing) can still fold, rarely.
        inverse = _unfold(inverse)
    forward = None
    if with_forward:
        forward = _upsample(coverage * totals[:, 4:6] / safe_w, grid) * grid.factor
    return GwisField(
        source=pixels + inverse, inverse=inverse, displacement=forward, coverage=fine_coverage, edges=edges
    )


def warp_planes(x: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """Resample ``(B, C, H, W)`` planes: output pixel ``y`` reads ``x`` at ``y + inverse[y]``.

    Bilinear, clamped at the frame; pixels with zero displacement are copied
    exactly (no interpolation round-off).
    """
    batch, _, height, width = x.shape
    rows = torch.arange(height, device=x.device, dtype=inverse.dtype).view(1, -1, 1)
    cols = torch.arange(width, device=x.device, dtype=inverse.dtype).view(1, 1, -1)
    grid = torch.stack(
        (
            2.0 * (cols + inverse[:, 1]) / max(width - 1, 1) - 1.0,
            2.0 * (rows + inverse[:, 0]) / max(height - 1, 1) - 1.0,
        ),
        dim=-1,
    )
    sampled = F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=True)
    moved = (inverse != 0).any(dim=1, keepdim=True)
    return torch.where(moved, sampled, x)


def gwis_sharpen(
    x: torch.Tensor,
    warp_scale: torch.Tensor | float,
    *,
    gradient_scale: float = 1.0,
    noise_std: torch.Tensor | None = None,
    intensity_range: torch.Tensor | None = None,
    grid_origin: tuple[float, float] = (0.0, 0.0),
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
    grid_origin : (float, float)
        See :func:`gwis_field` (for tiles).

    Returns
    -------
    Tensor, shape (B, C, H, W), same device and dtype.
    """
    field = gwis_field(
        luminance(x),
        warp_scale,
        gradient_scale=gradient_scale,
        noise_std=noise_std,
        intensity_range=intensity_range,
        grid_origin=grid_origin,
    )
    return warp_planes(x, field.inverse)


# --- numpy facade -------------------------------------------------------------------------


def _gwis_plane_steps(message: str, scalar_level: float | None):
    def plane_steps(plane: torch.Tensor, level_map: torch.Tensor | None) -> JobSteps[torch.Tensor]:
        yield JobProgress(0.0, message)
        height, width = plane.shape[-2:]
        if level_map is None:
            level_map = plane.new_full((height, width), float(scalar_level))
        level_map = level_map.to(plane.dtype).view(1, 1, height, width)
        scale_map = warp_scale_for_level(level_map)
        max_scale = float(scale_map.max())
        if max_scale >= MAX_WARP_SCALE:
            logger.warning(
                "blur levels up to %.3g px: warp scales clipped to %g px",
                float(level_map.max()),
                MAX_WARP_SCALE,
            )
        if max_scale < MIN_WARP_SCALE:
            return plane.clone()
        lum = luminance(plane)
        noise = estimate_noise_std(lum)
        flat = lum.flatten(1)
        value_range = flat.max(dim=1).values - flat.min(dim=1).values
        grad_scale = gradient_scale_for_level(float(level_map.median()))
        reach = window_radius(max_scale) + int(math.ceil(coarse_factor(max_scale)))
        halo = reach + int(math.ceil(3 * grad_scale)) + 3 * UNFOLD_STEPS + 5

        def tile_fn(tile: torch.Tensor, window: TileWindow) -> torch.Tensor:
            # The tile's origin in the plane puts its coarse grid on the whole plane's.
            origin = (float(window.rows.start), float(window.cols.start))
            sharpened = gwis_sharpen(
                tile,
                scale_map[..., window.rows, window.cols],
                gradient_scale=grad_scale,
                noise_std=noise,
                intensity_range=value_range,
                grid_origin=origin,
            )
            core_rows, core_cols = window.core_in_tile
            return sharpened[..., core_rows, core_cols]

        tile_size = device_tile_size(TILE_SIZE, plane.device)
        return (
            yield from iter_tiled(
                tile_fn, plane, tile_size=tile_size, halo=halo, blend=min(16, halo), core_only=True
            )
        )

    return plane_steps


def iter_sharpen_gwis(image, blur, *, channel_axis: int | None = None, device=None) -> JobSteps[np.ndarray]:
    """Generator twin of :func:`sharpen_gwis` (yields progress per plane and tile)."""
    pixels = as_float_image(image)
    layout = PlaneLayout.of(pixels.shape, channel_axis)
    if is_auto_blur(blur):
        blur = yield from iter_estimate_blur_map(pixels, channel_axis=channel_axis, device=device)
    levels = check_blur_levels(blur, layout)
    target = select_device(device)
    scalar = isinstance(levels, float)
    if (levels == 0) if scalar else not levels.any():
        return pixels.copy()
    steps = _gwis_plane_steps("GWIS sharpening", levels if scalar else None)
    # iter_planewise hands each plane its own 2D array from a per-plane stack (its PSF
    # mechanism); here that array is the plane's blur map.
    return (
        yield from iter_planewise(
            pixels, layout, steps, device=target, psf=None if scalar else levels, message="GWIS sharpening"
        )
    )


def _lazy_sharpen_gwis(facade, image, blur, *, channel_axis, device):
    layout = lazy_layout(image, channel_axis)
    if is_dask_array(blur) or np.ndim(blur) > 0:
        return lazy_planewise(
            lambda block, _plane, levels: facade(block, levels, channel_axis=channel_axis, device=device),
            image,
            channel_axis=channel_axis,
            per_plane=blur,
        )
    level = blur if is_auto_blur(blur) else check_blur_levels(blur, layout)
    return lazy_planewise(
        lambda block, _plane: facade(block, level, channel_axis=channel_axis, device=device),
        image,
        channel_axis=channel_axis,
    )


@job_facade(iter_sharpen_gwis, lazy=_lazy_sharpen_gwis)
def sharpen_gwis() -> np.ndarray:
    """Sharpen an image by grid warping (GWIS), given its blur level(s).

    Pixels near each edge are moved toward the edge's centre line, which
    thins blurred edges without ringing, without overshoot and without
    amplifying noise. Needs no kernel, only the blur level.

    Parameters
    ----------
    image : array_like, shape (..., H, W) or with a channel axis
        Any real dtype; leading axes (z, t) are processed plane by plane.
    blur : float, array_like or "auto"
        Blur level in pixels (PSF standard deviation, as :func:`psf_blur_level`;
        >= 0): one number, a map of shape ``(H, W)`` for every plane, or a map
        of the image's full non-channel shape (leading axes + ``(H, W)``).
        Level 0 leaves pixels as they are. ``"auto"``: the levels come from
        :func:`estimate_blur_map` (the same as ``sharpen_gwis(image,
        estimate_blur_map(image))``, in one call, with one progress report).
    channel_axis : int, optional
        Axis of colour channels; the warp is computed on the luminance and
        applied to every channel alike (no colour fringes).
    device : str or torch.device, optional
        ``None``/"auto" (CUDA, then MPS, then CPU), "cpu", "cuda" or "mps".
    progress : callable, optional
        Called with :class:`~napari_deblur.engine.core.jobs.JobProgress`.
    cancel : callable or threading.Event, optional
        Checked between planes and tiles; raises ``JobCancelled`` when set.

    Returns
    -------
    numpy.ndarray, float32, same shape as ``image``, in the input's intensity
    scale. Every value lies between the minimum and maximum of the input
    within ``1.5 * sigma_p + 1`` pixels (it is a bilinear resampling).
    A dask array ``image`` (and/or ``blur`` map) gives a lazy dask array at
    once, computed plane by plane with this same function
    (:mod:`napari_deblur.engine.core.lazy`).

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
    (clipped to ``MAX_WARP_SCALE`` px), a line fitted on training images;
    see docs/methods/gwis.md for the algorithm.

    References
    ----------
    Nasonov, Krylov & Lyukov (2019), sections 2.1-2.2; Nasonova & Krylov (2015).
    """


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
    levels = check_blur_levels(blur, layout)
    target = select_device(device)
    plane = torch.from_numpy(np.ascontiguousarray(layout.to_planes(pixels))).to(target)
    height, width = layout.plane_shape
    level_map = (
        plane.new_full((1, 1, height, width), levels)
        if isinstance(levels, float)
        else torch.from_numpy(levels).to(target).view(1, 1, height, width)
    )
    lum = luminance(plane)
    return gwis_field(
        lum,
        warp_scale_for_level(level_map),
        gradient_scale=gradient_scale_for_level(float(level_map.median())),
        with_forward=True,
    )
