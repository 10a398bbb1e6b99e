"""Defocus deblurring driven by a blur map (``engine.deblur_defocus``): blending, layouts, tiles, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_deblur import engine
from napari_deblur.engine.methods import defocus_deblur as dd

ROWS = slice(16, -16)


@pytest.fixture(scope="module")
def sharp() -> np.ndarray:
    """A 200x200 grey crop of astronaut (train split): face, hair and edges."""
    from skimage import data

    return data.astronaut()[40:240, 120:320].mean(axis=-1).astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def two_focus(sharp):
    """Left half blurred by a Gaussian of 1 px, right half by 3 px, 1 % noise; and that map."""
    rng = np.random.default_rng(0)
    left = engine.blur(sharp, engine.gaussian_psf(1.0))
    right = engine.blur(sharp, engine.gaussian_psf(3.0))
    levels = np.where(np.arange(sharp.shape[1])[None, :] < 100, 1.0, 3.0) * np.ones((sharp.shape[0], 1))
    levels = levels.astype(np.float32)
    observed = np.where(levels < 2, left, right) + rng.normal(0, 0.01, sharp.shape).astype(np.float32)
    return observed.astype(np.float32), levels


def _psnr(estimate, reference, cols):
    error = np.clip(estimate, 0, 1)[ROWS, cols] - reference[ROWS, cols]
    return 10 * np.log10(1.0 / np.mean(error**2))


def test_weights_interpolate_in_variance_and_sum_to_one():
    bank = torch.tensor(dd.DEFOCUS_LEVELS)
    levels = torch.tensor([[0.0, 0.5, 0.75, 1.0], [2.2, 6.5, 8.0, 12.0]])
    weights = dd.level_weights(levels, bank)
    assert weights.shape == (len(bank), 2, 4)
    torch.testing.assert_close(weights.sum(dim=0), torch.ones(2, 4))
    assert weights[0, 0, 0] == 1 and weights[1, 0, 1] == 1 and weights[2, 0, 3] == 1  # on the bank
    # 0.75 px between 0.5 and 1.0: (0.75^2 - 0.5^2) / (1 - 0.5^2) of the upper level.
    assert float(weights[2, 0, 2]) == pytest.approx((0.5625 - 0.25) / 0.75)
    assert float(weights[1, 0, 2]) == pytest.approx(1 - (0.5625 - 0.25) / 0.75)
    assert ((weights > 0).sum(dim=0) <= 2).all()
    assert weights[-1, 1, 2] == 1 and weights[-1, 1, 3] == 1  # at and above the last level


def test_each_pixel_takes_the_smallest_level_near_it():
    levels = torch.full((40, 60), 1.0)
    levels[:, 30:] = 3.0
    levels[5, 50] = 0.2
    safe = dd.safe_levels(levels)
    half = dd.SAFE_LEVEL_WINDOW // 2
    assert (safe[:, : 30 + half] == 1.0).all() and (safe[15:, 30 + half :] == 3.0).all()
    assert (safe[: 6 + half, 50 - half : 51 + half] == 0.2).all()  # a lone low level spreads over the window
    assert safe.shape == levels.shape and (safe <= levels).all()
    noisy = torch.rand(37, 53, generator=torch.Generator().manual_seed(0)) * 6
    padded = torch.nn.functional.pad(-noisy[None, None], (half,) * 4, mode="replicate")
    square = -torch.nn.functional.max_pool2d(padded, dd.SAFE_LEVEL_WINDOW, stride=1)[0, 0]
    assert torch.equal(dd.safe_levels(noisy), square)  # the minimum over the whole square window


def test_the_true_map_restores_both_halves_where_no_constant_kernel_does(sharp, two_focus):
    observed, levels = two_focus
    left, right = slice(16, 84), slice(116, 184)
    by_map = engine.deblur_defocus(observed, levels, ensemble=1)
    small = engine.deblur_defocus(observed, 1.0, ensemble=1)
    large = engine.deblur_defocus(observed, 3.0, ensemble=1)
    # Measured: blurred 29.1 / 22.5 dB; map 33.3 / 26.8; constant 1 px 33.2 / 22.9; constant 3 px 13.5 / 26.6.
    assert _psnr(by_map, sharp, left) > _psnr(observed, sharp, left) + 3.0
    assert _psnr(by_map, sharp, right) > _psnr(observed, sharp, right) + 3.0
    assert _psnr(by_map, sharp, left) > _psnr(large, sharp, left) + 10.0  # 3 px rings on the sharp half
    assert _psnr(by_map, sharp, right) > _psnr(small, sharp, right) + 3.0  # 1 px leaves it soft
    assert by_map.dtype == np.float32 and by_map.shape == observed.shape


def test_a_constant_map_is_the_same_as_one_level_and_none_estimates_the_map(two_focus):
    observed = two_focus[0][:96, :120]
    constant = engine.deblur_defocus(observed, 2.2, psf_model="disk", ensemble=1)
    as_map = engine.deblur_defocus(
        observed, np.full(observed.shape, 2.2, np.float32), psf_model="disk", ensemble=1
    )
    np.testing.assert_allclose(as_map, constant, atol=1e-6)
    automatic = engine.deblur_defocus(observed, ensemble=1)
    np.testing.assert_allclose(
        automatic, engine.deblur_defocus(observed, engine.estimate_blur_map(observed), ensemble=1), atol=1e-6
    )


def test_level_zero_leaves_a_sharp_image_nearly_as_it_is(sharp):
    restored = engine.deblur_defocus(sharp, 0.0, ensemble=1)
    assert 10 * np.log10(1.0 / np.mean((restored - sharp) ** 2)) > 38.0  # measured 42.1 dB


def test_colour_channels_share_the_map_and_stacks_take_a_map_per_plane(two_focus):
    observed, levels = two_focus[0][:80, :96], two_focus[1][:80, :96]
    rgb = np.stack([observed, observed[::-1], 0.5 * observed], axis=-1)
    restored = engine.deblur_defocus(rgb, levels, channel_axis=-1, ensemble=1)
    for channel in range(3):
        # The channels go through the network as one batch; its float rounding differs from one
        # channel at a time by up to about 2e-3 (as for wiener_net_deconvolve).
        np.testing.assert_allclose(
            restored[..., channel], engine.deblur_defocus(rgb[..., channel], levels, ensemble=1), atol=5e-3
        )
    stack = np.stack([observed, observed[::-1, ::-1]])
    maps = np.stack([levels, np.full_like(levels, 0.7)])
    restored = engine.deblur_defocus(stack, maps, ensemble=1)
    for plane in range(2):
        np.testing.assert_allclose(
            restored[plane], engine.deblur_defocus(stack[plane], maps[plane], ensemble=1), atol=1e-5
        )


def test_tiles_agree_with_the_whole_plane(monkeypatch):
    from skimage import data

    rng = np.random.default_rng(1)
    image = data.astronaut()[:512, :512].mean(axis=-1).astype(np.float32) / 255.0
    levels = np.linspace(0.5, 1.0, 512, dtype=np.float32)[None, :] * np.ones((512, 1), np.float32)
    observed = engine.blur(image, engine.gaussian_psf(0.8)) + rng.normal(0, 0.01, image.shape).astype(
        np.float32
    )
    whole = engine.deblur_defocus(observed, levels, ensemble=1)
    monkeypatch.setattr(dd, "TILE_SIZE", 128)  # 4 x 4 network tiles, 2 x 2 residual tiles
    tiled = engine.deblur_defocus(observed, levels, ensemble=1)
    difference = np.abs(tiled - whole)
    # Measured: mean 0.0016, 99th percentile 0.007, largest 0.034 (a corner pixel): the residual
    # correction adapts to each tile's spectrum; the network's tiles alone differ by 1e-4 on average.
    assert difference.mean() < 0.004 and np.quantile(difference, 0.99) < 0.02 and difference.max() < 0.1


def test_a_tiled_colour_plane_is_restored_one_channel_at_a_time(two_focus, monkeypatch):
    observed, levels = two_focus
    colour = np.stack([observed, observed[::-1], 0.5 * observed], axis=-1)
    monkeypatch.setattr(dd, "TILE_SIZE", 64)
    batches = []
    blend = dd.blended_features
    monkeypatch.setattr(dd, "blended_features", lambda y, *a: batches.append(y.shape[0]) or blend(y, *a))
    restored = engine.deblur_defocus(colour, levels, ensemble=1)
    assert batches and set(batches) == {1}  # a tile holds one channel
    for channel in range(3):
        alone = engine.deblur_defocus(colour[..., channel], levels, ensemble=1)
        # A colour plane and its channel alone differ by about 1e-3 of the range (float rounding).
        np.testing.assert_allclose(restored[..., channel], alone, rtol=0, atol=3e-3)


def test_bad_input_gets_clear_errors_and_is_not_modified(two_focus):
    observed, levels = two_focus[0][:64, :64].copy(), two_focus[1][:64, :64].copy()
    before = observed.copy()
    with pytest.raises(ValueError, match="psf_model"):
        engine.deblur_defocus(observed, levels, psf_model="ring")
    with pytest.raises(ValueError, match="negative"):
        engine.deblur_defocus(observed, -levels)
    with pytest.raises(ValueError, match="shape"):
        engine.deblur_defocus(observed, levels[:32])
    with pytest.raises(ValueError):
        engine.deblur_defocus(observed, np.full_like(levels, np.nan))
    with pytest.raises(ValueError, match="ensemble"):
        engine.deblur_defocus(observed, levels, ensemble=3)
    with pytest.raises(ValueError):
        engine.deblur_defocus(np.zeros((0, 5), np.float32), 1.0)
    with pytest.raises(TypeError):
        engine.deblur_defocus(observed, "sharp please")
    np.testing.assert_array_equal(observed, before)
