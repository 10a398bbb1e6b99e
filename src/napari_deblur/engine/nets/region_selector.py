"""The region selector's network and its shipped weights.

:class:`RegionSelectorNet` scores a normalised grey window with the logit of
"a PSF estimated from it is good"; :func:`load_region_selector_net` loads the
shipped weights (``nets/weights/region_selector.pt``, card
``nets/weights/region_selector.md``), trained by
``python -m training region-selector`` run from the repository root.
See docs/methods/region-selector.md for the method.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

from .shipped_weights import load_shipped_model

WEIGHTS_FILE = "region_selector.pt"
"""Shipped weights of :class:`RegionSelectorNet`, in ``napari_deblur/engine/nets/weights/``."""

RETRAIN_COMMAND = "python -m training region-selector"
"""Command that retrains :data:`WEIGHTS_FILE`, run from the repository root."""

TRAINING_WINDOW = 192
"""Side (px) of the windows the network is trained on."""

WIDTHS = (24, 32, 48, 64)
"""Channels of :class:`RegionSelectorNet` at 1/2, 1/4, 1/8 and 1/16 resolution."""


def _block(in_channels: int, out_channels: int, kernel: int = 3, stride: int = 2) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class RegionSelectorNet(nn.Module):
    """Binary CNN: normalised grey window ``(B, 1, H, W)`` -> logit ``(B,)`` of "good window".

    Parameters
    ----------
    widths : tuple of 4 int
        Channels at 1/2, 1/4, 1/8 and 1/16 resolution.

    Notes
    -----
    A 5x5 stride-2 convolution, three 3x3 stride-2 convolutions (no pooling:
    strided convolutions keep the network sensitive to where structures sit
    in the window), a 3x3 convolution at 1/16 resolution, a global average
    and a linear layer; about 86 000 parameters. ``H`` and ``W`` should be
    multiples of 16 (:data:`TRAINING_WINDOW` in training). The input is made
    by :func:`~napari_deblur.engine.methods.region_selector.window_features`;
    the output is on its device.
    """

    def __init__(self, widths=WIDTHS):
        super().__init__()
        w0, w1, w2, w3 = widths
        self.features = nn.Sequential(
            _block(1, w0, kernel=5),
            _block(w0, w1),
            _block(w1, w2),
            _block(w2, w3),
            _block(w3, w3, stride=1),
        )
        self.classifier = nn.Linear(w3, 1)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        pooled = self.features(windows).mean(dim=(-2, -1))
        return self.classifier(pooled)[:, 0]


@lru_cache(maxsize=4)
def load_region_selector_net(device: torch.device) -> RegionSelectorNet:
    """The shipped :class:`RegionSelectorNet` on ``device``, in eval mode, channels-last (loaded once per device).

    Raises
    ------
    FileNotFoundError
        If the weights file is missing from the installed package.
    """
    return load_shipped_model(RegionSelectorNet(), WEIGHTS_FILE, device, RETRAIN_COMMAND)
