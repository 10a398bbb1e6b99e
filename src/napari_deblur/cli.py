"""The ``napari-deblur`` command line.

Subcommands::

    napari-deblur demo [--sample camera_shake|defocus_ramp] [--screenshot OUT.png] [--no-gui] [--output OUT.png]
    napari-deblur run METHOD INPUT... -o OUTDIR [--psf FILE [--psf-per-plane]] [--blur LEVEL|auto] [--device ...]
                      (METHOD: gwis, blur-map, wiener, wiener-net (a 3D PSF file: 3D deconvolution
                       of each volume, wiener-net by Wiener-net 3D), blind: no PSF, estimated per plane
                       and written beside the result,
                       or defocus: deconvolution by a blur map [--psf-model gaussian|disk])
                      [--scheduler ADDRESS | --workers N]      ("batch" is an alias of "run")

Only the standard library and numpy are imported at module level so that
``napari-deblur --help`` is fast; napari, torch and the engine are imported by
the subcommand that needs them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from napari_deblur.io.stack_files import MAX_PLANE_PIXELS, STACK_INPUT_SUFFIXES
from napari_deblur.options import DEFAULT_ENSEMBLE, ENSEMBLE_SIZES

PROG = "napari-deblur"
#: Methods of ``run``.
RUN_METHODS = ("gwis", "blur-map", "wiener", "wiener-net", "blind", "defocus")
WIENER_NET_ENSEMBLES = ENSEMBLE_SIZES

log = logging.getLogger(__name__)


EXIT_OK = 0
EXIT_SOME_INPUTS_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class CommandLineError(Exception):
    """A problem with the user's input: reported as one line, exit status 2."""


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that every partial output is cleaned up as for Ctrl-C."""


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
    demo.add_argument(
        "--sample",
        choices=DEMO_SAMPLES,
        default=DEMO_SAMPLES[0],
        help="which sample to open (default: %(default)s)",
    )
    demo.add_argument(
        "--screenshot",
        type=Path,
        metavar="OUT.png",
        help="run in a window, save a screenshot of the whole window to OUT.png and exit",
    )
    demo.add_argument(
        "--no-gui",
        action="store_true",
        help="do not open napari; save a matplotlib figure of the results instead",
    )
    demo.add_argument(
        "--output",
        type=Path,
        metavar="OUT.png",
        help=f"where the figure goes without a GUI (default: ./{DEFAULT_FIGURE_NAME})",
    )
    demo.set_defaults(handler=_run_demo)

    run = commands.add_parser(
        "run",
        aliases=["batch"],
        help="sharpen or analyse image files (stacks larger than memory too) without a GUI",
        description=(
            "Process each input with METHOD, plane by plane (bounded memory, also for stacks larger "
            "than memory), and write <stem>_<METHOD>.tif (.zarr for zarr inputs or --format zarr) "
            "into the output folder: float32, the input's intensity scale; blind also writes the "
            "kernels it estimated as <stem>_blind_psf.tif. Inputs: "
            f"{', '.join(STACK_INPUT_SUFFIXES)}; RGB(A) images are recognised by a last axis of 3 or "
            "4. Existing outputs are never replaced without --overwrite, and an output path that is "
            "one of the inputs is refused. A bad file (unreadable, too large, not a regular file, "
            "out of memory, a full disk) is reported in one line and the others still run; no "
            "partial output is left behind on failure, Ctrl-C or SIGTERM. Exit status: 0 when every "
            "file worked, 1 when some failed, 2 for usage errors (nothing run), 130 after Ctrl-C, "
            "143 after SIGTERM."
        ),
    )
    run.add_argument(
        "method", choices=RUN_METHODS, metavar="METHOD", help=f"one of: {', '.join(RUN_METHODS)}"
    )
    run.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image files or zarr folders")
    run.add_argument(
        "-o",
        "--output-dir",
        type=Path,
        required=True,
        metavar="OUTDIR",
        help="folder for the results (created if needed)",
    )
    run.add_argument(
        "--psf",
        type=Path,
        metavar="FILE",
        help="PSF file (.mat, .tif, .npy, .png); needed by wiener and wiener-net",
    )
    run.add_argument(
        "--psf-index",
        type=int,
        metavar="N",
        help="which kernel (1-based) when the PSF file holds several, e.g. Levin09.mat",
    )
    run.add_argument(
        "--psf-per-plane",
        action="store_true",
        help="wiener and wiener-net: the PSF file is a stack of 2D kernels, one per plane of the "
        "image; without it, a 3D PSF deconvolves each (z, y, x) volume in 3D",
    )
    run.add_argument(
        "--blur",
        default="auto",
        metavar="LEVEL|auto",
        help="gwis and defocus: blur level in pixels (PSF standard deviation), or 'auto' to "
        "estimate a blur map per plane first (default: %(default)s)",
    )
    run.add_argument(
        "--psf-model",
        choices=("gaussian", "disk"),
        default="gaussian",
        help="defocus: shape of the blur at each pixel, a Gaussian (soft optics, microscopes) or a "
        "disk (an out-of-focus camera lens) (default: %(default)s)",
    )
    run.add_argument(
        "--snr-db",
        type=float,
        default=30.0,
        help="wiener: assumed signal-to-noise ratio in dB (default: %(default)s)",
    )
    run.add_argument(
        "--ensemble",
        type=int,
        choices=WIENER_NET_ENSEMBLES,
        default=DEFAULT_ENSEMBLE,
        metavar="N",
        help="wiener-net, blind and defocus: average the network over N flipped or turned views of "
        "each plane "
        f"({', '.join(map(str, WIENER_NET_ENSEMBLES))}; each view is a network pass; "
        "default: %(default)s)",
    )
    run.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda", "mps"),
        help="where the engine runs (default: %(default)s: CUDA, then MPS, then CPU)",
    )
    run.add_argument(
        "--format",
        choices=("tif", "zarr"),
        help="output format (default: zarr for zarr inputs, tif otherwise)",
    )
    run.add_argument(
        "--force",
        action="store_true",
        help="use a PSF even when it does not look like a blur kernel (larger than a quarter "
        "of the image's side, or with almost no background around its blur)",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="replace outputs that napari-deblur wrote before (never other files or folders)",
    )
    run.add_argument(
        "--max-plane-megapixels",
        type=float,
        default=MAX_PLANE_PIXELS / 1e6,
        metavar="MP",
        help="refuse inputs whose planes (rows x columns x channels) declare more than MP "
        "million values (default: %(default).0f)",
    )
    cluster = run.add_mutually_exclusive_group()
    cluster.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="address of a dask.distributed scheduler (e.g. tcp://host:8786) to run on",
    )
    cluster.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="start a local dask.distributed cluster of N worker processes",
    )
    run.set_defaults(handler=_run_method)
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
        Exit status: 0 on success, 1 when some inputs of ``run`` failed, 2 for
        a usage error (nothing run; a one-line message on stderr), 130 after
        Ctrl-C, 143 after SIGTERM.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.handler(args) or 0)
    except CommandLineError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return EXIT_USAGE


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
    print(
        f"No napari window ({reason}): running the {args.sample} demo without Qt "
        "and saving a matplotlib figure instead."
    )
    try:
        print(demo.save_demo_figure(args.sample, output))
    except ImportError as exc:
        raise CommandLineError(str(exc)) from exc
    return 0


# --------------------------------------------------------------------------- run


def _read_psf(path: Path | None, index: int | None, method: str):
    from napari_deblur.io.psf_files import read_psf_file

    if path is None:
        raise CommandLineError(f"{method} needs a PSF: give --psf FILE")
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


KERNEL_BACKGROUND_LEVEL = 0.05
"""Pixels below this fraction of a kernel's peak count as its background."""
KERNEL_MIN_BACKGROUND_SHARE = 0.10
"""A blur kernel larger than 3 x 3 has at least this share of background pixels around its blur
(Gaussian, disk, ring, motion and measured kernels have 20-99 %; photos almost none)."""
KERNEL_MAX_SIDE_SHARE = 0.25
"""A kernel side above this share of the image's smaller side is refused."""


def _kernel_problem(psf, name: str) -> str | None:
    """Why ``psf`` (2D, or a stack of 2D kernels) cannot be a blur kernel, or None."""
    import numpy as np

    for kernel in np.asarray(psf, dtype=np.float64).reshape((-1,) + np.shape(psf)[-2:]):
        if min(kernel.shape) <= 3:
            continue
        peak = kernel.max()
        share = float(np.mean(kernel < KERNEL_BACKGROUND_LEVEL * peak)) if peak > 0 else 0.0
        if share < KERNEL_MIN_BACKGROUND_SHARE:
            return (
                f"{name} does not look like a blur kernel: only {share:.0%} of its pixels are near zero "
                f"(a kernel is a blur surrounded by background, at least "
                f"{KERNEL_MIN_BACKGROUND_SHARE:.0%}); is it an image? Pass --force to use it anyway"
            )
    return None


def _kernel_size_problem(psf, image_shape: tuple[int, ...], name: str) -> str | None:
    """Why ``psf`` is too large for planes of ``image_shape`` (rows, columns), or None."""
    side = min(image_shape)
    if max(psf.shape[-2:]) > KERNEL_MAX_SIDE_SHARE * side:
        return (
            f"the PSF {name} ({psf.shape[-2]} x {psf.shape[-1]} px) is larger than a quarter of the "
            f"image's side ({image_shape[0]} x {image_shape[1]} px): it cannot be this image's blur "
            "kernel. Pass --force to use it anyway"
        )
    return None


def _parse_blur(text: str) -> float | None:
    """``None`` for "auto", else a level >= 0 in pixels."""
    if text.strip().lower() == "auto":
        return None
    try:
        level = float(text)
    except ValueError:
        raise CommandLineError(f"--blur must be a number of pixels or 'auto', not {text!r}") from None
    if not level >= 0 or level == float("inf"):
        raise CommandLineError(f"--blur must be a finite level >= 0 pixels, got {text}")
    return level


def _method_call(args: argparse.Namespace):
    """``(lazy_result(image, channel_axis), description, psf or None)`` for the chosen method.

    Usage is checked here: a PSF that does not look like a blur kernel is
    refused unless ``--force``.
    """
    from napari_deblur import engine

    device = None if args.device == "auto" else args.device
    if args.method in ("wiener", "wiener-net"):
        psf = _read_psf(args.psf, args.psf_index, args.method)
        per_plane = bool(args.psf_per_plane)
        volume_psf = psf.ndim == 3 and psf.shape[0] > 1 and not per_plane
        # A 3D PSF's out-of-focus planes are not blur kernels of their own: only 2D kernels are checked.
        problem = None if args.force or volume_psf else _kernel_problem(psf, repr(args.psf.name))
        if problem:
            raise CommandLineError(problem)
        psf_text = f"psf={args.psf.name}" + (" (3D)" if volume_psf else " (per plane)" if per_plane else "")
        if args.method == "wiener":
            return (
                lambda image, channel_axis: engine.wiener_deconvolve(
                    image,
                    psf,
                    snr_db=args.snr_db,
                    channel_axis=channel_axis,
                    device=device,
                    psf_per_plane=per_plane,
                ),
                f"wiener snr_db={args.snr_db:g} {psf_text}",
                None if volume_psf else psf,
            )
        return (
            lambda image, channel_axis: engine.wiener_net_deconvolve(
                image,
                psf,
                channel_axis=channel_axis,
                device=device,
                ensemble=args.ensemble,
                psf_per_plane=per_plane,
            ),
            f"wiener-net {psf_text}" + ("" if volume_psf else f" ensemble={args.ensemble}"),
            None if volume_psf else psf,
        )
    if args.method == "blind":
        return _blind_call(args, device)
    if args.method == "blur-map":
        return (
            lambda image, channel_axis: engine.estimate_blur_map(
                image, channel_axis=channel_axis, device=device
            ),
            "blur map (px)",
            None,
        )
    level = _parse_blur(args.blur)
    blur = level if level is not None else "auto"
    described = "auto" if level is None else f"{level:g}"
    if args.method == "defocus":

        def defocus(image, channel_axis):
            return engine.deblur_defocus(
                image,
                blur,
                psf_model=args.psf_model,
                channel_axis=channel_axis,
                device=device,
                ensemble=args.ensemble,
            )

        return defocus, f"defocus blur={described} psf_model={args.psf_model} ensemble={args.ensemble}", None

    def gwis(image, channel_axis):
        return engine.sharpen_gwis(image, blur, channel_axis=channel_axis, device=device)

    return gwis, f"gwis blur={described}", None


class _BlindPlanes:
    """``napari-deblur run blind``: each plane's kernel estimated, then Wiener-net (lazy, one plane a
    chunk); the kernels the planes used are kept (``kernels``, by flat plane index) for the kernel file.

    Planes computed in other processes (``--workers``, ``--scheduler``) send their kernels back
    through a dask.distributed queue (:meth:`share_through`), collected by :meth:`collect`.
    """

    def __init__(self, ensemble: int, device, queue_name: str | None = None):
        import threading

        self.ensemble, self.device = ensemble, device
        self.queue_name = queue_name
        self.kernels: dict[int, object] = {}
        self._lock = threading.Lock()
        self._queue = None  # the queue's client side, in the process that writes the files
        self._remote = False  # a copy computing planes in another process

    def __getstate__(self):  # sent to other processes: without the lock and the kernels found here
        return {"ensemble": self.ensemble, "device": self.device, "queue_name": self.queue_name}

    def __setstate__(self, state):
        self.__init__(state["ensemble"], state["device"], state["queue_name"])
        self._remote = True

    def share_through(self, client) -> None:
        """Have planes computed on ``client``'s workers send their kernels back (a distributed queue)."""
        import uuid

        from distributed import Queue

        self.queue_name = f"napari-deblur-blind-kernels-{uuid.uuid4().hex}"
        self._queue = Queue(self.queue_name, client=client)

    def collect(self) -> None:
        """Take the kernels that other processes sent into ``kernels``."""
        if self._queue is None:
            return
        import numpy as np

        for index, kernel in self._queue.get(batch=True):
            self.kernels[int(index)] = np.asarray(kernel, np.float32)

    def __call__(self, image, channel_axis):
        from napari_deblur import engine
        from napari_deblur.engine.core.lazy import lazy_planewise

        self.collect()  # what an earlier, failed input left in the queue
        self.kernels.clear()

        def plane(block, index):
            result = engine.deblur_blind(
                block, channel_axis=channel_axis, device=self.device, ensemble=self.ensemble
            )
            log.info("plane %d: estimated a %d px kernel", index, result.psf.shape[-1])
            if self._remote and self.queue_name is not None:
                from distributed import Queue

                Queue(self.queue_name).put([int(index), result.psf.tolist()])
            else:
                with self._lock:
                    self.kernels[index] = result.psf
            return result.image

        return lazy_planewise(plane, image, channel_axis=channel_axis)

    def kernel_stack(self, plane_shape: tuple[int, ...]):
        """The kernels as float32 ``plane_shape + (k, k)`` (``(k, k)`` for one plane), each cut or
        padded to the largest support; ``None`` when some plane's kernel is not here."""
        import numpy as np

        from napari_deblur.engine.methods.blind_psf import stack_kernels

        count = int(np.prod(plane_shape, dtype=np.int64))
        if sorted(self.kernels) != list(range(count)):
            return None
        stack = stack_kernels([self.kernels[i] for i in range(count)])
        return stack.reshape(tuple(plane_shape) + stack.shape[-2:])


def _blind_call(args: argparse.Namespace, device):
    return (
        _BlindPlanes(args.ensemble, device),
        f"blind (kernel estimated per plane) ensemble={args.ensemble}",
        None,
    )


def _save_kernels(blind: _BlindPlanes, image, channel_axis: int | None, out: Path, overwrite) -> Path | None:
    """Write the kernels ``blind`` estimated for ``image`` beside ``out`` and return the file (or
    say why not and return ``None``)."""
    import dask.array as da

    from napari_deblur.engine import run_job
    from napari_deblur.engine.core.planes import PlaneLayout
    from napari_deblur.io.stack_files import iter_save_lazy

    layout = PlaneLayout.of(tuple(int(n) for n in image.shape), channel_axis)
    blind.collect()
    stack = blind.kernel_stack(layout.leading_shape)
    if stack is None:
        sys.stderr.write(
            f"{PROG}: {out.name}: the kernels of some planes did not come back from the processes "
            "that estimated them and are not written; run without --workers/--scheduler to keep them\n"
        )
        return None
    target = _kernel_path(out)
    run_job(
        iter_save_lazy(
            da.from_array(stack), target, description="blind kernels, sum 1 each", overwrite=overwrite
        )
    )
    log.info("wrote %s", target)
    return target


def _kernel_path(out: Path) -> Path:
    """Where ``run blind`` writes the kernels of the output ``out``: ``<name>_psf.tif`` beside it."""
    return out.with_name(f"{out.stem}_psf.tif")


def _output_path(args: argparse.Namespace, path: Path) -> Path:
    suffix = "." + (args.format or ("zarr" if path.suffix.lower() == ".zarr" else "tif"))
    return args.output_dir / f"{path.stem}_{args.method}{suffix}"


class _ProgressLine:
    """A one-line text progress bar on stderr (redrawn in place on a terminal, else every 10 %)."""

    def __init__(self, label: str, width: int = 30):
        self.label, self.width = label, width
        self.tty = sys.stderr.isatty()
        self.shown = -1

    def __call__(self, update) -> None:
        tenth = int(update.fraction * 10)
        if not self.tty and tenth == self.shown:
            return
        self.shown = tenth
        filled = int(round(update.fraction * self.width))
        bar = "#" * filled + "." * (self.width - filled)
        end = "" if self.tty and update.fraction < 1 else "\n"
        sys.stderr.write(
            f"{chr(13) if self.tty else ''}[{bar}] {update.fraction:4.0%} {self.label}: {update.message}{end}"
        )
        sys.stderr.flush()


def _start_cluster(args: argparse.Namespace):
    """A dask.distributed client for --scheduler/--workers (None: dask's threads in this process)."""
    if args.scheduler is None and args.workers is None:
        return None
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise CommandLineError(
            "--scheduler/--workers need dask.distributed: pip install 'napari-deblur[distributed]'"
        ) from None
    if args.workers is not None:
        if args.workers < 1:
            raise CommandLineError(f"--workers must be at least 1, got {args.workers}")
        if not args.verbose:  # distributed logs every worker's start at INFO
            logging.getLogger("distributed").setLevel(logging.WARNING)
        import dask

        # distributed starts workers with MALLOC_TRIM_THRESHOLD_ set, which turns off glibc's
        # adaptive mmap threshold: every large torch temporary is then mapped and unmapped
        # afresh, and GWIS ran 2x slower (4 planes of 2048^2: 32 s vs 16 s on one worker).
        environ = {
            name: value
            for name, value in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
            if name != "MALLOC_TRIM_THRESHOLD_"
        }
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            return Client(
                LocalCluster(
                    n_workers=args.workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=":0",
                    silence_logs=logging.WARNING,
                )
            )
    try:
        return Client(args.scheduler, timeout="20s")
    except OSError as exc:
        raise CommandLineError(f"cannot reach the scheduler at {args.scheduler!r}: {exc}") from exc


def _same_path(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _plan_outputs(args: argparse.Namespace) -> dict[Path, Path]:
    """``{output: input}``; refuses two inputs with one output and an output that is an input."""
    outputs: dict[Path, Path] = {}
    written: dict[Path, Path] = {}  # every file written (kernel files too), and its input
    for path in args.inputs:
        out = _output_path(args, path)
        for target in (out, _kernel_path(out)) if args.method == "blind" else (out,):
            if target in written:
                raise CommandLineError(
                    f"{str(written[target])!r} and {str(path)!r} would both be written as {target.name}"
                )
            written[target] = path
        outputs[out] = path
    for out in written:
        for path in args.inputs:
            if _same_path(out, path):
                raise CommandLineError(
                    f"the output of {str(written[out])!r} would be written over the input {str(path)!r}; "
                    "choose another --output-dir (nothing was run)"
                )
    if args.output_dir.exists() and not args.output_dir.is_dir():
        raise CommandLineError(f"--output-dir {str(args.output_dir)!r} exists and is not a folder")
    return outputs


def _one_line(path: Path, exc: BaseException) -> str:
    """The error line of a failed input."""
    if isinstance(exc, MemoryError):
        text = "not enough memory to process it" + (f" ({exc})" if str(exc) else "")
    else:
        text = str(exc) or type(exc).__name__
        if isinstance(exc, OSError) and exc.strerror:
            text = f"{exc.strerror}" + (f": {exc.filename}" if exc.filename else "")
    hint = ""
    if "PSF stack" in text:
        hint = " (pick one kernel with --psf-index N)"
    elif "3D PSF needs a 3D volume" in text:
        hint = " (a stack of 2D kernels: give --psf-per-plane, or pick one with --psf-index N)"
    return f"{PROG}: error: {path}: {text}{hint}".replace("\n", " ").rstrip() + "\n"


def _raise_terminated(signum, frame) -> None:
    raise _Terminated()


def _run_method(args: argparse.Namespace) -> int:
    """``napari-deblur run``: every input through the method into OUTDIR; bad files are skipped."""
    import signal

    outputs = _plan_outputs(args)
    if sys.stderr.isatty():  # the engine's imports take seconds: say something at once
        sys.stderr.write(f"{PROG}: {args.method} on {len(outputs)} file(s); loading the engine...\n")
        sys.stderr.flush()
    if not args.max_plane_megapixels > 0:
        raise CommandLineError(f"--max-plane-megapixels must be positive, got {args.max_plane_megapixels:g}")
    max_plane_pixels = int(args.max_plane_megapixels * 1e6)
    compute, description, psf = _method_call(args)

    from napari_deblur.engine import run_job
    from napari_deblur.io.stack_files import check_replaceable, iter_save_lazy, open_lazy_image

    try:
        args.output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandLineError(
            f"cannot create --output-dir {str(args.output_dir)!r}: {exc.strerror or exc}"
        ) from exc
    client = _start_cluster(args)
    if client is not None:
        at_once = sum(client.nthreads().values())
        if isinstance(compute, _BlindPlanes):
            compute.share_through(client)
    else:
        # Planes in parallel, one per core, each single-threaded: torch's small operations scale
        # poorly over threads, and threads x torch threads > cores makes every kernel wait.
        import torch

        at_once = os.cpu_count() or 1
        torch.set_num_threads(1)
    failed = 0
    overwrite = "own" if args.overwrite else "never"
    import threading

    on_main_thread = threading.current_thread() is threading.main_thread()
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_terminated) if on_main_thread else None
    try:
        for out, path in outputs.items():
            try:  # one guarded step per input: any failure is this input's, and the batch goes on
                image, channel_axis = open_lazy_image(path, max_plane_pixels=max_plane_pixels)
                plane_axes = (-3, -2) if channel_axis is not None else (-2, -1)
                too_large = (
                    None
                    if psf is None or args.force
                    else _kernel_size_problem(
                        psf, tuple(image.shape[a] for a in plane_axes), repr(args.psf.name)
                    )
                )
                if too_large:
                    raise ValueError(too_large)
                if isinstance(compute, _BlindPlanes):  # refused before hours of work, not after
                    check_replaceable(_kernel_path(out), overwrite)
                result = compute(image, channel_axis)
                run_job(
                    iter_save_lazy(
                        result,
                        out,
                        channel_axis=None if args.method == "blur-map" else channel_axis,
                        at_once=at_once,
                        description=description,
                        overwrite=overwrite,
                    ),
                    _ProgressLine(path.name),
                )
                kernel_file = None
                if isinstance(compute, _BlindPlanes):
                    kernel_file = _save_kernels(compute, image, channel_axis, out, overwrite)
            except Exception as exc:  # noqa: BLE001 - reported by name; KeyboardInterrupt ends the batch
                failed += 1
                log.debug("failed on %s", path, exc_info=True)
                sys.stderr.write(_one_line(path, exc))
                continue
            log.info("wrote %s", out)
            print(out)
            if kernel_file is not None:
                print(kernel_file)
    except KeyboardInterrupt as interrupt:
        how = "terminated" if isinstance(interrupt, _Terminated) else "interrupted"
        sys.stderr.write(f"\n{PROG}: {how}; the unfinished output was removed\n")
        return EXIT_TERMINATED if isinstance(interrupt, _Terminated) else EXIT_INTERRUPTED
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous_sigterm)
        if client is not None:
            client.close()
    return EXIT_SOME_INPUTS_FAILED if failed else EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
