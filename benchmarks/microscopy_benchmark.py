"""Protocol 6 (3D microscopy): deconvolution of procedural volumes with ground truth, plus CPU speed.

Run from the repository root::

    python benchmarks/microscopy_benchmark.py              # quality: 4 settings x 2 volumes (~20 min, 2 cores)
    python benchmarks/microscopy_benchmark.py --quick      # 1 volume, 2 settings, fewer rows (smoke test)
    python benchmarks/microscopy_benchmark.py --speed      # RL(50) ours vs scikit-image on 64 x 512 x 512
    python benchmarks/microscopy_benchmark.py --size 32 128 128 --volumes 3 --no-skimage

Quality part (see ``shared/eval/README.md``, protocol 6):

- procedural specimens from fixed seeds: sub-resolution beads, filaments (random smooth
  curves through the volume), blobs (nuclei-like) and thin spherical shells (membranes),
  generated LARGER than the crop by the PSF size minus one in z, y and x, so content outside
  the field blurs into it (real boundaries in x, y and z);
- blurred with ``mode="valid"`` by a PSF from :func:`napari_deblur.engine.microscope_psf`
  (vectorial model, NA 1.4 oil, emission 520 nm, 0.1 µm pixels, 0.2 µm z steps, 31 x 63 x 63
  voxels: the engine takes no PSF larger than the volume): widefield, and confocal (``confocal=True``, excitation 488 nm);
- Poisson noise at two photon levels (blurred 99.9th percentile at 1000 or 100 photons, over
  a background of 10 photons) plus Gaussian read noise (2 or 3 e-); fixed seeds;
- every method gets the same float32 volume, clipped at 0 (both RL implementations need
  non-negative data), and the same PSF;
- rows: the blurred input; ours (``richardson_lucy``) accelerated at 10/20/50/100 iterations
  and their oracle best, plain (``acceleration=False``) at 50, total-variation RL at 50;
  ``skimage.restoration.richardson_lucy`` on the mirror-padded volume (padded by half the PSF
  in every axis, then cropped) at 10/20/50 iterations (100 is left out to bound the run time);
  3D Wiener (``wiener_deconvolve_3d``) at its best SNR of a small grid (oracle); plane-by-plane
  2D Wiener (``wiener_deconvolve``) with the PSF's in-focus slice (what the plugin did for a
  z-stack before), also at its best SNR; ours ``wiener_net_3d`` (the learned fusion of 3D Wiener
  and Richardson-Lucy candidates, trained on procedural volumes of another generator,
  ``training/volumes.py``, never on these);
- scores: each output is first fitted to the truth by one gain and offset (least squares
  over the scored voxels, as CARE does), then volume PSNR and SSIM (``skimage.metrics``,
  ``data_range`` = the truth's range) over the volume without a border of 4 planes in z and
  16 px in y and x (the protocol's "half the PSF" would leave no plane of a 32-plane crop for
  a 33-plane PSF), PSNR over every voxel (boundaries included: ringing at the first and last
  planes shows there), and PSNR / SSIM of the crop's middle plane (the in-focus plane score),
  with the same fit.

Speed part (``--speed``): one 64 x 512 x 512 float32 volume and a 33 x 65 x 65 widefield PSF;
ours ``richardson_lucy(iterations=50)`` (CPU), ``skimage.restoration.richardson_lucy``
(``num_iter=50``) and ours ``wiener_net_3d``, each in a fresh process that loads the volume from a ``.npy`` file and
reports the wall time and its peak resident memory (``VmHWM``) and the resident memory
just before the call. If scikit-image's time extrapolated from 2 iterations is over 10 min,
both run on 64 x 256 x 256 instead (the report says so).

Results: Markdown printed and written to ``benchmarks/results/microscopy.md`` and ``.csv``
(``--quick``: ``microscopy_quick.*``; ``--speed``: ``microscopy_speed.md``).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import eval_data as ed  # noqa: E402

log = logging.getLogger("microscopy_benchmark")

RESULTS_DIR = Path(__file__).resolve().parent / "results"

#: Optics of the benchmark PSFs (µm): NA 1.4 oil, GFP-like emission.
OPTICS = {"na": 1.4, "wavelength": 0.52, "dxy": 0.1, "dz": 0.2, "ni": 1.515}
EXCITATION_WAVELENGTH = 0.488
PSF_SHAPE = (31, 63, 63)  # no larger than the 32-plane crop: the engine needs PSF <= volume
SPEED_PSF_SHAPE = (33, 65, 65)
#: Scored interior: the border left out in (z, y, x) voxels.
BORDER = (4, 16, 16)
BACKGROUND_PHOTONS = 10.0
#: name -> (photons at the blurred 99.9th percentile, read-noise sigma in e-)
NOISE_LEVELS = {"low noise": (1000.0, 2.0), "high noise": (100.0, 3.0)}
PSF_KINDS = ("widefield", "confocal")
RL_ITERATIONS = (10, 20, 50, 100)
SKIMAGE_ITERATIONS = (10, 20, 50)
TV_WEIGHT = 0.002
SNR_GRID_DB = (10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 50.0)
SPEED_SHAPE = (64, 512, 512)
SPEED_FALLBACK_SHAPE = (64, 256, 256)
SPEED_ITERATIONS = 50
SKIMAGE_TIME_LIMIT_S = 600.0


# --------------------------------------------------------------------------- volumes


def render_specimen(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """A procedural fluorescent specimen, float64, about [0, 1] (not clipped).

    Beads (points rounded to ~0.2 µm), filaments (smooth random curves, mostly lying in xy but
    crossing planes), blobs (dim nucleus-like ellipsoids) and thin spherical shells (membranes),
    in voxel units of 0.1 x 0.1 x 0.2 µm (z first): z sizes are half the xy sizes in voxels.
    """
    from scipy.ndimage import gaussian_filter

    depth, rows, columns = shape
    extent = np.array(shape, dtype=np.float64)
    volume_voxels = depth * rows * columns

    points = np.zeros(shape)
    n_beads = max(8, volume_voxels // 6000)
    index = np.round(rng.uniform(0, 1, (n_beads, 3)) * (extent - 1)).astype(int)
    np.add.at(points, tuple(index.T), rng.uniform(0.4, 1.0, n_beads))
    beads = gaussian_filter(points, sigma=(0.5, 1.0, 1.0)) * 2 * np.pi * 1.0 * 1.0

    lines = np.zeros(shape)
    n_filaments = max(3, (rows * columns) // 2500)
    t = np.linspace(0.0, 1.0, 6 * (rows + columns))
    for _ in range(n_filaments):
        start = rng.uniform(0, 1, 3) * (extent - 1)
        direction = rng.normal(size=3) * np.array([0.25, 1.0, 1.0])
        direction /= np.linalg.norm(direction)
        length = rng.uniform(0.7, 1.5) * max(rows, columns)
        path = start + (t - 0.5)[:, None] * length * direction
        for _harmonic in range(3):
            amplitude = rng.normal(size=3) * np.array([2.0, 8.0, 8.0])
            path = (
                path
                + np.sin(2 * np.pi * rng.uniform(0.3, 2.0) * t + rng.uniform(0, 2 * np.pi))[:, None]
                * amplitude
            )
        inside = np.all((path >= 0) & (path <= extent - 1), axis=1)
        voxels = np.unique(np.round(path[inside]).astype(int), axis=0)
        if voxels.size:
            np.add.at(lines, tuple(voxels.T), rng.uniform(0.5, 1.0))
    filaments = gaussian_filter(lines, sigma=(0.4, 0.8, 0.8)) * 3.0

    zz, yy, xx = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    blobs = np.zeros(shape)
    shells = np.zeros(shape)
    n_blobs = max(2, volume_voxels // 400_000)
    for _ in range(n_blobs):
        centre = rng.uniform(0, 1, 3) * (extent - 1)
        radii = rng.uniform(8, 20) * np.array([0.5, 1.0, 1.0]) * rng.uniform(0.8, 1.2, 3)
        r2 = ((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2
        r2 += ((xx - centre[2]) / radii[2]) ** 2
        blobs += rng.uniform(0.15, 0.35) / (1.0 + np.exp((np.sqrt(r2) - 1.0) * 8.0))
    n_shells = max(2, volume_voxels // 500_000)
    for _ in range(n_shells):
        centre = rng.uniform(0, 1, 3) * (extent - 1)
        radius = rng.uniform(10, 25)
        distance = np.sqrt(((zz - centre[0]) * 2.0) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2)
        shells += rng.uniform(0.3, 0.6) * np.exp(-0.5 * ((distance - radius) / 0.8) ** 2)
    return beads + filaments + blobs + shells


def benchmark_psf(kind: str, shape: tuple[int, int, int] = PSF_SHAPE) -> np.ndarray:
    """The widefield or confocal PSF of the benchmark (float32, sums to 1)."""
    from napari_deblur.engine import microscope_psf

    confocal = kind == "confocal"
    return np.asarray(
        microscope_psf(
            shape,
            **OPTICS,
            model="vectorial",
            confocal=confocal,
            excitation_wavelength=EXCITATION_WAVELENGTH if confocal else None,
        ),
        dtype=np.float32,
    )


@dataclass
class Case:
    kind: str
    noise: str
    volume: int
    observed: np.ndarray  # float32, clipped at 0
    truth: np.ndarray  # float64, photons (specimen scaled + background)


def make_case(kind: str, noise: str, volume: int, psf: np.ndarray, crop: tuple[int, int, int]) -> Case:
    """One noisy crop with real boundaries and its ground truth."""
    from scipy.signal import fftconvolve

    big_shape = tuple(c + k - 1 for c, k in zip(crop, psf.shape, strict=True))
    specimen = render_specimen(big_shape, ed.case_rng("microscopy-volume", volume))
    blurred = fftconvolve(specimen, psf.astype(np.float64), mode="valid")
    offset = tuple(k // 2 for k in psf.shape)
    truth = specimen[tuple(slice(o, o + c) for o, c in zip(offset, crop, strict=True))]
    photons, read_noise = NOISE_LEVELS[noise]
    gain = photons / max(float(np.percentile(blurred, 99.9)), 1e-12)
    rng = ed.case_rng("microscopy-noise", kind, noise, volume)
    expected = np.clip(blurred * gain, 0, None) + BACKGROUND_PHOTONS
    observed = rng.poisson(expected) + rng.normal(0.0, read_noise, size=expected.shape)
    return Case(
        kind=kind,
        noise=noise,
        volume=volume,
        observed=np.clip(observed, 0, None).astype(np.float32),
        truth=truth * gain + BACKGROUND_PHOTONS,
    )


# --------------------------------------------------------------------------- scores


def _interior(volume: np.ndarray) -> np.ndarray:
    return volume[tuple(slice(b, n - b) for b, n in zip(BORDER, volume.shape, strict=True))]


def affine_fit(estimate: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Gain and offset that best map ``estimate`` onto ``truth`` (least squares over the interior)."""
    x = _interior(estimate).ravel().astype(np.float64)
    y = _interior(truth).ravel()
    design = np.stack([x, np.ones_like(x)], axis=1)
    (gain, offset), *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(gain), float(offset)


def score(estimate: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Volume and in-focus-plane PSNR/SSIM after one gain + offset fit (CARE-style)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    gain, offset = affine_fit(estimate, truth)
    fitted = np.asarray(estimate, np.float64) * gain + offset
    inner_truth, inner_fit = _interior(truth), _interior(fitted)
    data_range = float(inner_truth.max() - inner_truth.min())
    middle = truth.shape[0] // 2
    plane_truth = truth[middle, BORDER[1] : -BORDER[1], BORDER[2] : -BORDER[2]]
    plane_fit = fitted[middle, BORDER[1] : -BORDER[1], BORDER[2] : -BORDER[2]]
    plane_range = float(plane_truth.max() - plane_truth.min())
    return {
        "psnr": peak_signal_noise_ratio(inner_truth, inner_fit, data_range=data_range),
        "ssim": structural_similarity(inner_truth, inner_fit, data_range=data_range),
        "psnr_all": peak_signal_noise_ratio(truth, fitted, data_range=float(truth.max() - truth.min())),
        "plane_psnr": peak_signal_noise_ratio(plane_truth, plane_fit, data_range=plane_range),
        "plane_ssim": structural_similarity(plane_truth, plane_fit, data_range=plane_range),
    }


# --------------------------------------------------------------------------- methods


def skimage_rl_mirror(image: np.ndarray, psf: np.ndarray, iterations: int) -> np.ndarray:
    """scikit-image's Richardson-Lucy on the volume mirror-padded by half the PSF, cropped back."""
    from skimage.restoration import richardson_lucy

    pad = [(k // 2, k // 2) for k in psf.shape]
    padded = np.pad(image, pad, mode="symmetric")
    result = richardson_lucy(padded, psf, num_iter=iterations, clip=False)
    return result[tuple(slice(k // 2, k // 2 + n) for k, n in zip(psf.shape, image.shape, strict=True))]


def run_methods(case: Case, psf: np.ndarray, settings: argparse.Namespace) -> list[dict]:
    """Every row on one case: ``[{method, psnr, ssim, ..., seconds, choice}]``."""
    from napari_deblur import engine

    rows: list[dict] = []

    def add(method: str, estimate: np.ndarray, seconds: float, choice: str = "") -> dict:
        row = {"method": method, **score(estimate, case.truth), "seconds": seconds, "choice": choice}
        rows.append(row)
        log.info(
            "  %-34s PSNR %6.2f  SSIM %.4f  %6.1f s %s", method, row["psnr"], row["ssim"], seconds, choice
        )
        return row

    def timed(call):
        start = time.perf_counter()
        result = np.asarray(call(), dtype=np.float32)
        return result, time.perf_counter() - start

    image = case.observed
    add("blurred", image, 0.0)

    ours = []
    for iterations in settings.rl_iterations:
        out, seconds = timed(
            lambda n=iterations: engine.richardson_lucy(image, psf, iterations=n, device="cpu")
        )
        ours.append(add(f"ours RL {iterations}", out, seconds))
    best = max(ours, key=lambda r: r["psnr"])
    rows.append({**best, "method": "ours RL best (oracle)", "choice": best["method"].split()[-1] + " it."})

    updates = []
    out, seconds = timed(lambda: engine.richardson_lucy(image, psf, device="cpu", progress=updates.append))
    add("ours RL auto (the default: stops when the residual is white)", out, seconds, f"{len(updates)} it.")

    out, seconds = timed(lambda: engine.wiener_net_3d(image, psf, device="cpu"))
    add("ours Wiener-net 3D (learned)", out, seconds)

    if 50 in settings.rl_iterations and not settings.quick:
        out, seconds = timed(
            lambda: engine.richardson_lucy(image, psf, iterations=50, acceleration=False, device="cpu")
        )
        add("ours RL 50 plain", out, seconds)
        out, seconds = timed(
            lambda: engine.richardson_lucy(image, psf, iterations=50, tv_weight=TV_WEIGHT, device="cpu")
        )
        add(f"ours TV-RL 50 (tv {TV_WEIGHT:g})", out, seconds)

    if not settings.no_skimage:
        for iterations in settings.skimage_iterations:
            out, seconds = timed(lambda n=iterations: skimage_rl_mirror(image, psf, n))
            add(f"skimage RL {iterations}", out, seconds)

    for method, call in (
        (
            "Wiener 3D best SNR (oracle)",
            lambda s: engine.wiener_deconvolve_3d(image, psf, snr_db=s, device="cpu"),
        ),
        (
            "Wiener 2D per plane best SNR (oracle)",
            lambda s: engine.wiener_deconvolve(image, in_focus_slice(psf), snr_db=s, device="cpu"),
        ),
    ):
        trials = []
        for snr in SNR_GRID_DB:
            out, seconds = timed(lambda s=snr, c=call: c(s))
            trials.append((score(out, case.truth)["psnr"], snr, out, seconds))
        _, snr, out, seconds = max(trials, key=lambda t: t[0])
        add(method, out, seconds, f"{snr:g} dB")
    return rows


def in_focus_slice(psf: np.ndarray) -> np.ndarray:
    """The PSF's middle plane, normalised to sum 1 (the 2D kernel of plane-by-plane deconvolution)."""
    plane = np.asarray(psf[psf.shape[0] // 2], dtype=np.float64)
    return (plane / plane.sum()).astype(np.float32)


# --------------------------------------------------------------------------- report

COLUMNS = ("psnr", "ssim", "psnr_all", "plane_psnr", "plane_ssim", "seconds")


def summarise(all_rows: list[dict]) -> dict[tuple[str, str], list[tuple[str, dict[str, float], str]]]:
    """Mean of every column per (setting, method), methods in first-seen order."""
    grouped: dict[tuple[str, str], dict[str, list[dict]]] = defaultdict(dict)
    for row in all_rows:
        grouped[(row["kind"], row["noise"])].setdefault(row["method"], []).append(row)
    summary = {}
    for setting, methods in grouped.items():
        summary[setting] = []
        for method, rows in methods.items():
            means = {c: float(np.mean([r[c] for r in rows])) for c in COLUMNS}
            choices = ", ".join(sorted({r["choice"] for r in rows if r["choice"]}))
            summary[setting].append((method, means, choices))
    return summary


def markdown_quality(summary, settings: argparse.Namespace, argv) -> str:
    lines = [
        "# Protocol 6: 3D microscopy deconvolution (procedural volumes with ground truth)",
        "",
        f"Command: `{ed.command_line('benchmarks/microscopy_benchmark.py', argv)}`  ",
        ed.environment_line() + "  ",
        f"Crops {' x '.join(map(str, settings.size))} (z, y, x) voxels of 0.2 x 0.1 x 0.1 µm, "
        f"{settings.volumes} volume(s) per setting, blurred from a volume larger by the PSF "
        f"({' x '.join(map(str, PSF_SHAPE))}, vectorial, NA {OPTICS['na']}, {OPTICS['wavelength'] * 1000:g} nm, "
        f"n {OPTICS['ni']}; confocal: excitation {EXCITATION_WAVELENGTH * 1000:g} nm) with real boundaries; "
        f"Poisson noise (blurred 99.9th percentile at "
        + " / ".join(f"{p:g}" for p, _ in NOISE_LEVELS.values())
        + f" photons over {BACKGROUND_PHOTONS:g} background) + read noise ("
        + " / ".join(f"{r:g}" for _, r in NOISE_LEVELS.values())
        + " e-).",
        "",
        "Scores after one gain + offset fit of each output to the truth (CARE-style). PSNR / SSIM: volume "
        f"without a border of {BORDER[0]} planes and {BORDER[1]} px; PSNR all: every voxel (boundaries "
        "included); plane: the crop's middle plane. Time: seconds per volume on this machine's CPU (shared, "
        "indicative). Oracle rows pick per volume by volume PSNR; the auto row's pick is the number of iterations "
        "it ran (its estimate is the one whose residual was whitest, 10 iterations earlier). Wiener-net 3D: "
        "`wiener_net_3d`, trained on procedural volumes of its own generator (`training/volumes.py`), never "
        "on these.",
        "",
    ]
    for (kind, noise), rows in summary.items():
        lines += [
            f"## {kind}, {noise}",
            "",
            "| method | PSNR (dB) | SSIM | PSNR all (dB) | plane PSNR (dB) | plane SSIM | time (s) | pick |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for method, m, choice in rows:
            lines.append(
                f"| {method} | {m['psnr']:.2f} | {m['ssim']:.4f} | {m['psnr_all']:.2f} | "
                f"{m['plane_psnr']:.2f} | {m['plane_ssim']:.4f} | {m['seconds']:.1f} | {choice} |"
            )
        lines.append("")
    return "\n".join(lines)


LEARNED = "ours Wiener-net 3D (learned)"
ORACLE = "ours RL best (oracle)"


def learned_bar(all_rows: list[dict]) -> str:
    """The bar of Wiener-net 3D: at least +1 dB over the RL oracle on the mean, no volume below it."""
    by_case = defaultdict(dict)
    for row in all_rows:
        by_case[(row["kind"], row["noise"], row["volume"])][row["method"]] = row["psnr"]
    gains = [methods[LEARNED] - methods[ORACLE] for methods in by_case.values() if LEARNED in methods]
    if not gains:
        return ""
    mean, worst = float(np.mean(gains)), float(np.min(gains))
    verdict = "met" if mean >= 1.0 and worst >= 0.0 else "NOT met"
    return (
        f"Bar (Wiener-net 3D at least +1 dB over the RL oracle on the mean, no volume below it): {verdict}; "
        f"mean gain {mean:+.2f} dB, smallest {worst:+.2f} dB over {len(gains)} volumes.\n"
    )


def write_csv(path: Path, all_rows: list[dict]) -> None:
    fields = ["kind", "noise", "volume", "method", *COLUMNS, "choice"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in all_rows:
            writer.writerow({k: (f"{row[k]:.5g}" if isinstance(row[k], float) else row[k]) for k in fields})


def run_quality(settings: argparse.Namespace, argv) -> str:
    crop = tuple(settings.size)
    kinds = PSF_KINDS
    noises = tuple(NOISE_LEVELS) if not settings.quick else ("low noise",)
    all_rows: list[dict] = []
    for kind in kinds:
        psf = benchmark_psf(kind)
        for noise in noises:
            for volume in range(settings.volumes):
                log.info("%s, %s, volume %d", kind, noise, volume)
                case = make_case(kind, noise, volume, psf, crop)
                for row in run_methods(case, psf, settings):
                    all_rows.append({"kind": kind, "noise": noise, "volume": volume, **row})
    summary = summarise(all_rows)
    report = markdown_quality(summary, settings, argv) + "\n" + learned_bar(all_rows)
    stem = "microscopy_quick" if settings.quick else "microscopy"
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / f"{stem}.md").write_text(report + "\n")
    write_csv(RESULTS_DIR / f"{stem}.csv", all_rows)
    return report


# --------------------------------------------------------------------------- speed


def speed_child(method: str, volume_path: str, psf_path: str, iterations: int) -> dict:
    """Run one method in this (fresh) process; time, resident memory before, and peak."""
    if method in ("ours", "wiener-net-3d"):
        from napari_deblur import engine
    else:
        from skimage.restoration import richardson_lucy
    image = np.load(volume_path)
    psf = np.load(psf_path)
    baseline = ed.process_memory_bytes("VmRSS")
    start = time.perf_counter()
    if method == "ours":
        result = engine.richardson_lucy(image, psf, iterations=iterations, device="cpu")
    elif method == "wiener-net-3d":
        result = engine.wiener_net_3d(image, psf, device="cpu")
    else:
        result = richardson_lucy(image, psf, num_iter=iterations, clip=False)
    seconds = time.perf_counter() - start
    peak = ed.process_memory_bytes("VmHWM")
    return {
        "method": method,
        "shape": list(image.shape),
        "iterations": iterations,
        "seconds": seconds,
        "baseline": baseline,
        "peak": peak,
        "dtype": str(np.asarray(result).dtype),
    }


def _run_child(method: str, volume_path: Path, psf_path: Path, iterations: int, timeout: float) -> dict:
    command = [
        sys.executable,
        __file__,
        "--speed-child",
        method,
        str(volume_path),
        str(psf_path),
        str(iterations),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"method": method, "error": f"over {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        tail = (done.stderr.strip().splitlines() or ["?"])[-1]
        return {"method": method, "error": f"exit {done.returncode}: {tail[:200]}"}
    return json.loads(lines[-1])


def _speed_volume(shape: tuple[int, int, int], psf: np.ndarray) -> np.ndarray:
    """A widefield-blurred procedural volume of ``shape`` (blurred per chunk of planes to bound memory)."""
    from scipy.signal import fftconvolve

    specimen = render_specimen(shape, ed.case_rng("microscopy-speed"))
    blurred = fftconvolve(specimen.astype(np.float32), psf, mode="same")
    rng = ed.case_rng("microscopy-speed-noise")
    scaled = np.clip(blurred, 0, None) * (1000.0 / max(float(np.percentile(blurred, 99.9)), 1e-12))
    return np.clip(rng.poisson(scaled + BACKGROUND_PHOTONS) + rng.normal(0, 2.0, shape), 0, None).astype(
        np.float32
    )


def run_speed(settings: argparse.Namespace, argv) -> str:
    psf = benchmark_psf("widefield", SPEED_PSF_SHAPE)
    notes = []
    with tempfile.TemporaryDirectory() as folder:
        psf_path = Path(folder) / "psf.npy"
        np.save(psf_path, psf)
        shape = tuple(settings.speed_size)
        volume_path = Path(folder) / "volume.npy"
        np.save(volume_path, _speed_volume(shape, psf))
        probe = _run_child("skimage", volume_path, psf_path, 2, SKIMAGE_TIME_LIMIT_S)
        estimate = probe.get("seconds", float("inf")) / 2 * SPEED_ITERATIONS
        log.info("scikit-image, 2 iterations on %s: %s (50 iterations ~ %.0f s)", shape, probe, estimate)
        if estimate > SKIMAGE_TIME_LIMIT_S and shape == SPEED_SHAPE:
            notes.append(
                f"scikit-image's RL(50) on {' x '.join(map(str, shape))} would take about {estimate:.0f} s "
                f"(from 2 iterations), over {SKIMAGE_TIME_LIMIT_S:.0f} s: both ran on "
                f"{' x '.join(map(str, SPEED_FALLBACK_SHAPE))} instead."
            )
            shape = SPEED_FALLBACK_SHAPE
            np.save(volume_path, _speed_volume(shape, psf))
        results = []
        for method in ("ours", "skimage", "wiener-net-3d"):
            log.info("speed: %s (RL: %d iterations) on %s", method, SPEED_ITERATIONS, shape)
            results.append(
                _run_child(method, volume_path, psf_path, SPEED_ITERATIONS, 3 * SKIMAGE_TIME_LIMIT_S)
            )
            log.info("  %s", results[-1])
    lines = [
        "# Protocol 6: 3D deconvolution speed and memory on the CPU",
        "",
        f"Command: `{ed.command_line('benchmarks/microscopy_benchmark.py', argv)}`  ",
        ed.environment_line() + "  ",
        f"One {' x '.join(map(str, shape))} float32 volume (z, y, x), PSF {' x '.join(map(str, SPEED_PSF_SHAPE))}, "
        f"{SPEED_ITERATIONS} iterations, each method in a fresh process (torch with its default "
        f"{os.cpu_count()} threads; scikit-image's FFT convolution is single-threaded). Resident memory: "
        "just before the call (Python, libraries and the input) and the process's peak (`VmHWM`).",
        *(["", note] for note in notes),
        "",
        "| method | time (s) | resident before (MB) | peak (MB) | peak - before (MB) |",
        "|---|---:|---:|---:|---:|",
    ]
    labels = {
        "ours": "ours `richardson_lucy(iterations=50)`",
        "skimage": "`skimage.restoration.richardson_lucy`",
        "wiener-net-3d": "ours `wiener_net_3d` (its Richardson-Lucy run and 4 Wiener filters included)",
    }
    for result in results:
        label = labels[result["method"]]
        if "error" in result:
            lines.append(f"| {label} | {result['error']} | | | |")
            continue
        mb = 2**20
        lines.append(
            f"| {label} | {result['seconds']:.1f} | {result['baseline'] / mb:.0f} | {result['peak'] / mb:.0f} | "
            f"{(result['peak'] - result['baseline']) / mb:.0f} |"
        )
    if all("seconds" in r for r in results[:2]):
        ratio = results[0]["seconds"] / results[1]["seconds"]
        verdict = "met" if ratio <= 1.0 else "NOT met"
        lines += [
            "",
            f"Bar (ours RL(50) at most scikit-image's time): {verdict}, ours / skimage = {ratio:.2f}.",
        ]
    report = "\n".join(lines)
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "microscopy_speed.md").write_text(report + "\n")
    return report


# --------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size", type=int, nargs=3, default=(32, 128, 128), metavar=("Z", "Y", "X"))
    parser.add_argument("--volumes", type=int, default=2, help="volumes per (PSF, noise) setting")
    parser.add_argument("--quick", action="store_true", help="1 volume, low noise only, fewer rows")
    parser.add_argument("--no-skimage", action="store_true", help="leave out scikit-image's RL rows")
    parser.add_argument("--speed", action="store_true", help="run the speed part instead of the quality part")
    parser.add_argument("--speed-size", type=int, nargs=3, default=SPEED_SHAPE, metavar=("Z", "Y", "X"))
    parser.add_argument("--speed-child", nargs=4, help=argparse.SUPPRESS)
    settings = parser.parse_args(argv)
    if settings.quick:
        settings.volumes = 1
        settings.size = (32, 96, 96) if tuple(settings.size) == (32, 128, 128) else settings.size
        settings.rl_iterations = (10, 50)
        settings.skimage_iterations = (10,)
    else:
        settings.rl_iterations = RL_ITERATIONS
        settings.skimage_iterations = SKIMAGE_ITERATIONS
    return settings


def main(argv=None) -> None:
    settings = parse_args(argv)
    if settings.speed_child:
        method, volume_path, psf_path, iterations = settings.speed_child
        sys.stdout.write(json.dumps(speed_child(method, volume_path, psf_path, int(iterations))) + "\n")
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    report = run_speed(settings, argv) if settings.speed else run_quality(settings, argv)
    sys.stdout.write(report + "\n")


if __name__ == "__main__":
    main()
