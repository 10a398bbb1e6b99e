"""Speed of the whole blind loop on a 2 MP colour photo (protocol 5 style: a ratio to RL(30)).

Usage::

    python benchmarks/blind_deblur_speed.py [--side 1632x1224] [--repeats 1]

A 1632 x 1224 colour image (2.0 MP; scikit-image's ``chelsea`` photo resized, a
train-split image: speed does not depend on the content) is blurred by a
23 px camera shake plus 1 % noise. Timed in the same run, on the CPU:
:func:`napari_deblur.engine.deblur_blind` (estimate on the luminance, then
Wiener-net on the three channels; automatic kernel size) and
``skimage.restoration.richardson_lucy(num_iter=30)`` on each of the three
channels with the same kernel. Writes ``benchmarks/results/blind_deblur_speed.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_data as ed

RESULTS = Path(__file__).resolve().parent / "results" / "blind_deblur_speed.md"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", default="1632x1224", help="width x height of the photo (px)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.side.lower().split("x"))
    import torch
    from scipy.signal import fftconvolve
    from skimage import data, restoration, transform

    from napari_deblur.engine import deblur_blind, random_motion_psf

    photo = transform.resize(data.chelsea(), (height, width), anti_aliasing=True).astype(np.float32)
    kernel = random_motion_psf(23, rng=3).astype(np.float32)
    rng = np.random.default_rng(0)
    blurred = np.stack([fftconvolve(photo[..., c], kernel, mode="same") for c in range(3)], axis=-1)
    blurred = np.clip(blurred + rng.normal(0.0, 0.01, blurred.shape), 0.0, 1.0).astype(np.float32)

    ours, theirs = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = deblur_blind(blurred, device="cpu")
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        for c in range(3):
            restoration.richardson_lucy(blurred[..., c], result.psf, num_iter=30)
        theirs.append(time.perf_counter() - start)
    ours_s, theirs_s = min(ours), min(theirs)
    lines = [
        "# Blind deblurring speed (2 MP colour photo, CPU)",
        "",
        f"Command: `{ed.command_line('benchmarks/blind_deblur_speed.py', argv)}`",
        "",
        ed.environment_line() + f", torch threads {torch.get_num_threads()}",
        "",
        f"Photo {width} x {height} x 3 ({width * height / 1e6:.1f} MP), 23 px camera shake; "
        f"best of {args.repeats} run(s). Estimated kernel: {result.psf.shape[0]} px.",
        "",
        "| job | time (s) | ratio to RL(30) |",
        "|---|---:|---:|",
        f"| `deblur_blind` (estimate + Wiener-net, 3 channels) | {ours_s:.1f} | {ours_s / theirs_s:.2f} |",
        f"| scikit-image `richardson_lucy`, 30 iterations, 3 channels | {theirs_s:.1f} | 1.00 |",
        "",
    ]
    text = "\n".join(lines)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
