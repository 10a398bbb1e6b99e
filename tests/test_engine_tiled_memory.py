"""Memory bounded by the tile: tiled Wiener-net, Wiener, blur map and GWIS, CPU out-of-memory fallback,
final error, blind PSF from a capped window.

Every image here is at most 232 x 200 px; small tile sizes force the tiled
paths that large planes take.
"""

import numpy as np
import pytest
import torch
from scipy.signal import fftconvolve
from skimage import data

from napari_deblur import engine
from napari_deblur.engine import (
    EngineError,
    EngineMemoryError,
    estimate_blur_map,
    estimate_psf,
    gaussian_psf,
    random_motion_psf,
    run_job,
    sharpen_gwis,
    wiener_deconvolve,
    wiener_net_deconvolve,
)
from napari_deblur.engine.core import devices, tiling
from napari_deblur.engine.core.tiling import iter_tiled
from napari_deblur.engine.methods import blind_psf as blind_psf_module
from napari_deblur.engine.methods import blur_map as blur_map_module
from napari_deblur.engine.methods import gwis as gwis_module
from napari_deblur.engine.methods import wiener as wiener_module
from napari_deblur.engine.methods import wiener_net as wn

CPU_ALLOCATOR_TEXT = (
    "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
    "you tried to allocate 2264924160 bytes. Error code 12 (Cannot allocate memory)"
)


@pytest.fixture(scope="module")
def kernel():
    return gaussian_psf(1.5)


@pytest.fixture(scope="module")
def blurred(kernel):
    """A 192 x 160 crop of the camera image, blurred, noise 0.01."""
    sharp = data.camera()[100:292, 200:360].astype(np.float32) / 255.0
    noisy = fftconvolve(sharp, kernel, mode="same") + np.random.default_rng(0).normal(0, 0.01, sharp.shape)
    return noisy.astype(np.float32)


def local_filter(x):
    weight = torch.ones(1, 1, 5, 5, dtype=x.dtype) / 25
    return torch.nn.functional.conv2d(x, weight, padding=2)


# --- recognising allocation failures ---------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        RuntimeError(CPU_ALLOCATOR_TEXT),
        RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 1024 bytes."),
        RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    ],
)
def test_cpu_and_device_allocation_failures_count_as_out_of_memory(error):
    assert devices.is_out_of_memory(error)


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("Expected all tensors to be on the same device"),
        ValueError("out of memory"),  # not an allocator's error type
        EngineMemoryError("Not enough memory even in tiles"),  # already the final verdict
    ],
)
def test_other_errors_do_not_count_as_out_of_memory(error):
    assert not devices.is_out_of_memory(error)


# --- the tile fallback and the error that finally escapes ------------------------------------


@pytest.mark.parametrize("failure", [MemoryError, lambda: RuntimeError(CPU_ALLOCATOR_TEXT)])
def test_a_cpu_allocation_failure_retries_with_smaller_tiles(failure):
    x = torch.from_numpy(np.random.default_rng(1).uniform(size=(150, 130)).astype(np.float32))[None, None]
    sides = []

    def picky(tile):
        sides.append(max(tile.shape[-2:]))
        if max(tile.shape[-2:]) > 60:
            raise failure()
        return local_filter(tile)

    messages = []
    tiled = run_job(
        iter_tiled(picky, x, tile_size=128, halo=2, blend=8),
        progress=lambda update: messages.append(update.message),
    )
    torch.testing.assert_close(tiled, local_filter(x), atol=1e-6, rtol=0)
    assert max(sides) > 60 and any("retrying with 64 px tiles" in m for m in messages)


def test_when_even_the_smallest_tiles_fail_a_documented_memory_error_escapes():
    x = torch.zeros(1, 1, 100, 90)

    def always_fails(tile):
        raise RuntimeError(CPU_ALLOCATOR_TEXT)

    with pytest.raises(
        EngineMemoryError, match=r"Not enough memory .* 100x90 plane .* tiles of 32x32"
    ) as info:
        run_job(iter_tiled(always_fails, x, tile_size=64, halo=4))
    error = info.value
    # Reported by the command line and the napari runner (EngineError), and not swallowed
    # by the GUI worker as RuntimeError subclasses are.
    assert isinstance(error, EngineError) and isinstance(error, MemoryError)
    assert not isinstance(error, RuntimeError)
    assert isinstance(error.__cause__, RuntimeError) and "can't allocate memory" in str(error)


def test_without_retries_an_allocation_failure_is_still_the_documented_error():
    def always_fails(tile):
        raise MemoryError()

    with pytest.raises(EngineMemoryError, match="MemoryError"):
        run_job(iter_tiled(always_fails, torch.zeros(1, 1, 40, 40), tile_size=64, halo=4, retry_on_oom=False))


def test_core_only_tiles_see_their_window_in_the_plane():
    x = torch.arange(70 * 90, dtype=torch.float32).view(1, 1, 70, 90)
    windows = []

    def core_of(tile, window):
        windows.append(window)
        torch.testing.assert_close(tile, x[..., window.rows, window.cols])
        rows, cols = window.core_in_tile
        return tile[..., rows, cols] * 2

    doubled = run_job(iter_tiled(core_of, x, tile_size=32, halo=5, blend=4, core_only=True))
    torch.testing.assert_close(doubled, x * 2)
    assert len(windows) > 4 and all(w.plane == (70, 90) for w in windows)


# --- Wiener-net in tiles ----------------------------------------------------------------------


def test_tiled_wiener_net_equals_the_untiled_result(blurred, kernel, monkeypatch):
    whole = wiener_net_deconvolve(blurred, kernel)
    monkeypatch.setattr(wn, "TILE_SIZE", 64)
    monkeypatch.setattr(tiling, "GPU_TILE_SIZE", 64)
    calls = []
    network = wn.apply_network_ensemble
    monkeypatch.setattr(
        wn,
        "apply_network_ensemble",
        lambda model, features, *a, **k: calls.append(features.shape) or network(model, features, *a, **k),
    )
    tiled = wiener_net_deconvolve(blurred, kernel)
    assert len(calls) > 1  # one network call per tile
    # Measured: 1e-6 of the plane's range (float rounding); motion blurs differ more, as the
    # Wiener stack's high-SNR members reach beyond any halo (wiener_net.iter_wiener_net_tiled).
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-5)


def test_a_tiled_colour_plane_is_restored_one_channel_at_a_time(blurred, kernel, monkeypatch):
    """A tile holds one channel (its memory does not grow with the channels); the result is each
    channel's own."""
    colour = np.stack([blurred, blurred[::-1], 0.5 * blurred], axis=-1)
    monkeypatch.setattr(wn, "TILE_SIZE", 64)
    monkeypatch.setattr(tiling, "GPU_TILE_SIZE", 64)
    batches = []
    features = wn.wiener_net_features
    monkeypatch.setattr(
        wn, "wiener_net_features", lambda y, *a, **k: batches.append(y.shape[0]) or features(y, *a, **k)
    )
    restored = wiener_net_deconvolve(colour, kernel, channel_axis=-1)
    assert batches and set(batches) == {1}
    for channel in range(3):
        alone = wiener_net_deconvolve(colour[..., channel], kernel)
        # A colour plane and its channel alone differ by about 1e-3 of the range, tiled or not
        # (measured; float rounding of the stacked arrays, amplified by the high-SNR filters).
        np.testing.assert_allclose(restored[..., channel], alone, rtol=0, atol=3e-3)


def test_network_windows_on_the_plane_grid_give_the_whole_plane_output(blurred, kernel):
    model = wn.load_wiener_net(torch.device("cpu"))
    snrs = torch.tensor(wn.WIENER_STACK_SNRS_DB)
    plane = torch.from_numpy(blurred)[None, None]
    with torch.inference_mode():
        features = wn.wiener_net_features(plane, torch.from_numpy(kernel.astype(np.float32))[None], snrs)[0]
        whole = wn.apply_network_ensemble(model, features, 2)
        rows = wn.aligned_span(70, 100, wn.TILE_HALO, 192)
        cols = wn.aligned_span(40, 90, wn.TILE_HALO, 160)
        window = wn.apply_network_ensemble(model, features[..., rows, cols], 2)
    assert rows.start % wn.SIZE_MULTIPLE == 0 and (160 - cols.stop) % wn.SIZE_MULTIPLE == 0
    core = window[..., 70 - rows.start : 100 - rows.start, 40 - cols.start : 90 - cols.start]
    torch.testing.assert_close(core, whole[..., 70:100, 40:90], atol=1e-5, rtol=0)


def test_wiener_net_falls_back_to_tiles_when_the_cpu_runs_out_of_memory(blurred, kernel, monkeypatch):
    whole = wiener_net_deconvolve(blurred, kernel)
    features = wn.wiener_net_features
    sizes = []

    def whole_plane_fails(y, *args, **kwargs):  # the one-piece path (its own statistics) does not fit
        sizes.append(tuple(y.shape[-2:]))
        if kwargs.get("statistics") is None:
            raise RuntimeError(CPU_ALLOCATOR_TEXT)
        return features(y, *args, **kwargs)

    monkeypatch.setattr(wn, "wiener_net_features", whole_plane_fails)
    messages = []
    tiled = wiener_net_deconvolve(blurred, kernel, progress=lambda update: messages.append(update.message))
    assert any("out of memory: retrying with 96 px tiles" in m for m in messages) and len(sizes) > 2
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-5)


def test_wiener_net_raises_the_documented_error_when_no_tile_fits(blurred, kernel, monkeypatch):
    def no_memory(*args, **kwargs):
        raise MemoryError("simulated")

    monkeypatch.setattr(wn, "apply_network_ensemble", no_memory)
    with pytest.raises(EngineMemoryError, match="Not enough memory"):
        wiener_net_deconvolve(blurred[:80, :70], kernel)


# --- classical Wiener in tiles ----------------------------------------------------------------


def test_wiener_tiles_a_plane_beyond_its_memory_budget_and_matches_the_untiled_result(
    blurred, kernel, monkeypatch
):
    whole = wiener_deconvolve(blurred, kernel, snr_db=30)
    monkeypatch.setattr(wiener_module, "wiener_tile_size", lambda *args: 128)
    monkeypatch.setattr(wiener_module, "MIN_TILE_HALO", 16)
    monkeypatch.setattr(wiener_module, "TILE_HALO_KERNELS", 3)  # 39 px: 50 px cores
    sides = []
    wiener_filter = wiener_module.wiener_filter
    monkeypatch.setattr(
        wiener_module,
        "wiener_filter",
        lambda x, *a, **k: sides.append(max(x.shape[-2:])) or wiener_filter(x, *a, **k),
    )
    tiled = wiener_deconvolve(blurred, kernel, snr_db=30)
    assert len(sides) > 1 and max(sides) < 160
    # Inside, the tiles see all the filter reaches; along the frame the untiled FFT also
    # reaches round to the opposite edge (its taper band), which no tile sees.
    inner = (slice(26, -26), slice(26, -26))
    np.testing.assert_allclose(tiled[inner], whole[inner], rtol=0, atol=1e-4)
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-2)


def test_wiener_falls_back_to_tiles_on_a_cpu_allocation_failure(blurred, kernel, monkeypatch):
    whole = wiener_deconvolve(blurred, kernel, snr_db=30)
    wiener_filter = wiener_module.wiener_filter

    def small_only(x, *args, **kwargs):
        if max(x.shape[-2:]) > 150:
            raise RuntimeError(CPU_ALLOCATOR_TEXT)
        return wiener_filter(x, *args, **kwargs)

    monkeypatch.setattr(wiener_module, "wiener_filter", small_only)
    monkeypatch.setattr(wiener_module, "MIN_TILE_HALO", 16)
    monkeypatch.setattr(wiener_module, "TILE_HALO_KERNELS", 3)
    tiled = wiener_deconvolve(blurred, kernel, snr_db=30)
    inner = (slice(26, -26), slice(26, -26))
    np.testing.assert_allclose(tiled[inner], whole[inner], rtol=0, atol=1e-4)
    with pytest.raises(EngineMemoryError, match="Not enough memory"):
        wiener_deconvolve(blurred, kernel, snr_db=30, boundary="periodic")  # one period: never tiled


# --- blur map, GWIS "auto", blind PSF in bounded memory ---------------------------------------


@pytest.fixture(scope="module")
def motion_blurred():
    """A 200 x 232 crop of the camera image (not a multiple of 16), motion blur, noise 0.01."""
    sharp = data.camera()[60:260, 150:382].astype(np.float32) / 255.0
    noisy = fftconvolve(sharp, random_motion_psf(9, rng=3), mode="same")
    noisy += np.random.default_rng(1).normal(0, 0.01, sharp.shape)
    return noisy.astype(np.float32)


def _small_blur_map_tiles(monkeypatch, side=128):
    monkeypatch.setattr(blur_map_module, "TILE_SIZE", side)
    monkeypatch.setattr(tiling, "GPU_TILE_SIZE", side)


def test_tiled_blur_map_makes_features_per_tile_and_equals_the_untiled_map(motion_blurred, monkeypatch):
    whole = estimate_blur_map(motion_blurred, device="cpu")
    _small_blur_map_tiles(monkeypatch)
    shapes = []
    features = blur_map_module.blur_map_features
    monkeypatch.setattr(
        blur_map_module,
        "blur_map_features",
        lambda lum, *a: shapes.append(tuple(lum.shape[-2:])) or features(lum, *a),
    )
    tiled = estimate_blur_map(motion_blurred, device="cpu")
    assert len(shapes) > 1  # once per tile (here each tile's context spans the small plane)
    # Measured: 4e-7 px on a 1000 x 1013 plane in 256 px tiles (float rounding).
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-5)


def test_blur_map_features_of_a_window_widened_by_the_feature_halo_are_the_planes(motion_blurred):
    lum = torch.from_numpy(motion_blurred)[None, None]
    noise, value_range = blur_map_module.plane_noise_and_range(lum)
    whole = blur_map_module.blur_map_features(lum, noise, value_range)
    halo = blur_map_module.FEATURE_HALO
    rows, cols = slice(80, 128), slice(96, 144)  # starts on the 16 px grid, as tiles do
    part = blur_map_module.blur_map_features(
        lum[..., rows.start - halo : rows.stop + halo, cols.start - halo : cols.stop + halo],
        noise,
        value_range,
    )
    assert part.shape[-2:] != whole.shape[-2:]
    torch.testing.assert_close(part[..., halo:-halo, halo:-halo], whole[..., rows, cols], atol=1e-5, rtol=0)


def test_gwis_auto_with_a_tiled_blur_map_equals_the_untiled_result(motion_blurred, monkeypatch):
    whole = sharpen_gwis(motion_blurred, "auto", device="cpu")
    _small_blur_map_tiles(monkeypatch)
    tiled = sharpen_gwis(motion_blurred, "auto", device="cpu")
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-4)


def test_gwis_auto_in_small_tiles_stays_close_to_the_untiled_result(motion_blurred, monkeypatch):
    whole = sharpen_gwis(motion_blurred, "auto", device="cpu")
    _small_blur_map_tiles(monkeypatch)
    monkeypatch.setattr(gwis_module, "TILE_SIZE", 96)
    tiled = sharpen_gwis(motion_blurred, "auto", device="cpu")
    # GWIS's warp reaches past its halo where edge points are thinned to the coarse grid: a few
    # pixels by the seams differ (measured on a 1000 x 1013 plane in 256 px tiles: at most 0.04
    # of the range, 6e-7 on average).
    assert np.abs(tiled - whole).mean() < 1e-3
    assert np.abs(tiled - whole).max() < 0.1


def test_blur_map_falls_back_to_smaller_tiles_on_a_cpu_allocation_failure(motion_blurred, monkeypatch):
    whole = estimate_blur_map(motion_blurred, device="cpu")
    predict = blur_map_module.predict_log_level

    def small_only(model, features, *args, **kwargs):
        if max(features.shape[-2:]) > 160:
            raise RuntimeError(CPU_ALLOCATOR_TEXT)
        return predict(model, features, *args, **kwargs)

    monkeypatch.setattr(blur_map_module, "predict_log_level", small_only)
    monkeypatch.setattr(blur_map_module, "TILE_HALO", 32)  # tiles of 116 + 2 x 32 px fit
    messages = []
    tiled = estimate_blur_map(
        motion_blurred, device="cpu", progress=lambda update: messages.append(update.message)
    )
    assert any("out of memory: retrying with" in m for m in messages)
    assert tiled.shape == whole.shape and np.isfinite(tiled).all()
    # A 32 px halo is less than the network's reach: close, not equal.
    assert np.abs(tiled - whole).mean() < 0.1


def test_gwis_auto_falls_back_to_smaller_tiles_on_a_cpu_allocation_failure(motion_blurred, monkeypatch):
    sharpen = gwis_module.gwis_sharpen

    def small_only(x, *args, **kwargs):
        if max(x.shape[-2:]) > 200:
            raise MemoryError("simulated")
        return sharpen(x, *args, **kwargs)

    monkeypatch.setattr(gwis_module, "gwis_sharpen", small_only)
    messages = []
    out = sharpen_gwis(
        motion_blurred, "auto", device="cpu", progress=lambda update: messages.append(update.message)
    )
    assert any("out of memory: retrying with" in m for m in messages)
    assert out.shape == motion_blurred.shape and np.isfinite(out).all()


def test_blur_map_raises_the_documented_error_when_no_tile_fits(motion_blurred, monkeypatch):
    def no_memory(*args, **kwargs):
        raise RuntimeError(CPU_ALLOCATOR_TEXT)

    monkeypatch.setattr(blur_map_module, "predict_log_level", no_memory)
    with pytest.raises(engine.EngineMemoryError, match="Not enough memory") as caught:
        estimate_blur_map(motion_blurred[:64, :64], device="cpu")
    assert isinstance(caught.value, EngineError) and isinstance(caught.value, MemoryError)


def test_blind_psf_estimates_a_large_image_from_its_most_textured_window(motion_blurred, monkeypatch):
    image = motion_blurred.copy()
    image[:, :116] = image[:, :116].mean()  # the left half flat: no blur to see there
    monkeypatch.setattr(blind_psf_module, "MAX_ESTIMATION_PIXELS", 96 * 96)
    top, left, height, width = blind_psf_module.estimation_window(image, (0, 0, 200, 232))
    assert (height, width) == (96, 96) and left >= 116 - 24
    assert 0 <= top <= 200 - 96 and left + width <= 232
    capped = estimate_psf(image, size=9, device="cpu")
    windowed = estimate_psf(image, size=9, region=(top, left, height, width), device="cpu")
    np.testing.assert_array_equal(capped, windowed)
    small = (10, 20, 90, 100)  # at most the cap: used as given
    assert blind_psf_module.estimation_window(image, small) == small
