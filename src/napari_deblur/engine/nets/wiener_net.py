"""The Wiener-net network and its shipped weights.

:class:`WienerNet` fuses a stack of Wiener deconvolutions of a grayscale
plane into one restored plane; :func:`load_wiener_net` loads the shipped
weights (``nets/weights/wiener_net.pt``, card ``nets/weights/wiener_net.md``),
trained by ``python -m training wiener-net`` run from the repository root.
See docs/methods/wiener-net.md for the method.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from .layers import fold_phase_major, unshuffle_order_of_phase_major, upsample_nearest_then_conv
from .shipped_weights import load_shipped_model

WEIGHTS_FILE = "wiener_net.pt"
"""Shipped weights, in ``napari_deblur/engine/nets/weights/``."""

RETRAIN_COMMAND = "python -m training wiener-net"
"""Command that retrains :data:`WEIGHTS_FILE`, run from the repository root."""

STACK_SIZE = 15
"""Wiener stack members the shipped network takes (one per SNR of
:data:`~napari_deblur.engine.methods.wiener.WIENER_STACK_SNRS_DB`)."""

WIDTHS = (32, 48, 64, 96)
"""Channels of the four U-Net levels (1/2, 1/4, 1/8, 1/16 resolution)."""

SIZE_MULTIPLE = 16
"""Network inputs are padded to a multiple of this many pixels (2x2 fold, then three stride-2 levels)."""


def _conv(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)


class WienerNet(nn.Module):
    """Compact U-Net that blends the Wiener candidates per pixel and corrects the blend.

    Parameters
    ----------
    n_snrs : int
        Number of Wiener stack members; the input has ``n_snrs + 2`` channels
        (stack, blurred plane, noise level).
    widths : tuple of int
        Channels per level.

    Notes
    -----
    Input ``(B, n_snrs + 2, H, W)`` with ``H, W`` multiples of
    :data:`SIZE_MULTIPLE`, as made by
    :func:`~napari_deblur.engine.methods.wiener_net.wiener_net_features`;
    output ``(B, 1, H, W)``, the restored plane in the same normalised units,
    float32 (also under a bfloat16 autocast), on the input's device. The last
    layer gives, at every pixel, weights over the ``n_snrs + 1`` candidates
    (the stack members and the blurred plane itself; a softmax, so the blend
    stays within the candidates' range) and a residual added to the blend.
    """

    def __init__(self, n_snrs: int = STACK_SIZE, widths=WIDTHS):
        super().__init__()
        self.n_snrs = n_snrs
        in_channels = 4 * (n_snrs + 2)
        self.encoders = nn.ModuleList()
        for level, width in enumerate(widths):
            self.encoders.append(
                nn.Sequential(
                    _conv(in_channels, width, 1 if level == 0 else 2),
                    nn.ReLU(inplace=True),
                    _conv(width, width),
                    nn.ReLU(inplace=True),
                )
            )
            in_channels = width
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in range(len(widths) - 1, 0, -1):
            coarse, fine = widths[level], widths[level - 1]
            self.upsamplers.append(_conv(coarse, fine))
            self.decoders.append(
                nn.Sequential(
                    _conv(2 * fine, fine),
                    nn.ReLU(inplace=True),
                    _conv(fine, fine),
                    nn.ReLU(inplace=True),
                )
            )
        self.head = _conv(widths[0], 4)
        # 1x1 at half resolution, 4 output pixels per position (pixel shuffle).
        self.blend_head = nn.Conv2d(widths[0], 4 * (n_snrs + 1), 1)
        # The weights keep pixel_unshuffle's channel order (4 c + p) in files; the forward
        # pass folds phase first (p C + c) and reads the first layer's inputs and the blend
        # weights in that order.
        self.register_buffer("input_order", unshuffle_order_of_phase_major(n_snrs + 2), persistent=False)
        self.register_buffer("blend_order", unshuffle_order_of_phase_major(n_snrs + 1), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        folded = fold_phase_major(features)
        first = self.encoders[0]
        x = first[1:](F.conv2d(folded, first[0].weight[:, self.input_order], first[0].bias, padding=1))
        skips = [x]
        for encoder in self.encoders[1:]:
            x = encoder(x)
            skips.append(x)
        x = skips.pop()
        for upsample, decoder in zip(self.upsamplers, self.decoders):
            x = upsample_nearest_then_conv(x, upsample)
            x = decoder(torch.cat([x, skips.pop()], dim=1))
        logits = F.conv2d(x, self.blend_head.weight[self.blend_order], self.blend_head.bias[self.blend_order])
        # float() undoes a bfloat16 autocast (apply_network): the blend and its residual stay float32.
        blended = self._blend(folded, logits.float())
        return F.pixel_shuffle(blended + self.head(x).float(), 2)

    def _blend(self, folded: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Softmax-weighted sum of the candidates, at half resolution.

        ``folded`` and ``logits`` are phase-major (:func:`fold_phase_major`):
        channel ``p C + c`` is candidate ``c`` at output phase ``p``, so a
        channels-last map is already ``(B, h, w, 4, C)`` in memory; the softmax
        runs over its contiguous last axis and the weighted sum is one batched
        product without transposed copies. The blend of the full-resolution
        planes is done on the folded maps and shuffled once with the residual:
        the same numbers as shuffling the weights first.
        """
        batch, _, height, width = folded.shape
        n = self.n_snrs + 1

        def by_phase(maps: torch.Tensor, channels: int) -> torch.Tensor:  # (B, 4 C, h, w) -> (B, h, w, 4, C)
            return maps.permute(0, 2, 3, 1).reshape(batch, height, width, 4, channels)

        weights = by_phase(logits, n).softmax(dim=-1)
        candidates = by_phase(folded, n + 1)[..., :n]
        with torch.autocast(folded.device.type, enabled=False):  # einsum would run in bfloat16
            blended = torch.einsum("bhwpc,bhwpc->bhwp", weights, candidates)  # (B, h, w, 4)
        return blended.permute(0, 3, 1, 2)


def wiener_net_from_weights(state: dict) -> WienerNet:
    """A :class:`WienerNet` with the level widths of a saved ``state_dict``, loaded from it.

    Parameters
    ----------
    state : dict
        A ``state_dict`` of a :class:`WienerNet` with any level widths.

    Returns
    -------
    WienerNet
        On the CPU, in training mode (call ``.eval()`` to run it).

    Raises
    ------
    RuntimeError
        If ``state`` does not fit a :class:`WienerNet` (``load_state_dict``).
    """
    widths, level = [], 0
    while f"encoders.{level}.0.weight" in state:
        widths.append(int(state[f"encoders.{level}.0.weight"].shape[0]))
        level += 1
    model = WienerNet(widths=tuple(widths))
    model.load_state_dict(state)
    return model


@lru_cache(maxsize=4)
def load_wiener_net(device: torch.device) -> WienerNet:
    """The shipped :class:`WienerNet` on ``device``, in eval mode, channels-last (loaded once per device).

    Raises
    ------
    FileNotFoundError
        If the weights file is missing from the installed package.
    """
    return load_shipped_model(WienerNet(), WEIGHTS_FILE, device, RETRAIN_COMMAND)
