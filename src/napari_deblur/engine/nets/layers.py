"""Network building blocks shared by the engine's models."""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ...options import ENSEMBLE_SIZES

__all__ = ["ENSEMBLE_SIZES"]  # the allowed numbers of views in mean_over_views


def upsample_nearest_then_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(interpolate(x, scale_factor=2, mode="nearest"))``, computed at ``x``'s resolution.

    Parameters
    ----------
    x : Tensor, shape (B, C, H, W)
    conv : nn.Conv2d
        3x3, stride 1, zero padding 1, no dilation or groups.

    Returns
    -------
    Tensor, shape (B, conv.out_channels, 2H, 2W)
        Equal to the two-step form up to float rounding, for the same weights.

    Notes
    -----
    After a nearest-neighbour 2x upsampling, the three taps of a 3x3 kernel
    along an axis land on only two coarse samples: for an even output index
    the first tap reads the preceding coarse sample and the other two the
    current one; for an odd index the first two read the current sample and
    the third the next one. Each of the four output phases is therefore a
    2x2 convolution of the coarse map, whose taps are sums of the 3x3 taps.
    All four run as one 2x2 convolution with four times the output channels
    over the coarse map padded by one zero (the zero row the 3x3 kernel sees
    past the fine edge is the zero past the coarse edge), then the phases are
    interleaved. That is 16 instead of 36 multiply-adds per coarse pixel and
    channel pair, and the fine-resolution input is never made. The result is
    channels-last (the layout the CPU convolutions are fastest in).
    """
    if (
        conv.kernel_size != (3, 3)
        or conv.stride != (1, 1)
        or conv.padding != (1, 1)
        or conv.dilation != (1, 1)
        or conv.groups != 1
    ):
        raise ValueError("upsample_nearest_then_conv needs a 3x3 convolution with padding 1.")
    weight = conv.weight  # (O, I, 3, 3)

    # Tap sums along one axis, per output phase: phase 0 reads (preceding, current) coarse
    # samples with (w0, w1 + w2), phase 1 reads (current, next) with (w0 + w1, w2).
    def phase_taps(w: torch.Tensor, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
        first, middle, last = w.unbind(axis)
        return (torch.stack([first, middle + last], axis), torch.stack([first + middle, last], axis))

    phase_weights = [
        by_column for by_row in phase_taps(weight, 2) for by_column in phase_taps(by_row, 3)
    ]  # phase 2p + q: (O, I, 2, 2)
    bias = None if conv.bias is None else conv.bias.repeat(4)
    batch, _, height, width = x.shape
    out_channels = weight.shape[0]
    out = F.conv2d(F.pad(x, (1, 1, 1, 1)), torch.cat(phase_weights), bias)  # (B, 4 O, H+1, W+1)
    # Interleave with four strided copies into a channels-last result (a stack and
    # pixel_shuffle of channels-last tensors copied five times slower on the CPU).
    by_phase = out.permute(0, 2, 3, 1).unflatten(3, (4, out_channels))  # (B, H+1, W+1, 4, O)
    fine = out.new_empty((batch, height, 2, width, 2, out_channels))
    for p in (0, 1):
        for q in (0, 1):
            fine[:, :, p, :, q] = by_phase[:, p : p + height, q : q + width, 2 * p + q]
    return fine.view(batch, 2 * height, 2 * width, out_channels).permute(0, 3, 1, 2)


def fold_phase_major(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, 4 C, H/2, W/2)``: each 2x2 block folded into channels, phase first.

    The values of :func:`torch.nn.functional.pixel_unshuffle` with factor 2, in another
    channel order: channel ``p C + c`` holds channel ``c`` at phase ``p = 2 dy + dx``
    (``pixel_unshuffle`` puts it at ``4 c + p``). From a channels-last ``x`` this is one
    copy of runs of ``C`` contiguous values, and the result is channels-last with the
    ``C`` channels of each phase side by side; ``pixel_unshuffle`` moves single values
    and took half as long again on a two-core CPU (1024 x 1024 x 17 planes, AVX2).
    ``H`` and ``W`` must be even.
    """
    batch, channels, height, width = x.shape
    blocks = x.permute(0, 2, 3, 1).reshape(batch, height // 2, 2, width // 2, 2, channels)
    folded = blocks.permute(0, 1, 3, 2, 4, 5).reshape(batch, height // 2, width // 2, 4 * channels)
    return folded.permute(0, 3, 1, 2)


def unshuffle_order_of_phase_major(channels: int) -> torch.Tensor:
    """For each channel ``p C + c`` of :func:`fold_phase_major`, its ``pixel_unshuffle`` channel ``4 c + p``.

    Indexing the input axis of weights trained on ``pixel_unshuffle`` maps with it (or the
    output axis of a layer whose outputs were read in that order) gives the same layer
    for phase-major maps.
    """
    return torch.tensor([4 * c + p for p in range(4) for c in range(channels)])


def dihedral_views() -> list[tuple]:
    """The eight symmetries of the square as ``(forward, inverse)`` maps of ``(..., H, W)`` tensors.

    In the order :func:`mean_over_views` takes them: the first 1, 2 and 4 are
    each a group of their own (identity; + a half turn; + the two mirror flips), so an
    ensemble of that many views is exactly equivariant under its own views.
    """

    def flip(*dims):
        return lambda t: t.flip(dims)

    def turn(quarters):
        return lambda t: t.rot90(quarters, (-2, -1))

    def transpose(t):
        return t.transpose(-1, -2)

    def anti_transpose(t):
        return t.flip((-2, -1)).transpose(-1, -2)

    return [
        (lambda t: t, lambda t: t),
        (flip(-2, -1), flip(-2, -1)),
        (flip(-1), flip(-1)),
        (flip(-2), flip(-2)),
        (transpose, transpose),
        (turn(1), turn(-1)),
        (turn(-1), turn(1)),
        (anti_transpose, anti_transpose),
    ]


def check_ensemble_size(ensemble) -> None:
    """Raise ``ValueError`` unless ``ensemble`` is one of :data:`ENSEMBLE_SIZES`, as an integer.

    ``True`` and ``2.0`` compare equal to 1 and 2 but are refused: a view count is a count.
    """
    if (
        isinstance(ensemble, bool)
        or not isinstance(ensemble, numbers.Integral)
        or ensemble not in ENSEMBLE_SIZES
    ):
        raise ValueError(f"ensemble must be one of {ENSEMBLE_SIZES}, got {ensemble!r}")


def mean_over_views(
    apply: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, ensemble: int
) -> torch.Tensor:
    """The mean of ``inverse(apply(forward(x)))`` over the first ``ensemble`` :func:`dihedral_views`.

    ``apply`` maps ``(B, C, H, W)`` to ``(B, C', H, W)`` (same plane size), e.g. a
    network pass: its output for each flipped or turned view is turned back before
    the mean. A test-time ensemble for networks trained on inputs in every
    orientation; ``ensemble`` passes of ``apply``.
    """
    check_ensemble_size(ensemble)
    total = None
    for forward, inverse in dihedral_views()[:ensemble]:
        result = inverse(apply(forward(x)))
        total = result if total is None else total.add_(result)
    return total.div_(ensemble) if ensemble > 1 else total
