"""Sharp training images: the train split of scikit-image's data, dead leaves and textures.

The evaluation split (camera, text, cell, hubble_deep_field, retina, rocket,
brick) is never used here; :data:`EVAL_SPLIT` lists it so tests can check that.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from training.replay import replay_or_build

logger = logging.getLogger(__name__)

TRAIN_SPLIT = (
    "astronaut",
    "chelsea",
    "coffee",
    "coins",
    "immunohistochemistry",
    "microaneurysms",
    "moon",
    "motorcycle_left",
    "motorcycle_right",
    "page",
    "grass",
    "gravel",
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


def train_split_images(min_size: int = 0, names: Sequence[str] = TRAIN_SPLIT) -> list[np.ndarray]:
    """The train-split images (``names``, a part of :data:`TRAIN_SPLIT`, in that order) that are
    available offline and at least ``min_size`` px a side."""
    import skimage.data

    unknown = set(names) - set(TRAIN_SPLIT)
    if unknown:
        raise ValueError(f"not train-split images: {sorted(unknown)}; the split is {TRAIN_SPLIT}")
    images = []
    for name in names:
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


def dead_leaves(
    size: int,
    rng: np.random.Generator,
    *,
    min_radius: float = 1.0,
    max_radius: float = 60.0,
    n_discs: int = 2000,
) -> np.ndarray:
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


def _fractal_noise(
    size: int, rng: np.random.Generator, exponent: float, anisotropy: float = 1.0
) -> np.ndarray:
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
            size, rng, rng.uniform(1.0, 2.0)
        )
    low, high = np.percentile(texture, [1, 99])
    return np.clip((texture - low) / max(float(high - low), 1e-6), 0, 1).astype(np.float32)


def point_sources(size: int, rng: np.random.Generator) -> np.ndarray:
    """Sparse bright spots on a dark, faint background, float32 in [0, 1].

    Star fields and fluorescent beads or puncta: where a Wiener filter's
    ringing and noise show most, and where Richardson-Lucy, whose positivity
    keeps the dark background dark, is the classical method to beat.

    - 0.0005 to 0.015 spots per pixel (log-uniform), at sub-pixel positions;
    - heavy-tailed brightness (Pareto), so a few bright spots and many faint
      ones, the brightest clipped as saturated stars are;
    - 80 % points (a Gaussian of 0.3-1.2 px integrated over each pixel, so the
      narrowest fall on one or two pixels), 20 % extended elliptical blobs of
      1.5-6 px (galaxies, cells);
    - a smooth background (fractal noise) at up to 8 % of the range.
    """
    from scipy.special import erf

    background = _fractal_noise(size, rng, rng.uniform(2.5, 3.5))
    background = (background - background.min()) / max(float(np.ptp(background)), 1e-6)
    canvas = rng.uniform(0.0, 0.08) * background
    count = int(size * size * 10 ** rng.uniform(np.log10(0.0005), np.log10(0.015)))
    centres = rng.uniform(0, size, (count, 2))
    brightness = rng.pareto(rng.uniform(1.0, 2.0), count) + 1.0
    extended = rng.uniform(size=count) < 0.2
    for (cy, cx), amplitude, is_blob in zip(centres, brightness, extended):
        if is_blob:
            sigma_a, sigma_b = rng.uniform(1.5, 6.0, 2)
            angle = rng.uniform(0, np.pi)
            radius = int(np.ceil(4 * max(sigma_a, sigma_b)))
        else:
            sigma = rng.uniform(0.3, 1.2)
            radius = int(np.ceil(4 * sigma)) + 1
        y0, y1 = max(int(cy) - radius, 0), min(int(cy) + radius + 1, size)
        x0, x1 = max(int(cx) - radius, 0), min(int(cx) + radius + 1, size)
        dy = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy
        dx = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx
        if is_blob:
            along = dy * np.cos(angle) + dx * np.sin(angle)
            across = -dy * np.sin(angle) + dx * np.cos(angle)
            spot = np.exp(-0.5 * ((along / sigma_a) ** 2 + (across / sigma_b) ** 2))
        else:  # the Gaussian integrated over each pixel's square
            scale = sigma * np.sqrt(2.0)
            spot = (
                0.5
                * (erf((dy + 0.5) / scale) - erf((dy - 0.5) / scale))
                * 0.5
                * (erf((dx + 0.5) / scale) - erf((dx - 0.5) / scale))
            )
            spot = spot / spot.max()
        canvas[y0:y1, x0:x1] += amplitude * spot
    peak = max(float(np.percentile(canvas, 99.9)), 1e-6)
    return np.clip(canvas / peak, 0, 1).astype(np.float32)


GLYPHS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.,;:-+=()/%"
"""The characters of :func:`printed_text`."""


def printed_text(size: int, rng: np.random.Generator) -> np.ndarray:
    """Lines of random characters as a printer or a screen renders them, float32 in [0, 1].

    Documents, labels and line art: strokes one to a few pixels wide, where a
    little blur already merges neighbouring strokes. Font sizes 6-36 px
    (log-uniform), sans-serif, serif or monospace, normal or bold, a few
    lines slightly rotated; dark ink on light paper in 70 % of the pages,
    light on dark in the rest. Rendered by matplotlib's Agg backend with its
    bundled fonts (anti-aliased: edges sharp to about half a pixel).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(size / 100, size / 100), dpi=100)
    canvas = FigureCanvasAgg(figure)
    ink, paper = (0.0, 1.0) if rng.uniform() < 0.7 else (1.0, 0.0)
    figure.patch.set_facecolor(str(paper))
    characters = list(GLYPHS + " " * 12)
    baseline = rng.uniform(0, 0.1)
    while baseline < 1.05:
        height_px = float(np.exp(rng.uniform(np.log(6), np.log(36))))
        line = "".join(rng.choice(characters, int(rng.integers(4, 60))))
        figure.text(
            rng.uniform(-0.2, 0.3),
            baseline,
            line,
            fontsize=height_px * 72 / 100,
            color=str(ink),
            weight=str(rng.choice(["normal", "bold"])),
            family=str(rng.choice(["sans-serif", "serif", "monospace"])),
            rotation=float(rng.normal(0, 2)) if rng.uniform() < 0.3 else 0.0,
            va="baseline",
        )
        baseline += height_px * rng.uniform(1.1, 2.0) / size
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:size, :size, 0].astype(np.float32) / 255.0


def _image_pool(make, count: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """``count`` read-only images ``make(size, rng)``, built once per generator state (:mod:`.replay`)."""
    return replay_or_build(
        make.__name__, (count, size), rng, lambda: tuple(make(size, rng) for _ in range(count))
    )


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
    n_point_fields, point_field_fraction : int, float
        The same for sparse point sources (:func:`point_sources`: star fields,
        fluorescent beads), made after the textures and tried before them.
    n_text_pages, text_fraction : int, float
        The same for printed text (:func:`printed_text`), made last and tried
        first. All default to 0, with no random number drawn.
    """

    def __init__(
        self,
        crop: int,
        rng: np.random.Generator,
        *,
        n_dead_leaves: int = 200,
        dead_leaves_size: int = 384,
        dead_leaves_fraction: float = 0.3,
        smooth_fraction: float = 0.0,
        smooth_sigma_range: tuple[float, float] = (1.0, 4.0),
        n_textures: int = 0,
        texture_fraction: float = 0.0,
        n_point_fields: int = 0,
        point_field_fraction: float = 0.0,
        n_text_pages: int = 0,
        text_fraction: float = 0.0,
    ):
        self.crop = crop
        self.rng = rng
        self.smooth_fraction = smooth_fraction
        self.smooth_sigma_range = smooth_sigma_range
        self.natural = train_split_images(min_size=crop)
        self.procedural = _image_pool(dead_leaves, n_dead_leaves, dead_leaves_size, rng)
        self.dead_leaves_fraction = dead_leaves_fraction
        self.textures = _image_pool(procedural_texture, n_textures, dead_leaves_size, rng)
        self.texture_fraction = texture_fraction if self.textures else 0.0
        self.point_fields = _image_pool(point_sources, n_point_fields, dead_leaves_size, rng)
        self.point_field_fraction = point_field_fraction if self.point_fields else 0.0
        self.text_pages = _image_pool(printed_text, n_text_pages, dead_leaves_size, rng)
        self.text_fraction = text_fraction if self.text_pages else 0.0
        if not self.natural:
            raise RuntimeError("no train-split image is available; cannot train")

    def sample(self, count: int) -> np.ndarray:
        """``(count, crop, crop)`` float32 crops in [0, 1]."""
        crops = np.empty((count, self.crop, self.crop), dtype=np.float32)
        for i in range(count):
            procedural_pools = (
                (self.text_pages, self.text_fraction),
                (self.point_fields, self.point_field_fraction),
                (self.textures, self.texture_fraction),
            )
            for pool, fraction in procedural_pools:  # noqa: B007 - the pool drawn is used after the loop
                if fraction and self.rng.uniform() < fraction:
                    break
            else:
                pool = self.procedural if self.rng.uniform() < self.dead_leaves_fraction else self.natural
            image = pool[self.rng.integers(len(pool))]
            y = self.rng.integers(image.shape[0] - self.crop + 1)
            x = self.rng.integers(image.shape[1] - self.crop + 1)
            patch = image[y : y + self.crop, x : x + self.crop]
            patch = np.rot90(patch, self.rng.integers(4))
            if self.rng.uniform() < 0.5:
                patch = patch[:, ::-1]
            if self.smooth_fraction and self.rng.uniform() < self.smooth_fraction:
                patch = ndimage.gaussian_filter(
                    patch, self.rng.uniform(*self.smooth_sigma_range), mode="reflect"
                )
            contrast = self.rng.uniform(0.5, 1.0)
            crops[i] = patch * contrast + self.rng.uniform(0, 1 - contrast)
        return crops
