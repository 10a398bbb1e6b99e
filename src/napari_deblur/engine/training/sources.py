"""Sharp training images: the train split of scikit-image's data and dead leaves.

The evaluation split (camera, text, cell, hubble_deep_field, retina, rocket,
brick) is never used here; :data:`EVAL_SPLIT` lists it so tests can check that.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

TRAIN_SPLIT = (
    "astronaut", "chelsea", "coffee", "coins", "immunohistochemistry", "microaneurysms",
    "moon", "motorcycle_left", "motorcycle_right", "page", "grass", "gravel",
)
"""The train split of ``shared/eval/README.md`` (motorcycle_* need a download and are
skipped when absent)."""

EVAL_SPLIT = ("camera", "text", "cell", "hubble_deep_field", "retina", "rocket", "brick")
"""Never loaded by training code."""

_REC709 = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)


def grey_float(image: np.ndarray) -> np.ndarray:
    """Luminance in [0, 1], float32, for grayscale, RGB or RGBA uint8/float images."""
    pixels = np.asarray(image)
    scale = 255.0 if pixels.dtype == np.uint8 else 1.0
    pixels = pixels.astype(np.float32) / scale
    if pixels.ndim == 3:
        pixels = pixels[..., :3] @ _REC709
    return np.ascontiguousarray(pixels, dtype=np.float32)


def train_split_images(min_size: int = 0) -> list[np.ndarray]:
    """The train-split images that are available offline and at least ``min_size`` px a side."""
    import skimage.data

    images = []
    for name in TRAIN_SPLIT:
        try:
            image = grey_float(getattr(skimage.data, name)())
        except (AttributeError, OSError, ValueError) as error:  # absent or not downloaded: skipped
            logger.info("train image %s unavailable (%s); skipped", name, error)
            continue
        if min(image.shape) < min_size:
            logger.info("train image %s is smaller than %d px; skipped", name, min_size)
            continue
        images.append(image)
    return images


def dead_leaves(size: int, rng: np.random.Generator, *, min_radius: float = 1.0,
                max_radius: float = 60.0, n_discs: int = 2000) -> np.ndarray:
    """A dead-leaves image: occluding discs with a ``r^-3`` radius law, float32 in [0, 1].

    Discs are painted back to front; about a third get a linear shading or a
    sinusoidal texture instead of a flat grey, so the image has texture as
    well as edges at every scale.
    """
    canvas = np.full((size, size), rng.uniform(0, 1), dtype=np.float32)
    # r^-3 density between min and max radius: inverse-CDF sampling.
    u = rng.uniform(0, 1, n_discs)
    a, b = min_radius**-2, max_radius**-2
    radii = (a - u * (a - b)) ** -0.5
    centres = rng.uniform(-max_radius / 2, size + max_radius / 2, (n_discs, 2))
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    for radius, (cy, cx) in zip(radii, centres):
        y0, y1 = max(int(cy - radius), 0), min(int(cy + radius) + 2, size)
        x0, x1 = max(int(cx - radius), 0), min(int(cx + radius) + 2, size)
        if y0 >= y1 or x0 >= x1:
            continue
        dy, dx = rows[y0:y1, x0:x1] - cy, cols[y0:y1, x0:x1] - cx
        inside = dy * dy + dx * dx <= radius * radius
        value = rng.uniform(0, 1)
        style = rng.uniform()
        if style < 0.2:
            angle = rng.uniform(0, 2 * np.pi)
            fill = value + rng.uniform(-0.5, 0.5) * (dy * np.cos(angle) + dx * np.sin(angle)) / radius
        elif style < 0.35:
            period = rng.uniform(3, 20)
            angle = rng.uniform(0, 2 * np.pi)
            phase = 2 * np.pi * (dy * np.cos(angle) + dx * np.sin(angle)) / period
            fill = value + rng.uniform(0.05, 0.3) * np.sin(phase)
        else:
            fill = np.full(dy.shape, value, dtype=np.float32)
        region = canvas[y0:y1, x0:x1]
        region[inside] = np.clip(fill, 0, 1)[inside]
    return canvas


class PatchSampler:
    """Random crops (with flips, 90-degree turns and contrast changes) of a source pool.

    Parameters
    ----------
    crop : int
        Side of a crop in pixels.
    rng : numpy.random.Generator
    n_dead_leaves : int
        Procedural images added to the train-split images.
    dead_leaves_fraction : float
        Probability that a crop comes from a dead-leaves image.
    smooth_fraction : float
        Probability that a crop is smoothed by a Gaussian of standard deviation
        ``smooth_sigma_range`` px (uniform) before use, so that the "sharp"
        sources include smooth scenes such as fluorescence images, where a
        restoration must add nothing.
    """

    def __init__(self, crop: int, rng: np.random.Generator, *, n_dead_leaves: int = 200,
                 dead_leaves_size: int = 384, dead_leaves_fraction: float = 0.3,
                 smooth_fraction: float = 0.0, smooth_sigma_range: tuple[float, float] = (1.0, 4.0)):
        self.crop = crop
        self.rng = rng
        self.smooth_fraction = smooth_fraction
        self.smooth_sigma_range = smooth_sigma_range
        self.natural = train_split_images(min_size=crop)
        self.procedural = [dead_leaves(dead_leaves_size, rng) for _ in range(n_dead_leaves)]
        self.dead_leaves_fraction = dead_leaves_fraction
        if not self.natural:
            raise RuntimeError("no train-split image is available; cannot train")

    def sample(self, count: int) -> np.ndarray:
        """``(count, crop, crop)`` float32 crops in [0, 1]."""
        crops = np.empty((count, self.crop, self.crop), dtype=np.float32)
        for i in range(count):
            pool = self.procedural if self.rng.uniform() < self.dead_leaves_fraction else self.natural
            image = pool[self.rng.integers(len(pool))]
            y = self.rng.integers(image.shape[0] - self.crop + 1)
            x = self.rng.integers(image.shape[1] - self.crop + 1)
            patch = image[y : y + self.crop, x : x + self.crop]
            patch = np.rot90(patch, self.rng.integers(4))
            if self.rng.uniform() < 0.5:
                patch = patch[:, ::-1]
            if self.smooth_fraction and self.rng.uniform() < self.smooth_fraction:
                patch = ndimage.gaussian_filter(patch, self.rng.uniform(*self.smooth_sigma_range),
                                                mode="reflect")
            contrast = self.rng.uniform(0.5, 1.0)
            crops[i] = patch * contrast + self.rng.uniform(0, 1 - contrast)
        return crops
