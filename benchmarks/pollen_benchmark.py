"""The pollen stack that sdeconv ships: 3D deconvolution against its ground truth, beside sdeconv's own results.

Run from the repository root, with sdeconv's wheel downloaded (it is not a dependency and nothing is
committed from it; sdeconv is BSD-3-Clause)::

    pip download sdeconv==1.0.4 --no-deps -d /tmp/sdeconv
    python benchmarks/pollen_benchmark.py --wheel /tmp/sdeconv/sdeconv-1.0.4-py3-none-any.whl

What it does, for evaluation only (nothing here is tuned):

- reads from the wheel ``sdeconv/data/pollen.tif`` (32 x 256 x 256, the truth),
  ``pollen_poisson_noise_blurred.tif`` (the same blurred by ``pollen_psf.tif`` with Poisson noise)
  and the PSF; the PSF (32 x 256 x 256, its peak at (16, 128, 128)) is cut to 31 x 63 x 63 around its
  peak (the engine takes odd, centred PSFs; the cut keeps all but 6e-8 of its sum);
- runs ours: Richardson-Lucy with the automatic stop (the default), at 10/20/50/100 iterations (the best
  is an oracle), plain (not accelerated) at 30 iterations, and 3D Wiener at the best of 8 SNRs (oracle);
- scores sdeconv's own results that its wheel ships as test references
  (``tests/deconv/pollen_richardson_lucy.tif``: RL, 30 iterations, padding (16, 64, 64);
  ``pollen_wiener.tif``: beta 0.0005; ``pollen_spitfire.tif``: its variational method), as they are;
- every output is fitted to the truth by one gain and offset (CARE-style, as protocol 6) before PSNR
  and SSIM over the whole volume.

Results: printed as Markdown and written to ``benchmarks/results/pollen.md``.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import eval_data as ed  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PSF_HALF = (15, 31, 31)
RL_ITERATIONS = (10, 20, 50, 100)
SNR_GRID_DB = (10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 50.0)
SDECONV_RESULTS = {
    "sdeconv RL 30 (its test reference)": "tests/deconv/pollen_richardson_lucy.tif",
    "sdeconv Wiener, beta 0.0005 (its test reference)": "tests/deconv/pollen_wiener.tif",
    "sdeconv SPITFIRe (its test reference)": "tests/deconv/pollen_spitfire.tif",
}


def read_tif(wheel: zipfile.ZipFile, name: str) -> np.ndarray:
    import tifffile

    return tifffile.imread(io.BytesIO(wheel.read(name))).astype(np.float32)


def centred_psf(psf: np.ndarray) -> np.ndarray:
    """``psf`` cut to ``2 * PSF_HALF + 1`` around its peak, normalised to sum 1."""
    peak = np.unravel_index(int(np.argmax(psf)), psf.shape)
    cut = psf[tuple(slice(p - h, p + h + 1) for p, h in zip(peak, PSF_HALF, strict=True))]
    return (cut / cut.sum()).astype(np.float32)


def score(estimate: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """PSNR and SSIM over the whole volume after one least-squares gain + offset fit to ``truth``."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    x = np.asarray(estimate, np.float64).ravel()
    design = np.stack([x, np.ones_like(x)], axis=1)
    (gain, offset), *_ = np.linalg.lstsq(design, truth.ravel().astype(np.float64), rcond=None)
    fitted = np.asarray(estimate, np.float64) * gain + offset
    truth = truth.astype(np.float64)
    data_range = float(truth.max() - truth.min())
    return (
        peak_signal_noise_ratio(truth, fitted, data_range=data_range),
        structural_similarity(truth, fitted, data_range=data_range),
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wheel", type=Path, required=True, help="sdeconv-1.0.4-py3-none-any.whl")
    args = parser.parse_args(argv)
    from napari_deblur import engine

    with zipfile.ZipFile(args.wheel) as wheel:
        truth = read_tif(wheel, "sdeconv/data/pollen.tif")
        blurred = read_tif(wheel, "sdeconv/data/pollen_poisson_noise_blurred.tif")
        psf = centred_psf(read_tif(wheel, "sdeconv/data/pollen_psf.tif"))
        references = {label: read_tif(wheel, name) for label, name in SDECONV_RESULTS.items()}

    rows = []

    def add(label, estimate, seconds, note=""):
        psnr, ssim = score(estimate, truth)
        rows.append((label, psnr, ssim, seconds, note))
        print(f"{label}: PSNR {psnr:.2f} SSIM {ssim:.4f} ({seconds:.1f} s) {note}", flush=True)

    add("blurred (input)", blurred, 0.0)
    start = time.perf_counter()
    updates = []
    auto = engine.richardson_lucy(blurred, psf, device="cpu", progress=updates.append)
    add("ours RL, automatic stop (the default)", auto, time.perf_counter() - start, f"ran {len(updates)} it.")
    fixed = []
    for iterations in RL_ITERATIONS:
        start = time.perf_counter()
        out = engine.richardson_lucy(blurred, psf, iterations=iterations, device="cpu")
        add(f"ours RL {iterations}", out, time.perf_counter() - start)
        fixed.append(rows[-1])
    best = max(fixed, key=lambda row: row[1])
    rows.append(
        ("ours RL, best of 10/20/50/100 (oracle)", best[1], best[2], best[3], best[0].split()[-1] + " it.")
    )
    start = time.perf_counter()
    out = engine.richardson_lucy(blurred, psf, iterations=30, acceleration=False, device="cpu")
    add("ours RL 30, plain (as sdeconv's)", out, time.perf_counter() - start)
    start = time.perf_counter()
    out = engine.wiener_net_3d(blurred, psf, device="cpu")
    add("ours Wiener-net 3D (learned)", out, time.perf_counter() - start)
    trials = []
    for snr in SNR_GRID_DB:
        start = time.perf_counter()
        out = engine.wiener_deconvolve_3d(blurred, psf, snr_db=snr, device="cpu")
        trials.append((score(out, truth), snr, time.perf_counter() - start))
    (psnr, ssim), snr, seconds = max(trials, key=lambda t: t[0][0])
    rows.append(("ours 3D Wiener, best SNR (oracle)", psnr, ssim, seconds, f"{snr:g} dB"))
    for label, estimate in references.items():
        add(label, estimate, float("nan"), "their file, scored here")

    lines = [
        "# The pollen stack of sdeconv (3D, ground truth)",
        "",
        f"Command: `{ed.command_line('benchmarks/pollen_benchmark.py', argv)}`  ",
        ed.environment_line(),
        "",
        f"`pollen_poisson_noise_blurred.tif` ({' x '.join(map(str, blurred.shape))}) against `pollen.tif`; "
        f"PSF cut to {' x '.join(map(str, psf.shape))} around its peak. Each output fitted to the truth by "
        "one gain and offset, then PSNR / SSIM over the whole volume. sdeconv's rows are the result files "
        "its wheel ships for its own tests, scored here the same way. Time: this machine's CPU (2 cores).",
        "",
        "| method | PSNR (dB) | SSIM | time (s) | note |",
        "|---|---:|---:|---:|---|",
    ]
    for label, psnr, ssim, seconds, note in rows:
        time_text = "-" if not np.isfinite(seconds) else f"{seconds:.1f}"
        lines.append(f"| {label} | {psnr:.2f} | {ssim:.4f} | {time_text} | {note} |")
    report = "\n".join(lines) + "\n"
    print(report)
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "pollen.md").write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
