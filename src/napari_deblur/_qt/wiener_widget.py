"""Wiener-net sharpener: deconvolve an image layer with a known or parametric PSF.

Two methods: the learned Wiener-net (default;
:func:`napari_deblur.engine.wiener_net_deconvolve`, no parameter to tune)
and classical Wiener deconvolution at a chosen SNR
(:func:`napari_deblur.engine.wiener_deconvolve`). The job runs through the
shared :class:`~napari_deblur._qt.job_runner.JobRunner` (their ``iter_*``
twins in memory, the functions themselves lazily).

A PSF layer is a 2D kernel for every plane, or, with "One 2D kernel per
plane" ticked, a stack of kernels, one per plane of a z-stack (ticked by
itself for stacks napari-deblur marks so, such as blind deblurring's). A
microscope's 3D PSF belongs to "Deconvolve (microscopy)": unticked, a 3D PSF
layer keeps Run disabled and says so.

Script use::

    dock, widget = viewer.window.add_plugin_dock_widget("napari-deblur", "Wiener-net sharpener")
    widget.psf_source.value = "Gaussian"
    widget.gaussian_sigma.value = 2.0
    widget.run()
    (sharpened,) = widget.runner.wait()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FloatSlider, FloatSpinBox

from napari_deblur._qt.job_widget import EngineJob, EngineJobWidget
from napari_deblur._qt.layer_choices import image_input, psf_choices
from napari_deblur.layer_jobs import JobSelection, level0
from napari_deblur.layer_roles import is_per_plane_psf
from napari_deblur.options import DEFAULT_ENSEMBLE, ENSEMBLE_SIZES

if TYPE_CHECKING:
    import napari

METHOD_WIENER_NET = "Wiener-net (learned)"
METHOD_WIENER = "Wiener (classical)"
METHODS = (METHOD_WIENER_NET, METHOD_WIENER)
OUTPUT_SUFFIXES = {METHOD_WIENER_NET: "Wiener-net", METHOD_WIENER: "Wiener"}

PSF_FROM_LAYER = "PSF layer"
PSF_GAUSSIAN = "Gaussian"
PSF_DISK = "Disk"
PSF_RING = "Ring"
PSF_MOTION = "Linear motion"
PSF_SOURCES = (PSF_FROM_LAYER, PSF_GAUSSIAN, PSF_DISK, PSF_RING, PSF_MOTION)

NETWORK_PASSES = ENSEMBLE_SIZES
DEFAULT_NETWORK_PASSES = DEFAULT_ENSEMBLE

SETTINGS_KEY = "wiener"


def network_passes_input() -> ComboBox:
    """The "Network passes" choice of the widgets that run Wiener-net (1, 2, 4 or 8 views)."""
    return ComboBox(
        name="network_passes",
        label="Network passes",
        choices=list(NETWORK_PASSES),
        value=DEFAULT_NETWORK_PASSES,
        tooltip="Wiener-net runs its network on this many flipped or turned views of each "
        "plane and averages them: more passes are a little sharper and take proportionally "
        "longer.",
    )


class WienerWidget(EngineJobWidget):
    """Dock widget that sharpens an image layer by Wiener deconvolution.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer (given by napari when the widget is docked).

    Attributes
    ----------
    image, method, network_passes, snr_db, psf_source, psf_layer, gaussian_sigma,
    disk_radius, ring_radius, motion_length, motion_angle : magicgui widgets
        The inputs; set their ``value`` from scripts.
    runner : JobRunner
        Scope, side by side, Run / Cancel, progress; ``runner.wait()`` waits
        for the job and returns the added layer.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        self._viewer = napari_viewer
        self.image = image_input(napari_viewer, "Image layer to sharpen (PSF layers are not listed).")
        self.method = ComboBox(
            name="method",
            label="Method",
            choices=list(METHODS),
            value=METHOD_WIENER_NET,
            tooltip="Wiener-net: a stack of Wiener filters fused by a trained network (no "
            "parameter to tune; estimates the noise itself). Classical: one Wiener filter at the "
            "SNR you set.",
        )
        self.network_passes = network_passes_input()
        self.snr_db = FloatSlider(
            name="snr_db",
            label="SNR (dB)",
            min=5.0,
            max=60.0,
            step=0.5,
            value=30.0,
            tooltip="Signal-to-noise ratio of the image in dB. Lower: smoother result, "
            "less noise amplification; higher: sharper but noisier.",
        )
        self.psf_source = ComboBox(
            name="psf_source",
            label="PSF",
            choices=list(PSF_SOURCES),
            value=PSF_FROM_LAYER,
            tooltip="Take the PSF (blur kernel) from a layer, or build a parametric one.",
        )
        self.psf_layer = ComboBox(
            name="psf_layer",
            label="PSF layer",
            choices=self._psf_choices,
            tooltip="A 2D PSF (used for every plane) or a stack with one PSF per image plane. "
            "Layers marked as PSFs are listed first.",
        )
        self.kernel_per_plane = CheckBox(
            name="kernel_per_plane",
            text="One 2D kernel per plane",
            value=False,
            tooltip="The PSF layer is a stack of 2D kernels, one per plane of the image (as blind "
            "deblurring makes). Unticked, a 3D PSF layer is a microscope's 3D PSF: deconvolve the "
            "z-stack in 3D with 'Deconvolve (microscopy)'.",
        )
        self.gaussian_sigma = FloatSpinBox(
            name="gaussian_sigma",
            label="Sigma (px)",
            min=0.1,
            max=50.0,
            step=0.1,
            value=2.0,
            tooltip="Standard deviation of the Gaussian PSF in pixels.",
        )
        self.disk_radius = FloatSpinBox(
            name="disk_radius",
            label="Radius (px)",
            min=0.5,
            max=50.0,
            step=0.5,
            value=3.0,
            tooltip="Radius of the disk (out-of-focus) PSF in pixels.",
        )
        self.ring_radius = FloatSpinBox(
            name="ring_radius",
            label="Ring radius (px)",
            min=1.0,
            max=50.0,
            step=0.5,
            value=5.0,
            tooltip="Radius of the ring (annulus) PSF in pixels.",
        )
        self.motion_length = FloatSpinBox(
            name="motion_length",
            label="Length (px)",
            min=1.0,
            max=200.0,
            step=1.0,
            value=15.0,
            tooltip="Length of the straight motion blur in pixels.",
        )
        self.motion_angle = FloatSpinBox(
            name="motion_angle",
            label="Angle (°)",
            min=-180.0,
            max=180.0,
            step=1.0,
            value=0.0,
            tooltip="Direction of the motion in degrees, counter-clockwise from the x axis.",
        )
        super().__init__(
            napari_viewer,
            name="wiener_widget",
            inputs=[
                self.image,
                self.method,
                self.network_passes,
                self.snr_db,
                self.psf_source,
                self.psf_layer,
                self.kernel_per_plane,
                self.gaussian_sigma,
                self.disk_radius,
                self.ring_radius,
                self.motion_length,
                self.motion_angle,
            ],
            run_text="Sharpen",
            settings_key=SETTINGS_KEY,
            remembered=[
                "method",
                "network_passes",
                "snr_db",
                "psf_source",
                "gaussian_sigma",
                "disk_radius",
                "ring_radius",
                "motion_length",
                "motion_angle",
            ],
            watched=[self.image, self.psf_layer, self.psf_source, self.method, self.kernel_per_plane],
        )
        self.psf_layer.changed.connect(self._on_psf_layer_changed)
        self._on_psf_layer_changed()

    # ---------------------------------------------------------------- choices
    def _psf_choices(self, *_: Any) -> list[tuple[str, Any]]:
        return psf_choices(self._viewer)

    # ------------------------------------------------------------- validation
    def _show_relevant_inputs(self) -> None:
        self.snr_db.visible = self.method.value == METHOD_WIENER
        self.network_passes.visible = self.method.value == METHOD_WIENER_NET
        source = self.psf_source.value
        self.psf_layer.visible = source == PSF_FROM_LAYER
        self.kernel_per_plane.visible = source == PSF_FROM_LAYER and _is_psf_stack(self.psf_layer.value)
        self.gaussian_sigma.visible = source == PSF_GAUSSIAN
        self.disk_radius.visible = source == PSF_DISK
        self.ring_radius.visible = source == PSF_RING
        self.motion_length.visible = source == PSF_MOTION
        self.motion_angle.visible = source == PSF_MOTION

    def invalid_reason(self) -> str | None:
        """Why the inputs cannot run now (``None`` when they can)."""
        reason = super().invalid_reason()
        if reason is not None:
            return reason
        image = self.image.value
        if self.psf_source.value == PSF_FROM_LAYER:
            psf = self.psf_layer.value
            if psf is None:
                return (
                    "No PSF layer: open a PSF file, or choose a parametric PSF "
                    "(Gaussian, Disk, Ring, Linear motion)."
                )
            if psf is image or psf.name == image.name:
                return "The PSF layer is the image itself: choose the layer that holds the PSF."
            if psf.rgb:
                return f"PSF layer {psf.name!r} is RGB: a PSF must be a single-channel kernel."
            if _is_psf_stack(psf) and not self.kernel_per_plane.value:
                return (
                    f"PSF layer {psf.name!r} is a 3D PSF: deconvolve the z-stack in 3D with "
                    "'Deconvolve (microscopy)', or tick 'One 2D kernel per plane' if it holds one "
                    "kernel per image plane."
                )
        return None

    def _on_psf_layer_changed(self, *_: Any) -> None:
        """A PSF stack marked as one kernel per plane (blind deblurring, samples) ticks the box."""
        self.kernel_per_plane.value = is_per_plane_psf(getattr(self.psf_layer.value, "metadata", None))

    # -------------------------------------------------------------------- PSF
    def _psf_from_layer(self, selection: JobSelection) -> np.ndarray:
        """The PSF array for this job, read on the GUI thread (PSFs are small)."""
        layer = self.psf_layer.value
        psf = np.array(level0(layer), dtype=np.float32, copy=True)
        image = selection.layer
        if psf.ndim == 3 and psf.shape[0] == 1:
            psf = psf[0]
        if psf.ndim == 2:
            return psf
        if psf.ndim == 3:
            n_lead = image.ndim - 2
            image_shape = level0(image).shape
            if n_lead != 1 or image_shape[0] != psf.shape[0]:
                raise ValueError(
                    f"PSF layer {layer.name!r} holds {psf.shape[0]} kernels but image "
                    f"{image.name!r} has shape {tuple(image_shape)}: use a 2D PSF, or a PSF stack "
                    "with one kernel per plane of a z-stack."
                )
            if selection.index is not None:
                return psf[selection.index[0]]
            return psf
        raise ValueError(
            f"PSF layer {layer.name!r} is {psf.ndim}D: a PSF must be 2D (h, w) or a stack "
            "(planes, h, w) with one kernel per image plane."
        )

    def _psf_description(self) -> dict[str, Any]:
        source = self.psf_source.value
        if source == PSF_FROM_LAYER:
            return {"psf": "layer", "psf_layer": self.psf_layer.value.name}
        if source == PSF_GAUSSIAN:
            return {"psf": "gaussian", "sigma_px": float(self.gaussian_sigma.value)}
        if source == PSF_DISK:
            return {"psf": "disk", "radius_px": float(self.disk_radius.value)}
        if source == PSF_RING:
            return {"psf": "ring", "radius_px": float(self.ring_radius.value)}
        return {
            "psf": "linear motion",
            "length_px": float(self.motion_length.value),
            "angle_deg": float(self.motion_angle.value),
        }

    # -------------------------------------------------------------------- run
    def engine_job(self, selection: JobSelection) -> EngineJob:
        """Wiener-net or classical Wiener on ``selection`` with the chosen PSF.

        Raises
        ------
        ValueError
            A PSF layer that does not fit the image (see :meth:`_psf_from_layer`).
        """
        source = self.psf_source.value
        psf_array = self._psf_from_layer(selection) if source == PSF_FROM_LAYER else None
        sigma = float(self.gaussian_sigma.value)
        disk_radius = float(self.disk_radius.value)
        ring_radius = float(self.ring_radius.value)
        length = float(self.motion_length.value)
        angle = float(self.motion_angle.value)
        snr_db = float(self.snr_db.value)
        passes = int(self.network_passes.value)
        method = self.method.value
        learned = method == METHOD_WIENER_NET
        metadata = {
            "napari_deblur_method": "wiener-net" if learned else "wiener",
            **({"network_passes": passes} if learned else {"snr_db": snr_db}),
            "source_layer": selection.layer.name,
            **self._psf_description(),
        }

        def call_engine(data: Any, channel_axis: int | None, lazy: bool) -> Any:
            from napari_deblur import engine

            if source == PSF_FROM_LAYER:
                psf = psf_array
            elif source == PSF_GAUSSIAN:
                psf = engine.gaussian_psf(sigma)
            elif source == PSF_DISK:
                psf = engine.disk_psf(disk_radius)
            elif source == PSF_RING:
                psf = engine.ring_psf(ring_radius)
            else:
                psf = engine.motion_psf(length, angle)
            if learned:
                deconvolve = engine.wiener_net_deconvolve if lazy else engine.iter_wiener_net_deconvolve
                return deconvolve(data, psf, channel_axis=channel_axis, ensemble=passes, psf_per_plane=True)
            deconvolve = engine.wiener_deconvolve if lazy else engine.iter_wiener_deconvolve
            return deconvolve(data, psf, snr_db=snr_db, channel_axis=channel_axis, psf_per_plane=True)

        return self.image_job(call_engine, OUTPUT_SUFFIXES[method], metadata)


def _is_psf_stack(layer: Any) -> bool:
    """Whether a PSF layer holds more than one 2D plane (a 3D PSF or one kernel per plane)."""
    if layer is None or getattr(layer, "rgb", False):
        return False
    shape = level0(layer).shape
    return len(shape) == 3 and shape[0] > 1
