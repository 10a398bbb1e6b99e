"""Protocol 3 (Wiener-net report): Wiener-net against the tuned classical methods, plus speed.

Run from the repository root, after the classical benchmark of both kernel sets::

    python benchmarks/wiener_classical.py                            # Levin kernels
    python benchmarks/wiener_classical.py --kernels usrnet --no-speed
    python benchmarks/wiener_net_benchmark.py                        # this script
    python benchmarks/wiener_net_benchmark.py --quick                # 2 images x 2 kernels
    python benchmarks/wiener_net_benchmark.py --kernel-sets          # speed only (wiener_net_speed.md)
    python benchmarks/wiener_net_benchmark.py --ensemble 8           # 8 network passes (*_ensemble8.*)

The cases (eval-split images, centre crops of at most 512 px, real-boundary
blur, Gaussian noise sigma 2.55/255 and 7.65/255, seeds per case) are those of
``wiener_classical.py``, rebuilt by the same code. The classical methods'
per-case scores are read from its CSV files (``results/wiener_classical.csv``
and ``results/wiener_classical_usrnet.csv``: Richardson-Lucy at 100
iterations makes them the slow part), and every case is checked: the blurred
input's PSNR recomputed here must equal the CSV's to 1e-3 dB, or the script
stops. Wiener-net (:func:`napari_deblur.engine.wiener_net_deconvolve`, the
shipped weights) is run here on every case and scored the same way (output
clipped to [0, 1], border as wide as the kernel excluded).

Bars of the issue: Wiener-net's mean PSNR at least 2 dB above the better of
the two oracle-tuned classical methods (Wiener best of 15 SNRs,
Richardson-Lucy best of 10/30/100 iterations) at both noise levels, and no
case where it scores below the better of the two.

Speed (protocol 5): ``wiener_net_deconvolve`` on a 1024x1024 grayscale image
against ``skimage.restoration.richardson_lucy(num_iter=30)``, same image and
kernel, timed in this run (median of repeats), as a ratio.

Results: ``results/wiener_net.md`` and ``results/wiener_net.csv`` (``--quick``:
``wiener_net_quick.*``).
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import eval_data as ed  # noqa: E402
import wiener_classical as wc  # noqa: E402

log = logging.getLogger("wiener_net_benchmark")

CLASSICAL = {
    "blurred": "Blurred input",
    "wiener_fixed": wc.METHODS["wiener_fixed"],
    "wiener_best": wc.METHODS["wiener_best"],
    "rl_best": wc.METHODS["rl_best"],
}
TUNED = ("wiener_best", "rl_best")
NET = "wiener_net"
NET_LABEL = "**Wiener-net (ours)**"
BAR_DB = 2.0


def read_classical(path: Path) -> dict[tuple[str, int, int], dict[str, float]]:
    """(image, kernel number, noise index) -> {method: psnr, method + "_ssim": ssim}."""
    if not path.exists():
        raise SystemExit(f"{path} is missing: run benchmarks/wiener_classical.py first (see --help).")
    cases: dict = defaultdict(dict)
    with path.open() as f:
        for row in csv.DictReader(f):
            key = (row["image"], int(row["kernel"]), int(row["noise_index"]))
            cases[key][row["method"]] = float(row["psnr"])
            cases[key][row["method"] + "_ssim"] = float(row["ssim"])
    return cases


def ensemble_option(args) -> dict:
    """``{"ensemble": N}`` when ``--ensemble`` was given, else nothing (the engine's default)."""
    return {} if args.ensemble is None else {"ensemble": args.ensemble}


def run_set(engine, set_name: str, args) -> tuple[list[dict], str]:
    load_kernels, label, suffix = wc.KERNEL_SETS[set_name]
    kernels = load_kernels()
    classical = read_classical(args.results_dir / f"wiener_classical{suffix}.csv")
    margin = max(k.shape[0] for k in kernels) // 2
    images = list(ed.EVAL_IMAGES[:2] if args.quick else ed.EVAL_IMAGES)
    kernel_indices = [0, 3] if args.quick else list(range(len(kernels)))
    rows = []
    started = time.perf_counter()
    for image_name in images:
        source = ed.load_eval_image(image_name)
        out_shape = ed.eval_crop_shape(source.shape, args.max_size, margin)
        for k_index in kernel_indices:
            kernel = kernels[k_index]
            border = max(kernel.shape)
            for n_index, sigma in enumerate(ed.WIENER_NET_NOISE_SIGMAS):
                blurred, sharp = ed.blur_real_boundary(source, kernel, out_shape)
                observed = ed.add_gaussian_noise(
                    blurred, sigma, ed.case_rng(image_name, k_index, n_index)
                ).astype(np.float32)
                known = classical[(image_name, k_index + 1, n_index)]
                check = ed.psnr_excluding_border(np.clip(observed, 0, 1), sharp, border)
                if abs(check - known["blurred"]) > 1e-3:
                    raise SystemExit(
                        f"case {image_name} k{k_index + 1} noise {n_index}: blurred PSNR {check:.4f} "
                        f"here but {known['blurred']:.4f} in the classical CSV; rerun "
                        "wiener_classical.py with the same --max-size"
                    )
                restored = engine.wiener_net_deconvolve(
                    observed, kernel.astype(np.float32), **ensemble_option(args)
                )
                net_psnr, net_ssim = wc.score(restored, sharp, border)[:2]
                row = {
                    "kernels": set_name,
                    "image": image_name,
                    "kernel": k_index + 1,
                    "noise_index": n_index,
                    "noise_sigma": sigma,
                    **{m: known[m] for m in CLASSICAL},
                    NET: net_psnr,
                    **{m + "_ssim": known[m + "_ssim"] for m in CLASSICAL},
                    NET + "_ssim": net_ssim,
                }
                rows.append(row)
            log.info(
                "%s %s k%d done (%.0f s)", set_name, image_name, k_index + 1, time.perf_counter() - started
            )
    return rows, label


def tables(rows: list[dict], label: str) -> str:
    lines = []
    for n_index, sigma in enumerate(ed.WIENER_NET_NOISE_SIGMAS):
        rs = [r for r in rows if r["noise_index"] == n_index]
        if not rs:
            continue
        lines += [
            f"### {label}, noise sigma {sigma * 255:.2f}/255 ({len(rs)} cases)",
            "",
            "| method | mean PSNR (dB) | mean SSIM | worst PSNR (dB) | worst case |",
            "|---|---:|---:|---:|---|",
        ]
        for method, name in [*CLASSICAL.items(), (NET, NET_LABEL)]:
            values = [r[method] for r in rs]
            worst = rs[int(np.argmin(values))]
            lines.append(
                f"| {name} | {np.mean(values):.2f} | "
                f"{np.mean([r[method + '_ssim'] for r in rs]):.4f} | {min(values):.2f} | "
                f"{worst['image']}, k{worst['kernel']} |"
            )
        better_mean = max(np.mean([r[m] for r in rs]) for m in TUNED)
        net_mean = np.mean([r[NET] for r in rs])
        per_case = [r[NET] - max(r[m] for m in TUNED) for r in rs]
        losses = sum(d < 0 for d in per_case)
        lines += [
            "",
            f"Wiener-net minus the better tuned classical method: **{net_mean - better_mean:+.2f} dB** "
            f"on the mean (bar: +{BAR_DB:g}; {'met' if net_mean - better_mean >= BAR_DB else 'NOT met'}); "
            f"per case against the better of the two: min {min(per_case):+.2f} dB, median "
            f"{np.median(per_case):+.2f} dB, cases lost **{losses}/{len(rs)}** "
            f"(bar: 0; {'met' if losses == 0 else 'NOT met'}).",
            "",
        ]
    return "\n".join(lines)


def speed_section(engine, repeats: int, options: dict) -> str:
    import torch
    from skimage.restoration import richardson_lucy

    from napari_deblur.engine.core import cpu_memory, devices

    kernels = ed.load_levin_kernels()
    k_index = int(np.argmax([k.shape[0] for k in kernels]))
    kernel = kernels[k_index].astype(np.float32)
    blurred, _ = ed.blur_real_boundary(ed.load_eval_image("retina"), kernels[k_index], (1024, 1024))
    observed = ed.add_gaussian_noise(blurred, 2.55 / 255, ed.case_rng("speed")).astype(np.float32)
    default_threads = torch.get_num_threads()
    engine.wiener_net_deconvolve(observed, kernel, **options)  # warm-up: weights, torch start
    load = os.getloadavg()
    rows, rl_medians = [], []
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        t_net, t_rl = [], []
        for _ in range(repeats):  # interleaved, so load changes hit both alike
            t0 = time.perf_counter()
            engine.wiener_net_deconvolve(observed, kernel, **options)
            t_net.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            richardson_lucy(observed.clip(0, None), kernel, num_iter=30, clip=False)
            t_rl.append(time.perf_counter() - t0)
        rl_medians.append(float(np.median(t_rl)))
        ratio = float(np.median(t_net) / np.median(t_rl))
        rows.append(
            f"| `wiener_net_deconvolve`, torch threads {threads} / `richardson_lucy(num_iter=30)` "
            f"| {np.median(t_net):.2f} | {np.median(t_rl):.2f} | {ratio:.2f} "
            f"| <= 1.0 ({'met' if ratio <= 1.0 else 'NOT met'}) |"
        )
    # One thread with float32 convolutions, where the engine would use bfloat16: what the CPU's
    # native bfloat16 buys (the same RL(30) median as the one-thread row).
    torch.set_num_threads(1)
    bfloat16 = devices.cpu_bfloat16_is_fast(torch.device("cpu"))
    if bfloat16:
        os.environ[devices.CPU_BFLOAT16_OPT_OUT] = "1"
        t_float32 = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            engine.wiener_net_deconvolve(observed, kernel, **options)
            t_float32.append(time.perf_counter() - t0)
        del os.environ[devices.CPU_BFLOAT16_OPT_OUT]
        rows.append(
            f"| the same, torch threads 1, float32 convolutions "
            f"(`{devices.CPU_BFLOAT16_OPT_OUT}=1`) / RL(30) median above "
            f"| {np.median(t_float32):.2f} | {rl_medians[0]:.2f} "
            f"| {np.median(t_float32) / rl_medians[0]:.2f} | (not the bar's measure) |"
        )
    # One call after the session idled long enough for the engine to give its free memory
    # back to the system: it faults its whole working set in again.
    time.sleep(cpu_memory.IDLE_SECONDS + 1.0)
    t0 = time.perf_counter()
    engine.wiener_net_deconvolve(observed, kernel, **options)
    t_idle = time.perf_counter() - t0
    torch.set_num_threads(default_threads)
    rows.append(
        f"| the same, torch threads 1, one call after {cpu_memory.IDLE_SECONDS + 1.0:.0f} s idle "
        f"/ RL(30) median above | {t_idle:.2f} | {rl_medians[0]:.2f} | {t_idle / rl_medians[0]:.2f} "
        "| (not the bar's measure) |"
    )
    return "\n".join(
        [
            f"### Speed: 1024x1024 grayscale (retina luminance, blurred), Levin kernel {k_index + 1} "
            f"({kernel.shape[0]}x{kernel.shape[1]}), CPU",
            "",
            f"Median of {repeats} interleaved runs after one warm-up call, for one torch thread and "
            f"for torch's default ({default_threads}); Richardson-Lucy (scikit-image) is single-threaded "
            "either way. Absolute CPU times do not carry over between machines; the ratio is the "
            "measure. Load average before timing: "
            f"{', '.join(f'{v:.1f}' for v in load)} on {os.cpu_count()} CPUs. The last row is one "
            "call after the engine has given its free memory back to the system (it does so "
            f"{cpu_memory.IDLE_SECONDS:.0f} s after the last job; `napari_deblur/engine/cpu_memory.py`). "
            + (
                "This CPU has native bfloat16, so the network's convolutions ran in bfloat16 "
                "(`devices.cpu_bfloat16_is_fast`); the float32 row is the same call with it turned off."
                if bfloat16
                else "The network ran in float32 (this CPU lacks native bfloat16, or "
                f"`{devices.CPU_BFLOAT16_OPT_OUT}` is set)."
            ),
            "",
            "| comparison | Wiener-net (s) | RL(30) (s) | time ratio | bar |",
            "|---|---:|---:|---:|---:|",
            *rows,
            "",
        ]
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="2 images x 2 kernels per set")
    parser.add_argument("--max-size", type=int, default=512, help="as in wiener_classical.py")
    parser.add_argument("--results-dir", type=Path, default=wc.RESULTS_DIR)
    parser.add_argument(
        "--kernel-sets", nargs="*", default=["levin", "usrnet"], choices=sorted(wc.KERNEL_SETS)
    )
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument(
        "--ensemble",
        type=int,
        metavar="N",
        help="network passes (views) for wiener_net_deconvolve (default: the engine's)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    from napari_deblur import engine
    from napari_deblur.engine.methods.wiener_net import DEFAULT_ENSEMBLE

    passes = DEFAULT_ENSEMBLE if args.ensemble is None else args.ensemble
    command = ed.command_line("benchmarks/wiener_net_benchmark.py", argv)
    header = [
        f"Command: `{command}`",
        "",
        ed.environment_line(),
        "",
        "Protocol 3 of shared/eval/README.md. Eval images camera, text, cell, hubble_deep_field, "
        f"retina, rocket, brick (grayscale [0, 1], centre crops of at most {args.max_size} px), "
        "real-boundary blur, Gaussian noise (not clipped), seeds per case. Classical scores from "
        "`wiener_classical.py`'s per-case CSVs (the same cases, checked case by case); Wiener-net run "
        f"here with the shipped weights and {passes} network pass{'es' if passes > 1 else ''} "
        f"(`ensemble={passes}`{', the default' if args.ensemble is None else ''}). "
        "Outputs clipped to [0, 1]; PSNR/SSIM exclude a border as "
        "wide as the kernel. The oracles pick their parameter per image by PSNR against the "
        "sharp image; Wiener-net has no parameter.",
        "",
    ]
    print("\n".join(header), flush=True)
    sections, all_rows = [], []
    for set_name in args.kernel_sets:
        rows, label = run_set(engine, set_name, args)
        all_rows += rows
        sections.append(tables(rows, label))
        print(sections[-1], flush=True)
    if not args.no_speed:
        sections.append(speed_section(engine, 1 if args.quick else 3, ensemble_option(args)))
        print(sections[-1], flush=True)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stem = "wiener_net_quick" if args.quick else "wiener_net"
    if not args.kernel_sets:  # `--kernel-sets` with no set: a speed-only run
        stem = "wiener_net_speed"
    if args.ensemble is not None:
        stem += f"_ensemble{args.ensemble}"
    md_path = args.results_dir / f"{stem}.md"
    md_path.write_text(
        "# Wiener-net vs tuned classical deconvolution (protocol 3)\n\n"
        + "\n".join(header)
        + "\n"
        + "\n".join(sections)
    )
    if not all_rows:
        print(f"Wrote {md_path}")
        return 0
    csv_path = args.results_dir / f"{stem}.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(all_rows[0]))
        writer.writeheader()
        for row in all_rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    print(f"Wrote {md_path} and {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
