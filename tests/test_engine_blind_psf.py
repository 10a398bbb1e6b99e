"""Blind PSF estimation and kernel similarity: recovery, contract, regions, bad input.

Sharp images come from the train split only (``TRAIN_SPLIT``); the blur is a
'valid' convolution (content beyond the frame bleeds in, as in a camera) with
1 % Gaussian noise. Thresholds sit well below what the estimator measures
(0.82-0.99 kernel similarity on these cases), and well above the delta and
wrong-direction baselines (at most 0.52).
"""

import numpy as np
import pytest
import torch
from scipy.signal import fftconvolve
from skimage import data

from napari_deblur.engine import (
    estimate_psf,
    gaussian_psf,
    kernel_similarity,
    motion_psf,
    random_motion_psf,
)
from training.sources import EVAL_SPLIT, TRAIN_SPLIT, grey_float

SIZE = 15
WINDOW = 160
NOISE = 0.01
DELTA = gaussian_psf(0.0, SIZE)
TRUE_KERNELS = {
    "line": motion_psf(11, 30, SIZE),
    "shake": random_motion_psf(SIZE, 5),
    "gaussian": gaussian_psf(2.0, SIZE),
}
WRONG_DIRECTION = motion_psf(11, 120, SIZE)


def train_image(name):
    assert name in TRAIN_SPLIT and name not in EVAL_SPLIT
    return grey_float(getattr(data, name)())


def camera_blur(sharp, kernel, seed=0):
    """'Valid' convolution plus 1 % noise: a WINDOW x WINDOW blurred image."""
    blurred = fftconvolve(sharp, kernel, mode="valid")
    noise = np.random.default_rng(seed).normal(0.0, NOISE, blurred.shape)
    return (blurred + noise).astype(np.float32)


def crop(image, y, x, size=WINDOW + SIZE - 1):
    return image[y : y + size, x : x + size]


@pytest.fixture(scope="session")
def astronaut():
    return train_image("astronaut")


@pytest.fixture(scope="session")
def blurred_line(astronaut):
    return camera_blur(crop(astronaut, 20, 140), TRUE_KERNELS["line"])


@pytest.fixture(scope="session")
def estimate_line(blurred_line):
    return estimate_psf(blurred_line, size=SIZE)


# --- kernel similarity ----------------------------------------------------------------


def test_similarity_of_a_kernel_with_itself_is_one():
    for kernel in TRUE_KERNELS.values():
        assert kernel_similarity(kernel, kernel) == pytest.approx(1.0, abs=1e-9)


def test_similarity_ignores_shifts_scale_and_padding():
    kernel = TRUE_KERNELS["shake"]
    shifted = np.zeros((SIZE + 10, SIZE + 6), np.float32)
    shifted[7 : 7 + SIZE, 2 : 2 + SIZE] = 3.5 * kernel
    assert kernel_similarity(shifted, kernel) == pytest.approx(1.0, abs=1e-6)
    assert kernel_similarity(kernel, shifted) == pytest.approx(1.0, abs=1e-6)


def test_similarity_is_symmetric_and_below_one_for_different_kernels():
    a, b = TRUE_KERNELS["line"], TRUE_KERNELS["gaussian"]
    ab, ba = kernel_similarity(a, b), kernel_similarity(b, a)
    assert ab == pytest.approx(ba, abs=1e-9)
    assert 0.0 <= ab < 0.9
    assert kernel_similarity(a, WRONG_DIRECTION) < 0.3
    small = motion_psf(5, 0, 7)  # different sizes are fine
    assert 0.0 < kernel_similarity(small, a) < 1.0


def test_similarity_returns_a_python_float():
    assert isinstance(kernel_similarity(DELTA, DELTA), float)


@pytest.mark.parametrize(
    ("estimate", "match"),
    [
        (np.zeros((5, 5)), "all zeros"),
        (np.ones(5), "at least 2 dimensions"),
        (np.ones((2, 5, 5)), "2D kernel"),
        (np.full((5, 5), np.nan), "NaN"),
        (np.ones((5, 5), complex), "complex"),
        (np.ones((0, 5)), "empty"),
    ],
)
def test_similarity_rejects_bad_kernels(estimate, match):
    with pytest.raises(ValueError, match=match):
        kernel_similarity(estimate, DELTA)
    with pytest.raises(ValueError, match=match):
        kernel_similarity(DELTA, estimate)


# --- estimation quality ---------------------------------------------------------------


def test_estimate_recovers_a_linear_motion(estimate_line):
    truth = TRUE_KERNELS["line"]
    score = kernel_similarity(estimate_line, truth)
    assert score >= 0.7
    assert score > kernel_similarity(DELTA, truth) + 0.25
    assert score > kernel_similarity(WRONG_DIRECTION, truth) + 0.4


@pytest.mark.parametrize(
    ("image_name", "y", "x", "kernel_name"),
    [("coffee", 100, 200, "shake"), ("coins", 100, 100, "gaussian"), ("astronaut", 40, 40, "shake")],
)
def test_estimate_recovers_shake_and_gaussian_blur(image_name, y, x, kernel_name):
    truth = TRUE_KERNELS[kernel_name]
    blurred = camera_blur(crop(train_image(image_name), y, x), truth)
    score = kernel_similarity(estimate_psf(blurred, size=SIZE), truth)
    assert score >= 0.65
    assert score > kernel_similarity(DELTA, truth) + 0.25
    assert score > kernel_similarity(WRONG_DIRECTION, truth) + 0.15


@pytest.mark.parametrize(
    ("image_name", "y", "x", "seed"), [("coffee", 100, 200, 2), ("astronaut", 40, 40, 2)]
)
def test_automatic_size_finds_a_hand_shake_kernel_and_returns_its_support(image_name, y, x, seed):
    """size=None: no size given; measured 0.84 and 0.93 similarity, 19 px boxes, for a 21 px kernel."""
    from training.kernels import hand_shake_psf

    truth = hand_shake_psf(21, np.random.default_rng(seed))
    sharp = train_image(image_name)[y : y + 276, x : x + 276]
    estimate = estimate_psf(camera_blur(sharp, truth))
    assert estimate.shape[0] == estimate.shape[1] and estimate.shape[0] % 2 == 1
    assert 9 <= estimate.shape[0] <= 31  # the support, not the 75 px search bound
    assert kernel_similarity(estimate, truth) >= 0.75
    assert estimate.sum() == pytest.approx(1.0, abs=1e-5)
    assert estimate.min() >= 0.0


def test_sharpening_moves_a_thickened_path_back_onto_the_path():
    """A thin path blurred into a band comes closer to the path when raised to a power > 1."""
    from napari_deblur.engine.methods.blind_psf import sharpen_kernel

    path = TRUE_KERNELS["line"].astype(np.float64)
    band = fftconvolve(path, gaussian_psf(1.2, 7), mode="same")
    sharpened = sharpen_kernel(band, 1.5)
    assert kernel_similarity(sharpened, path) > kernel_similarity(band, path) + 0.01
    assert sharpened.sum() == pytest.approx(1.0)
    assert sharpened.min() >= 0.0
    rows, cols = np.indices(sharpened.shape)
    assert abs((sharpened * rows).sum() - SIZE // 2) <= 0.5 + 1e-9
    assert abs((sharpened * cols).sum() - SIZE // 2) <= 0.5 + 1e-9


def test_sharpening_with_power_one_is_the_identity_and_bad_powers_are_refused():
    from napari_deblur.engine.methods.blind_psf import sharpen_kernel

    band = fftconvolve(TRUE_KERNELS["shake"], gaussian_psf(1.0, 5), mode="same")
    np.testing.assert_array_equal(sharpen_kernel(band, 1.0), band)
    for power in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="power must be positive"):
            sharpen_kernel(band, power)


def test_kernel_clean_up_removes_values_within_the_raw_kernels_noise():
    """Positive values no larger than half the depth of the raw kernel's negative lobes are noise
    and go; a faint tail above that stays (it would go with a cut at 10 % of the peak)."""
    from napari_deblur.engine.methods.blind_psf import clean_kernel

    raw = np.zeros((9, 9))
    raw[4, 2:7] = 1.0  # the path
    raw[4, 7] = 0.06  # a faint, real tail joined to it
    raw[4, 1] = 0.015  # noise below the floor, joined too
    raw[0, 0] = -0.04  # the deepest negative lobe: the floor is 0.5 * 0.04 = 0.02
    kept = clean_kernel(raw, faint=0.0, negative_floor=0.5)
    assert kept[4, 7] > 0 and kept[4, 1] == 0 and kept.min() >= 0
    assert kept.sum() == pytest.approx(1.0)
    assert clean_kernel(raw, faint=0.0, negative_floor=0.0)[4, 1] > 0  # 0 turns the floor off
    assert clean_kernel(raw, faint=0.1, negative_floor=0.5)[4, 7] == 0


# --- output contract ------------------------------------------------------------------


def test_output_is_a_centred_float32_kernel_summing_to_one(estimate_line):
    kernel = estimate_line
    assert kernel.shape == (SIZE, SIZE)
    assert kernel.dtype == np.float32
    assert kernel.min() >= 0.0
    assert kernel.sum() == pytest.approx(1.0, abs=1e-5)
    rows, cols = np.indices(kernel.shape)
    assert abs((kernel * rows).sum() - SIZE // 2) <= 0.5 + 1e-6
    assert abs((kernel * cols).sum() - SIZE // 2) <= 0.5 + 1e-6


def test_input_is_not_modified_and_read_only_input_works(blurred_line, estimate_line):
    image = blurred_line.copy()
    image.setflags(write=False)
    again = estimate_psf(image, size=SIZE)  # the fixture's device: on a GPU machine, the GPU
    np.testing.assert_array_equal(image, blurred_line)
    np.testing.assert_allclose(again, estimate_line, atol=1e-6)  # deterministic


def test_intensity_scale_and_dtype_do_not_matter(blurred_line, estimate_line):
    as_uint16 = np.round(np.clip(blurred_line, 0, 1) * 65535).astype(np.uint16)
    assert kernel_similarity(estimate_psf(as_uint16, size=SIZE), estimate_line) > 0.95


def test_colour_images_use_their_luminance(astronaut):
    truth = TRUE_KERNELS["line"]
    rgb = data.astronaut()[20 : 20 + WINDOW + SIZE - 1, 140 : 140 + WINDOW + SIZE - 1] / 255.0
    blurred = np.stack([camera_blur(rgb[..., c], truth, seed=c) for c in range(3)], axis=-1)
    automatic = estimate_psf(blurred, size=SIZE)  # trailing RGB axis found by itself
    explicit = estimate_psf(np.moveaxis(blurred, -1, 0), size=SIZE, channel_axis=0)
    assert automatic.shape == (SIZE, SIZE)
    np.testing.assert_allclose(automatic, explicit, atol=1e-6)
    assert kernel_similarity(automatic, truth) >= 0.7


# --- regions --------------------------------------------------------------------------


def test_region_restricts_the_estimate(astronaut):
    truth = TRUE_KERNELS["line"]
    textured = camera_blur(crop(astronaut, 20, 140), truth)
    flat = np.full_like(textured, 0.5) + np.random.default_rng(1).normal(0, NOISE, textured.shape)
    image = np.concatenate([textured, flat.astype(np.float32)], axis=1)  # (160, 320)
    on_texture = estimate_psf(image, size=SIZE, region=(0, 0, WINDOW, WINDOW))
    on_flat = estimate_psf(image, size=SIZE, region=(0, WINDOW, WINDOW, WINDOW))
    for kernel in (on_texture, on_flat):
        assert kernel.shape == (SIZE, SIZE) and kernel.min() >= 0
        assert kernel.sum() == pytest.approx(1.0, abs=1e-5)
    assert kernel_similarity(on_texture, truth) >= 0.7
    assert kernel_similarity(on_flat, truth) < kernel_similarity(on_texture, truth) - 0.2


def test_region_equals_estimating_the_crop(blurred_line):
    padded = np.pad(blurred_line, ((5, 9), (12, 3)), mode="reflect")
    from_region = estimate_psf(padded, size=SIZE, region=(5, 12, WINDOW, WINDOW))
    np.testing.assert_allclose(from_region, estimate_psf(blurred_line, size=SIZE), atol=1e-6)


# --- bad input ------------------------------------------------------------------------


IMAGE = np.random.default_rng(0).random((64, 64)).astype(np.float32)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"size": 14}, ValueError, "odd integer >= 3"),
        ({"size": 1}, ValueError, "odd integer >= 3"),
        ({"size": -5}, ValueError, "odd integer >= 3"),
        ({"size": 15.0}, TypeError, "odd integer"),
        ({"size": 33}, ValueError, "too small.*at least 2 kernel sides"),
        ({"region": (0, 0, 20, 64)}, ValueError, "too small"),
        ({"region": (40, 0, 40, 40)}, ValueError, "not inside"),
        ({"region": (-1, 0, 40, 40)}, ValueError, "not inside"),
        ({"region": (0, 0, 0, 40)}, ValueError, "positive"),
        ({"region": (0, 0, 40)}, ValueError, "4 numbers"),
        ({"region": (0, 0, 40.5, 40)}, ValueError, "whole pixel"),
        ({"region": "all"}, TypeError, "region"),
        ({"device": "tpu"}, ValueError, "device"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    arguments = {"size": 15} | kwargs
    with pytest.raises(error, match=match):
        estimate_psf(IMAGE, **arguments)


@pytest.mark.parametrize(
    ("image", "error", "match"),
    [
        (np.zeros((0, 64)), ValueError, "empty"),
        (np.where(IMAGE > 0.5, np.nan, IMAGE), ValueError, "NaN"),
        (IMAGE.astype(complex), ValueError, "complex"),
        (np.array([["a"] * 64] * 64), TypeError, "number type"),
        (None, TypeError, "None"),
        (IMAGE[0], ValueError, "at least 2 dimensions"),
        (np.stack([IMAGE] * 5), ValueError, "one 2D plane"),
        (np.zeros((2, 3, 64, 64, 3)), ValueError, "one 2D plane"),
        (np.zeros((2, 64, 64)), ValueError, "one 2D plane"),
    ],
)
def test_bad_images_raise_clear_errors(image, error, match):
    with pytest.raises(error, match=match):
        estimate_psf(image, size=15)


def test_several_planes_with_a_channel_axis_are_refused():
    with pytest.raises(ValueError, match="one plane"):
        estimate_psf(np.zeros((2, 64, 64, 3)), size=15, channel_axis=-1)


def test_torch_thread_setting_is_restored(blurred_line):
    before = torch.get_num_threads()
    estimate_psf(blurred_line[:64, :64], size=15, device="cpu")
    assert torch.get_num_threads() == before


def test_flat_image_gives_a_valid_kernel():
    kernel = estimate_psf(np.full((64, 64), 7, np.uint8), size=15)
    assert kernel.shape == (15, 15) and kernel.min() >= 0
    assert kernel.sum() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_agrees_with_cpu(blurred_line, estimate_line):
    on_gpu = estimate_psf(blurred_line, size=SIZE, device="cuda")
    assert kernel_similarity(on_gpu, estimate_line) > 0.95


def test_estimator_settings_are_explicit_and_default_to_the_shipped_ones(blurred_line, estimate_line):
    import dataclasses

    from napari_deblur.engine.methods import blind_psf

    assert blind_psf.EstimatorSettings() == blind_psf.SHIPPED_SETTINGS
    with pytest.raises(dataclasses.FrozenInstanceError):
        blind_psf.SHIPPED_SETTINGS.kernel_faint = 0.5
    raw = estimate_psf(
        blurred_line, size=SIZE, device="cpu", settings=blind_psf.EstimatorSettings(sharpening_power=1.0)
    )
    np.testing.assert_allclose(
        blind_psf.sharpen_kernel(raw, blind_psf.KERNEL_SHARPENING_POWER), estimate_line, atol=1e-6
    )
