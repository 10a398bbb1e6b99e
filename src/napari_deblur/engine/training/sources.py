"""Sharp training images: the train split of scikit-image's data, dead leaves and textures.

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


TEXTURE_KINDS = ("fractal", "levels", "cells", "weave")
"""The families of :func:`procedural_texture`."""


def _fractal_noise(size: int, rng: np.random.Generator, exponent: float,
                   anisotropy: float = 1.0) -> np.ndarray:
    """Gaussian noise whose power spectrum falls as ``f^-exponent``, zero mean, unit variance.

    ``anisotropy > 1`` stretches the spectrum along a random direction, so the
    texture has a grain (wood, fabric, brushed metal).
    """
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    angle = rng.uniform(0, np.pi)
    along = fy * np.cos(angle) + fx * np.sin(angle)
    across = -fy * np.sin(angle) + fx * np.cos(angle)
    radius = np.hypot(along * anisotropy, across / anisotropy)
    radius[0, 0] = 1.0
    amplitude = radius ** (-exponent / 2)
    amplitude[0, 0] = 0.0
    spectrum = np.fft.rfft2(rng.normal(size=(size, size))) * amplitude
    field = np.fft.irfft2(spectrum, s=(size, size))
    return ((field - field.mean()) / max(float(field.std()), 1e-12)).astype(np.float32)


def procedural_texture(size: int, rng: np.random.Generator, kind: str | None = None) -> np.ndarray:
    """A stationary texture that is sharp down to the pixel, float32 in [0, 1].

    One of :data:`TEXTURE_KINDS`, drawn at random unless ``kind`` names it:

    - ``fractal``: noise with a power-law spectrum (exponent 1.2..2.4, the
      range of natural textures), isotropic or with a grain;
    - ``levels``: smoother fractal noise cut into 2..5 flat grey levels, so
      blobs with hard, ragged borders;
    - ``cells``: Voronoi cells of 6..40 px with their own grey, half of them
      with dark or bright joints 1..3 px wide (stones, tiles, cells);
    - ``weave``: 2..4 square gratings (periods 3..30 px, random duty cycle) at
      random angles, multiplied or added (on a sine, blur only lowers the
      contrast, which cannot be told from a fainter sine).

    All but ``fractal`` get a fine fractal grain of random strength on top.
    Blur on a texture shows only in how its spectrum falls off, not in the
    shape of isolated edges, which dead leaves and photos mostly teach.
    """
    if kind is None:
        kind = TEXTURE_KINDS[rng.integers(len(TEXTURE_KINDS))]
    elif kind not in TEXTURE_KINDS:
        raise ValueError(f"unknown texture kind {kind!r}; expected one of {TEXTURE_KINDS}")
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == "fractal":
        anisotropy = 1.0 if rng.uniform() < 0.5 else rng.uniform(1.5, 4.0)
        texture = _fractal_noise(size, rng, rng.uniform(1.2, 2.4), anisotropy)
    elif kind == "levels":
        field = _fractal_noise(size, rng, rng.uniform(2.0, 3.0))
        cuts = np.sort(rng.normal(0, 0.8, int(rng.integers(1, 5))))
        greys = rng.uniform(0, 1, cuts.size + 1).astype(np.float32)
        texture = greys[np.searchsorted(cuts, field)]
    elif kind == "cells":
        from scipy.spatial import cKDTree

        cell = rng.uniform(6, 40)
        count = max(4, int(size * size / cell**2))
        seeds = rng.uniform(-cell, size + cell, (count, 2))
        points = np.stack([rows.ravel(), cols.ravel()], axis=1)
        distance, nearest = cKDTree(seeds).query(points, k=2)
        greys = rng.uniform(0, 1, count).astype(np.float32)
        texture = greys[nearest[:, 0]].reshape(size, size)
        if rng.uniform() < 0.5:
            joint = (distance[:, 1] - distance[:, 0]).reshape(size, size) < rng.uniform(1, 3)
            texture = np.where(joint, np.float32(rng.choice([0.0, 1.0])), texture)
    else:
        multiply = rng.uniform() < 0.5
        texture = np.full((size, size), 1.0 if multiply else 0.0, np.float32)
        for _ in range(int(rng.integers(2, 5))):
            angle = rng.uniform(0, np.pi)
            phase = 2 * np.pi * (rows * np.cos(angle) + cols * np.sin(angle)) / rng.uniform(3, 30)
            # Square waves: a sine's blur is only a loss of contrast, which cannot be read.
            duty = rng.uniform(-0.6, 0.6)
            wave = (np.sin(phase + rng.uniform(0, 2 * np.pi)) > duty).astype(np.float32)
            texture = texture * wave if multiply else texture + wave
    if kind != "fractal":
        texture = texture + rng.uniform(0.03, 0.3) * float(np.std(texture) + 0.05) * _fractal_noise(
            size, rng, rng.uniform(1.0, 2.0))
    low, high = np.percentile(texture, [1, 99])
    return np.clip((texture - low) / max(float(high - low), 1e-6), 0, 1).astype(np.float32)


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
    n_textures, texture_fraction : int, float
        Stationary procedural textures (:func:`procedural_texture`) and the
        probability that a crop comes from one. Both default to 0, and then
        no random number is drawn for them, so samplers that do not use
        textures give the same crops as before they existed.
    """

    def __init__(self, crop: int, rng: np.random.Generator, *, n_dead_leaves: int = 200,
                 dead_leaves_size: int = 384, dead_leaves_fraction: float = 0.3,
                 smooth_fraction: float = 0.0, smooth_sigma_range: tuple[float, float] = (1.0, 4.0),
                 n_textures: int = 0, texture_fraction: float = 0.0):
        self.crop = crop
        self.rng = rng
        self.smooth_fraction = smooth_fraction
        self.smooth_sigma_range = smooth_sigma_range
        self.natural = train_split_images(min_size=crop)
        self.procedural = [dead_leaves(dead_leaves_size, rng) for _ in range(n_dead_leaves)]
        self.dead_leaves_fraction = dead_leaves_fraction
        self.textures = [procedural_texture(dead_leaves_size, rng) for _ in range(n_textures)]
        self.texture_fraction = texture_fraction if self.textures else 0.0
        if not self.natural:
            raise RuntimeError("no train-split image is available; cannot train")

    def sample(self, count: int) -> np.ndarray:
        """``(count, crop, crop)`` float32 crops in [0, 1]."""
        crops = np.empty((count, self.crop, self.crop), dtype=np.float32)
        for i in range(count):
            if self.texture_fraction and self.rng.uniform() < self.texture_fraction:
                pool = self.textures
            elif self.rng.uniform() < self.dead_leaves_fraction:
                pool = self.procedural
            else:
                pool = self.natural
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
