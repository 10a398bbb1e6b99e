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


def test_procedural_sources_are_repeatable_and_of_each_kind(check):
    first = check.procedural_sources(96, seed=3)
    again = check.procedural_sources(96, seed=3)
    per_kind = check.PROCEDURAL_PER_KIND
    assert len(first) == per_kind * len(check.PROCEDURAL_KINDS)
    assert all(image.shape == (96, 96) and image.min() >= 0 and image.max() <= 1 for image in first)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    text, points, textures = first[:per_kind], first[per_kind:2 * per_kind], first[2 * per_kind:]
    assert all(np.median(page) in (0.0, 1.0) for page in text)  # mostly bare paper
    assert all(np.median(field) < 0.1 for field in points)  # sparse spots on a dark background
    assert all(0.0 < np.median(texture) < 1.0 for texture in textures)


def test_cases_from_given_sources_blur_them_with_real_boundaries(load_script):
    make_cases = load_script("blind_psf_heldout_check").make_cases
    rng = np.random.default_rng(5)
    sources = [dead_leaves(130, rng) for _ in range(2)]
    cases = make_cases("gaussian", 64, seed=9, sources=sources, per_image=3)
    assert [case[0] for case in cases] == [0, 0, 0, 1, 1, 1]
    for index, blurred, kernel, sharp in cases:
        assert blurred.shape == sharp.shape == (64, 64)
        # The sharp crop is a piece of its source, and blurring that piece's surroundings gives the crop.
        image = sources[index]
        windows = np.lib.stride_tricks.sliding_window_view(image, sharp.shape)
        top, left = np.argwhere((windows == sharp).all(axis=(2, 3)))[0]
        half = kernel.shape[0] // 2
        around = image[top - half:top + 64 + half, left - half:left + 64 + half]
        assert np.abs(fftconvolve(around, kernel, mode="valid") - blurred).max() < 0.05  # noise 0.01


def test_saved_estimates_keep_every_window(check, tmp_path):
    kernel = gaussian_psf(1.5, size=9)
    blurred = blurred_crop(kernel)
    case = {"regions": [None, (0, 0, 96, 96), (48, 48, 96, 96)], "scores": np.array([np.nan, 0.2, 0.7]),
            "ratios": np.array([1.5, 4.0, 1.2]), "similarity": np.eye(3), "nll": np.array([1.0, 2.0, 0.5]),
            "estimates": np.stack([embedded(kernel)] * 3)}
    check.save_estimates(tmp_path / "cases.npz", [(0, blurred, kernel, blurred)], [case])
    saved = np.load(tmp_path / "cases.npz")
    assert saved["0_regions"].tolist() == [[-1, -1, -1, -1], [0, 0, 96, 96], [48, 48, 96, 96]]
    np.testing.assert_array_equal(saved["0_ratios"], case["ratios"])
    np.testing.assert_array_equal(saved["0_estimates"], case["estimates"])
    np.testing.assert_array_equal(saved["0_blurred"], blurred)
    np.testing.assert_array_equal(saved["0_kernel"], kernel)
