"""Baseline blur-map networks the benchmarks compare the shipped estimator with.

Neither ships with napari-deblur. Their weights and cards live in
``training/weights/``:

- ``blur_map_paper.pt``: :class:`PaperBlurNet`, the network of Nasonov, Krylov
  & Lyukov, trained on the shipped blur map's data
  (``python -m training blurmap --baseline``).
- ``gwis_level.pt``: :class:`~napari_deblur.engine.methods.blur_map.BlurMapNet`
  fine-tuned on the GWIS level that sharpens each pixel best
  (``python -m training gwis-level``). It beats the physical map on held-out
  crops of the training sources but not on the evaluation images, so the
  product's GWIS path uses the physical map.

Run either with ``iter_estimate_blur_map(image, network=..., views=...)``
(:data:`PAPER_VIEWS`, :data:`GWIS_LEVEL_VIEWS`).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from napari_deblur.engine.methods.blur_map import MAP_VIEWS, BlurMapNet

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
"""Folder of the baselines' weights and cards."""

PAPER_WEIGHTS_FILE = "blur_map_paper.pt"
"""Weights of :class:`PaperBlurNet` trained on the blur map's data."""

GWIS_WEIGHTS_FILE = "gwis_level.pt"
"""Weights of :class:`BlurMapNet` fine-tuned on GWIS labels."""

PAPER_RETRAIN_COMMAND = "python -m training blurmap --baseline"
GWIS_RETRAIN_COMMAND = "python -m training gwis-level"

PAPER_VIEWS = 1
"""The paper's network runs once, in float32, as the paper has it."""

GWIS_LEVEL_VIEWS = MAP_VIEWS
"""The GWIS-tuned network runs on the same views as the shipped map."""

INITIAL_TARGET = 1.5
"""Initial bias of :class:`PaperBlurNet`'s output: about the mean training target."""


class PaperBlurNet(nn.Module):
    """The network of Nasonov, Krylov & Lyukov (section 4.1), run densely.

    Conv 5x5x32, conv 5x5x32, 2x2 max-pooling, conv 11x11x64, conv 1x1x17,
    conv 1x1x1, each convolution with a bias and a ReLU: a 31x31 receptive
    field mapped to one value. Here it is applied to a whole plane with
    "same" zero padding, so its output is at 1/2 resolution
    (:attr:`output_stride`). Its input is the normalised image (channel 0 of
    :func:`~napari_deblur.engine.methods.blur_map.blur_map_features`); its output is
    the same ``log(1 + level / LEVEL_OFFSET)`` target, which is >= 0 as the
    final ReLU requires.

    References
    ----------
    A. Nasonov, A. Krylov, D. Lyukov, "Image sharpening with blur map
    estimation using convolutional neural network", ISPRS Archives
    XLII-2/W12, 2019.
    """

    output_stride = 2

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 11, padding=5),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 17, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(17, 1, 1),
            nn.ReLU(inplace=True),
        )
        # Start the last two layers in their active range: with default initialisation the
        # final ReLU can output 0 everywhere from the first steps on (no gradient: a dead net).
        nn.init.constant_(self.layers[-4].bias, 0.1)
        nn.init.constant_(self.layers[-2].bias, INITIAL_TARGET)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features[:, :1])


def load_weights(model: nn.Module, path: Path, retrain_command: str) -> nn.Module:
    """Load ``path`` into ``model`` strictly (tensors only); the model in eval mode on the CPU.

    Raises
    ------
    FileNotFoundError
        When ``path`` is missing, naming ``retrain_command``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No weights at {path}; make them with `{retrain_command}`.")
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model.eval()


@lru_cache(maxsize=1)
def load_paper_blur_net() -> PaperBlurNet:
    """:class:`PaperBlurNet` with the weights of ``training/weights/blur_map_paper.pt``."""
    return load_weights(PaperBlurNet(), WEIGHTS_DIR / PAPER_WEIGHTS_FILE, PAPER_RETRAIN_COMMAND)


@lru_cache(maxsize=1)
def load_gwis_level_net() -> BlurMapNet:
    """:class:`BlurMapNet` with the GWIS-tuned weights of ``training/weights/gwis_level.pt``."""
    return load_weights(BlurMapNet(), WEIGHTS_DIR / GWIS_WEIGHTS_FILE, GWIS_RETRAIN_COMMAND)
