"""Region selection: where in a blurred image a blur kernel can be estimated well.

:func:`select_regions` scores square windows on a grid and keeps the best
non-overlapping ones. Two rankings: ``"consensus"`` estimates a kernel from
every window (:func:`~napari_deblur.engine.estimate_psf`) and scores each by
its agreement with the others (:func:`consensus_scores`); ``"network"`` scores
each window with :class:`~napari_deblur.engine.nets.region_selector.RegionSelectorNet`.
See docs/methods/region-selector.md for the method.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ..core.devices import select_device
from ..core.jobs import JobProgress, JobSteps, job_facade
from ..core.planes import single_grey_plane
from ..nets.layers import mean_over_views

# The network's names stay importable from here (training, tests, the widget).
from ..nets.region_selector import RETRAIN_COMMAND as RETRAIN_COMMAND
from ..nets.region_selector import TRAINING_WINDOW as TRAINING_WINDOW
from ..nets.region_selector import WEIGHTS_FILE as WEIGHTS_FILE
from ..nets.region_selector import WIDTHS as WIDTHS
from ..nets.region_selector import RegionSelectorNet as RegionSelectorNet
from ..nets.region_selector import load_region_selector_net
from .blind_psf import REGION_SIZE_FACTOR, check_kernel_size, estimate_psf, kernel_similarity

GOOD_SIMILARITY = 0.75
"""A window is good when the PSF estimated from it has at least this kernel similarity."""

DEFAULT_WINDOW = 128
"""Default window side of :func:`select_regions` (px)."""

MIN_WINDOW = 32
"""Smallest window side accepted (px): the network's output stride is 16."""

INPUT_CLIP = 6.0
"""Normalised window values are clipped to +-this."""

BATCH = 64
"""Windows scored per network call."""

RANKINGS = ("consensus", "network")
"""How :func:`select_regions` ranks windows: the agreement of the kernels estimated from them
(:func:`consensus_scores`; the default), or :class:`RegionSelectorNet`'s score."""

MAX_CONSENSUS_WINDOWS = 36
"""Most windows the consensus ranking estimates a kernel from; a finer grid is thinned
(:func:`consensus_stride`)."""

DEFAULT_CONSENSUS_PSF_SIZE = 25
"""Kernel size (px) of the consensus ranking's estimates (:func:`~napari_deblur.engine.estimate_psf`'s
default)."""


class Region(NamedTuple):
    """A window of an image, in pixels of the plane, and its score.

    Indexable as a sequence ``(y, x, height, width, score)``; ``region[:4]``
    is what :func:`~napari_deblur.engine.estimate_psf` takes as ``region``.
    """

    y: int
    x: int
    height: int
    width: int
    score: float


def window_features(windows: torch.Tensor) -> torch.Tensor:
    """Each window minus its mean, over its standard deviation, clipped to +-:data:`INPUT_CLIP`.

    Parameters
    ----------
    windows : Tensor, shape (B, 1, H, W), float
        Grey windows in any intensity scale; any device.

    Returns
    -------
    Tensor, same shape, device and dtype. A flat window becomes all zeros.
    """
    mean = windows.mean(dim=(-2, -1), keepdim=True)
    std = windows.std(dim=(-2, -1), keepdim=True)
    floor = 1e-6 * windows.abs().amax(dim=(-2, -1), keepdim=True) + torch.finfo(windows.dtype).tiny
    return ((windows - mean) / torch.maximum(std, floor)).clamp(-INPUT_CLIP, INPUT_CLIP)


def score_windows(model: nn.Module, windows: torch.Tensor, views: int = 1) -> torch.Tensor:
    """Probability ``(B,)`` that each grey window ``(B, 1, H, W)`` is good (no gradients).

    ``views`` > 1 averages the probability over that many flipped or turned views of each
    window (:func:`~napari_deblur.engine.nets.layers.mean_over_views`).
    """

    def probability(view: torch.Tensor) -> torch.Tensor:  # (B, 1, 1, 1): turning it is a no-op
        view = view.contiguous(memory_format=torch.channels_last)
        return torch.sigmoid(model(view).float()).view(-1, 1, 1, 1)

    with torch.inference_mode():
        return mean_over_views(probability, window_features(windows), views).view(-1)


# --- input ------------------------------------------------------------------------------------


def _check_positive_int(value, name: str, minimum: int, unit: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer >= {minimum}{unit}, not {value!r}.")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}{unit}, got {value}.")
    return value


def _grey_plane(image, channel_axis: int | None) -> np.ndarray:
    return single_grey_plane(image, channel_axis, caller="select_regions")


def grid_positions(length: int, size: int, stride: int) -> list[int]:
    """Window starts ``0, stride, ...`` along one axis, plus the last one (``length - size``)."""
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def grid_starts(shape: tuple[int, int], size: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners ``(y, x)`` of the ``size`` windows on a grid of ``stride`` (row by row)."""
    return [
        (y, x) for y in grid_positions(shape[0], size, stride) for x in grid_positions(shape[1], size, stride)
    ]


def overlap_fraction(a: Region, b: Region) -> float:
    """Intersection over union of two windows (0 when they only touch or are apart)."""
    rows = max(0, min(a.y + a.height, b.y + b.height) - max(a.y, b.y))
    cols = max(0, min(a.x + a.width, b.x + b.width) - max(a.x, b.x))
    shared = rows * cols
    return shared / (a.height * a.width + b.height * b.width - shared)


def non_maximum_suppression(candidates: list[Region], count: int, max_overlap: float = 0.0) -> list[Region]:
    """Greedy: the best candidate, then the best whose :func:`overlap_fraction` with every one
    taken is at most ``max_overlap`` (0: no overlap at all), ... (``count`` at most)."""
    chosen: list[Region] = []
    for candidate in sorted(candidates, key=lambda region: -region.score):
        if all(overlap_fraction(candidate, taken) <= max_overlap for taken in chosen):
            chosen.append(candidate)
            if len(chosen) == count:
                break
    return chosen


def iter_score_grid(
    plane: np.ndarray, size: int, stride: int, device: torch.device, views: int = 1
) -> JobSteps[list[Region]]:
    """Every ``size`` window of a grey plane on a grid of ``stride`` (:func:`grid_positions`),
    scored by the shipped network (on ``views`` views, :func:`score_windows`); yields progress
    per batch of windows."""
    model = load_region_selector_net(device)
    starts = grid_starts(plane.shape, size, stride)
    tensor = torch.from_numpy(plane).to(device)
    scores = []
    for first in range(0, len(starts), BATCH):
        yield JobProgress(first / len(starts), f"region selection: {first}/{len(starts)} windows")
        batch = torch.stack([tensor[y : y + size, x : x + size] for y, x in starts[first : first + BATCH]])
        scores.append(score_windows(model, batch[:, None], views).cpu())
    values = torch.cat(scores).tolist()
    yield JobProgress(1.0, "region selection: done")
    return [Region(y, x, size, size, float(score)) for (y, x), score in zip(starts, values)]


def consensus_stride(shape: tuple[int, int], size: int, stride: int) -> int:
    """``stride``, or the smallest larger step whose grid (:func:`grid_positions`) has at most
    :data:`MAX_CONSENSUS_WINDOWS` windows of ``size`` on a plane of ``shape``."""
    while len(grid_starts(shape, size, stride)) > MAX_CONSENSUS_WINDOWS:
        stride += 1
    return stride


def consensus_scores(kernels: Sequence[np.ndarray | None]) -> np.ndarray:
    """Each kernel's mean :func:`~napari_deblur.engine.kernel_similarity` to the other kernels, in
    [0, 1]; ``None`` (a flat window: no kernel) scores 0 and takes no part. A kernel with no other
    to compare with scores 1."""
    present = [i for i, kernel in enumerate(kernels) if kernel is not None]
    scores = np.zeros(len(kernels))
    if len(present) == 1:
        scores[present] = 1.0
    elif present:
        similarity = np.zeros((len(present), len(present)))
        for a in range(len(present)):
            for b in range(a + 1, len(present)):
                similarity[a, b] = similarity[b, a] = kernel_similarity(
                    kernels[present[a]], kernels[present[b]]
                )
        scores[present] = similarity.sum(axis=1) / (len(present) - 1)
    return scores


def iter_consensus_grid(
    plane: np.ndarray, size: int, stride: int, psf_size: int, device: torch.device
) -> JobSteps[list[Region]]:
    """Every ``size`` window of a grey plane on a grid of ``stride``, scored by
    :func:`consensus_scores` of the ``psf_size`` kernels blindly estimated from each; yields
    progress per window. Windows of one constant value (they would all give the same point
    kernel and agree) get no kernel and score 0."""
    starts = grid_starts(plane.shape, size, stride)
    kernels = []
    for index, (y, x) in enumerate(starts):
        yield JobProgress(index / len(starts), f"region selection: kernel {index + 1}/{len(starts)}")
        window = plane[y : y + size, x : x + size]
        flat = window.max() == window.min()
        # The window alone (not the plane with a region): no copy of the whole plane per window.
        kernels.append(None if flat else estimate_psf(window, size=psf_size, device=device))
    scores = consensus_scores(kernels)
    yield JobProgress(1.0, "region selection: done")
    return [Region(y, x, size, size, float(score)) for (y, x), score in zip(starts, scores)]


# --- public API -------------------------------------------------------------------------------


def iter_select_regions(
    image,
    *,
    size: int = DEFAULT_WINDOW,
    count: int = 5,
    stride: int | None = None,
    channel_axis: int | None = None,
    device=None,
    ranking: str = "consensus",
    psf_size: int = DEFAULT_CONSENSUS_PSF_SIZE,
) -> JobSteps[list[Region]]:
    """Generator twin of :func:`select_regions` (yields progress per window or batch of windows)."""
    size = _check_positive_int(size, "size", MIN_WINDOW, " pixels")
    count = _check_positive_int(count, "count", 1, "")
    stride = max(1, size // 4) if stride is None else _check_positive_int(stride, "stride", 1, " pixels")
    if ranking not in RANKINGS:
        raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}.")
    plane = _grey_plane(image, channel_axis)
    height, width = plane.shape
    if height < size or width < size:
        raise ValueError(
            f"The image ({height}x{width} px) is smaller than one {size}x{size} window; use a "
            f"smaller size (at least {MIN_WINDOW}) or a larger image."
        )
    target = select_device(device)
    if ranking == "network":
        candidates = yield from iter_score_grid(plane, size, stride, target)
    else:
        psf_size = check_kernel_size(psf_size, "psf_size")
        if size < REGION_SIZE_FACTOR * psf_size:
            raise ValueError(
                f"The consensus ranking estimates a {psf_size}x{psf_size} kernel from each window, "
                f"which needs windows of at least {REGION_SIZE_FACTOR * psf_size} px (size={size}); "
                f"use a larger size, a smaller psf_size, or ranking='network'."
            )
        stride = consensus_stride((height, width), size, stride)
        candidates = yield from iter_consensus_grid(plane, size, stride, psf_size, target)
    return non_maximum_suppression(candidates, count)


@job_facade(iter_select_regions)
def select_regions() -> list[Region]:
    """Find the windows of a blurred image from which its blur kernel can be estimated best.

    Parameters
    ----------
    image : array_like, shape (H, W), or (H, W, 3|4) colour
        One plane, any real dtype and intensity scale. Colour images are
        scored on their luminance (Rec. 709 for RGB/RGBA, the channel mean
        otherwise); a trailing axis of 3 or 4 channels is taken as colour
        without ``channel_axis``.
    size : int
        Side of the square windows in pixels (>= 32; the network is trained
        on 192, and larger windows give steadier kernels when the image is big
        enough). Pass the same windows to :func:`estimate_psf`, whose kernel
        ``size`` must be at most half of it.
    count : int
        Most windows returned (>= 1). Fewer come back when no more fit
        without overlapping.
    stride : int, optional
        Step of the window grid in pixels; default ``size // 4``. The last
        row and column of windows touch the image's bottom and right edges.
        The consensus ranking widens it until the grid has at most
        :data:`MAX_CONSENSUS_WINDOWS` windows (:func:`consensus_stride`).
    channel_axis : int, optional
        Axis of colour channels.
    device : str or torch.device, optional
        ``None``/"auto" (CUDA, then MPS, then CPU), "cpu", "cuda" or "mps".
    ranking : {"consensus", "network"}
        "consensus" (default): a kernel is estimated from every window and
        each window scores the mean kernel similarity of its kernel to the
        other windows' (:func:`consensus_scores`), at one blind estimate per
        window. "network": the score of
        :class:`RegionSelectorNet`, well under a second.
    psf_size : int
        Odd side of the consensus ranking's kernels (px; at most half of
        ``size``); ignored by the network ranking. Use the size you will
        pass to :func:`~napari_deblur.engine.estimate_psf`.
    progress, cancel
        See :func:`~napari_deblur.engine.core.jobs.run_job`.

    Returns
    -------
    list of Region
        ``Region(y, x, height, width, score)`` in pixels of the plane, best
        first, pairwise non-overlapping, inside the image. ``score`` is in
        [0, 1]. Consensus: the mean kernel similarity (Hu & Yang) of the
        window's estimate to the others' (0 for a window of one constant
        value). Network: its probability that a PSF estimated from the
        window has kernel similarity >= :data:`GOOD_SIMILARITY` to the true
        one (trained on balanced classes: scores are for ranking, calibrated
        to a 50 % prior, not to how often windows are good in a given image).

    Raises
    ------
    ValueError
        For an empty, complex or non-finite image, more than one plane, an
        image smaller than one window, ``size`` < 32, ``count`` or ``stride``
        < 1, an unknown ``ranking``, an even or too small ``psf_size``, or
        one larger than half of ``size`` (consensus), or an unavailable device.
    TypeError
        For a non-numeric image, or a non-integer ``size``, ``count``,
        ``stride`` or ``psf_size``.
    FileNotFoundError
        If the shipped weights are missing (network ranking).

    Notes
    -----
    Windows on the grid are scored (``ranking``), then greedy non-maximum
    suppression keeps the best window, the best window that overlaps none
    kept, and so on. The input is never modified.
    The network scores windows in batches (each normalised by its own mean
    and standard deviation): about 5 ms per 128x128 window on one CPU core,
    under 1 s for a 512x512 image. The consensus costs one blind estimate per
    window, about 0.3-0.6 s each for 128-192 px windows on a CPU core, so up
    to 36 of them take 10-20 s. The network ranks the windows of one image
    little better than chance (docs/methods/region-selector.md).

    Examples
    --------
    >>> best = select_regions(blurred)[0]                        # doctest: +SKIP
    >>> psf = estimate_psf(blurred, size=25, region=best[:4])    # doctest: +SKIP
    """
