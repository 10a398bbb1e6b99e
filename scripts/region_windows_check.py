"""Where to estimate a blur kernel from, on train-split images: windows against the whole image.

Protocol 4's setting on the train split (never the eval split): 384 px crops of the train images
with camera-shake kernels of 13-27 px, real-boundary blur and 1 % noise
(``blind_psf_heldout_check.make_cases``), 192 px windows, ``estimate_psf(size=31)``, and the
error ratio ER of the Wiener-net deconvolution of the whole crop, up to a shift
(``benchmarks/region_selection_benchmark.py``). Kernel sources:

- the selector's best window, and its next best ones (greedy, each overlapping every window
  taken by at most a quarter of their union: on a 384 px crop no two 192 px windows are disjoint
  but for the corners, so ``select_regions``' non-overlapping list has one window);
- the whole crop, 3 random windows, the window with the most gradient energy;
- "agreement of the top K": of the estimates from the K best windows, the one most similar on
  average to the others (a kernel several windows agree on is less likely to be an artefact of
  one window); also with the whole-crop estimate among the K;
- "best of the top K (oracle)": the smallest ER among the K windows, which needs the true kernel;
  an upper bound for any way of choosing among them.

    python scripts/region_windows_check.py                  # 60 cases, about 5 min on 2 cores
    python scripts/region_windows_check.py --seed 11
    python scripts/region_windows_check.py --selector NEW.pt  # other selector weights
    python scripts/region_windows_check.py --views 1 4 8      # + best window by scores over 4 / 8 views
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

CROP = 384
WINDOW = 192
ESTIMATE_SIZE = 31
TOP = 5
MAX_OVERLAP = 0.25
SUCCESS_ER = 3.0


def use_selector_weights(path: str | None) -> None:
    """Worker set-up for ``--selector``: the engine scores windows with these weights (None: shipped)."""
    import torch

    from napari_deblur.engine import region_selector as rs

    if path is not None:
        model = rs.RegionSelectorNet()
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        model.eval()
        rs.load_region_selector_net = lambda device: model.to(device)


def top_windows(blurred: np.ndarray, views: int = 1, top: int = TOP) -> list[tuple]:
    """The selector's best windows (scores over ``views`` views of each window, best first), each
    overlapping those before by <= MAX_OVERLAP."""
    import torch

    from napari_deblur.engine import region_selector as rs
    from napari_deblur.engine.jobs import run_job

    plane = np.ascontiguousarray(blurred, dtype=np.float32)
    candidates = run_job(rs.iter_score_grid(plane, WINDOW, WINDOW // 4, torch.device("cpu"), views))
    return [tuple(region[:4]) for region in rs.non_maximum_suppression(candidates, top, MAX_OVERLAP)]


def most_agreed(names: list[str], similarity: dict) -> str:
    """The name whose kernel has the highest mean similarity to the others' kernels."""
    if len(names) == 1:
        return names[0]
    means = [np.mean([similarity[frozenset((a, b))] for b in names if b != a]) for a in names]
    return names[int(np.argmax(means))]


def score_case(numbered: tuple[int, tuple], views: tuple[int, ...] = (1,)) -> dict[str, float]:
    """ER of every kernel source for one case (``name -> ER``); the selector's windows are ranked
    by scores over ``views[0]`` views, and its best window also by each further entry of ``views``."""
    import torch

    from napari_deblur.engine import estimate_psf, kernel_similarity, wiener_net_deconvolve
    from region_selection_benchmark import error_upto_shift, gradient_energy_window, random_windows

    torch.set_num_threads(1)
    number, (_, blurred, kernel, sharp) = numbered
    blurred = blurred.astype(np.float32)
    border = kernel.shape[0]
    reference = error_upto_shift(wiener_net_deconvolve(blurred, kernel.astype(np.float32)),
                                 sharp, border)[0]
    tops = top_windows(blurred, views[0])
    rng = np.random.default_rng(number)
    regions = {f"top{i}": window for i, window in enumerate(tops)}
    regions["whole"] = None
    regions.update({f"random{i}": w for i, w in enumerate(random_windows(blurred.shape, WINDOW, 3, rng))})
    regions["gradient"] = gradient_energy_window(blurred, WINDOW)
    regions.update({f"best by {n} views": top_windows(blurred, n, top=1)[0] for n in views[1:]})
    estimates, ratio = {}, {}
    for name, region in regions.items():
        estimates[name] = estimate_psf(blurred, size=ESTIMATE_SIZE, region=region, device="cpu")
        error = error_upto_shift(wiener_net_deconvolve(blurred, estimates[name]), sharp, border)[0]
        ratio[name] = error / reference
    names = list(estimates)
    similarity = {frozenset((a, b)): kernel_similarity(estimates[a], estimates[b])
                  for i, a in enumerate(names) for b in names[i + 1 :]}
    row = {"selector's best window": ratio["top0"],
           **{f"selector's best window, scores over {n} views": ratio[f"best by {n} views"]
              for n in views[1:]},
           "whole image": ratio["whole"],
           "random window (3 per case)": [ratio[f"random{i}"] for i in range(3)],
           "most gradient energy": ratio["gradient"]}
    for k in (3, TOP):
        first = [f"top{i}" for i in range(min(k, len(tops)))]
        row[f"agreement of the top {k}"] = ratio[most_agreed(first, similarity)]
        row[f"agreement of the top {k} and the whole image"] = ratio[most_agreed(first + ["whole"],
                                                                                 similarity)]
        row[f"best of the top {k} (oracle)"] = min(ratio[name] for name in first)
    return row


def main(argv=None) -> None:
    from blind_psf_heldout_check import make_cases

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=20261128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--selector", help="region-selector weights (default: the shipped ones)")
    parser.add_argument("--views", type=int, nargs="+", default=[1], choices=(1, 2, 4, 8),
                        help="views each window's score is averaged over (the first ranks every "
                             "selector row; each further one adds a row for its best window)")
    args = parser.parse_args(argv)
    cases = make_cases("shake", CROP, args.seed)
    with ProcessPoolExecutor(args.workers, initializer=use_selector_weights,
                             initargs=(args.selector,)) as pool:
        rows = list(pool.map(partial(score_case, views=tuple(args.views)), enumerate(cases)))
    print(f"{len(rows)} cases (train split, {CROP} px crops, shake kernels, seed {args.seed}), "
          f"{WINDOW} px windows, selector {args.selector or 'shipped'}, scores over {args.views[0]} "
          "view(s)\n")
    print(f"| kernel source | ER <= {SUCCESS_ER:g} | median ER |")
    print("|---|---:|---:|")
    for name in rows[0]:
        ratios = np.array([r[name] for r in rows], dtype=float)
        print(f"| {name} | {np.mean(ratios <= SUCCESS_ER):.0%} | {np.median(ratios):.2f} |")


if __name__ == "__main__":
    main()
