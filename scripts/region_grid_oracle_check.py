"""How well could any window selector do on protocol 4? Every candidate window, not just the picked one.

``benchmarks/region_selection_benchmark.py`` scores the kernel estimated from the selector's best
window against the whole image, random windows and the gradient-energy window. This script takes
the same eval cases (7 images x Levin's 8 kernels, 1 % noise, the same seeds, crops and window
size) and estimates the kernel from *every* window the selector scores (its grid: stride a quarter
of the window), deconvolving the whole image with each (Wiener-net, as the benchmark does). So it
shows what a perfect ranking of the selector's own candidates would reach (the oracle), how many
good windows a case has, and how the shipped selector's scores rank them. Measurement only: nothing
is trained or tuned on these images.

    python scripts/region_grid_oracle_check.py [--workers 2] [--csv PATH]

About 25 windows per case; 15-20 min on two cores. Prints markdown.
"""

from __future__ import annotations

import argparse
import csv
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

SUCCESS = 3.0
"""Error ratio at or below which a kernel estimate counts as a success (the issue's bar)."""


def image_cases(name: str) -> list[dict]:
    """Every grid window of every kernel of one eval image: error ratio, selector score."""
    import torch

    import eval_data as ed
    import region_selection_benchmark as bench
    from napari_deblur.engine import estimate_psf, wiener_net_deconvolve
    from napari_deblur.engine.region_selector import iter_score_grid
    from napari_deblur.engine.jobs import run_job

    torch.set_num_threads(1)
    kernels = ed.load_levin_kernels()
    margin = max(k.shape[0] for k in kernels) // 2
    source = ed.load_eval_image(name)
    shape = ed.eval_crop_shape(source.shape, 384, margin)
    window = min(bench.WINDOW, min(shape))
    rows = []
    for k, truth in enumerate(kernels):
        observed, sharp, _ = bench.blurred_case(source, truth, shape, name, k)
        border = truth.shape[0]
        reference_error, _ = bench.error_upto_shift(wiener_net_deconvolve(observed, truth), sharp, border)
        grid = run_job(iter_score_grid(observed, window, max(1, window // 4), torch.device("cpu")))
        candidates = [("whole image", None, float("nan"))]
        candidates += [("window", tuple(region[:4]), region.score) for region in grid]
        for kind, region, score in candidates:
            kernel = estimate_psf(observed, size=bench.ESTIMATE_SIZE, region=region)
            error, _ = bench.error_upto_shift(wiener_net_deconvolve(observed, kernel), sharp, border)
            rows.append({"image": name, "kernel": k + 1, "kind": kind,
                         "region": "" if region is None else " ".join(map(str, region)),
                         "score": score, "error_ratio": error / reference_error})
        print(f"{name} kernel {k + 1}: {len(candidates) - 1} windows", file=sys.stderr, flush=True)
    return rows


def within_case_auc(scores: np.ndarray, good: np.ndarray) -> float | None:
    """Probability that a good window outscores a bad one (ties count half); None without both."""
    if good.all() or not good.any():
        return None
    better = (scores[good][:, None] > scores[~good][None, :]).mean()
    ties = (scores[good][:, None] == scores[~good][None, :]).mean()
    return float(better + 0.5 * ties)


def summary(rows: list[dict]) -> list[str]:
    cases = sorted({(r["image"], r["kernel"]) for r in rows})
    whole, top1, oracle, good_share, aucs = [], [], [], [], []
    per_image: dict[str, list] = {}
    for case in cases:
        windows = [r for r in rows if (r["image"], r["kernel"]) == case and r["kind"] == "window"]
        whole_row = next(r for r in rows if (r["image"], r["kernel"]) == case and r["kind"] == "whole image")
        scores = np.array([r["score"] for r in windows])
        good = np.array([r["error_ratio"] <= SUCCESS for r in windows])
        whole.append(whole_row["error_ratio"] <= SUCCESS)
        top1.append(bool(good[int(np.argmax(scores))]))
        oracle.append(bool(good.any()))
        good_share.append(float(good.mean()))
        auc = within_case_auc(scores, good)
        if auc is not None:
            aucs.append(auc)
        per_image.setdefault(case[0], []).append((whole[-1], top1[-1], oracle[-1], good_share[-1]))
    n = len(cases)
    lines = [f"Cases: {n}; windows per case: {len(rows) // n - 1} (mean). Success: ER <= {SUCCESS:g}.", "",
             "| measure | share of cases |", "|---|---:|",
             f"| whole image | {np.mean(whole):.0%} |",
             f"| selector's top-scored grid window | {np.mean(top1):.0%} |",
             f"| some grid window (oracle over the selector's candidates) | {np.mean(oracle):.0%} |",
             f"| some grid window or the whole image | {np.mean(np.array(oracle) | np.array(whole)):.0%} |",
             f"| mean share of good windows in a case | {np.mean(good_share):.0%} |", "",
             f"Within-case ROC AUC of the selector's scores (cases with good and bad windows, "
             f"{len(aucs)}): mean {np.mean(aucs):.2f}" if aucs else "No case has both good and bad windows.",
             "", "| image | whole image | top window | oracle | mean share of good windows |",
             "|---|---:|---:|---:|---:|"]
    for image, values in per_image.items():
        w, t, o, s = (np.mean([v[i] for v in values]) for i in range(4))
        lines.append(f"| {image} | {w:.0%} | {t:.0%} | {o:.0%} | {s:.0%} |")
    return lines


def main(argv=None) -> int:
    import eval_data as ed

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="processes, one image each at a time")
    parser.add_argument("--csv", type=Path, help="write every window's row here")
    parser.add_argument("--images", nargs="+", default=list(ed.EVAL_IMAGES))
    args = parser.parse_args(argv)
    with ProcessPoolExecutor(args.workers) as pool:
        rows = [row for image_rows in pool.map(image_cases, args.images) for row in image_rows]
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    print("\n".join(["# Protocol 4: every candidate window of the selector", "",
                     f"Command: `{ed.command_line('scripts/region_grid_oracle_check.py', argv)}`", "",
                     ed.environment_line(), ""] + summary(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
