"""The 3D Wiener-net network and its shipped weights.

:class:`WienerNet3D` fuses classical 3D deconvolutions of a volume (a 3D
Wiener stack and Richardson-Lucy estimates at several iteration counts) into
one restored volume; :func:`load_wiener_net_3d` loads the shipped weights
(``nets/weights/wiener_net_3d.pt``, card ``nets/weights/wiener_net_3d.md``),
trained by ``python -m training wiener-net-3d`` run from the repository root.
See docs/methods/wiener-net-3d.md for the method.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from .shipped_weights import load_shipped_model

WEIGHTS_FILE = "wiener_net_3d.pt"
"""Shipped weights, in ``napari_deblur/engine/nets/weights/``."""

RETRAIN_COMMAND = "python -m training wiener-net-3d"
"""Command that retrains :data:`WEIGHTS_FILE`, run from the repository root."""

WIDTHS = (16, 32, 64)
"""Channels of the three U-Net levels (full, 1/2 and 1/4 resolution in z, y and x)."""

SIZE_MULTIPLE = 4
"""Network inputs are padded to a multiple of this many voxels in z, y and x (two stride-2 levels)."""


def _conv(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv3d:
    return nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1)


def _block(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        _conv(in_channels, out_channels, stride),
        nn.ReLU(inplace=True),
        _conv(out_channels, out_channels),
        nn.ReLU(inplace=True),
    )


class WienerNet3D(nn.Module):
    """Compact 3D U-Net that blends candidate deconvolutions per voxel and corrects the blend.

    Parameters
    ----------
    n_candidates : int
        Candidate volumes in the input; the input has ``n_candidates + 1``
        channels (the candidates, then a constant noise-level channel).
    widths : tuple of int
        Channels per level.

    Notes
    -----
    Input ``(B, n_candidates + 1, Z, H, W)`` float32 with ``Z, H, W``
    multiples of :data:`SIZE_MULTIPLE`, as made by
    :func:`~napari_deblur.engine.methods.wiener_net_3d.wiener_net_3d_features`;
    output ``(B, 1, Z, H, W)`` in the candidates' normalised units. The last
    layer gives, at every voxel, softmax weights over the candidates (so the
    blend stays within their range) and a residual added to the blend. The
    convolutions see ``asinh`` of the input (bright peaks compressed); the
    blend uses the candidates as they are.
    """

    def __init__(self, n_candidates: int, widths=WIDTHS):
        super().__init__()
        self.n_candidates = n_candidates
        self.encoders = nn.ModuleList()
        in_channels = n_candidates + 1
        for level, width in enumerate(widths):
            self.encoders.append(_block(in_channels, width, 1 if level == 0 else 2))
            in_channels = width
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in range(len(widths) - 1, 0, -1):
            self.upsamplers.append(_conv(widths[level], widths[level - 1]))
            self.decoders.append(_block(2 * widths[level - 1], widths[level - 1]))
        self.head = nn.Conv3d(widths[0], n_candidates + 1, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        skips = []
        x = torch.asinh(features)  # candidates' bright peaks compressed for the convolutions
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
        for upsampler, decoder, skip in zip(
            self.upsamplers, self.decoders, reversed(skips[:-1]), strict=True
        ):
            x = upsampler(F.interpolate(x, size=skip.shape[-3:], mode="nearest"))
            x = decoder(torch.cat([x, skip], dim=1))
        head = self.head(x).float()
        candidates = features[:, : self.n_candidates].float()
        weights = torch.softmax(head[:, : self.n_candidates], dim=1)
        return (weights * candidates).sum(dim=1, keepdim=True) + head[:, self.n_candidates :]


@lru_cache(maxsize=4)
def load_wiener_net_3d(device: torch.device, n_candidates: int) -> WienerNet3D:
    """The shipped :class:`WienerNet3D` on ``device``, in eval mode (loaded once per device).

    Raises
    ------
    FileNotFoundError
        If the weights file is missing from the installed package.
    """
    return load_shipped_model(
        WienerNet3D(n_candidates),
        WEIGHTS_FILE,
        device,
        RETRAIN_COMMAND,
        memory_format=torch.contiguous_format,
    )
