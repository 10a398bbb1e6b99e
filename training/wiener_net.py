"""Training loop of Wiener-net (:mod:`napari_deblur.engine.methods.wiener_net`).

Each step draws sharp crops (train split and dead leaves), blurs them with
*valid* convolution (so, as in a camera, content from beyond the frame bleeds
in), adds Gaussian or Poisson-Gaussian noise, and trains the network on
the log of each restored crop's MSE plus an SSIM term
(:func:`restoration_loss`). Three stages: from scratch on small crops, then
fine-tuning on larger ones (:data:`FINE_TUNING`), then the same through the
engine's residual correction (:func:`correction_tuning_config`). Everything
is seeded: the same command gives the same weights on the same machine and
library versions.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from napari_deblur.engine.methods.wiener import WIENER_STACK_SNRS_DB, wiener_filter
from napari_deblur.engine.methods.wiener_net import (
    WIDTHS,
    WienerNet,
    apply_network_ensemble,
    correct_by_residual,
    plane_statistics,
    wiener_net_features,
)
from training.kernels import kernel_pool, perturb_kernels, widen_kernels
from training.losses import ssim
from training.optimisation import take_step
from training.sources import PatchSampler

logger = logging.getLogger(__name__)

KERNEL_SIZE = 31
LOG_MSE_WEIGHT = 0.1
LOG_MSE_FLOOR = 1e-6
"""Added to each crop's MSE inside the log: crops above 60 dB stop counting."""
SSIM_WEIGHT = 0.2
SUPPORT_THRESHOLD = 1e-3
"""A kernel's support: its pixels above this fraction of its peak (:func:`interior_masks`)."""


@dataclass
class WienerNetTrainingConfig:
    """Settings of one training run (all recorded in the report)."""

    steps: int = 4000
    batch: int = 16
    patch: int = 112
    learning_rate: float = 1.5e-3
    seed: int = 0
    kernel_pool_size: int = 3000
    shake_fraction: float = 0.4
    n_dead_leaves: int = 200
    smooth_fraction: float = 0.15
    n_textures: int = 0
    texture_fraction: float = 0.0
    n_point_fields: int = 0
    point_field_fraction: float = 0.0
    n_text_pages: int = 0
    text_fraction: float = 0.0
    interior_weight: float = 0.0
    kernel_error_share: float = 0.0
    kernel_error_sigma_range: tuple[float, float] = (0.4, 1.0)
    kernel_error_kinds: tuple[str, ...] = ("wide",)
    """Ways the handed kernel is wrong (:data:`training.kernels.KERNEL_ERROR_KINDS`), drawn
    uniformly per crop; ``("wide",)`` alone repeats the runs made before the other kinds."""
    blind_share: float = 0.0
    """Share of the crops blurred by the true kernel of a blind pair and handed its estimate
    (:mod:`training.blind_pairs`); needs ``blind_pairs``."""
    blind_pairs: str | None = None
    """``.npz`` file of :func:`training.blind_pairs.load_or_make_blind_pairs`."""
    residual_correction: bool = False
    network_passes: int = 1
    init: str | None = None
    noise_sigma_range: tuple[float, float] = (0.005, 0.05)
    poisson_fraction: float = 0.25
    poisson_peak_range: tuple[float, float] = (30.0, 3000.0)
    widths: tuple[int, ...] = WIDTHS
    validation_batches: int = 8
    log_every: int = 500
    threads: int = 0
    device: str = "cpu"
    history: list = field(default_factory=list)


VALIDATION_TEXTURES = 24
"""Procedural textures in the texture validation set (:func:`validation_batches`)."""

VALIDATION_POINT_FIELDS = 24
"""Point-source fields in the point-source validation set (:func:`validation_batches`)."""

FINE_TUNING = {
    "steps": 1200,
    "patch": 192,
    "batch": 8,
    "learning_rate": 3e-4,
    "interior_weight": 0.75,
    "shake_fraction": 0.7,
    "log_every": 300,
}
"""The second stage of the default training command: larger crops (more
context for kernels up to 31 px), a loss that looks past the frame band
(``interior_weight``, :func:`restoration_loss`) and more camera shake, at a
lower learning rate, starting from the first stage's weights. (Point-source
fields in a fifth of its crops were tried and not shipped: README.)"""


def fine_tuning_config(config: WienerNetTrainingConfig, init: str) -> WienerNetTrainingConfig:
    """The second-stage settings (:data:`FINE_TUNING`) on top of ``config``, starting from ``init``."""
    return replace(config, **FINE_TUNING, init=str(init), history=[])


CORRECTION_TUNING_SEED_OFFSET = 3
"""The third stage draws its crops from ``seed + 3`` (the second stage's draws were seen already)."""


def correction_tuning_config(config: WienerNetTrainingConfig, init: str) -> WienerNetTrainingConfig:
    """The third stage: the second stage's settings with the loss taken after the residual correction.

    The engine follows the network with
    :func:`~napari_deblur.engine.methods.wiener_net.correct_by_residual`; this stage
    trains the network for that pipeline (the correction is differentiable),
    on fresh crops, starting from ``init`` (the second stage's weights).
    """
    return replace(
        config,
        **FINE_TUNING,
        residual_correction=True,
        seed=config.seed + CORRECTION_TUNING_SEED_OFFSET,
        init=str(init),
        history=[],
    )


class BlurredBatches:
    """Seeded generator of (sharp, blurred+noisy, kernel) training batches."""

    def __init__(self, config: WienerNetTrainingConfig, seed: int, device: torch.device):
        self.config = config
        self.device = device
        self.rng = np.random.default_rng(seed)
        self.sampler = PatchSampler(
            config.patch + KERNEL_SIZE - 1,
            self.rng,
            n_dead_leaves=config.n_dead_leaves,
            smooth_fraction=config.smooth_fraction,
            n_textures=config.n_textures,
            texture_fraction=config.texture_fraction,
            n_point_fields=config.n_point_fields,
            point_field_fraction=config.point_field_fraction,
            n_text_pages=config.n_text_pages,
            text_fraction=config.text_fraction,
        )
        self.kernels = torch.tensor(
            kernel_pool(config.kernel_pool_size, self.rng, KERNEL_SIZE, config.shake_fraction)
        )
        self.blind_true = self.blind_estimate = None
        if config.blind_share > 0:
            with np.load(config.blind_pairs) as pairs:
                self.blind_true = torch.from_numpy(pairs["true"]).float()
                self.blind_estimate = torch.from_numpy(pairs["estimate"]).float()

    def draw(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c = self.config
        big = torch.from_numpy(self.sampler.sample(c.batch)).to(self.device)
        kernels = self.kernels[self.rng.integers(len(self.kernels), size=c.batch)].to(self.device)
        blind, estimates = self.blind_draw(kernels)
        sharp, blurred = blur_valid(big, kernels)
        sigma = torch.from_numpy(
            np.exp(
                self.rng.uniform(math.log(c.noise_sigma_range[0]), math.log(c.noise_sigma_range[1]), c.batch)
            )
        ).float()
        sigma = sigma.to(self.device).view(-1, 1, 1, 1)
        generator = torch.Generator(device="cpu").manual_seed(int(self.rng.integers(2**31)))
        poisson = self.rng.uniform(size=c.batch) < c.poisson_fraction
        if poisson.any():
            peaks = np.exp(self.rng.uniform(*np.log(c.poisson_peak_range), c.batch))
            peak = torch.from_numpy(peaks).float().view(-1, 1, 1, 1).to(self.device)
            counts = torch.poisson((blurred.clamp_min(0) * peak).cpu(), generator=generator).to(self.device)
            mask = torch.from_numpy(poisson).view(-1, 1, 1, 1).to(self.device)
            blurred = torch.where(mask, counts / peak, blurred)
        noise = torch.randn(blurred.shape, generator=generator).to(self.device)
        given = self.kernels_given(kernels)
        if blind is not None:
            given = torch.where(blind.view(-1, 1, 1), estimates, given)
        return sharp, blurred + sigma * noise, given

    def blind_draw(self, kernels: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """In ``blind_share`` of the crops, put a blind pair's true kernel into ``kernels`` (in place).

        Returns the mask of those crops and, for them, the pairs' estimates (the kernels the network
        is handed), or ``(None, None)`` without drawing anything when the share is 0.
        """
        if self.blind_true is None:
            return None, None
        chosen = self.rng.uniform(size=len(kernels)) < self.config.blind_share
        picks = self.rng.integers(len(self.blind_true), size=len(kernels))
        mask = torch.from_numpy(chosen).to(kernels.device)
        kernels[mask] = self.blind_true[picks[chosen]].to(kernels)
        estimates = self.blind_estimate[picks].to(kernels)
        return mask, estimates

    def kernels_given(self, kernels: torch.Tensor) -> torch.Tensor:
        """The kernels the network is handed: the true ones, or in ``kernel_error_share`` of the crops
        the true one widened (:func:`~.kernels.widen_kernels`, sigma uniform in
        ``kernel_error_sigma_range``), as a measured or guessed PSF often is. The blur stays true.
        Draws nothing from the generator when the share is 0, so such runs repeat older ones."""
        c = self.config
        if c.kernel_error_share <= 0:
            return kernels
        wrong = self.rng.uniform(size=len(kernels)) < c.kernel_error_share
        if tuple(c.kernel_error_kinds) == ("wide",):
            sigmas = self.rng.uniform(*c.kernel_error_sigma_range, size=len(kernels))
            given = widen_kernels(kernels, sigmas)
        else:
            kinds = self.rng.choice(list(c.kernel_error_kinds), size=len(kernels))
            given = perturb_kernels(kernels, kinds, self.rng, c.kernel_error_sigma_range)
        return torch.where(torch.from_numpy(wrong).view(-1, 1, 1).to(kernels.device), given, kernels)


def blur_valid(big: torch.Tensor, kernels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Blur ``(B, H + k - 1, W + k - 1)`` crops by *valid* convolution, one ``k x k`` kernel each.

    Returns the sharp centres and their blurred versions, each ``(B, 1, H, W)``:
    as in a camera, content from beyond the frame bleeds in.
    """
    margin = kernels.shape[-1] // 2
    sharp = big[:, None, margin:-margin, margin:-margin]
    # One kernel per crop (groups), flipped for convolution.
    blurred = F.conv2d(big[None], kernels.flip(-2, -1)[:, None], groups=len(big))[0][:, None]
    return sharp, blurred


def interior_masks(kernels: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """``(B, 1, H, W)`` float masks: 1 at least one kernel width from the frame.

    The width is the extent of the kernel's support (:data:`SUPPORT_THRESHOLD`),
    the border that the benchmark leaves out of its scores: near the frame the
    blur mixes in content from beyond it, which no deconvolution recovers.
    The border is at most a quarter of the crop's shorter side, so that no
    mask is empty.
    """
    support = kernels > SUPPORT_THRESHOLD * kernels.flatten(1).amax(1).view(-1, 1, 1)
    rows = torch.arange(kernels.shape[-2], device=kernels.device)
    cols = torch.arange(kernels.shape[-1], device=kernels.device)

    def extent(along_rows: bool) -> torch.Tensor:
        occupied = support.any(dim=2 if along_rows else 1)  # (B, size)
        index = rows if along_rows else cols
        first = torch.where(occupied, index, index.numel()).amin(1)
        last = torch.where(occupied, index, -1).amax(1)
        return (last - first + 1).clamp_min(1)

    height, width = shape
    border = torch.maximum(extent(True), extent(False)).clamp_max(min(height, width) // 4)
    border = border.view(-1, 1, 1, 1)
    y = torch.arange(height, device=kernels.device).view(1, 1, -1, 1)
    x = torch.arange(width, device=kernels.device).view(1, 1, 1, -1)
    inside = (y >= border) & (y < height - border) & (x >= border) & (x < width - border)
    return inside.float()


def _crop_mse(x: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    squared = (x - reference).square()
    if mask is None:
        return squared.flatten(1).mean(1)
    return (squared * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1)


def restoration_loss(
    restored: torch.Tensor,
    sharp: torch.Tensor,
    interior: torch.Tensor | None = None,
    interior_weight: float = 0.0,
) -> torch.Tensor:
    """``LOG_MSE_WEIGHT`` x the mean over crops of ln(MSE) + ``SSIM_WEIGHT`` (1 - SSIM).

    The log of each crop's own MSE is minus its PSNR up to a constant, so the
    loss asks for the same gain in dB on every crop: a clean smooth crop
    (40 dB) counts as much as a noisy textured one (25 dB). A plain L1 over
    the batch weights each crop by its absolute error, and so barely sees
    the smooth ones.

    With ``interior`` masks (:func:`interior_masks`) and an ``interior_weight``
    w > 0, the log term is ``(1 - w) ln(MSE) + w ln(MSE inside the mask)``:
    near the frame the error of a large kernel is big and cannot be undone,
    and in the whole-crop MSE it drowns the interior, where the network can
    still win decibels.
    """
    log_mse = torch.log(_crop_mse(restored, sharp) + LOG_MSE_FLOOR)
    if interior is not None and interior_weight > 0:
        log_interior = torch.log(_crop_mse(restored, sharp, interior) + LOG_MSE_FLOOR)
        log_mse = (1 - interior_weight) * log_mse + interior_weight * log_interior
    return LOG_MSE_WEIGHT * log_mse.mean() + SSIM_WEIGHT * (1 - ssim(restored, sharp))


NO_PROCEDURAL_POOLS = {
    "n_textures": 0,
    "texture_fraction": 0.0,
    "n_point_fields": 0,
    "point_field_fraction": 0.0,
    "n_text_pages": 0,
    "text_fraction": 0.0,
    "kernel_error_share": 0.0,
    "blind_share": 0.0,
}
"""Photos and dead leaves with true kernels only: the validation mix whatever a run's own shares."""

VALIDATION_SOURCES = {
    None: {},
    "textures": {"n_textures": VALIDATION_TEXTURES, "texture_fraction": 1.0},
    "point_fields": {"n_point_fields": VALIDATION_POINT_FIELDS, "point_field_fraction": 1.0},
}
"""What each validation set draws from, on top of :data:`NO_PROCEDURAL_POOLS`
(:func:`validation_batches`)."""


def validation_batches(
    config: WienerNetTrainingConfig, device: torch.device, only: str | None = None
) -> list:
    """Held-out batches of the train sources (seed ``config.seed + 1000``), the same for every run.

    Always with the default kernel mixture, so that runs with another
    ``shake_fraction`` are scored on the same crops; whatever the run's
    source mix, the crops come from photos and dead leaves, or ``only`` from
    procedural textures (``"textures"``, :data:`VALIDATION_TEXTURES` of them)
    or from point-source fields (``"point_fields"``,
    :data:`VALIDATION_POINT_FIELDS`), drawn with the held-out seed; the
    network is always handed the true kernels (``kernel_error_share`` 0).
    """
    default = WienerNetTrainingConfig()
    sources = {**NO_PROCEDURAL_POOLS, **VALIDATION_SOURCES[only]}
    mix = replace(config, shake_fraction=default.shake_fraction, **sources)
    source = BlurredBatches(mix, config.seed + 1000, device)
    return [source.draw() for _ in range(config.validation_batches)]


def restore_batch(
    model: WienerNet,
    blurred: torch.Tensor,
    kernels: torch.Tensor,
    snrs: torch.Tensor,
    residual_correction: bool = False,
    passes: int = 1,
) -> torch.Tensor:
    """The network's output, in the input's intensity scale (then corrected, as the engine does, if asked).

    ``passes`` > 1 averages the network over that many flipped or turned views, as the engine's
    ``ensemble`` does (:func:`~napari_deblur.engine.methods.wiener_net.apply_network_ensemble`); gradients
    flow through every view, so a stage trained so learns for the averaged pipeline.
    """
    with torch.no_grad():
        features, mean, scale = wiener_net_features(blurred, kernels, snrs)
    restored = apply_network_ensemble(model, features, passes) * scale + mean
    return correct_by_residual(blurred, restored, kernels) if residual_correction else restored


def nearest_snr_index(scale: torch.Tensor, noise: torch.Tensor, snrs_db: torch.Tensor) -> torch.Tensor:
    """Index of the stack SNR nearest to ``10 log10(signal var / noise var)``, shape ``(B,)``."""
    noise_var = noise.flatten().square().clamp_min(1e-12)
    signal_var = (scale.flatten().square() - noise_var).clamp_min(1e-3 * scale.flatten().square())
    snr = 10.0 * torch.log10(signal_var / noise_var)
    return (snr[:, None] - snrs_db[None, :].to(snr)).abs().argmin(dim=1)


def classical_psnrs(
    blurred: torch.Tensor, kernels: torch.Tensor, sharp: torch.Tensor, snrs: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per crop, the PSNRs of Wiener filters from the stack, each shape ``(B,)``.

    ``oracle``: the member with the best SNR for the crop, chosen by the answer
    (the classical method the benchmark compares against). ``estimated``: the
    member nearest the SNR estimated from the crop itself (``var / noise^2``),
    a classical method with nothing tuned. ``oracle_interior``: the best
    member scored, and chosen, without a kernel-wide border
    (:func:`interior_masks`), as the benchmark scores.
    """
    stack = wiener_filter(blurred, kernels, snrs)[:, :, 0]
    interior = interior_masks(kernels, sharp.shape[-2:])
    members = [stack[:, i : i + 1] for i in range(stack.shape[1])]
    scores = torch.stack([crop_psnr(member, sharp) for member in members], dim=1)
    inner = torch.stack([crop_psnr(member, sharp, interior) for member in members], dim=1)
    _, scale, noise = plane_statistics(blurred)
    pick = nearest_snr_index(scale, noise, snrs)
    return {
        "oracle": scores.amax(dim=1),
        "estimated": scores[torch.arange(len(pick)), pick],
        "oracle_interior": inner.amax(dim=1),
    }


def crop_psnr(x: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """PSNR (peak 1) of each crop of ``(B, 1, H, W)`` batches, ``x`` clipped to [0, 1]; shape ``(B,)``.

    With ``mask``, over the pixels where it is 1.
    """
    return 10 * torch.log10(1.0 / _crop_mse(x.clamp(0, 1), reference, mask).clamp_min(1e-12))


def train_wiener_net(config: WienerNetTrainingConfig, out_path: Path) -> WienerNet:
    """Train (from scratch, or on from ``config.init``) and save the weights to ``out_path``."""
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    snrs = torch.tensor(WIENER_STACK_SNRS_DB, dtype=torch.float32, device=device)
    batches = BlurredBatches(config, config.seed, device)
    validation = validation_batches(config, device)
    extra_validation = {
        "smooth_": validation_batches(replace(config, smooth_fraction=1.0), device),
        "texture_": validation_batches(config, device, only="textures"),
        "points_": validation_batches(config, device, only="point_fields"),
    }
    model = WienerNet(widths=tuple(config.widths))
    if config.init:
        model.load_state_dict(torch.load(config.init, map_location="cpu", weights_only=True))
    model = model.to(device, memory_format=torch.channels_last)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.learning_rate, total_steps=config.steps, pct_start=0.05
    )
    started = time.perf_counter()
    running, logged_step = 0.0, 0

    def log_validation(step: int, train_loss: float) -> None:
        entry = evaluate(model, validation, snrs, config.residual_correction, config.network_passes)
        for prefix, batches_of_set in extra_validation.items():
            scores = evaluate(model, batches_of_set, snrs, config.residual_correction, config.network_passes)
            entry.update(
                {
                    prefix + k: scores[k]
                    for k in (
                        "psnr_net",
                        "psnr_oracle",
                        "lost_to_oracle",
                        "psnr_net_interior",
                        "psnr_oracle_interior",
                        "lost_interior",
                    )
                }
            )
        entry.update(step=step, train_loss=train_loss, minutes=(time.perf_counter() - started) / 60)
        config.history.append(entry)
        logger.info(
            "step %d: train loss %.4f, val PSNR net %.2f / oracle Wiener %.2f / base %.2f"
            " / blurred %.2f, interior net %.2f / oracle %.2f; smooth sources: net %.2f /"
            " oracle %.2f, interior net %.2f / oracle %.2f; textures: interior net %.2f /"
            " oracle %.2f; point sources: interior net %.2f / oracle %.2f",
            step,
            train_loss,
            entry["psnr_net"],
            entry["psnr_oracle"],
            entry["psnr_base"],
            entry["psnr_blurred"],
            entry["psnr_net_interior"],
            entry["psnr_oracle_interior"],
            entry["smooth_psnr_net"],
            entry["smooth_psnr_oracle"],
            entry["smooth_psnr_net_interior"],
            entry["smooth_psnr_oracle_interior"],
            entry["texture_psnr_net_interior"],
            entry["texture_psnr_oracle_interior"],
            entry["points_psnr_net_interior"],
            entry["points_psnr_oracle_interior"],
        )

    if config.init:  # the starting point, for comparison
        log_validation(0, float("nan"))
    for step in range(1, config.steps + 1):
        sharp, blurred, kernels = batches.draw()
        restored = restore_batch(
            model, blurred, kernels, snrs, config.residual_correction, config.network_passes
        )
        interior = interior_masks(kernels, sharp.shape[-2:]) if config.interior_weight else None
        loss = restoration_loss(restored, sharp, interior, config.interior_weight)
        running += take_step(loss, model, optimiser, schedule)
        if step % config.log_every == 0 or step == config.steps:
            log_validation(step, running / (step - logged_step))
            running, logged_step = 0.0, step
            out_path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), out_path)
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, out_path)
    return model


def evaluate(model: WienerNet, validation, snrs, residual_correction: bool = False, passes: int = 1) -> dict:
    """Validation PSNRs (means over crops) of the network and of the references.

    ``psnr_oracle`` is the Wiener filter with the best of the stack's SNRs for
    each crop, the classical method the benchmark compares against;
    ``lost_to_oracle`` is the share of crops where the network scores lower.
    The ``_interior`` measures leave out a kernel-wide border
    (:func:`interior_masks`), as the benchmark does.
    """
    model.eval()
    scores = {
        key: []
        for key in (
            "psnr_net",
            "psnr_oracle",
            "psnr_base",
            "psnr_blurred",
            "psnr_net_interior",
            "psnr_oracle_interior",
        )
    }
    with torch.no_grad():
        for sharp, blurred, kernels in validation:
            classical = classical_psnrs(blurred, kernels, sharp, snrs)
            restored = restore_batch(model, blurred, kernels, snrs, residual_correction, passes)
            interior = interior_masks(kernels, sharp.shape[-2:])
            scores["psnr_net"].append(crop_psnr(restored, sharp))
            scores["psnr_oracle"].append(classical["oracle"])
            scores["psnr_base"].append(classical["estimated"])
            scores["psnr_blurred"].append(crop_psnr(blurred, sharp))
            scores["psnr_net_interior"].append(crop_psnr(restored, sharp, interior))
            scores["psnr_oracle_interior"].append(classical["oracle_interior"])
    model.train()
    per_crop = {k: torch.cat(v) for k, v in scores.items()}
    summary = {k: float(v.mean()) for k, v in per_crop.items()}
    summary["lost_to_oracle"] = float((per_crop["psnr_net"] < per_crop["psnr_oracle"]).float().mean())
    summary["lost_interior"] = float(
        (per_crop["psnr_net_interior"] < per_crop["psnr_oracle_interior"]).float().mean()
    )
    return summary
