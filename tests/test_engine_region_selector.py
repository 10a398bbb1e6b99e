"""Region selector: shipped weights, API contract, behaviour, bad input, training smoke run.

Images come from the train split only (``TRAIN_SPLIT``). Nothing is trained
here beyond a two-step smoke run on a tiny label set in a temporary folder.
"""

import inspect
from importlib import resources

import numpy as np
import pytest
import torch
from scipy.signal import fftconvolve
from skimage import data

from napari_deblur.engine import Region, gaussian_psf, run_job, select_regions
from napari_deblur.engine.methods.region_selector import (
    MAX_CONSENSUS_WINDOWS,
    WEIGHTS_FILE,
    RegionSelectorNet,
    consensus_scores,
    consensus_stride,
    grid_positions,
    iter_consensus_grid,
    load_region_selector_net,
    non_maximum_suppression,
    overlap_fraction,
    score_windows,
    window_features,
)
from training import region_selector as training
from training.sources import EVAL_SPLIT, TRAIN_SPLIT, grey_float

SIZE = 64
"""Window side in the contract tests (small images keep them fast)."""


def train_image(name, colour=False):
    assert name in TRAIN_SPLIT and name not in EVAL_SPLIT
    image = getattr(data, name)()
    return image if colour else grey_float(image)


def blurred(sharp, sigma=1.5, noise=0.01, seed=0):
    kernel = gaussian_psf(sigma)
    out = fftconvolve(sharp, kernel, mode="valid")
    return (out + np.random.default_rng(seed).normal(0, noise, out.shape)).astype(np.float32)


@pytest.fixture(scope="session")
def photo():
    return blurred(train_image("astronaut")[40:264, 100:372])  # 208 x 256


@pytest.fixture(scope="session")
def half_flat():
    """A scene flat on the left and textured (a train image) on the right, blurred, 1 % noise."""
    texture = train_image("gravel")[:268, :204]
    scene = np.concatenate([np.full_like(texture, 0.5), texture], axis=1)
    return blurred(scene, seed=1)  # 256 x 396 (13-px kernel, valid convolution)


# --- weights and network -----------------------------------------------------------------------


def test_shipped_weights_load_and_are_small():
    model = load_region_selector_net(torch.device("cpu"))
    assert isinstance(model, RegionSelectorNet) and not model.training
    assert sum(p.numel() for p in model.parameters()) < 200_000
    weights = resources.files("napari_deblur.engine.nets").joinpath("weights", WEIGHTS_FILE)
    with resources.as_file(weights) as path:
        assert path.stat().st_size < 1_000_000


def test_network_shapes_and_no_pooling():
    model = RegionSelectorNet().eval()
    with torch.no_grad():
        assert model(torch.zeros(3, 1, 128, 128)).shape == (3,)
        assert model(torch.zeros(2, 1, 64, 96)).shape == (2,)
    pools = (torch.nn.MaxPool2d, torch.nn.AvgPool2d, torch.nn.AdaptiveAvgPool2d)
    assert not any(isinstance(m, pools) for m in model.modules())


def test_window_features_normalise_each_window():
    rng = np.random.default_rng(0)
    windows = torch.from_numpy(rng.normal(3.0, 2.0, (2, 1, 32, 32)).astype(np.float32))
    windows[1] = windows[0] * 100 + 7  # contrast and offset do not matter
    features = window_features(windows)
    assert torch.allclose(features.mean(dim=(-2, -1)), torch.zeros(2, 1), atol=1e-5)
    assert torch.allclose(features[0], features[1], atol=1e-4)
    assert torch.count_nonzero(window_features(torch.full((1, 1, 32, 32), 5.0))) == 0


# --- API contract --------------------------------------------------------------------------------


def test_window_scores_over_views_are_the_mean_of_each_views_probability():
    model = load_region_selector_net(torch.device("cpu"))
    windows = torch.rand(3, 1, SIZE, SIZE)
    one = score_windows(model, windows)
    turned = score_windows(model, windows.flip((-2, -1)))
    assert one.shape == (3,) and bool(((one > 0) & (one < 1)).all())
    torch.testing.assert_close(score_windows(model, windows, 2), (one + turned) / 2)
    assert (one - turned).abs().max() > 1e-4  # the network is not invariant: the views differ
    with pytest.raises(ValueError, match="ensemble must be one of"):
        score_windows(model, windows, 3)


@pytest.mark.parametrize("ranking", ["consensus", "network"])
def test_contract(photo, ranking):
    regions = select_regions(photo, size=SIZE, count=4, device="cpu", ranking=ranking, psf_size=15)
    assert isinstance(regions, list) and 1 <= len(regions) <= 4
    scores = [r.score for r in regions]
    assert scores == sorted(scores, reverse=True)
    height, width = photo.shape
    for region in regions:
        assert isinstance(region, Region)
        y, x, h, w, score = region  # a sequence in this order
        assert (y, x, h, w, score) == (region.y, region.x, region.height, region.width, region.score)
        assert (h, w) == (SIZE, SIZE) and 0 <= score <= 1
        assert 0 <= y and y + h <= height and 0 <= x and x + w <= width
        assert isinstance(y, int) and isinstance(x, int) and isinstance(score, float)
    for i, a in enumerate(regions):
        for b in regions[i + 1 :]:
            assert (
                a.y + a.height <= b.y or b.y + b.height <= a.y or a.x + a.width <= b.x or b.x + b.width <= a.x
            )


def test_consensus_is_the_default_ranking(photo):
    by_default = select_regions(photo, size=SIZE, count=2, psf_size=15)
    assert by_default == select_regions(photo, size=SIZE, count=2, ranking="consensus", psf_size=15)
    assert [r[:4] for r in by_default] != [
        r[:4] for r in select_regions(photo, size=SIZE, count=2, ranking="network")
    ]


def test_count_respected_and_limited_by_room(photo):
    assert len(select_regions(photo, size=SIZE, count=1, ranking="network")) == 1
    # 208 x 256 holds at most 3 x 4 disjoint 64-px windows
    assert len(select_regions(photo, size=SIZE, count=50, ranking="network")) <= 12
    only = select_regions(photo[:SIZE, :SIZE], size=SIZE, count=5, ranking="consensus")  # one window
    assert len(only) == 1 and only[0][:4] == (0, 0, SIZE, SIZE)


def test_grid_reaches_the_far_edges():
    assert grid_positions(100, 64, 16) == [0, 16, 32, 36]
    assert grid_positions(64, 64, 16) == [0]


def test_non_maximum_suppression_is_greedy():
    candidates = [
        Region(0, 0, 10, 10, 0.5),
        Region(5, 5, 10, 10, 0.9),
        Region(20, 0, 10, 10, 0.1),
        Region(0, 10, 10, 10, 0.3),
    ]
    kept = non_maximum_suppression(candidates, 5)
    assert [r.score for r in kept] == [0.9, 0.1]  # 0.5 and 0.3 overlap the best one


def test_overlap_fraction_is_intersection_over_union():
    a = Region(0, 0, 10, 10, 0.0)
    assert overlap_fraction(a, Region(0, 10, 10, 10, 0.0)) == 0.0  # touching
    assert overlap_fraction(a, Region(5, 0, 10, 10, 0.0)) == pytest.approx(50 / 150)
    assert overlap_fraction(a, a) == 1.0


def test_non_maximum_suppression_allows_the_overlap_asked_for():
    # a 2x2 grid of 192 px windows on 384 px and the centre one, best first: the centre overlaps
    # each corner by 96 x 96 px, an intersection over union of 1/7
    centre = Region(96, 96, 192, 192, 0.9)
    corners = [
        Region(y, x, 192, 192, 0.5 - 0.1 * i)
        for i, (y, x) in enumerate([(0, 0), (0, 192), (192, 0), (192, 192)])
    ]
    assert non_maximum_suppression([centre, *corners], 5) == [centre]
    assert non_maximum_suppression([centre, *corners], 5, max_overlap=0.25) == [centre, *corners]
    assert non_maximum_suppression([centre, *corners], 5, max_overlap=0.1) == [centre]


def test_networks_best_window_is_in_the_textured_half(half_flat):
    regions = select_regions(half_flat, count=3, ranking="network")  # the default 128-px windows
    width = half_flat.shape[1]
    best = regions[0]
    assert best.x + best.width / 2 >= width / 2  # mostly in the textured half
    flat_score = select_regions(half_flat[:, : width // 2 - 8], count=1, ranking="network")[0].score
    assert best.score > flat_score + 0.3


def test_consensus_best_window_is_in_the_textured_half(half_flat):
    best = select_regions(half_flat, count=1, ranking="consensus", psf_size=15)[0]  # 128-px windows
    assert best.x + best.width / 2 >= half_flat.shape[1] / 2


def test_consensus_gives_windows_of_one_constant_value_no_say():
    # Left: one constant value (no noise), whose windows would all give the same point kernel and
    # agree with each other; right: a blurred, noisy texture.
    texture = blurred(train_image("gravel")[:140, :140], sigma=1.5, seed=3)  # 128 x 128
    scene = np.concatenate([np.full((128, 192), 0.5, np.float32), texture], axis=1)
    grid = run_job(iter_consensus_grid(scene, SIZE, 32, 11, torch.device("cpu")))
    flat = [r for r in grid if r.x + r.width <= 192]
    assert len(flat) == 3 * 5 and all(r.score == 0.0 for r in flat)
    assert min(r.score for r in grid if r.x >= 192) > 0.2
    assert select_regions(scene, size=SIZE, stride=32, ranking="consensus", psf_size=11, count=1)[0].x >= 192


def test_consensus_scores_favour_the_kernel_most_others_agree_with():
    near = [gaussian_psf(s, size=15) for s in (1.0, 1.1, 1.2)]
    odd = np.zeros((15, 15), np.float32)
    odd[7, 2:13] = 1.0  # a horizontal line: unlike the others
    scores = consensus_scores([*near, odd, None])
    assert scores[4] == 0.0  # no kernel (a flat window)
    assert scores[3] == min(scores[:4]) and scores[1] == max(scores)
    assert all(0.0 <= v <= 1.0 for v in scores)
    assert consensus_scores([odd]).tolist() == [1.0]


def test_consensus_grid_is_thinned_to_its_limit():
    assert consensus_stride((384, 384), 192, 48) == 48  # 5 x 5 windows
    for shape in [(1024, 1024), (600, 3000), (5000, 400)]:
        stride = consensus_stride(shape, 192, 48)
        windows = len(grid_positions(shape[0], 192, stride)) * len(grid_positions(shape[1], 192, stride))
        fewer = len(grid_positions(shape[0], 192, stride - 1)) * len(
            grid_positions(shape[1], 192, stride - 1)
        )
        assert windows <= MAX_CONSENSUS_WINDOWS < fewer


def test_rgb_equals_luminance():
    rgb = train_image("astronaut", colour=True)[50:210, 120:300]
    luminance = rgb.astype(np.float32) @ np.array([0.2126, 0.7152, 0.0722], np.float32)
    colour = select_regions(rgb, size=SIZE, count=3, ranking="network")
    grey = select_regions(luminance, size=SIZE, count=3, ranking="network")
    assert [r[:4] for r in colour] == [r[:4] for r in grey]
    assert np.allclose([r.score for r in colour], [r.score for r in grey], atol=1e-4)
    channels_first = select_regions(
        np.moveaxis(rgb, -1, 0), size=SIZE, count=3, channel_axis=0, ranking="network"
    )
    assert [r[:4] for r in channels_first] == [r[:4] for r in colour]


def test_any_dtype_and_scale(photo):
    as_uint8 = np.clip(photo * 255, 0, 255).astype(np.uint8)
    as_scaled = as_uint8.astype(np.float64) * 1000.0
    for ranking in ("consensus", "network"):
        assert [r[:4] for r in select_regions(as_uint8, size=SIZE, ranking=ranking, psf_size=15)] == [
            r[:4] for r in select_regions(as_scaled, size=SIZE, ranking=ranking, psf_size=15)
        ]


def test_input_is_not_modified(photo):
    image = photo.copy()
    select_regions(image, size=SIZE, count=2, ranking="consensus", psf_size=15)
    assert np.array_equal(image, photo)


@pytest.mark.parametrize(
    ("image", "kwargs", "error", "match"),
    [
        (np.zeros((100, 100)), {"size": 128}, ValueError, "smaller than one 128x128 window"),
        (np.zeros((40, 300)), {"size": 64}, ValueError, "smaller than one"),
        (np.zeros((100, 100)), {"size": 64, "count": 0}, ValueError, "count must be at least 1"),
        (np.zeros((100, 100)), {"size": 64, "count": -2}, ValueError, "count"),
        (np.zeros((100, 100)), {"size": 16}, ValueError, "size must be at least 32"),
        (np.zeros((100, 100)), {"size": 64.0}, TypeError, "size must be an integer"),
        (np.zeros((100, 100)), {"size": True}, TypeError, "size"),
        (np.zeros((100, 100)), {"size": 64, "count": "5"}, TypeError, "count"),
        (np.zeros((100, 100)), {"size": 64, "stride": 0}, ValueError, "stride"),
        (np.zeros((100, 100)), {"size": 64, "ranking": "best"}, ValueError, "ranking must be one of"),
        (
            np.zeros((100, 100)),
            {"size": 64, "ranking": "consensus", "psf_size": 10},
            ValueError,
            "psf_size must be an odd",
        ),
        (
            np.zeros((100, 100)),
            {"size": 64, "ranking": "consensus", "psf_size": 33},
            ValueError,
            "at least 66 px",
        ),
        (np.zeros((100, 100)), {"size": 64, "ranking": "consensus", "psf_size": 3.0}, TypeError, "psf_size"),
        (np.full((100, 100), np.nan), {"size": 64}, ValueError, "NaN|finite"),
        (np.zeros((100, 100), complex), {"size": 64}, ValueError, "complex"),
        (np.zeros((0, 100)), {"size": 64}, ValueError, "empty"),
        (np.zeros((2, 100, 100)), {"size": 64}, ValueError, "one 2D plane"),
        (np.zeros((2, 3, 100, 100)), {"size": 64, "channel_axis": 1}, ValueError, "planes"),
        ("not an image", {"size": 64}, TypeError, None),
    ],
)
def test_bad_input(image, kwargs, error, match):
    with pytest.raises(error, match=match):
        select_regions(image, **kwargs)


def test_unavailable_device(photo):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError):
        select_regions(photo, size=SIZE, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_agrees_with_cpu(photo):
    on_gpu = select_regions(photo, size=SIZE, count=3, device="cuda", ranking="network")
    on_cpu = select_regions(photo, size=SIZE, count=3, device="cpu", ranking="network")
    assert [r[:4] for r in on_gpu] == [r[:4] for r in on_cpu]
    assert np.allclose([r.score for r in on_gpu], [r.score for r in on_cpu], atol=1e-3)


# --- training code -----------------------------------------------------------------------------


def test_training_sources_never_name_the_eval_split():
    assert not set(TRAIN_SPLIT) & set(EVAL_SPLIT)
    source = inspect.getsource(training)
    assert "train_split_images" in source
    for name in EVAL_SPLIT:
        assert f'"{name}"' not in source and f"'{name}'" not in source
        assert f"data.{name}" not in source


def test_training_smoke_run(tmp_path, monkeypatch):
    """Labels for 8 windows, 2 steps; the eval split is never loaded; nothing lands in the package."""
    import skimage.data

    def forbidden(*args, **kwargs):
        raise AssertionError("an evaluation image was loaded by training code")

    for name in EVAL_SPLIT:
        monkeypatch.setattr(skimage.data, name, forbidden, raising=False)
    models = resources.files("napari_deblur.engine.nets").joinpath("weights")
    with resources.as_file(models) as folder:
        before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    config = _tiny_label_config(tmp_path / "cache")
    out = tmp_path / "selector.pt"
    model = training.train_region_selector(config, out)
    assert isinstance(model, RegionSelectorNet) and out.is_file()
    assert training.cache_path(config).is_file()
    assert config.data["train_windows"] + config.data["validation_windows"] == 8
    assert config.data["validation_images"] == 1 and len(config.history) == 2
    assert {"selector's best window", "whole image"} <= set(config.validation["product"])
    state = torch.load(out, weights_only=True)
    RegionSelectorNet().load_state_dict(state, strict=True)
    # a second run reuses the cached labels (no estimation: the estimator must not be called)
    monkeypatch.setattr(training, "estimate_psf", forbidden)
    again = training.make_labels(config)
    assert len(again["blurred"]) == 2
    with resources.as_file(models) as folder:
        assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before


def _tiny_label_config(tmp_path, **kwargs):
    return training.RegionSelectorTrainingConfig(
        windows=8,
        steps=2,
        batch=4,
        window=64,
        image_size=96,
        window_stride=32,
        motion_size_range=(7, 9),
        gaussian_sigma_range=(0.8, 1.2),
        disk_radius_range=(1.5, 3.0),
        estimate_size_max=11,
        validation_every=2,
        cache_dir=str(tmp_path),
        log_every=1,
        **kwargs,
    )


def test_labels_do_not_depend_on_the_number_of_workers(tmp_path):
    one = training.make_labels(_tiny_label_config(tmp_path / "one"))
    two = training.make_labels(_tiny_label_config(tmp_path / "two", workers=2))
    assert len(one["blurred"]) == len(two["blurred"]) == 2
    for name in ("blurred", "kernel", "estimate_size", "similarity"):
        np.testing.assert_array_equal(one[name], two[name])
    assert np.all((one["estimate_size"] >= 7) & (one["estimate_size"] <= 11))


def test_labels_are_made_with_the_label_estimator_settings(tmp_path, monkeypatch):
    """Every estimate of a labelled image is given ``label_estimator``."""
    from napari_deblur.engine.methods.blind_psf import EstimatorSettings

    seen = []

    def recording_estimate(blurred, size, **kwargs):
        seen.append(kwargs["settings"])
        return gaussian_psf(1.0, size=size)

    monkeypatch.setattr(training, "estimate_psf", recording_estimate)
    settings = EstimatorSettings(lambda_floor=0.01, kernel_faint=0.3)
    config = _tiny_label_config(tmp_path, label_estimator=settings)
    natural = training._load_natural(config)
    training.labelled_image(1, natural, config)  # image 1 is held out: windows and the whole image
    assert seen == [settings] * (config.windows_per_image + 1)


def test_label_estimator_defaults_and_cache_key(tmp_path):
    from napari_deblur.engine.methods.blind_psf import SHIPPED_SETTINGS

    default = _tiny_label_config(tmp_path)
    assert default.label_estimator == training.LABEL_ESTIMATOR
    assert default.data_settings()["label_estimator"] == {
        "LAMBDA_FLOOR": 1e-4,
        "KERNEL_FAINT": 0.05,
        "KERNEL_NEGATIVE_FLOOR": 0.0,
    }
    as_shipped = _tiny_label_config(tmp_path, label_estimator=SHIPPED_SETTINGS)
    assert as_shipped.data_settings()["label_estimator"] == {}
    assert training.cache_path(default) != training.cache_path(as_shipped)


def test_within_image_rank_loss_orders_windows_of_one_image():
    labels = torch.tensor([1, 0, 0, 1, 1, 1, 1, 1], dtype=torch.float32)  # image 2: one class only
    right = torch.tensor([3.0, -3.0, -3.0, 3.0, 0.0, 0.0, 0.0, 0.0])
    wrong = torch.tensor([-3.0, 3.0, 3.0, -3.0, 0.0, 0.0, 0.0, 0.0])
    low = training.within_image_rank_loss(right, labels, per_image=4, gap=0.5)
    high = training.within_image_rank_loss(wrong, labels, per_image=4, gap=0.5)
    assert float(low) < 0.01 and float(high) > 5.0
    # the second image (all good) adds no pairs: changing its scores changes nothing
    moved = right.clone()
    moved[4:] = torch.tensor([5.0, -5.0, 1.0, 2.0])
    assert float(training.within_image_rank_loss(moved, labels, 4, 0.5)) == float(low)
    assert float(training.within_image_rank_loss(right, torch.ones(8), 4, 0.5)) == 0.0
    # similarities: only pairs further apart than the gap count
    similarity = torch.tensor([0.90, 0.88, 0.60, 0.80])
    scores = torch.tensor([6.0, 8.0, -6.0, 0.0])  # 0.88 above 0.90: within the gap, no penalty
    assert float(training.within_image_rank_loss(scores, similarity, 4, gap=0.05)) < 0.01
    assert float(training.within_image_rank_loss(scores, similarity, 4, gap=0.0)) > 0.3
    groups = training._ranked_images(np.array([0.9, 0.88, 0.87, 0.86, 0.9, 0.5, 0.9, 0.9]), 4, 0.05)
    assert [list(group) for group in groups] == [[4, 5, 6, 7]]


def test_balanced_indices_and_auc():
    rng = np.random.default_rng(0)
    labels = np.array([True] * 3 + [False] * 10)
    chosen = training.balanced_indices(labels, rng)
    assert labels[chosen].sum() == 3 and (~labels[chosen]).sum() == 3
    assert training.roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert training.roc_auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5
