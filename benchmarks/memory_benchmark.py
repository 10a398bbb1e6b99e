"""Peak memory and time of every engine method on 1, 16 and 64 megapixel planes (CPU).

Each method x size runs in a fresh Python process, so one run's heap does not
pad the next one's peak. The child builds a float32 grayscale plane (the
camera image tiled to size, blurred by a 15 px motion kernel, noise 0.01),
records its resident set size (``VmRSS``) just before the call as the
baseline (Python, torch, the model and the input plane), runs the method
once and reads the process's peak (``VmHWM``, which starts afresh in each
process, unlike ``ru_maxrss``). The table gives the peak,
the peak minus the baseline (what the method allocates), that increment in
float32 planes of the input's size, and the wall time.

Usage::

    python benchmarks/memory_benchmark.py                      # every method at 1, 16, 64 MP
    python benchmarks/memory_benchmark.py --sizes 1024 4096    # skip 64 MP
    python benchmarks/memory_benchmark.py --methods wiener-net wiener --threads 2
    python benchmarks/memory_benchmark.py --methods defocus defocus-8px --output benchmarks/results/memory_defocus.md

Writes the markdown table to stdout and to ``benchmarks/results/memory.md``
(``--output``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_data as ed  # noqa: E402

METHODS = (
    "wiener",
    "wiener-net",
    "gwis",
    "gwis-auto",
    "blur-map",
    "blind-psf",
    "regions",
    "defocus",
    "defocus-8px",
)
SIZES = (1024, 4096, 8192)
RESULTS = Path(__file__).resolve().parent / "results" / "memory.md"


def _cpu_name() -> str:
    """The CPU's model name and the cores this process may use."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            name = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {len(os.sched_getaffinity(0))} cores"


def _plane(side: int):
    import numpy as np
    import torch
    from skimage import data

    from napari_deblur.engine import random_motion_psf
    from napari_deblur.engine.physics.convolution import convolve_planes

    tile = data.camera().astype(np.float32) / 255.0
    reps = -(-side // tile.shape[0])
    sharp = np.tile(tile, (reps, reps))[:side, :side]
    kernel = random_motion_psf(15, rng=3)
    planes = torch.from_numpy(np.ascontiguousarray(sharp))[None, None]
    blurred = np.empty((side, side), np.float32)
    step = 1024  # blurred in strips so that building the input adds little to the peak
    halo = kernel.shape[0]
    weights = torch.from_numpy(kernel.astype(np.float32))[None]
    for top in range(0, side, step):
        y0, y1 = max(top - halo, 0), min(top + step + halo, side)
        strip = convolve_planes(planes[..., y0:y1, :], weights)[0, 0]
        blurred[top : top + step] = strip[top - y0 : top - y0 + min(step, side - top)].numpy()
    del planes, sharp
    rng = np.random.default_rng(0)
    for top in range(0, side, step):
        blurred[top : top + step] += rng.standard_normal(blurred[top : top + step].shape, np.float32) * 0.01
    return blurred, kernel


def _child(method: str, side: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from napari_deblur import engine
    from napari_deblur.engine.methods.wiener_net import load_wiener_net

    image, kernel = _plane(side)
    device = engine.select_device("cpu")
    if method == "wiener-net":
        load_wiener_net(device)
    calls = {
        "wiener": lambda: engine.wiener_deconvolve(image, kernel, device="cpu"),
        "wiener-net": lambda: engine.wiener_net_deconvolve(image, kernel, device="cpu"),
        "gwis": lambda: engine.sharpen_gwis(image, 3.0, device="cpu"),
        "gwis-auto": lambda: engine.sharpen_gwis(image, "auto", device="cpu"),
        "blur-map": lambda: engine.estimate_blur_map(image, device="cpu"),
        "blind-psf": lambda: engine.estimate_psf(image, size=25, device="cpu"),
        "regions": lambda: engine.select_regions(image, device="cpu"),
        "defocus": lambda: engine.deblur_defocus(image, device="cpu"),  # the map estimated too
        "defocus-8px": lambda: engine.deblur_defocus(image, 8.0, device="cpu"),  # the widest kernels
    }
    baseline = ed.process_memory_bytes("VmRSS")
    start = time.perf_counter()
    error = ""
    try:
        calls[method]()
    except Exception as exc:  # reported in the table
        error = f"{type(exc).__name__}: {str(exc)[:120]}"
    seconds = time.perf_counter() - start
    peak = ed.process_memory_bytes("VmHWM")
    return {
        "method": method,
        "side": side,
        "baseline": baseline,
        "peak": peak,
        "seconds": seconds,
        "error": error,
    }


def _run(method: str, side: int, threads: int, timeout: float) -> dict:
    command = [sys.executable, __file__, "--child", method, str(side), "--threads", str(threads)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"method": method, "side": side, "error": f"over {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        tail = (done.stderr.strip().splitlines() or ["?"])[-1]
        return {"method": method, "side": side, "error": f"exit {done.returncode}: {tail[:120]}"}
    return json.loads(lines[-1])


def _row(result: dict) -> str:
    side = result["side"]
    size = f"{side} x {side} ({side * side / 2**20:.0f} MP)"
    if "peak" not in result:
        return f"| {result['method']} | {size} | - | - | - | - | {result['error']} |"
    plane = side * side * 4
    extra = result["peak"] - result["baseline"]
    return (
        f"| {result['method']} | {size} | {result['peak'] / 2**30:.2f} | {extra / 2**30:.2f} | "
        f"{extra / plane:.1f} | {result['seconds']:.2f} | {result['error']} |"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="plane sides in px")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--threads", type=int, default=2, help="torch threads in each child")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per method and size")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "SIDE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child[0], int(args.child[1]), args.threads)), flush=True)
        return 0
    lines = [
        "# Peak memory per method (CPU)",
        "",
        f"`python benchmarks/memory_benchmark.py --sizes {' '.join(map(str, args.sizes))} "
        f"--methods {' '.join(args.methods)} --threads {args.threads}` on {_cpu_name()} "
        f"({platform.system()}), float32 grayscale planes, one fresh process "
        f"per row. *Peak*: the process's peak resident set size; *added*: peak minus the resident "
        f"size just before the call (Python, torch, the model and the input plane); *planes*: "
        f"*added* in float32 planes of the input's size.",
        "",
        "| method | plane | peak (GiB) | added (GiB) | planes | time (s) | note |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    print("\n".join(lines), flush=True)
    for method in args.methods:
        for side in args.sizes:
            row = _row(_run(method, side, args.threads, args.timeout))
            lines.append(row)
            print(row, flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
