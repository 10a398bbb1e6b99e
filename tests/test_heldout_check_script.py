"""The wrong kernels of scripts/wiener_net_heldout_check.py (a measurement tool the notes rely on)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_deblur.engine.psf import random_motion_psf

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "wiener_net_heldout_check.py"


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("wiener_net_heldout_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def kernels():
    from napari_deblur.engine.training.kernels import embed

    rng = np.random.default_rng(0)
    return torch.from_numpy(np.stack([embed(random_motion_psf(11, rng=rng), 31) for _ in range(3)]))


def second_moment(k: torch.Tensor) -> torch.Tensor:
    """Variance of each kernel's mass along rows plus along columns (px^2)."""
    coords = torch.arange(k.shape[-1], dtype=k.dtype)
    total = 0
    for axis in (-1, -2):
        marginal = k.sum(dim=axis)
        mean = (marginal * coords).sum(-1, keepdim=True)
        total = total + (marginal * (coords - mean) ** 2).sum(-1)
    return total


def test_no_error_returns_the_kernels(check, kernels):
    assert check.wrong_kernels(kernels, None) is kernels


def test_wide_adds_the_gaussian_variance(check, kernels):
    wide = check.wrong_kernels(kernels, "wide")
    assert wide.shape == kernels.shape
    torch.testing.assert_close(wide.sum(dim=(-2, -1)), torch.ones(3, dtype=wide.dtype))
    assert bool((wide >= 0).all())
    # Convolution adds variances: 2 axes x 0.8^2 (the 7-tap Gaussian is truncated a little).
    added = second_moment(wide) - second_moment(kernels)
    torch.testing.assert_close(added, torch.full_like(added, 2 * check.WIDE_KERNEL_SIGMA ** 2),
                               atol=0.05, rtol=0)


def test_tails_cut_drops_faint_values(check, kernels):
    cut = check.wrong_kernels(kernels, "tails-cut")
    torch.testing.assert_close(cut.sum(dim=(-2, -1)), torch.ones(3, dtype=cut.dtype))
    faint = kernels < check.TAIL_FRACTION * kernels.amax(dim=(-2, -1), keepdim=True)
    assert bool((cut[faint] == 0).all())
    assert bool((cut[~faint] > kernels[~faint]).all())  # the rest renormalised upwards


def test_unknown_error_is_refused(check, kernels):
    with pytest.raises(ValueError, match="kernel error"):
        check.wrong_kernels(kernels, "shifted")
