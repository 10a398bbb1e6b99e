"""The ``napari-deblur`` command line.

Subcommands::

    napari-deblur demo [--sample camera_shake|defocus_ramp] [--screenshot OUT.png] [--no-gui] [--output OUT.png]
    napari-deblur batch wiener --psf PSF_FILE [--snr-db 30] INPUTS... --output-dir DIR

Only the standard library and numpy are imported at module level so that
``napari-deblur --help`` is fast; napari, torch and the engine are imported by
the subcommand that needs them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

PROG = "napari-deblur"
#: Image files ``batch`` reads.
BATCH_INPUT_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy")

log = logging.getLogger(__name__)


class CommandLineError(Exception):
    """A problem with the user's input: reported as one line, exit status 2."""


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for ``napari-deblur`` (no heavy imports)."""
    from napari_deblur.demo import DEFAULT_FIGURE_NAME, DEMO_SAMPLES

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Find where an image is blurred and sharpen it (napari plugin tools).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    demo = commands.add_parser(
        "demo",
        help="open napari with a sample image and the plugin's widgets",
        description=(
            "Open napari with a sample image and every napari-deblur widget docked; for the camera-shake "
            "sample the Wiener widget is run once. Without a display (Linux with neither DISPLAY nor "
            "WAYLAND_DISPLAY set) or with --no-gui, the same methods run without Qt and a matplotlib "
            "figure is saved instead."
        ),
    )
    demo.add_argument("--sample", choices=DEMO_SAMPLES, default=DEMO_SAMPLES[0],
                      help="which sample to open (default: %(default)s)")
    demo.add_argument("--screenshot", type=Path, metavar="OUT.png",
                      help="run in a window, save a screenshot of the whole window to OUT.png and exit")
    demo.add_argument("--no-gui", action="store_true",
                      help="do not open napari; save a matplotlib figure of the results instead")
    demo.add_argument("--output", type=Path, metavar="OUT.png",
                      help=f"where the figure goes without a GUI (default: ./{DEFAULT_FIGURE_NAME})")
    demo.set_defaults(handler=_run_demo)

    batch = commands.add_parser("batch", help="process image files without a GUI",
                                description="Process image files without a GUI.")
    methods = batch.add_subparsers(dest="method", metavar="METHOD")
    methods.required = True
    wiener = methods.add_parser(
        "wiener",
        help="Wiener deconvolution with a known PSF",
        description=(
            "Deconvolve each input with a known PSF (Wiener filter, boundary-safe) and write "
            "<stem>_wiener.tif (float32, the input's intensity scale) into the output folder. "
            f"Inputs: {', '.join(BATCH_INPUT_EXTENSIONS)}; RGB(A) images are processed per channel."
        ),
    )
    wiener.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image files")
    wiener.add_argument("--psf", type=Path, required=True, metavar="PSF_FILE",
                        help="PSF file (.mat, .tif, .npy, .png)")
    wiener.add_argument("--psf-index", type=int, metavar="N",
                        help="which kernel (1-based) when the PSF file holds several, e.g. Levin09.mat")
    wiener.add_argument("--snr-db", type=float, default=30.0,
                        help="assumed signal-to-noise ratio in dB; lower for noisier images (default: 30)")
    wiener.add_argument("--output-dir", type=Path, required=True, metavar="DIR",
                        help="folder for the results (created if needed)")
    wiener.set_defaults(handler=_run_batch_wiener)
    return parser


def _version() -> str:
    from napari_deblur import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``napari-deblur``.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        Exit status: 0 on success, 2 for a usage error or unusable input
        (missing file, unreadable PSF), with a one-line message on stderr.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args) or 0)
    except CommandLineError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 2


# --------------------------------------------------------------------------- demo


def _run_demo(args: argparse.Namespace) -> int:
    from napari_deblur import demo

    reason = "--no-gui given" if args.no_gui else demo.display_missing_reason()
    if reason is None:
        try:
            path = demo.run_gui_demo(args.sample, screenshot=args.screenshot)
        except ImportError as exc:  # napari installed without a Qt binding
            reason = f"napari cannot open a window: {exc}".splitlines()[0]
        else:
            if path is not None:
                print(path)
            return 0
    output = args.output or args.screenshot or Path.cwd() / demo.DEFAULT_FIGURE_NAME
    print(f"No napari window ({reason}): running the {args.sample} demo without Qt "
          "and saving a matplotlib figure instead.")
    print(demo.save_demo_figure(args.sample, output))
    return 0


# --------------------------------------------------------------------------- batch


def read_image_file(path: Path):
    """Read an image file as a numpy array (tifffile, ``np.load`` or ``skimage.io``).

    Raises
    ------
    CommandLineError
        If the file is missing, has an unsupported extension or cannot be read.
    """
    import numpy as np

    suffix = path.suffix.lower()
    if suffix not in BATCH_INPUT_EXTENSIONS:
        raise CommandLineError(
            f"cannot read {str(path)!r}: unsupported extension {suffix or '(none)'!r}; "
            f"use one of {', '.join(BATCH_INPUT_EXTENSIONS)}"
        )
    if not path.is_file():
        raise CommandLineError(f"input file {str(path)!r} does not exist")
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            data = tifffile.imread(path)
        elif suffix == ".npy":
            data = np.load(path, allow_pickle=False)
        else:
            import skimage.io

            data = skimage.io.imread(path)
    except (OSError, ValueError) as exc:
        raise CommandLineError(f"cannot read {str(path)!r}: {exc}") from exc
    return np.asarray(data)


def _guess_channel_axis(image) -> int | None:
    """RGB(A) when the last axis has 3 or 4 entries and the image is larger than 30 px (as napari guesses)."""
    if image.ndim >= 3 and image.shape[-1] in (3, 4) and min(image.shape[-3:-1]) > 30:
        return image.ndim - 1
    return None


def _read_batch_psf(path: Path, index: int | None):
    from napari_deblur.psf_files import read_psf_file

    if not path.is_file():
        raise CommandLineError(f"PSF file {str(path)!r} does not exist")
    try:
        psf = read_psf_file(path)
    except ValueError as exc:
        raise CommandLineError(f"bad PSF file {str(path)!r}: {exc}") from exc
    if index is not None:
        if psf.ndim == 2:
            if index != 1:
                raise CommandLineError(f"--psf-index {index}: {path.name} holds a single kernel")
            return psf
        if not 1 <= index <= psf.shape[0]:
            raise CommandLineError(
                f"--psf-index {index} is out of range: {path.name} holds {psf.shape[0]} kernels (1..{psf.shape[0]})"
            )
        return psf[index - 1]
    return psf


def _run_batch_wiener(args: argparse.Namespace) -> int:
    psf = _read_batch_psf(args.psf, args.psf_index)
    stems: dict[str, Path] = {}
    for path in args.inputs:
        if path.stem in stems:
            raise CommandLineError(
                f"{str(stems[path.stem])!r} and {str(path)!r} would both be written as {path.stem}_wiener.tif"
            )
        stems[path.stem] = path
        if not path.is_file():
            raise CommandLineError(f"input file {str(path)!r} does not exist")
    if args.output_dir.exists() and not args.output_dir.is_dir():
        raise CommandLineError(f"--output-dir {str(args.output_dir)!r} exists and is not a folder")

    import numpy as np
    import tifffile

    from napari_deblur.engine import wiener_deconvolve

    args.output_dir.mkdir(parents=True, exist_ok=True)
    for path in args.inputs:
        image = read_image_file(path)
        channel_axis = _guess_channel_axis(image)
        if psf.ndim == 3:
            planes = image.shape[0] if image.ndim == 3 + (channel_axis is not None) else None
            if planes != psf.shape[0]:
                raise CommandLineError(
                    f"{args.psf.name} holds {psf.shape[0]} kernels but {path.name} has shape {image.shape}; "
                    "pick one kernel with --psf-index, or give a stack with one plane per kernel"
                )
        try:
            result = wiener_deconvolve(image, psf, snr_db=args.snr_db, channel_axis=channel_axis)
        except (ValueError, TypeError) as exc:
            raise CommandLineError(f"cannot deconvolve {str(path)!r}: {exc}") from exc
        out = args.output_dir / f"{path.stem}_wiener.tif"
        tifffile.imwrite(
            out,
            np.asarray(result, dtype=np.float32),
            photometric="rgb" if channel_axis is not None else "minisblack",
            metadata={"napari_deblur": f"wiener snr_db={args.snr_db:g} psf={args.psf.name}"},
        )
        log.info("wrote %s", out)
        print(out)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
