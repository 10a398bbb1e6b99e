"""Protocol 6, real data: 3D deconvolution of a real widefield stack (measured only, never tuned on).

Run from the repository root::

    python benchmarks/microscopy_real_data.py                  # RL, 3D Wiener, Wiener-net 3D, figure, table
    python benchmarks/microscopy_real_data.py --iterations 20 50 --eval-dir /path/to/shared/eval

What it does:

- reads ``microscopy/dapi_001.tif`` from the evaluation folder (``--eval-dir``, or the
  ``NAPARI_DEBLUR_EVAL_DIR`` environment variable, or ``shared/eval`` next to the repository:
  see ``benchmarks/eval_data.py``): a widefield DAPI stack, 40 x 201 x 101, no ground truth;
- makes its PSF with :func:`napari_deblur.engine.microscope_psf` from the optics in that
  folder's README (NA 1.45, emission 461 nm, 0.13 µm pixels, 0.3 µm z steps, oil n = 1.512;
  vectorial model), as large as the stack allows (odd sides);
- runs ours ``richardson_lucy`` (accelerated, ``--iterations``, default 50 and 100), plain RL
  (``acceleration=False``) at the same counts, ``wiener_deconvolve_3d`` (30 dB, the
  default; no tuning on this data) and ``wiener_net_3d`` (both with the PSF's central planes,
  as deep as the stack allows);
- reports the share of the signal (above the raw stack's 1st percentile as background) in
  the top and bottom 8 planes before and after (the README: 37.9 % raw, about 21-23 % after
  50-100 iterations of plain 3D RL), and saves a figure (max projection and an xz slice
  through the brightest row, raw / RL / Wiener-net 3D / Wiener side by side) to
  ``docs/images/microscopy-dapi.png``;
- smoke check of the measured-PSF path: ``measured_psf_pycudadecon.tif`` through
  :func:`napari_deblur.engine.prepare_measured_psf` (shape and sum printed).

Writes ``benchmarks/results/microscopy_real_data.md``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import eval_data as ed  # noqa: E402

log = logging.getLogger("microscopy_real_data")

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "microscopy_real_data.md"
FIGURE = REPO / "docs" / "images" / "microscopy-dapi.png"
#: Optics of dapi_001.tif (from shared/eval/microscopy/README.md), µm.
OPTICS = {"na": 1.45, "wavelength": 0.461, "dxy": 0.13, "dz": 0.3, "ni": 1.512}
OUTER_PLANES = 8
#: README of shared/eval/microscopy: raw share and what plain 3D RL reaches there.
README_RAW_SHARE = 37.9


def microscopy_dir(eval_dir: str | None) -> Path:
    """The ``microscopy`` folder of the evaluation data."""
    if eval_dir:
        folder = Path(eval_dir)
        return folder if (folder / "dapi_001.tif").is_file() else folder / "microscopy"
    return ed.shared_eval_dir() / "microscopy"


def outer_share(volume: np.ndarray, background: float, planes: int = OUTER_PLANES) -> float:
    """Percentage of the signal above ``background`` that lies in the first and last ``planes`` planes."""
    signal = np.clip(np.asarray(volume, np.float64) - background, 0, None)
    per_plane = signal.sum(axis=(1, 2))
    return 100.0 * float(per_plane[:planes].sum() + per_plane[-planes:].sum()) / float(per_plane.sum())


def psf_shape_for(volume_shape: tuple[int, ...], deep: bool = True) -> tuple[int, int, int]:
    """Odd PSF sides: laterally no larger than the volume (at most 63 px); in z up to 79 planes, as deep
    as Richardson-Lucy takes (``2 z + 1``) with ``deep``, else no deeper than the stack."""

    def odd_at_most(n: int, cap: int) -> int:
        side = min(n, cap)
        return side if side % 2 else side - 1

    z, y, x = volume_shape
    return odd_at_most(2 * z + 1 if deep else z, 79), odd_at_most(y, 63), odd_at_most(x, 63)


def save_figure(panels: list[tuple[str, np.ndarray]], row: int, dz_over_dxy: float) -> None:
    """Max projections (top) and xz slices (bottom) side by side; each panel scaled to its own range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depth, rows, columns = panels[0][1].shape
    height_ratio = depth * dz_over_dxy / rows
    width = 2.4
    fig, axes = plt.subplots(
        2,
        len(panels),
        figsize=(width * len(panels), width * rows / columns * (1 + height_ratio) + 0.6),
        gridspec_kw={"height_ratios": [1.0, height_ratio]},
    )
    for index, (title, volume) in enumerate(panels):
        projection = volume.max(axis=0)
        xz = volume[:, row, :]  # a (z, x) slice, z upwards
        for axis, view in zip(axes[:, index], (projection, xz), strict=True):
            low, high = np.percentile(view, [0.5, 99.8])
            axis.imshow(
                view,
                cmap="gray",
                vmin=low,
                vmax=high,
                aspect=dz_over_dxy if view is xz else 1.0,
                origin="lower" if view is xz else "upper",
                interpolation="nearest",
            )
            axis.set_xticks([])
            axis.set_yticks([])
        axes[0, index].set_title(title, fontsize=10)
    axes[0, 0].set_ylabel("max projection (xy)")
    axes[1, 0].set_ylabel(f"xz slice, y = {row}")
    fig.tight_layout()
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURE, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--eval-dir", help="shared/eval (or its microscopy/ folder)")
    parser.add_argument("--iterations", type=int, nargs="+", default=[50, 100])
    parser.add_argument("--model", default="vectorial", choices=("vectorial", "scalar", "gaussian"))
    parser.add_argument("--no-figure", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    import tifffile

    from napari_deblur import engine

    folder = microscopy_dir(args.eval_dir)
    raw = tifffile.imread(folder / "dapi_001.tif").astype(np.float32)
    log.info("dapi_001.tif: %s %s, range %g..%g", raw.shape, raw.dtype, raw.min(), raw.max())
    psf_shape = psf_shape_for(raw.shape)
    start = time.perf_counter()
    psf = engine.microscope_psf(psf_shape, **OPTICS, model=args.model)
    log.info("PSF %s (%s) in %.1f s, sum %.4f", psf.shape, args.model, time.perf_counter() - start, psf.sum())

    background = float(np.percentile(raw, 1))
    rows = [("raw", raw, 0.0)]
    runs = [("ours RL auto", dict(iterations="auto"))]
    runs += [(f"ours RL {n}", dict(iterations=n)) for n in args.iterations]
    runs += [(f"ours RL {n} plain", dict(iterations=n, acceleration=False)) for n in args.iterations]
    for label, options in runs:
        start = time.perf_counter()
        updates = []
        out = engine.richardson_lucy(raw, psf, device="cpu", progress=updates.append, **options)
        if options["iterations"] == "auto":
            label = f"{label} ({len(updates)} it.)"
        rows.append((label, np.asarray(out), time.perf_counter() - start))
        log.info("%s: %.1f s", label, rows[-1][2])
    start = time.perf_counter()
    shallow = psf_shape_for(raw.shape, deep=False)[0]  # 3D Wiener takes no PSF deeper than the stack
    top = (psf.shape[0] - shallow) // 2
    wiener_psf = psf[top : top + shallow] / psf[top : top + shallow].sum()
    wiener = engine.wiener_deconvolve_3d(raw, wiener_psf, device="cpu")
    rows.append(("ours Wiener 3D (30 dB)", np.asarray(wiener), time.perf_counter() - start))
    start = time.perf_counter()
    learned = engine.wiener_net_3d(raw, wiener_psf, device="cpu")  # no PSF deeper than the stack either
    rows.append(("ours Wiener-net 3D", np.asarray(learned), time.perf_counter() - start))

    measured = tifffile.imread(folder / "measured_psf_pycudadecon.tif")
    prepared = engine.prepare_measured_psf(measured)
    measured_line = (
        f"`measured_psf_pycudadecon.tif` {measured.shape} {measured.dtype} through `prepare_measured_psf`: "
        f"shape {prepared.shape}, {prepared.dtype}, sum {float(prepared.sum()):.6f}, peak at "
        f"{tuple(int(i) for i in np.unravel_index(int(np.argmax(prepared)), prepared.shape))}."
    )
    log.info(measured_line)

    lines = [
        "# Protocol 6, real data: `dapi_001.tif` (widefield, no ground truth)",
        "",
        f"Command: `{ed.command_line('benchmarks/microscopy_real_data.py', argv)}`  ",
        ed.environment_line() + "  ",
        f"Stack {' x '.join(map(str, raw.shape))} (z, y, x); PSF {' x '.join(map(str, psf.shape))} "
        f"({args.model}, NA {OPTICS['na']}, {OPTICS['wavelength'] * 1000:g} nm, {OPTICS['dxy']} / "
        f"{OPTICS['dz']} µm, n {OPTICS['ni']}). Share of the signal (above the raw 1st percentile, "
        f"{background:g}) in the top and bottom {OUTER_PLANES} planes; the folder's README gives "
        f"{README_RAW_SHARE} % raw and about 21-23 % after 50-100 iterations of plain 3D RL. Outputs are "
        "float32 in the input's intensity scale, so the same background is subtracted.",
        "",
        "| stack | outer-plane share (%) | time (s) |",
        "|---|---:|---:|",
    ]
    for label, volume, seconds in rows:
        lines.append(f"| {label} | {outer_share(volume, background):.1f} | {seconds:.1f} |")
    lines += ["", measured_line]
    if not args.no_figure:
        row = int(np.argmax(raw.sum(axis=(0, 2))))  # the brightest row, through the nucleus
        save_figure(
            [
                (r[0], r[1]) for r in (rows[0], rows[1], rows[-1], rows[-2])
            ],  # raw, RL auto, Wiener-net 3D, Wiener
            row,
            OPTICS["dz"] / OPTICS["dxy"],
        )
        lines += ["", f"Figure: `{FIGURE.relative_to(REPO)}` (max projection and xz slice at y = {row})."]
    report = "\n".join(lines)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(report + "\n")
    sys.stdout.write(report + "\n")


if __name__ == "__main__":
    main()
