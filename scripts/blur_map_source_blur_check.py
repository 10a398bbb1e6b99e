"""How much blur the eval images have before protocol 2 blurs them, and what that costs any estimator.

Protocol 2 (Patro's ramp and sinusoid, ``benchmarks/blur_map_benchmark.py``) blurs each image with
a Gaussian of known sigma and scores the map against that sigma. A Gaussian of sigma ``s`` applied
to an image that already has Gaussian-like blur ``s0`` gives the image a blur of
``sqrt(s**2 + s0**2)``: the observed pixels are those of a sharp image blurred by that much. An
estimator sees only the pixels, so one that reports the blur the image has (the number GWIS needs)
is scored as wrong by ``sqrt(s**2 + s0**2) - s`` on such an image, and one that reports ``s``
there must report too little on a sharp image blurred by ``sqrt(s**2 + s0**2)``.

Sections (about 2 min on two cores):

1. The three readers of the benchmark on a sharp procedural source (dead leaves, hard-edged discs)
   blurred by known Gaussians: the median each reads (its calibration, and what it reads on a sharp
   image).
2. The blur each eval image (and, for comparison, each train-split photo) already has, as the median
   read by each reader on the unblurred image.
3. The RMSE that a faithful estimator (one that reads exactly ``sqrt(s**2 + s0**2)``) scores on
   the protocol's ramp and sinusoid, by ``s0``; with the protocol's bars beside it.
4. The same composition on a sharp source, measured: dead leaves first blurred by ``s0`` px, then
   by the protocol's ramp; our map's RMSE against the protocol's sigma and against the total blur.
5. The benchmark's Voronoi section run on train-split photos instead of the eval images (same code,
   other seeds): the three readers' MAE at edge pixels, to set beside the eval table.

Nothing here is trained or tuned; the eval images are only read. Prints markdown.

    python scripts/blur_map_source_blur_check.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import blur_map_benchmark as bench  # noqa: E402
import eval_data as ed  # noqa: E402

SHARP_SIZE = 384
SHARP_SEED = 20261129
KNOWN_SIGMAS = (0.0, 0.5, 1.0, 2.0, 3.0)
OWN_BLURS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0)
TRAIN_PHOTOS = ("astronaut", "coffee", "coins", "immunohistochemistry", "moon", "grass", "gravel")
BAR_BRICK = 0.12
BAR_NATURAL = 0.15


def readers(image: np.ndarray) -> dict[str, float]:
    """Median blur level (px) read by our map, the paper's network and Zhuo & Sim at Canny edges."""
    from skimage.feature import canny

    pixels = image.astype(np.float32)
    edges = canny(image.astype(np.float64), sigma=2)
    return {
        "ours": float(np.median(bench.estimate("ours", pixels))),
        "paper": float(np.median(bench.estimate("paper", pixels))),
        "zhuo_sim": float(np.nanmedian(bench.zhuo_sim(image.astype(np.float64), edges))),
    }


def sharp_source() -> np.ndarray:
    from napari_deblur.engine.training.sources import dead_leaves

    margin = int(np.ceil(4 * bench.PATRO_SIGMAS[-1])) + 1
    return dead_leaves(SHARP_SIZE + 2 * margin, np.random.default_rng(SHARP_SEED)).astype(np.float64)


def gaussian_blurred(image: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(image, sigma, mode="reflect") if sigma > 0 else image


def faithful_rmse(own_blur: float, sigma_of_column: np.ndarray) -> float:
    """RMSE against ``sigma`` of an estimator that reads the total blur ``sqrt(sigma^2 + own^2)``."""
    return float(np.sqrt(np.mean((np.hypot(sigma_of_column, own_blur) - sigma_of_column) ** 2)))


def calibration_section(sharp: np.ndarray) -> list[str]:
    lines = ["### 1. The readers on sharp dead leaves blurred by known Gaussians: median read (px)",
             "", "| Gaussian sigma (px) | ours | paper's network | Zhuo & Sim (edges) |",
             "|---:|---:|---:|---:|"]
    for sigma in KNOWN_SIGMAS:
        read = readers(gaussian_blurred(sharp, sigma))
        lines.append(f"| {sigma:.1f} | {read['ours']:.2f} | {read['paper']:.2f} | {read['zhuo_sim']:.2f} |")
    return lines + [""]


def own_blur_section() -> tuple[list[str], dict[str, dict[str, float]]]:
    from napari_deblur.engine.training.sources import grey_float
    import skimage.data

    lines = ["### 2. Blur already in the images: median read on the unblurred image (px)", "",
             "| image | split | ours | paper's network | Zhuo & Sim (edges) |", "|---|---|---:|---:|---:|"]
    reads = {}
    for name in ed.EVAL_IMAGES:
        reads[name] = readers(ed.load_eval_image(name))
        r = reads[name]
        lines.append(f"| {name} | eval | {r['ours']:.2f} | {r['paper']:.2f} | {r['zhuo_sim']:.2f} |")
    for name in TRAIN_PHOTOS:
        r = readers(grey_float(getattr(skimage.data, name)()))
        lines.append(f"| {name} | train | {r['ours']:.2f} | {r['paper']:.2f} | {r['zhuo_sim']:.2f} |")
    return lines + [""], reads


def floor_section(width: int) -> list[str]:
    profiles = bench.patro_profiles(width)
    lines = ["### 3. RMSE of a faithful estimator against the protocol's sigma, by the image's own blur s0",
             "", f"Columns as the benchmark makes them ({width} px wide). Bars: brick <= {BAR_BRICK} px "
             f"(ramp and sinusoid); natural images: mean of 12 rows (6 images x 2 profiles) "
             f"<= {BAR_NATURAL} px.",
             "", "| s0 (px) | ramp | sinusoid | one image's two rows as a share of the 12-row mean |",
             "|---:|---:|---:|---:|"]
    for own in OWN_BLURS:
        ramp, sinusoid = (faithful_rmse(own, profiles[p]) for p in ("ramp", "sinusoid"))
        lines.append(f"| {own:.2f} | {ramp:.3f} | {sinusoid:.3f} | {(ramp + sinusoid) / 12:.3f} |")
    return lines + [""]


def composition_section(sharp: np.ndarray) -> list[str]:
    out_shape = (SHARP_SIZE, SHARP_SIZE)
    lines = ["### 4. Measured: dead leaves first blurred by s0, then by the protocol (our map, noise 1/255)",
             "",
             "| s0 (px) | profile | RMSE vs the protocol's sigma | RMSE vs the total blur | faithful floor |",
             "|---:|---|---:|---:|---:|"]
    for own in (0.0, 1.0, 2.5):
        source = gaussian_blurred(sharp, own)
        for profile, sigma_of_column in bench.patro_profiles(out_shape[1]).items():
            blurred, _ = bench.mixed_columns(source, out_shape, sigma_of_column)
            rng = ed.case_rng("source-blur-check", profile, int(own * 10))
            levels = bench.estimate("ours", ed.add_gaussian_noise(blurred, bench.PATRO_NOISE, rng))
            nominal = float(np.sqrt(np.mean((levels - sigma_of_column) ** 2)))
            total = float(np.sqrt(np.mean((levels - np.hypot(sigma_of_column, own)) ** 2)))
            lines.append(f"| {own:.1f} | {profile} | {nominal:.3f} | {total:.3f} | "
                         f"{faithful_rmse(own, sigma_of_column):.3f} |")
    return lines + [""]


def voronoi_train_section() -> list[str]:
    from napari_deblur.engine.training.sources import grey_float
    from gwis_oracle_study import BLUR_TYPES
    import skimage.data

    margin = bench.voronoi_margin()
    errors = {method: [] for method in ("ours", "paper", "zhuo_sim")}
    for name in TRAIN_PHOTOS:
        source = grey_float(getattr(skimage.data, name)())
        out_shape = ed.eval_crop_shape(source.shape, 256, margin)
        for blur_type in BLUR_TYPES:
            rng = ed.case_rng("source-blur-check-voronoi", name, blur_type)
            observed, truth, edges = bench.voronoi_case(source, out_shape, blur_type, rng)
            if not edges.any():
                continue
            reads = {"ours": bench.estimate("ours", observed), "paper": bench.estimate("paper", observed),
                     "zhuo_sim": bench.zhuo_sim(observed, edges)}
            for method, levels_read in reads.items():
                errors[method].append(float(np.mean(np.abs(levels_read[edges] - truth[edges]))))
    means = {method: float(np.mean(e)) for method, e in errors.items()}
    return ["### 5. The Voronoi section on train-split photos: MAE at edge pixels (px), mean over cases", "",
            "| photos | cases | ours | paper's network | Zhuo & Sim | ours / Zhuo & Sim |",
            "|---|---:|---:|---:|---:|---:|",
            f"| {', '.join(TRAIN_PHOTOS)} | {len(errors['ours'])} | {means['ours']:.3f} | "
            f"{means['paper']:.3f} | {means['zhuo_sim']:.3f} | {means['ours'] / means['zhuo_sim']:.2f} |", ""]


def main() -> int:
    import logging

    logging.disable(logging.INFO)
    sharp = sharp_source()
    lines = ["# Blur the images have before protocol 2 blurs them", "",
             "Command: `python scripts/blur_map_source_blur_check.py`", "", ed.environment_line(), ""]
    lines += calibration_section(sharp)
    own_lines, _ = own_blur_section()
    lines += own_lines
    lines += floor_section(384)
    lines += composition_section(sharp)
    lines += voronoi_train_section()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
