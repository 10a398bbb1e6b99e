"""Training of Wiener-net 3D (``python -m training wiener-net-3d``) on procedural volumes.

A pool of cases (:func:`training.volumes.random_case`: procedural specimen,
random microscope PSF, Poisson-Gaussian noise, real boundaries) is made once
with the engine's own candidate code (:func:`~napari_deblur.engine.methods.wiener_net_3d.iter_candidates`),
in worker processes (and kept in ``--cache`` when given); the network then
trains on random sub-volumes with random flips and lateral transposes. The
loss is the mean over sub-volumes of ``log10(MSE / range^2)`` (minus the mean
PSNR / 10), the range being the truth's over its whole case (as the benchmark
scores a volume; a sub-volume's own range is near 0 where it is empty).
Validation: whole cases from another seed.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from napari_deblur.engine.core.jobs import run_job
from napari_deblur.engine.methods.wiener_net_3d import (
    N_CANDIDATES,
    RL_SNAPSHOTS,
    WIENER_SNRS_DB,
    iter_candidates,
    noise_channel,
    run_network,
    wiener_net_3d_features,
)
from napari_deblur.engine.nets.wiener_net_3d import WIDTHS, WienerNet3D
from training.optimisation import take_step
from training.volumes import random_case

log = logging.getLogger(__name__)

CANDIDATE_NAMES = (
    ("blurred",)
    + tuple(f"Wiener {snr:g} dB" for snr in WIENER_SNRS_DB)
    + tuple(f"RL {n}" for n in RL_SNAPSHOTS)
    + ("RL auto",)
)
VALIDATION_SEED_OFFSET = 1_000_000
SCORE_BORDER = (2, 4, 4)


@dataclass
class WienerNet3DTrainingConfig:
    cases: int = 480
    validation_cases: int = 24
    case_shape: tuple = (32, 64, 64)
    crop_shape: tuple = (16, 48, 48)
    steps: int = 3000
    batch: int = 4
    learning_rate: float = 1e-3
    final_learning_rate: float = 1e-5
    widths: tuple = WIDTHS
    seed: int = 0
    workers: int = 2
    threads: int = 2
    log_every: int = 250
    device: str = "cpu"
    cache: str = ""
    history: list = field(default_factory=list)


def make_sample(shape: tuple, seed: int) -> dict:
    """One case and its normalised candidates (run in a worker, one torch thread)."""
    torch.set_num_threads(1)
    case = random_case(shape, np.random.default_rng(seed))
    volume = torch.from_numpy(case.observed)
    candidates, offset, scale = run_job(iter_candidates(volume, torch.from_numpy(case.psf)))
    truth = ((case.truth - offset) / scale).astype(np.float32)
    return {
        "candidates": candidates.numpy(),
        "noise": np.float32(noise_channel(candidates[0])),
        "truth": truth,
        "range": np.float32(np.ptp(_interior(torch.from_numpy(truth)).numpy())),
    }


POOL_FIELDS = ("candidates", "noise", "truth", "range")


def make_pool(shape: tuple, seeds: range, workers: int, cache: Path | None = None) -> list[dict]:
    """The cases of ``seeds``, made in ``workers`` processes, or read from ``cache`` (a folder) if made before."""
    files = None
    if cache is not None:
        stem = f"wiener_net_3d_pool_{'x'.join(map(str, shape))}_{seeds.start}_{seeds.stop}"
        files = {name: Path(cache) / f"{stem}_{name}.npy" for name in POOL_FIELDS}
        if all(path.exists() for path in files.values()):
            arrays = {name: np.load(path, mmap_mode="r") for name, path in files.items()}
            log.info("read %d cases from %s", len(seeds), cache)
            return [{name: arrays[name][i] for name in POOL_FIELDS} for i in range(len(seeds))]
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        samples = list(pool.map(make_sample, [shape] * len(seeds), seeds, chunksize=4))
    log.info("made %d cases in %.0f s", len(samples), time.perf_counter() - started)
    if files is not None:
        Path(cache).mkdir(parents=True, exist_ok=True)
        for name, path in files.items():
            np.save(path, np.stack([sample[name] for sample in samples]))
    return samples


def _features(sample: dict) -> torch.Tensor:
    candidates = torch.from_numpy(np.asarray(sample["candidates"], dtype=np.float32))
    return wiener_net_3d_features(candidates, float(sample["noise"]))[0]


def _augment(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Random flips in z, y, x and a lateral transpose of ``(C, Z, H, W)``."""
    dims = [d for d, flip in zip((1, 2, 3), rng.uniform(size=3) < 0.5, strict=True) if flip]
    if dims:
        x = x.flip(dims)
    if rng.uniform() < 0.5:
        x = x.transpose(2, 3)
    return x


def random_batch(pool: list[dict], config: WienerNet3DTrainingConfig, rng: np.random.Generator):
    features, truths, ranges = [], [], []
    for index in rng.integers(0, len(pool), config.batch):
        sample = pool[int(index)]
        truth = torch.from_numpy(np.asarray(sample["truth"], dtype=np.float32))
        both = torch.cat([_features(sample), truth[None]])
        ranges.append(float(sample["range"]))
        starts = [
            int(rng.integers(0, n - c + 1)) for n, c in zip(both.shape[1:], config.crop_shape, strict=True)
        ]
        both = both[
            (slice(None),) + tuple(slice(s, s + c) for s, c in zip(starts, config.crop_shape, strict=True))
        ]
        both = _augment(both, rng)
        features.append(both[:-1])
        truths.append(both[-1:])
    return torch.stack(features), torch.stack(truths), torch.tensor(ranges)


def _interior(x: torch.Tensor) -> torch.Tensor:
    return x[
        ...,
        SCORE_BORDER[0] : -SCORE_BORDER[0],
        SCORE_BORDER[1] : -SCORE_BORDER[1],
        SCORE_BORDER[2] : -SCORE_BORDER[2],
    ]


def log_relative_mse(
    estimate: torch.Tensor, truth: torch.Tensor, spread: torch.Tensor | None = None
) -> torch.Tensor:
    """``log10(MSE / spread^2)`` per item of ``(B, 1, Z, H, W)`` tensors over the interior (= -PSNR / 10).

    ``spread`` ``(B,)``: the truth's range to score against (default: its range in the interior).
    """
    estimate, truth = _interior(estimate), _interior(truth)
    mse = (estimate - truth).square().flatten(1).mean(1)
    if spread is None:
        spread = truth.flatten(1).amax(1) - truth.flatten(1).amin(1)
    return torch.log10(mse.clamp_min(1e-12) / spread.clamp_min(1e-6).square())


def evaluate(model: WienerNet3D, validation: list[dict]) -> dict:
    """Mean PSNR (interior, truth's range) of the network, each candidate and the best RL count per case."""
    model.eval()
    psnrs = {"network": [], "rl_oracle": [], "lost_to_rl_oracle": []}
    per_candidate = [[] for _ in range(N_CANDIDATES)]
    with torch.no_grad():
        for sample in validation:
            truth = torch.from_numpy(np.asarray(sample["truth"], dtype=np.float32))[None, None]
            out = run_network(model, _features(sample)[None])
            network = -10 * float(log_relative_mse(out, truth)[0])
            candidates = torch.from_numpy(np.asarray(sample["candidates"], dtype=np.float32))
            scores = [-10 * float(log_relative_mse(c[None, None], truth)[0]) for c in candidates]
            for values, value in zip(per_candidate, scores, strict=True):
                values.append(value)
            rl_best = max(scores[1 + len(WIENER_SNRS_DB) : 1 + len(WIENER_SNRS_DB) + len(RL_SNAPSHOTS)])
            psnrs["network"].append(network)
            psnrs["rl_oracle"].append(rl_best)
            psnrs["lost_to_rl_oracle"].append(float(network < rl_best))
    model.train()
    row = {key: float(np.mean(values)) for key, values in psnrs.items()}
    row["gain_over_rl_oracle"] = row["network"] - row["rl_oracle"]
    row["worst_gain_over_rl_oracle"] = float(
        np.min(np.array(psnrs["network"]) - np.array(psnrs["rl_oracle"]))
    )
    for name, values in zip(CANDIDATE_NAMES, per_candidate, strict=True):
        row[name] = float(np.mean(values))
    return row


def train_wiener_net_3d(config: WienerNet3DTrainingConfig, out_path: Path) -> WienerNet3D:
    """Make the pools, train, validate every ``log_every`` steps, save the ``state_dict`` to ``out_path``."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    rng = np.random.default_rng(config.seed)
    shape = tuple(config.case_shape)
    cache = Path(config.cache) if config.cache else None
    first = config.seed * 100_000
    pool = make_pool(shape, range(first, first + config.cases), config.workers, cache)
    first += VALIDATION_SEED_OFFSET
    validation = make_pool(shape, range(first, first + config.validation_cases), config.workers, cache)
    model = WienerNet3D(N_CANDIDATES, widths=tuple(config.widths))
    with torch.no_grad():  # start as Richardson-Lucy stopped by itself, with no correction
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.bias[N_CANDIDATES - 1] = 6.0
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=1e-4)
    ratio = config.final_learning_rate / config.learning_rate
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        lambda step: ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * min(step / config.steps, 1.0))),
    )
    config.history.append({"step": 0, "loss": float("nan"), **evaluate(model, validation)})
    log.info("step 0: %s", config.history[-1])
    losses = []
    started = time.perf_counter()
    for step in range(1, config.steps + 1):
        features, truth, spread = random_batch(pool, config, rng)
        loss = log_relative_mse(model(features), truth, spread).mean()
        losses.append(take_step(loss, model, optimiser, schedule))
        if step % config.log_every == 0 or step == config.steps:
            row = {"step": step, "loss": float(np.mean(losses)), **evaluate(model, validation)}
            config.history.append(row)
            losses = []
            log.info(
                "step %d (%.0f s): loss %.4f, network %.2f dB, RL oracle %.2f dB, gain %+.2f, lost %.2f",
                step,
                time.perf_counter() - started,
                row["loss"],
                row["network"],
                row["rl_oracle"],
                row["gain_over_rl_oracle"],
                row["lost_to_rl_oracle"],
            )
            torch.save(model.state_dict(), out_path)
    torch.save(model.state_dict(), out_path)
    return model
