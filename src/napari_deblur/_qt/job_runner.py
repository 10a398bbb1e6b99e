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
import logging
import time
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, Label, ProgressBar, PushButton
from psygnal import Signal

from napari_deblur.io.stack_files import STACK_OUTPUT_SUFFIXES
from napari_deblur.layer_jobs import (
    LAZY_SCOPES,
    SCOPE_LAZY,
    SCOPE_WHOLE_STACK,
    SCOPES,
    JobSelection,
    MakeLazy,
    MakeOutputs,
    MakeSteps,
    OutputLayerSpec,
    add_output_layers,
    job_generator,
    lazy_result_steps,
    offers_lazy_scope,
    save_steps,
    select_input,
)

if TYPE_CHECKING:
    import napari
    import napari.layers

logger = logging.getLogger(__name__)

_PROGRESS_STEPS = 1000


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


def viewer_grid(viewer: Any) -> Any:
    """The viewer's grid settings (``viewer.canvas.grid`` since napari 0.9)."""
    canvas = getattr(viewer, "canvas", None)
    grid = getattr(canvas, "grid", None)
    return grid if grid is not None else viewer.grid


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
        self.progress = ProgressBar(name="progress", min=0, max=_PROGRESS_STEPS, value=0, label="Progress")
        self.status = Label(name="status", value="")
        self.status.native.setWordWrap(True)  # a long message wraps instead of widening the dock
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

        See :func:`napari_deblur.layer_jobs.select_input`; ``scope`` defaults
        to the Scope choice, the slice to the one on screen.
        """
        scope = self.scope.value if scope is None else scope
        return select_input(layer, scope, self._viewer.dims.point, index=index)

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
            make_steps = functools.partial(lazy_result_steps, make_lazy)
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
        make_steps = functools.partial(save_steps, make_lazy, path, description)
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

        self._steps = job_generator(selection, make_steps)
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

    def _on_returned(self, selection: JobSelection, make_outputs: MakeOutputs, result: Any) -> None:
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
        return add_output_layers(self._viewer, selection, specs, show=self.side_by_side.value)
