"""Dask input: lazy results equal to the in-memory path, computed plane by plane, on a real cluster."""

import threading

import dask
import dask.array as da
import numpy as np
import pytest

from napari_deblur import engine
from napari_deblur.engine import JobCancelled, run_job
from napari_deblur.engine.core.lazy import iter_compute_planes, lazy_planewise

PSF = engine.gaussian_psf(1.5)


@pytest.fixture(scope="module")
def stack():
    """A (3, 90, 100) stack of blurred random blobs: edges everywhere, so chunks cut through them."""
    rng = np.random.default_rng(0)
    sharp = (rng.random((3, 90, 100)) > 0.5).astype(np.float32)
    return engine.blur(sharp, PSF) + rng.normal(0, 0.01, sharp.shape).astype(np.float32)


METHODS = {
    "blur": lambda x: engine.blur(x, PSF),
    "wiener": lambda x: engine.wiener_deconvolve(x, PSF, snr_db=25),
    "wiener-net": lambda x: engine.wiener_net_deconvolve(x, PSF),
    "blur map": lambda x: engine.estimate_blur_map(x),
    "gwis constant": lambda x: engine.sharpen_gwis(x, 1.5),
    "gwis by map": lambda x: engine.sharpen_gwis(x, engine.estimate_blur_map(x)),
    "gwis auto": lambda x: engine.sharpen_gwis(x, "auto"),
    "defocus by map": lambda x: engine.deblur_defocus(x, engine.estimate_blur_map(x), ensemble=1),
    "defocus, map estimated": lambda x: engine.deblur_defocus(x, ensemble=1),
    "defocus constant": lambda x: engine.deblur_defocus(x, 1.5, psf_model="disk", ensemble=1),
}


@pytest.mark.parametrize("method", list(METHODS))
def test_lazy_result_equals_in_memory_with_chunks_cutting_through_edges(stack, method):
    lazy_input = da.from_array(stack, chunks=(2, 40, 37))
    lazy = METHODS[method](lazy_input)
    assert isinstance(lazy, da.Array) and lazy.dtype == np.float32
    # One block per plane: napari computes only the plane on screen.
    assert lazy.chunks == ((1, 1, 1), (90,), (100,))
    in_memory = METHODS[method](stack)
    np.testing.assert_allclose(lazy.compute(), in_memory, rtol=0, atol=1e-5)


def test_colour_stack_map_drops_channels_and_gwis_follows_a_lazy_map():
    rgb = np.random.default_rng(1).random((2, 64, 70, 3)).astype(np.float32)
    lazy_rgb = da.from_array(rgb, chunks=(1, 30, 30, 2))
    blur_map = engine.estimate_blur_map(lazy_rgb, channel_axis=-1)
    assert blur_map.shape == (2, 64, 70)
    sharpened = engine.sharpen_gwis(lazy_rgb, blur_map, channel_axis=-1)
    assert sharpened.shape == rgb.shape
    expected_map = engine.estimate_blur_map(rgb, channel_axis=-1)
    np.testing.assert_allclose(blur_map.compute(), expected_map, atol=1e-5)
    np.testing.assert_allclose(
        sharpened.compute(), engine.sharpen_gwis(rgb, expected_map, channel_axis=-1), atol=1e-5
    )


def test_per_plane_psf_stack_gives_each_plane_its_kernel(stack):
    kernels = np.stack([engine.gaussian_psf(s, size=15) for s in (0.8, 1.5, 2.5)])
    lazy = engine.wiener_deconvolve(da.from_array(stack, chunks=(1, 45, 50)), kernels, snr_db=30)
    np.testing.assert_allclose(lazy.compute(), engine.wiener_deconvolve(stack, kernels, snr_db=30), atol=1e-5)


def test_building_the_graph_computes_nothing_and_one_plane_computes_one_block(stack):
    calls = []

    def compute_block(block, plane):
        calls.append(plane)
        return block * 2

    lazy = lazy_planewise(compute_block, da.from_array(stack, chunks=(3, 90, 100)))
    assert calls == []
    np.testing.assert_array_equal(lazy[1].compute(), stack[1] * 2)
    assert calls == [1]


def test_input_problems_that_need_no_pixels_are_reported_at_once(stack):
    with pytest.raises(ValueError, match="complex"):
        engine.sharpen_gwis(da.zeros((8, 8), dtype=np.complex64), 1.0)
    with pytest.raises(ValueError, match="empty"):
        engine.estimate_blur_map(da.zeros((0, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="at least 2x2"):
        engine.estimate_blur_map(da.zeros((4, 1, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="larger than the image plane"):
        engine.wiener_deconvolve(da.zeros((2, 8, 8), dtype=np.float32), engine.gaussian_psf(2.0))
    with pytest.raises(ValueError, match="per-pixel array has shape"):
        engine.sharpen_gwis(da.from_array(stack), da.zeros((90, 99)))
    with pytest.raises(ValueError, match="blur level >= 0"):
        engine.sharpen_gwis(da.from_array(stack), -1.0)


def test_nan_in_a_plane_is_reported_when_that_plane_is_computed(stack):
    bad = stack.copy()
    bad[2, 10, 10] = np.nan
    lazy = engine.sharpen_gwis(da.from_array(bad, chunks=(1, 90, 100)), 1.5)
    np.testing.assert_allclose(lazy[0].compute(), engine.sharpen_gwis(stack[0], 1.5), atol=1e-5)
    with pytest.raises(ValueError, match="NaN"):
        lazy[2].compute()


def test_compute_planes_writes_every_block_with_progress_and_can_be_cancelled(stack):
    lazy = engine.blur(da.from_array(stack, chunks=(1, 50, 50)), PSF)
    written = np.zeros_like(stack)
    updates = []

    def write(index, values):
        written[index] = values

    count = run_job(iter_compute_planes(lazy, write, at_once=2), updates.append)
    assert count == 3
    np.testing.assert_allclose(written, engine.blur(stack, PSF), atol=1e-6)
    assert updates[-1].fraction == 1.0 and [u.fraction for u in updates] == sorted(
        u.fraction for u in updates
    )

    stop = threading.Event()
    seen = []

    def write_then_stop(index, values):
        seen.append(index)
        stop.set()

    with pytest.raises(JobCancelled):
        run_job(iter_compute_planes(lazy, write_then_stop), cancel=stop)
    assert len(seen) == 1


def _blur_map_model_loads() -> int:
    from napari_deblur.engine.methods import blur_map

    return blur_map.load_blur_map_net.cache_info().misses


def test_local_cluster_of_worker_processes_gives_the_same_result_and_loads_the_model_once(stack):
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        lazy_input = da.from_array(np.concatenate([stack, stack[::-1]]), chunks=(1, 45, 50))
        blur_map = engine.estimate_blur_map(lazy_input)
        sharpened = engine.sharpen_gwis(lazy_input, blur_map)
        result = client.compute(sharpened).result()
        loads = client.run(_blur_map_model_loads)
    in_memory = np.concatenate([stack, stack[::-1]])
    np.testing.assert_allclose(
        result, engine.sharpen_gwis(in_memory, engine.estimate_blur_map(in_memory)), atol=1e-5
    )
    # Each worker process loaded the network at most once for its 6 planes' worth of tasks.
    assert len(loads) == 2
    assert all(count <= 1 for count in loads.values()) and sum(loads.values()) >= 1
    assert dask.config.get("scheduler", None) is None


def test_a_lazy_wiener_net_refuses_a_bad_ensemble_size_at_once():
    stack = da.zeros((2, 32, 32), chunks=(1, 32, 32), dtype=np.float32)
    with pytest.raises(ValueError, match="ensemble"):
        engine.wiener_net_deconvolve(stack, engine.gaussian_psf(1.0), ensemble=3)
