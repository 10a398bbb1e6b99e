"""3D microscopy: PSF models, measured PSFs, 3D Richardson-Lucy and 3D Wiener on small volumes."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.signal import fftconvolve

from napari_deblur import engine
from napari_deblur.engine import JobCancelled, JobProgress, run_job

OPTICS = dict(wavelength=0.52, dxy=0.05, dz=0.15, ni=1.33)
SHAPE = (16, 48, 48)


def _fwhm(profile: np.ndarray) -> float:
    """Full width at half maximum of a centred profile, interpolated between samples."""
    half = profile.max() / 2
    centre = len(profile) // 2
    width = 0.0
    for side in (profile[centre:], profile[centre::-1]):
        below = int(np.argmax(side < half)) if (side < half).any() else len(side) - 1
        width += below - 1 + (side[below - 1] - half) / (side[below - 1] - side[below])
    return width


def _fwhms(psf: np.ndarray) -> tuple[float, float]:
    """(lateral, axial) FWHM in voxels through the centre."""
    cz, cy, cx = (n // 2 for n in psf.shape)
    return _fwhm(psf[cz, cy, :]), _fwhm(psf[:, cy, cx])


@pytest.fixture(scope="module")
def psf() -> np.ndarray:
    return engine.microscope_psf((15, 21), na=1.0, model="gaussian", **OPTICS)


@pytest.fixture(scope="module")
def case(psf):
    """Beads (smoothed points) on a background, blurred by ``psf`` with Poisson noise, seeded."""
    rng = np.random.default_rng(0)
    truth = np.zeros(SHAPE)
    points = rng.integers([2, 4, 4], np.array(SHAPE) - [2, 4, 4], size=(30, 3))
    truth[tuple(points.T)] = rng.uniform(1, 2, 30)
    truth = ndimage.gaussian_filter(truth, 1.0)
    truth = truth / truth.max() * 1000 + 10
    pad = [(k // 2, k // 2) for k in psf.shape]
    blurred = fftconvolve(np.pad(truth, pad, mode="reflect"), psf, mode="valid").clip(0)
    noisy = rng.poisson(blurred).astype(np.float32)
    return truth, noisy


def _mse(x, truth, axis=None):
    return np.mean((np.asarray(x, np.float64) - truth) ** 2, axis=axis)


def _psnr(x, truth):
    return 10 * np.log10(truth.max() ** 2 / _mse(x, truth))


# --- microscope_psf -----------------------------------------------------------------


@pytest.mark.parametrize("model", ["vectorial", "scalar", "gaussian"])
def test_model_psf_sums_to_one_centred_and_elongated_in_z(model):
    psf = engine.microscope_psf((15, 31), na=1.2, model=model, **OPTICS)
    assert psf.dtype == np.float32 and psf.shape == (15, 31, 31)
    assert psf.min() >= 0 and psf.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.unravel_index(np.argmax(psf), psf.shape) == (7, 15, 15)
    lateral, axial = _fwhms(psf)
    assert axial * OPTICS["dz"] > lateral * OPTICS["dxy"]  # longer in z than across, in µm
    wide = engine.microscope_psf((15, 31), na=0.8, model=model, **OPTICS)
    assert _fwhms(wide)[0] > lateral and _fwhms(wide)[1] >= axial  # a lower NA blurs more


def test_gaussian_approximates_vectorial_and_confocal_is_narrower():
    gaussian = engine.microscope_psf((21, 41), na=1.0, model="gaussian", **OPTICS)
    vectorial = engine.microscope_psf((21, 41), na=1.0, model="vectorial", **OPTICS)
    for g, v in zip(_fwhms(gaussian), _fwhms(vectorial)):
        assert 0.5 < g / v < 2.0
    confocal = engine.microscope_psf((21, 41), na=1.0, model="vectorial", confocal=True, **OPTICS)
    assert confocal.sum() == pytest.approx(1.0, abs=1e-5)
    assert all(c < w for c, w in zip(_fwhms(confocal), _fwhms(vectorial)))
    rectangular = engine.microscope_psf((5, 11, 21), na=1.0, model="vectorial", **OPTICS)
    assert rectangular.shape == (5, 11, 21) and np.argmax(rectangular[2, 5]) == 10


@pytest.mark.parametrize(
    "shape, overrides",
    [
        ((16, 31), {}),
        ((15, 0), {}),
        ((15, 2049), {}),
        ((15,), {}),
        ((15, 31), {"na": 1.4}),  # above ni = 1.33
        ((15, 31), {"dxy": 0.0}),
        ((15, 31), {"wavelength": -0.5}),
        ((15, 31), {"model": "airy"}),
    ],
)
def test_microscope_psf_rejects_bad_parameters(shape, overrides):
    arguments = {"na": 1.0, "model": "gaussian", **OPTICS, **overrides}
    with pytest.raises(ValueError):
        engine.microscope_psf(shape, **arguments)


# --- prepare_measured_psf -----------------------------------------------------------


def test_measured_bead_stack_becomes_a_centred_kernel_close_to_the_truth(psf):
    rng = np.random.default_rng(1)
    stack = np.zeros((31, 61, 61))
    stack[12:27, 25:46, 18:39] = psf * 1e6  # peak off the stack's centre
    stack = (rng.poisson(stack + 100) + rng.normal(0, 2, stack.shape)).clip(0).astype(np.uint32)
    kernel = engine.prepare_measured_psf(stack, shape=psf.shape)
    assert kernel.dtype == np.float32 and kernel.shape == psf.shape
    assert kernel.sum() == pytest.approx(1.0, abs=1e-5) and kernel.min() >= 0
    assert np.unravel_index(np.argmax(ndimage.gaussian_filter(kernel, 1)), kernel.shape) == (7, 10, 10)
    assert np.abs(kernel - psf).sum() < 0.35  # half of the L1 distance: under 18% of the mass moved
    default = engine.prepare_measured_psf(stack)
    assert all(s % 2 == 1 for s in default.shape) and default.sum() == pytest.approx(1.0, abs=1e-5)
    assert engine.prepare_measured_psf(stack[19]).ndim == 2


@pytest.mark.parametrize(
    "stack", [np.zeros((0, 5, 5)), np.full((9, 9, 9), 7.0), np.full((9, 9, 9), np.nan), np.zeros(9)]
)
def test_measured_psf_rejects_empty_flat_and_nan_stacks(stack):
    with pytest.raises(ValueError):
        engine.prepare_measured_psf(stack)


# --- Richardson-Lucy ----------------------------------------------------------------


def test_3d_rl_beats_the_input_and_plane_by_plane_2d(case, psf):
    truth, noisy = case
    before = noisy.copy()
    restored = engine.richardson_lucy(noisy, psf, iterations=20, device="cpu")
    np.testing.assert_array_equal(noisy, before)  # the input is never modified
    assert restored.dtype == np.float32 and restored.shape == noisy.shape and restored.min() >= 0
    assert restored.sum() == pytest.approx(noisy.sum(), rel=0.05)  # the input's intensity scale
    planewise = engine.richardson_lucy(noisy, psf[psf.shape[0] // 2], iterations=20, device="cpu")
    assert _psnr(restored, truth) > _psnr(noisy, truth) + 2.0
    assert _psnr(restored, truth) > _psnr(planewise, truth) + 1.0


def test_residual_whiteness_tells_noise_from_structure():
    from napari_deblur.engine.methods.richardson_lucy import ResidualWhiteness

    whiteness = ResidualWhiteness((16, 48, 48), "cpu")
    generator = torch.Generator().manual_seed(0)
    gaussian = torch.randn(16, 48, 48, generator=generator)
    poisson = torch.poisson(torch.full((16, 48, 48), 5.0), generator=generator) - 5.0
    smooth = torch.from_numpy(ndimage.gaussian_filter(gaussian.numpy(), 2.0))
    # Measured: 0.0035 (Gaussian), 0.0034 (Poisson), 0.87 (smoothed noise).
    assert whiteness.distance(gaussian) < 0.02 and whiteness.distance(poisson) < 0.02
    assert whiteness.distance(smooth) > 0.5
    assert whiteness.distance(torch.zeros(16, 48, 48)) == 0.0


def test_automatic_iterations_stop_early_on_noisy_data_and_late_on_clean_data(psf):
    """The default stops where the residual is whitest: near the best fixed count, clean or noisy."""
    counts = {}
    for peak in (1000.0, 50.0):
        rng = np.random.default_rng(0)
        truth = np.zeros(SHAPE)
        points = rng.integers([2, 4, 4], np.array(SHAPE) - [2, 4, 4], size=(30, 3))
        truth[tuple(points.T)] = rng.uniform(1, 2, 30)
        truth = ndimage.gaussian_filter(truth, 1.0)
        truth = truth / truth.max() * peak + 10
        pad = [(k // 2, k // 2) for k in psf.shape]
        noisy = rng.poisson(fftconvolve(np.pad(truth, pad, mode="reflect"), psf, mode="valid").clip(0))
        noisy = noisy.astype(np.float32)
        updates = []
        automatic = engine.richardson_lucy(noisy, psf, device="cpu", progress=updates.append)
        counts[peak] = len(updates)
        fixed = [
            _psnr(engine.richardson_lucy(noisy, psf, iterations=n, device="cpu"), truth) for n in (5, 20, 50)
        ]
        assert _psnr(automatic, truth) > max(fixed) - 1.0
        assert "stops when the residual is white" in updates[-1].message
    # Measured: 30 iterations at a peak of 1000 photons (30.4 dB; 20 it. 30.3, 50 it. 30.3), 12 at 50
    # photons (28.6 dB; 5 it. 28.8, 20 it. 23.5, 50 it. 17.4).
    assert counts[50.0] < counts[1000.0] < 60


def test_acceleration_reaches_plain_rl_in_fewer_iterations(case, psf):
    truth, noisy = case
    plain = engine.richardson_lucy(noisy, psf, iterations=60, acceleration=False, device="cpu")
    fast = engine.richardson_lucy(noisy, psf, iterations=20, acceleration=True, device="cpu")
    assert _mse(fast, truth) <= _mse(plain, truth)


def test_first_and_last_planes_do_not_ring(case, psf):
    truth, noisy = case
    restored = engine.richardson_lucy(noisy, psf, iterations=20, device="cpu")
    per_plane = _mse(restored, truth, axis=(1, 2))
    middle = np.median(per_plane[3:-3])
    assert per_plane[0] <= middle and per_plane[-1] <= middle
    assert restored[[0, -1]].max() < 2 * truth.max()  # nothing piles up at the ends


def test_tv_smooths_noise_on_a_flat_volume(psf):
    rng = np.random.default_rng(2)
    flat = rng.poisson(100.0, size=SHAPE).astype(np.float32)
    plain = engine.richardson_lucy(flat, psf, iterations=10, device="cpu")
    smooth = engine.richardson_lucy(flat, psf, iterations=10, tv_weight=0.02, device="cpu")
    assert smooth.std() < plain.std()
    assert smooth.mean() == pytest.approx(flat.mean(), rel=0.05)


def test_2d_rl_runs_plane_by_plane_with_channels():
    rng = np.random.default_rng(3)
    image = rng.uniform(10, 20, size=(2, 32, 32, 3)).astype(np.uint8)
    restored = engine.richardson_lucy(image, engine.gaussian_psf(1.0, size=7), iterations=3, channel_axis=-1)
    assert restored.shape == image.shape and restored.dtype == np.float32 and restored.min() >= 0


def test_rl_rejects_mismatched_psfs_and_options(psf, case):
    _, noisy = case
    with pytest.raises(ValueError, match="3D volume"):
        engine.richardson_lucy(noisy[0], psf)
    with pytest.raises(ValueError, match="larger than the volume"):
        engine.richardson_lucy(noisy[:, :8], psf)  # wider than the volume
    with pytest.raises(ValueError, match="larger than the volume"):
        engine.richardson_lucy(noisy[: psf.shape[0] // 2 - 1], psf)  # deeper than 2 z + 1 planes
    with pytest.raises(ValueError):
        engine.richardson_lucy(noisy, psf, iterations=0)
    with pytest.raises(ValueError):
        engine.richardson_lucy(noisy, psf, tv_weight=0.5)


def test_rl_falls_back_to_lateral_tiles_when_memory_runs_out(case, psf, monkeypatch):
    from napari_deblur.engine.methods import richardson_lucy as module

    truth, noisy = case
    original = module.iter_rl_tensor
    calls = []

    def failing_once(data, kernel, **options):
        calls.append(data.shape)
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return (yield from original(data, kernel, **options))

    monkeypatch.setattr(module, "iter_rl_tensor", failing_once)
    tiled = engine.richardson_lucy(noisy, psf, iterations=10, device="cpu")
    monkeypatch.undo()
    whole = engine.richardson_lucy(noisy, psf, iterations=10, device="cpu")
    assert len(calls) > 2 and all(shape[0] == SHAPE[0] for shape in calls)  # z is never tiled
    assert _psnr(tiled, whole) > 35


def test_rl_of_a_deep_stack_falls_back_to_slabs_of_planes_when_lateral_tiles_do_not_fit(monkeypatch):
    from napari_deblur.engine.methods import richardson_lucy as module

    psf = engine.microscope_psf((7, 15), na=1.0, model="gaussian", **OPTICS)
    rng = np.random.default_rng(3)
    truth = np.zeros((40, 32, 32))
    truth[tuple(rng.integers([0, 2, 2], [40, 30, 30], size=(60, 3)).T)] = rng.uniform(1, 2, 60)
    truth = ndimage.gaussian_filter(truth, 1.0) * 1000 + 10
    noisy = rng.poisson(ndimage.convolve(truth, psf, mode="reflect")).astype(np.float32)
    original = module.iter_rl_tensor
    depths = []

    def deep_data_runs_out(data, kernel, **options):  # any piece deeper than 20 planes "does not fit"
        depths.append(data.shape[-3])
        if data.shape[-3] > 20:
            raise RuntimeError("CUDA out of memory (simulated)")
        return (yield from original(data, kernel, **options))

    monkeypatch.setattr(module, "iter_rl_tensor", deep_data_runs_out)
    updates = []
    slabs = engine.richardson_lucy(noisy, psf, iterations=10, device="cpu", progress=updates.append)
    monkeypatch.undo()
    whole = engine.richardson_lucy(noisy, psf, iterations=10, device="cpu")
    assert any("slabs of" in update.message for update in updates)
    assert max(d for d in depths if d <= 20) <= 20 and slabs.shape == noisy.shape
    assert _psnr(slabs, whole) > 35
    assert _psnr(slabs, truth) > _psnr(noisy, truth) + 2.0


def test_3d_wiener_of_a_deep_stack_falls_back_to_slabs_of_planes(monkeypatch):
    from napari_deblur.engine.methods import wiener as module

    psf = engine.microscope_psf((7, 15), na=1.0, model="gaussian", **OPTICS)
    rng = np.random.default_rng(4)
    truth = ndimage.gaussian_filter(rng.uniform(0, 1, (40, 32, 32)) ** 8, 1.0) * 1000 + 10
    noisy = rng.poisson(ndimage.convolve(truth, psf, mode="reflect")).astype(np.float32)
    original = module.wiener_filter_3d

    def deep_data_runs_out(volume, kernel, snr_db):  # any piece deeper than 30 planes "does not fit"
        if volume.shape[0] > 30:
            raise RuntimeError("CUDA out of memory (simulated)")
        return original(volume, kernel, snr_db)

    monkeypatch.setattr(module, "wiener_filter_3d", deep_data_runs_out)
    updates = []
    slabs = engine.wiener_deconvolve_3d(noisy, psf, snr_db=20.0, device="cpu", progress=updates.append)
    monkeypatch.undo()
    whole = engine.wiener_deconvolve_3d(noisy, psf, snr_db=20.0, device="cpu")
    assert any("in slabs of" in update.message for update in updates)
    # The Wiener filter reaches beyond a slab's context: close to the whole volume's result, not equal.
    assert _psnr(slabs, whole) > 30
    assert _psnr(slabs, truth) > _psnr(whole, truth) - 0.5


def test_3d_wiener_falls_back_to_lateral_tiles_when_memory_runs_out(case, psf, monkeypatch):
    from napari_deblur.engine.methods import wiener as module

    truth, noisy = case
    original = module.wiener_filter_3d
    calls = []

    def failing_once(volume, kernel, snr_db):
        calls.append(tuple(volume.shape))
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return original(volume, kernel, snr_db)

    monkeypatch.setattr(module, "wiener_filter_3d", failing_once)
    tiled = engine.wiener_deconvolve_3d(noisy, psf, snr_db=20.0, device="cpu")
    monkeypatch.undo()
    whole = engine.wiener_deconvolve_3d(noisy, psf, snr_db=20.0, device="cpu")
    assert len(calls) > 2 and all(shape[0] == SHAPE[0] for shape in calls[1:])  # lateral tiles, whole depth
    assert _psnr(tiled, whole) > 35
    assert _psnr(tiled, truth) > _psnr(noisy, truth)


def test_rl_facade_equals_its_twin_and_honours_cancel(case, psf):
    _, noisy = case
    volume = noisy[:, :32, :32]
    expected = run_job(engine.iter_richardson_lucy(volume, psf, iterations=4, device="cpu"))
    updates = []
    result = engine.richardson_lucy(volume, psf, iterations=4, device="cpu", progress=updates.append)
    np.testing.assert_array_equal(result, expected)
    assert len(updates) == 4 and all(isinstance(u, JobProgress) for u in updates)
    assert updates[-1].fraction == pytest.approx(1.0)
    stop = threading.Event()
    seen = []
    with pytest.raises(JobCancelled):
        engine.richardson_lucy(
            volume,
            psf,
            iterations=50,
            device="cpu",
            progress=lambda u: (seen.append(u), stop.set()),
            cancel=stop,
        )
    assert len(seen) == 1


# --- 3D Wiener ----------------------------------------------------------------------


def test_3d_wiener_beats_the_input_without_ringing_at_the_ends(case, psf):
    truth, noisy = case
    before = noisy.copy()
    restored = engine.wiener_deconvolve_3d(noisy, psf, snr_db=20.0, device="cpu")
    np.testing.assert_array_equal(noisy, before)
    assert restored.dtype == np.float32 and restored.shape == noisy.shape
    assert _psnr(restored, truth) > _psnr(noisy, truth) + 1.0
    per_plane = _mse(restored, truth, axis=(1, 2))
    assert max(per_plane[0], per_plane[-1]) <= np.median(per_plane[3:-3])


def test_3d_wiener_twin_time_axis_and_errors(case, psf):
    _, noisy = case
    series = np.stack([noisy[:, :32, :32], noisy[:, 16:, 16:]])  # (t, z, y, x)
    result = engine.wiener_deconvolve_3d(series, psf, device="cpu")
    np.testing.assert_array_equal(
        result, run_job(engine.iter_wiener_deconvolve_3d(series, psf, device="cpu"))
    )
    np.testing.assert_array_equal(result[1], engine.wiener_deconvolve_3d(series[1], psf, device="cpu"))
    with pytest.raises(ValueError):
        engine.wiener_deconvolve_3d(noisy[0], psf)
    with pytest.raises(ValueError):
        engine.wiener_deconvolve_3d(noisy, psf[0])


def test_rl_takes_a_psf_deeper_than_the_stack_and_still_restores_it(psf, case):
    truth, noisy = case
    thin = slice(4, 12)  # 8 planes, the PSF is 15 deep: light from outside the stack is modelled
    restored = engine.richardson_lucy(noisy[thin], psf, iterations=15, device="cpu")
    assert restored.shape == noisy[thin].shape and restored.min() >= 0

    def error(x):
        return float(np.abs(x - truth[thin]).mean())

    assert error(restored) < 0.9 * error(noisy[thin])  # 0.85 measured


def test_dask_stacks_are_deconvolved_lazily_one_volume_at_a_time(psf, case):
    import dask.array as da

    _, noisy = case
    series = np.stack([noisy, noisy[:, ::-1]])  # (t, z, y, x)
    lazy_input = da.from_array(series, chunks=(1, 4, 24, 24))
    lazy = engine.richardson_lucy(lazy_input, psf, iterations=3, device="cpu")
    assert isinstance(lazy, da.Array) and lazy.chunks[0] == (1, 1) and lazy.chunksize[1:] == noisy.shape
    expected = engine.richardson_lucy(series, psf, iterations=3, device="cpu")
    np.testing.assert_allclose(lazy.compute(), expected, rtol=1e-5, atol=1e-4)
    wiener_lazy = engine.wiener_deconvolve_3d(lazy_input, psf, device="cpu")
    np.testing.assert_allclose(
        wiener_lazy.compute(), engine.wiener_deconvolve_3d(series, psf, device="cpu"), rtol=1e-5, atol=1e-4
    )
