"""Compare region-selector weight files on the held-out labelled images of the training command.

The labels come from the training command's cache (made by ``python -m training
region-selector --windows N --cache DIR``; nothing is labelled here). Held-out images are those
with ``index % 7 == 3``, which no selector trained by that command has seen, whatever its
``--windows``: so weights trained on fewer images can be scored on the held-out images of a larger
set. Prints, per weight file, the within-image ROC AUC (the selection task) and the kernel
similarity of the PSF estimated from the window each strategy picks (training/region_selector.py's
``product_validation``, the numbers of the training report).

    python -m training.checks.region_selector_heldout_check --windows 9600 --cache DIR OLD.pt NEW.pt
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def main(argv=None) -> None:
    from napari_deblur.engine.methods.region_selector import RegionSelectorNet
    from training import region_selector as training

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", nargs="+")
    parser.add_argument("--windows", type=int, required=True)
    parser.add_argument("--cache", required=True)
    args = parser.parse_args(argv)
    config = training.RegionSelectorTrainingConfig(windows=args.windows, cache_dir=args.cache)
    path = training.cache_path(config)
    cached = len(training._load_cache(path, config)["blurred"]) if path.exists() else 0
    if cached * config.windows_per_image < args.windows:
        raise SystemExit(
            f"{path} holds {cached} labelled images, fewer than --windows asks for: "
            "run the training command with the same --windows and --cache first"
        )
    labels = training.make_labels(config, path)
    n_images = len(labels["blurred"])
    held_out = np.flatnonzero([config.is_validation(i) for i in range(n_images)])
    windows, similarities = training.cut_windows(labels, held_out, config)
    x = torch.from_numpy(windows)
    print(f"{len(held_out)} held-out images of {n_images}, {len(windows)} windows\n")
    header = (
        "| weights | within-image ROC AUC (images) | "
        + " | ".join(
            f"{name}: mean similarity / success"
            for name in (
                "selector's best window",
                "whole image",
                "random window (expected)",
                "most gradient energy",
                "best window (oracle)",
            )
        )
        + " |"
    )
    print(header)
    print("|---|" + "---:|" * (header.count("|") - 2))
    for weights in args.weights:
        model = RegionSelectorNet()
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        scores = training._predict(model.eval(), x)
        product = training.product_validation(
            scores, windows, similarities, labels["whole_similarity"][held_out], config
        )
        cells = [f"{product['within_image_roc_auc']:.3f} ({product['images_with_both_classes']})"]
        cells += [
            f"{values['mean_similarity']:.3f} / {values['success_rate']:.2f}"
            for values in product.values()
            if isinstance(values, dict)
        ]
        print(f"| {weights} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
