"""GWIS sharpener: grid-warping edge sharpening driven by a blur level or a blur map.

The job (:func:`napari_deblur.engine.iter_sharpen_gwis` in memory,
:func:`napari_deblur.engine.sharpen_gwis` lazily) runs through the shared
:class:`~napari_deblur._qt.job_runner.JobRunner`.

Script use::

    dock, widget = viewer.window.add_plugin_dock_widget("napari-deblur", "GWIS sharpener")
    widget.blur_source.value = "Constant"
    widget.blur_level.value = 2.0
    widget.run()
    (sharpened,) = widget.runner.wait()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from napari_deblur._qt.blur_level_inputs import BLUR_CONSTANT, BlurLevelInputs, BlurLevelWidget
from napari_deblur._qt.job_widget import EngineJob
from napari_deblur._qt.layer_choices import image_input
from napari_deblur.layer_jobs import JobSelection

if TYPE_CHECKING:
    import napari

SETTINGS_KEY = "gwis"
OUTPUT_SUFFIX = "GWIS"


class GwisWidget(BlurLevelWidget):
    """Dock widget that sharpens edges by grid warping (GWIS).

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer (given by napari when the widget is docked).

    Attributes
    ----------
    image, blur_source, blur_level, blur_map : magicgui widgets
        The inputs; set their ``value`` from scripts.
    runner : JobRunner
        Scope, side by side, Run / Cancel, progress; ``runner.wait()`` waits
        for the job and returns the added layer.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        self._viewer = napari_viewer
        self.image = image_input(napari_viewer, "Image layer to sharpen (PSF layers are not listed).")
        self.blur_inputs = BlurLevelInputs(napari_viewer, default_source=BLUR_CONSTANT, default_level=1.5)
        self.blur_source, self.blur_level, self.blur_map = self.blur_inputs.widgets
        super().__init__(
            napari_viewer,
            name="gwis_widget",
            inputs=[self.image, *self.blur_inputs.widgets],
            run_text="Sharpen",
            settings_key=SETTINGS_KEY,
            remembered=["blur_source", "blur_level"],
            watched=[self.image, self.blur_source, self.blur_map],
        )

    # -------------------------------------------------------------------- run
    def engine_job(self, selection: JobSelection) -> EngineJob:
        """GWIS on ``selection`` with a constant level, the chosen blur map, or "auto".

        Raises
        ------
        ValueError
            The blur map's shape is neither the image's nor one plane's.
        """
        blur, described = self.blur_inputs.argument(selection, automatic="auto")
        metadata = {
            "napari_deblur_method": "gwis",
            "source_layer": selection.layer.name,
            **described,
        }

        def call_engine(data: Any, channel_axis: int | None, lazy: bool) -> Any:
            from napari_deblur.engine import iter_sharpen_gwis, sharpen_gwis

            method = sharpen_gwis if lazy else iter_sharpen_gwis
            return method(data, blur, channel_axis=channel_axis)

        return self.image_job(call_engine, OUTPUT_SUFFIX, metadata)
