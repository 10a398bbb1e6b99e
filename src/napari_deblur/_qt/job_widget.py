"""The base of napari-deblur's dock widgets: an image input, the widget's own
inputs, and the shared :class:`~napari_deblur._qt.job_runner.JobRunner`.

A subclass builds its input widgets, passes them to ``__init__`` and provides
:meth:`~EngineJobWidget.engine_job`: which engine call to make on the selected
data and which layers its result becomes. The base class runs it in memory
(Run), lazily (the lazy scope of dask stacks) or into a file ("Save whole
stack to file…"), all through the runner. A subclass may extend
:meth:`invalid_reason` and :meth:`_show_relevant_inputs`, set
:attr:`~EngineJobWidget.single_plane` for jobs on the plane on screen only, and
start further jobs of its own with :meth:`~EngineJobWidget.start_job`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from magicgui.widgets import Container, Widget

from napari_deblur._qt.job_runner import JobRunner
from napari_deblur._qt.layer_choices import select_active_layer
from napari_deblur._qt.settings import remember_values
from napari_deblur.layer_jobs import (
    SCOPE_CURRENT_SLICE,
    SCOPE_LAZY,
    JobSelection,
    MakeOutputs,
    OutputLayerSpec,
)

if TYPE_CHECKING:
    import napari


@dataclass(frozen=True)
class EngineJob:
    """What a widget runs: one engine method and the layers its result becomes.

    Attributes
    ----------
    call_engine : callable
        ``call_engine(data, channel_axis, lazy)``, called in the worker
        thread. ``lazy=False``: ``data`` is a numpy array and the call returns
        the method's job generator (e.g. ``iter_sharpen_gwis``).
        ``lazy=True``: ``data`` is a dask array of the whole stack and the
        call returns the public function's lazy result (e.g.
        ``sharpen_gwis``). Import the engine inside it (torch is heavy).
    make_outputs : callable
        ``make_outputs(result)`` -> list of
        :class:`~napari_deblur._qt.job_runner.OutputLayerSpec`; called
        on the GUI thread with a numpy or (lazy, saved) dask result, which it
        must not compute.
    suffix : str
        Name of the main result (``"GWIS"``...), for saved file names.
    """

    call_engine: Callable[[Any, int | None, bool], Any]
    make_outputs: MakeOutputs
    suffix: str


def robust_contrast_limits(data: Any, percentile: float = 99.8) -> list[float]:
    """``[low, high]``: 0 (or the minimum when negative) to the ``percentile`` of ``data``.

    Computed on at most about a million values (a strided sample) so that a
    large volume costs little on the GUI thread.
    """
    values = np.asarray(data)
    step = max(1, values.size // 1_000_000)
    sample = values.reshape(-1)[::step]
    low = min(0.0, float(sample.min()))
    high = float(np.percentile(sample, percentile))
    return [low, high if high > low else low + 1.0]


class EngineJobWidget(Container):
    """Dock widget that runs one engine job on an image layer.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
    name : str
        magicgui name of the container.
    inputs : sequence of magicgui widgets
        The widget's inputs; must include ``self.image`` (a layer ComboBox),
        created by the subclass before calling this.
    run_text : str
        Text of the Run button.
    settings_key : str
        Key under which the remembered values are stored.
    remembered : sequence of str
        Names of the inputs whose values are remembered (the runner's scope
        is remembered too, unless the widget is :attr:`single_plane`).
    watched : sequence of magicgui widgets
        Inputs whose changes re-check whether the job can run.
    after_runner : sequence of magicgui widgets
        Widgets placed below the runner (e.g. a second action that works on
        the job's result); they may be named in ``remembered``.
    """

    #: The job works on the plane on screen only (a stack's current slice): the
    #: runner shows no scope choice and no "Save whole stack to file…".
    single_plane: ClassVar[bool] = False

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        *,
        name: str,
        inputs: Sequence[Widget],
        run_text: str,
        settings_key: str,
        remembered: Sequence[str],
        watched: Sequence[Widget],
        after_runner: Sequence[Widget] = (),
    ) -> None:
        self._viewer = viewer
        self.runner = JobRunner(
            viewer,
            run_callback=self.run,
            save_callback=None if self.single_plane else self.save_whole_stack,
            run_text=run_text,
        )
        super().__init__(name=name, widgets=[*inputs, self.runner, *after_runner])
        select_active_layer(self.image, viewer)
        scope = [] if self.single_plane else ["scope"]
        remember_values(self, settings_key, [*remembered, *scope])
        for widget in watched:
            widget.changed.connect(self._on_inputs_changed)
        self._on_inputs_changed()

    def reset_choices(self, *args: Any) -> None:
        """Refresh the layer lists (napari calls this when layers change)."""
        super().reset_choices(*args)
        self._on_inputs_changed()

    def _on_inputs_changed(self, *_: Any) -> None:
        self._show_relevant_inputs()
        self.runner.set_input_layer(self.image.value)
        if self.single_plane:
            self.runner.scope.visible = False
        self.runner.set_blocked_reason(self.invalid_reason())

    def _show_relevant_inputs(self) -> None:
        """Show only the inputs that matter for the current choices."""

    def invalid_reason(self) -> str | None:
        """Why the inputs cannot run now (``None`` when they can)."""
        if self.image.value is None:
            return "No image layer: open an image (or a napari-deblur sample) to sharpen."
        return None

    def engine_job(self, selection: JobSelection) -> EngineJob:  # pragma: no cover
        """The job to run on ``selection`` with the current settings (every subclass defines it).

        Raises
        ------
        ValueError
            The inputs do not fit ``selection`` (e.g. a map of the wrong shape).
        """
        raise NotImplementedError

    def run(self) -> Any:
        """Start the job on the chosen image for the current scope.

        Returns
        -------
        superqt.utils.GeneratorWorker
            The running worker; ``self.runner.wait()`` blocks until it is done
            and returns the added layers.

        Raises
        ------
        ValueError, TypeError
            The inputs are invalid (see :meth:`invalid_reason`, the widget's
            :meth:`engine_job`, :meth:`JobRunner.selection`) or a job is
            already running.
        """
        scope = SCOPE_CURRENT_SLICE if self.single_plane else None
        selection = self.runner.selection(self._valid_image(), scope=scope)
        return self.start_job(selection, self.engine_job(selection))

    def start_job(self, selection: JobSelection, job: EngineJob) -> Any:
        """Run ``job`` on ``selection`` through the runner (for a widget's other actions too).

        Returns
        -------
        superqt.utils.GeneratorWorker
            The running worker.

        Raises
        ------
        ValueError
            A job is already running, or a lazy selection the job cannot make.
        """
        return self.runner.start(
            selection.layer,
            functools.partial(job.call_engine, lazy=False),
            job.make_outputs,
            selection=selection,
            make_lazy=functools.partial(job.call_engine, lazy=True),
        )

    def save_whole_stack(self, path: str | None = None) -> Any:
        """Compute the job on the whole stack into a file and add the file lazily.

        Parameters
        ----------
        path : str, optional
            ``.zarr`` folder or ``.tif`` file; asked with
            ``self.runner.choose_save_path`` when not given.

        Returns
        -------
        superqt.utils.GeneratorWorker or None
            The running worker (``self.runner.wait()`` returns the added
            layers); ``None`` when no path was chosen.

        Raises
        ------
        ValueError, TypeError
            As :meth:`run`, or a path that is neither ``.zarr`` nor ``.tif``,
            or the widget works on one plane only.
        """
        if self.single_plane:
            raise ValueError("This widget works on the plane on screen: it cannot save a stack.")
        layer = self._valid_image()
        job = self.engine_job(self.runner.selection(layer, scope=SCOPE_LAZY))
        return self.runner.save_whole_stack(
            layer,
            functools.partial(job.call_engine, lazy=True),
            job.make_outputs,
            suffix=job.suffix,
            path=path,
        )

    def _valid_image(self) -> Any:
        reason = self.invalid_reason()
        if reason is not None:
            raise ValueError(reason)
        return self.image.value

    @staticmethod
    def image_job(
        call_engine: Callable[[Any, int | None, bool], Any],
        suffix: str,
        metadata: dict[str, Any],
        *,
        contrast: Literal["input", "robust"] = "input",
    ) -> EngineJob:
        """A job whose result becomes one image layer like the input.

        ``contrast="input"``: the layer takes the input's contrast limits and
        colormap. ``"robust"``: limits from the result itself, 0 (or its
        minimum) to its 99.8th percentile, for methods that gather intensity
        into peaks far brighter than the input's (3D deconvolution).
        """

        def make_outputs(result: Any) -> list[OutputLayerSpec]:
            kwargs: dict[str, Any] = {"metadata": metadata}
            if contrast == "robust":
                kwargs["contrast_limits"] = robust_contrast_limits(result)
            return [
                OutputLayerSpec(
                    data=result,
                    suffix=suffix,
                    kwargs=kwargs,
                    match_input_contrast=contrast == "input",
                )
            ]

        return EngineJob(call_engine, make_outputs, suffix)
