"""Training of the GWIS-tuned blur map: per pixel, the level at which GWIS sharpens best.

The blur map (:mod:`napari_deblur.engine.methods.blur_map`) estimates the physical
blur level. GWIS driven by the true level recovers only part of what the best
constant warp scale gains, because the best warp scale depends on the kernel's
shape and on the content as well as on the level. Nasonov, Krylov & Lyukov
therefore label each pixel with the GWIS parameter that maximises SSIM in its
neighbourhood and train the network on those labels; this module does that
with our network and data.

Labels (all seeded)
-------------------
- Crops, blur (Gaussian, disk, ring; uniform and spatially varying levels
  0..6 px) and noise come from
  :class:`~training.blur_map.BlurMapBatches`, the blur
  map's own training data (train split and procedural images only).
- Each blurred crop is sharpened by GWIS at every level of
  :data:`GWIS_LEVEL_GRID` (level 0: left as it is), with the warp scale the
  engine uses for that level (:func:`~napari_deblur.engine.methods.gwis.warp_scale_for_level`);
  the local SSIM against the sharp crop (11x11 Gaussian window) scores each
  result at each pixel. The label of a pixel is the lowest grid level whose
  local SSIM is within :data:`LABEL_TOLERANCE` of the highest (the least
  sharpening that is about as good as the best); its weight is the SSIM spread over the grid (best minus
  worst), so pixels where the choice does not matter count for little, and the
  crops whose mean spread is lowest (``drop_fraction``) are not kept.

Model and loss
--------------
The same :class:`~napari_deblur.engine.methods.blur_map.BlurMapNet`, started from the
shipped blur-map weights and fine-tuned with a spread-weighted L1 loss on
``log(1 + level / LEVEL_OFFSET)`` (so the output is in the blur map's units
and :func:`~napari_deblur.engine.sharpen_gwis` takes it as it is). Random
flips and transpositions of the stored crops.

Validation (held-out crops of the train sources, other seeds; two sets: crops
like the training ones, and ``photo_``: photos only, one uniform level per
crop, larger crops): the mean SSIM of GWIS driven by the fine-tuned map, by
the blur map it started from, by the labels themselves, and by the best
single grid level of each crop (the oracle constant); the share of the oracle
constant's SSIM gain each recovers.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from napari_deblur.engine.methods.blur_map import (
    RETRAIN_COMMAND,
    WEIGHTS_FILE,
    BlurMapNet,
    level_to_target,
    plane_noise_and_range,
    predict_log_level,
    target_to_level,
)
from napari_deblur.engine.methods.gwis import gradient_scale_for_level, gwis_sharpen, warp_scale_for_level
from napari_deblur.engine.nets.shipped_weights import load_shipped_model
from training.blur_map import BlurMapBatches, BlurMapTrainingConfig
from training.losses import ssim_map
from training.optimisation import take_step

logger = logging.getLogger(__name__)

GWIS_LEVEL_GRID = (0.0, 0.35, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0)
"""Levels (px) at which every training crop is sharpened to find the best one per pixel."""

SSIM_WINDOW = 11
"""Side of the local SSIM neighbourhood (px), as in the paper's labels."""

LABEL_TOLERANCE = 0.005
"""A pixel's label is the lowest grid level whose local SSIM is within this of the best: where
several levels are about as good (flat areas, sharp noisy edges), the argmax would pick among
them by the noise of the scores, which biases the labels toward the middle of the grid."""


@dataclass
class GwisLevelTrainingConfig:
    """Settings of one fine-tuning run (all recorded in the report)."""

    steps: int = 1500
    label_batches: int = 64
    batch: int = 16
    patch: int = 128  # crops of 128 + 2 * 24 px: the train split's document image (page) fits
    photo_patch: int = 128
    drop_fraction: float = 0.2
    learning_rate: float = 5e-4
    seed: int = 0
    validation_batches: int = 4
    log_every: int = 500
    threads: int = 0
    device: str = "cpu"
    history: list = field(default_factory=list)
    label_minutes: float = 0.0


def _plane_constants(blurred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise standard deviation and intensity range per crop, each ``(B,)`` (as sharpen_gwis has them)."""
    noise, value_range = plane_noise_and_range(blurred)
    return noise.flatten(), value_range.flatten()


def sharpen_with_levels(blurred: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """GWIS of ``(B, 1, H, W)`` crops driven by ``(B, 1, H, W)`` level maps, one crop at a time.

    The same warp scale and edge-detection scale as
    :func:`~napari_deblur.engine.sharpen_gwis` (the latter from the median level
    of each crop's map).
    """
    noise, value_range = _plane_constants(blurred)
    out = torch.empty_like(blurred)
    for i in range(blurred.shape[0]):
        level_map = levels[i : i + 1]
        scale = warp_scale_for_level(level_map)
        if float(scale.max()) <= 0:
            out[i] = blurred[i]
            continue
        out[i : i + 1] = gwis_sharpen(
            blurred[i : i + 1],
            scale,
            gradient_scale=gradient_scale_for_level(float(level_map.median())),
            noise_std=noise[i : i + 1],
            intensity_range=value_range[i : i + 1],
        )
    return out


def _local_ssim(restored: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
    """Local SSIM at every pixel of ``(B, 1, H, W)`` crops (borders take the nearest valid value)."""
    flat = sharp.flatten(1)
    data_range = (flat.max(dim=1).values - flat.min(dim=1).values).clamp_min(1e-3).view(-1, 1, 1, 1)
    scores = ssim_map(restored, sharp, data_range=data_range, window=SSIM_WINDOW)
    r = SSIM_WINDOW // 2
    return F.pad(scores, (r, r, r, r), mode="replicate")


def gwis_level_labels(
    blurred: torch.Tensor, sharp: torch.Tensor, grid=GWIS_LEVEL_GRID
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pixel SSIM-best GWIS level of ``(B, 1, H, W)`` crops.

    Returns
    -------
    labels : Tensor, (B, 1, H, W)
        The lowest grid level (px) whose GWIS result has a local SSIM within
        :data:`LABEL_TOLERANCE` of the highest.
    spread : Tensor, (B, 1, H, W)
        Best minus worst local SSIM over the grid.
    scores : Tensor, (B, len(grid), H, W)
        The local SSIM of every grid level.
    """
    noise, value_range = _plane_constants(blurred)

    def sharpened(level: float) -> torch.Tensor:  # the whole batch at one level, in one call
        if level <= 0:
            return blurred
        return gwis_sharpen(
            blurred,
            warp_scale_for_level(level),
            gradient_scale=gradient_scale_for_level(level),
            noise_std=noise,
            intensity_range=value_range,
        )

    scores = torch.cat([_local_ssim(sharpened(level), sharp) for level in grid], dim=1)
    good_enough = scores >= scores.amax(dim=1, keepdim=True) - LABEL_TOLERANCE
    best = good_enough.to(torch.uint8).argmax(dim=1, keepdim=True)  # the first such level
    labels = torch.tensor(grid, dtype=blurred.dtype, device=blurred.device)[best]
    spread = scores.amax(dim=1, keepdim=True) - scores.amin(dim=1, keepdim=True)
    return labels, spread, scores


def _crop_mean_ssim(restored: torch.Tensor, sharp: torch.Tensor) -> torch.Tensor:
    """Mean local SSIM per crop, ``(B,)``."""
    return _local_ssim(restored, sharp).flatten(1).mean(dim=1)


class LabelledCrops:
    """A fixed set of labelled crops: features, labels, weights, and the crops themselves."""

    def __init__(
        self,
        config: GwisLevelTrainingConfig,
        seed: int,
        n_batches: int,
        device: torch.device,
        keep_fraction: float,
        photos_uniform: bool = False,
    ):
        if photos_uniform:  # the use case of the benchmark: photos, one level per image
            source_config = BlurMapTrainingConfig(
                batch=config.batch,
                patch=config.photo_patch,
                seed=seed,
                dead_leaves_fraction=0.0,
                texture_fraction=0.0,
            )
            source = BlurMapBatches(
                source_config,
                seed,
                device,
                n_dead_leaves=1,
                n_textures=0,
                map_kinds=("uniform",),
                native_resolution=True,
            )
        else:
            source_config = BlurMapTrainingConfig(batch=config.batch, patch=config.patch, seed=seed)
            source = BlurMapBatches(source_config, seed, device)
        parts = {"features": [], "labels": [], "spread": [], "blurred": [], "sharp": [], "grid_ssim": []}
        for index in range(n_batches):
            with torch.no_grad():
                features, _, description = source.draw()
                labels, spread, scores = gwis_level_labels(description["blurred"], description["sharp"])
            parts["features"].append(features)
            parts["labels"].append(labels)
            parts["spread"].append(spread)
            parts["blurred"].append(description["blurred"])
            parts["sharp"].append(description["sharp"])
            parts["grid_ssim"].append(scores.flatten(2).mean(dim=2))  # (B, G) mean SSIM per level
            logger.info("labelled batch %d of %d", index + 1, n_batches)
        data = {key: torch.cat(value) for key, value in parts.items()}
        mean_spread = data["spread"].flatten(1).mean(dim=1)
        keep = mean_spread.argsort(descending=True)[: max(1, round(keep_fraction * len(mean_spread)))]
        keep = keep.sort().values
        self.data = {key: value[keep] for key, value in data.items()}

    def __len__(self) -> int:
        return len(self.data["labels"])


def _dihedral(tensors: list[torch.Tensor], code: int) -> list[torch.Tensor]:
    """One of the 8 flips/transpositions, the same for every tensor."""
    out = []
    for t in tensors:
        if code & 1:
            t = t.flip(-1)
        if code & 2:
            t = t.flip(-2)
        if code & 4:
            t = t.transpose(-1, -2)
        out.append(t.contiguous())
    return out


def _weighted_l1(prediction: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return ((prediction - level_to_target(labels)).abs() * weight).sum() / weight.sum().clamp_min(1e-8)


def evaluate(model: BlurMapNet, start: BlurMapNet, validation: LabelledCrops) -> dict:
    """Validation: loss, and mean SSIM of GWIS driven by each map (see the module docstring)."""
    model.eval()
    d = validation.data
    sums = {
        "loss": 0.0,
        "blurred": 0.0,
        "oracle_constant": 0.0,
        "labels": 0.0,
        "start_map": 0.0,
        "tuned_map": 0.0,
    }
    n = len(validation)
    with torch.no_grad():
        for begin in range(0, n, 16):
            part = slice(begin, begin + 16)
            features, labels, spread = d["features"][part], d["labels"][part], d["spread"][part]
            blurred, sharp = d["blurred"][part], d["sharp"][part]
            prediction = predict_log_level(model, features)
            sums["loss"] += float(_weighted_l1(prediction, labels, spread)) * len(labels)
            sums["blurred"] += float(d["grid_ssim"][part][:, 0].sum())
            sums["oracle_constant"] += float(d["grid_ssim"][part].amax(dim=1).sum())
            for key, levels in (
                ("labels", labels),
                ("start_map", target_to_level(predict_log_level(start, features))),
                ("tuned_map", target_to_level(prediction)),
            ):
                sums[key] += float(_crop_mean_ssim(sharpen_with_levels(blurred, levels), sharp).sum())
    model.train()
    result = {"val_loss": sums["loss"] / n}
    gain = (sums["oracle_constant"] - sums["blurred"]) / n
    for key in ("blurred", "oracle_constant", "labels", "start_map", "tuned_map"):
        result[f"ssim_{key}"] = sums[key] / n
    for key in ("start_map", "tuned_map"):
        result[f"share_{key}"] = (sums[key] / n - result["ssim_blurred"]) / gain if gain > 0 else math.nan
    return result


def _evaluate_all(model: BlurMapNet, start: BlurMapNet, validation: dict) -> dict:
    """:func:`evaluate` on every validation set, keys prefixed by the set's name."""
    entry = {}
    for prefix, crops in validation.items():
        entry.update(
            {
                prefix + key: value
                for key, value in evaluate(model, start, crops).items()
                if not (prefix and key == "val_loss")
            }
        )
    return entry


def train_gwis_level(config: GwisLevelTrainingConfig, out_path: Path) -> BlurMapNet:
    """Label crops, then fine-tune the shipped blur-map network on the labels; save to ``out_path``."""
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    started = time.perf_counter()
    keep = 1.0 - config.drop_fraction
    crops = LabelledCrops(config, config.seed, config.label_batches, device, keep)
    validation = {
        "": LabelledCrops(config, config.seed + 1000, config.validation_batches, device, 1.0),
        "photo_": LabelledCrops(
            config, config.seed + 2000, config.validation_batches, device, 1.0, photos_uniform=True
        ),
    }
    config.label_minutes = (time.perf_counter() - started) / 60
    start = load_shipped_model(BlurMapNet(), WEIGHTS_FILE, device, RETRAIN_COMMAND)
    model = load_shipped_model(BlurMapNet(), WEIGHTS_FILE, device, RETRAIN_COMMAND).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.learning_rate, total_steps=config.steps, pct_start=0.1
    )
    rng = np.random.default_rng(config.seed + 11)
    entry = {"step": 0, "train_loss": math.nan}
    entry.update(_evaluate_all(model, start, validation))
    entry["minutes"] = (time.perf_counter() - started) / 60
    config.history.append(entry)
    running = 0.0
    d = crops.data
    for step in range(1, config.steps + 1):
        pick = torch.from_numpy(rng.choice(len(crops), size=config.batch, replace=False))
        features, labels, spread = _dihedral(
            [d["features"][pick], d["labels"][pick], d["spread"][pick]], int(rng.integers(8))
        )
        loss = _weighted_l1(predict_log_level(model, features), labels, spread)
        running += take_step(loss, model, optimiser, schedule)
        if step % config.log_every == 0 or step == config.steps:
            n = config.log_every if step % config.log_every == 0 else step % config.log_every
            entry = {"step": step, "train_loss": running / n}
            entry.update(_evaluate_all(model, start, validation))
            entry["minutes"] = (time.perf_counter() - started) / 60
            config.history.append(entry)
            running = 0.0
            logger.info(
                "step %d: train %.4f, val %.4f, GWIS SSIM share: tuned %.3f, start %.3f; "
                "photos: tuned %.3f, start %.3f",
                step,
                entry["train_loss"],
                entry["val_loss"],
                entry["share_tuned_map"],
                entry["share_start_map"],
                entry["photo_share_tuned_map"],
                entry["photo_share_start_map"],
            )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, out_path)
    return model
