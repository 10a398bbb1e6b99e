"""Retrain the engine's learned models: ``python -m napari_deblur.engine.train MODEL [options]``.

Models: ``wiener-net``, ``blurmap`` (``--baseline``: the paper's network). Weights go
to the package's ``models/`` folder by default (the files the engine loads), with a
markdown training report beside them. Runs are seeded and reproducible on the same
machine and versions.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time
from dataclasses import asdict
from importlib import resources
from pathlib import Path


def _default_weights_path(filename: str) -> Path:
    return Path(str(resources.files("napari_deblur.engine").joinpath("models", filename)))


def _report(path: Path, title: str, command: str, config: dict, history: list[dict],
            seconds: float, notes: str) -> None:
    import torch

    lines = [
        f"# {title}: training report",
        "",
        f"Command: `{command}`",
        "",
        f"Python {platform.python_version()}, torch {torch.__version__}, {platform.machine()}, "
        f"device {config.get('device')}, {torch.get_num_threads()} CPU threads; "
        f"wall time {seconds / 60:.1f} min.",
        "",
        notes,
        "",
        "## Settings",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    lines += [f"| {key} | {value} |" for key, value in config.items() if key != "history"]
    lines += ["", "## Loss curve and validation (held-out crops of the train sources, other seed)", ""]
    if history:
        keys = list(history[0].keys())
        lines.append("| " + " | ".join(keys) + " |")
        lines.append("|" + "---:|" * len(keys))
        for entry in history:
            lines.append("| " + " | ".join(
                f"{entry[k]:.4f}" if isinstance(entry[k], float) else str(entry[k]) for k in keys) + " |")
    path.write_text("\n".join(lines) + "\n")


def _train_wiener_net(args) -> None:
    from .training.wiener_net import WienerNetTrainingConfig, train_wiener_net
    from .wiener_net import WEIGHTS_FILE

    config = WienerNetTrainingConfig(steps=args.steps, batch=args.batch, seed=args.seed,
                                     device=args.device, threads=args.threads)
    out = Path(args.out) if args.out else _default_weights_path(WEIGHTS_FILE)
    started = time.perf_counter()
    train_wiener_net(config, out)
    notes = (
        "Data: crops of the scikit-image train split (grayscale) and procedural dead-leaves "
        "images (30 %), random flips/turns and contrast; PSFs: 40 % camera shake (random "
        "trajectories), 20 % isotropic and 20 % anisotropic Gaussian, 10 % disk, 10 % ring, up to "
        "31 px; valid convolution (real boundaries); Gaussian noise sigma log-uniform in the range "
        "below, Poisson-Gaussian in `poisson_fraction` of the crops. Loss: L1 + 0.2 (1 - SSIM). "
        "Validation columns: mean PSNR (peak 1) of the network, of its base candidate (the Wiener "
        "filter at the estimated SNR) and of the blurred input."
    )
    _report(out.with_suffix(".md"), "Wiener-net", " ".join(["python -m napari_deblur.engine.train"]
            + sys.argv[1:]), asdict(config), config.history, time.perf_counter() - started, notes)


def _train_blur_map(args) -> None:
    from .blur_map import BASELINE_WEIGHTS_FILE, WEIGHTS_FILE
    from .training.blur_map import STACK_LEVELS, BlurMapTrainingConfig, train_blur_map

    config = BlurMapTrainingConfig(steps=args.steps, batch=args.batch, seed=args.seed,
                                   device=args.device, threads=args.threads, baseline=args.baseline,
                                   log_every=args.log_every)
    default = BASELINE_WEIGHTS_FILE if args.baseline else WEIGHTS_FILE
    out = Path(args.out) if args.out else _default_weights_path(default)
    started = time.perf_counter()
    train_blur_map(config, out)
    network = ("the paper's network (Nasonov, Krylov & Lyukov: 5x5x32, 5x5x32, 2x2 max-pool, "
               "11x11x64, 1x1x17, 1x1x1, ReLU), on random `baseline_patch` crops of each patch"
               if args.baseline else "BlurMapNet (napari_deblur.engine.blur_map)")
    notes = (
        f"Network: {network}. Data: crops of the scikit-image train split (grayscale; images at "
        "least twice the patch size at half resolution) and procedural dead-leaves images, random "
        "flips/turns and contrast. Blur: one kind per crop (Gaussian, disk, ring), a level map per "
        "crop (uniform, ramp, sinusoid, Voronoi regions, smooth random field; levels in [0, 6] px, "
        "half of the draws in [0, 3]), made from a level stack at "
        f"{', '.join(f'{v:g}' for v in STACK_LEVELS)} px (batched FFT) mixed per pixel with "
        "weights exact in squared level; labels = psf_blur_level of the mixed kernel. Noise: "
        "Gaussian variance U[0, 10] on 0..255, Poisson-Gaussian in `poisson_fraction` of the "
        "crops. Loss: L1 on log(1 + level / 0.5). Validation: fixed batches drawn with seed + 1000 "
        "(other crops of the same train sources, never the eval split); errors in px of the level "
        "(all pixels; textured = the half with the largest gradient; uniform vs spatially varying "
        "maps). `data_share` is the fraction of wall time spent making batches."
    )
    if config.stopped_at is not None:
        notes += (f" **Stopped by the user (Ctrl-C) at step {config.stopped_at} of {config.steps}**: "
                  "the learning-rate schedule did not run to its end; the last row is the state "
                  "that was saved.")
    title = "Blur map (paper's network, baseline)" if args.baseline else "Blur map"
    _report(out.with_suffix(".md"), title, " ".join(["python -m napari_deblur.engine.train"]
            + sys.argv[1:]), asdict(config), config.history, time.perf_counter() - started, notes)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m napari_deblur.engine.train", description=__doc__)
    sub = parser.add_subparsers(dest="model", required=True)
    wiener = sub.add_parser("wiener-net", help="train Wiener-net")
    wiener.add_argument("--steps", type=int, default=1600)
    wiener.add_argument("--batch", type=int, default=16)
    wiener.add_argument("--seed", type=int, default=0)
    wiener.add_argument("--device", default="cpu", help="cpu, cuda or mps")
    wiener.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    wiener.add_argument("--out", default=None, help="weights path (default: the shipped file)")
    wiener.set_defaults(run=_train_wiener_net)
    blurmap = sub.add_parser("blurmap", help="train the blur-map estimator")
    blurmap.add_argument("--steps", type=int, default=3000)
    blurmap.add_argument("--batch", type=int, default=16)
    blurmap.add_argument("--seed", type=int, default=0)
    blurmap.add_argument("--device", default="cpu", help="cpu, cuda or mps")
    blurmap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    blurmap.add_argument("--baseline", action="store_true",
                         help="train the paper's network instead (weights blur_map_paper.pt)")
    blurmap.add_argument("--log-every", type=int, default=200,
                         help="validate and save the weights every this many steps")
    blurmap.add_argument("--out", default=None, help="weights path (default: the shipped file)")
    blurmap.set_defaults(run=_train_blur_map)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.run(args)


if __name__ == "__main__":
    main()
