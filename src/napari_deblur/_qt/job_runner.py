"""The one mechanism every napari-deblur widget uses to run an engine job.

A widget embeds a :class:`JobRunner` (a magicgui ``Container`` with a scope
choice, a "Side by side" checkbox, Run / Cancel / "Save whole stack to file…"
buttons, a progress bar and a status line) and calls :meth:`JobRunner.start`
with

* the input layer,
* ``make_steps(data, channel_axis)``: returns an engine *job generator* that
  yields ``JobProgress`` and returns the result (e.g.
  ``iter_wiener_deconvolve``); it is called and driven in a worker thread,
* ``make_lazy(data, channel_axis)``: the same method on a dask array, which
  the engine answers at once with a lazy result (e.g. ``wiener_deconvolve``);
  needed for the lazy scope and for :meth:`JobRunner.save_whole_stack`,
* ``make_outputs(result)``: turns the result into :class:`OutputLayerSpec`
  entries; it is called on the GUI thread.

The runner validates the layer, takes the data for the chosen scope (never
writing into the layer), runs the generator in a superqt generator worker,
shows progress, cancels at the next yield, reports errors as napari
notifications and adds the output layers just above the input with the input's
geometry. Everything that touches Qt or layers happens on the GUI thread.

A layer whose data is a dask array (a stack larger than memory) also gets the
scope "Whole stack, lazily": the output layers then hold the engine's lazy
result, and napari computes only the planes it shows. "Save whole stack to
file…" computes the lazy result plane by plane into a ``.zarr`` or ``.tif``
file (numpy layers are wrapped as dask arrays) and adds the saved file as
lazy output layers.

Scripts can do::

    dock, widget = viewer.window.add_plugin_dock_widget("napari-deblur", "Wiener-net sharpener")
    widget.run()
    (layer,) = widget.runner.wait()
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
import sys
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, Label, ProgressBar, PushButton
from psygnal import Signal

from napari_deblur.io.stack_files import STACK_OUTPUT_SUFFIXES

if TYPE_CHECKING:
    import napari
    import napari.layers

logger = logging.getLogger(__name__)

SCOPE_CURRENT_SLICE = "Current slice"
SCOPE_WHOLE_STACK = "Whole stack"
SCOPE_LAZY = "Whole stack, lazily (computed as you scroll)"
SCOPES = (SCOPE_CURRENT_SLICE, SCOPE_WHOLE_STACK)
LAZY_SCOPES = (*SCOPES, SCOPE_LAZY)
_PROGRESS_STEPS = 1000
_DEFAULT_LABEL = re.compile(r"^-?\d+$")

MakeSteps = Callable[[np.ndarray, "int | None"], Generator[Any, Any, Any]]
MakeLazy = Callable[[Any, "int | None"], Any]
MakeOutputs = Callable[[Any], Sequence["OutputLayerSpec"]]


@dataclass
class OutputLayerSpec:
    """One layer a job adds to the viewer.

    Parameters
    ----------
    data : array-like or list
        Layer data (for ``"shapes"``: a list of vertex arrays in data
        coordinates of the output; for a current-slice job, vertices with one
        coordinate per input axis are in the input's own data coordinates,
        so the shapes lie on that slice).
    suffix : str
        The layer is named ``f"{input name} {suffix}"`` (plus the slice
        description for a current-slice job, and `` [n]`` when that name is
        taken).
    layer_type : {"image", "labels", "shapes"}
        Kind of layer to create.
    kwargs : dict
        Extra keyword arguments for the layer constructor (``colormap``,
        ``contrast_limits``, ``metadata``, ``opacity``...). Geometry (scale,
        translate, rotate, shear, affine, units, axis_labels) is taken from
        the input and should not be given here.
    match_input_contrast : bool
        For image outputs: use the input's contrast limits (and, for
        grayscale, its colormap and gamma) unless ``kwargs`` sets them.
    """

    data: Any
    suffix: str
    layer_type: Literal["image", "labels", "shapes"] = "image"
    kwargs: dict[str, Any] = field(default_factory=dict)
    match_input_contrast: bool = False


@dataclass(frozen=True)
class JobSelection:
    """The part of an input layer a job works on.

    Attributes
    ----------
    layer : napari.layers.Image
        The input layer.
    index : tuple of int or None
        Data index along the leading (non-spatial) axes for a current-slice
        job; ``None`` for the whole layer.
    channel_axis : int or None
        Axis of the selected data that holds RGB(A) channels, or ``None``.
    name_suffix : str
        ``""`` or a slice description such as ``" (slice z=4)"``.
    lazy : bool
        The whole layer as a dask array, for a lazy result (index is ``None``).
    """

    layer: Any
    index: tuple[int, ...] | None
    channel_axis: int | None
    name_suffix: str
    lazy: bool = False

    @property
    def covered_axes(self) -> tuple[int, ...]:
        """Layer (world) axes the selected data spans, channel axis excluded."""
        ndim = self.layer.ndim
        start = 0 if self.index is None else len(self.index)
        return tuple(range(start, ndim))

    def read_data(self) -> Any:
        """The selected data (level 0 if multiscale), never writable into the layer.

        Returns a read-only numpy array, read in full: slow for lazy (dask,
        zarr) data, so call it in the worker. For a lazy selection, returns a
        dask array without reading any pixel: the layer's own dask array, or
        its data wrapped one plane per chunk.
        """
        data = level0(self.layer)
        if self.lazy:
            if is_dask_array(data):
                return data
            import dask.array as da

            from napari_deblur.engine.core.lazy import plane_chunks

            if isinstance(data, np.ndarray):
                data = data.view()
                data.flags.writeable = False
            return da.from_array(data, chunks=plane_chunks(tuple(data.shape), self.channel_axis))
        if self.index is not None:
            data = data[self.index]
        array = np.asarray(data)
        view = array.view()
        view.flags.writeable = False
        return view


def level0(layer: Any) -> Any:
    """A layer's full-resolution data (level 0 of a multiscale pyramid)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def is_dask_array(data: Any) -> bool:
    """Whether ``data`` is a dask array (without importing dask)."""
    dask_array = sys.modules.get("dask.array")
    return dask_array is not None and isinstance(data, dask_array.Array)


def offers_lazy_scope(layer: Any) -> bool:
    """Whether ``layer`` is a stack held as a dask array (so it can be processed lazily)."""
    return layer is not None and layer.ndim > 2 and is_dask_array(level0(layer))


def choose_save_path_with_dialog(suggested_name: str) -> str | None:
    """Ask for the file to save a whole stack to (``None`` when the dialog is cancelled)."""
    from qtpy.QtWidgets import QFileDialog

    path, _ = QFileDialog.getSaveFileName(
        None,
        "Save whole stack to file",
        suggested_name,
        "Zarr folder (*.zarr);;TIFF file (*.tif)",
    )
    return path or None


def _leading_axis_names(layer: Any, n_lead: int) -> list[str]:
    labels = list(getattr(layer, "axis_labels", ()) or ())[:n_lead]
    defaults = {1: ["z"], 2: ["t", "z"]}.get(n_lead, [f"axis {i}" for i in range(n_lead)])
    names = []
    for i in range(n_lead):
        label = str(labels[i]) if i < len(labels) else ""
        names.append(defaults[i] if not label or _DEFAULT_LABEL.match(label) else label)
    return names


def viewer_grid(viewer: Any) -> Any:
    """The viewer's grid settings (``viewer.canvas.grid`` since napari 0.9)."""
    canvas = getattr(viewer, "canvas", None)
    grid = getattr(canvas, "grid", None)
    return grid if grid is not None else viewer.grid


def _free_gpu_cache() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _job_generator(
    selection: JobSelection, make_steps: MakeSteps
) -> Generator[Any, Any, Any]:
    """Worker body: read the data, build the engine steps, forward their progress.

    superqt's generator worker swallows exceptions that subclass RuntimeError
    (``torch.cuda.OutOfMemoryError`` included), so they are re-raised here as
    ``EngineError``.
    """
    try:
        data = selection.read_data()
        steps = make_steps(data, selection.channel_axis)
        if not inspect.isgenerator(steps):
            raise TypeError(
                "make_steps must return a job generator (yielding JobProgress, returning the "
                f"result), got {type(steps).__name__}"
            )
        result = yield from steps
    except RuntimeError as exc:
        _free_gpu_cache()
        from napari_deblur.engine import EngineError

        message = str(exc) or type(exc).__name__
        if "out of memory" in message.lower():
            message += " (try 'Current slice' or a smaller image)"
        raise EngineError(message) from exc
    return result


def _lazy_result_steps(make_lazy: MakeLazy, data: Any, channel_axis: int | None) -> Generator:
    """Job steps of the lazy scope: the engine returns the lazy result at once."""
    from napari_deblur.engine import JobProgress

    lazy = make_lazy(data, channel_axis)
    yield JobProgress(1.0, "Lazy result ready: planes are computed as they are shown.")
    return lazy


def _save_steps(
    make_lazy: MakeLazy, path: str, description: str, data: Any, channel_axis: int | None
) -> Generator:
    """Job steps of a save: compute the lazy result into ``path``, return the file opened lazily."""
    from napari_deblur.io.stack_files import iter_save_lazy, open_lazy_image

    lazy = make_lazy(data, channel_axis)
    # Outputs either keep the input's channel axis (sharpened images) or drop it (maps).
    output_channel_axis = channel_axis if lazy.ndim == data.ndim else None
    # The save dialog asked before an existing file was chosen; folders napari-deblur did not
    # write are still never replaced.
    saved = yield from iter_save_lazy(
        lazy, path, channel_axis=output_channel_axis, description=description, overwrite="files"
    )
    saved_data, _ = open_lazy_image(saved)
    return saved_data


def _drive(steps: Generator) -> Generator:
    """Worker body that runs ``steps``; the runner keeps ``steps`` to close it on cancel."""
    return (yield from steps)


class JobRunner(Container):
    """Scope, side-by-side, Run / Cancel and progress for one widget's jobs.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        Viewer the outputs are added to.
    run_callback : callable, optional
        Called (without arguments) when Run is clicked; usually the owning
        widget's ``run`` method, which calls :meth:`start`. ``ValueError`` and
        ``TypeError`` from it are shown as napari error notifications.
    save_callback : callable, optional
        Called (without arguments) when "Save whole stack to file…" is
        clicked; usually the owning widget's ``save_whole_stack`` method,
        which calls :meth:`save_whole_stack`. Errors are shown as for Run. The
        button is hidden without it.
    run_text : str
        Text of the Run button.
    name : str
        magicgui name of the container.

    Attributes
    ----------
    job_started : psygnal.Signal
        Emitted when a job starts.
    job_progress : psygnal.Signal(float, str)
        Fraction done (0..1) and message, on the GUI thread.
    job_finished : psygnal.Signal(list)
        Emitted with the added layers once a job has succeeded and the runner
        is idle again.
    job_failed : psygnal.Signal(str)
        Emitted with the error message once a job has failed.
    job_cancelled : psygnal.Signal
        Emitted once a cancelled job has stopped (no layer was added).
    last_outputs : list
        Layers added by the last successful job.
    last_error : Exception or None
        Error of the last job, if it failed.
    choose_save_path : callable
        ``choose_save_path(suggested_name)`` -> path or ``None`` (cancelled):
        asks where to save a whole stack; a Qt file dialog by default, replace
        it in scripts and tests.
    """

    job_started = Signal()
    job_progress = Signal(float, str)
    job_finished = Signal(list)
    job_failed = Signal(str)
    job_cancelled = Signal()

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        *,
        run_callback: Callable[[], Any] | None = None,
        save_callback: Callable[[], Any] | None = None,
        run_text: str = "Run",
        name: str = "runner",
    ) -> None:
        self._viewer = viewer
        self._run_callback = run_callback
        self._save_callback = save_callback
        self._input_layer: Any = None
        self.choose_save_path: Callable[[str], str | None] = choose_save_path_with_dialog
        self.scope = ComboBox(
            name="scope",
            label="Scope",
            choices=self._scope_choices,
            value=SCOPE_WHOLE_STACK,
            tooltip="Current slice: only the plane on screen (fast preview). "
            "Whole stack: every plane of the layer, in memory. Whole stack, lazily (stacks "
            "opened as dask arrays): each plane is computed when it is shown.",
        )
        self.side_by_side = CheckBox(
            name="side_by_side",
            text="Side by side",
            value=bool(viewer_grid(viewer).enabled),
            tooltip="Show the input and its results next to each other (napari grid mode).",
        )
        self.run_button = PushButton(name="run_button", text=run_text)
        self.cancel_button = PushButton(name="cancel_button", text="Cancel", enabled=False)
        buttons = Container(
            name="buttons",
            widgets=[self.run_button, self.cancel_button],
            layout="horizontal",
            labels=False,
        )
        buttons.margins = (0, 0, 0, 0)
        buttons.label = ""  # magicgui containers ignore a label= argument
        self.save_button = PushButton(
            name="save_button",
            text="Save whole stack to file…",
            visible=save_callback is not None,
            tooltip="Compute every plane into a .zarr or .tif file, one plane at a time (for "
            "stacks larger than memory), and open the file lazily as the output.",
        )
        self.progress = ProgressBar(
            name="progress", min=0, max=_PROGRESS_STEPS, value=0, label="Progress"
        )
        self.status = Label(name="status", value="")
        super().__init__(
            name=name,
            widgets=[
                self.scope,
                self.side_by_side,
                buttons,
                self.save_button,
                self.progress,
                self.status,
            ],
        )
        self.margins = (0, 0, 0, 0)
        self.label = ""  # no "runner" caption when embedded in a widget

        self._worker: Any = None
        self._steps: Generator | None = None
        self._running = False
        self._cancelling = False
        self._outcome: str | None = None
        self._pending_outputs: list[Any] = []
        self._blocked_reason: str | None = None
        self._closed = False
        self.last_outputs: list[Any] = []
        self.last_error: Exception | None = None

        self.run_button.changed.connect(self._on_run_clicked)
        self.save_button.changed.connect(self._on_save_clicked)
        self.cancel_button.changed.connect(self.cancel)
        self.side_by_side.changed.connect(self._on_side_by_side)
        viewer_grid(viewer).events.enabled.connect(self._on_grid_changed)
        self.native.destroyed.connect(self._on_destroyed)
        self._refresh_buttons()

    # ------------------------------------------------------------------ state
    @property
    def viewer(self) -> napari.viewer.Viewer:
        """The viewer outputs are added to."""
        return self._viewer

    @property
    def is_running(self) -> bool:
        """True from :meth:`start` until the job has finished, failed or stopped."""
        return self._running

    @property
    def worker(self) -> Any:
        """The running superqt ``GeneratorWorker`` (``None`` when idle)."""
        return self._worker

    def set_input_layer(self, layer: Any) -> None:
        """Tell the runner which layer is the input.

        Scope is shown only for stacks. A stack held as a dask array is also
        offered the lazy scope, chosen by default when the layer becomes the
        input; these automatic choices are not remembered as the user's.
        """
        is_new_input = layer is not self._input_layer
        lazy_chosen = self.scope.value == SCOPE_LAZY
        self._input_layer = layer
        self.scope.visible = bool(layer is not None and getattr(layer, "ndim", 2) > 2)
        lazy_offered = offers_lazy_scope(layer)
        with self.scope.changed.blocked():
            self.scope.reset_choices()
            if lazy_offered and is_new_input:
                self.scope.value = SCOPE_LAZY
            elif lazy_chosen and not lazy_offered:
                self.scope.value = SCOPE_WHOLE_STACK

    def _scope_choices(self, *_: Any) -> list[str]:
        return list(LAZY_SCOPES if offers_lazy_scope(self._input_layer) else SCOPES)

    def set_blocked_reason(self, reason: str | None) -> None:
        """Disable Run and show ``reason`` while the widget's inputs are invalid.

        Parameters
        ----------
        reason : str or None
            What is missing and what to do; ``None`` when inputs are valid.
        """
        self._blocked_reason = reason
        self._refresh_buttons()

    @property
    def blocked_reason(self) -> str | None:
        """Why Run is disabled (``None`` when the inputs are valid)."""
        return self._blocked_reason

    def _on_destroyed(self, *_: Any) -> None:
        """The Qt widget is gone (viewer closed): stop the job, touch no widget again."""
        self._closed = True
        if self._worker is not None:
            self._worker.quit()

    def _refresh_buttons(self) -> None:
        if self._closed:
            return
        self.run_button.enabled = not self._running and self._blocked_reason is None
        self.save_button.enabled = self.run_button.enabled
        self.cancel_button.enabled = self._running and not self._cancelling
        if not self._running:
            self.status.value = self._blocked_reason or ""

    # -------------------------------------------------------------- selection
    def selection(
        self, layer: Any, scope: str | None = None, *, index: Sequence[int] | None = None
    ) -> JobSelection:
        """Validate ``layer`` and describe the data the current scope selects.

        Parameters
        ----------
        layer : napari.layers.Image
            The input layer.
        scope : str, optional
            One of :data:`LAZY_SCOPES`; the Scope choice by default. The lazy
            scope selects the whole layer as a dask array (of any layer).
        index : sequence of int, optional
            For the current-slice scope of a stack: the data index along the
            leading axes to take instead of the slice on screen.

        Returns
        -------
        JobSelection

        Raises
        ------
        ValueError
            No layer, an empty layer, a non-real dtype (complex, object...),
            or an ``index`` outside the stack.
        TypeError
            The layer is not an Image layer (Labels, Points...).
        """
        from napari.layers import Image, Labels

        if layer is None:
            raise ValueError("No image layer chosen: open an image and choose it as input.")
        if isinstance(layer, Labels) or not isinstance(layer, Image):
            raise TypeError(
                f"Layer {layer.name!r} is a {type(layer).__name__} layer: choose an Image layer."
            )
        data = level0(layer)
        shape = tuple(int(s) for s in data.shape)
        if any(s == 0 for s in shape):
            raise ValueError(f"Layer {layer.name!r} is empty (shape {shape}): choose another layer.")
        dtype = np.dtype(data.dtype)
        if dtype.kind not in "biuf":
            raise ValueError(
                f"Layer {layer.name!r} has dtype {dtype}, which is not a real number type: "
                "convert it to float (e.g. take abs() of complex data) first."
            )
        n_lead = layer.ndim - 2
        if n_lead < 0:
            raise ValueError(
                f"Layer {layer.name!r} is {layer.ndim}D: napari-deblur needs images with at least "
                "two spatial axes."
            )
        scope = self.scope.value if scope is None else scope
        chosen, index = index, None
        suffix = ""
        if n_lead > 0 and scope == SCOPE_CURRENT_SLICE:
            if chosen is None:
                position = np.asarray(layer.world_to_data(self._viewer.dims.point))[:n_lead]
                index = tuple(
                    int(np.clip(np.round(p), 0, n - 1)) for p, n in zip(position, shape[:n_lead])
                )
            else:
                index = tuple(int(i) for i in chosen)
                if len(index) != n_lead or any(
                    not 0 <= i < n for i, n in zip(index, shape[:n_lead])
                ):
                    raise ValueError(
                        f"Slice {index} is not in layer {layer.name!r} of shape {shape}."
                    )
            names = _leading_axis_names(layer, n_lead)
            suffix = " (slice " + ", ".join(f"{a}={i}" for a, i in zip(names, index)) + ")"
        channel_axis = None
        if layer.rgb:
            channel_axis = len(shape) - 1 - (0 if index is None else len(index))
        return JobSelection(
            layer=layer,
            index=index,
            channel_axis=channel_axis,
            name_suffix=suffix,
            lazy=scope == SCOPE_LAZY,
        )

    # ------------------------------------------------------------------- jobs
    def start(
        self,
        input_layer: Any,
        make_steps: MakeSteps,
        make_outputs: MakeOutputs,
        *,
        selection: JobSelection | None = None,
        make_lazy: MakeLazy | None = None,
    ) -> Any:
        """Start a job on ``input_layer`` in a worker thread.

        Parameters
        ----------
        input_layer : napari.layers.Image
            Input layer; its data is never modified.
        make_steps : callable
            ``make_steps(data, channel_axis)`` -> generator yielding
            ``JobProgress`` and returning the result. Called in the worker
            thread with the selected data (read-only numpy array; the current
            plane for a current-slice job, RGB channels last).
        make_outputs : callable
            ``make_outputs(result)`` -> list of :class:`OutputLayerSpec`;
            called on the GUI thread. For the lazy scope ``result`` is a dask
            array: the specs must not compute it.
        selection : JobSelection, optional
            A selection already computed with :meth:`selection` (so the
            widget can look at ``selection.index``); computed here otherwise.
        make_lazy : callable, optional
            ``make_lazy(data, channel_axis)`` -> the lazy result for a dask
            array ``data`` (the whole layer); called in the worker thread
            instead of ``make_steps`` when the selection is lazy.

        Returns
        -------
        superqt.utils.GeneratorWorker
            The started worker.

        Raises
        ------
        ValueError, TypeError
            Invalid input layer (see :meth:`selection`), a lazy selection
            without ``make_lazy``, or a job is running.
        """
        self._check_idle()
        if selection is None:
            selection = self.selection(input_layer)
        elif selection.layer is not input_layer:
            raise ValueError("The selection was made for another layer.")
        if selection.lazy:
            if make_lazy is None:
                raise ValueError(
                    "This job cannot make a lazy result: choose 'Whole stack' or 'Current slice'."
                )
            make_steps = functools.partial(_lazy_result_steps, make_lazy)
        status = f"Running on {input_layer.name!r}{selection.name_suffix}…"
        return self._start_worker(selection, make_steps, make_outputs, status)

    def save_whole_stack(
        self,
        input_layer: Any,
        make_lazy: MakeLazy,
        make_outputs: MakeOutputs,
        *,
        suffix: str,
        path: str | None = None,
    ) -> Any:
        """Compute the whole stack into a file in a worker thread, then add it lazily.

        The lazy result of ``make_lazy`` is written plane by plane (memory
        stays at about one plane) to ``<path>.partial``, renamed to ``path``
        when complete; a cancel or an error leaves no file. The saved file is
        then opened lazily and given to ``make_outputs``; its layers get the
        usual names and the input's geometry.

        Parameters
        ----------
        input_layer : napari.layers.Image
            Input layer (numpy data is wrapped as a dask array, one plane per
            chunk); its data is never modified.
        make_lazy : callable
            ``make_lazy(data, channel_axis)`` -> lazy result of the whole
            stack; called in the worker thread.
        make_outputs : callable
            ``make_outputs(saved)`` -> list of :class:`OutputLayerSpec` for
            the saved result (a dask array); called on the GUI thread.
        suffix : str
            Name of the result, for the suggested file name
            ``f"{input name} {suffix}.zarr"``.
        path : str, optional
            ``.zarr`` folder or ``.tif`` file to write; asked with
            :attr:`choose_save_path` when not given. An existing file there
            is replaced (the save dialog confirms it), an existing folder only
            when napari-deblur wrote it.

        Returns
        -------
        superqt.utils.GeneratorWorker or None
            The started worker; ``None`` when no path was chosen.

        Raises
        ------
        ValueError, TypeError
            Invalid input layer, a path that is neither ``.zarr`` nor
            ``.tif``, or a job is running.
        """
        self._check_idle()
        selection = self.selection(input_layer, scope=SCOPE_LAZY)
        description = f"{input_layer.name} {suffix}"
        if path is None:
            path = self.choose_save_path(f"{description}.zarr")
            if not path:
                return None
        path = str(path)
        file_suffix = Path(path).suffix.lower()
        if not file_suffix:
            path += STACK_OUTPUT_SUFFIXES[0]
        elif file_suffix not in STACK_OUTPUT_SUFFIXES:
            raise ValueError(
                f"Cannot save to {path!r}: choose a file name ending in "
                f"{', '.join(STACK_OUTPUT_SUFFIXES[:-1])} or {STACK_OUTPUT_SUFFIXES[-1]}."
            )
        make_steps = functools.partial(_save_steps, make_lazy, path, description)
        status = f"Saving {description!r} to {Path(path).name}…"
        return self._start_worker(selection, make_steps, make_outputs, status)

    def _check_idle(self) -> None:
        if self._closed:
            raise ValueError("This widget was closed: open it again to run a job.")
        if self._running:
            raise ValueError("A job is already running: wait for it to finish or cancel it.")

    def _start_worker(
        self,
        selection: JobSelection,
        make_steps: MakeSteps,
        make_outputs: MakeOutputs,
        status: str,
    ) -> Any:
        from superqt.utils import GeneratorWorker, create_worker

        self._steps = _job_generator(selection, make_steps)
        worker = create_worker(
            _drive,
            self._steps,
            _start_thread=False,
            _worker_class=GeneratorWorker,
            _connect={"errored": self._on_errored},
        )
        worker.yielded.connect(self._on_yielded)
        worker.returned.connect(lambda result: self._on_returned(selection, make_outputs, result))
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        worker.warned.connect(self._on_warned)

        self._worker = worker
        self._running = True
        self._cancelling = False
        self._outcome = None
        self._pending_outputs = []
        self.last_error = None
        self.progress.value = 0
        self.status.value = status
        self._refresh_buttons()
        self.job_started.emit()
        worker.start()
        return worker

    def cancel(self, *_: Any) -> None:
        """Ask the running job to stop at its next progress step (no layer is added)."""
        if not self._running or self._worker is None:
            return
        self._cancelling = True
        self._worker.quit()
        if not self._closed:
            self.status.value = "Cancelling…"
            self._refresh_buttons()

    def wait(self, timeout: float | None = 600.0) -> list[Any]:
        """Block (processing Qt events) until the job is done; for scripts.

        Parameters
        ----------
        timeout : float or None
            Seconds to wait at most; ``None`` waits forever.

        Returns
        -------
        list
            The layers the job added (empty when it was cancelled or none ran).

        Raises
        ------
        TimeoutError
            The job is still running after ``timeout`` seconds.
        Exception
            The job's error, when it failed.
        """
        from qtpy.QtWidgets import QApplication

        deadline = None if timeout is None else time.monotonic() + timeout
        while self._running:
            QApplication.processEvents()
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"The job is still running after {timeout} s.")
            time.sleep(0.005)
        QApplication.processEvents()
        if self.last_error is not None:
            raise self.last_error
        return list(self.last_outputs) if self._outcome == "returned" else []

    # --------------------------------------------------------- worker signals
    def _on_run_clicked(self, *_: Any) -> None:
        self.call_reporting_errors(self._run_callback)

    def _on_save_clicked(self, *_: Any) -> None:
        self.call_reporting_errors(self._save_callback)

    @staticmethod
    def call_reporting_errors(callback: Callable[[], Any] | None) -> None:
        """Call a button's action; show its ValueError/TypeError as a napari error."""
        if callback is None:
            return
        try:
            callback()
        except (ValueError, TypeError) as exc:
            from napari.utils.notifications import show_error

            show_error(str(exc))

    def _on_yielded(self, update: Any) -> None:
        fraction = getattr(update, "fraction", None)
        message = str(getattr(update, "message", "") or "")
        if fraction is None or self._closed:
            return
        fraction = float(np.clip(fraction, 0.0, 1.0))
        self.progress.value = int(round(fraction * _PROGRESS_STEPS))
        if message and not self._cancelling:
            self.status.value = message
        self.job_progress.emit(fraction, message)

    def _on_warned(self, show_warning_args: tuple) -> None:
        from napari.utils.notifications import notification_manager

        notification_manager.receive_warning(*show_warning_args)

    def _on_errored(self, exc: Exception) -> None:
        self._outcome = "errored"
        self.last_error = exc
        if isinstance(exc, (ValueError, TypeError)):
            logger.info("napari-deblur job failed: %s", exc)
        else:
            logger.error("napari-deblur job failed", exc_info=exc)
        from napari.utils.notifications import show_error

        show_error(f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc))

    def _on_aborted(self) -> None:
        """The worker stopped at a yield: close the steps so they clean up (partial files...)."""
        self._outcome = "aborted"
        if self._steps is not None:
            self._steps.close()

    def _on_returned(
        self, selection: JobSelection, make_outputs: MakeOutputs, result: Any
    ) -> None:
        if self._closed:
            self._outcome = "aborted"
            return
        try:
            specs = list(make_outputs(result))
            self._pending_outputs = self._add_outputs(selection, specs)
            self._outcome = "returned"
        except Exception as exc:  # noqa: BLE001 - reported to the user, GUI stays usable
            self._on_errored(exc)

    def _on_finished(self) -> None:
        outcome = self._outcome or "aborted"
        layers = self._pending_outputs
        self._worker = None
        self._steps = None
        self._pending_outputs = []
        self._running = False
        self._cancelling = False
        if self._closed:
            return
        if outcome == "returned":
            self.last_outputs = layers
            self.progress.value = _PROGRESS_STEPS
            self._refresh_buttons()
            self.status.value = "Done: added " + ", ".join(repr(ly.name) for ly in layers)
            self.job_finished.emit(layers)
        elif outcome == "errored":
            self.progress.value = 0
            self._refresh_buttons()
            self.status.value = self._blocked_reason or f"Failed: {self.last_error}"
            self.job_failed.emit(str(self.last_error))
        else:
            self._outcome = "aborted"
            self.progress.value = 0
            self._refresh_buttons()
            self.status.value = self._blocked_reason or "Cancelled."
            self.job_cancelled.emit()

    # ------------------------------------------------------------- side by side
    def _on_side_by_side(self, value: bool) -> None:
        viewer_grid(self._viewer).enabled = bool(value)
        if value and self._input_layer is not None:
            self._input_layer.visible = True

    def _on_grid_changed(self, event: Any = None) -> None:
        if self._closed:
            return
        enabled = bool(viewer_grid(self._viewer).enabled)
        if self.side_by_side.value != enabled:
            with self.side_by_side.changed.blocked():
                self.side_by_side.value = enabled

    # ----------------------------------------------------------------- outputs
    def _add_outputs(self, selection: JobSelection, specs: list[OutputLayerSpec]) -> list[Any]:
        layers = [self._make_layer(selection, spec) for spec in specs]
        viewer_layers = self._viewer.layers
        source = selection.layer
        position = viewer_layers.index(source) + 1 if source in viewer_layers else len(viewer_layers)
        for layer in layers:
            viewer_layers.insert(position, layer)
            position += 1
        if self.side_by_side.value:
            source.visible = True
            for layer in layers:
                layer.visible = True
        return layers

    def _unique_name(self, base: str) -> str:
        taken = {layer.name for layer in self._viewer.layers}
        if base not in taken:
            return base
        n = 1
        while f"{base} [{n}]" in taken:
            n += 1
        return f"{base} [{n}]"

    def _make_layer(self, selection: JobSelection, spec: OutputLayerSpec) -> Any:
        from napari.layers import Image, Labels, Shapes

        source = selection.layer
        kwargs = dict(spec.kwargs)
        name = self._unique_name(f"{source.name} {spec.suffix}{selection.name_suffix}")
        kwargs.pop("name", None)
        if spec.layer_type == "image":
            data = _layer_array(spec.data)
            if "rgb" not in kwargs:
                kwargs["rgb"] = bool(
                    source.rgb and data.ndim >= 3 and data.shape[-1] == level0(source).shape[-1]
                )
            out_ndim = data.ndim - (1 if kwargs["rgb"] else 0)
            if spec.match_input_contrast:
                kwargs.setdefault("contrast_limits", list(source.contrast_limits))
                if not kwargs["rgb"] and not source.rgb:
                    kwargs.setdefault("colormap", source.colormap)
                    kwargs.setdefault("gamma", source.gamma)
            kwargs.update(_output_geometry(source, selection.covered_axes, out_ndim))
            return Image(data, name=name, **kwargs)
        if spec.layer_type == "labels":
            data = _layer_array(spec.data)
            kwargs.update(_output_geometry(source, selection.covered_axes, data.ndim))
            return Labels(data, name=name, **kwargs)
        if spec.layer_type == "shapes":
            shapes = list(spec.data)
            out_ndim = kwargs.pop("ndim", None)
            if out_ndim is None:
                out_ndim = (
                    np.asarray(shapes[0]).shape[-1] if shapes else len(selection.covered_axes)
                )
            axes = selection.covered_axes
            if selection.index is not None and int(out_ndim) == source.ndim:
                axes = tuple(range(source.ndim))  # shapes on one slice of the stack
            kwargs.update(_output_geometry(source, axes, int(out_ndim)))
            return Shapes(shapes, ndim=int(out_ndim), name=name, **kwargs)
        raise ValueError(
            f"Unknown output layer type {spec.layer_type!r}: use 'image', 'labels' or 'shapes'."
        )


def _layer_array(data: Any) -> Any:
    """Layer data as an array; dask arrays stay lazy (napari computes the planes it shows)."""
    return data if is_dask_array(data) else np.asarray(data)


def _output_geometry(source: Any, covered_axes: Sequence[int], out_ndim: int) -> dict[str, Any]:
    """Geometry kwargs for an ``out_ndim`` output of ``source`` over ``covered_axes``.

    The output's trailing axes match the trailing covered axes of the input;
    extra leading output axes (e.g. an SNR axis) get unit scale, zero
    translate and no rotation.
    """
    from napari.utils.transforms import Affine

    covered = list(covered_axes)
    if out_ndim <= len(covered):
        axes = covered[len(covered) - out_ndim :]
        n_new = 0
    else:
        axes = covered
        n_new = out_ndim - len(covered)

    if n_new == 0 and axes == list(range(source.ndim)):
        return {
            "scale": source.scale,
            "translate": source.translate,
            "rotate": source.rotate,
            "shear": source.shear,
            "affine": source.affine.affine_matrix,
            "units": source.units,
            "axis_labels": source.axis_labels,
        }

    linear = Affine(rotate=source.rotate, shear=source.shear, ndim=source.ndim).set_slice(axes)
    affine = source.affine.set_slice(axes)
    scale = np.asarray(source.scale)[axes]
    if np.allclose(linear.linear_matrix, np.diag(np.diag(linear.linear_matrix))):
        scale = scale * np.diag(linear.linear_matrix)
    else:
        scale = scale * np.asarray(linear.scale)
    translate = np.asarray(source.translate)[axes]
    units = [source.units[i] for i in axes]
    labels = [str(source.axis_labels[i]) for i in axes]
    if n_new:
        new_axes = list(range(n_new))
        linear = linear.expand_dims(new_axes)
        affine = affine.expand_dims(new_axes)
        scale = np.concatenate([np.ones(n_new), scale])
        translate = np.concatenate([np.zeros(n_new), translate])
        units = ["pixel"] * n_new + units
        new_labels = []
        for i in range(n_new):
            label = str(-(out_ndim - i))
            while label in labels or label in new_labels:
                label = f"new {label}"
            new_labels.append(label)
        labels = new_labels + labels
    geometry = {
        "scale": scale,
        "translate": translate,
        "affine": affine.affine_matrix,
        "units": units,
        "axis_labels": labels,
    }
    matrix = linear.linear_matrix
    if not np.allclose(matrix, np.diag(np.diag(matrix))):
        # Only pass rotate/shear when there is one (napari's Affine.shear of a
        # diagonal transform has the wrong length for a layer argument).
        geometry["rotate"] = linear.rotate
        geometry["shear"] = linear.shear
    return geometry
