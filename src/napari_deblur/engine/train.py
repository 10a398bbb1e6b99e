"""Retrain the engine's learned models: ``python -m napari_deblur.engine.train MODEL [options]``.

Models: ``wiener-net``. Weights go to the package's ``models/`` folder by
default (the files the engine loads), with a markdown training report beside
them. Runs are seeded and reproducible on the same machine and versions.
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m napari_deblur.engine.train", description=__doc__)
    sub = parser.add_subparsers(dest="model", required=True)
    wiener = sub.add_parser("wiener-net", help="train Wiener-net")
    wiener.add_argument("--steps", type=int, default=6000)
    wiener.add_argument("--batch", type=int, default=16)
    wiener.add_argument("--seed", type=int, default=0)
    wiener.add_argument("--device", default="cpu", help="cpu, cuda or mps")
    wiener.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    wiener.add_argument("--out", default=None, help="weights path (default: the shipped file)")
    wiener.set_defaults(run=_train_wiener_net)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.run(args)


if __name__ == "__main__":
    main()
