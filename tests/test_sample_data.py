"""Offline, deterministic sample data: the numpy builders and the npe2 sample functions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter, sobel
from scipy.signal import fftconvolve

from napari_deblur.layer_roles import BLUR_MAP_ROLE, ROLE_KEY, is_psf_metadata
from napari_deblur.sample_data import (
    camera_shake_arrays,
    camera_shake_sample,
    defocus_ramp_arrays,
    defocus_ramp_sample,
    defocused_zstack_arrays,
    defocused_zstack_sample,
)


def _sharpness(image: np.ndarray) -> float:
    """Mean gradient magnitude: larger for sharper content."""
    image = np.asarray(image, dtype=np.float64)
    return float(np.mean(np.hypot(sobel(image, axis=-1), sobel(image, axis=-2))))


def _assert_same_layers(first, second):
    assert len(first) == len(second)
    for (data_a, attrs_a, type_a), (data_b, attrs_b, type_b) in zip(first, second, strict=True):
        assert type_a == type_b and attrs_a["name"] == attrs_b["name"]
        np.testing.assert_array_equal(data_a, data_b)


# --------------------------------------------------------------------------- defocus ramp


def test_defocus_ramp_arrays_shapes_ranges_and_map():
    blurred, true_map = defocus_ramp_arrays((96, 80))
    assert blurred.shape == true_map.shape == (96, 80)
    assert blurred.dtype == true_map.dtype == np.float32
    assert 0.0 <= blurred.min() and blurred.max() <= 1.0
    # sigma 0 at the top row, 6 at the bottom row, linear in between, constant along a row
    np.testing.assert_allclose(true_map[0], 0.0)
    np.testing.assert_allclose(true_map[-1], 6.0, rtol=1e-6)
    np.testing.assert_allclose(true_map[:, 0], np.linspace(0.0, 6.0, 96), atol=1e-5)
    assert np.all(true_map == true_map[:, :1])


def test_defocus_ramp_gets_blurrier_down_the_image():
    blurred, _ = defocus_ramp_arrays((128, 128))
    sharp, _ = defocus_ramp_arrays((128, 128), max_sigma=0.0)
    # detail kept in each third, relative to the same third of the sharp photo
    kept = [
        _sharpness(part[4:-4, 4:-4]) / _sharpness(reference[4:-4, 4:-4])
        for part, reference in zip(np.array_split(blurred, 3), np.array_split(sharp, 3), strict=True)
    ]
    assert 1.0 >= kept[0] > 1.5 * kept[1] > 2.25 * kept[2] > 0


def test_defocus_ramp_rows_equal_a_gaussian_blur_at_their_sigma():
    # with 25 rows every row's sigma (0, 0.25, ..., 6) is one of the pre-blurred levels
    blurred, true_map = defocus_ramp_arrays((25, 64))
    sharp, _ = defocus_ramp_arrays((25, 64), max_sigma=0.0)
    for row in (0, 5, 12, 24):
        sigma = float(true_map[row, 0])
        expected = gaussian_filter(sharp.astype(np.float64), sigma, mode="reflect") if sigma else sharp
        np.testing.assert_allclose(blurred[row], expected[row], atol=1e-5)


def test_defocus_ramp_sample_layers():
    layers = defocus_ramp_sample()
    _assert_same_layers(layers, defocus_ramp_sample())
    (image, image_attrs, image_type), (blur_map, map_attrs, map_type) = layers
    assert image_type == map_type == "image"
    assert image_attrs["name"] == "Defocus ramp (blurred)"
    assert map_attrs["name"] == "Defocus ramp: true blur map (px)"
    assert map_attrs["colormap"] == "inferno"
    assert tuple(map_attrs["contrast_limits"]) == (0, 6)
    assert map_attrs["metadata"][ROLE_KEY] == BLUR_MAP_ROLE
    assert image.shape == blur_map.shape and image.ndim == 2
    assert blur_map[0].max() == 0.0 and blur_map[-1].min() == pytest.approx(6.0)


def test_defocus_ramp_rejects_bad_arguments():
    with pytest.raises(ValueError, match="shape"):
        defocus_ramp_arrays((4, 64))
    with pytest.raises(ValueError, match="max_sigma"):
        defocus_ramp_arrays((32, 32), max_sigma=-1.0)


# --------------------------------------------------------------------------- camera shake


def test_camera_shake_arrays_are_deterministic_and_well_formed():
    blurred, psf, sharp = camera_shake_arrays(seed=3, shape=(96, 112), psf_size=15)
    again = camera_shake_arrays(seed=3, shape=(96, 112), psf_size=15)
    for first, second in zip((blurred, psf, sharp), again, strict=True):
        np.testing.assert_array_equal(first, second)
    assert blurred.shape == sharp.shape == (96, 112)
    assert psf.shape == (15, 15)
    assert blurred.dtype == psf.dtype == sharp.dtype == np.float32
    assert psf.sum() == pytest.approx(1.0, abs=1e-5) and psf.min() >= 0
    assert 0.0 <= sharp.min() and sharp.max() <= 1.0
    assert -0.1 < blurred.min() and blurred.max() < 1.1
    other_psf = camera_shake_arrays(seed=4, shape=(96, 112), psf_size=15)[1]
    assert not np.allclose(psf, other_psf)


def test_camera_shake_follows_the_blur_model_with_the_requested_noise():
    psf_size = 15
    blurred, psf, sharp = camera_shake_arrays(seed=1, shape=(128, 128), psf_size=psf_size)
    # Away from the frame, blurred = sharp (*) psf + noise, pixel-aligned with ``sharp``.
    model = fftconvolve(sharp.astype(np.float64), psf.astype(np.float64), mode="same")
    border = psf_size
    residual = (blurred - model)[border:-border, border:-border]
    assert residual.std() == pytest.approx(0.01, rel=0.15)
    assert abs(residual.mean()) < 0.003
    # The boundary is real: the frame is not a reflected/zero-padded convolution of ``sharp``.
    edge_error = np.abs(blurred - model)[:2].mean()
    assert edge_error > 0.003
    assert _sharpness(blurred) < _sharpness(sharp)


def test_camera_shake_rejects_bad_arguments():
    with pytest.raises(ValueError, match="odd"):
        camera_shake_arrays(psf_size=14)
    with pytest.raises(ValueError, match="smaller shape"):
        camera_shake_arrays(shape=(600, 600))


def test_camera_shake_sample_layers():
    layers = camera_shake_sample()
    _assert_same_layers(layers, camera_shake_sample())
    (image, image_attrs, _), (psf, psf_attrs, psf_type) = layers
    assert image_attrs["name"] == "Camera shake (blurred)"
    assert psf_attrs["name"] == "Camera shake PSF" and psf_type == "image"
    assert is_psf_metadata(psf_attrs["metadata"])
    assert psf_attrs["metadata"]["blur_level_px"] > 0
    assert not is_psf_metadata(image_attrs.get("metadata"))
    assert psf.ndim == 2 and psf.shape[0] % 2 == 1
    assert psf.sum() == pytest.approx(1.0, abs=1e-5)
    assert image.ndim == 2 and image.dtype == np.float32


# --------------------------------------------------------------------------- defocused z-stack


@pytest.fixture(scope="module")
def zstack():
    return defocused_zstack_arrays()


def test_zstack_shapes_dtypes_and_psfs(zstack):
    stack, psf_stack, sharp = zstack
    assert stack.shape == sharp.shape == (16, 128, 128)
    assert stack.dtype == psf_stack.dtype == sharp.dtype == np.float32
    depth, size, size_x = psf_stack.shape
    assert depth == 16 and size == size_x and size % 2 == 1
    np.testing.assert_allclose(psf_stack.sum(axis=(1, 2)), 1.0, atol=1e-5)
    assert stack.min() >= 0 and stack.max() < 1.5
    assert 0 <= sharp.min() and sharp.max() <= 1
    # sparse: a dark background with a few bright structures
    assert np.median(sharp) < 0.1 and sharp.max() > 0.8


def test_zstack_blur_grows_away_from_the_focal_plane(zstack):
    from napari_deblur.engine import psf_blur_level

    stack, psf_stack, sharp = zstack
    levels = np.array([psf_blur_level(plane) for plane in psf_stack])
    focal = 8
    assert int(np.argmin(levels)) == focal
    expected = 0.6 + 0.5 * np.abs(np.arange(16) - focal)
    np.testing.assert_allclose(levels, expected, atol=0.05)
    # the in-focus plane looks like the specimen; planes look less like it the farther they are
    likeness = [np.corrcoef(stack[z].ravel(), sharp[z].ravel())[0, 1] for z in range(16)]
    assert likeness[focal] > 0.9 and likeness[0] < 0.5
    assert np.all(np.diff(likeness[: focal + 1]) > 0) and np.all(np.diff(likeness[focal:]) < 0)


def test_zstack_is_deterministic_and_seeded(zstack):
    again = defocused_zstack_arrays()
    for first, second in zip(zstack, again, strict=True):
        np.testing.assert_array_equal(first, second)
    other = defocused_zstack_arrays((4, 32, 32), seed=11)
    assert other[0].shape == (4, 32, 32) and other[1].shape[0] == 4


def test_zstack_rejects_bad_arguments():
    with pytest.raises(ValueError, match="focal_plane"):
        defocused_zstack_arrays((4, 32, 32), focal_plane=4)
    with pytest.raises(ValueError, match="at least 16"):
        defocused_zstack_arrays((4, 8, 32))


def test_zstack_sample_layers():
    layers = defocused_zstack_sample()
    (stack, stack_attrs, stack_type), (psf_stack, psf_attrs, psf_type) = layers
    assert stack_type == psf_type == "image"
    assert stack_attrs["name"] == "Out-of-focus z-stack"
    assert psf_attrs["name"] == "Out-of-focus z-stack PSF"
    assert tuple(stack_attrs["scale"]) == (2.0, 1.0, 1.0)
    assert is_psf_metadata(psf_attrs["metadata"])
    assert psf_stack.shape[0] == stack.shape[0]
    np.testing.assert_allclose(psf_stack.sum(axis=(1, 2)), 1.0, atol=1e-5)


# --------------------------------------------------------------------------- widefield volume


def test_widefield_volume_sample_is_a_blurred_volume_with_its_psf_and_voxel_size():
    from napari_deblur.sample_data import WIDEFIELD_VOLUME_OPTICS, widefield_volume_sample

    layers = widefield_volume_sample()
    (volume, volume_attrs, volume_type), (psf, psf_attrs, psf_type) = layers
    assert volume_type == psf_type == "image"
    assert volume.shape == (32, 128, 128) and volume.dtype == np.float32
    assert psf.ndim == 3 and all(side % 2 == 1 for side in psf.shape) and psf.dtype == np.float32
    assert all(k <= n for k, n in zip(psf.shape, volume.shape, strict=True))
    np.testing.assert_allclose(psf.sum(), 1.0, rtol=1e-4)
    assert np.unravel_index(int(np.argmax(psf)), psf.shape) == tuple(k // 2 for k in psf.shape)
    assert volume.min() >= 0
    assert is_psf_metadata(psf_attrs["metadata"]) and not is_psf_metadata(volume_attrs.get("metadata"))
    voxel = (WIDEFIELD_VOLUME_OPTICS["dz"], WIDEFIELD_VOLUME_OPTICS["dxy"], WIDEFIELD_VOLUME_OPTICS["dxy"])
    assert tuple(volume_attrs["scale"]) == tuple(psf_attrs["scale"]) == voxel
    _assert_same_layers(layers, widefield_volume_sample())


def test_widefield_volume_is_the_specimen_blurred_in_3d_with_real_boundaries():
    from napari_deblur.sample_data import widefield_volume_arrays

    volume, psf, sharp = widefield_volume_arrays((24, 48, 48), psf_shape=(15, 21, 21), photons=1e6)
    assert volume.shape == sharp.shape == (24, 48, 48)
    # Out-of-focus light: the blurred volume varies much less along z than the specimen.
    assert np.std(np.diff(volume, axis=0)) < 0.5 * np.std(np.diff(sharp, axis=0))
    # Same total light (blur conserves it; the border gains and loses about as much).
    np.testing.assert_allclose(volume.mean(), sharp.mean(), rtol=0.15)
    with pytest.raises(ValueError, match="no larger"):
        widefield_volume_arrays((8, 32, 32), psf_shape=(15, 21, 21))
