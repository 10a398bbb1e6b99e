"""Region selector: windows where a blur kernel can be estimated well, and a PSF from one of them.

"Find regions" runs :func:`napari_deblur.engine.iter_select_regions` (the
generator twin of ``select_regions``) on the image plane on screen and adds a shapes layer of rectangles (``<input> regions``),
with each window's ``score`` and ``rank`` as features, its score as text and
an edge colour by score. The user may move, resize or draw rectangles.
"Estimate PSF" runs :func:`napari_deblur.engine.iter_estimate_psf` on the
selected rectangle (the best-scoring one when none is selected), or on the
whole plane when "PSF from" says so, and adds the
kernel as an image layer marked as a PSF (``<input> PSF``), which the
Wiener-net sharpener lists first. Both jobs run through the shared
:class:`~napari_deblur._qt.job_runner.JobRunner`.

A rectangle ``(y, x, height, width)`` covers the pixel rows ``y .. y+height-1``
and columns ``x .. x+width-1``; its corners lie on pixel edges, at
``y - 0.5`` and ``y + height - 0.5`` in the layer's data coordinates.

Script use::

    dock, widget = viewer.window.add_plugin_dock_widget("napari-deblur", "Region selector")
    widget.run()
    (regions,) = widget.runner.wait()
    widget.estimate_psf()
    (psf,) = widget.runner.wait()
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, PushButton, SpinBox

from napari_deblur._qt.job_widget import EngineJob, EngineJobWidget
from napari_deblur._qt.layer_choices import image_input
from napari_deblur.layer_jobs import SCOPE_CURRENT_SLICE, JobSelection, OutputLayerSpec
from napari_deblur.layer_roles import psf_metadata

if TYPE_CHECKING:
    import napari

SETTINGS_KEY = "region_selector"
REGIONS_SUFFIX = "regions"
PSF_SUFFIX = "PSF"
#: ``metadata["napari_deblur_method"]`` of the regions layers this widget makes.
REGIONS_METHOD = "region_selector"
#: The "PSF from" choices: a rectangle of the regions layer, or the whole plane on screen.
PSF_FROM_REGION = "Best or selected region"
PSF_FROM_WHOLE_IMAGE = "Whole image"
SCORE_COLORMAP = "plasma"
PSF_COLORMAP = "magma"  # as the PSF reader and the samples
#: The engine's ranking the widget uses: a kernel from every window, scored by agreement.
#: (The engine's "network" ranking is not offered: it ranks windows no better than chance.)
RANKING = "consensus"
#: Features of a rectangle the user draws (it has no score).
DRAWN_FEATURES = {"score": 0.0, "rank": 0, "label": "drawn"}
_TOLERANCE = 1e-3


def rectangle_vertices(region: Sequence[float], leading: Sequence[int] = ()) -> np.ndarray:
    """The 4 corners of the rectangle over ``region = (y, x, height, width, ...)``.

    Corners lie on pixel edges (half a pixel outside the pixel centres);
    ``leading`` data indices (a stack's slice) are prepended to each corner.
    """
    y, x, height, width = (float(v) for v in tuple(region)[:4])
    top, left, bottom, right = y - 0.5, x - 0.5, y + height - 0.5, x + width - 0.5
    corners = np.array([[top, left], [top, right], [bottom, right], [bottom, left]])
    lead = np.broadcast_to(np.asarray(leading, dtype=float), (4, len(leading)))
    return np.concatenate([lead, corners], axis=1)


def _shapes_choices(viewer: Any) -> list[tuple[str, Any]]:
    """Shapes layers, the regions layers made by this widget first."""
    from napari.layers import Shapes

    shapes = [layer for layer in viewer.layers if isinstance(layer, Shapes)]
    ours = [ly for ly in shapes if (ly.metadata or {}).get("napari_deblur_method") == REGIONS_METHOD]
    others = [ly for ly in shapes if ly not in ours]
    return [(layer.name, layer) for layer in ours[::-1] + others]


class RegionSelectorWidget(EngineJobWidget):
    """Dock widget that proposes windows for blind PSF estimation and estimates the PSF.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer (given by napari when the widget is docked).

    Attributes
    ----------
    image, size, count, psf_from, regions, psf_size : magicgui widgets
        The inputs; set their ``value`` from scripts.
    estimate_button : magicgui PushButton
        Runs :meth:`estimate_psf`.
    runner : JobRunner
        Find regions / Cancel, progress; ``runner.wait()`` waits for the job
        and returns the added layer (the regions, or the PSF).
    """

    single_plane = True

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        self._viewer = napari_viewer
        self.image = image_input(
            napari_viewer,
            "Blurred image layer (PSF layers are not listed). Stacks: the plane on screen.",
        )
        # the default is engine.methods.region_selector.TRAINING_WINDOW (not imported: it loads torch)
        self.size = SpinBox(
            name="size",
            label="Window size (px)",
            min=64,
            max=512,
            step=16,
            value=192,
            tooltip="Side of the square windows to score, in pixels (the network is trained on "
            "192; about half the image side works well).",
        )
        self.count = SpinBox(
            name="count",
            label="Count",
            min=1,
            max=20,
            value=5,
            tooltip="How many windows to propose (best first, not overlapping).",
        )
        self.psf_from = ComboBox(
            name="psf_from",
            label="PSF from",
            choices=[PSF_FROM_REGION, PSF_FROM_WHOLE_IMAGE],
            value=PSF_FROM_REGION,
            tooltip="Where 'Estimate PSF' looks: a rectangle of the regions layer (the selected "
            "one, else the best-scoring), or the whole plane on screen. When the blur is the same "
            "everywhere, the whole image often gives as good a kernel (README, region selection), "
            "at a higher cost on large images.",
        )
        self.regions = ComboBox(
            name="regions",
            label="Regions layer",
            choices=lambda *_: _shapes_choices(self._viewer),
            tooltip="Shapes layer with the rectangle to estimate the PSF from: the selected "
            "rectangle, or the best-scoring one when none is selected.",
        )
        self.psf_size = SpinBox(
            name="psf_size",
            label="PSF size (px)",
            min=3,
            max=101,
            step=2,
            value=25,
            tooltip="Side of the estimated kernel in pixels (odd), a little larger than the "
            "blur. A rectangle must be at least twice as large on each side. The consensus "
            "ranking of Find regions estimates kernels of this size too.",
        )
        self.estimate_button = PushButton(
            name="estimate_button",
            text="Estimate PSF",
            tooltip="Estimate the blur kernel from the chosen rectangle (blind estimation); "
            "adds a PSF layer that the Wiener-net sharpener lists first.",
        )
        self.estimate_button.label = ""
        super().__init__(
            napari_viewer,
            name="region_selector_widget",
            inputs=[self.image, self.size, self.count],
            run_text="Find regions",
            settings_key=SETTINGS_KEY,
            remembered=["size", "count", "psf_from", "psf_size"],
            watched=[self.image],
            after_runner=[self.psf_from, self.regions, self.psf_size, self.estimate_button],
        )
        self.estimate_button.changed.connect(lambda *_: self.runner.call_reporting_errors(self.estimate_psf))
        self.psf_from.changed.connect(self._refresh_regions_choice)
        self._refresh_regions_choice()
        self.runner.job_started.connect(self._refresh_estimate_button)
        self.runner.job_finished.connect(self._on_job_finished)
        self.runner.job_failed.connect(self._refresh_estimate_button)
        self.runner.job_cancelled.connect(self._refresh_estimate_button)

    # ---------------------------------------------------------- find regions
    def engine_job(self, selection: JobSelection) -> EngineJob:
        """Score windows of the selected plane; the result becomes a regions layer."""
        size = int(self.size.value)
        count = int(self.count.value)
        ranking = RANKING
        psf_size = int(self.psf_size.value)
        leading = tuple(selection.index or ())

        def call_engine(data: Any, channel_axis: int | None, lazy: bool) -> Any:
            from napari_deblur.engine import iter_select_regions

            return iter_select_regions(
                data, size=size, count=count, channel_axis=channel_axis, ranking=ranking, psf_size=psf_size
            )

        def make_outputs(regions: Any) -> list[OutputLayerSpec]:
            return [self._regions_layer(regions, selection, leading, size, ranking)]

        return EngineJob(call_engine, make_outputs, REGIONS_SUFFIX)

    @staticmethod
    def _regions_layer(
        regions: Sequence[Sequence[float]],
        selection: JobSelection,
        leading: tuple[int, ...],
        size: int,
        ranking: str,
    ) -> OutputLayerSpec:
        if not regions:
            raise ValueError(
                f"No window of {size}x{size} px fits in {selection.layer.name!r}: choose a smaller "
                "window size."
            )
        scores = [float(region[4]) for region in regions]
        ranks = list(range(1, len(regions) + 1))
        return OutputLayerSpec(
            data=[rectangle_vertices(region, leading) for region in regions],
            suffix=REGIONS_SUFFIX,
            layer_type="shapes",
            kwargs={
                "ndim": len(leading) + 2,
                "shape_type": "rectangle",
                "features": {
                    "score": scores,
                    "rank": ranks,
                    "label": [f"#{r} {s:.2f}" for r, s in zip(ranks, scores)],
                },
                "feature_defaults": DRAWN_FEATURES,
                "text": {"string": "{label}", "color": "white", "anchor": "upper_left", "size": 10},
                "edge_color": "score",
                "edge_colormap": SCORE_COLORMAP,
                "edge_contrast_limits": (0.0, 1.0),
                "edge_width": max(1.0, size / 64),
                "face_color": "transparent",
                "metadata": {
                    "napari_deblur_method": REGIONS_METHOD,
                    "source_layer": selection.layer.name,
                    "slice": list(leading),
                    "window_size_px": size,
                    "ranking": ranking,
                    "regions": [[int(v) for v in region[:4]] for region in regions],
                },
            },
        )

    def _on_job_finished(self, layers: list[Any]) -> None:
        from napari.layers import Shapes

        shapes = [layer for layer in layers if isinstance(layer, Shapes)]
        if shapes:
            self.regions.reset_choices()
            self.regions.value = shapes[-1]
        self._refresh_estimate_button()

    def _refresh_regions_choice(self, *_: Any) -> None:
        """The regions layer matters only when the PSF comes from one of its rectangles."""
        self.regions.enabled = self.psf_from.value == PSF_FROM_REGION

    def _refresh_estimate_button(self, *_: Any) -> None:
        self.estimate_button.enabled = not self.runner.is_running

    # ---------------------------------------------------------- estimate PSF
    def estimate_psf(self) -> Any:
        """Estimate the PSF from the chosen rectangle of the regions layer, or from the whole plane.

        With "PSF from" set to the whole image, the plane on screen is used and
        no regions layer is needed. Otherwise the rectangle is the selected
        one; with none selected, the best-scoring one (or the only shape). Its
        corners are mapped through world coordinates onto the image, so a
        shapes layer drawn by hand works too; on a stack, the rectangle's slice
        (or, for a 2D shapes layer, the slice on screen) is used.

        Returns
        -------
        superqt.utils.GeneratorWorker
            The running worker; ``self.runner.wait()`` returns the PSF layer.

        Raises
        ------
        ValueError
            No image or regions layer, no usable rectangle (none, several
            selected, not a rectangle, rotated, outside the image), or a job is
            running. A rectangle smaller than twice the PSF size is reported
            by the engine when the job runs.
        TypeError
            The image is not an Image layer.
        """
        image = self._valid_image()
        if self.psf_from.value == PSF_FROM_WHOLE_IMAGE:
            selection = self.runner.selection(image, scope=SCOPE_CURRENT_SLICE)
            return self.start_job(selection, self._psf_job(selection, None, None, None))
        regions = self.regions.value
        if regions is None:
            raise ValueError(
                "No regions layer: click 'Find regions', or add a Shapes layer and draw a "
                "rectangle on the image."
            )
        index = self._chosen_shape(regions)
        leading, region = self._region_on_image(regions, index, image)
        selection = self.runner.selection(image, scope=SCOPE_CURRENT_SLICE, index=leading or None)
        return self.start_job(selection, self._psf_job(selection, region, regions, index))

    @staticmethod
    def _chosen_shape(regions: Any) -> int:
        n_shapes = len(regions.data)
        if n_shapes == 0:
            raise ValueError(
                f"Regions layer {regions.name!r} has no rectangle: click 'Find regions' or draw one."
            )
        selected = sorted(regions.selected_data)
        if len(selected) > 1:
            raise ValueError(
                f"{len(selected)} shapes are selected in {regions.name!r}: select one rectangle "
                "(or none, for the best-scoring one)."
            )
        if selected:
            index = int(selected[0])
        elif "score" in regions.features.columns:
            index = int(np.nanargmax(np.asarray(regions.features["score"], dtype=float)))
        elif n_shapes == 1:
            index = 0
        else:
            raise ValueError(
                f"{regions.name!r} holds {n_shapes} shapes without scores: select the rectangle "
                "to estimate the PSF from."
            )
        shape_type = regions.shape_type[index]
        if shape_type != "rectangle":
            raise ValueError(
                f"Shape {index} of {regions.name!r} is a {shape_type}, not a rectangle: select a "
                "rectangle (draw one with the rectangle tool)."
            )
        return index

    def _region_on_image(
        self, regions: Any, index: int, image: Any
    ) -> tuple[tuple[int, ...], tuple[int, int, int, int]]:
        """Slice index and ``(y, x, height, width)`` in ``image`` of rectangle ``index``."""
        from napari_deblur.layer_jobs import level0

        shape = tuple(level0(image).shape)
        if image.rgb:
            shape = shape[:-1]
        n_lead = len(shape) - 2
        point = np.asarray(self._viewer.dims.point, dtype=float)
        corners = []
        for vertex in np.asarray(regions.data[index], dtype=float):
            world = np.asarray(regions.data_to_world(vertex), dtype=float)
            if len(world) < len(point):
                world = np.concatenate([point[: len(point) - len(world)], world])
            corners.append(np.asarray(image.world_to_data(world), dtype=float))
        corners = np.array(corners)
        name = f"Rectangle {index} of {regions.name!r}"

        leading: tuple[int, ...] = ()
        if n_lead:
            lead = corners[:, :n_lead]
            centre = np.round(lead.mean(axis=0))
            if (
                np.abs(lead - centre).max() > 0.5
                or np.any(centre < 0)
                or np.any(centre >= np.asarray(shape[:n_lead]))
            ):
                raise ValueError(
                    f"{name} does not lie on one slice of {image.name!r}: draw it on a slice of the image."
                )
            leading = tuple(int(c) for c in centre)

        yx = corners[:, -2:]
        low, high = yx.min(axis=0), yx.max(axis=0)
        on_edges = (np.abs(yx - low) < _TOLERANCE) | (np.abs(yx - high) < _TOLERANCE)
        if not on_edges.all():
            raise ValueError(f"{name} is rotated: use a rectangle aligned with the image axes.")
        top, left = (int(v) for v in np.round(low + 0.5))
        bottom, right = (int(v) for v in np.round(high + 0.5))
        height, width = shape[-2:]
        if top < 0 or left < 0 or bottom > height or right > width:
            raise ValueError(
                f"{name} (rows {top}..{bottom}, columns {left}..{right}) reaches outside "
                f"{image.name!r} ({height}x{width} px): move it inside the image."
            )
        if bottom <= top or right <= left:
            raise ValueError(f"{name} covers no pixel: draw a larger rectangle.")
        return leading, (top, left, bottom - top, right - left)

    def _psf_job(
        self,
        selection: JobSelection,
        region: tuple[int, int, int, int] | None,
        regions: Any | None,
        index: int | None,
    ) -> EngineJob:
        """The blind estimation job on ``region`` of the plane (``None``: the whole plane)."""
        size = int(self.psf_size.value)
        where = (
            {"region": "whole image"}
            if region is None
            else {"region": list(region), "regions_layer": regions.name}
        )
        metadata = psf_metadata(
            napari_deblur_method="blind_psf",
            source_layer=selection.layer.name,
            **where,
            **({"slice": list(selection.index)} if selection.index is not None else {}),
        )
        if regions is not None and "score" in regions.features.columns:
            metadata["region_score"] = float(regions.features["score"].iloc[index])

        def call_engine(data: Any, channel_axis: int | None, lazy: bool) -> Any:
            from napari_deblur.engine import iter_estimate_psf, psf_blur_level

            psf = yield from iter_estimate_psf(data, size=size, region=region, channel_axis=channel_axis)
            return psf, float(psf_blur_level(psf))

        def make_outputs(result: Any) -> list[OutputLayerSpec]:
            psf, blur_level = result
            return [
                OutputLayerSpec(
                    data=psf,
                    suffix=PSF_SUFFIX,
                    kwargs={
                        "rgb": False,
                        "colormap": PSF_COLORMAP,
                        "metadata": {**metadata, "blur_level_px": blur_level},
                    },
                )
            ]

        return EngineJob(call_engine, make_outputs, PSF_SUFFIX)
