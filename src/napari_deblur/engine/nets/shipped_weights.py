"""Loading the learned models' weights shipped in ``napari_deblur/engine/nets/weights/``."""

from __future__ import annotations

from importlib import resources

import torch
from torch import nn


def load_shipped_model(
    model: nn.Module,
    filename: str,
    device: torch.device,
    retrain_command: str,
    memory_format: torch.memory_format = torch.channels_last,
) -> nn.Module:
    """Load ``nets/weights/filename`` into ``model`` (strictly, tensors only) and ready it on ``device``.

    Returns the model in eval mode, in ``memory_format``: channels-last by
    default (several times faster 2D convolutions than NCHW on the CPU here);
    3D networks pass ``torch.contiguous_format``. Raises FileNotFoundError naming
    ``retrain_command`` when the file is missing from the installed package.
    """
    weights = resources.files("napari_deblur.engine.nets").joinpath("weights", filename)
    with resources.as_file(weights) as path:
        if not path.is_file():
            raise FileNotFoundError(
                f"The weights file {filename} is missing from the package; reinstall napari-deblur "
                f"or retrain with `{retrain_command}`."
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.to(device, memory_format=memory_format).eval()
