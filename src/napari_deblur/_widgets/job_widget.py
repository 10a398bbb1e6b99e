"""The base of napari-deblur's dock widgets: an image input, the widget's own
inputs, and the shared :class:`~napari_deblur._widgets.job_runner.JobRunner`.

A subclass builds its input widgets, passes them to ``__init__`` and provides
``run()``; it may extend :meth:`invalid_reason` and
:meth:`_show_relevant_inputs`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from magicgui.widgets import Container, Widget

from napari_deblur._widgets.job_runner import JobRunner, JobSelection, OutputLayerSpec
from napari_deblur._widgets.layer_choices import select_active_layer
from napari_deblur._widgets.settings import remember_values

if TYPE_CHECKING:
    import napari


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
        is always remembered).
    watched : sequence of magicgui widgets
        Inputs whose changes re-check whether the job can run.
    """

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
    ) -> None:
        self._viewer = viewer
        self.runner = JobRunner(viewer, run_callback=self.run, run_text=run_text)
        super().__init__(name=name, widgets=[*inputs, self.runner])
        select_active_layer(self.image, viewer)
        remember_values(self, settings_key, [*remembered, "scope"])
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
        self.runner.set_blocked_reason(self.invalid_reason())

    def _show_relevant_inputs(self) -> None:
        """Show only the inputs that matter for the current choices."""

    def invalid_reason(self) -> str | None:
        """Why the inputs cannot run now (``None`` when they can)."""
        if self.image.value is None:
            return "No image layer: open an image (or a napari-deblur sample) to sharpen."
        return None

    def run(self) -> Any:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def _start_image_job(
        self, selection: JobSelection, make_steps: Any, suffix: str, metadata: dict[str, Any]
    ) -> Any:
        """Start ``make_steps`` on ``selection``; its result becomes one image layer like the input."""

        def make_outputs(result: Any) -> list[OutputLayerSpec]:
            return [
                OutputLayerSpec(
                    data=result,
                    suffix=suffix,
                    kwargs={"metadata": metadata},
                    match_input_contrast=True,
                )
            ]

        return self.runner.start(selection.layer, make_steps, make_outputs, selection=selection)
