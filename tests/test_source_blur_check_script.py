"""The premise of scripts/blur_map_source_blur_check.py: protocol 2's blur composes with blur already
in the image, so an image with its own blur s0 blurred by sigma has the pixels of a sharp image
blurred by hypot(sigma, s0)."""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def check(load_script):
    return load_script("blur_map_source_blur_check")


@pytest.mark.parametrize("own_blur, sigma", [(1.0, 1.5), (2.5, 0.5), (2.0, 2.0)])
def test_protocol_blur_of_a_blurred_source_is_the_total_blur_of_the_sharp_source(check, own_blur, sigma):
    from napari_deblur.engine.training.sources import dead_leaves

    margin = int(np.ceil(4 * check.bench.PATRO_SIGMAS[-1])) + 1
    sharp = dead_leaves(96 + 2 * margin, np.random.default_rng(3)).astype(np.float64)
    shape = (96, 96)
    columns = np.full(shape[1], sigma)
    observed, _ = check.bench.mixed_columns(check.gaussian_blurred(sharp, own_blur), shape, columns)
    total, _ = check.bench.mixed_columns(sharp, shape, np.full(shape[1], np.hypot(sigma, own_blur)))
    other, _ = check.bench.mixed_columns(sharp, shape, columns)
    def rms(a, b):
        return float(np.sqrt(np.mean((a - b) ** 2)))

    # Equal to the sharp image under the total blur, and far from it under the protocol's sigma alone.
    assert rms(observed, total) < 0.002
    assert rms(observed, other) > 20 * rms(observed, total)


def test_faithful_estimator_error_is_zero_without_own_blur_and_grows_with_it(check):
    profiles = check.bench.patro_profiles(384)
    for sigma_of_column in profiles.values():
        assert check.faithful_rmse(0.0, sigma_of_column) == pytest.approx(0.0, abs=1e-12)
        errors = [check.faithful_rmse(own, sigma_of_column) for own in check.OWN_BLURS]
        assert all(a < b for a, b in zip(errors, errors[1:]))
    # At the ramp's sharp end (sigma 0.3) with own blur 3 px the reading is hypot(0.3, 3) - 0.3 too high.
    assert check.faithful_rmse(3.0, np.array([0.3])) == pytest.approx(np.hypot(0.3, 3.0) - 0.3)
