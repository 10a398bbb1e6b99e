"""PSF builders and the blur level: sums, centring, sizes, units, bad arguments."""

import math

import numpy as np
import pytest

from napari_deblur.engine import (
    disk_psf,
    gaussian_psf,
    motion_psf,
    psf_blur_level,
    random_motion_psf,
    ring_psf,
)
from napari_deblur.engine.physics.psf import MAX_PSF_SIZE

BUILDERS = [
    lambda: gaussian_psf(1.7),
    lambda: disk_psf(3.3),
    lambda: ring_psf(4.5),
    lambda: motion_psf(9, 30),
    lambda: random_motion_psf(21, 3),
]


def centroid(kernel):
    rows, cols = np.indices(kernel.shape)
    total = kernel.sum()
    return (kernel * rows).sum() / total, (kernel * cols).sum() / total


@pytest.mark.parametrize("build", BUILDERS)
def test_psfs_are_float32_odd_centred_and_sum_to_one(build):
    kernel = build()
    assert kernel.dtype == np.float32
    assert kernel.ndim == 2 and kernel.shape[0] == kernel.shape[1] and kernel.shape[0] % 2 == 1
    assert kernel.sum() == pytest.approx(1.0, abs=1e-5)
    assert kernel.min() >= 0
    cy, cx = centroid(kernel)
    centre = kernel.shape[0] // 2
    assert abs(cy - centre) < 0.6 and abs(cx - centre) < 0.6


@pytest.mark.parametrize("sigma", [1.0, 2.0, 3.5])
def test_gaussian_blur_level_is_sigma(sigma):
    assert psf_blur_level(gaussian_psf(sigma)) == pytest.approx(sigma, rel=0.01)


@pytest.mark.parametrize("radius", [3.0, 5.0, 9.0])
def test_disk_blur_level_is_half_the_radius(radius):
    # Anti-aliasing adds about a twelfth of a pixel squared of variance.
    assert psf_blur_level(disk_psf(radius)) == pytest.approx(radius / 2, rel=0.03)


@pytest.mark.parametrize("radius", [4.0, 8.0])
def test_ring_blur_level_matches_its_profile(radius):
    inner = 0.75 * radius
    mass = 0.25 * inner**2 + (radius**2 - inner**2)
    second_moment = (0.25 * inner**4 + (radius**4 - inner**4)) / 2 / mass  # E[r^2]
    assert psf_blur_level(ring_psf(radius)) == pytest.approx(math.sqrt(second_moment / 2), rel=0.03)


def test_ring_is_brighter_on_its_rim_than_inside():
    kernel = ring_psf(8.0, size=17)
    assert kernel[8, 8 + 7] > 3 * kernel[8, 8]


def test_motion_psf_follows_its_angle_and_length():
    horizontal = motion_psf(10, 0, size=15)
    assert np.allclose(horizontal[:7].sum() + horizontal[8:].sum(), 0, atol=1e-6)
    vertical = motion_psf(10, 90, size=15)
    assert np.allclose(vertical[:, :7].sum() + vertical[:, 8:].sum(), 0, atol=1e-6)
    assert psf_blur_level(motion_psf(12, 45)) == pytest.approx(12 / math.sqrt(24), rel=0.05)


def test_zero_blur_is_the_identity_kernel():
    for kernel in (gaussian_psf(0), disk_psf(0), ring_psf(0), motion_psf(0, 10)):
        assert kernel.shape == (1, 1) or kernel.max() == 1.0
        assert psf_blur_level(kernel) == 0.0


def test_random_motion_psf_is_reproducible_and_varied():
    first = random_motion_psf(25, 11)
    assert np.array_equal(first, random_motion_psf(25, np.random.default_rng(11)))
    assert not np.array_equal(first, random_motion_psf(25, 12))
    # A camera-shake path is thin: most of the kernel is empty.
    assert (first > 0).mean() < 0.5
    assert psf_blur_level(first) > 0.5


@pytest.mark.parametrize(
    "call",
    [
        lambda: gaussian_psf(-1),
        lambda: gaussian_psf(float("nan")),
        lambda: disk_psf(2, size=4),
        lambda: motion_psf(30, 0, size=9),
        lambda: random_motion_psf(2, 0),
        lambda: psf_blur_level(np.zeros((3, 3))),
        lambda: psf_blur_level(np.ones((2, 3, 3))),
        lambda: gaussian_psf(float("inf")),
        lambda: disk_psf(-0.5),
        lambda: ring_psf(float("nan")),
        lambda: motion_psf(float("nan"), 0),
        lambda: motion_psf(5, float("inf")),
        lambda: disk_psf(2, size=7.5),
        lambda: disk_psf(2, size=float("nan")),
        lambda: gaussian_psf(1, size=-3),
        lambda: random_motion_psf(15, 0, n_steps=1),
    ],
)
def test_bad_psf_arguments_raise_value_error(call):
    with pytest.raises(ValueError):
        call()


@pytest.mark.parametrize(
    "call",
    [
        lambda: gaussian_psf(1e6),
        lambda: disk_psf(1e5),
        lambda: ring_psf(1e5),
        lambda: motion_psf(1e9, 0),
        lambda: gaussian_psf(1e308),  # 4 * sigma is inf
        lambda: gaussian_psf(1.0, size=MAX_PSF_SIZE + 2),
        lambda: random_motion_psf(MAX_PSF_SIZE + 2, 0),
    ],
    ids=["gaussian", "disk", "ring", "motion", "gaussian-inf-extent", "size", "random-motion"],
)
def test_kernels_wider_than_the_limit_are_refused_before_allocating(call):
    """Without the limit these asked for terabytes (MemoryError: "466 TiB")."""
    with pytest.raises(ValueError, match="MAX_PSF_SIZE"):
        call()


def test_a_huge_blur_fits_when_the_size_crops_it():
    kernel = gaussian_psf(1e6, size=5)
    assert kernel.shape == (5, 5) and kernel.sum() == pytest.approx(1.0)


@pytest.mark.parametrize(
    "call",
    [
        lambda: gaussian_psf(None),
        lambda: disk_psf("3"),
        lambda: motion_psf(5, None),
        lambda: disk_psf(2, size=True),
        lambda: random_motion_psf(15, 0, n_steps=10.5),
    ],
)
def test_non_numeric_psf_arguments_raise_type_error(call):
    with pytest.raises(TypeError):
        call()


def test_whole_float_and_numpy_sizes_are_accepted():
    assert disk_psf(2, size=7.0).shape == (7, 7)
    assert gaussian_psf(np.float32(1.5), size=np.int64(9)).shape == (9, 9)


def test_random_motion_rejects_a_bad_rng():
    with pytest.raises(TypeError, match="rng"):
        random_motion_psf(15, "seed")


@pytest.mark.parametrize("build", [disk_psf, ring_psf])
@pytest.mark.parametrize("radius", [0.01, 0.05, 0.2])
def test_tiny_radii_give_a_point_not_nan(build, radius):
    kernel = build(radius)
    assert np.isfinite(kernel).all() and kernel.sum() == pytest.approx(1.0)
    assert psf_blur_level(kernel) < 0.2


def test_a_sigma_whose_square_underflows_gives_a_point_not_nan():
    """Found by the fuzzer: 1e-300 ** 2 is 0 in float64, and 0 / 0 made the kernel NaN."""
    kernel = gaussian_psf(1e-300)
    assert np.isfinite(kernel).all() and kernel.max() == 1.0 and kernel.sum() == 1.0
