"""Wiener-net: API contract with the shipped weights, stacks and colour, tiling, bad input.

Nothing is trained here; quality is measured in ``benchmarks/wiener_net_benchmark.py``.
The one quality check below only asks that a known blur is undone better than
the blurred input and than Wiener at a deliberately poor SNR.
"""

import numpy as np
import pytest
import torch
from scipy.signal import fftconvolve
from skimage import data
from skimage.metrics import peak_signal_noise_ratio

from napari_deblur.engine import (
    gaussian_psf,
    iter_wiener_net_deconvolve,
    random_motion_psf,
    run_job,
    wiener_deconvolve,
    wiener_net_deconvolve,
)
from napari_deblur.engine.core import devices, tiling
from napari_deblur.engine.methods import wiener_net as wn
from training.sources import EVAL_SPLIT, TRAIN_SPLIT


@pytest.fixture(scope="module")
def shake():
    return random_motion_psf(15, rng=3)


@pytest.fixture(scope="module")
def case(shake):
    """(sharp, blurred) 96x96 crop of the astronaut (train split), real-boundary blur, noise 0.01."""
    image = data.astronaut()[..., 1].astype(np.float32)[150:260, 180:290] / 255.0
    radius = shake.shape[0] // 2
    sharp = image[radius:-radius, radius:-radius]
    blurred = fftconvolve(image, shake, mode="valid")
    blurred += np.random.default_rng(0).normal(0, 0.01, blurred.shape)
    return sharp, blurred.astype(np.float32)


def psnr(reference, estimate):
    return peak_signal_noise_ratio(reference, np.clip(estimate, 0, 1), data_range=1.0)


def test_shipped_weights_load_strictly_and_match_the_architecture():
    model = wn.load_wiener_net(torch.device("cpu"))
    assert isinstance(model, wn.WienerNet)
    assert not model.training
    n_parameters = sum(p.numel() for p in model.parameters())
    assert 100_000 < n_parameters < 2_000_000  # compact: well under the seed's 5 million


def test_restores_a_known_blur_better_than_the_input_and_a_poorly_tuned_wiener(case, shake):
    sharp, blurred = case
    restored = wiener_net_deconvolve(blurred, shake)
    assert restored.shape == blurred.shape and restored.dtype == np.float32
    assert psnr(sharp, restored) > psnr(sharp, blurred) + 2.0
    assert psnr(sharp, restored) > psnr(sharp, wiener_deconvolve(blurred, shake, snr_db=50.0))


def test_intensity_scale_and_dtype_follow_the_input(case, shake, monkeypatch):
    # float32 convolutions: bfloat16 rounds the two scales differently (up to about 2e-3).
    monkeypatch.setenv(devices.CPU_BFLOAT16_OPT_OUT, "1")
    _, blurred = case
    as_uint16 = np.clip(blurred * 4000, 0, None).astype(np.uint16)
    scaled = wiener_net_deconvolve(as_uint16, shake)
    unit = wiener_net_deconvolve(as_uint16.astype(np.float32) / 4000, shake)
    np.testing.assert_allclose(scaled / 4000, unit, atol=2e-4)


def test_colour_channels_are_restored_one_by_one(case, shake, monkeypatch):
    # float32 convolutions: bfloat16's rounding, like TF32's, changes with the batch size.
    monkeypatch.setenv(devices.CPU_BFLOAT16_OPT_OUT, "1")
    _, blurred = case
    rgb = np.stack([blurred, blurred[::-1], blurred.T], axis=-1)
    restored = wiener_net_deconvolve(rgb, shake, channel_axis=-1)
    assert restored.shape == rgb.shape
    for c in range(3):
        # 5e-4: on a GPU the convolutions run in TF32 and batch size changes their rounding.
        np.testing.assert_allclose(restored[..., c], wiener_net_deconvolve(rgb[..., c], shake), atol=5e-4)


def test_a_psf_stack_applies_plane_by_plane(case, shake):
    _, blurred = case
    stack = np.stack([blurred, blurred[:, ::-1]])
    psfs = np.stack([shake, np.ascontiguousarray(shake[:, ::-1])])
    restored = wiener_net_deconvolve(stack, psfs, psf_per_plane=True)
    for z in range(2):
        np.testing.assert_allclose(restored[z], wiener_net_deconvolve(stack[z], psfs[z]), atol=1e-4)


def test_tiles_join_without_seams(case, shake, monkeypatch):
    _, blurred = case
    whole = wiener_net_deconvolve(blurred, shake)
    monkeypatch.setattr(wn, "TILE_SIZE", 48)
    monkeypatch.setattr(tiling, "GPU_TILE_SIZE", 48)  # on a GPU the engine's tiles are at least this
    tiled = wiener_net_deconvolve(blurred, shake)
    assert np.abs(tiled - whole).max() < 2e-3 * (blurred.max() - blurred.min())


def test_odd_sizes_and_a_psf_as_large_as_the_image():
    rng = np.random.default_rng(1)
    image = rng.uniform(0, 1, (37, 53)).astype(np.float32)
    restored = wiener_net_deconvolve(image, np.ones((37, 37)))
    assert restored.shape == image.shape and np.isfinite(restored).all()


def test_generator_twin_reports_progress_and_gives_the_same_result(case, shake):
    _, blurred = case
    updates = []
    result = run_job(iter_wiener_net_deconvolve(blurred, shake), progress=updates.append)
    assert updates and updates[-1].fraction == pytest.approx(1.0)
    np.testing.assert_array_equal(result, wiener_net_deconvolve(blurred, shake))


def test_input_is_not_modified(case, shake):
    _, blurred = case
    before = blurred.copy()
    wiener_net_deconvolve(blurred, shake)
    np.testing.assert_array_equal(blurred, before)


@pytest.mark.parametrize(
    ("image", "psf", "match"),
    [
        (np.zeros((0, 10)), np.ones((3, 3)), "empty"),
        (np.full((16, 16), np.nan), np.ones((3, 3)), "NaN|finite"),
        (np.ones((16, 16)) * 1j, np.ones((3, 3)), "complex"),
        (np.ones((16, 16)), np.ones((33, 33)), "larger|PSF"),
        (np.ones((16, 16)), -np.ones((3, 3)), "sum|negative|PSF"),
        (np.ones((16, 16)), np.ones((2, 3, 3)), "3D PSF needs a 3D volume"),
    ],
)
def test_bad_input_raises_a_clear_value_error(image, psf, match):
    with pytest.raises(ValueError, match=match):
        wiener_net_deconvolve(image, psf)


def test_training_sources_keep_out_the_evaluation_split():
    assert not set(TRAIN_SPLIT) & set(EVAL_SPLIT)


def test_noise_estimate_picks_a_lower_snr_for_a_noisier_plane(case, shake):
    from training.wiener_net import nearest_snr_index

    _, blurred = case
    y = torch.from_numpy(blurred)[None, None]
    noisy = y + 0.05 * torch.randn(y.shape, generator=torch.Generator().manual_seed(0))
    snrs = torch.tensor(wn.WIENER_STACK_SNRS_DB)
    picks = [int(nearest_snr_index(*wn.plane_statistics(p)[1:], snrs)) for p in (y, noisy)]
    assert picks[1] < picks[0]


def test_smoothed_training_sources_are_smoother_and_leave_other_draws_alone():
    from training.sources import PatchSampler

    def crops(smooth_fraction, seed=3):
        sampler = PatchSampler(
            64, np.random.default_rng(seed), n_dead_leaves=2, smooth_fraction=smooth_fraction
        )
        return sampler.sample(12)

    def roughness(batch):
        return float(np.mean(np.abs(np.diff(batch, axis=-1))))

    plain, smoothed = crops(0.0), crops(1.0)
    assert smoothed.shape == plain.shape and smoothed.min() >= 0.0 and smoothed.max() <= 1.0
    assert roughness(smoothed) < 0.6 * roughness(plain)
    # The default is no smoothing, and then no random number is drawn for it (any nonzero
    # fraction draws one per crop and shifts the stream), so the blur-map and region-selector
    # data, which do not smooth, stay as they were.
    default = PatchSampler(64, np.random.default_rng(3), n_dead_leaves=2).sample(12)
    np.testing.assert_array_equal(plain, default)
    assert not np.array_equal(plain, crops(1e-12))


def test_the_network_blends_its_candidates_per_pixel_and_adds_a_residual():
    torch.manual_seed(0)
    model = wn.WienerNet().eval()
    features = torch.randn(1, model.n_snrs + 2, 32, 48)
    candidates = features[:, : model.n_snrs + 1]
    with torch.no_grad():
        model.blend_head.weight.zero_()
        model.blend_head.bias.zero_()
        model.head.weight.zero_()
        model.head.bias.zero_()
        np.testing.assert_allclose(model(features), candidates.mean(dim=1, keepdim=True), atol=1e-5)
        # A large bias on one candidate picks it at every pixel (the 4 output pixels of each
        # half-resolution position share the bias: one per pixel-shuffle phase).
        model.blend_head.bias.view(model.n_snrs + 1, 4)[3] = 50.0
        np.testing.assert_allclose(model(features), candidates[:, 3:4], atol=1e-5)
        model.head.bias.fill_(0.25)
        np.testing.assert_allclose(model(features), candidates[:, 3:4] + 0.25, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_network_reads_its_weights_in_the_order_they_were_trained_in(channels_last):
    """The forward pass folds phase first; the files hold weights for pixel_unshuffle's order.

    Reference: the network as it ran before the phase-major fold, written out here with
    pixel_unshuffle, the weights as stored and the blend over the 4 c + p channel order.
    """
    from napari_deblur.engine.nets.layers import upsample_nearest_then_conv

    torch.manual_seed(1)
    model = wn.WienerNet().eval()
    features = torch.randn(2, model.n_snrs + 2, 32, 48)
    if channels_last:
        features = features.contiguous(memory_format=torch.channels_last)
    n = model.n_snrs + 1
    with torch.no_grad():
        model.blend_head.bias.normal_(std=2.0)  # weights that differ from candidate to candidate
        folded = torch.nn.functional.pixel_unshuffle(features, 2)
        x, skips = folded, []
        for encoder in model.encoders:
            x = encoder(x)
            skips.append(x)
        x = skips.pop()
        for upsample, decoder in zip(model.upsamplers, model.decoders):
            x = decoder(torch.cat([upsample_nearest_then_conv(x, upsample), skips.pop()], dim=1))
        batch, _, height, width = folded.shape
        weights = model.blend_head(x).view(batch, n, 4, height, width).softmax(dim=1)
        candidates = folded.view(batch, n + 1, 4, height, width)[:, :n]
        blended = (weights * candidates).sum(dim=1) + model.head(x)
        expected = torch.nn.functional.pixel_shuffle(blended, 2)
        torch.testing.assert_close(model(features), expected, rtol=1e-5, atol=1e-5)
    # Files keep the stored order: nothing of the forward pass's reordering is saved.
    assert set(model.state_dict()) == {name for name, _ in model.named_parameters()}


def test_training_loss_asks_the_same_decibels_of_clean_and_noisy_crops(monkeypatch):
    from training import wiener_net as training

    monkeypatch.setattr(training, "SSIM_WEIGHT", 0.0)
    sharp = torch.zeros(2, 1, 16, 16)
    error = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    error[0] *= 0.01  # a clean crop, 40 dB
    error[1] *= 0.1  # a noisy one, 20 dB
    before = training.restoration_loss(sharp + error, sharp)
    gains = []
    for crop in range(2):
        better = error.clone()
        better[crop] /= 2
        gains.append(float(before - training.restoration_loss(sharp + better, sharp)))
    assert gains[0] > 0 and gains[1] > 0
    assert gains[0] == pytest.approx(gains[1], rel=0.05)


def test_interior_masks_leave_out_a_border_as_wide_as_the_kernel_support():
    from training import wiener_net as training

    kernels = torch.zeros(2, 31, 31)
    kernels[0, 15, 15] = 1.0  # a delta: support 1 px wide
    kernels[1, 10:21, 13:18] = 1.0 / 55  # 11 rows x 5 columns: the wider extent counts
    masks = training.interior_masks(kernels, (50, 60))
    assert masks.shape == (2, 1, 50, 60)
    assert masks[0].sum() == (50 - 2) * (60 - 2)
    inside = masks[1, 0].nonzero()
    assert inside[:, 0].min() == 11 and inside[:, 0].max() == 50 - 12
    assert inside[:, 1].min() == 11 and inside[:, 1].max() == 60 - 12
    # On a crop too small for the kernel, the border stops at a quarter of the side.
    small = training.interior_masks(kernels, (24, 24))
    assert small[1].sum() == (24 - 2 * 6) ** 2


def test_interior_weight_moves_the_loss_toward_the_interior_error(monkeypatch):
    from training import wiener_net as training

    monkeypatch.setattr(training, "SSIM_WEIGHT", 0.0)
    sharp = torch.zeros(1, 1, 32, 32)
    interior = torch.zeros(1, 1, 32, 32)
    interior[..., 8:-8, 8:-8] = 1
    frame_error = sharp.clone()
    frame_error[..., :4, :] = 0.5  # large errors in the frame only
    full_only = training.restoration_loss(frame_error, sharp)
    weighted = training.restoration_loss(frame_error, sharp, interior, interior_weight=0.75)
    # The interior is exact, so its log-MSE is at the floor and the weighted loss is far lower.
    assert float(weighted) < float(full_only) - 0.5
    assert float(training.restoration_loss(frame_error, sharp, interior, 0.0)) == pytest.approx(
        float(full_only)
    )


def test_validation_scores_the_network_against_wiener_with_the_best_snr():
    from training import wiener_net as training

    config = training.WienerNetTrainingConfig(
        batch=4, patch=48, kernel_pool_size=8, n_dead_leaves=2, validation_batches=1
    )
    validation = training.validation_batches(config, torch.device("cpu"))
    scores = training.evaluate(
        wn.load_wiener_net(torch.device("cpu")), validation, torch.tensor(wn.WIENER_STACK_SNRS_DB)
    )
    # The oracle picks per crop among the stack, which holds the member at the estimated SNR.
    assert scores["psnr_oracle"] >= scores["psnr_base"]
    assert scores["psnr_oracle"] > scores["psnr_blurred"]
    assert 0.0 <= scores["lost_to_oracle"] <= 1.0
    # Without the frame band, where blur from beyond the crop cannot be undone, scores are higher.
    assert scores["psnr_oracle_interior"] > scores["psnr_oracle"]
    assert 0.0 <= scores["lost_interior"] <= 1.0


def test_training_command_chains_three_stages(tmp_path, monkeypatch):
    """The default command runs three stages, each starting from the weights of the one before."""
    from training import train
    from training import wiener_net as training

    runs = []

    def fake_training(config, out_path):
        runs.append((config, out_path))
        config.history.append({"step": config.steps, "psnr_net": 30.0 + len(runs)})
        torch.save({"run": torch.tensor(len(runs))}, out_path)

    monkeypatch.setattr(training, "train_wiener_net", fake_training)
    out = tmp_path / "wn.pt"
    train.main(["wiener-net", "--steps", "7", "--seed", "5", "--out", str(out)])
    (first, first_out), (second, second_out), (third, third_out) = runs
    assert first.steps == 7 and first.init is None and first.interior_weight == 0.0
    assert second.init == str(first_out) and third.init == str(second_out) and third_out == out
    for stage in (second, third):
        for key, value in training.FINE_TUNING.items():
            assert getattr(stage, key) == value
    assert not first.residual_correction and not second.residual_correction
    assert third.residual_correction
    assert (first.seed, second.seed, third.seed) == (5, 5, 5 + training.CORRECTION_TUNING_SEED_OFFSET)
    report = out.with_suffix(".md").read_text()
    assert "## Stage 1 (from scratch)" in report and "| 7 | 31.0000 |" in report
    assert "## Stage 2 (fine-tuning)" in report and "| 1200 | 33.0000 |" in report

    # --init skips the first stage (--init-stage 2: the second too) and appends the starting report.
    out.with_suffix(".md").write_text("# Earlier: training report\n\n## Settings\n")
    for init_stage, expected in ((1, [False, True]), (2, [True])):
        runs.clear()
        tuned = tmp_path / f"tuned{init_stage}.pt"
        train.main(["wiener-net", "--init", str(out), "--init-stage", str(init_stage), "--out", str(tuned)])
        assert [config.residual_correction for config, _ in runs] == expected
        assert runs[0][0].init == str(out) and runs[-1][1] == tuned
        report = tuned.with_suffix(".md").read_text()
        assert "Stage 1 (from scratch)" not in report
        assert f"## Report of the starting weights (`{out}`)" in report and "### Earlier" in report
    with pytest.raises(SystemExit):
        train.main(["wiener-net", "--stage", "base", "--init", str(out)])
    with pytest.raises(SystemExit):
        train.main(["wiener-net", "--init-stage", "2"])


def test_the_tuning_batch_widths_and_noise_options_reach_the_stages(tmp_path, monkeypatch):
    from training import train
    from training import wiener_net as training

    runs = []

    def fake_training(config, out_path):
        runs.append(config)
        torch.save({}, out_path)

    monkeypatch.setattr(training, "train_wiener_net", fake_training)
    train.main(
        [
            "wiener-net",
            "--batch",
            "48",
            "--tuning-batch",
            "24",
            "--tuning-steps",
            "30",
            "--widths",
            "48,64,96,128",
            "--noise-range",
            "0.004",
            "0.035",
            "--procedural-share",
            "0.15",
            "0.1",
            "--kernel-error-share",
            "0.25",
            "--kernel-error-sigma",
            "0.6",
            "1.0",
            "--text-share",
            "0.05",
            "--network-passes",
            "2",
            "--out",
            str(tmp_path / "wn.pt"),
        ]
    )
    assert [(c.batch, c.steps) for c in runs] == [(48, 4000), (24, 30), (24, 30)]
    assert [c.network_passes for c in runs] == [1, 2, 2]
    assert all(c.widths == (48, 64, 96, 128) for c in runs)
    assert all(c.noise_sigma_range == (0.004, 0.035) for c in runs)
    assert all((c.texture_fraction, c.point_field_fraction) == (0.15, 0.1) for c in runs)
    assert all(c.n_textures == c.n_point_fields == train.PROCEDURAL_POOL for c in runs)
    assert all(c.kernel_error_share == 0.25 for c in runs)
    assert all(c.kernel_error_sigma_range == (0.6, 1.0) for c in runs)
    assert all((c.text_fraction, c.n_text_pages) == (0.05, train.PROCEDURAL_POOL) for c in runs)
    runs.clear()
    train.main(["wiener-net", "--out", str(tmp_path / "plain.pt")])
    assert [c.batch for c in runs] == [16, training.FINE_TUNING["batch"], training.FINE_TUNING["batch"]]
    assert all(c.widths == wn.WIDTHS for c in runs) and all(c.network_passes == 1 for c in runs)
    default_noise = training.WienerNetTrainingConfig().noise_sigma_range
    assert all(c.noise_sigma_range == default_noise for c in runs)
    assert all(c.n_textures == c.n_point_fields == c.n_text_pages == 0 for c in runs)
    assert all(c.kernel_error_share == 0 for c in runs)
    assert all(
        c.kernel_error_sigma_range == training.WienerNetTrainingConfig().kernel_error_sigma_range
        for c in runs
    )
    with pytest.raises(SystemExit, match="LOW <= HIGH"):
        train.main(["wiener-net", "--kernel-error-sigma", "1.0", "0.5", "--out", str(tmp_path / "bad.pt")])
    with pytest.raises(SystemExit, match="share of the crops"):
        train.main(["wiener-net", "--kernel-error-share", "1.5", "--out", str(tmp_path / "bad.pt")])
    with pytest.raises(SystemExit, match="share of the crops"):
        train.main(["wiener-net", "--text-share", "-0.1", "--out", str(tmp_path / "bad.pt")])
    with pytest.raises(SystemExit, match="--procedural-share is a share of the crops"):
        train.main(["wiener-net", "--procedural-share", "0.2", "1.2", "--out", str(tmp_path / "bad.pt")])


def test_weights_of_other_widths_load_into_a_network_of_those_widths():
    wider = wn.WienerNet(widths=(8, 12, 16, 24))
    loaded = wn.wiener_net_from_weights(wider.state_dict())
    assert [m[0].out_channels for m in loaded.encoders] == [8, 12, 16, 24]
    features = torch.randn(1, len(wn.WIENER_STACK_SNRS_DB) + 2, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(features), wider.eval()(features))
    shipped = wn.load_wiener_net(torch.device("cpu")).state_dict()
    assert [m[0].out_channels for m in wn.wiener_net_from_weights(shipped).encoders] == list(wn.WIDTHS)


def test_training_pools_are_built_once_and_replayed_with_the_same_draws(monkeypatch):
    """A pool asked for again from the same generator state is replayed, and the stream goes on as built."""
    from training import kernels, replay, sources
    from training.sources import PatchSampler

    monkeypatch.setattr(replay, "_replays", type(replay._replays)())
    built = []
    real_dead_leaves = sources.dead_leaves

    def counted_dead_leaves(size, rng):
        built.append(size)
        return real_dead_leaves(size, rng)

    counted_dead_leaves.__name__ = "dead_leaves"
    monkeypatch.setattr(sources, "dead_leaves", counted_dead_leaves)

    def draw(seed):
        rng = np.random.default_rng(seed)
        sampler = PatchSampler(40, rng, n_dead_leaves=3, dead_leaves_size=64)
        pool = kernels.kernel_pool(5, rng, 15)
        return sampler.sample(4), pool, rng.integers(1 << 30, size=3)

    first = draw(7)
    assert len(built) == 3
    again = draw(7)
    assert len(built) == 3  # replayed, not built again
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not again[1].flags.writeable
    # The same numbers as a build from scratch: the replay moved the generator as the build did.
    monkeypatch.setattr(replay, "_replays", type(replay._replays)())
    fresh = draw(7)
    assert len(built) == 6
    for a, b in zip(first, fresh):
        np.testing.assert_array_equal(a, b)
    other = draw(8)
    assert len(built) == 9 and not np.array_equal(other[1], first[1])


def test_the_training_loss_can_be_taken_after_the_residual_correction():
    """With ``residual_correction`` the restored batch is the engine's: network, then the correction."""
    from training import wiener_net as training

    sharp, blurred, kernel = point_field_case(seed=3)
    model = wn.load_wiener_net(torch.device("cpu"))
    snrs = torch.tensor(wn.WIENER_STACK_SNRS_DB)
    plain = training.restore_batch(model, blurred, kernel, snrs)
    corrected = training.restore_batch(model, blurred, kernel, snrs, residual_correction=True)
    assert torch.allclose(corrected, wn.correct_by_residual(blurred, plain, kernel), atol=1e-6)
    assert not torch.allclose(corrected, plain, atol=1e-4)
    # Gradients reach the network through the correction.
    model_copy = wn.WienerNet()
    model_copy.load_state_dict(model.state_dict())
    restored = training.restore_batch(model_copy, blurred, kernel, snrs, residual_correction=True)
    restored.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model_copy.parameters())


def test_a_stage_can_train_the_mean_of_the_network_over_its_views():
    """``passes=2`` is the engine's two-view ensemble, and gradients reach the network through both views."""
    from training import wiener_net as training

    sharp, blurred, kernel = point_field_case(seed=4)
    model = wn.load_wiener_net(torch.device("cpu"))
    snrs = torch.tensor(wn.WIENER_STACK_SNRS_DB)
    with torch.no_grad():
        features, mean, scale = wn.wiener_net_features(blurred, kernel, snrs)
        expected = wn.apply_network_ensemble(model, features, 2) * scale + mean
        one_pass = training.restore_batch(model, blurred, kernel, snrs)
        two_passes = training.restore_batch(model, blurred, kernel, snrs, passes=2)
    assert torch.allclose(two_passes, expected, atol=1e-6)
    assert not torch.allclose(two_passes, one_pass, atol=1e-4)
    # The second view alone (the plane turned by half a turn) makes up the difference.
    with torch.no_grad():
        turned = wn.apply_network(model, features.flip(-2, -1)).flip(-2, -1) * scale + mean
    assert torch.allclose(two_passes, (one_pass + turned) / 2, atol=1e-5)
    model_copy = wn.WienerNet()
    model_copy.load_state_dict(model.state_dict())
    restored = training.restore_batch(model_copy, blurred, kernel, snrs, residual_correction=True, passes=2)
    restored.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model_copy.parameters())


@pytest.mark.parametrize(
    "only, share",
    [
        ("textures", {"n_textures": 2, "texture_fraction": 1.0}),
        ("point_fields", {"n_point_fields": 2, "point_field_fraction": 1.0}),
    ],
)
def test_a_procedural_share_reaches_the_training_crops_but_not_the_validation_crops(only, share):
    from dataclasses import replace

    from training import wiener_net as training

    cpu = torch.device("cpu")
    config = training.WienerNetTrainingConfig(
        batch=4, patch=48, kernel_pool_size=8, n_dead_leaves=2, validation_batches=1
    )
    fraction = next(key for key in share if key.endswith("_fraction"))
    mixed = replace(config, **share)
    assert getattr(training.BlurredBatches(mixed, 0, cpu).sampler, fraction) == 1.0
    assert getattr(training.BlurredBatches(config, 0, cpu).sampler, fraction) == 0.0
    # The validation crops are the same whatever the run's share ...
    ((sharp, blurred, kernels),) = training.validation_batches(config, cpu)
    ((sharp_t, blurred_t, kernels_t),) = training.validation_batches(mixed, cpu)
    assert torch.equal(sharp, sharp_t) and torch.equal(blurred, blurred_t)
    # ... and the set of that pool is another set of crops, drawn only from it.
    ((sharp_x, _, _),) = training.validation_batches(config, cpu, only=only)
    assert not torch.equal(sharp, sharp_x)


def test_a_text_share_draws_training_crops_from_printed_text_but_not_the_validation_crops():
    from dataclasses import replace

    from training import wiener_net as training

    cpu = torch.device("cpu")
    config = training.WienerNetTrainingConfig(
        batch=4, patch=48, kernel_pool_size=8, n_dead_leaves=2, validation_batches=1
    )
    text = replace(config, n_text_pages=2, text_fraction=1.0)
    sampler = training.BlurredBatches(text, 0, cpu).sampler
    assert sampler.text_fraction == 1.0 and len(sampler.text_pages) == 2
    assert training.BlurredBatches(config, 0, cpu).sampler.text_fraction == 0.0
    sharp_text = training.BlurredBatches(text, 0, cpu).draw()[0]
    assert not torch.equal(sharp_text, training.BlurredBatches(config, 0, cpu).draw()[0])
    ((sharp, blurred, _),) = training.validation_batches(config, cpu)
    ((sharp_t, blurred_t, _),) = training.validation_batches(text, cpu)
    assert torch.equal(sharp, sharp_t) and torch.equal(blurred, blurred_t)


def test_a_kernel_error_share_widens_the_kernels_handed_over_but_not_the_blur():
    """Crops with a kernel error are blurred as before; only the kernel the network gets is wider."""
    from dataclasses import replace

    from training import wiener_net as training
    from training.kernels import widen_kernels

    cpu = torch.device("cpu")
    config = training.WienerNetTrainingConfig(
        batch=6, patch=48, kernel_pool_size=8, n_dead_leaves=2, validation_batches=1
    )
    sharp, blurred, kernels = training.BlurredBatches(config, 0, cpu).draw()
    every = replace(config, kernel_error_share=1.0, kernel_error_sigma_range=(0.8, 0.8))
    sharp_w, blurred_w, kernels_w = training.BlurredBatches(every, 0, cpu).draw()
    assert torch.equal(sharp, sharp_w) and torch.equal(blurred, blurred_w)
    torch.testing.assert_close(kernels_w, widen_kernels(kernels, 0.8), rtol=0, atol=0)
    assert not torch.allclose(kernels_w, kernels)
    # A share of 0.5 hands some crops their true kernel and the others a widened one.
    half = training.BlurredBatches(replace(config, kernel_error_share=0.5), 0, cpu)
    given = torch.cat([half.draw()[2] for _ in range(4)])
    true = torch.cat([b.draw()[2] for b in [training.BlurredBatches(config, 0, cpu)] for _ in range(4)])
    unchanged = (given == true).flatten(1).all(1)
    assert 0 < int(unchanged.sum()) < len(unchanged)
    # The validation crops keep the true kernels whatever the run's share.
    ((_, _, validation_kernels),) = training.validation_batches(every, cpu)
    ((_, _, plain_kernels),) = training.validation_batches(config, cpu)
    assert torch.equal(validation_kernels, plain_kernels)


@pytest.mark.parametrize("sigma", [0.4, 1.0])
def test_widened_kernels_gain_the_variance_of_their_own_gaussian(sigma):
    from training.kernels import widen_kernels

    kernels = torch.zeros(2, 15, 15)
    kernels[0, 7, 7] = 1.0
    kernels[1, 7, 5:10] = 0.2
    sigmas = [sigma, sigma / 2]  # one each
    wide = widen_kernels(kernels, sigmas)
    torch.testing.assert_close(wide.sum(dim=(-2, -1)), torch.ones(2))
    coords = torch.arange(15.0)

    def variance(k, axis):
        marginal = k.sum(dim=axis)
        mean = (marginal * coords).sum()
        return float((marginal * (coords - mean) ** 2).sum())

    for before, after, s in zip(kernels, wide, sigmas):
        # Convolution adds variances: that of the Gaussian as sampled on the 7 px grid (below s^2
        # for narrow ones) along each axis.
        gaussian = torch.from_numpy(gaussian_psf(s, size=7)).sum(0)
        added = float((gaussian * (torch.arange(7.0) - 3) ** 2).sum())
        assert 0 < added <= s**2 + 1e-6
        for axis in (0, 1):
            assert abs(variance(after, axis) - variance(before, axis) - added) < 1e-4


def test_the_blurred_plane_is_lined_up_with_an_off_centre_kernel():
    """A kernel whose mass is off its centre shifts the blurred plane; the network gets it moved back."""
    image = data.camera().astype(np.float32)[100:164, 100:164] / 255.0
    x = torch.from_numpy(image)[None, None]
    delta = torch.zeros(1, 11, 11)
    delta[0, 5 + 2, 5 - 3] = 1.0  # all its mass 2 px down and 3 px left of the centre
    assert wn.kernel_centroid_offsets(delta).tolist() == [[2.0, -3.0]]
    # The centre is the Wiener filter's origin, (h // 2, w // 2): an even box is half a pixel off it.
    assert wn.kernel_centroid_offsets(torch.ones(1, 4, 4) / 16).tolist() == [[-0.5, -0.5]]
    blurred = torch.from_numpy(fftconvolve(np.pad(image, 5, mode="edge"), delta[0].numpy(), mode="valid"))
    assert not torch.allclose(blurred[8:-8, 8:-8], x[0, 0, 8:-8, 8:-8])  # moved by (2, -3)
    aligned = wn.align_with_kernel_centroid(blurred[None, None], delta)
    assert torch.allclose(aligned[0, 0, 8:-8, 8:-8], x[0, 0, 8:-8, 8:-8], atol=1e-5)
    # Centred kernels (all training kernels) leave the plane exactly as it is, per kernel of a batch.
    centred = torch.stack([random_motion_psf_tensor(seed) for seed in (1, 2)])
    batch = torch.rand(2, 1, 32, 32)
    assert torch.equal(wn.align_with_kernel_centroid(batch, centred), batch)
    mixed = torch.stack([centred[0], torch.roll(centred[1], (3, 0), dims=(0, 1))])
    moved = wn.align_with_kernel_centroid(batch, mixed)
    assert torch.equal(moved[0], batch[0]) and not torch.equal(moved[1], batch[1])


def random_motion_psf_tensor(seed):
    return torch.from_numpy(np.pad(random_motion_psf(15, rng=seed), 8).astype(np.float32))


def point_field_case(seed=0, noise=0.002):
    """Sharp plane of a few bright points on black, its real-boundary blur with a shake kernel, noise."""
    rng = np.random.default_rng(seed)
    kernel = random_motion_psf(11, rng=seed)
    big = np.zeros((96 + 10, 96 + 10), np.float32)
    big[tuple(rng.integers(10, 96, size=(2, 12)))] = 1.0
    sharp = big[5:-5, 5:-5]
    blurred = fftconvolve(big, kernel, mode="valid") + rng.normal(0, noise, (96, 96))
    as_plane = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    return as_plane(sharp), as_plane(blurred), torch.from_numpy(kernel.astype(np.float32))[None]


def test_the_residual_correction_puts_back_what_a_restoration_missed():
    """Points left out of a restoration are in the residual above the noise: the correction restores them."""
    sharp, blurred, kernel = point_field_case()
    missed = torch.zeros_like(sharp)  # a restoration that lost every point
    corrected = wn.correct_by_residual(blurred, missed, kernel)
    inner = (..., slice(8, -8), slice(8, -8))
    error_before = (missed - sharp)[inner].square().mean()
    error_after = (corrected - sharp)[inner].square().mean()
    assert error_after < 0.75 * error_before  # 0.30-0.63 over seeds 0-5
    # Mass comes back where the points are, not spread over the background.
    points = sharp[inner] > 0
    assert corrected[inner][points].mean() > 20 * corrected[inner][~points].abs().mean()


def test_the_residual_correction_leaves_a_restoration_whose_residual_is_noise_nearly_alone():
    sharp, blurred, kernel = point_field_case(seed=1, noise=0.01)
    corrected = wn.correct_by_residual(blurred, sharp, kernel)  # the exact answer: residual = noise
    change = (corrected - sharp)[..., 8:-8, 8:-8]
    assert change.square().mean().sqrt() < 0.2 * 0.01


def test_the_residual_correction_scales_with_the_intensities():
    sharp, blurred, kernel = point_field_case(seed=2)
    partial = 0.5 * sharp
    corrected = wn.correct_by_residual(blurred, partial, kernel)
    scaled = wn.correct_by_residual(1000.0 * blurred, 1000.0 * partial, kernel)
    assert torch.allclose(scaled, 1000.0 * corrected, rtol=1e-4, atol=1e-2)


def test_bfloat16_convolutions_are_only_for_cpus_that_run_them_natively(monkeypatch):
    monkeypatch.delenv(devices.CPU_BFLOAT16_OPT_OUT, raising=False)
    monkeypatch.setattr(devices, "_cpu_has_native_bfloat16", lambda: True)
    assert devices.cpu_bfloat16_is_fast(torch.device("cpu"))
    assert not devices.cpu_bfloat16_is_fast(torch.device("cuda"))
    monkeypatch.setenv(devices.CPU_BFLOAT16_OPT_OUT, "1")
    assert not devices.cpu_bfloat16_is_fast(torch.device("cpu"))
    monkeypatch.delenv(devices.CPU_BFLOAT16_OPT_OUT)
    monkeypatch.setattr(devices, "_cpu_has_native_bfloat16", lambda: False)
    assert not devices.cpu_bfloat16_is_fast(torch.device("cpu"))


def test_bfloat16_convolutions_change_the_restoration_by_little(case, shake, monkeypatch):
    sharp, blurred = case
    monkeypatch.delenv(devices.CPU_BFLOAT16_OPT_OUT, raising=False)
    restored = {}
    for native in (False, True):
        # Where the CPU lacks bfloat16, torch emulates it: slower, the same numbers.
        monkeypatch.setattr(devices, "_cpu_has_native_bfloat16", lambda native=native: native)
        restored[native] = wiener_net_deconvolve(blurred, shake)
    assert restored[True].dtype == np.float32
    difference = np.abs(restored[True] - restored[False])
    assert difference.max() > 0  # the bfloat16 path ran
    assert difference.mean() < 2e-3 and difference.max() < 2e-2  # intensities 0..1
    assert abs(psnr(sharp, restored[True]) - psnr(sharp, restored[False])) < 0.05


def test_training_runs_the_network_in_float32_whatever_the_cpu(case, shake, monkeypatch):
    from training.wiener_net import restore_batch

    _, blurred = case
    model = wn.load_wiener_net(torch.device("cpu"))
    y = torch.from_numpy(blurred)[None, None]
    kernel = torch.from_numpy(shake / shake.sum())[None].float()
    snrs = torch.tensor(wn.WIENER_STACK_SNRS_DB)
    results = []
    for native in (False, True):
        monkeypatch.setattr(devices, "_cpu_has_native_bfloat16", lambda native=native: native)
        with torch.no_grad():
            results.append(restore_batch(model, y, kernel, snrs))
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)


@pytest.fixture(scope="module")
def case_features(case, shake):
    """The shipped network and its normalised input for the test crop."""
    _, blurred = case
    model = wn.load_wiener_net(torch.device("cpu"))
    features, _, _ = wn.wiener_net_features(
        torch.from_numpy(blurred)[None, None],
        torch.from_numpy(shake)[None].float(),
        torch.tensor(wn.WIENER_STACK_SNRS_DB),
    )
    return model, features


def test_an_ensemble_of_one_is_the_single_network_pass(case_features):
    model, features = case_features
    with torch.inference_mode():
        single = wn.apply_network(model, features)
        np.testing.assert_array_equal(wn.apply_network_ensemble(model, features, 1).numpy(), single.numpy())
        two = wn.apply_network_ensemble(model, features, 2)
        turned = wn.apply_network(model, features.flip((-2, -1))).flip((-2, -1))
    np.testing.assert_allclose(two.numpy(), ((single + turned) / 2).numpy(), atol=1e-5)
    assert float((two - single).abs().max()) > 1e-3  # the turned view is a different pass


@pytest.mark.parametrize(
    ("ensemble", "view"),
    [
        (2, lambda t: t.flip((-2, -1))),
        (4, lambda t: t.flip(-1)),
        (4, lambda t: t.flip(-2)),
        (8, lambda t: t.transpose(-1, -2)),
        (8, lambda t: t.rot90(1, (-2, -1))),
    ],
)
def test_an_ensemble_gives_each_of_its_own_views_of_the_input_that_view_of_its_output(
    case_features, ensemble, view
):
    # The first 1, 2, 4 and 8 views are groups: turning the input only reorders the passes.
    model, features = case_features
    with torch.inference_mode():
        restored = wn.apply_network_ensemble(model, features, ensemble)
        of_view = wn.apply_network_ensemble(model, view(features), ensemble)
        single_change = wn.apply_network(model, view(features)) - view(wn.apply_network(model, features))
    np.testing.assert_allclose(of_view.numpy(), view(restored).numpy(), atol=1e-5)
    assert single_change.abs().max() > 1e-2  # a single pass is not equivariant: the test could fail


def test_more_views_restore_a_known_blur_at_least_as_well(case, shake):
    sharp, blurred = case
    single = psnr(sharp, wiener_net_deconvolve(blurred, shake, ensemble=1))
    eight = psnr(sharp, wiener_net_deconvolve(blurred, shake, ensemble=8))
    assert eight > single


@pytest.mark.parametrize("ensemble", [0, 3, 16, True, 2.5])
def test_an_ensemble_size_outside_one_two_four_eight_is_refused(case, shake, ensemble):
    _, blurred = case
    with pytest.raises(ValueError, match="ensemble"):
        wiener_net_deconvolve(blurred, shake, ensemble=ensemble)


def _blind_pairs_file(path, true, estimate):
    np.savez(
        path,
        seed=0,
        true=np.stack(true).astype(np.float32),
        estimate=np.stack(estimate).astype(np.float32),
        similarity=np.zeros(len(true), np.float32),
    )


def test_a_blind_share_blurs_by_the_pairs_true_kernels_and_hands_over_their_estimates(tmp_path):
    """The crops of the blind share are blurred by a pair's true kernel; the network gets its estimate."""
    from dataclasses import replace

    from napari_deblur.engine import gaussian_psf
    from training import wiener_net as training
    from training.kernels import embed

    point = embed(np.ones((1, 1), np.float32), 31)  # no blur at all
    estimate = embed(gaussian_psf(2.0, size=15), 31)
    pairs = tmp_path / "pairs.npz"
    _blind_pairs_file(pairs, [point], [estimate])
    cpu = torch.device("cpu")
    config = training.WienerNetTrainingConfig(
        batch=6,
        patch=48,
        kernel_pool_size=8,
        n_dead_leaves=2,
        validation_batches=1,
        noise_sigma_range=(1e-9, 1e-9),
        poisson_fraction=0.0,
    )
    every = replace(config, blind_share=1.0, blind_pairs=str(pairs))
    sharp, blurred, given = training.BlurredBatches(every, 0, cpu).draw()
    torch.testing.assert_close(blurred, sharp, rtol=0, atol=1e-6)  # blurred by the pair's point
    assert torch.equal(given, torch.from_numpy(estimate).expand(6, 31, 31))
    # Without the share nothing is drawn for it: the same crops and kernels as a plain run.
    plain_sharp, _, plain_given = training.BlurredBatches(config, 0, cpu).draw()
    assert torch.equal(plain_sharp, sharp) and not torch.equal(plain_given, given)
    # A share of one half: some crops keep the pool's kernels, the others get the estimate.
    half = training.BlurredBatches(replace(every, blind_share=0.5), 0, cpu)
    handed = torch.cat([half.draw()[2] for _ in range(4)])
    is_estimate = (handed == torch.from_numpy(estimate)).flatten(1).all(1)
    assert 0 < int(is_estimate.sum()) < len(is_estimate)
    # The validation crops keep the true kernels.
    ((_, _, validation_kernels),) = training.validation_batches(every, cpu)
    ((_, _, plain_kernels),) = training.validation_batches(config, cpu)
    assert torch.equal(validation_kernels, plain_kernels)


def test_a_blind_estimate_is_moved_onto_its_true_kernel():
    from napari_deblur.engine import random_motion_psf
    from training.blind_pairs import aligned_in_box
    from training.kernels import embed

    truth = embed(random_motion_psf(13, rng=np.random.default_rng(3)).astype(np.float32), 31)
    estimate = np.zeros((41, 41), np.float32)
    estimate[5 + 2 : 36 + 2, 5 - 3 : 36 - 3] = truth  # the same kernel, 2 px down and 3 px left, larger box
    aligned = aligned_in_box(estimate, truth)
    assert aligned.shape == (31, 31)
    np.testing.assert_allclose(aligned, truth, atol=1e-6)
    assert aligned.sum() == pytest.approx(1.0)


def test_the_blind_share_needs_its_pairs_file(tmp_path, monkeypatch):
    from training import train
    from training import wiener_net as training

    runs = []
    monkeypatch.setattr(training, "train_wiener_net", lambda config, out: runs.append(config))
    with pytest.raises(SystemExit, match="--blind-pairs"):
        train.main(["wiener-net", "--blind-share", "0.25", "--out", str(tmp_path / "x.pt")])
    with pytest.raises(SystemExit, match="share of the crops"):
        train.main(
            ["wiener-net", "--blind-share", "1.5", "--blind-pairs", "p.npz", "--out", str(tmp_path / "x.pt")]
        )
    pairs = tmp_path / "pairs.npz"
    point = np.zeros((31, 31), np.float32)
    point[15, 15] = 1
    _blind_pairs_file(pairs, [point] * 480, [point] * 480)
    monkeypatch.setattr("training.blind_pairs.BLIND_PAIRS_COUNT", 480)
    train.main(
        [
            "wiener-net",
            "--init",
            str(pairs),
            "--init-stage",
            "2",
            "--blind-share",
            "0.25",
            "--blind-pairs",
            str(pairs),
            "--out",
            str(tmp_path / "x.pt"),
        ]
    )
    assert [(c.blind_share, c.blind_pairs) for c in runs] == [(0.25, str(pairs))]
