"""Blur-map estimator: API contract with the shipped weights, units, stacks and colour, tiling, bad input.

Nothing is trained here; quality is measured in ``benchmarks/blur_map_benchmark.py``.
The unit checks below only ask that a known uniform Gaussian blur is read
back in pixels within a generous tolerance, on a train-split photo.
"""

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_erosion, gaussian_filter, label
from skimage import data

from napari_deblur.engine import (
    BLUR_CLASS_EDGES,
    blur_classes,
    estimate_blur_map,
    iter_estimate_blur_map,
    psf_blur_level,
    run_job,
    sharpen_gwis,
)
from napari_deblur.engine.core import devices, tiling
from napari_deblur.engine.methods import blur_map as bm
from training import blur_map as tbm


@pytest.fixture(scope="module")
def photo():
    """A 192x192 grayscale crop of the astronaut (train split), float32 in [0, 1]."""
    return data.astronaut()[..., 1].astype(np.float32)[40:232, 150:342] / 255.0


def blurred(image, sigma, noise=1.0 / 255, seed=0):
    out = gaussian_filter(image.astype(np.float64), sigma, mode="reflect")
    out += np.random.default_rng(seed).normal(0, noise, out.shape)
    return out.astype(np.float32)


def textured_median(levels, image):
    gy, gx = np.gradient(gaussian_filter(image.astype(np.float64), 1.0))
    magnitude = np.hypot(gx, gy)
    return float(np.median(levels[magnitude >= np.median(magnitude)]))


def test_shipped_weights_load_strictly_and_are_compact():
    model = bm.load_blur_map_net(torch.device("cpu"))
    assert isinstance(model, bm.BlurMapNet) and not model.training
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


@pytest.mark.parametrize("sigma", [1.0, 2.0, 3.5])
def test_a_known_gaussian_blur_is_read_back_in_pixels(photo, sigma):
    image = blurred(photo, sigma)
    levels = estimate_blur_map(image)
    assert levels.shape == image.shape and levels.dtype == np.float32
    assert levels.min() >= 0 and np.isfinite(levels).all()
    assert textured_median(levels, image) == pytest.approx(sigma, rel=0.3)


def test_the_map_follows_blur_that_changes_across_the_image(photo):
    left = blurred(photo, 0.6)
    right = blurred(photo, 3.0)
    image = np.concatenate([left[:, :96], right[:, 96:]], axis=1)
    levels = estimate_blur_map(image)
    assert np.median(levels[:, 8:80]) < 1.2
    assert np.median(levels[:, 112:184]) > 2.0


def test_intensity_scale_and_dtype_do_not_change_the_map(photo):
    image = blurred(photo, 2.0)
    as_uint16 = np.clip(image * 4000 + 100, 0, None).astype(np.uint16)
    np.testing.assert_allclose(
        estimate_blur_map(as_uint16), estimate_blur_map(as_uint16.astype(np.float32) / 4000), atol=0.05
    )


def test_colour_uses_the_luminance_and_stacks_go_plane_by_plane(photo, monkeypatch):
    # float32 convolutions: bfloat16 rounds the luminance's last bits into up to 0.04 px.
    monkeypatch.setenv(devices.CPU_BFLOAT16_OPT_OUT, "1")
    image = blurred(photo, 1.5)
    rgb = np.stack([image, image, image], axis=-1)
    np.testing.assert_allclose(estimate_blur_map(rgb, channel_axis=-1), estimate_blur_map(image), atol=1e-3)
    stack = np.stack([image, blurred(photo, 3.0)])
    levels = estimate_blur_map(stack)
    assert levels.shape == stack.shape
    for z in range(2):
        np.testing.assert_allclose(levels[z], estimate_blur_map(stack[z]), atol=1e-4)
    rgb_stack = np.stack([rgb, rgb[:, ::-1]])
    assert estimate_blur_map(rgb_stack, channel_axis=-1).shape == (2, 192, 192)
    five_d = image[None, None, None, :64, :64]
    assert estimate_blur_map(five_d).shape == five_d.shape


def test_tiles_join_without_seams(monkeypatch):
    # 384 px in tiles of 96 with the shipped halo: no tile sees the whole plane (96 + 2 x 128
    # < 384), so the map must not depend on where the tiles are cut.
    sharp = data.astronaut()[..., 1].astype(np.float32)[:384, :384] / 255.0
    image = blurred(sharp, 2.0)
    whole = estimate_blur_map(image)
    monkeypatch.setattr(bm, "TILE_SIZE", 96)
    monkeypatch.setattr(tiling, "GPU_TILE_SIZE", 96)  # on a GPU the engine's tiles are at least this
    monkeypatch.setattr(bm, "TILE_BLEND", 32)
    assert 96 + 2 * bm.TILE_HALO < 384
    tiled = estimate_blur_map(image)
    assert np.abs(tiled - whole).max() < 0.05
    assert np.abs(tiled - whole).mean() < 0.005


def test_test_time_views_of_the_map_are_averaged_and_turn_with_the_input(photo):
    # The map's network is not equivariant by itself; the mean over its own group of views is.
    model = bm.load_blur_map_net(torch.device("cpu"))
    features = bm.blur_map_features(torch.from_numpy(blurred(photo[:96, :128], 2.0))[None, None])
    turn = lambda t: t.flip((-2, -1))
    with torch.inference_mode():
        single = bm.predict_log_level(model, features)
        two = bm.predict_log_level(model, features, 2)
        of_turned = bm.predict_log_level(model, turn(features), 2)
        turned_single = turn(bm.predict_log_level(model, turn(features)))
    torch.testing.assert_close(two, (single + turned_single) / 2)
    torch.testing.assert_close(of_turned, turn(two))
    assert (turned_single - single).abs().max() > 1e-3  # one pass differs from its turned view
    with pytest.raises(ValueError, match="ensemble must be one of"):
        bm.predict_log_level(model, features, 3)


def test_the_engine_map_is_the_mean_of_its_views_and_a_given_network_runs_as_asked(photo, monkeypatch):
    monkeypatch.setenv(devices.CPU_BFLOAT16_OPT_OUT, "1")  # float32, as predict_log_level by default
    image = blurred(photo[:96, :128], 2.0)
    lum = torch.from_numpy(image)[None, None]
    features = bm.blur_map_features(lum)
    model = bm.load_blur_map_net(torch.device("cpu"))
    with torch.inference_mode():
        ours = bm.target_to_level(bm.predict_log_level(model, features, bm.MAP_VIEWS))
        once = bm.target_to_level(bm.predict_log_level(model, features))
    assert bm.MAP_VIEWS == 4
    np.testing.assert_allclose(estimate_blur_map(image), ours[0, 0].numpy(), atol=1e-4)
    np.testing.assert_allclose(
        run_job(iter_estimate_blur_map(image, network=model, views=1)), once[0, 0].numpy(), atol=1e-4
    )


def test_bfloat16_convolutions_move_the_map_by_a_hair(photo, monkeypatch):
    # Forced on (emulated where the CPU lacks it): the engine asks for it on CPUs with native bfloat16.
    image = blurred(photo, 2.0)
    monkeypatch.setenv(devices.CPU_BFLOAT16_OPT_OUT, "1")
    float32 = estimate_blur_map(image)
    monkeypatch.delenv(devices.CPU_BFLOAT16_OPT_OUT)
    monkeypatch.setattr(devices, "_cpu_has_native_bfloat16", lambda: True)
    bfloat16 = estimate_blur_map(image)
    assert bfloat16.dtype == np.float32
    difference = np.abs(bfloat16 - float32)
    assert 0 < difference.max() < 0.15 and difference.mean() < 0.02


def test_odd_and_tiny_sizes():
    rng = np.random.default_rng(1)
    for shape in [(37, 53), (2, 2), (5, 300)]:
        levels = estimate_blur_map(rng.uniform(0, 1, shape))
        assert levels.shape == shape and np.isfinite(levels).all()
    assert np.isfinite(estimate_blur_map(np.zeros((20, 20)))).all()  # flat: no edge, no NaN


def test_generator_twin_reports_progress_and_gives_the_same_result(photo):
    image = blurred(photo, 1.0)
    updates = []
    result = run_job(iter_estimate_blur_map(image), progress=updates.append)
    assert updates and updates[-1].fraction == pytest.approx(1.0)
    np.testing.assert_array_equal(result, estimate_blur_map(image))


def test_input_is_not_modified(photo):
    image = blurred(photo, 1.0)
    before = image.copy()
    estimate_blur_map(image)
    np.testing.assert_array_equal(image, before)


def test_the_map_drives_gwis_in_the_same_units(photo):
    image = blurred(photo, 2.5)
    sharpened = sharpen_gwis(image, estimate_blur_map(image))
    assert sharpened.shape == image.shape and np.isfinite(sharpened).all()
    gy, gx = np.gradient(sharpened[16:-16, 16:-16].astype(np.float64))
    hy, hx = np.gradient(image[16:-16, 16:-16].astype(np.float64))
    assert np.mean(gx**2 + gy**2) > np.mean(hx**2 + hy**2)
    rgb = np.stack([image, image, image], axis=-1)
    assert sharpen_gwis(rgb, estimate_blur_map(rgb, channel_axis=-1), channel_axis=-1).shape == rgb.shape


@pytest.mark.parametrize(
    ("image", "error", "match"),
    [
        (np.zeros((0, 10)), ValueError, "empty"),
        (np.full((16, 16), np.nan), ValueError, "NaN"),
        (np.ones((16, 16)) * 1j, ValueError, "complex"),
        (np.ones((1, 1)), ValueError, "at least"),
        (np.ones(16), ValueError, "dimensions"),
        (np.array([["a", "b"], ["c", "d"]]), TypeError, "number"),
        (None, TypeError, "None"),
    ],
)
def test_bad_input_raises_a_clear_error(image, error, match):
    with pytest.raises(error, match=match):
        estimate_blur_map(image)


def test_bad_channel_axis_raises():
    with pytest.raises(ValueError, match="channel_axis"):
        estimate_blur_map(np.ones((8, 8)), channel_axis=-1)


def test_blur_classes_bin_at_the_documented_edges():
    levels = np.array([0.0, 0.49, 0.5, 0.99, 1.0, 1.99, 2.0, 3.99, 4.0, 7.0], np.float32)
    assert blur_classes(levels).tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert BLUR_CLASS_EDGES[0] == 0 and len(BLUR_CLASS_EDGES) == len(bm.BLUR_CLASS_NAMES) + 1
    with pytest.raises(ValueError, match="increasing"):
        blur_classes(levels, edges=(0.0, 2.0, 1.0))


# --- training data (no training) -----------------------------------------------------------


@pytest.mark.parametrize("kind", tbm.BLUR_KINDS)
def test_calibrated_kernels_measure_their_level(kind):
    for level in (0.3, 1.25, 6.0):
        psf, measured = tbm.calibrated_psf(kind, level)
        assert measured == pytest.approx(psf_blur_level(psf))
        assert measured == pytest.approx(level, abs=0.03)


def test_training_batches_are_seeded_and_labelled_within_range():
    config = tbm.BlurMapTrainingConfig(batch=3, patch=32, n_dead_leaves=1, n_textures=2)
    first = tbm.BlurMapBatches(config, 5, torch.device("cpu")).draw()
    again = tbm.BlurMapBatches(config, 5, torch.device("cpu")).draw()
    features, levels, _ = first
    assert features.shape == (3, 2, 32, 32) and levels.shape == (3, 1, 32, 32)
    assert 0 <= float(levels.min()) and float(levels.max()) <= tbm.MAX_TRAIN_LEVEL + 0.02
    torch.testing.assert_close(features, again[0])
    torch.testing.assert_close(levels, again[1])


def test_batches_can_be_limited_to_uniform_levels():
    config = tbm.BlurMapTrainingConfig(batch=4, patch=32, n_dead_leaves=1, n_textures=0)
    _, levels, description = tbm.BlurMapBatches(config, 3, torch.device("cpu"), map_kinds=("uniform",)).draw()
    assert (description["map_kinds"] == tbm.MAP_KINDS.index("uniform")).all()
    flat = levels.flatten(1)
    torch.testing.assert_close(flat.amax(dim=1), flat.amin(dim=1))
    assert description["sharp"].shape == description["blurred"].shape == (4, 1, 32, 32)


def test_level_stack_mixture_has_the_exact_level():
    """Mixing the kernels of two grid levels with the squared-level weight gives the target level."""
    lo_psf, lo = tbm.calibrated_psf("disk", 2.0)
    hi_psf, hi = tbm.calibrated_psf("disk", 2.5)
    size = max(lo_psf.shape[0], hi_psf.shape[0])
    pad = [(np.pad(k, (size - k.shape[0]) // 2)) for k in (lo_psf, hi_psf)]
    target = 2.2
    w = (target**2 - lo**2) / (hi**2 - lo**2)
    assert psf_blur_level((1 - w) * pad[0] + w * pad[1]) == pytest.approx(target, abs=1e-3)


def test_level_maps_cover_every_kind_within_range():
    maps = tbm.LevelMaps(48, np.random.default_rng(0))
    for kind in tbm.MAP_KINDS:
        level_map = maps.draw(kind)
        assert level_map.shape == (48, 48)
        assert level_map.min() >= -1e-6 and level_map.max() <= tbm.MAX_TRAIN_LEVEL + 1e-6


def test_procedural_textures_are_seeded_sharp_and_of_every_kind():
    from training.sources import TEXTURE_KINDS, procedural_texture

    def detail(x):
        return np.abs(np.diff(x, axis=0)).mean() + np.abs(np.diff(x, axis=1)).mean()

    images = [procedural_texture(96, np.random.default_rng(seed)) for seed in range(8)]
    images += [procedural_texture(96, np.random.default_rng(0), kind) for kind in TEXTURE_KINDS]
    for image in images:
        assert image.shape == (96, 96) and image.dtype == np.float32
        assert image.min() >= 0.0 and image.max() <= 1.0 and image.std() > 0.05
        # Sharp down to the pixel: a 1 px Gaussian removes a good part of the detail.
        assert detail(gaussian_filter(image, 1.0)) < 0.8 * detail(image)
    np.testing.assert_array_equal(procedural_texture(96, np.random.default_rng(3)), images[3])
    assert not np.array_equal(images[0], images[1])
    with pytest.raises(ValueError, match="unknown texture kind"):
        procedural_texture(32, np.random.default_rng(0), "marble")


@pytest.mark.parametrize(
    "pool, options",
    [
        ("textures", {"n_textures": 2, "texture_fraction": 1.0}),
        ("point_fields", {"n_point_fields": 2, "point_field_fraction": 1.0}),
        ("text_pages", {"n_text_pages": 2, "text_fraction": 1.0}),
    ],
)
def test_procedural_crops_come_only_from_their_pool_when_asked(pool, options):
    from training.sources import PatchSampler

    sampler = PatchSampler(48, np.random.default_rng(0), n_dead_leaves=1, **options)
    assert len(getattr(sampler, pool)) == 2
    sampler.natural, sampler.procedural = [], []  # drawing from either would now fail
    crops = sampler.sample(6)
    assert crops.shape == (6, 48, 48) and 0.0 <= crops.min() and crops.max() <= 1.0
    # Without images in the pool no random number is drawn for it: the crops are the old ones.
    plain = PatchSampler(48, np.random.default_rng(0), n_dead_leaves=1).sample(6)
    fraction = next(key for key in options if key.endswith("_fraction"))
    unused = PatchSampler(48, np.random.default_rng(0), n_dead_leaves=1, **{fraction: 0.5}).sample(6)
    np.testing.assert_array_equal(plain, unused)


def test_point_sources_are_sparse_bright_spots_on_a_dark_background():
    from training.sources import point_sources

    field = point_sources(128, np.random.default_rng(5))
    assert field.shape == (128, 128) and field.dtype == np.float32
    assert 0.0 <= field.min() and field.max() == 1.0
    # Dark almost everywhere (background at most 8 % of the range) ...
    assert np.median(field) < 0.1
    # ... with many separate spots, some of them a pixel or two wide.
    spots, count = label(field > 0.3)
    assert count >= 5
    sizes = np.bincount(spots.ravel())[1:]
    assert sizes.min() <= 4
    np.testing.assert_array_equal(point_sources(128, np.random.default_rng(5)), field)


def test_printed_text_has_thin_strokes_on_a_flat_page():
    from training.sources import printed_text

    page = printed_text(160, np.random.default_rng(2))
    assert page.shape == (160, 160) and page.dtype == np.float32
    paper = np.median(page)
    assert paper in (0.0, 1.0)  # most of a page is paper, flat
    ink = np.abs(page - paper) > 0.5
    assert 0.02 < ink.mean() < 0.5
    # Strokes are thin: eroding the ink by a 5x5 square removes most of it.
    assert binary_erosion(ink, np.ones((5, 5))).sum() < 0.5 * ink.sum()
    np.testing.assert_array_equal(printed_text(160, np.random.default_rng(2)), page)


# --- automatic GWIS (sharpen_gwis(image, "auto")) -------------------------------------------


def test_auto_sharpening_estimates_the_map_itself(photo):
    image = blurred(photo, 2.0)
    auto = sharpen_gwis(image, "auto")
    np.testing.assert_allclose(auto, sharpen_gwis(image, estimate_blur_map(image)), atol=1e-5)
    gy, gx = np.gradient(auto[16:-16, 16:-16].astype(np.float64))
    hy, hx = np.gradient(image[16:-16, 16:-16].astype(np.float64))
    assert np.mean(gx**2 + gy**2) > np.mean(hx**2 + hy**2)


def test_auto_sharpening_keeps_the_layout_of_colour_and_stacks(photo):
    image = blurred(photo[:96, :96], 1.5)
    rgb = np.stack([image, 0.5 * image, image], axis=-1)
    assert sharpen_gwis(rgb, "auto", channel_axis=-1).shape == rgb.shape
    stack = np.stack([image, image[::-1]])
    out = sharpen_gwis(stack, "auto")
    np.testing.assert_allclose(out[1], sharpen_gwis(image[::-1], "auto"), atol=1e-6)


def test_an_unknown_blur_word_is_refused():
    with pytest.raises(TypeError, match="'auto'"):
        sharpen_gwis(np.ones((16, 16), np.float32), "automatic")


def test_gwis_labels_choose_no_sharpening_on_a_sharp_crop_and_some_on_a_blurred_one(photo):
    from training import gwis_level as tgl

    sharp = torch.from_numpy(photo[:96, :96].copy())[None, None]
    labels, spread, scores = tgl.gwis_level_labels(sharp, sharp)
    assert scores.shape == (1, len(tgl.GWIS_LEVEL_GRID), 96, 96)
    assert set(np.unique(labels.numpy())) <= set(np.float32(tgl.GWIS_LEVEL_GRID))
    assert float(scores[:, 0].min()) == pytest.approx(1.0, abs=1e-4)  # level 0 returns the crop
    matters = spread > 1e-3
    assert bool(matters.any()) and float(labels[matters].max()) == 0.0
    soft = torch.from_numpy(blurred(photo[:96, :96], 2.5, noise=0.0))[None, None]
    labels, spread, _ = tgl.gwis_level_labels(soft, sharp)
    assert float(labels[spread > 0.02].median()) >= 1.0
