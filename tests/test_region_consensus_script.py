"""The whole-crop likelihood of scripts/region_consensus_check.py (no estimation run), and the
train-split subset its texture-only draw uses."""

import numpy as np
import pytest
from scipy.signal import fftconvolve

from napari_deblur.engine import gaussian_psf, random_motion_psf
from napari_deblur.engine.training.sources import dead_leaves, train_split_images


@pytest.fixture(scope="module")
def check(load_script):
    return load_script("region_consensus_check")


def blurred_crop(kernel: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sharp = dead_leaves(160 + kernel.shape[0] - 1, rng)
    blurred = fftconvolve(sharp, kernel, mode="valid")
    return (blurred + rng.normal(0.0, 0.01, blurred.shape)).astype(np.float32)


def embedded(kernel: np.ndarray, size: int = 31) -> np.ndarray:
    out = np.zeros((size, size))
    top = (size - kernel.shape[0]) // 2
    out[top:top + kernel.shape[0], top:top + kernel.shape[1]] = kernel
    return out


@pytest.mark.parametrize("kind", ["gaussian", "shake"])
def test_the_true_kernel_explains_the_crop_best(check, kind):
    rng = np.random.default_rng(1)
    true = gaussian_psf(2.0, size=15) if kind == "gaussian" else random_motion_psf(15, rng=rng)
    point = np.zeros((15, 15))
    point[7, 7] = 1.0
    candidates = [true, point, gaussian_psf(4.0, size=31), np.rot90(true) if kind == "shake"
                  else gaussian_psf(1.0, size=15)]
    nll = check.negative_log_likelihood(blurred_crop(true), np.stack([embedded(k) for k in candidates]))
    assert np.all(np.isfinite(nll))
    assert nll[0] < nll[1:].min(), nll


def test_a_shifted_kernel_is_as_likely(check):
    """The likelihood sees only |K(f)|: the kernel's position in its box does not matter."""
    true = gaussian_psf(2.0, size=15)
    shifted = np.roll(embedded(true), (3, -2), axis=(0, 1))
    nll = check.negative_log_likelihood(blurred_crop(true), np.stack([embedded(true), shifted]))
    assert nll[0] == pytest.approx(nll[1], rel=1e-9)


def test_train_split_subsets_refuse_other_images():
    with pytest.raises(ValueError, match="not train-split images"):
        train_split_images(names=("grass", "camera"))
    grass_and_gravel = train_split_images(names=("grass", "gravel"))
    assert len(grass_and_gravel) <= 2 and all(image.ndim == 2 for image in grass_and_gravel)
