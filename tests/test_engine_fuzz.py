"""Bounded, seeded fuzzing of the public numpy engine API.

Each case draws a small random input (up to 48 x 48, 1-3 planes, colour or
not, any dtype the engine may meet, read-only and strided views, NaN/inf,
complex, empty, magnitudes from 1e-30 to 1e30) and one engine call on it. The
call must return a finite float32 array of the documented shape, or raise
ValueError / TypeError, and must never modify its input. Seeds are fixed, so a
failure names its case and reproduces; the whole file runs in seconds.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_deblur import engine
from napari_deblur.engine.physics.psf import MAX_PSF_SIZE

N_CASES = 120
N_BUILDER_CASES = 200
DTYPES = (bool, np.uint8, np.int16, np.float16, np.float32, np.float64, np.complex64)


def _image(rng: np.random.Generator) -> tuple[np.ndarray, int | None]:
    """A random image and its channel axis (or None)."""
    height, width = (
        (int(n) for n in rng.integers(0, 49, size=2))
        if rng.random() < 0.1
        else (int(rng.integers(12, 49)), int(rng.integers(12, 49)))
    )
    planes = int(rng.integers(1, 4))
    colour = rng.random() < 0.25
    shape = (height, width)
    if planes > 1:
        shape = (planes,) + shape
    if colour:
        shape = shape + (3,)
    magnitude = 10.0 ** rng.uniform(-30, 30)
    values = rng.random(shape) * magnitude
    if rng.random() < 0.3:
        values -= magnitude / 2  # signed data
    dtype = DTYPES[int(rng.integers(len(DTYPES)))]
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        values = rng.integers(info.min if rng.random() < 0.5 else 0, info.max, size=shape, endpoint=True)
    elif dtype is bool:
        values = rng.random(shape) < 0.5
    with np.errstate(over="ignore"):
        image = values.astype(dtype)  # float16 of 1e30 is inf: a valid case to refuse
    if np.dtype(dtype).kind in "fc" and image.size and rng.random() < 0.1:
        image.flat[int(rng.integers(image.size))] = rng.choice([np.nan, np.inf, -np.inf])
    if rng.random() < 0.25 and image.ndim >= 2:  # a strided (non-contiguous) view of a larger array
        bigger = np.repeat(image, 2, axis=-1 if not colour else -2)
        image = bigger[..., ::2] if not colour else bigger[..., ::2, :]
    if rng.random() < 0.25:
        image = image.view()
        image.flags.writeable = False
    return image, (-1 if colour else None)


def _psf(rng: np.random.Generator) -> np.ndarray:
    choice = rng.random()
    if choice < 0.6:
        return engine.gaussian_psf(float(rng.uniform(0, 2.5)))
    if choice < 0.8:
        return engine.motion_psf(float(rng.uniform(0, 7)), float(rng.uniform(0, 180)))
    kernel = rng.random((int(rng.integers(1, 8)), int(rng.integers(1, 8))))
    return kernel - 0.5 if rng.random() < 0.3 else kernel  # may sum to <= 0: a ValueError


def _non_channel_shape(shape: tuple[int, ...], channel_axis: int | None) -> tuple[int, ...]:
    return shape if channel_axis is None else shape[:-1]


CALLS = {
    "wiener": (lambda x, c, r, k: engine.wiener_deconvolve(x, k, channel_axis=c), "same"),
    "wiener_net": (lambda x, c, r, k: engine.wiener_net_deconvolve(x, k, channel_axis=c, ensemble=1), "same"),
    "gwis": (lambda x, c, r, k: engine.sharpen_gwis(x, float(r.uniform(0, 3)), channel_axis=c), "same"),
    "blur_map": (lambda x, c, r, k: engine.estimate_blur_map(x, channel_axis=c), "map"),
    "estimate_psf": (lambda x, c, r, k: engine.estimate_psf(x, size=5, channel_axis=c), "kernel"),
    "blur": (lambda x, c, r, k: engine.blur(x, k, channel_axis=c), "same"),
}


def _snapshot(array: np.ndarray) -> np.ndarray:
    return np.array(array, copy=True)


def _unchanged(before: np.ndarray, after: np.ndarray) -> bool:
    return np.array_equal(before, after, equal_nan=before.dtype.kind in "fc")


@pytest.mark.parametrize("seed", range(N_CASES))
def test_engine_calls_give_finite_float32_or_a_clear_error(seed):
    rng = np.random.default_rng(seed)
    name = sorted(CALLS)[seed % len(CALLS)]
    call, kind = CALLS[name]
    image, channel_axis = _image(rng)
    kernel = _psf(rng)
    before, kernel_before = _snapshot(image), _snapshot(kernel)
    try:
        result = call(image, channel_axis, rng, kernel)
    except (ValueError, TypeError) as error:
        assert str(error), f"{name}: an error without a message"
    else:
        expected = {
            "same": image.shape,
            "map": _non_channel_shape(image.shape, channel_axis),
            "kernel": (5, 5),
        }[kind]
        assert isinstance(result, np.ndarray) and result.dtype == np.float32, name
        assert result.shape == expected, f"{name}: shape {result.shape}, expected {expected}"
        assert np.isfinite(result).all(), f"{name} on {image.dtype} {image.shape}: non-finite output"
        assert not np.shares_memory(result, image), f"{name} returned (a view of) its input"
    assert _unchanged(before, image), f"{name} modified its input"
    assert _unchanged(kernel_before, kernel), f"{name} modified its PSF"


BUILDERS = {
    "gaussian": lambda v, s: engine.gaussian_psf(v, size=s),
    "disk": lambda v, s: engine.disk_psf(v, size=s),
    "ring": lambda v, s: engine.ring_psf(v, size=s),
    "motion": lambda v, s: engine.motion_psf(v, float(v) * 7 if isinstance(v, float) else 0.0, size=s),
    "random_motion": lambda v, s: engine.random_motion_psf(s if s is not None else 15, 0),
}
_ODD_VALUES = (
    0.0,
    -1.0,
    float("nan"),
    float("inf"),
    -float("inf"),
    1e-300,
    1e6,
    1e30,
    1e308,
    None,
    "3",
    True,
)
_ODD_SIZES = (None, None, None, 1, 2, 3, 9, -5, 0, 7.0, 7.5, float("nan"), float("inf"), 10**9, True)


@pytest.mark.parametrize("seed", range(0, N_BUILDER_CASES, 20))
def test_psf_builders_give_a_kernel_or_a_clear_error(seed):
    rng = np.random.default_rng(10_000 + seed)
    for _ in range(20):
        name = sorted(BUILDERS)[int(rng.integers(len(BUILDERS)))]
        value = (
            _ODD_VALUES[int(rng.integers(len(_ODD_VALUES)))]
            if rng.random() < 0.5
            else float(10.0 ** rng.uniform(-3, 1.5))
        )
        size = _ODD_SIZES[int(rng.integers(len(_ODD_SIZES)))]
        try:
            kernel = BUILDERS[name](value, size)
        except (ValueError, TypeError) as error:
            assert str(error)
            continue
        assert kernel.dtype == np.float32 and kernel.ndim == 2, name
        assert kernel.shape[0] == kernel.shape[1] and kernel.shape[0] % 2 == 1, name
        assert kernel.shape[0] <= MAX_PSF_SIZE
        assert np.isfinite(kernel).all() and abs(float(kernel.sum()) - 1.0) < 1e-4, (name, value, size)
