"""The "Blur level" inputs shared by the widgets driven by blur levels (GWIS, Defocus deblur).

A constant level, a blur-map layer, or the learned map estimated as part of the
job; :class:`BlurLevelInputs` builds the three inputs, shows the ones that
matter, says why they cannot run, and turns them into the engine's argument;
:class:`BlurLevelWidget` is the base of the widgets that hold them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, FloatSlider

from napari_deblur._qt.job_widget import EngineJobWidget
from napari_deblur._qt.layer_choices import blur_map_choices
from napari_deblur.layer_jobs import JobSelection, level0

if TYPE_CHECKING:
    import napari

BLUR_CONSTANT = "Constant"
BLUR_FROM_MAP = "Blur-map layer"
BLUR_AUTOMATIC = "Automatic (learned map)"
BLUR_SOURCES = (BLUR_CONSTANT, BLUR_FROM_MAP, BLUR_AUTOMATIC)


class BlurLevelInputs:
    """The blur-source choice, the constant level and the blur-map layer of one widget.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
    default_source : str
        One of :data:`BLUR_SOURCES`.
    default_level : float
        The constant level's start value (px).

    Attributes
    ----------
    source, level, blur_map : magicgui widgets
        The inputs (the widget lists them and exposes them under its own names).
    """

    def __init__(self, viewer: napari.viewer.Viewer, *, default_source: str, default_level: float) -> None:
        self._viewer = viewer
        self.source = ComboBox(
            name="blur_source",
            label="Blur level",
            choices=list(BLUR_SOURCES),
            value=default_source,
            tooltip="One blur level for the whole image; a per-pixel blur map layer "
            "(e.g. from the Blur map widget); or automatic: the blur map is estimated as part "
            "of the job (the same map as the Blur map widget's).",
        )
        self.level = FloatSlider(
            name="blur_level",
            label="Level (px)",
            min=0.0,
            max=8.0,
            step=0.1,
            value=default_level,
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

    @property
    def widgets(self) -> list:
        return [self.source, self.level, self.blur_map]

    def show_relevant(self) -> None:
        """Show the level for a constant, the layer choice for a map, neither for automatic."""
        self.level.visible = self.source.value == BLUR_CONSTANT
        self.blur_map.visible = self.source.value == BLUR_FROM_MAP

    def invalid_reason(self, image: Any) -> str | None:
        """Why these inputs cannot run on ``image`` now (``None`` when they can)."""
        if self.source.value != BLUR_FROM_MAP:
            return None
        blur_map = self.blur_map.value
        if blur_map is None:
            return "No blur-map layer: make one with the Blur map widget, or use a constant level."
        if blur_map is image:
            return "The blur map is the image itself: choose the layer that holds the map."
        return None

    def argument(self, selection: JobSelection, automatic: Any) -> tuple[Any, dict]:
        """The engine's blur argument for ``selection`` and how the output's metadata describes it.

        ``automatic`` is what the engine takes for "estimate the map" (``"auto"``
        for GWIS, ``None`` for defocus deblurring).

        Raises
        ------
        ValueError
            The blur map's shape is neither the image's nor one plane's.
        """
        if self.source.value == BLUR_FROM_MAP:
            return self._map_for(selection), {"blur_map_layer": self.blur_map.value.name}
        if self.source.value == BLUR_AUTOMATIC:
            return automatic, {"blur_levels": "estimate_blur_map"}
        level = float(self.level.value)
        return level, {"blur_level_px": level}

    def _map_for(self, selection: JobSelection) -> Any:
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


class BlurLevelWidget(EngineJobWidget):
    """An engine-job widget whose inputs include :class:`BlurLevelInputs` (``self.blur_inputs``)."""

    blur_inputs: BlurLevelInputs

    def _show_relevant_inputs(self) -> None:
        self.blur_inputs.show_relevant()

    def invalid_reason(self) -> str | None:
        """Why the inputs cannot run now (``None`` when they can)."""
        reason = super().invalid_reason()
        return reason if reason is not None else self.blur_inputs.invalid_reason(self.image.value)
