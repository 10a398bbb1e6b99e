"""Procedural fluorescence volumes, random microscope PSFs and noisy blurred training cases.

Everything is drawn from a ``numpy`` generator, so a seed fixes a case. Sizes
are in voxels; structures are drawn isotropic in the sample, so in voxel units
their z extent shrinks by ``z_ratio = dz / dxy``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.signal import fftconvolve

PSF_SHAPE = (31, 63, 63)
"""Shape of every training PSF (voxels)."""


def _blurred_points(shape, points: np.ndarray, weights: np.ndarray, sigma) -> np.ndarray:
    volume = np.zeros(shape)
    index = np.round(points).astype(int)
    inside = np.all((index >= 0) & (index < np.array(shape)), axis=1)
    np.add.at(volume, tuple(index[inside].T), weights[inside])
    return gaussian_filter(volume, sigma)


def beads(shape, rng: np.random.Generator, z_ratio: float) -> np.ndarray:
    """Sub-resolution to small beads of random brightness (peak about 1 for the brightest)."""
    density = 10 ** rng.uniform(-5.3, -3.3)
    count = max(1, int(rng.poisson(density * np.prod(shape))))
    points = rng.uniform(0, 1, (count, 3)) * (np.array(shape) - 1)
    size = rng.uniform(0.3, 1.5)
    weights = rng.uniform(0.2, 1.0, count) * (2 * np.pi) ** 1.5 * size**3 / z_ratio
    return _blurred_points(shape, points, weights, (size / z_ratio, size, size))


def filaments(shape, rng: np.random.Generator, z_ratio: float) -> np.ndarray:
    """Persistent random walks (microtubule- or actin-like), some steep in z."""
    extent = np.array(shape, dtype=np.float64)
    lateral = shape[1] * shape[2]
    count = int(rng.integers(1, 3 + lateral // 1500))
    points, weights = [], []
    for _ in range(count):
        position = rng.uniform(0, 1, 3) * (extent - 1)
        direction = rng.normal(size=3)
        direction[0] *= rng.uniform(0.0, 1.0)
        direction /= np.linalg.norm(direction) + 1e-12
        stiffness = rng.uniform(0.02, 0.25)
        brightness = rng.uniform(0.3, 1.0)
        for _step in range(int(rng.integers(100, 6 * max(shape)))):
            direction = direction + rng.normal(size=3) * stiffness
            direction /= np.linalg.norm(direction) + 1e-12
            position = position + 0.5 * direction * np.array([1.0 / z_ratio, 1.0, 1.0])
            points.append(position.copy())
            weights.append(brightness)
    width = rng.uniform(0.4, 1.3)
    scale = 2.5 * width**2
    return _blurred_points(
        shape, np.array(points), np.array(weights) * scale, (width / z_ratio, width, width)
    )


def _grid(shape, z_ratio: float):
    return np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")


def nuclei(shape, rng: np.random.Generator, z_ratio: float) -> np.ndarray:
    """Textured ellipsoids with soft edges (nuclei, organelles), dim to medium."""
    zz, yy, xx = _grid(shape, z_ratio)
    out = np.zeros(shape)
    texture = gaussian_filter(rng.normal(size=shape), (1.5 / z_ratio, 1.5, 1.5))
    texture /= texture.std() + 1e-12
    for _ in range(int(rng.integers(1, 5))):
        centre = rng.uniform(0, 1, 3) * (np.array(shape) - 1)
        radii = rng.uniform(6, 28) * rng.uniform(0.7, 1.3, 3) * np.array([1.0 / z_ratio, 1.0, 1.0])
        r = np.sqrt(
            ((zz - centre[0]) / radii[0]) ** 2
            + ((yy - centre[1]) / radii[1]) ** 2
            + ((xx - centre[2]) / radii[2]) ** 2
        )
        inside = 1.0 / (1.0 + np.exp((r - 1.0) * rng.uniform(4, 20)))
        out += rng.uniform(0.1, 0.5) * inside * np.clip(1.0 + rng.uniform(0, 0.5) * texture, 0, None)
    return out


def membranes(shape, rng: np.random.Generator, z_ratio: float) -> np.ndarray:
    """Thin sheets: ellipsoidal shells and the zero set of a smooth random field."""
    zz, yy, xx = _grid(shape, z_ratio)
    out = np.zeros(shape)
    thickness = rng.uniform(0.5, 1.5)
    for _ in range(int(rng.integers(0, 4))):
        centre = rng.uniform(0, 1, 3) * (np.array(shape) - 1)
        radii = rng.uniform(8, 35) * rng.uniform(0.7, 1.3, 3)
        distance = np.sqrt(
            ((zz - centre[0]) * z_ratio / radii[0]) ** 2
            + ((yy - centre[1]) / radii[1]) ** 2
            + ((xx - centre[2]) / radii[2]) ** 2
        )
        out += rng.uniform(0.2, 0.8) * np.exp(-0.5 * ((distance - 1.0) * radii.mean() / thickness) ** 2)
    if rng.uniform() < 0.5:
        field = gaussian_filter(rng.normal(size=shape), (8 / z_ratio, 8, 8))
        field /= np.abs(field).max() + 1e-12
        gradient = np.sqrt(sum(g**2 for g in np.gradient(field, z_ratio, 1.0, 1.0))) + 1e-6
        out += rng.uniform(0.2, 0.8) * np.exp(-0.5 * (field / gradient / thickness) ** 2)
    return out


def haze(shape, rng: np.random.Generator, z_ratio: float) -> np.ndarray:
    """A smooth, positive, low-contrast background structure (cytoplasm)."""
    field = gaussian_filter(rng.normal(size=shape), (4 / z_ratio, 4, 4))
    field /= field.std() + 1e-12
    return rng.uniform(0.02, 0.15) * np.exp(rng.uniform(0.3, 1.0) * field)


COMPONENTS = (beads, filaments, nuclei, membranes, haze)
COMPONENT_PROBABILITIES = (0.7, 0.7, 0.4, 0.4, 0.4)


def random_specimen(shape, rng: np.random.Generator, z_ratio: float) -> np.ndarray:
    """A mix of :data:`COMPONENTS` (each present with its probability, at least one), float64, peak ~1."""
    present = [rng.uniform() < p for p in COMPONENT_PROBABILITIES]
    if not any(present):
        present[int(rng.integers(0, 2))] = True
    volume = np.zeros(shape)
    for component, chosen in zip(COMPONENTS, present, strict=True):
        if chosen:
            volume += rng.uniform(0.3, 1.0) * component(shape, rng, z_ratio)
    return volume / max(float(np.percentile(volume, 99.99)), 1e-12)


@dataclass
class Optics:
    na: float
    wavelength: float
    dxy: float
    dz: float
    ni: float
    ns: float
    depth: float
    model: str
    confocal: bool


def random_optics(rng: np.random.Generator) -> Optics:
    """Objective, wavelength, sampling, refractive-index mismatch and mode drawn over common set-ups."""
    ni = float(rng.choice([1.515, 1.333, 1.406, 1.0], p=[0.5, 0.25, 0.1, 0.15]))
    na = float(rng.uniform(0.5, min(1.45, ni - 0.06)))
    wavelength = float(rng.uniform(0.45, 0.68))
    nyquist = wavelength / (4 * na)
    dxy = float(nyquist * rng.uniform(0.6, 1.6))
    dz = float(dxy * rng.uniform(1.0, 4.0))
    mismatch = rng.uniform() < 0.4
    ns = float(rng.uniform(1.33, 1.47)) if mismatch else ni
    depth = float(rng.uniform(0.0, 8.0)) if mismatch else 0.0
    model = str(rng.choice(["vectorial", "scalar", "gaussian"], p=[0.6, 0.3, 0.1]))
    return Optics(na, wavelength, dxy, dz, ni, ns, depth, model, bool(rng.uniform() < 0.3))


def optics_psf(optics: Optics, shape=PSF_SHAPE) -> np.ndarray:
    """The PSF of ``optics`` (widefield, or confocal as excitation x emission), float32, sum 1."""
    from napari_deblur.engine import microscope_psf

    if optics.model == "gaussian" or optics.depth == 0.0:
        return microscope_psf(
            shape,
            na=optics.na,
            wavelength=optics.wavelength,
            dxy=optics.dxy,
            dz=optics.dz,
            ni=optics.ni,
            model=optics.model,
            confocal=optics.confocal,
            excitation_wavelength=optics.wavelength - 0.03 if optics.confocal else None,
        )
    import psfmodels

    def one(wavelength):
        return np.asarray(
            psfmodels.make_psf(
                shape[0],
                shape[1],
                dxy=optics.dxy,
                dz=optics.dz,
                pz=optics.depth,
                NA=optics.na,
                wvl=wavelength,
                ns=optics.ns,
                ni=optics.ni,
                ni0=optics.ni,
                model=optics.model,
            ),
            dtype=np.float64,
        )

    psf = one(optics.wavelength)
    if optics.confocal:
        psf = psf * one(optics.wavelength - 0.03)
    psf = np.clip(psf, 0, None)
    return (psf / psf.sum()).astype(np.float32)


@dataclass
class VolumeCase:
    observed: np.ndarray  # float32 (Z, H, W), counts, clipped at 0
    truth: np.ndarray  # float32 (Z, H, W), same units as observed's expected value
    psf: np.ndarray  # float32 (kz, ky, kx)
    optics: Optics
    photons: float


def random_case(shape, rng: np.random.Generator) -> VolumeCase:
    """A noisy widefield or confocal volume with real boundaries (blurred from a larger specimen)."""
    optics = random_optics(rng)
    psf = optics_psf(optics)
    big = tuple(n + k - 1 for n, k in zip(shape, psf.shape, strict=True))
    specimen = random_specimen(big, rng, optics.dz / optics.dxy)
    blurred = fftconvolve(specimen, psf.astype(np.float64), mode="valid")
    offset = tuple(k // 2 for k in psf.shape)
    truth = specimen[tuple(slice(o, o + n) for o, n in zip(offset, shape, strict=True))]
    photons = float(10 ** rng.uniform(1.3, 3.7))
    gain = photons / max(float(np.percentile(blurred, 99.9)), 1e-12)
    background = float(rng.uniform(0.0, 30.0))
    read_noise = float(rng.uniform(0.5, 4.0))
    expected = np.clip(blurred * gain, 0, None) + background
    observed = rng.poisson(expected) + rng.normal(0.0, read_noise, size=expected.shape)
    return VolumeCase(
        observed=np.clip(observed, 0, None).astype(np.float32),
        truth=(truth * gain + background).astype(np.float32),
        psf=psf,
        optics=optics,
        photons=photons,
    )
