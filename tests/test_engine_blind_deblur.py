"""deblur_blind: the kernel of each plane estimated from the image, then Wiener-net with it.

Sharp images come from the train split only; 'valid' blur (real boundaries) plus 1 % noise.
"""

import numpy as np
import pytest
from scipy.signal import fftconvolve
from skimage import data

from napari_deblur.engine import (
    deblur_blind,
    estimate_psf,
    kernel_similarity,
    motion_psf,
    wiener_net_deconvolve,
)
from training.sources import TRAIN_SPLIT

SIDE = 192


def _camera_blur(sharp, kernel, seed=0):
    blurred = fftconvolve(sharp, kernel, mode="valid")
    return (blurred + np.random.default_rng(seed).normal(0.0, 0.01, blurred.shape)).astype(np.float32)


def _psnr(estimate, truth, border=16):
    core = (slice(border, -border), slice(border, -border))
    return 10 * np.log10(1.0 / np.mean((estimate[core] - truth[core]) ** 2))


def _psnr_upto_shift(estimate, truth, border=16):
    """The best PSNR over whole-pixel shifts of ``estimate`` by up to 1 px: a blind kernel, and so
    the restoration, is known only up to a shift."""
    return max(
        _psnr(np.roll(estimate, (dy, dx), axis=(0, 1)), truth, border)
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
    )


@pytest.fixture(scope="module")
def colour_case():
    assert "astronaut" in TRAIN_SPLIT
    kernel = motion_psf(11, 30, 15)
    sharp = data.astronaut()[60 : 60 + SIDE + 14, 120 : 120 + SIDE + 14].astype(np.float32) / 255.0
    blurred = np.stack([_camera_blur(sharp[..., c], kernel, c) for c in range(3)], axis=-1)
    return blurred, sharp[7:-7, 7:-7], kernel


def test_colour_photo_is_sharpened_with_one_kernel_from_its_luminance(colour_case):
    blurred, sharp, kernel = colour_case
    before = blurred.copy()
    result = deblur_blind(blurred, ensemble=1, device="cpu")
    image, psf = result  # unpacks as (image, psf)
    np.testing.assert_array_equal(blurred, before)
    assert image.shape == blurred.shape and image.dtype == np.float32
    assert psf.ndim == 2 and psf.shape[0] == psf.shape[1] and psf.shape[0] % 2 == 1
    assert psf.sum() == pytest.approx(1.0, abs=1e-5)
    # the same kernel as estimate_psf on the colour image (its luminance), and Wiener-net with it
    np.testing.assert_array_equal(psf, estimate_psf(blurred, device="cpu"))
    restored = wiener_net_deconvolve(blurred, psf, channel_axis=-1, ensemble=1, device="cpu")
    np.testing.assert_array_equal(image, restored)
    assert kernel_similarity(psf, kernel) > 0.7
    gains = [
        _psnr_upto_shift(image[..., c], sharp[..., c]) - _psnr(blurred[..., c], sharp[..., c])
        for c in range(3)
    ]
    assert min(gains) > 2.0  # measured 2.1-2.2 dB (the estimate keeps faint stray parts beside the path)


def test_each_plane_of_a_stack_gets_its_own_kernel():
    sharp = data.coffee()[100 : 100 + SIDE + 14, 200 : 200 + SIDE + 14].mean(axis=-1) / 255.0
    kernels = [motion_psf(11, 0, 15), motion_psf(11, 90, 15)]
    stack = np.stack([_camera_blur(sharp, k, n) for n, k in enumerate(kernels)])
    image, psf = deblur_blind(stack, size=15, ensemble=1, device="cpu")
    assert image.shape == stack.shape
    assert psf.shape == (2, 15, 15)
    for n in range(2):
        own = kernel_similarity(psf[n], kernels[n])
        assert own > 0.7
        assert own > kernel_similarity(psf[n], kernels[1 - n]) + 0.2


@pytest.mark.parametrize(
    ("image", "kwargs", "error", "match"),
    [
        (np.zeros((8, 8), np.float32), {}, ValueError, "too small"),
        (np.full((64, 64), np.nan, np.float32), {}, ValueError, "NaN"),
        (np.ones((64, 64), complex), {}, ValueError, "complex"),
        (np.ones((64, 64), np.float32), {"size": 4}, ValueError, "odd"),
    ],
)
def test_bad_input_raises_clear_errors(image, kwargs, error, match):
    with pytest.raises(error, match=match):
        deblur_blind(image, device="cpu", **kwargs)


# --- clipped highlights ------------------------------------------------------------------


@pytest.fixture(scope="module")
def lights_case():
    """A train-split crop with 8 small lights at 6x the range, blurred, noisy, clipped to [0, 1]."""
    from scipy import ndimage as ndi

    sharp = data.coffee()[60:360, 100:400].mean(axis=-1) / 255.0 * 0.7
    kernel = motion_psf(13, 30, 15)
    rng = np.random.default_rng(0)
    rows, cols = np.indices(sharp.shape)
    lights = np.zeros(sharp.shape, bool)
    for cy, cx in rng.integers(40, 260, (8, 2)):
        lights |= (rows - cy) ** 2 + (cols - cx) ** 2 <= 9
    scene = np.where(lights, 6.0, sharp)
    observed = fftconvolve(scene, kernel, mode="valid") + rng.normal(0.0, 0.01, (286, 286))
    truth, inner = np.clip(scene[7:-7, 7:-7], 0.0, 1.0), lights[7:-7, 7:-7]
    rings = ndi.binary_dilation(inner, iterations=12) & ~ndi.binary_dilation(inner, iterations=2)
    return np.clip(observed, 0.0, 1.0).astype(np.float32), truth, kernel, rings


def test_clipped_lights_ring_less_after_the_repair(lights_case):
    """Measured: error around the lights 0.085 -> 0.048 (mean absolute, 8 lights); elsewhere unchanged."""
    from napari_deblur.engine.methods.clipped_highlights import clipped_mask, repair_clipped

    observed, truth, kernel, rings = lights_case
    assert clipped_mask(observed) is not None
    plain = wiener_net_deconvolve(observed, kernel, ensemble=1, device="cpu")
    repaired = repair_clipped(observed, plain, kernel)
    error_plain = np.abs(np.clip(plain, 0, 1) - truth)[rings].mean()
    error_repaired = np.abs(np.clip(repaired, 0, 1) - truth)[rings].mean()
    assert error_repaired < 0.7 * error_plain
    reach = kernel.shape[0] + 1  # further than a kernel from every clipped pixel: untouched
    from scipy import ndimage as ndi

    far = ~ndi.binary_dilation(clipped_mask(observed), structure=np.ones((3, 3), bool), iterations=reach)
    np.testing.assert_array_equal(repaired[far], plain[far])


def test_an_unclipped_plane_is_left_as_it_is(lights_case):
    from napari_deblur.engine.methods.clipped_highlights import clipped_mask, repair_clipped

    observed, _, kernel, _ = lights_case
    unclipped = observed * np.float32(0.9) + np.random.default_rng(1).normal(0, 1e-3, observed.shape).astype(
        np.float32
    )
    assert clipped_mask(unclipped) is None
    restored = wiener_net_deconvolve(unclipped, kernel, ensemble=1, device="cpu")
    np.testing.assert_array_equal(repair_clipped(unclipped, restored, kernel), restored)


def test_deblur_blind_repairs_clipped_lights(lights_case):
    from napari_deblur.engine.methods.clipped_highlights import repair_clipped

    observed, _, _, _ = lights_case
    image, psf = deblur_blind(observed, ensemble=1, device="cpu")
    plain = wiener_net_deconvolve(observed, psf, ensemble=1, device="cpu")
    assert not np.array_equal(image, plain)
    np.testing.assert_array_equal(image, repair_clipped(observed, plain, psf))


def test_the_repair_in_small_tiles_matches_one_tile(lights_case, monkeypatch):
    """Tiles with two-kernel halos: measured at most 7e-4 apart (intensities in [0, 1])."""
    from napari_deblur.engine.methods import clipped_highlights

    observed, _, kernel, _ = lights_case
    restored = wiener_net_deconvolve(observed, kernel, ensemble=1, device="cpu")
    whole = clipped_highlights.repair_clipped(observed, restored, kernel)
    monkeypatch.setattr(clipped_highlights, "REPAIR_TILE", 64)
    tiled = clipped_highlights.repair_clipped(observed, restored, kernel)
    np.testing.assert_allclose(tiled, whole, atol=3e-3)
