"""Training data and loop of the blur-map estimator (:mod:`napari_deblur.engine.methods.blur_map`).

Data (all seeded)
-----------------
- **Sharp crops** from :class:`~training.sources.PatchSampler`:
  procedural dead leaves and the train split of scikit-image's images (never
  the eval split). Natural images of at least twice the crop size are used at
  half resolution (2x2 means), which makes their own residual blur small
  against the labels; and, in ``texture_fraction`` of the crops, stationary
  procedural textures (fractal noise, flat-level blobs, Voronoi cells,
  gratings; :func:`~training.sources.procedural_texture`),
  where blur shows only in how the spectrum falls off.
- **Blur**: Gaussian, disk or ring (one kind per crop, the models of Nasonov
  et al.) with a blur-level map over the crop: uniform, a ramp, a sinusoid,
  piecewise-constant Voronoi regions or a smooth random field, levels in
  ``[0, MAX_TRAIN_LEVEL]`` px.
- **Cheap spatially varying blur**: each crop is blurred once per level of a
  fixed grid (:data:`STACK_LEVELS`, 13 levels) by one batched real FFT and
  transfer-function products (a "level stack"); each pixel then mixes the
  two grid levels around its own level ``L``, ``(1 - w) y_k + w y_{k+1}``
  with ``w = (L^2 - l_k^2) / (l_{k+1}^2 - l_k^2)``. That mixture is the image
  blurred by the kernel ``(1 - w) h_k + w h_{k+1}``, whose second moment, and
  so whose blur level, is exactly ``L``.
- **Labels**: the blur level of each pixel in the project's unit,
  :func:`~napari_deblur.engine.psf_blur_level` of the discrete kernel (the
  grid kernels are calibrated so that their measured level is the grid
  level), as ``log(1 + L / LEVEL_OFFSET)``.
- **Noise**: Gaussian with a variance drawn in [0, 10] on a 0..255 scale;
  in ``poisson_fraction`` of the crops Poisson-Gaussian (photon peak
  log-uniform in ``poisson_peak_range``).

The crops are cut larger than the patch by :data:`MARGIN` px on every side
and blurred circularly; the margin (wider than every kernel's reach) is
thrown away, so the patch sees real content beyond its frame.

Loss: L1 on the log target over all pixels (flat areas included: there the
network must take the level from the context).
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
    BlurMapNet,
    blur_map_features,
    level_to_target,
    predict_log_level,
    target_to_level,
)
from napari_deblur.engine.physics.fourier import kernel_to_otf
from napari_deblur.engine.physics.psf import disk_psf, gaussian_psf, psf_blur_level, ring_psf
from training.baselines import PaperBlurNet
from training.optimisation import take_step
from training.sources import PatchSampler, train_split_images

logger = logging.getLogger(__name__)

BLUR_KINDS = ("gaussian", "disk", "ring")
MAP_KINDS = ("uniform", "ramp", "sinusoid", "voronoi", "field")
MAX_TRAIN_LEVEL = 6.0
STACK_LEVELS = (0.0, 0.3, 0.6, 0.9, 1.25, 1.6, 2.0, 2.5, 3.0, 3.6, 4.3, 5.1, 6.0)
"""Grid of the level stack (px)."""
MARGIN = 24
"""Context around each patch (px): the reach of a Gaussian of level 6 at 4 sigma."""


def _build(kind: str, parameter: float) -> np.ndarray:
    if kind == "gaussian":
        return gaussian_psf(parameter)
    if kind == "disk":
        return disk_psf(parameter)
    return ring_psf(parameter)


def calibrated_psf(kind: str, level: float) -> tuple[np.ndarray, float]:
    """A PSF of ``kind`` whose measured blur level is as close as possible to ``level``.

    Searches the kernel's parameter (Gaussian sigma, disk or ring radius) on
    a fine grid around the continuous relation, because sub-pixel kernels
    measure differently from their nominal size.

    Returns
    -------
    psf : numpy.ndarray, float32
    measured : float
        Its :func:`psf_blur_level`.
    """
    if level <= 0:
        return np.ones((1, 1), np.float32), 0.0
    nominal = {"gaussian": 1.0, "disk": 2.0, "ring": 1.0 / 0.574}[kind] * level
    best = None
    for parameter in np.linspace(0.5 * nominal, 1.6 * nominal + 0.6, 200):
        kernel = _build(kind, float(parameter))
        measured = psf_blur_level(kernel)
        if best is None or abs(measured - level) < abs(best[1] - level):
            best = (kernel, measured)
    return best


@dataclass
class BlurMapTrainingConfig:
    """Settings of one training run (all recorded in the report)."""

    steps: int = 7200
    batch: int = 16
    patch: int = 160
    baseline: bool = False
    baseline_patch: int = 64
    learning_rate: float = 2e-3
    seed: int = 0
    n_dead_leaves: int = 120
    dead_leaves_fraction: float = 0.3
    n_textures: int = 120
    texture_fraction: float = 0.25
    n_text_pages: int = 0
    text_fraction: float = 0.0
    noise_variance_range: tuple[float, float] = (0.0, 10.0)  # on a 0..255 scale
    poisson_fraction: float = 0.2
    poisson_peak_range: tuple[float, float] = (20.0, 2000.0)
    validation_batches: int = 6
    log_every: int = 300
    threads: int = 0
    device: str = "cpu"
    stopped_at: int | None = None
    history: list = field(default_factory=list)


def _half_resolution(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    return image[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)).astype(np.float32)


class LevelMaps:
    """Random blur-level maps ``(S, S)`` (px) of the five kinds of :data:`MAP_KINDS`."""

    def __init__(self, size: int, rng: np.random.Generator):
        self.size = size
        self.rng = rng
        self.rows, self.cols = np.mgrid[0:size, 0:size].astype(np.float32) / size

    def level(self, count=None):
        """Levels: half uniform in [0, 6], half in [0, 3] (where most photos are), 5 % exactly 0."""
        rng = self.rng
        n = 1 if count is None else count
        top = np.where(rng.uniform(size=n) < 0.5, MAX_TRAIN_LEVEL, 3.0)
        values = rng.uniform(0, 1, n) * top
        values[rng.uniform(size=n) < 0.05] = 0.0
        return float(values[0]) if count is None else values

    def draw(self, kind: str) -> np.ndarray:
        rng, s = self.rng, self.size
        if kind == "uniform":
            return np.full((s, s), self.level(), np.float32)
        angle = rng.uniform(0, 2 * np.pi)
        along = self.rows * np.sin(angle) + self.cols * np.cos(angle)
        if kind == "ramp":
            lo, hi = self.level(), self.level()
            width = rng.uniform(0.3, 1.5)
            start = rng.uniform(along.min() - 0.3 * width, along.max() - 0.7 * width)
            t = np.clip((along - start) / width, 0, 1)
            return (lo + (hi - lo) * t).astype(np.float32)
        if kind == "sinusoid":
            centre = rng.uniform(0.3, MAX_TRAIN_LEVEL - 0.3)
            amplitude = rng.uniform(0.2, 1.0) * min(centre, MAX_TRAIN_LEVEL - centre)
            period = rng.uniform(0.5, 2.0)
            phase = rng.uniform(0, 2 * np.pi)
            return (centre + amplitude * np.sin(2 * np.pi * along / period + phase)).astype(np.float32)
        if kind == "voronoi":
            n = int(rng.integers(2, 7))
            seeds = rng.uniform(0, 1, (n, 2)).astype(np.float32)
            distance = (self.rows[None] - seeds[:, 0, None, None]) ** 2 + (
                self.cols[None] - seeds[:, 1, None, None]
            ) ** 2
            return self.level(n).astype(np.float32)[np.argmin(distance, axis=0)]
        if kind == "field":
            grid = int(rng.integers(3, 9))
            coarse = torch.from_numpy(rng.normal(size=(1, 1, grid, grid)).astype(np.float32))
            smooth = F.interpolate(coarse, size=(s, s), mode="bicubic", align_corners=True)[0, 0].numpy()
            smooth = (smooth - smooth.min()) / max(float(np.ptp(smooth)), 1e-6)
            lo, hi = sorted((self.level(), self.level()))
            return (lo + (hi - lo) * smooth).astype(np.float32)
        raise ValueError(f"unknown map kind {kind!r}")


class BlurMapBatches:
    """Seeded generator of (features, target level, sharp-structure weight) training batches."""

    def __init__(
        self,
        config: BlurMapTrainingConfig,
        seed: int,
        device: torch.device,
        n_dead_leaves: int | None = None,
        n_textures: int | None = None,
        map_kinds: tuple[str, ...] = MAP_KINDS,
        native_resolution: bool = False,
        n_text_pages: int | None = None,
    ):
        self.config = config
        self.map_kinds = map_kinds
        self.device = device
        self.rng = np.random.default_rng(seed)
        big = config.patch + 2 * MARGIN
        self.big = big
        n_dead_leaves = config.n_dead_leaves if n_dead_leaves is None else n_dead_leaves
        n_textures = config.n_textures if n_textures is None else n_textures
        n_text_pages = config.n_text_pages if n_text_pages is None else n_text_pages
        self.sampler = PatchSampler(
            big,
            self.rng,
            n_dead_leaves=n_dead_leaves,
            dead_leaves_fraction=config.dead_leaves_fraction,
            n_textures=n_textures,
            texture_fraction=config.texture_fraction,
            n_text_pages=n_text_pages,
            text_fraction=config.text_fraction,
        )
        natural = []
        for image in train_split_images():
            half = _half_resolution(image)
            if min(half.shape) >= big and not native_resolution:
                natural.append(half)
            elif min(image.shape) >= big:
                natural.append(image)
        self.sampler.natural = natural
        self.maps = LevelMaps(config.patch, self.rng)
        kernels, levels = [], []
        for kind in BLUR_KINDS:
            row = [calibrated_psf(kind, level) for level in STACK_LEVELS]
            kernels.append([k for k, _ in row])
            levels.append([m for _, m in row])
        self.grid_levels = torch.tensor(levels, dtype=torch.float32, device=device)  # (3, K)
        otfs = []
        for row in kernels:
            size = max(k.shape[0] for k in row)
            stack = np.zeros((len(row), size, size), np.float32)
            for i, k in enumerate(row):
                o = (size - k.shape[0]) // 2
                stack[i, o : o + k.shape[0], o : o + k.shape[1]] = k
            otfs.append(kernel_to_otf(torch.from_numpy(stack), (big, big)))
        self.otfs = torch.stack(otfs).to(device)  # (3, K, big, big // 2 + 1)

    def draw(self) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """One batch: features ``(B, 2, S, S)``, target levels ``(B, 1, S, S)`` px, and a description."""
        c, rng, device = self.config, self.rng, self.device
        s, m = c.patch, MARGIN
        sharp = torch.from_numpy(self.sampler.sample(c.batch)).to(device)
        blur_kinds = rng.integers(len(BLUR_KINDS), size=c.batch)
        map_kinds = np.array(
            [MAP_KINDS.index(self.map_kinds[k]) for k in rng.integers(len(self.map_kinds), size=c.batch)]
        )
        level_map = torch.from_numpy(np.stack([self.maps.draw(MAP_KINDS[k]) for k in map_kinds]))
        level_map = level_map.to(device).clamp(0, MAX_TRAIN_LEVEL)
        kinds = torch.from_numpy(blur_kinds).to(device)
        spectra = torch.fft.rfft2(sharp)[:, None] * self.otfs[kinds]
        stack = torch.fft.irfft2(spectra, s=(self.big, self.big))[..., m : m + s, m : m + s]
        grid = self.grid_levels[kinds]  # (B, K)
        # Level of each pixel between grid levels k and k+1; mixture weight exact in squared level.
        upper = torch.searchsorted(grid.contiguous(), level_map.flatten(1).contiguous(), right=True)
        upper = upper.clamp(1, grid.shape[1] - 1).view_as(level_map)
        lower = upper - 1
        lo_level = torch.gather(grid, 1, lower.flatten(1)).view_as(level_map)
        hi_level = torch.gather(grid, 1, upper.flatten(1)).view_as(level_map)
        level_map = torch.minimum(torch.maximum(level_map, lo_level), hi_level)
        weight = (level_map**2 - lo_level**2) / (hi_level**2 - lo_level**2).clamp_min(1e-6)
        y_lo = torch.gather(stack, 1, lower[:, None]).squeeze(1)
        y_hi = torch.gather(stack, 1, upper[:, None]).squeeze(1)
        blurred = ((1 - weight) * y_lo + weight * y_hi)[:, None]
        blurred = self._add_noise(blurred)
        features = blur_map_features(blurred)
        description = {
            "map_kinds": map_kinds,
            "blur_kinds": blur_kinds,
            "blurred": blurred,
            "sharp": sharp[:, None, m : m + s, m : m + s],
        }
        return features, level_map[:, None], description

    def _add_noise(self, blurred: torch.Tensor) -> torch.Tensor:
        c, rng = self.config, self.rng
        generator = torch.Generator(device="cpu").manual_seed(int(rng.integers(2**31)))
        variance = rng.uniform(*c.noise_variance_range, c.batch)
        sigma = torch.from_numpy(np.sqrt(variance) / 255.0).float().view(-1, 1, 1, 1).to(blurred.device)
        poisson = rng.uniform(size=c.batch) < c.poisson_fraction
        if poisson.any():
            peaks = np.exp(rng.uniform(*np.log(c.poisson_peak_range), c.batch))
            peak = torch.from_numpy(peaks).float().view(-1, 1, 1, 1).to(blurred.device)
            counts = torch.poisson((blurred.clamp_min(0) * peak).cpu(), generator=generator)
            mask = torch.from_numpy(poisson).view(-1, 1, 1, 1).to(blurred.device)
            blurred = torch.where(mask, counts.to(blurred.device) / peak, blurred)
        noise = torch.randn(blurred.shape, generator=generator).to(blurred.device)
        return blurred + sigma * noise


def _random_subcrop(
    features: torch.Tensor, levels: torch.Tensor, size: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random ``size`` crop per batch item (features are computed on the whole patch first)."""
    full = features.shape[-1]
    if size >= full:
        return features, levels
    out_f, out_l = [], []
    for i in range(features.shape[0]):
        y, x = rng.integers(full - size + 1, size=2)
        out_f.append(features[i, :, y : y + size, x : x + size])
        out_l.append(levels[i, :, y : y + size, x : x + size])
    return torch.stack(out_f), torch.stack(out_l)


def train_blur_map(config: BlurMapTrainingConfig, out_path: Path) -> torch.nn.Module:
    """Train :class:`BlurMapNet` (or, with ``config.baseline``, :class:`PaperBlurNet`) from scratch.

    Saves the weights to ``out_path`` (CPU tensors) and appends validation
    entries to ``config.history``.
    """
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    batches = BlurMapBatches(config, config.seed, device)
    validation_source = BlurMapBatches(
        config,
        config.seed + 1000,
        device,
        n_dead_leaves=max(1, config.n_dead_leaves // 4),
        n_textures=config.n_textures // 4,
        n_text_pages=config.n_text_pages // 4,
    )
    validation = [validation_source.draw() for _ in range(config.validation_batches)]
    crop_rng = np.random.default_rng(config.seed + 7)
    model = (PaperBlurNet() if config.baseline else BlurMapNet()).to(
        device, memory_format=torch.channels_last
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser,
        max_lr=config.learning_rate,
        total_steps=config.steps,
        pct_start=max(0.05, 2.0 / config.steps),
    )
    started = time.perf_counter()
    running, data_seconds = 0.0, 0.0
    step = 0
    try:
        for step in range(1, config.steps + 1):
            running, data_seconds = _train_step(
                config,
                model,
                optimiser,
                schedule,
                batches,
                crop_rng,
                validation,
                step,
                running,
                data_seconds,
                started,
                out_path,
            )
    except KeyboardInterrupt:  # Ctrl-C: keep what has been learnt so far, say so in the report
        config.stopped_at = step
        logger.warning("interrupted at step %d of %d; saving the weights as they are", step, config.steps)
        entry = {"step": step, "train_loss": float("nan")}
        entry.update(evaluate(model, validation))
        entry["minutes"] = (time.perf_counter() - started) / 60
        entry["data_share"] = data_seconds / (time.perf_counter() - started)
        config.history.append(entry)
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, out_path)
    return model


def _train_step(
    config,
    model,
    optimiser,
    schedule,
    batches,
    crop_rng,
    validation,
    step,
    running,
    data_seconds,
    started,
    out_path,
):
    """One optimisation step (plus validation and a checkpoint every ``log_every`` steps)."""
    t0 = time.perf_counter()
    with torch.no_grad():
        features, levels, _ = batches.draw()
        if config.baseline:
            features, levels = _random_subcrop(features, levels, config.baseline_patch, crop_rng)
    data_seconds += time.perf_counter() - t0
    prediction = predict_log_level(model, features)
    loss = (prediction - level_to_target(levels)).abs().mean()
    running += take_step(loss, model, optimiser, schedule)
    if step % config.log_every == 0 or step == config.steps:
        n = config.log_every if step % config.log_every == 0 else step % config.log_every
        entry = {"step": step, "train_loss": running / n}
        entry.update(evaluate(model, validation))
        entry["minutes"] = (time.perf_counter() - started) / 60
        entry["data_share"] = data_seconds / (time.perf_counter() - started)
        running = 0.0
        config.history.append(entry)
        logger.info(
            "step %d: train L1(log) %.4f, val MAE %.3f px, RMSE %.3f px (%.1f min)",
            step,
            entry["train_loss"],
            entry["val_mae_px"],
            entry["val_rmse_px"],
            entry["minutes"],
        )
        out_path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, out_path)
    return running, data_seconds


def _textured(blurred: torch.Tensor) -> torch.Tensor:
    """Pixels whose gradient magnitude (central differences) is at least the crop's median."""
    gy = F.pad(blurred[..., 2:, :] - blurred[..., :-2, :], (0, 0, 1, 1), mode="replicate")
    gx = F.pad(blurred[..., :, 2:] - blurred[..., :, :-2], (1, 1, 0, 0), mode="replicate")
    magnitude = (gy.square() + gx.square()).sqrt()
    return magnitude >= magnitude.flatten(1).median(dim=1).values.view(-1, 1, 1, 1)


def evaluate(model: torch.nn.Module, validation, ensemble: int = 1, *, bfloat16: bool = False) -> dict:
    """Validation metrics on fixed batches of held-out crops of the train sources.

    ``val_l1_log``: the loss; ``val_mae_px``, ``val_rmse_px``: errors of the
    level in px over all pixels; ``val_rmse_textured_px``: over the half of
    the pixels with the largest gradient magnitude of the blurred crop (per
    crop); ``val_mae_uniform_px`` / ``val_mae_varying_px``: by map kind.
    ``ensemble``, ``bfloat16``: as in :func:`~napari_deblur.engine.methods.blur_map.predict_log_level`.
    """
    model.eval()
    sums = {
        "l1": 0.0,
        "abs": 0.0,
        "sq": 0.0,
        "n": 0,
        "sq_tex": 0.0,
        "n_tex": 0,
        "abs_u": 0.0,
        "n_u": 0,
        "abs_v": 0.0,
        "n_v": 0,
    }
    with torch.no_grad():
        for features, levels, description in validation:
            prediction = predict_log_level(model, features, ensemble, bfloat16=bfloat16)
            sums["l1"] += float((prediction - level_to_target(levels)).abs().mean()) * levels.numel()
            error = target_to_level(prediction) - levels
            sums["abs"] += float(error.abs().sum())
            sums["sq"] += float(error.square().sum())
            sums["n"] += error.numel()
            textured = _textured(description["blurred"])
            sums["sq_tex"] += float(error.square()[textured].sum())
            sums["n_tex"] += int(textured.sum())
            uniform = torch.from_numpy(description["map_kinds"] == 0).to(error.device)
            per_item = error.abs().flatten(1).mean(1)
            sums["abs_u"] += float(per_item[uniform].sum())
            sums["n_u"] += int(uniform.sum())
            sums["abs_v"] += float(per_item[~uniform].sum())
            sums["n_v"] += int((~uniform).sum())
    model.train()
    return {
        "val_l1_log": sums["l1"] / sums["n"],
        "val_mae_px": sums["abs"] / sums["n"],
        "val_rmse_px": math.sqrt(sums["sq"] / sums["n"]),
        "val_rmse_textured_px": math.sqrt(sums["sq_tex"] / max(sums["n_tex"], 1)),
        "val_mae_uniform_px": sums["abs_u"] / max(sums["n_u"], 1),
        "val_mae_varying_px": sums["abs_v"] / max(sums["n_v"], 1),
    }
