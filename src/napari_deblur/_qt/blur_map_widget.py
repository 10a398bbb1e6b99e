"""Blur map: the blur level of every pixel as an image layer, and blur classes as a labels layer.

The job (:func:`napari_deblur.engine.iter_estimate_blur_map` in memory,
:func:`napari_deblur.engine.estimate_blur_map` lazily) runs through the shared
:class:`~napari_deblur._qt.job_runner.JobRunner`. The map layer is marked
as a blur map (``metadata["napari_deblur_role"] == "blur_map"``), so the GWIS
sharpener lists it first as its blur source.

Script use::

    dock, widget = viewer.window.add_plugin_dock_widget("napari-deblur", "Blur map")
    widget.run()
    blur_map, classes = widget.runner.wait()
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, Label

from napari_deblur._qt.job_widget import EngineJob, EngineJobWidget
from napari_deblur._qt.layer_choices import image_input
from napari_deblur.layer_jobs import JobSelection, OutputLayerSpec, is_dask_array
from napari_deblur.layer_roles import BLUR_MAP_ROLE, ROLE_KEY

if TYPE_CHECKING:
    import napari

SETTINGS_KEY = "blur_map"
MAP_SUFFIX = "blur map (px)"
CLASSES_SUFFIX = "blur classes"
MAP_COLORMAP = "inferno"

# The engine's class edges, repeated here so the widget can show them without importing
# torch when it is built (a test checks that they agree).
CLASS_EDGES_PX: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0, math.inf)
CLASS_NAMES: tuple[str, ...] = ("sharp", "slight", "moderate", "strong", "severe")
#: Label colours, sharp (blue) to severe (red); label 0 is never used.
CLASS_COLORS: tuple[str, ...] = ("#2c7bb6", "#abd9e9", "#ffffbf", "#fdae61", "#d7191c")


def class_ranges() -> list[str]:
    """``["< 0.5 px", "0.5-1 px", ...]``: the range of each class, for people."""
    ranges = []
    for low, high in itertools.pairwise(CLASS_EDGES_PX):
        if low == 0:
            ranges.append(f"< {high:g} px")
        elif math.isinf(high):
            ranges.append(f">= {low:g} px")
        else:
            ranges.append(f"{low:g}-{high:g} px")
    return ranges


def class_legend() -> str:
    """One line per class: ``"1 sharp: < 0.5 px"``..."""
    return "\n".join(
        f"{i + 1} {name}: {rng}" for i, (name, rng) in enumerate(zip(CLASS_NAMES, class_ranges()))
    )


class BlurMapWidget(EngineJobWidget):
    """Dock widget that estimates the blur level of every pixel.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer (given by napari when the widget is docked).

    Attributes
    ----------
    image, add_classes : magicgui widgets
        The inputs; set their ``value`` from scripts.
    legend : magicgui Label
        The blur classes and their bin edges in pixels.
    runner : JobRunner
        Scope, side by side, Run / Cancel, progress; ``runner.wait()`` waits
        for the job and returns the added layers (map, then classes).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        self._viewer = napari_viewer
        self.image = image_input(napari_viewer, "Image layer to analyse (colour images: their luminance).")
        self.add_classes = CheckBox(
            name="add_classes",
            text="Add blur classes (labels)",
            value=True,
            tooltip="Also add a labels layer that bins the map into the classes below.",
        )
        self.legend = Label(name="legend", label="Classes", value=class_legend())
        self.legend.tooltip = (
            "Blur level = standard deviation of the blur in pixels (sigma of a Gaussian, half "
            "the radius of a disk); the unit the GWIS sharpener takes."
        )
        super().__init__(
            napari_viewer,
            name="blur_map_widget",
            inputs=[self.image, self.add_classes, self.legend],
            run_text="Estimate blur",
            settings_key=SETTINGS_KEY,
            remembered=["add_classes"],
            watched=[self.image],
        )

    def engine_job(self, selection: JobSelection) -> EngineJob:
        """The blur map of ``selection``, and its classes when ``add_classes`` is on."""
        add_classes = bool(self.add_classes.value)
        source_name = selection.layer.name

        def call_engine(data: Any, channel_axis: int | None, lazy: bool) -> Any:
            from napari_deblur.engine import estimate_blur_map, iter_estimate_blur_map

            method = estimate_blur_map if lazy else iter_estimate_blur_map
            return method(data, channel_axis=channel_axis)

        def make_outputs(blur_map: Any) -> list[OutputLayerSpec]:
            return map_and_class_layers(blur_map, source_name, add_classes)

        return EngineJob(call_engine, make_outputs, MAP_SUFFIX)


def map_and_class_layers(
    blur_map: np.ndarray, source_name: str, add_classes: bool = True
) -> list[OutputLayerSpec]:
    """The output layers of a blur-map job: the map, and optionally its classes.

    Parameters
    ----------
    blur_map : numpy.ndarray or dask.array.Array
        Blur levels in pixels (the input's shape without channels). A lazy
        (dask) map stays lazy: its classes are computed block by block as they
        are shown, and its contrast covers every level the engine gives.
    source_name : str
        Name of the input layer (recorded in the metadata).
    add_classes : bool
        Add the labels layer of blur classes.
    """
    from napari_deblur.engine import blur_classes
    from napari_deblur.engine.methods.blur_map import MAX_LEVEL

    if is_dask_array(blur_map):
        top = MAX_LEVEL
        classes = blur_map.map_blocks(
            blur_classes,
            CLASS_EDGES_PX,
            dtype=np.uint8,
            meta=np.empty((0,) * blur_map.ndim, dtype=np.uint8),
        )
    else:
        top = float(np.max(blur_map)) if blur_map.size else 0.0
        classes = blur_classes(blur_map, CLASS_EDGES_PX)
    edges = [float(e) for e in CLASS_EDGES_PX]
    specs = [
        OutputLayerSpec(
            data=blur_map,
            suffix=MAP_SUFFIX,
            kwargs={
                "colormap": MAP_COLORMAP,
                "contrast_limits": [0.0, max(top, 0.1)],
                "rgb": False,
                "metadata": {
                    ROLE_KEY: BLUR_MAP_ROLE,
                    "units": "px",
                    "napari_deblur_method": "blur_map",
                    "source_layer": source_name,
                },
            },
        )
    ]
    if add_classes:
        from napari.utils.colormaps import DirectLabelColormap

        colors = {None: "transparent", 0: "transparent"}
        colors.update({i + 1: c for i, c in enumerate(CLASS_COLORS)})
        specs.append(
            OutputLayerSpec(
                data=classes,
                suffix=CLASSES_SUFFIX,
                layer_type="labels",
                kwargs={
                    "colormap": DirectLabelColormap(color_dict=colors),
                    "opacity": 0.5,
                    "features": {
                        "class": ["none", *CLASS_NAMES],
                        "range": ["", *class_ranges()],
                    },
                    "metadata": {
                        "napari_deblur_method": "blur_classes",
                        "source_layer": source_name,
                        "class_names": list(CLASS_NAMES),
                        "bin_edges_px": edges,
                        "legend": class_legend(),
                    },
                },
            )
        )
    return specs
