"""Wiener-net 3D: candidates, the shipped network on small volumes, tiles, stacks and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.signal import fftconvolve

from napari_deblur import engine
from napari_deblur.engine import run_job
from napari_deblur.engine.methods import wiener_net_3d as net3d

SHAPE = (24, 64, 64)


@pytest.fixture(scope="module")
def psf() -> np.ndarray:
    return engine.microscope_psf((15, 31), na=1.2, wavelength=0.52, dxy=0.08, dz=0.2, ni=1.33)


@pytest.fixture(scope="module")
def case(psf):
    """Beads and two filaments blurred by ``psf`` (real boundaries), Poisson noise, seeded."""
    rng = np.random.default_rng(3)
    big = tuple(n + k - 1 for n, k in zip(SHAPE, psf.shape, strict=True))
    truth = np.zeros(big)
    points = rng.integers(0, big, size=(60, 3))
    truth[tuple(points.T)] = rng.uniform(1, 2, 60)
    for row in (30, 60):
        truth[big[0] // 2, row, 10:-10] = 0.5
    truth = ndimage.gaussian_filter(truth, (0.4, 0.8, 0.8))
    truth = truth / truth.max() * 2000
    blurred = fftconvolve(truth, psf, mode="valid").clip(0) + 10
    inner = tuple(slice(k // 2, k // 2 + n) for k, n in zip(psf.shape, SHAPE, strict=True))
    noisy = rng.poisson(blurred).astype(np.float32)
    return truth[inner] + 10, noisy


def _psnr(x, truth):
    """PSNR after the best gain and offset (as protocol 6 scores), interior only."""
    inner = (slice(3, -3), slice(6, -6), slice(6, -6))
    x, truth = np.asarray(x, np.float64)[inner].ravel(), truth[inner].ravel()
    design = np.stack([x, np.ones_like(x)], axis=1)
    fit = design @ np.linalg.lstsq(design, truth, rcond=None)[0]
    return 10 * np.log10(np.ptp(truth) ** 2 / np.mean((fit - truth) ** 2))


def test_candidates_are_the_volume_wiener_filters_and_richardson_lucy(case, psf):
    _, noisy = case
    volume, kernel = torch.from_numpy(noisy), torch.from_numpy(psf)
    candidates, offset, scale = run_job(net3d.iter_candidates(volume, kernel))
    assert candidates.shape == (net3d.N_CANDIDATES,) + SHAPE
    np.testing.assert_allclose(candidates[0].numpy() * scale + offset, noisy, rtol=1e-5, atol=1e-3)
    first_rl = 1 + len(net3d.WIENER_SNRS_DB)
    rl = engine.richardson_lucy(noisy, psf, iterations=net3d.RL_SNAPSHOTS[0], device="cpu")
    np.testing.assert_allclose(candidates[first_rl].numpy() * scale + offset, rl, rtol=1e-4, atol=1e-2)
    stopped = engine.richardson_lucy(noisy, psf, device="cpu")  # its automatic stop: the last candidate
    np.testing.assert_allclose(candidates[-1].numpy() * scale + offset, stopped, rtol=1e-4, atol=1e-2)
    wiener = engine.wiener_deconvolve_3d(noisy, psf, snr_db=net3d.WIENER_SNRS_DB[0], device="cpu")
    np.testing.assert_allclose(candidates[1].numpy() * scale + offset, wiener, rtol=1e-3, atol=1e-1)


def test_wiener_net_3d_beats_the_input_and_3d_wiener(case, psf):
    truth, noisy = case
    restored = engine.wiener_net_3d(noisy, psf, device="cpu")
    assert restored.shape == noisy.shape and restored.dtype == np.float32
    assert np.isfinite(restored).all()
    wiener = max(
        _psnr(engine.wiener_deconvolve_3d(noisy, psf, snr_db=snr, device="cpu"), truth)
        for snr in (15, 25, 35)
    )
    assert _psnr(restored, truth) > _psnr(noisy, truth) + 3.0
    assert _psnr(restored, truth) > wiener + 1.0


def test_network_tiles_match_the_whole_volume(case, psf, monkeypatch):
    _, noisy = case
    whole = engine.wiener_net_3d(noisy, psf, device="cpu")
    monkeypatch.setattr(net3d, "TILE_SIZE", 32)
    tiled = engine.wiener_net_3d(noisy, psf, device="cpu")
    scale = float(np.percentile(whole, 99.9))
    assert np.abs(tiled - whole).max() < 0.02 * scale


def test_a_large_volume_runs_in_lateral_tiles_as_well_as_whole(monkeypatch):
    psf = engine.microscope_psf((9, 15), na=1.2, wavelength=0.52, dxy=0.1, dz=0.25, ni=1.33, model="gaussian")
    rng = np.random.default_rng(7)
    big = (16 + 8, 128 + 14, 128 + 14)
    truth = np.zeros(big)
    truth[tuple(rng.integers(0, big, size=(150, 3)).T)] = rng.uniform(500, 1500, 150)
    inner = (slice(4, -4), slice(7, -7), slice(7, -7))
    noisy = rng.poisson(fftconvolve(truth, psf, mode="valid").clip(0) + 10).astype(np.float32)
    whole = engine.wiener_net_3d(noisy, psf, device="cpu")
    monkeypatch.setattr(net3d, "MAX_WHOLE_VOXELS", 16 * 32 * 32)
    monkeypatch.setattr(net3d, "MIN_VOLUME_TILE", 32)  # 16 tiles of 32 x 32 voxels and their halos
    updates = []
    tiled = engine.wiener_net_3d(noisy, psf, device="cpu", progress=updates.append)
    assert any("32 px lateral tiles" in update.message for update in updates)
    # Each tile stops Richardson-Lucy by itself: voxels may differ, the restoration as a whole does not.
    assert abs(_psnr(tiled, truth[inner] + 10) - _psnr(whole, truth[inner] + 10)) < 0.3
    assert _psnr(tiled, truth[inner] + 10) > _psnr(noisy, truth[inner] + 10) + 0.5  # 1.3 dB measured
    assert np.abs(tiled - whole).mean() < 0.01 * float(np.percentile(whole, 99.9))


def test_a_very_deep_volume_runs_in_slabs_of_planes(monkeypatch):
    psf = engine.microscope_psf((7, 15), na=1.2, wavelength=0.52, dxy=0.1, dz=0.25, ni=1.33, model="gaussian")
    rng = np.random.default_rng(8)
    big = (40 + 6, 48 + 14, 48 + 14)
    truth = np.zeros(big)
    truth[tuple(rng.integers(0, big, size=(120, 3)).T)] = rng.uniform(500, 1500, 120)
    truth = ndimage.gaussian_filter(truth, 0.7)
    inner = (slice(3, -3), slice(7, -7), slice(7, -7))
    noisy = rng.poisson(fftconvolve(truth, psf, mode="valid").clip(0) + 10).astype(np.float32)
    whole = engine.wiener_net_3d(noisy, psf, device="cpu")
    monkeypatch.setattr(net3d, "MIN_VOLUME_TILE", 16)
    monkeypatch.setattr(net3d, "MAX_WHOLE_VOXELS", 20 * 48 * 48)  # too deep even for 16-voxel tiles: slabs
    updates = []
    slabs = engine.wiener_net_3d(noisy, psf, device="cpu", progress=updates.append)
    assert any("in slabs of" in update.message for update in updates)
    assert abs(_psnr(slabs, truth[inner] + 10) - _psnr(whole, truth[inner] + 10)) < 0.3
    assert np.abs(slabs - whole).mean() < 0.01 * float(np.percentile(whole, 99.9))


def test_time_series_are_deconvolved_one_volume_at_a_time_and_the_twin_agrees(case, psf):
    _, noisy = case
    series = np.stack([noisy[:, :32, :32], noisy[:, 32:, 32:]])
    small_psf = psf[:, 5:-5, 5:-5] / psf[:, 5:-5, 5:-5].sum()
    result = engine.wiener_net_3d(series, small_psf, device="cpu")
    np.testing.assert_array_equal(result[1], engine.wiener_net_3d(series[1], small_psf, device="cpu"))
    updates = []
    twin = run_job(engine.iter_wiener_net_3d(series, small_psf, device="cpu"), progress=updates.append)
    np.testing.assert_array_equal(result, twin)
    fractions = [u.fraction for u in updates]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)


def test_wiener_net_3d_rejects_bad_input(case, psf):
    _, noisy = case
    with pytest.raises(ValueError):
        engine.wiener_net_3d(noisy[0], psf)  # a 2D image
    with pytest.raises(ValueError):
        engine.wiener_net_3d(noisy, psf[0])  # a 2D PSF
    with pytest.raises(ValueError):
        engine.wiener_net_3d(noisy[:8], psf)  # PSF deeper than the volume
    bad = noisy.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError):
        engine.wiener_net_3d(bad, psf)
