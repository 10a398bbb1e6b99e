"""GWIS with the shared warp line against each blur shape's own line, on the TRAINING split.

The engine maps a blur level to a warp scale by one line fitted to Gaussian, disk and ring blur
together (``gwis.WARP_SCALE_SLOPE``, ``WARP_SCALE_OFFSET``); ``benchmarks/gwis_oracle_study.py`` also
fits one line per shape (``SHAPE_LINES`` below). This script swaps the engine's line for a shape's
own line (nothing else changes; ``--edge-factor`` also tries another edge scale) and measures what
that would give. Two checks, no eval image:

1. Defocus ramps (the defocus sample's recipe, ``defocus_ramp_arrays(photo=...)``) of 8 train-split
   photos: SSIM (border 24) of GWIS driven by the true map and by our map, with the shared and the
   Gaussian line, minus the best constant level of the benchmark's grid.
2. Uniform blur, the cases of ``benchmarks/gwis_oracle_study.py`` (train images, 128 px crops,
   Gaussian/disk/ring at levels 0.5-6 px, noise variance U[0, 10] on 0..255, the study's seeds): SSIM of
   GWIS at the true level with the shared line and with the case's own shape's line.

    python scripts/gwis_blur_shape_check.py                     # about 3 min on two cores
    python scripts/gwis_blur_shape_check.py --edge-factor 0.38  # with a smaller edge scale
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

PHOTOS = ("astronaut", "chelsea", "coffee", "coins", "immunohistochemistry", "moon", "grass", "gravel")
BORDER = 24
MAX_SIZE = 128
#: The study's per-shape fits (benchmarks/results/gwis_oracle_study.md): slope, offset.
SHAPE_LINES = {"gaussian": (1.964, -0.296), "disk": (3.034, -0.868), "ring": (3.116, -0.731)}


@contextlib.contextmanager
def gwis_variant(shape: str | None, edge_factor: float | None):
    """GWIS with ``shape``'s own warp line (``None``: the shared one) and, given ``edge_factor``, the
    edge scale ``clip(edge_factor * median level, 1, 3)`` px (the engine's factor is 0.5)."""
    from napari_deblur.engine import gwis

    saved = gwis.WARP_SCALE_SLOPE, gwis.WARP_SCALE_OFFSET, gwis.gradient_scale_for_level
    if shape is not None:
        gwis.WARP_SCALE_SLOPE, gwis.WARP_SCALE_OFFSET = SHAPE_LINES[shape]
    if edge_factor is not None:
        low, high = gwis.GRADIENT_SCALE_RANGE
        gwis.gradient_scale_for_level = lambda level: min(max(edge_factor * float(level), low), high)
    try:
        yield
    finally:
        gwis.WARP_SCALE_SLOPE, gwis.WARP_SCALE_OFFSET, gwis.gradient_scale_for_level = saved


def sharpen(image, blur, shape: str | None, edge_factor: float | None):
    from napari_deblur.engine import sharpen_gwis

    with gwis_variant(shape, edge_factor):
        return sharpen_gwis(image, blur)


def defocus_ramps(edge_factor: float | None) -> None:
    from gwis_benchmark import GWIS_GRID, best_by_ssim, score

    from napari_deblur.engine import estimate_blur_map
    from napari_deblur.sample_data import defocus_ramp_arrays

    print("| photo | true map, shared line | true map, Gaussian line | our map, shared line | "
          "our map, Gaussian line |")
    print("|---|---:|---:|---:|---:|")
    margins = []
    for photo in PHOTOS:
        blurred, true_map = defocus_ramp_arrays(photo=photo)
        sharp = defocus_ramp_arrays(max_sigma=0.0, photo=photo)[0].astype(np.float64)
        ours = estimate_blur_map(blurred)
        # The constant levels run with the same edge scale as the maps (the line does not matter
        # for them: the best of the grid is the best of the grid).
        constants = ((f"{v:g}", sharpen(blurred, v, None, edge_factor)) for v in GWIS_GRID)
        best = best_by_ssim(constants, sharp, BORDER)[1]
        row = [score(sharpen(blurred, levels, shape, edge_factor), sharp, BORDER)[1] - best
               for levels in (true_map, ours) for shape in (None, "gaussian")]
        margins.append(row)
        print(f"| {photo} | " + " | ".join(f"{v:+.4f}" for v in row) + " |")
    margins = np.array(margins)
    print("| mean (wins) | " + " | ".join(f"{m:+.4f} ({w})" for m, w in
                                       zip(margins.mean(0), (margins > 0).sum(0))) + " |")
    print("\nSSIM minus the best constant level's; wins = photos where the map beats it.\n")


def uniform_cases(edge_factor: float | None) -> None:
    import eval_data as ed
    import gwis_oracle_study as study

    from napari_deblur import engine

    print("| blur | cases | blurred SSIM | GWIS, shared line | GWIS, own line | own line better |")
    print("|---|---:|---:|---:|---:|---:|")
    for blur_type in study.BLUR_TYPES:
        rows = []
        for name in study.TRAIN_IMAGES + study.PROCEDURAL:
            try:
                source = study.load_train_image(name)
            except (OSError, ValueError, AttributeError):
                continue  # not available offline
            for level in study.LEVELS:
                psf = study.make_psf(engine, blur_type, level).astype(np.float64)
                margin = psf.shape[0]
                out_shape = (min(MAX_SIZE, source.shape[0] - 2 * margin),
                             min(MAX_SIZE, source.shape[1] - 2 * margin))
                border = psf.shape[0] // 2
                if min(out_shape) - 2 * border < study.MIN_SCORED:
                    continue  # as the study: too little left to score
                blurred, sharp = ed.blur_real_boundary(source, psf, out_shape)
                rng = ed.case_rng("gwis-study", name, blur_type, int(round(level * 10)))
                variance = float(rng.uniform(*study.NOISE_VARIANCE_RANGE))
                observed = ed.add_gaussian_noise(blurred, np.sqrt(variance) / 255.0, rng)
                rows.append((study.score(observed, sharp, border)[0],
                             *(study.score(sharpen(observed, level, shape, edge_factor), sharp,
                                           border)[0] for shape in (None, blur_type))))
        r = np.array(rows)
        print(f"| {blur_type} | {len(r)} | {r[:, 0].mean():.4f} | {r[:, 1].mean():.4f} | "
              f"{r[:, 2].mean():.4f} | {(r[:, 2] > r[:, 1]).sum()} / {len(r)} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("ramps", "uniform"), help="run one of the two checks")
    parser.add_argument("--edge-factor", type=float, metavar="K",
                        help="also try GWIS's edge scale as clip(K * median level, 1, 3) px (the "
                             "engine: K = 0.5), for the maps and the constant levels alike")
    args = parser.parse_args(argv)
    if args.only != "uniform":
        defocus_ramps(args.edge_factor)
    if args.only != "ramps":
        uniform_cases(args.edge_factor)


if __name__ == "__main__":
    main()
