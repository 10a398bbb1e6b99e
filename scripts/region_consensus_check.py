"""Ways to choose a window on train-split images, judged with every candidate window estimated.

Protocol 4's setting on the train split (never the eval split), as ``region_windows_check.py``
makes it: 384 px crops of the train images with camera-shake kernels of 13-27 px, real-boundary
blur, 1 % noise (``blind_psf_heldout_check.make_cases``), 192 px windows on the selector's grid
(stride 48: 25 windows), ``estimate_psf(size=31)``, and the error ratio ER of the Wiener-net
deconvolution of the whole crop, up to a shift. A kernel is estimated from every grid window and
from the whole crop, so any rule for choosing among the windows can be scored:

- the selector network's top window (``ranking="network"``);
- the consensus ranking (``select_regions``' default since rule C2): the window whose kernel has the
  highest mean kernel similarity to the other windows' kernels (``region_selector.consensus_scores``);
- the same with the whole-crop estimate among the others; the window closest to the whole-crop
  estimate; the consensus among the network's top K windows; network score times consensus;
- the consensus over a coarser grid (3 x 3, stride 96);
- the window whose kernel gives the whole crop the highest Gaussian-prior marginal likelihood
  (:func:`negative_log_likelihood`), and the consensus among the 5 windows best by it (rule L1 of
  stop 38: a candidate, not in the engine);
- the whole crop, and the best window with the true kernel (oracle).

Also the within-case ROC AUC of the network's, the consensus' and the likelihood's scores (cases
with good and bad windows). ``--textures`` draws the cases from the train split's two textures
only (grass and gravel, 30 kernels each), where whole-crop estimates fail more often.
``--procedural`` draws them from procedural images instead (``training.sources``: printed text,
point-source fields and Voronoi-cell textures, 20 of each, one kernel each), kinds of scene the
eval split has (`text`, `hubble_deep_field` and `cell`, `brick`) and the train split lacks.
``--save F.npz`` keeps every case's crop, kernel and window estimates, so other rankings can be
scored without estimating again. About 16 min on two cores.

    python scripts/region_consensus_check.py --seed 35
    python scripts/region_consensus_check.py --seed 36 --kind gaussian
    python scripts/region_consensus_check.py --seed 39 --textures
    python scripts/region_consensus_check.py --seed 41 --procedural --save cases.npz
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

WINDOW = 192
STRIDE = 48
ESTIMATE_SIZE = 31
SUCCESS_ER = 3.0
TOP_K = (5, 8, 12)
TEXTURES = ("grass", "gravel")
TEXTURE_KERNELS = 30
PRIOR_EXPONENT = 1.2
"""Gradient prior of :func:`negative_log_likelihood`: image power ~ 1 / |D(f)|^(2 * this)."""
LIKELIHOOD_TOP = 5
PROCEDURAL_KINDS = ("printed text", "point sources", "cell textures")
PROCEDURAL_PER_KIND = 20


def negative_log_likelihood(blurred: np.ndarray, kernels: np.ndarray) -> np.ndarray:
    """Per kernel, the mean negative log-likelihood of the whole blurred crop under y = k * x + n
    with x Gaussian, its power spectrum ``A / |D(f)|^(2 * PRIOR_EXPONENT)`` (``|D|^2`` the squared
    gradient transfer function), ``A`` profiled per kernel on a log grid, and white noise of the
    Donoho estimate's variance; lower explains the crop better. Phase-blind (only |K(f)| counts)."""
    import torch

    from napari_deblur.engine.fourier import kernel_to_otf, taper_fft_shape, taper_pad, taper_weights
    from napari_deblur.engine.gwis import estimate_noise_std

    plane = torch.from_numpy(np.asarray(blurred, np.float64))[None, None]
    plane = plane - plane.mean()
    height, width = plane.shape[-2:]
    margin = ESTIMATE_SIZE
    shape = taper_fft_shape((height, width), margin, margin)
    weights = taper_weights((height, width), margin, margin, shape, plane.device, plane.dtype)
    power = torch.fft.rfft2(taper_pad(plane, margin, margin, shape)).abs().square()[0, 0]
    power = power / weights.square().sum()
    noise = float(estimate_noise_std(plane.float())[0]) ** 2
    fy = torch.fft.fftfreq(shape[0], dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(shape[1], dtype=torch.float64)[None, :]
    gradient = (2 - 2 * torch.cos(2 * np.pi * fy)) + (2 - 2 * torch.cos(2 * np.pi * fx))
    used = gradient > 0
    power, gradient = power[used], gradient[used]

    def mean_nll(model: torch.Tensor) -> float:
        return float((power / model + torch.log(model)).mean())

    values = []
    for kernel in kernels:
        otf = kernel_to_otf(torch.from_numpy(np.asarray(kernel, np.float64))[None], shape)[0]
        shape_term = otf.abs().square()[used] / gradient**PRIOR_EXPONENT
        coarse = np.arange(-14, 2, 0.5)
        start = coarse[int(np.argmin([mean_nll(shape_term * np.exp(a) + noise) for a in coarse]))]
        values.append(min(mean_nll(shape_term * np.exp(a) + noise)
                          for a in np.arange(start - 0.5, start + 0.51, 0.1)))
    return np.array(values)


def case_estimates(numbered: tuple[int, tuple]) -> dict:
    """Every grid window's (and the whole crop's) estimate for one case: ER, network score,
    pairwise kernel similarities. Index 0 is the whole crop."""
    import torch

    from napari_deblur.engine import estimate_psf, kernel_similarity, wiener_net_deconvolve
    from napari_deblur.engine import region_selector as rs
    from napari_deblur.engine.jobs import run_job
    from region_selection_benchmark import error_upto_shift

    torch.set_num_threads(1)
    _, (_, blurred, kernel, sharp) = numbered
    blurred = blurred.astype(np.float32)
    border = kernel.shape[0]
    reference = error_upto_shift(wiener_net_deconvolve(blurred, kernel.astype(np.float32)), sharp,
                                 border)[0]
    grid = run_job(rs.iter_score_grid(blurred, WINDOW, STRIDE, torch.device("cpu")))
    regions = [None] + [tuple(region[:4]) for region in grid]
    estimates, ratios = [], []
    for region in regions:
        estimate = estimate_psf(blurred, size=ESTIMATE_SIZE, region=region, device="cpu")
        estimates.append(estimate)
        ratios.append(error_upto_shift(wiener_net_deconvolve(blurred, estimate), sharp, border)[0]
                      / reference)
    count = len(estimates)
    similarity = np.eye(count)
    for i in range(count):
        for j in range(i + 1, count):
            similarity[i, j] = similarity[j, i] = kernel_similarity(estimates[i], estimates[j])
    return {"regions": regions, "scores": np.array([np.nan] + [r.score for r in grid]),
            "ratios": np.array(ratios), "similarity": similarity,
            "nll": negative_log_likelihood(blurred, np.stack(estimates)), "estimates": np.stack(estimates)}


def procedural_sources(size: int, seed: int) -> list[np.ndarray]:
    """:data:`PROCEDURAL_PER_KIND` images of each of :data:`PROCEDURAL_KINDS`, ``size`` px, from ``seed``."""
    from napari_deblur.engine.training import sources

    rng = np.random.default_rng([seed, 1])
    makers = {"printed text": sources.printed_text, "point sources": sources.point_sources,
              "cell textures": lambda n, r: sources.procedural_texture(n, r, "cells")}
    return [makers[kind](size, rng) for kind in PROCEDURAL_KINDS for _ in range(PROCEDURAL_PER_KIND)]


def save_estimates(path: Path, cases: list[tuple], estimated: list[dict]) -> None:
    """Every case's blurred crop, true kernel, and per window (index 0: the whole crop) region, network
    score, ER, the estimates' pairwise similarities and likelihoods, in one ``.npz``."""
    arrays = {}
    for number, ((_, blurred, kernel, _), case) in enumerate(zip(cases, estimated)):
        arrays[f"{number}_blurred"] = blurred.astype(np.float32)
        arrays[f"{number}_kernel"] = kernel
        arrays[f"{number}_regions"] = np.array([(-1, -1, -1, -1) if region is None else region
                                                for region in case["regions"]])
        for key in ("scores", "ratios", "similarity", "nll", "estimates"):
            arrays[f"{number}_{key}"] = np.asarray(case[key])
    np.savez_compressed(path, **arrays)


def mean_agreement(similarity: np.ndarray, members: list[int], among: list[int]) -> np.ndarray:
    """For each of ``members``, its mean similarity to the others of ``among``."""
    return np.array([np.mean([similarity[i, j] for j in among if j != i]) for i in members])


def choices(case: dict) -> dict[str, float]:
    """ER of each way of choosing a kernel source for one case."""
    ratios, similarity, scores = case["ratios"], case["similarity"], case["scores"]
    windows = list(range(1, len(ratios)))
    consensus = mean_agreement(similarity, windows, windows)
    with_whole = mean_agreement(similarity, windows, [0, *windows])
    by_network = sorted(windows, key=lambda i: -scores[i])
    coarse = [i for i in windows if case["regions"][i][0] % 96 == 0 and case["regions"][i][1] % 96 == 0]
    row = {
        "whole crop": ratios[0],
        "network's top window (ranking='network')": ratios[by_network[0]],
        "consensus of all grid windows (select_regions default)": ratios[windows[int(np.argmax(consensus))]],
        "consensus, the whole-crop estimate among the others": ratios[windows[int(np.argmax(with_whole))]],
        "window closest to the whole-crop estimate": ratios[windows[int(np.argmax(similarity[0, 1:]))]],
    }
    for k in TOP_K:
        top = by_network[:k]
        row[f"consensus of the network's top {k}"] = ratios[top[int(np.argmax(
            mean_agreement(similarity, top, top)))]]
    row["network score x consensus"] = ratios[windows[int(np.argmax(scores[1:] * consensus))]]
    row["consensus of a 3 x 3 grid (stride 96)"] = ratios[coarse[int(np.argmax(
        mean_agreement(similarity, coarse, coarse)))]]
    nll = case["nll"][1:]
    row["highest whole-crop likelihood"] = ratios[windows[int(np.argmin(nll))]]
    top = np.argsort(nll)[:LIKELIHOOD_TOP]
    row[f"consensus among the likelihood's top {LIKELIHOOD_TOP} (rule L1)"] = ratios[
        windows[int(top[np.argmax(consensus[top])])]]
    row["best window (oracle)"] = float(ratios[1:].min())
    return row


def main(argv=None) -> None:
    from blind_psf_heldout_check import make_cases
    from region_grid_oracle_check import within_case_auc

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=35)
    parser.add_argument("--kind", choices=("shake", "gaussian", "disk"), default="shake",
                        help="blur kernels of the cases (default: camera shake, as protocol 4)")
    parser.add_argument("--textures", action="store_true",
                        help=f"cases from {' and '.join(TEXTURES)} only, {TEXTURE_KERNELS} kernels each")
    parser.add_argument("--procedural", action="store_true",
                        help=f"cases from procedural images: {', '.join(PROCEDURAL_KINDS)}, "
                        f"{PROCEDURAL_PER_KIND} of each, one kernel each")
    parser.add_argument("--save", type=Path, help="write every case's windows and estimates here (.npz)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    if args.textures:
        cases = make_cases(args.kind, 384, args.seed, images=TEXTURES, per_image=TEXTURE_KERNELS)
    elif args.procedural:
        cases = make_cases(args.kind, 384, args.seed, sources=procedural_sources(384 + 40, args.seed),
                           per_image=1)
    else:
        cases = make_cases(args.kind, 384, args.seed)
    with ProcessPoolExecutor(args.workers) as pool:
        estimated = list(pool.map(case_estimates, enumerate(cases)))
    if args.save:
        save_estimates(args.save, cases, estimated)
    rows = [choices(case) for case in estimated]
    good_share, network_auc, consensus_auc, likelihood_auc = [], [], [], []
    for case in estimated:
        good = case["ratios"][1:] <= SUCCESS_ER
        good_share.append(good.mean())
        windows = list(range(1, len(case["ratios"])))
        for scores, into in ((case["scores"][1:], network_auc),
                             (mean_agreement(case["similarity"], windows, windows), consensus_auc),
                             (-case["nll"][1:], likelihood_auc)):
            auc = within_case_auc(scores, good)
            if auc is not None:
                into.append(auc)
    sources = (f"{' and '.join(TEXTURES)} only" if args.textures
               else "procedural images" if args.procedural else "train split")
    print(f"{len(rows)} cases ({sources}, 384 px crops, {args.kind} kernels, seed {args.seed}), "
          f"{WINDOW} px windows every {STRIDE} px; good windows (ER <= {SUCCESS_ER:g}) per case: "
          f"{np.mean(good_share):.0%} on average\n")
    print(f"| kernel source | ER <= {SUCCESS_ER:g} | median ER |")
    print("|---|---:|---:|")
    for name in rows[0]:
        ratios = np.array([row[name] for row in rows])
        print(f"| {name} | {np.mean(ratios <= SUCCESS_ER):.0%} | {np.median(ratios):.2f} |")
    print(f"\nWithin-case ROC AUC ({len(network_auc)} cases with good and bad windows): network "
          f"{np.mean(network_auc):.2f}, consensus {np.mean(consensus_auc):.2f}, likelihood "
          f"{np.mean(likelihood_auc):.2f}")


if __name__ == "__main__":
    main()
