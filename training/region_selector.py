"""Labels and training loop of the region selector (:mod:`napari_deblur.engine.methods.region_selector`).

Labels (after Yang, Wu & Sun): synthetic blurred images are cut into windows
on a grid, the engine's blind estimator (:func:`~napari_deblur.engine.estimate_psf`)
runs on each window, and a window is *good* (label 1) when its estimate has
kernel similarity (:func:`~napari_deblur.engine.kernel_similarity`) of at
least :data:`~napari_deblur.engine.methods.region_selector.GOOD_SIMILARITY` to the true
kernel.

Each blurred image is a crop of a train-split image or of a procedural
dead-leaves image (random turn, flip and contrast), blurred by *valid*
convolution of a larger crop (content from beyond the frame bleeds in, as in a
camera) with one kernel -- camera shake (:func:`random_motion_psf`), Gaussian
or defocus disk, up to :data:`MAX_KERNEL` px -- plus white Gaussian noise. The
estimator is given an odd kernel size between the true one and
``estimate_size_max`` (31 px: what a user who does not know the blur would ask
for), so the labels cover both a tight and a generous kernel size.

Estimation is the slow part (about 0.3-1 s per window on one core), so the
labelled images are cached in an ``.npz`` (resumed where a previous run
stopped; its name holds a hash of the data settings) and retraining the
network reuses them. Whole images, not windows, are held out for validation,
and for those the estimate from the whole image is cached too, so the report
can compare the selector's best window with the whole image and with a
random window.

Everything is seeded: image ``i`` is drawn from ``default_rng([seed, i])``.
The evaluation split is never loaded (:mod:`.sources`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F
from scipy.signal import fftconvolve
from scipy.stats import rankdata

from napari_deblur.engine.methods.blind_psf import (
    SHIPPED_SETTINGS,
    EstimatorSettings,
    estimate_psf,
    kernel_similarity,
)
from napari_deblur.engine.methods.region_selector import RegionSelectorNet, score_windows, window_features
from napari_deblur.engine.physics.psf import disk_psf, gaussian_psf, random_motion_psf
from training.kernels import embed
from training.sources import dead_leaves, train_split_images

logger = logging.getLogger(__name__)

MAX_KERNEL = 25
"""Largest true kernel side (px); kernels are stored embedded in this square."""

LABEL_VERSION = 4
"""Bumped when the label recipe changes (part of the cache name)."""

KERNEL_KINDS = ("motion", "gaussian", "disk")

LABEL_ESTIMATOR = EstimatorSettings(lambda_floor=1e-4, kernel_faint=0.05, negative_floor=0.0)
"""Settings of :mod:`~napari_deblur.engine.methods.blind_psf` the labels are made with.

The shipped selector learned which windows suit an earlier version of the
estimator, with a lower L0 floor, a cut of faint kernel values at 5 % of the
peak and no cut that follows the kernel's noise (``negative_floor``): these are
those values. Labels made with the
current estimator (``label_estimator=SHIPPED_SETTINGS``) gave a selector whose best window
succeeded less often (train-split check, seed 33: 68 % against 83 % at ER <= 3),
so the selector still ranks windows by the older estimator's success, while the
engine estimates the PSF with the current one."""


@dataclass
class RegionSelectorTrainingConfig:
    """Settings of one run (all recorded in the report)."""

    windows: int = 2400
    steps: int = 1200
    batch: int = 16
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    rank_weight: float = 1.0
    """Weight of the within-image ranking loss beside the classification loss (0: off)."""
    rank_images: int = 2
    """Images per step whose windows (all of them) feed the ranking loss."""
    rank_gap: float = 0.05
    """Two windows of one image form a ranking pair when their similarities differ by more."""
    seed: int = 0
    window: int = 192
    image_size: int = 384
    window_stride: int = 64
    estimate_size_max: int = 31
    """The estimator is given an odd kernel size drawn between the true side and this."""
    threshold: float = 0.75
    kind_weights: tuple[float, float, float] = (0.5, 0.25, 0.25)
    motion_size_range: tuple[int, int] = (7, MAX_KERNEL)
    gaussian_sigma_range: tuple[float, float] = (0.8, 4.0)
    disk_radius_range: tuple[float, float] = (1.5, 10.0)
    noise_sigma_range: tuple[float, float] = (0.005, 0.02)
    dead_leaves_fraction: float = 0.35
    composite_fraction: float = 0.5
    """Images made of two parts (a second crop or a plain area) so their windows differ."""
    validation_every: int = 7
    """Image ``i`` is held out when ``i % validation_every == validation_every // 2`` (~14 %)."""
    log_every: int = 250
    threads: int = 0
    workers: int = 1
    """Processes that make labels (each estimates on one thread); 1 = in this process."""
    device: str = "cpu"
    cache_dir: str | None = None
    label_estimator: EstimatorSettings = LABEL_ESTIMATOR
    """Estimator settings of the labels (:data:`LABEL_ESTIMATOR`; ``SHIPPED_SETTINGS``: as shipped)."""
    history: list = field(default_factory=list)
    data: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)

    def data_settings(self) -> dict:
        """The settings that define the labels (the cache key)."""
        keys = (
            "seed",
            "window",
            "image_size",
            "window_stride",
            "estimate_size_max",
            "threshold",
            "kind_weights",
            "motion_size_range",
            "gaussian_sigma_range",
            "disk_radius_range",
            "noise_sigma_range",
            "dead_leaves_fraction",
            "composite_fraction",
            "validation_every",
            "label_estimator",
        )
        settings = {key: getattr(self, key) for key in keys}
        settings["label_estimator"] = _estimator_key(self.label_estimator)
        settings["version"] = LABEL_VERSION
        return settings

    def is_validation(self, image_index: int) -> bool:
        """Whether image ``image_index`` is held out for validation."""
        return image_index % self.validation_every == self.validation_every // 2

    @property
    def window_offsets(self) -> list[int]:
        return list(range(0, self.image_size - self.window + 1, self.window_stride))

    @property
    def windows_per_image(self) -> int:
        return len(self.window_offsets) ** 2


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/napari-deblur`` (``~/.cache/napari-deblur`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "napari-deblur"


_ESTIMATOR_KEY_NAMES = {
    "lambda_floor": "LAMBDA_FLOOR",
    "kernel_faint": "KERNEL_FAINT",
    "negative_floor": "KERNEL_NEGATIVE_FLOOR",
    "sharpening_power": "KERNEL_SHARPENING_POWER",
}


def _estimator_key(settings: EstimatorSettings) -> dict[str, float]:
    """The settings that differ from the shipped ones, by blind_psf's constant names (cache key)."""
    return {
        _ESTIMATOR_KEY_NAMES[f.name]: getattr(settings, f.name)
        for f in fields(settings)
        if getattr(settings, f.name) != getattr(SHIPPED_SETTINGS, f.name)
    }


def cache_path(config: RegionSelectorTrainingConfig) -> Path:
    settings = json.dumps(config.data_settings(), sort_keys=True)
    digest = hashlib.sha1(settings.encode()).hexdigest()[:10]
    folder = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    return folder / f"region_selector_labels_{digest}.npz"


# --- one labelled image -------------------------------------------------------------------


def random_label_kernel(
    rng: np.random.Generator, config: RegionSelectorTrainingConfig
) -> tuple[np.ndarray, str]:
    """A true kernel (odd side <= :data:`MAX_KERNEL`) and its kind."""
    kind = KERNEL_KINDS[rng.choice(len(KERNEL_KINDS), p=np.asarray(config.kind_weights))]
    if kind == "motion":
        low, high = config.motion_size_range
        size = 2 * int(rng.integers(low // 2, high // 2 + 1)) + 1
        kernel = random_motion_psf(size, rng=rng)
    elif kind == "gaussian":
        sigma = rng.uniform(*config.gaussian_sigma_range)
        kernel = gaussian_psf(sigma, size=min(2 * math.ceil(3 * sigma) + 1, MAX_KERNEL))
    else:
        radius = rng.uniform(*config.disk_radius_range)
        kernel = disk_psf(radius, size=min(2 * math.ceil(radius) + 1, MAX_KERNEL))
    return np.asarray(kernel, np.float32), kind


def _plain_area(rng: np.random.Generator, side: int) -> np.ndarray:
    """A faint low-frequency field: sky, background, a wall out of focus."""
    field = ndi.gaussian_filter(rng.standard_normal((side, side)), sigma=side / 6, mode="wrap")
    field = (field - field.mean()) / (field.std() + 1e-12)
    return rng.uniform(0.05, 0.95) + rng.uniform(0.0, 0.04) * field


def _part_mask(rng: np.random.Generator, side: int) -> np.ndarray:
    """About 1 on a random part of the square and 0 on the rest, with softened borders."""
    field = ndi.gaussian_filter(rng.standard_normal((side, side)), sigma=side / 5)
    inside = field > np.quantile(field, rng.uniform(0.3, 0.7))
    return ndi.gaussian_filter(inside.astype(np.float64), 1.5)


def _sharp_crop(
    rng: np.random.Generator, side: int, natural: list[np.ndarray], config: RegionSelectorTrainingConfig
) -> tuple[np.ndarray, str]:
    """A sharp square: one crop, or (``composite_fraction``) a crop merged with a second
    crop or a plain area along a random smooth border, so that the windows of one image
    differ in how much they show of the blur."""
    image, source = _single_crop(rng, side, natural, config)
    if rng.uniform() >= config.composite_fraction:
        return image, source
    if rng.uniform() < 0.5:
        other, other_source = _plain_area(rng, side), "plain"
    else:
        other, other_source = _single_crop(rng, side, natural, config)
    mask = _part_mask(rng, side)
    return image * mask + other * (1.0 - mask), f"{source}+{other_source}"


def _single_crop(
    rng: np.random.Generator, side: int, natural: list[np.ndarray], config: RegionSelectorTrainingConfig
) -> tuple[np.ndarray, str]:
    if not natural or rng.uniform() < config.dead_leaves_fraction:
        image, source = dead_leaves(side, rng), "dead_leaves"
    else:
        index = int(rng.integers(len(natural)))
        full = natural[index]
        y = int(rng.integers(full.shape[0] - side + 1))
        x = int(rng.integers(full.shape[1] - side + 1))
        image, source = full[y : y + side, x : x + side], f"train{index}"
    image = np.rot90(image, int(rng.integers(4)))
    if rng.uniform() < 0.5:
        image = image[:, ::-1]
    contrast = rng.uniform(0.5, 1.0)
    return image * contrast + rng.uniform(0, 1 - contrast), source


def blurred_image(index: int, natural: list[np.ndarray], config: RegionSelectorTrainingConfig) -> dict:
    """What image ``index`` of the labels draws: its blurred, noisy pixels (real boundaries), the
    true kernel and its kind, the sharp source, the noise level and the size the estimator is given."""
    rng = np.random.default_rng([config.seed, index])
    kernel, kind = random_label_kernel(rng, config)
    side = kernel.shape[0]
    sharp, source = _sharp_crop(rng, config.image_size + side - 1, natural, config)
    blurred = fftconvolve(sharp, kernel, mode="valid").astype(np.float32)  # real boundaries
    noise = rng.uniform(*config.noise_sigma_range)
    blurred += (noise * rng.standard_normal(blurred.shape)).astype(np.float32)
    smallest = max(side, 7)
    extra_steps = max(config.estimate_size_max - smallest, 0) // 2
    estimate_size = smallest + 2 * int(rng.integers(0, extra_steps + 1))
    return {
        "blurred": blurred,
        "kernel": kernel,
        "kind": kind,
        "source": source,
        "noise": noise,
        "estimate_size": estimate_size,
    }


def labelled_image(index: int, natural: list[np.ndarray], config: RegionSelectorTrainingConfig) -> dict:
    """Blur image ``index``, estimate the PSF on each grid window (and, if held out, the whole)."""
    drawn = blurred_image(index, natural, config)
    blurred, kernel, estimate_size = drawn["blurred"], drawn["kernel"], drawn["estimate_size"]
    similarities = []
    whole = math.nan
    settings = config.label_estimator
    for y in config.window_offsets:
        for x in config.window_offsets:
            estimate = estimate_psf(
                blurred,
                size=estimate_size,
                region=(y, x, config.window, config.window),
                device="cpu",
                settings=settings,
            )
            similarities.append(kernel_similarity(estimate, kernel))
    if config.is_validation(index):
        whole = kernel_similarity(
            estimate_psf(blurred, size=estimate_size, device="cpu", settings=settings), kernel
        )
    return {
        **drawn,
        "kernel": embed(kernel, MAX_KERNEL),
        "similarity": np.asarray(similarities, np.float32),
        "whole_similarity": whole,
    }


# --- the cache --------------------------------------------------------------------------------


_FIELDS = ("blurred", "kernel", "kind", "source", "noise", "estimate_size", "similarity", "whole_similarity")


def _load_cache(path: Path, config: RegionSelectorTrainingConfig) -> dict[str, list]:
    columns: dict[str, list] = {name: [] for name in _FIELDS}
    if not path.is_file():
        return columns
    with np.load(path, allow_pickle=False) as data:
        if json.loads(str(data["settings"])) != json.loads(json.dumps(config.data_settings())):
            logger.warning("cache %s was made with other settings; starting afresh", path)
            return columns
        for name in _FIELDS:
            columns[name] = list(data[name])
    return columns


def _save_cache(path: Path, columns: dict[str, list], config: RegionSelectorTrainingConfig) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.stem + ".partial.npz")
    arrays = {name: np.asarray(values) for name, values in columns.items()}
    np.savez(partial, settings=json.dumps(config.data_settings()), **arrays)
    partial.replace(path)


_worker_natural: list[np.ndarray] = []


def _load_natural(config: RegionSelectorTrainingConfig) -> list[np.ndarray]:
    return train_split_images(min_size=config.image_size + MAX_KERNEL - 1)


def _start_worker(config: RegionSelectorTrainingConfig) -> None:
    torch.set_num_threads(1)
    _worker_natural[:] = _load_natural(config)


def _label_in_worker(job: tuple[int, RegionSelectorTrainingConfig]) -> dict:
    index, config = job
    return labelled_image(index, _worker_natural, config)


def _labelled_images(indices: range, config: RegionSelectorTrainingConfig):
    """``labelled_image`` for each index, in order; in ``config.workers`` processes if > 1.

    Every image is seeded by its index alone, so the labels do not depend on
    the number of workers.
    """
    if config.workers <= 1:
        natural = _load_natural(config)
        for index in indices:
            yield labelled_image(index, natural, config)
        return
    context = multiprocessing.get_context("spawn")  # no forked torch thread pools
    with context.Pool(config.workers, initializer=_start_worker, initargs=(config,)) as pool:
        yield from pool.imap(_label_in_worker, [(index, config) for index in indices])


def make_labels(
    config: RegionSelectorTrainingConfig, path: Path | None = None, *, save_every: int = 4
) -> dict[str, np.ndarray]:
    """Labelled images for ``config.windows`` windows, from the cache where possible.

    Returns arrays with one row per image: ``blurred`` (N, S, S), ``kernel``
    (N, 25, 25), ``kind``, ``source``, ``noise``, ``estimate_size``,
    ``similarity`` (N, windows per image, in the order of
    :attr:`RegionSelectorTrainingConfig.window_offsets`, rows then columns)
    and ``whole_similarity`` (N; NaN for training images).
    """
    path = path or cache_path(config)
    columns = _load_cache(path, config)
    wanted = math.ceil(config.windows / config.windows_per_image)
    done = len(columns["blurred"])
    if done < wanted:
        logger.info(
            "labelling images %d..%d (%d windows each, %d worker(s)) into %s",
            done,
            wanted - 1,
            config.windows_per_image,
            config.workers,
            path,
        )
        started = time.perf_counter()
        for index, entry in enumerate(_labelled_images(range(done, wanted), config), start=done):
            for name in _FIELDS:
                columns[name].append(entry[name])
            count = index + 1 - done
            if count % save_every == 0 or index == wanted - 1:
                _save_cache(path, columns, config)
                rate = (time.perf_counter() - started) / count
                good = float(np.mean(np.concatenate(columns["similarity"]) >= config.threshold))
                logger.info(
                    "labelled %d/%d images (%.1f s each), %.0f %% good windows",
                    index + 1,
                    wanted,
                    rate,
                    100 * good,
                )
    return {name: np.asarray(values[:wanted]) for name, values in columns.items()}


# --- training ----------------------------------------------------------------------------------


def cut_windows(
    labels: dict[str, np.ndarray], images: np.ndarray, config: RegionSelectorTrainingConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Windows ``(n, window, window)`` float32 and similarities ``(n,)`` of the given images."""
    w = config.window
    offsets = config.window_offsets
    windows, similarities = [], []
    for index in images:
        blurred = labels["blurred"][index]
        for k, (y, x) in enumerate((y, x) for y in offsets for x in offsets):
            windows.append(blurred[y : y + w, x : x + w])
            similarities.append(labels["similarity"][index][k])
    if not windows:
        return np.zeros((0, w, w), np.float32), np.zeros(0, np.float32)
    return np.stack(windows).astype(np.float32), np.asarray(similarities, np.float32)


def balanced_indices(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """All windows of the minority class and as many drawn from the majority (all if one class is empty)."""
    positive = np.flatnonzero(labels)
    negative = np.flatnonzero(~labels)
    if len(positive) == 0 or len(negative) == 0:
        return np.arange(len(labels))
    small, large = (positive, negative) if len(positive) <= len(negative) else (negative, positive)
    return np.sort(np.concatenate([small, rng.choice(large, size=len(small), replace=False)]))


def _dihedral(batch: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Each window turned by a random multiple of 90 degrees and maybe mirrored.

    The kernel turns with the window, so how well it can be estimated (the
    label) does not change.
    """
    out = []
    for window, turns, flip in zip(
        batch, rng.integers(4, size=len(batch)), rng.uniform(size=len(batch)) < 0.5
    ):
        window = torch.rot90(window, int(turns), dims=(-2, -1))
        out.append(window.flip(-1) if flip else window)
    return torch.stack(out)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); NaN with one class."""
    labels = np.asarray(labels, bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _predict(model: RegionSelectorNet, windows: torch.Tensor, batch: int = 128) -> np.ndarray:
    model.eval()
    scores = [score_windows(model, windows[i : i + batch, None]).cpu() for i in range(0, len(windows), batch)]
    model.train()
    return torch.cat(scores).numpy() if scores else np.zeros(0, np.float32)


def _classification(scores: np.ndarray, similarities: np.ndarray, threshold: float) -> dict:
    labels = similarities >= threshold
    predicted = scores >= 0.5
    recalls = [float(np.mean(predicted[labels == c] == c)) for c in (True, False) if np.any(labels == c)]
    return {
        "accuracy": float(np.mean(predicted == labels)) if len(labels) else math.nan,
        "balanced_accuracy": float(np.mean(recalls)) if recalls else math.nan,
        "roc_auc": roc_auc(scores, labels),
    }


def _gradient_energy(windows: np.ndarray) -> np.ndarray:
    gy = np.diff(windows, axis=-2)[..., :, :-1]
    gx = np.diff(windows, axis=-1)[..., :-1, :]
    return (gx**2 + gy**2).mean(axis=(-2, -1))


def product_validation(
    scores: np.ndarray,
    windows: np.ndarray,
    similarities: np.ndarray,
    whole: np.ndarray,
    config: RegionSelectorTrainingConfig,
) -> dict:
    """Per held-out image: similarity of the estimate from the selector's best window and others.

    ``scores``, ``windows``, ``similarities`` hold the images' grid windows
    in order (``windows_per_image`` each); ``whole`` the similarity of the
    estimate from each whole image.
    """
    per_image = config.windows_per_image
    n_images = len(scores) // per_image
    scores = scores.reshape(n_images, per_image)
    similarities = similarities.reshape(n_images, per_image)
    rows = np.arange(n_images)
    energy = _gradient_energy(windows).reshape(n_images, per_image)
    strategies = {
        "selector's best window": similarities[rows, scores.argmax(1)],
        "whole image": np.asarray(whole, np.float64),
        "random window (expected)": similarities.mean(1),
        "most gradient energy": similarities[rows, energy.argmax(1)],
        "best window (oracle)": similarities.max(1),
    }
    random_success = (similarities >= config.threshold).mean(1)
    # Ranking within an image is what selection needs (the kernel and noise, shared by all
    # windows of an image, make the plain AUC easier than the selection task).
    within = [roc_auc(scores[i], similarities[i] >= config.threshold) for i in rows]
    mixed = [value for value in within if not math.isnan(value)]
    result = {
        "images": n_images,
        "images_with_both_classes": len(mixed),
        "within_image_roc_auc": float(np.mean(mixed)) if mixed else math.nan,
    }
    for name, values in strategies.items():
        success = random_success if name.startswith("random") else values >= config.threshold
        result[name] = {
            "mean_similarity": float(np.mean(values)),
            "median_similarity": float(np.median(values)),
            "success_rate": float(np.mean(success)),
        }
    return result


def _ranked_images(similarities: np.ndarray, per_image: int, gap: float) -> list[np.ndarray]:
    """Window indices of each image (``per_image`` consecutive windows) whose values spread by > ``gap``."""
    groups = np.arange(len(similarities)).reshape(-1, per_image)
    return [group for group in groups if np.ptp(similarities[group]) > gap]


def within_image_rank_loss(
    logits: torch.Tensor, similarities: torch.Tensor, per_image: int, gap: float = 0.0
) -> torch.Tensor:
    """Mean of ``softplus(s_worse - s_better)`` over the window pairs of each image.

    ``logits`` and ``similarities`` hold whole images, ``per_image``
    consecutive windows each; a pair is two windows of one image whose
    similarities differ by more than ``gap`` (binary labels with ``gap`` 0.5
    give the (good, bad) pairs).
    """
    scores = logits.reshape(-1, per_image)
    values = similarities.reshape(-1, per_image).to(scores.dtype)
    margin = scores[:, None, :] - scores[:, :, None]  # [i, a, b] = s_b - s_a
    pairs = values[:, :, None] > values[:, None, :] + gap  # window a better than window b
    if not pairs.any():
        return logits.sum() * 0.0
    return F.softplus(margin[pairs]).mean()


def train_region_selector(config: RegionSelectorTrainingConfig, out_path: Path) -> RegionSelectorNet:
    """Make (or load) the labels, train from scratch, save the weights to ``out_path``.

    Fills ``config.data`` (counts), ``config.history`` (loss curve) and
    ``config.validation`` (final numbers on the held-out images).
    """
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    labels = make_labels(config)
    n_images = len(labels["blurred"])
    held_out = np.array([config.is_validation(i) for i in range(n_images)], bool)
    train_windows, train_similarity = cut_windows(labels, np.flatnonzero(~held_out), config)
    val_windows, val_similarity = cut_windows(labels, np.flatnonzero(held_out), config)
    rng = np.random.default_rng([config.seed, 1])
    train_labels = train_similarity >= config.threshold
    chosen = balanced_indices(train_labels, rng)
    config.data = {
        "images": n_images,
        "train_images": int((~held_out).sum()),
        "validation_images": int(held_out.sum()),
        "train_windows": len(train_windows),
        "train_good": int(train_labels.sum()),
        "train_windows_balanced": len(chosen),
        "validation_windows": len(val_windows),
        "validation_good": int((val_similarity >= config.threshold).sum()),
        "kinds": {kind: int(np.sum(labels["kind"] == kind)) for kind in KERNEL_KINDS},
        "good_rate_by_kind": {
            kind: float(np.mean(labels["similarity"][labels["kind"] == kind] >= config.threshold))
            for kind in KERNEL_KINDS
            if np.any(labels["kind"] == kind)
        },
        "dead_leaves_images": int(np.sum(labels["source"] == "dead_leaves")),
        "composite_images": int(sum("+" in str(source) for source in labels["source"])),
    }
    logger.info("data: %s", config.data)
    x_all = torch.from_numpy(train_windows).to(device)
    x_train = x_all[torch.from_numpy(chosen).to(device)]
    y_train = torch.from_numpy(train_labels[chosen].astype(np.float32)).to(device)
    x_val = torch.from_numpy(val_windows).to(device)
    # The ranking loss compares the windows of one image with each other (what picking the
    # best window needs; the kernel and the noise, shared by all windows of an image, make
    # plain classification an easier, different task): images whose window similarities
    # spread by more than rank_gap.
    train_groups = _ranked_images(train_similarity, config.windows_per_image, config.rank_gap)
    config.data["train_images_with_both_classes"] = len(
        _ranked_images(train_labels.astype(np.float32), config.windows_per_image, 0.5)
    )
    config.data["train_images_ranked"] = len(train_groups)
    similarity_all = torch.from_numpy(train_similarity).to(device)

    model = RegionSelectorNet().to(device, memory_format=torch.channels_last)
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.learning_rate, total_steps=config.steps, pct_start=0.1
    )
    started = time.perf_counter()
    running, correct, seen, logged_step = 0.0, 0, 0, 0
    batch = min(config.batch, len(x_train))
    for step in range(1, config.steps + 1):
        pick = torch.from_numpy(rng.choice(len(x_train), size=batch, replace=False)).to(device)
        windows = x_train[pick]
        ranked = None
        if config.rank_weight > 0 and len(train_groups):
            groups = rng.choice(
                len(train_groups), size=min(config.rank_images, len(train_groups)), replace=False
            )
            ranked = np.concatenate([train_groups[g] for g in groups])
            windows = torch.cat((windows, x_all[ranked]))
        windows = _dihedral(windows, rng)[:, None]
        features = window_features(windows).contiguous(memory_format=torch.channels_last)
        all_logits = model(features)
        logits = all_logits[:batch]
        loss = F.binary_cross_entropy_with_logits(logits, y_train[pick])
        if ranked is not None:
            loss = loss + config.rank_weight * within_image_rank_loss(
                all_logits[batch:], similarity_all[ranked], config.windows_per_image, config.rank_gap
            )
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        running += float(loss.detach())
        correct += int(((logits.detach() > 0) == (y_train[pick] > 0.5)).sum())
        seen += batch
        if step % config.log_every == 0 or step == config.steps:
            scores = _predict(model, x_val)
            entry = {
                "step": step,
                "train_loss": running / (step - logged_step),
                "train_accuracy": correct / seen,
            }
            if len(scores):
                val_labels = torch.from_numpy((val_similarity >= config.threshold).astype(np.float32))
                entry["val_loss"] = float(
                    F.binary_cross_entropy(torch.from_numpy(scores).clamp(1e-6, 1 - 1e-6), val_labels)
                )
                entry.update(_classification(scores, val_similarity, config.threshold))
            entry["minutes"] = (time.perf_counter() - started) / 60
            running, correct, seen, logged_step = 0.0, 0, 0, step
            config.history.append(entry)
            logger.info("step %d: %s", step, entry)
    state = {key: value.cpu() for key, value in model.state_dict().items()}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out_path)
    scores = _predict(model, x_val)
    if len(scores):
        config.validation = _classification(scores, val_similarity, config.threshold)
        config.validation["product"] = product_validation(
            scores, val_windows, val_similarity, labels["whole_similarity"][held_out], config
        )
    return model
