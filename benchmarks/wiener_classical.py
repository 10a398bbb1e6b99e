"""Protocol 3 (Wiener-net report) for the CLASSICAL methods, plus speed.

Run from the repository root::

    python benchmarks/wiener_classical.py            # full run (10-20 min on 2 cores)
    python benchmarks/wiener_classical.py --quick    # 2 images x 2 kernels, smoke test
    python benchmarks/wiener_classical.py --kernels usrnet --no-speed   # the 12 USRNet kernels

What it does (see ``shared/eval/README.md``, protocols 3 and 5):

- eval-split images (grayscale float in [0, 1], colour -> luminance), centre
  crop of at most ``--max-size`` pixels per side (to bound the run time) that
  leaves room for the largest kernel, so every kernel scores the same region;
- Levin et al.'s 8 real camera-shake kernels; Gaussian noise of sigma
  2.55/255 and 7.65/255 (not clipped); REAL boundaries (a larger crop is
  convolved with ``mode="valid"``); fixed seeds per (image, kernel, noise);
- methods in the same run: the blurred input; Wiener at ONE fixed SNR (30 dB,
  the engine default, not tuned on this data: the report's fixed baseline);
  Wiener with the best of the 15 SNRs 9..65 dB (oracle pick per image by PSNR);
  Richardson-Lucy (``skimage.restoration.richardson_lucy``, ``clip=False``,
  input clipped at 0 as RL needs non-negative data) with the best of 10/30/100
  iterations (oracle pick by PSNR);
- outputs clipped to [0, 1] (as an 8-bit result would be), then PSNR (peak 1)
  and SSIM after excluding a border as wide as the kernel;
- frame-ringing check: PSNR in the frame band (width = kernel size) vs the
  interior, with a periodic-FFT Wiener (no boundary handling, same SNR) as a
  reference that does ring;
- speed: ``wiener_deconvolve`` on a 1024x1024 grayscale image vs
  ``skimage.restoration.wiener`` and ``richardson_lucy(num_iter=30)`` with
  the same image and kernel, median of a few repeats, as RATIOS only.

Results: printed as Markdown, and written to
``benchmarks/results/wiener_classical.md`` and ``.csv`` (``--quick`` writes
``wiener_classical_quick.*`` instead).
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import eval_data as ed  # noqa: E402

log = logging.getLogger("wiener_classical")

FIXED_SNR_DB = 30.0
RL_ITERATIONS = (10, 30, 100)
RESULTS_DIR = Path(__file__).resolve().parent / "results"

#: name -> (loader, label in the report, results-file suffix)
KERNEL_SETS = {
    "levin": (ed.load_levin_kernels, "Levin 2009", ""),
    "usrnet": (ed.load_usrnet_kernels, "USRNet kernels_12", "_usrnet"),
}

METHODS = {
    "blurred": "Blurred input",
    "wiener_fixed": f"Wiener, fixed SNR {FIXED_SNR_DB:g} dB",
    "wiener_best": "Wiener, best of 15 SNRs (oracle)",
    "rl_best": "Richardson-Lucy, best of 10/30/100 it. (oracle)",
}
#: Only in the ringing table: shows what frame ringing looks like.
PERIODIC_REFERENCE = "wiener_periodic"
PERIODIC_LABEL = f"(reference) Wiener, periodic FFT, {FIXED_SNR_DB:g} dB"


@dataclass
class CaseResult:
    noise_index: int
    noise_sigma: float
    image: str
    kernel: int
    kernel_size: int
    method: str
    psnr: float
    ssim: float
    band_psnr: float
    interior_psnr: float
    choice: str = ""


@dataclass
class Settings:
    images: list[str]
    kernels: list[int]
    noise_sigmas: list[float]
    max_size: int
    margin: int
    speed_repeats: dict[str, int] = field(default_factory=dict)


def periodic_wiener(image: np.ndarray, psf: np.ndarray, snr_db: float) -> np.ndarray:
    """Textbook Wiener filter with circular (periodic) boundaries, NSR = 10^(-SNR/10).

    Only a reference for the ringing check: it treats the image as periodic,
    so the mismatch at the frame rings.
    """
    h, w = image.shape
    kh, kw = psf.shape
    padded = np.zeros((h, w))
    padded[:kh, :kw] = psf
    padded = np.roll(padded, (-(kh // 2), -(kw // 2)), axis=(0, 1))
    otf = np.fft.rfft2(padded)
    nsr = 10.0 ** (-snr_db / 10.0)
    filt = np.conj(otf) / (np.abs(otf) ** 2 + nsr)
    return np.fft.irfft2(np.fft.rfft2(image) * filt, s=(h, w))


def score(estimate, sharp, border) -> tuple[float, float, float, float]:
    est = np.clip(np.asarray(estimate, np.float64), 0.0, 1.0)
    band, interior = ed.frame_band_psnr(est, sharp, border)
    return (
        ed.psnr_excluding_border(est, sharp, border),
        ed.ssim_excluding_border(est, sharp, border),
        band,
        interior,
    )


def run_case(engine, image_name, k_index, kernel, n_index, sigma, source, out_shape):
    """All methods on one (image, kernel, noise) case."""
    from skimage.metrics import peak_signal_noise_ratio
    from skimage.restoration import richardson_lucy

    blurred, sharp = ed.blur_real_boundary(source, kernel, out_shape)
    observed = ed.add_gaussian_noise(blurred, sigma, ed.case_rng(image_name, k_index, n_index))
    y = observed.astype(np.float32)
    k32 = kernel.astype(np.float32)
    border = max(kernel.shape)
    inner = (slice(border, -border), slice(border, -border))

    def inner_psnr(est):
        return peak_signal_noise_ratio(
            sharp[inner], np.clip(np.asarray(est, np.float64), 0, 1)[inner], data_range=1.0
        )

    common = dict(
        noise_index=n_index,
        noise_sigma=sigma,
        image=image_name,
        kernel=k_index + 1,
        kernel_size=kernel.shape[0],
    )
    results = []

    def add(method, estimate, choice=""):
        results.append(
            CaseResult(
                method=method,
                choice=choice,
                **common,
                **dict(zip(("psnr", "ssim", "band_psnr", "interior_psnr"), score(estimate, sharp, border))),
            )
        )

    add("blurred", y)
    add("wiener_fixed", engine.wiener_deconvolve(y, k32, snr_db=FIXED_SNR_DB))

    snrs = list(engine.WIENER_STACK_SNRS_DB)
    stack = engine.wiener_deconvolve_snr_stack(y, k32, snrs)
    best = int(np.argmax([inner_psnr(s) for s in stack]))
    add("wiener_best", stack[best], choice=f"{snrs[best]:g} dB")

    rl_input = np.clip(y, 0.0, None)
    rl_outputs = [richardson_lucy(rl_input, k32, num_iter=n, clip=False) for n in RL_ITERATIONS]
    best = int(np.argmax([inner_psnr(r) for r in rl_outputs]))
    add("rl_best", rl_outputs[best], choice=f"{RL_ITERATIONS[best]} it.")

    add(PERIODIC_REFERENCE, periodic_wiener(observed, kernel, FIXED_SNR_DB))
    return results


def quality_tables(results: list[CaseResult], settings: Settings) -> str:
    lines = []
    for n_index, sigma in enumerate(settings.noise_sigmas):
        rows = [r for r in results if r.noise_index == n_index]
        by_method = defaultdict(list)
        for r in rows:
            by_method[r.method].append(r)
        n_cases = len(by_method["blurred"])
        # Which restoring method has the best PSNR in each case (blurred input excluded).
        wins = Counter()
        cases = defaultdict(dict)
        for r in rows:
            if r.method in METHODS and r.method != "blurred":
                cases[(r.image, r.kernel)][r.method] = r.psnr
        for scores in cases.values():
            wins[max(scores, key=scores.get)] += 1
        lines += [
            f"### Noise sigma {sigma * 255:.2f}/255 ({n_cases} cases: "
            f"{len(settings.images)} images x {len(settings.kernels)} kernels)",
            "",
            "| method | mean PSNR (dB) | mean SSIM | worst PSNR (dB) | worst case | best PSNR in |",
            "|---|---:|---:|---:|---|---:|",
        ]
        for method, label in METHODS.items():
            rs = by_method[method]
            worst = min(rs, key=lambda r: r.psnr)
            best_in = "-" if method == "blurred" else f"{wins[method]}/{n_cases}"
            lines.append(
                f"| {label} | {np.mean([r.psnr for r in rs]):.2f} | "
                f"{np.mean([r.ssim for r in rs]):.4f} | {worst.psnr:.2f} | "
                f"{worst.image}, k{worst.kernel} | {best_in} |"
            )
        lines.append("")
        for method, what in (("wiener_best", "Oracle SNR picks"), ("rl_best", "Oracle RL iteration picks")):
            counts = Counter(r.choice for r in by_method[method])
            ordered = sorted(counts.items(), key=lambda kv: float(kv[0].split()[0]))
            lines.append(f"{what}: " + ", ".join(f"{c}: {n}" for c, n in ordered))
            lines.append("")
    return "\n".join(lines)


def ringing_table(results: list[CaseResult], settings: Settings) -> str:
    lines = [
        "### Frame ringing: PSNR in the frame band (width = kernel size) vs the interior",
        "",
        "Outputs clipped to [0, 1]; mean over all cases of each noise level. A method that rings at "
        "the frame loses many dB in the band; the blurred input shows the band/interior gap that "
        "comes from the content alone.",
        "",
        "| noise | method | band PSNR (dB) | interior PSNR (dB) | band - interior (dB) |",
        "|---|---|---:|---:|---:|",
    ]
    labels = {**METHODS, PERIODIC_REFERENCE: PERIODIC_LABEL}
    for n_index, sigma in enumerate(settings.noise_sigmas):
        for method, label in labels.items():
            rs = [r for r in results if r.noise_index == n_index and r.method == method]
            band = np.mean([r.band_psnr for r in rs])
            interior = np.mean([r.interior_psnr for r in rs])
            lines.append(
                f"| {sigma * 255:.2f}/255 | {label} | {band:.2f} | {interior:.2f} | {band - interior:+.2f} |"
            )
    lines.append("")
    return "\n".join(lines)


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def speed_section(engine, kernels, repeats: dict[str, int]) -> str:
    from skimage.restoration import richardson_lucy, wiener

    k_index = int(np.argmax([k.shape[0] for k in kernels]))
    kernel = kernels[k_index].astype(np.float32)
    blurred, _ = ed.blur_real_boundary(ed.load_eval_image("retina"), kernels[k_index], (1024, 1024))
    observed = ed.add_gaussian_noise(blurred, 2.55 / 255, ed.case_rng("speed")).astype(np.float32)
    balance = 10.0 ** (-FIXED_SNR_DB / 10.0)

    engine.wiener_deconvolve(observed, kernel, snr_db=FIXED_SNR_DB)  # warm-up (torch start)
    t_ours = _median_time(
        lambda: engine.wiener_deconvolve(observed, kernel, snr_db=FIXED_SNR_DB), repeats["wiener"]
    )
    t_stack = _median_time(lambda: engine.wiener_deconvolve_snr_stack(observed, kernel), repeats["wiener"])
    t_skw = _median_time(lambda: wiener(observed, kernel, balance), repeats["wiener"])
    t_rl = _median_time(
        lambda: richardson_lucy(observed.clip(0, None), kernel, num_iter=30, clip=False), repeats["rl"]
    )
    import torch

    return "\n".join(
        [
            f"### Speed: 1024x1024 grayscale (retina luminance, blurred), Levin kernel {k_index + 1} "
            f"({kernel.shape[0]}x{kernel.shape[1]}), CPU, torch threads {torch.get_num_threads()}",
            "",
            f"Median of {repeats['wiener']} runs ({repeats['rl']} for Richardson-Lucy), after one warm-up "
            "call. Ratios only (absolute CPU times do not carry over between machines). "
            "> 1 means `wiener_deconvolve` is faster.",
            "",
            "| comparison | time ratio (other / ours) |",
            "|---|---:|",
            f"| `skimage.restoration.wiener` (periodic, no boundary handling) / `wiener_deconvolve` | {t_skw / t_ours:.2f} |",
            f"| `skimage.restoration.richardson_lucy(num_iter=30)` / `wiener_deconvolve` | {t_rl / t_ours:.2f} |",
            f"| `skimage.restoration.richardson_lucy(num_iter=30)` / `wiener_deconvolve_snr_stack` (15 SNRs) | {t_rl / t_stack:.2f} |",
            "",
        ]
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny subset (2 images, 2 kernels, fewer speed repeats) for smoke testing",
    )
    parser.add_argument(
        "--max-size",
        type=int,
        default=512,
        help="largest output side in pixels; images are centre-cropped (default 512)",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS_DIR,
        help=f"where the .md and .csv go (default {RESULTS_DIR})",
    )
    parser.add_argument("--no-speed", action="store_true", help="skip the speed section")
    parser.add_argument(
        "--kernels",
        choices=sorted(KERNEL_SETS),
        default="levin",
        help="kernel set: Levin 2009 (8 camera-shake kernels, default) or the 12 "
        "USRNet kernels (Gaussian, anisotropic Gaussian, motion)",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    command = ed.command_line("benchmarks/wiener_classical.py", argv)
    from napari_deblur import engine

    load_kernels, kernel_label, stem_suffix = KERNEL_SETS[args.kernels]
    kernels = load_kernels()
    margin = max(k.shape[0] for k in kernels) // 2  # room for every kernel's real-boundary context
    settings = Settings(
        images=list(ed.EVAL_IMAGES[:2] if args.quick else ed.EVAL_IMAGES),
        kernels=[0, 3] if args.quick else list(range(len(kernels))),
        noise_sigmas=list(ed.WIENER_NET_NOISE_SIGMAS),
        max_size=args.max_size,
        margin=margin,
        speed_repeats={"wiener": 3, "rl": 1} if args.quick else {"wiener": 7, "rl": 3},
    )
    header = [
        f"Command: `{command}`",
        "",
        ed.environment_line(),
        "",
        f"Protocol 3 of shared/eval/README.md, classical methods. Images: {', '.join(settings.images)} "
        f"(grayscale [0, 1], centre crop of at most {args.max_size} px per side, leaving {margin} px "
        f"for the real-boundary context). Kernels: {kernel_label} #{', #'.join(str(i + 1) for i in settings.kernels)}. "
        "Noise: Gaussian, not clipped. Outputs clipped to [0, 1]; PSNR/SSIM exclude a border as wide "
        f"as the kernel. Fixed-SNR Wiener: {FIXED_SNR_DB:g} dB (engine default, not tuned). "
        "Oracles pick by PSNR per image.",
        "",
    ]
    print("\n".join(header), flush=True)

    results: list[CaseResult] = []
    t_start = time.perf_counter()
    for image_name in settings.images:
        source = ed.load_eval_image(image_name)
        out_shape = ed.eval_crop_shape(source.shape, args.max_size, margin)
        for k_index in settings.kernels:
            for n_index, sigma in enumerate(settings.noise_sigmas):
                results += run_case(
                    engine, image_name, k_index, kernels[k_index], n_index, sigma, source, out_shape
                )
            log.info(
                "%s %s kernel %d done (%.0f s)",
                image_name,
                out_shape,
                k_index + 1,
                time.perf_counter() - t_start,
            )

    sections = [quality_tables(results, settings), ringing_table(results, settings)]
    for section in sections:
        print(section, flush=True)
    if not args.no_speed:
        log.info("timing ...")
        sections.append(speed_section(engine, kernels, settings.speed_repeats))
        print(sections[-1], flush=True)

    args.results_dir.mkdir(parents=True, exist_ok=True)
    stem = "wiener_classical" + stem_suffix + ("_quick" if args.quick else "")
    md_path = args.results_dir / f"{stem}.md"
    md_path.write_text(
        "# Wiener deconvolution vs classical baselines (protocol 3)\n\n"
        + "\n".join(header)
        + "\n"
        + "\n".join(sections)
    )
    csv_path = args.results_dir / f"{stem}.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        names = list(CaseResult.__dataclass_fields__)
        writer.writerow(names)
        for r in results:
            writer.writerow(
                [f"{v:.6g}" if isinstance(v, float) else v for v in (getattr(r, n) for n in names)]
            )
    print(f"Wrote {md_path} and {csv_path} ({time.perf_counter() - t_start:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
