"""Memory bounded by the tile: tiled Wiener-net and Wiener, CPU out-of-memory fallback, final error.

Every image here is at most 192 x 160 px; small tile sizes force the tiled
paths that large planes take.
"""

import numpy as np
import pytest
import torch
from scipy.signal import fftconvolve
from skimage import data

from napari_deblur.engine import EngineError, gaussian_psf, run_job, wiener_deconvolve, wiener_net_deconvolve
from napari_deblur.engine import devices, tiling
from napari_deblur.engine import wiener as wiener_module
from napari_deblur.engine import wiener_net as wn
from napari_deblur.engine.jobs import EngineMemoryError
from napari_deblur.engine.tiling import iter_tiled

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


@pytest.mark.parametrize("error", [
    MemoryError(),
    RuntimeError(CPU_ALLOCATOR_TEXT),
    RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 1024 bytes."),
    RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
])
def test_cpu_and_device_allocation_failures_count_as_out_of_memory(error):
    assert devices.is_out_of_memory(error)


@pytest.mark.parametrize("error", [
    RuntimeError("Expected all tensors to be on the same device"),
    ValueError("out of memory"),  # not an allocator's error type
    EngineMemoryError("Not enough memory even in tiles"),  # already the final verdict
])
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
    tiled = run_job(iter_tiled(picky, x, tile_size=128, halo=2, blend=8),
                    progress=lambda update: messages.append(update.message))
    torch.testing.assert_close(tiled, local_filter(x), atol=1e-6, rtol=0)
    assert max(sides) > 60 and any("retrying with 64 px tiles" in m for m in messages)


def test_when_even_the_smallest_tiles_fail_a_documented_memory_error_escapes():
    x = torch.zeros(1, 1, 100, 90)

    def always_fails(tile):
        raise RuntimeError(CPU_ALLOCATOR_TEXT)

    with pytest.raises(EngineMemoryError, match=r"Not enough memory .* 100x90 plane .* tiles of 32x32") as info:
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
    monkeypatch.setattr(wn, "apply_network_ensemble",
                        lambda model, features, *a, **k: calls.append(features.shape) or network(model, features,
                                                                                                   *a, **k))
    tiled = wiener_net_deconvolve(blurred, kernel)
    assert len(calls) > 1  # one network call per tile
    # Measured: 1e-6 of the plane's range (float rounding); motion blurs differ more, as the
    # Wiener stack's high-SNR members reach beyond any halo (wiener_net.iter_wiener_net_tiled).
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-5)


def test_network_windows_on_the_plane_grid_give_the_whole_plane_output(blurred, kernel):
    model = wn.load_wiener_net(torch.device("cpu"))
    snrs = torch.tensor(wn.WIENER_STACK_SNRS_DB)
    plane = torch.from_numpy(blurred)[None, None]
    with torch.inference_mode():
        features = wn.wiener_net_features(plane, torch.from_numpy(kernel.astype(np.float32))[None], snrs)[0]
        whole = wn.apply_network_ensemble(model, features, 2)
        rows = wn._aligned_span(70, 100, wn.TILE_HALO, 192)
        cols = wn._aligned_span(40, 90, wn.TILE_HALO, 160)
        window = wn.apply_network_ensemble(model, features[..., rows, cols], 2)
    assert rows.start % wn.SIZE_MULTIPLE == 0 and (160 - cols.stop) % wn.SIZE_MULTIPLE == 0
    core = window[..., 70 - rows.start:100 - rows.start, 40 - cols.start:90 - cols.start]
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
        blurred, kernel, monkeypatch):
    whole = wiener_deconvolve(blurred, kernel, snr_db=30)
    monkeypatch.setattr(wiener_module, "wiener_tile_size", lambda *args: 128)
    monkeypatch.setattr(wiener_module, "MIN_TILE_HALO", 16)
    monkeypatch.setattr(wiener_module, "TILE_HALO_KERNELS", 3)  # 39 px: 50 px cores
    sides = []
    wiener_filter = wiener_module.wiener_filter
    monkeypatch.setattr(wiener_module, "wiener_filter",
                        lambda x, *a, **k: sides.append(max(x.shape[-2:])) or wiener_filter(x, *a, **k))
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
