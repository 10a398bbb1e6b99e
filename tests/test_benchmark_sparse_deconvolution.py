"""The sparse deconvolution behind the blind benchmark's error ratios (benchmarks/sparse_deconvolution.py)."""

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import fftconvolve

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from sparse_deconvolution import sparse_deconvolve  # noqa: E402


def _blocks(size: int, rng: np.random.Generator) -> np.ndarray:
    """A piecewise-flat scene, the kind a sparse gradient prior describes."""
    scene = np.full((size, size), 0.3)
    for _ in range(12):
        top, left = rng.integers(0, size - 8, 2)
        height, width = rng.integers(4, 20, 2)
        scene[top : top + height, left : left + width] = rng.uniform(0, 1)
    return scene


def _case(kernel: np.ndarray, seed: int = 0):
    rng = np.random.default_rng(seed)
    reach = kernel.shape[0] // 2
    scene = _blocks(96 + 2 * reach, rng)
    blurred = fftconvolve(scene, kernel, mode="valid")  # real boundaries: the scene goes on past the frame
    sharp = scene[reach:-reach, reach:-reach]
    return blurred + rng.normal(0, 0.005, blurred.shape), sharp


def _error(restored, sharp, border):
    return float(np.mean((restored - sharp)[border:-border, border:-border] ** 2))


def test_deconvolution_with_the_true_kernel_recovers_the_scene_and_a_flipped_kernel_does_not():
    kernel = np.zeros((9, 9))
    kernel[4, 1:8] = 1.0  # a horizontal motion
    kernel[2:5, 7] = 1.0  # with a hook, so that the flip is a different kernel
    kernel /= kernel.sum()
    observed, sharp = _case(kernel)
    restored = sparse_deconvolve(observed, kernel)
    assert restored.shape == observed.shape
    blurred_error = _error(observed, sharp, 9)
    assert _error(restored, sharp, 9) < 0.2 * blurred_error
    assert _error(sparse_deconvolve(observed, kernel[::-1, ::-1]), sharp, 9) > 2 * _error(restored, sharp, 9)


def test_a_point_kernel_returns_the_plane_nearly_unchanged():
    observed, _ = _case(np.ones((1, 1)))
    assert np.max(np.abs(sparse_deconvolve(observed, np.ones((1, 1))) - observed)) < 0.05


@pytest.mark.parametrize(
    "observed, kernel",
    [
        (np.zeros((8, 8)), np.ones((9, 9))),
        (np.zeros((16, 16)), np.zeros((3, 3))),
        (np.zeros(16), np.ones((3, 3))),
    ],
)
def test_bad_inputs_are_refused(observed, kernel):
    with pytest.raises(ValueError):
        sparse_deconvolve(observed, kernel)
