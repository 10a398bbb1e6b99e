"""The blur-map network and its shipped weights.

:class:`BlurMapNet` maps blur-map features of a grayscale plane to the log
blur level at 1/4 resolution; :func:`load_blur_map_net` loads the shipped
weights (``nets/weights/blur_map.pt``, card ``nets/weights/blur_map.md``),
trained by ``python -m training blurmap`` run from the repository root.
See docs/methods/blur-map.md for the method.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from .layers import upsample_nearest_then_conv
from .shipped_weights import load_shipped_model

WEIGHTS_FILE = "blur_map.pt"
"""Shipped weights of :class:`BlurMapNet`, in ``napari_deblur/engine/nets/weights/``."""

RETRAIN_COMMAND = "python -m training blurmap"
"""Command that retrains :data:`WEIGHTS_FILE`, run from the repository root."""

WIDTHS = (24, 32, 48, 64)
"""Channels of :class:`BlurMapNet` at 1/2, 1/4, 1/8, 1/16 resolution."""

SIZE_MULTIPLE = 16
"""Network inputs are padded to a multiple of this many pixels."""


def _conv(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation)


class BlurMapNet(nn.Module):
    """Compact encoder-decoder from blur-map features to ``log(1 + level / LEVEL_OFFSET)``.

    Parameters
    ----------
    widths : tuple of 4 int
        Channels at 1/2, 1/4, 1/8 and 1/16 resolution.

    Notes
    -----
    Input ``(B, 2, H, W)``
    (:func:`~napari_deblur.engine.methods.blur_map.blur_map_features`) with
    ``H, W`` multiples of :data:`SIZE_MULTIPLE`; output ``(B, 1, H / 4, W / 4)``
    on the input's device (upsample with
    :func:`~napari_deblur.engine.methods.blur_map.predict_log_level`).
    ``LEVEL_OFFSET`` is :data:`~napari_deblur.engine.methods.blur_map.LEVEL_OFFSET` px.
    """

    def __init__(self, widths=WIDTHS):
        super().__init__()
        w0, w1, w2, w3 = widths
        relu = nn.ReLU
        self.enc0 = nn.Sequential(_conv(8, w0), relu(inplace=True), _conv(w0, w0), relu(inplace=True))
        self.enc1 = nn.Sequential(_conv(w0, w1, 2), relu(inplace=True), _conv(w1, w1), relu(inplace=True))
        self.enc2 = nn.Sequential(_conv(w1, w2, 2), relu(inplace=True), _conv(w2, w2), relu(inplace=True))
        self.enc3 = nn.Sequential(
            _conv(w2, w3, 2),
            relu(inplace=True),
            _conv(w3, w3, dilation=2),
            relu(inplace=True),
            _conv(w3, w3, dilation=2),
            relu(inplace=True),
        )
        self.up3 = _conv(w3, w2)
        self.dec2 = nn.Sequential(_conv(2 * w2, w2), relu(inplace=True))
        self.up2 = _conv(w2, w1)
        self.dec1 = nn.Sequential(_conv(2 * w1, w1), relu(inplace=True), _conv(w1, w1), relu(inplace=True))
        self.head = nn.Conv2d(w1, 1, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.enc0(F.pixel_unshuffle(features, 2))
        s1 = self.enc1(x)
        s2 = self.enc2(s1)
        x = self.enc3(s2)
        x = upsample_nearest_then_conv(x, self.up3)
        x = self.dec2(torch.cat([x, s2], dim=1))
        x = upsample_nearest_then_conv(x, self.up2)
        x = self.dec1(torch.cat([x, s1], dim=1))
        return self.head(x)


def output_stride(model: nn.Module) -> int:
    """Resolution factor of a blur-map network's output: its ``output_stride`` attribute, else 4.

    :class:`BlurMapNet` predicts at 1/4 resolution; another network declares
    its factor with a class attribute ``output_stride``.
    """
    return int(getattr(model, "output_stride", 4))


@lru_cache(maxsize=4)
def load_blur_map_net(device: torch.device) -> BlurMapNet:
    """The shipped :class:`BlurMapNet` on ``device``, in eval mode, channels-last (loaded once per device).

    Raises
    ------
    FileNotFoundError
        If the weights file is missing from the installed package.
    """
    return load_shipped_model(BlurMapNet(), WEIGHTS_FILE, device, RETRAIN_COMMAND)
