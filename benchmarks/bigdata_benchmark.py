"""Big data: a zarr stack larger than 4 GB processed end to end by ``napari-deblur run``, with peak memory.

Usage::

    python benchmarks/bigdata_benchmark.py [--planes 256] [--size 2048] [--scaling-planes 24]
                                           [--workdir /tmp/napari-deblur-bigdata] [--keep]

1. Writes a float32 zarr stack of ``planes x size x size`` (default 256 x 2048 x
   2048 = 4.3 GB uncompressed; every plane an eval-split image, blurred once,
   shifted and with its own noise, so nothing compresses away).
2. Runs ``napari-deblur run gwis --blur 2`` and ``napari-deblur run blur-map`` on
   it, zarr to zarr, as a user would (a subprocess); samples the resident
   memory of the process and all its children every 0.1 s (peak = largest sum).
3. Scaling: the first ``--scaling-planes`` planes with ``--workers 1`` and
   ``--workers 2`` (dask.distributed worker processes, 1 thread each) and with
   the default (dask threads in one process).

Megapixels per second = pixels processed / wall time of the command (start-up
and model loading included). Writes ``benchmarks/results/bigdata.md``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_data as ed

RESULTS = Path(__file__).resolve().parent / "results" / "bigdata.md"
SOURCE_IMAGE = "retina"
BLUR_SIGMA = 2.0
NOISE_STD = 0.01


def write_stack(path: Path, planes: int, size: int) -> float:
    """The benchmark stack as zarr (one plane per chunk); returns its uncompressed size in GB."""
    import zarr
    from scipy import ndimage
    from skimage.transform import resize

    base = resize(ed.load_eval_image(SOURCE_IMAGE), (size, size), order=1, anti_aliasing=True)
    base = ndimage.gaussian_filter(base, BLUR_SIGMA, mode="reflect").astype(np.float32)
    stack = zarr.open_array(
        str(path), mode="w", shape=(planes, size, size), dtype="float32", chunks=(1, size, size)
    )
    rng = np.random.default_rng(0)
    for index in range(planes):
        shift = rng.integers(0, size, 2)
        plane = np.roll(base, tuple(int(s) for s in shift), axis=(0, 1))
        plane = plane + rng.normal(0, NOISE_STD, plane.shape).astype(np.float32)
        stack[index] = plane
    return planes * size * size * 4 / 1e9


def measured_run(argv: list[str]) -> tuple[float, float]:
    """Run ``napari-deblur`` with ``argv``; returns (wall seconds, peak resident GB of its process tree)."""
    import psutil

    command = [sys.executable, "-m", "napari_deblur.cli", *argv]
    print("$", " ".join(["napari-deblur", *argv]), flush=True)
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    watched = psutil.Process(process.pid)
    peak = 0
    while process.poll() is None:
        try:
            tree = [watched, *watched.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.1)
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"napari-deblur {' '.join(argv)} failed with status {process.returncode}")
    return seconds, peak / 1e9


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--planes", type=int, default=256)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--scaling-planes", type=int, default=24)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/napari-deblur-bigdata"))
    parser.add_argument("--keep", action="store_true", help="keep the generated stacks")
    parser.add_argument(
        "--scaling-only", action="store_true", help="only the scaling runs (results: bigdata_scaling.md)"
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    command = ed.command_line("benchmarks/bigdata_benchmark.py", argv)

    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    stack = args.workdir / "stack.zarr"
    if not args.scaling_only:
        t0 = time.perf_counter()
        gigabytes = write_stack(stack, args.planes, args.size)
        print(f"wrote {stack}: {gigabytes:.2f} GB in {time.perf_counter() - t0:.0f} s", flush=True)
    small = args.workdir / "first.zarr"
    write_stack(small, args.scaling_planes, args.size)
    megapixels = args.planes * args.size * args.size / 1e6
    small_megapixels = args.scaling_planes * args.size * args.size / 1e6

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    rows = []
    for method, extra in () if args.scaling_only else (("gwis", ["--blur", "2"]), ("blur-map", [])):
        out = args.workdir / f"out-{method}"
        seconds, peak = measured_run(["run", method, *extra, str(stack), "-o", str(out)])
        rows.append(
            (
                method,
                " ".join(extra) or "-",
                f"{args.planes} x {args.size}^2",
                f"{gigabytes:.2f}",
                seconds,
                megapixels / seconds,
                peak,
            )
        )
        shutil.rmtree(out, ignore_errors=True)
    scaling = []
    for label, cluster in (
        ("dask threads, one process (default)", []),
        ("1 worker process (--workers 1)", ["--workers", "1"]),
        ("2 worker processes (--workers 2)", ["--workers", "2"]),
    ):
        out = args.workdir / "out-scaling"
        seconds, peak = measured_run(["run", "gwis", "--blur", "2", *cluster, str(small), "-o", str(out)])
        scaling.append((label, seconds, small_megapixels / seconds, peak))
        shutil.rmtree(out, ignore_errors=True)
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)

    lines = [
        "# Big data: zarr stack larger than the memory budget, end to end",
        "",
        f"Command: `{command}`",
        "",
        ed.environment_line(),
        "",
        f"Machine: {os.cpu_count()} CPUs, load average at the start {load}; no GPU. Input: float32 zarr, "
        f"one {args.size}x{args.size} plane per chunk ({SOURCE_IMAGE} from the eval split, Gaussian blur "
        f"{BLUR_SIGMA:g} px, shifted, noise {NOISE_STD:g}). Output: zarr. Wall time includes start-up and "
        "model loading; peak memory is the largest sum of resident memory over the command's process "
        "and its children (sampled every 0.1 s).",
        "",
        "| method | options | stack | size (GB) | wall time (s) | throughput (MP/s) | peak memory (GB) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {m} | `{o}` | {s} | {g} | {t:.0f} | {r:.2f} | {p:.2f} |" for m, o, s, g, t, r, p in rows]
    if args.scaling_only:
        lines = lines[:-2] + ["Scaling only (`--scaling-only`); the full-stack runs are in bigdata.md."]
    lines += [
        "",
        f"Scaling, GWIS `--blur 2` on the first {args.scaling_planes} planes ({small_megapixels:.0f} MP):",
        "",
        "| how | wall time (s) | throughput (MP/s) | speed-up over 1 worker | peak memory (GB) |",
        "|---|---:|---:|---:|---:|",
    ]
    one_worker = scaling[1][1]
    lines += [
        f"| {label} | {t:.0f} | {r:.2f} | {one_worker / t:.2f} | {p:.2f} |" for label, t, r, p in scaling
    ]
    if args.scaling_only and args.results == RESULTS:
        args.results = RESULTS.with_name("bigdata_scaling.md")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"Wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
