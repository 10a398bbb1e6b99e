"""The baseline blur-map networks of ``training/baselines.py`` (not shipped) and how the engine runs them."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from skimage import data

from napari_deblur.engine import estimate_blur_map, iter_estimate_blur_map, run_job, sharpen_gwis
from napari_deblur.engine.core import devices
from napari_deblur.engine.methods import blur_map as bm
from training import baselines


@pytest.fixture(scope="module")
def blurred_photo():
    """A 96x128 crop of the astronaut (train split), Gaussian blur 2 px, light noise."""
    photo = data.astronaut()[..., 1].astype(np.float64)[40:136, 150:278] / 255.0
    out = gaussian_filter(photo, 2.0, mode="reflect")
    out += np.random.default_rng(0).normal(0, 1.0 / 255, out.shape)
    return out.astype(np.float32)


def test_paper_network_has_the_published_layers():
    layers = [m for m in baselines.PaperBlurNet().layers if isinstance(m, torch.nn.Conv2d)]
    assert [tuple(m.weight.shape) for m in layers] == [
        (32, 1, 5, 5),
        (32, 32, 5, 5),
        (64, 32, 11, 11),
        (17, 64, 1, 1),
        (1, 17, 1, 1),
    ]
    assert any(isinstance(m, torch.nn.MaxPool2d) for m in baselines.PaperBlurNet().layers)
    assert bm.output_stride(baselines.PaperBlurNet()) == 2
    assert bm.output_stride(bm.BlurMapNet()) == 4


def test_the_papers_network_runs_once_through_the_engine(blurred_photo, monkeypatch):
    monkeypatch.setenv(devices.CPU_BFLOAT16_OPT_OUT, "1")
    network = baselines.load_paper_blur_net()
    features = bm.blur_map_features(torch.from_numpy(blurred_photo)[None, None])
    with torch.inference_mode():
        expected = bm.target_to_level(bm.predict_log_level(network, features))
    levels = run_job(iter_estimate_blur_map(blurred_photo, network=network, views=baselines.PAPER_VIEWS))
    np.testing.assert_allclose(levels, expected[0, 0].numpy(), atol=1e-4)


def test_the_gwis_tuned_map_is_in_the_blur_map_units(blurred_photo):
    tuned = run_job(
        iter_estimate_blur_map(
            blurred_photo, network=baselines.load_gwis_level_net(), views=baselines.GWIS_LEVEL_VIEWS
        )
    )
    assert tuned.shape == blurred_photo.shape and tuned.dtype == np.float32
    assert 0 <= tuned.min() and tuned.max() <= bm.MAX_LEVEL
    assert np.abs(tuned - estimate_blur_map(blurred_photo)).max() > 0.05  # another network, not a copy
    assert sharpen_gwis(blurred_photo, tuned).shape == blurred_photo.shape


def test_missing_weights_name_the_command_that_makes_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m training blurmap --baseline"):
        baselines.load_weights(
            baselines.PaperBlurNet(), tmp_path / "none.pt", baselines.PAPER_RETRAIN_COMMAND
        )


def test_the_weights_and_their_cards_are_kept_in_training():
    for name in (baselines.PAPER_WEIGHTS_FILE, baselines.GWIS_WEIGHTS_FILE):
        assert (baselines.WEIGHTS_DIR / name).is_file()
        assert (baselines.WEIGHTS_DIR / name).with_suffix(".md").is_file()
