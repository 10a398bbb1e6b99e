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

import numpy as np
from magicgui.widgets import ComboBox, FloatSlider

from napari_deblur._qt.job_widget import EngineJob, EngineJobWidget
from napari_deblur._qt.layer_choices import blur_map_choices, image_input
from napari_deblur.layer_jobs import JobSelection, level0

if TYPE_CHECKING:
    import napari

BLUR_CONSTANT = "Constant"
BLUR_FROM_MAP = "Blur-map layer"
BLUR_AUTOMATIC = "Automatic (learned map)"
BLUR_SOURCES = (BLUR_CONSTANT, BLUR_FROM_MAP, BLUR_AUTOMATIC)

SETTINGS_KEY = "gwis"
OUTPUT_SUFFIX = "GWIS"


class GwisWidget(EngineJobWidget):
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
        self.blur_source = ComboBox(
            name="blur_source",
            label="Blur level",
            choices=list(BLUR_SOURCES),
            value=BLUR_CONSTANT,
            tooltip="One blur level for the whole image; a per-pixel blur map layer "
            "(e.g. from the Blur map widget); or automatic: the blur map is estimated as part "
            "of the job (the same map as the Blur map widget's).",
        )
        self.blur_level = FloatSlider(
            name="blur_level",
            label="Level (px)",
            min=0.0,
            max=8.0,
            step=0.1,
            value=1.5,
            tooltip="Blur level in pixels: the standard deviation of the blur (sigma of a "
            "Gaussian, half the radius of a disk). 0 leaves the image unchanged.",
        )
        self.blur_map = ComboBox(
            name="blur_map",
            label="Blur map",
            choices=lambda *_: blur_map_choices(self._viewer),
            tooltip="Image layer with the blur level of each pixel in pixels, the image's "
            "shape (or one plane of it). Blur-map layers are listed first.",
        )
        super().__init__(
            napari_viewer,
            name="gwis_widget",
            inputs=[self.image, self.blur_source, self.blur_level, self.blur_map],
            run_text="Sharpen",
            settings_key=SETTINGS_KEY,
            remembered=["blur_source", "blur_level"],
            watched=[self.image, self.blur_source, self.blur_map],
        )

    # ------------------------------------------------------------- validation
    def _show_relevant_inputs(self) -> None:
        source = self.blur_source.value
        self.blur_level.visible = source == BLUR_CONSTANT
        self.blur_map.visible = source == BLUR_FROM_MAP

    def invalid_reason(self) -> str | None:
        """Why the inputs cannot run now (``None`` when they can)."""
        reason = super().invalid_reason()
        if reason is not None:
            return reason
        image = self.image.value
        if self.blur_source.value == BLUR_FROM_MAP:
            blur_map = self.blur_map.value
            if blur_map is None:
                return "No blur-map layer: make one with the Blur map widget, or use a constant level."
            if blur_map is image:
                return "The blur map is the image itself: choose the layer that holds the map."
        return None

    def _blur_map_for(self, selection: JobSelection) -> Any:
        """The blur map matching the selected data.

        A numpy array read on the GUI thread (only the selected plane of a
        stack map); for a lazy selection the layer's own data (a dask map
        stays lazy).
        """
        layer = self.blur_map.value
        image = selection.layer
        image_shape = tuple(level0(image).shape)
        if image.rgb:
            image_shape = image_shape[:-1]
        blur_map = level0(layer)
        map_shape = tuple(blur_map.shape)
        if map_shape == image_shape:
            if selection.index is not None:
                blur_map = blur_map[selection.index]
        elif map_shape != image_shape[-2:]:
            raise ValueError(
                f"Blur map {layer.name!r} has shape {map_shape} but image {image.name!r} has "
                f"{'pixel ' if image.rgb else ''}shape {image_shape}: use a map of the image's "
                f"shape or of one plane {image_shape[-2:]}."
            )
        return blur_map if selection.lazy else np.asarray(blur_map, dtype=np.float32)

    # -------------------------------------------------------------------- run
    def engine_job(self, selection: JobSelection) -> EngineJob:
        """GWIS on ``selection`` with a constant level, the chosen blur map, or "auto".

        Raises
        ------
        ValueError
            The blur map's shape is neither the image's nor one plane's.
        """
        if self.blur_source.value == BLUR_FROM_MAP:
            blur: Any = self._blur_map_for(selection)
            described = {"blur_map_layer": self.blur_map.value.name}
        elif self.blur_source.value == BLUR_AUTOMATIC:
            blur = "auto"
            described = {"blur_levels": "estimate_blur_map"}
        else:
            blur = float(self.blur_level.value)
            described = {"blur_level_px": blur}
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
