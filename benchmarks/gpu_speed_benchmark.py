"""GPU speed (protocol 5's GPU bar): each engine entry point on a 4-megapixel plane, on CUDA.

    python benchmarks/gpu_speed_benchmark.py [--results-dir DIR] [--repeats 7] [--profile]

The bars of the blur-map, Wiener-net and GWIS issues ask for 4 MP in at most 100 ms
on a GPU. Each row times the public function end to end, numpy in and numpy
out (transfers, padding, tiling and the residual correction included), as a
script calls it: the median of ``--repeats`` calls after two warm-up calls (the
first loads the weights and lets cuDNN pick its kernels). The scene is
procedural (dead leaves, 2048 x 2048, blurred by a 31 px camera-shake PSF with
1 % noise): no eval data is needed on the GPU machine, and speed does not
depend on the content. ``--tile-sizes`` also times the tiled functions with
other tiles than the engine's (module constants patched for the run; by
default 1024 px, the CPU tiles, which the engine used on GPUs too before
``tiling.device_tile_size``), to show what the tiling costs.
``--profile`` prints the ten CUDA kernels that take the most time per function.
Needs a CUDA GPU; exits with status 2 without one.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # training.sources
SIDE = 2048
BAR_SECONDS = 0.100


def _scene(side: int) -> tuple[np.ndarray, np.ndarray]:
    from napari_deblur.engine import blur, random_motion_psf
    from training.sources import dead_leaves

    rng = np.random.default_rng(0)
    sharp = dead_leaves(side, rng)
    psf = random_motion_psf(31, np.random.default_rng(1))
    observed = blur(sharp, psf, device="cpu") + rng.normal(0, 0.01, sharp.shape)
    return observed.astype(np.float32), psf.astype(np.float32)


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn, repeats: int) -> list[float]:
    fn()
    fn()
    times = []
    for _ in range(repeats):
        _synchronize()
        start = time.perf_counter()
        fn()
        _synchronize()
        times.append(time.perf_counter() - start)
    return times


def _profile(fn) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        _synchronize()
    return prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=10, max_name_column_width=60)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--tile-sizes",
        type=int,
        nargs="*",
        default=[1024],
        help="extra tile sizes to time the tiled functions with",
    )
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--device", default="cuda", help="cuda (the bar); cpu only to try the script")
    parser.add_argument("--side", type=int, default=SIDE)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU: nothing to time", file=sys.stderr)
        return 2

    from napari_deblur import engine
    from napari_deblur.engine.core import tiling
    from napari_deblur.engine.methods import blur_map, gwis, wiener_net

    device = args.device
    observed, psf = _scene(args.side)
    level_map = engine.estimate_blur_map(observed, device=device)
    functions = {
        "estimate_blur_map(image)": lambda: engine.estimate_blur_map(observed, device=device),
        "wiener_net_deconvolve(image, psf)": lambda: engine.wiener_net_deconvolve(
            observed, psf, device=device
        ),
        "wiener_deconvolve(image, psf) (classical)": lambda: engine.wiener_deconvolve(
            observed, psf, device=device
        ),
        "sharpen_gwis(image, 2.0)": lambda: engine.sharpen_gwis(observed, 2.0, device=device),
        "sharpen_gwis(image, level_map)": lambda: engine.sharpen_gwis(observed, level_map, device=device),
        'sharpen_gwis(image, "auto")': lambda: engine.sharpen_gwis(observed, "auto", device=device),
    }
    tiled = {
        "estimate_blur_map(image)": blur_map,
        "wiener_net_deconvolve(image, psf)": wiener_net,
        "sharpen_gwis(image, 2.0)": gwis,
        "sharpen_gwis(image, level_map)": gwis,
    }
    rows, profiles = [], []
    for name, fn in functions.items():
        times = _timed(fn, args.repeats)
        median = statistics.median(times)
        module = tiled.get(name)
        default_tile = getattr(module, "TILE_SIZE", None)
        used = tiling.device_tile_size(default_tile, device) if default_tile else None
        rows.append((name, f"{used} (the engine's)" if used else "-", median, min(times)))
        if args.profile:
            profiles.append(f"#### {name}\n\n```\n{_profile(fn)}\n```\n")
        for tile in args.tile_sizes if module is not None else []:
            gpu_tile = tiling.GPU_TILE_SIZE
            module.TILE_SIZE = tiling.GPU_TILE_SIZE = tile
            try:
                times = _timed(fn, args.repeats)
            finally:
                module.TILE_SIZE, tiling.GPU_TILE_SIZE = default_tile, gpu_tile
            rows.append((name, str(tile), statistics.median(times), min(times)))

    device_name = torch.cuda.get_device_name() if device == "cuda" else device
    side = args.side
    lines = [
        f"# GPU speed: {side} x {side} grayscale ({side * side / 1e6:.1f} MP), {device_name}",
        "",
        f"Command: `python benchmarks/gpu_speed_benchmark.py {' '.join(argv or sys.argv[1:])}`; "
        f"torch {torch.__version__}. Median and fastest of {args.repeats} calls after two warm-ups, "
        "numpy in and numpy out. Bar: 4 MP in at most 100 ms.",
        "",
        "| function | tile size (px) | median (ms) | fastest (ms) | bar |",
        "|---|---|---:|---:|---:|",
    ]
    for name, tile, median, fastest in rows:
        verdict = "met" if median <= BAR_SECONDS else "NOT met"
        lines.append(f"| `{name}` | {tile} | {1000 * median:.0f} | {1000 * fastest:.0f} | {verdict} |")
    text = "\n".join(lines + [""] + profiles)
    print(text)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "gpu_speed.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
