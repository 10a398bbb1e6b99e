"""Deconvolve (microscopy): 3D deconvolution of a fluorescence z-stack with a 3D PSF.

The PSF comes from a PSF layer (a 3D bead stack or model PSF) or is generated
from the optics (:func:`napari_deblur.engine.microscope_psf`: NA, emission
wavelength, voxel sizes, immersion index, model, confocal). Methods: 3D
Richardson-Lucy (:func:`napari_deblur.engine.richardson_lucy`: stopping by
itself when only noise is left, or a number of iterations; acceleration,
total-variation weight), Wiener-net 3D
(:func:`napari_deblur.engine.wiener_net_3d`: 3D Wiener and Richardson-Lucy
candidates fused by a learned network; no settings) and 3D Wiener
(:func:`napari_deblur.engine.wiener_deconvolve_3d`: SNR). The job runs through
the shared runner; the output keeps the input's voxel scale.

Scope: a 3D method needs the whole ``(z, y, x)`` volume, so

* a 3D layer ``(z, y, x)`` is always deconvolved whole (no scope choice);
* a layer with more leading axes, e.g. ``(t, z, y, x)``, offers "Current slice"
  (the volume at the current time point, i.e. the current index of every axis
  before z), "Whole stack" (every volume, one at a time), for a dask stack
  "Whole stack, lazily" (a time point is deconvolved whole the first time one
  of its planes is shown) and "Save whole stack to file…" (one time point at a
  time into a ``.zarr`` or ``.tif``, so memory holds one volume);
* a 2D image cannot be deconvolved in 3D: Run stays disabled and says why.

The voxel sizes of a generated PSF are taken from the image layer's scale
when it looks like micrometres (``units`` in µm or nm, or a lateral scale that
is not 1 between 0.01 and 5); otherwise the values set here are used.

Script use::

    dock, widget = viewer.window.add_plugin_dock_widget("napari-deblur", "Deconvolve (microscopy)")
    widget.automatic_iterations.value = False
    widget.iterations.value = 20
    widget.run()
    (deconvolved,) = widget.runner.wait()
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FloatSlider, FloatSpinBox, SpinBox

from napari_deblur._qt.job_widget import EngineJob, EngineJobWidget
from napari_deblur._qt.layer_choices import image_input, psf_choices
from napari_deblur.layer_jobs import (
    SCOPE_CURRENT_SLICE,
    SCOPE_LAZY,
    SCOPE_WHOLE_STACK,
    JobSelection,
    leading_axis_names,
    level0,
)

if TYPE_CHECKING:
    import napari

METHOD_RL = "Richardson-Lucy (3D)"
METHOD_WIENER_3D = "Wiener (3D)"
METHOD_WIENER_NET_3D = "Wiener-net (3D, learned)"
METHODS = (METHOD_RL, METHOD_WIENER_NET_3D, METHOD_WIENER_3D)
OUTPUT_SUFFIXES = {METHOD_RL: "RL 3D", METHOD_WIENER_3D: "Wiener 3D", METHOD_WIENER_NET_3D: "Wiener-net 3D"}
ENGINE_METHOD_NAMES = {
    METHOD_RL: "richardson-lucy-3d",
    METHOD_WIENER_3D: "wiener-3d",
    METHOD_WIENER_NET_3D: "wiener-net-3d",
}

PSF_GENERATED = "Generated from optics"
PSF_FROM_LAYER = "PSF layer"
PSF_SOURCES = (PSF_GENERATED, PSF_FROM_LAYER)
PSF_MODELS = ("vectorial", "scalar", "gaussian")

#: Half-extent (µm) of a generated PSF along z and across y/x, capped by the volume's size.
PSF_HALF_EXTENT_UM = 3.0
#: Largest lateral side (voxels) of a generated PSF.
MAX_GENERATED_PSF_SIDE = 129

SETTINGS_KEY = "microscopy"
_MICROMETRE_FACTORS = {"micrometer": 1.0, "micron": 1.0, "µm": 1.0, "um": 1.0, "nanometer": 1e-3, "nm": 1e-3}


def _odd_at_most(limit: int, wanted: int) -> int:
    side = max(1, min(limit, wanted))
    return side if side % 2 else side - 1


def generated_psf_shape(volume_shape: tuple[int, int, int], dxy: float, dz: float) -> tuple[int, int, int]:
    """PSF sides for a ``(z, y, x)`` volume: odd, about ±3 µm, no larger than the volume.

    Parameters
    ----------
    volume_shape : tuple of int
        ``(Z, Y, X)`` of one volume.
    dxy, dz : float
        Voxel sizes in µm.

    Returns
    -------
    tuple of int
        ``(kz, ky, kx)``, each odd and at most the volume's side.
    """
    depth, rows, columns = volume_shape
    kz = _odd_at_most(depth, 2 * math.ceil(PSF_HALF_EXTENT_UM / dz) + 1)
    lateral = min(2 * math.ceil(PSF_HALF_EXTENT_UM / dxy) + 1, MAX_GENERATED_PSF_SIDE)
    return kz, _odd_at_most(rows, lateral), _odd_at_most(columns, lateral)


def voxel_size_um(layer: Any) -> tuple[float, float] | None:
    """``(dxy, dz)`` in µm from a layer's scale when it looks like physical units, else ``None``."""
    if layer is None or layer.ndim < 3:
        return None
    scale = [float(s) for s in layer.scale[-3:]]
    units = [str(u) for u in (getattr(layer, "units", None) or ())][-3:]
    factors = [_MICROMETRE_FACTORS.get(u) for u in units]
    if len(factors) == 3 and all(f is not None for f in factors):
        dz, dy, dx = (s * f for s, f in zip(scale, factors, strict=True))
    else:
        dz, dy, dx = scale
        if dx == 1.0 or not (0.01 <= dx <= 5.0 and 0.01 <= dz <= 20.0):
            return None
    if not (dx > 0 and dz > 0):
        return None
    return float(dx), float(dz)


def _spatial_shape(layer: Any) -> tuple[int, ...]:
    """The layer's shape without an RGB channel axis."""
    shape = tuple(int(s) for s in level0(layer).shape)
    return shape[:-1] if layer.rgb else shape


class MicroscopyWidget(EngineJobWidget):
    """Dock widget that deconvolves a fluorescence z-stack in 3D.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer (given by napari when the widget is docked).

    Attributes
    ----------
    image, psf_source, psf_layer, na, wavelength_nm, dxy_um, dz_um, immersion_index, psf_model,
    confocal, excitation_nm, method, automatic_iterations, iterations, acceleration, tv_weight,
    snr_db : magicgui widgets
        The inputs; set their ``value`` from scripts.
    runner : JobRunner
        Scope, side by side, Run / Cancel, progress; ``runner.wait()`` waits
        for the job and returns the added layer.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        self._viewer = napari_viewer
        self.image = image_input(napari_viewer, "Fluorescence z-stack (z, y, x), or (t, z, y, x).")
        self.psf_source = ComboBox(
            name="psf_source",
            label="PSF",
            choices=list(PSF_SOURCES),
            value=PSF_GENERATED,
            tooltip="Generate the 3D PSF from the microscope's optics, or take a 3D PSF layer "
            "(a measured bead stack or a PSF file).",
        )
        self.psf_layer = ComboBox(
            name="psf_layer",
            label="PSF layer",
            choices=self._psf_choices,
            tooltip="A 3D PSF (z, y, x) with the image's voxel size, centred, no larger than the "
            "volume. Layers marked as PSFs are listed first.",
        )
        self.na = FloatSpinBox(
            name="na", label="NA", min=0.1, max=1.7, step=0.05, value=1.4, tooltip="Numerical aperture."
        )
        self.wavelength_nm = FloatSpinBox(
            name="wavelength_nm",
            label="Emission (nm)",
            min=300.0,
            max=1200.0,
            step=1.0,
            value=520.0,
            tooltip="Emission wavelength in nanometres.",
        )
        self.dxy_um = FloatSpinBox(
            name="dxy_um",
            label="Pixel size (µm)",
            min=0.001,
            max=10.0,
            step=0.005,
            value=0.1,
            tooltip="Lateral voxel size in the sample, µm (taken from the layer's scale when it is in µm).",
        )
        self.dz_um = FloatSpinBox(
            name="dz_um",
            label="z step (µm)",
            min=0.001,
            max=50.0,
            step=0.01,
            value=0.2,
            tooltip="Axial step between planes, µm (taken from the layer's scale when it is in µm).",
        )
        self.immersion_index = FloatSpinBox(
            name="immersion_index",
            label="Immersion n",
            min=1.0,
            max=1.8,
            step=0.001,
            value=1.515,
            tooltip="Refractive index of the immersion medium (oil 1.515, water 1.333, air 1.0).",
        )
        self.psf_model = ComboBox(
            name="psf_model",
            label="PSF model",
            choices=list(PSF_MODELS),
            value="vectorial",
            tooltip="vectorial (most accurate), scalar (Gibson-Lanni) or a Gaussian approximation.",
        )
        self.confocal = CheckBox(
            name="confocal",
            text="Confocal",
            value=False,
            tooltip="Confocal (pinhole closed): excitation PSF times emission PSF.",
        )
        self.excitation_nm = FloatSpinBox(
            name="excitation_nm",
            label="Excitation (nm)",
            min=300.0,
            max=1200.0,
            step=1.0,
            value=488.0,
            tooltip="Excitation wavelength of the confocal, nanometres.",
        )
        self.method = ComboBox(
            name="method",
            label="Method",
            choices=list(METHODS),
            value=METHOD_RL,
            tooltip="Richardson-Lucy: iterative, keeps intensities non-negative, handles Poisson "
            "noise. Wiener-net: 3D Wiener and Richardson-Lucy results blended voxel by voxel by a "
            "learned network; no settings. Wiener: one step, fast, with the SNR you set.",
        )
        self.automatic_iterations = CheckBox(
            name="automatic_iterations",
            text="Stop when only noise is left",
            value=True,
            tooltip="Iterate until the difference between the stack and the re-blurred result looks "
            "most like noise (up to 200 iterations): about 10 iterations for confocal stacks, 50-100 "
            "for clean widefield ones. Untick to set the number yourself.",
        )
        self.iterations = SpinBox(
            name="iterations",
            label="Iterations",
            min=1,
            max=1000,
            step=1,
            value=50,
            tooltip="More iterations: sharper and noisier (20-100 is typical).",
        )
        self.acceleration = CheckBox(
            name="acceleration",
            text="Accelerated",
            value=True,
            tooltip="Extrapolate between iterations (Biggs-Andrews): the same result in fewer iterations.",
        )
        self.tv_weight = FloatSpinBox(
            name="tv_weight",
            label="TV weight",
            min=0.0,
            max=0.1,
            step=0.001,
            value=0.0,
            tooltip="Total-variation regularisation (0: none; about 0.002 tames noise at many iterations).",
        )
        self.snr_db = FloatSlider(
            name="snr_db",
            label="SNR (dB)",
            min=5.0,
            max=60.0,
            step=0.5,
            value=30.0,
            tooltip="Signal-to-noise ratio in dB. Lower: smoother; higher: sharper but noisier.",
        )
        super().__init__(
            napari_viewer,
            name="microscopy_widget",
            inputs=[
                self.image,
                self.psf_source,
                self.psf_layer,
                self.na,
                self.wavelength_nm,
                self.dxy_um,
                self.dz_um,
                self.immersion_index,
                self.psf_model,
                self.confocal,
                self.excitation_nm,
                self.method,
                self.automatic_iterations,
                self.iterations,
                self.acceleration,
                self.tv_weight,
                self.snr_db,
            ],
            run_text="Deconvolve",
            settings_key=SETTINGS_KEY,
            remembered=[
                "psf_source",
                "na",
                "wavelength_nm",
                "dxy_um",
                "dz_um",
                "immersion_index",
                "psf_model",
                "confocal",
                "excitation_nm",
                "method",
                "automatic_iterations",
                "iterations",
                "acceleration",
                "tv_weight",
                "snr_db",
            ],
            watched=[
                self.image,
                self.psf_layer,
                self.psf_source,
                self.method,
                self.confocal,
                self.automatic_iterations,
            ],
        )
        self.image.changed.connect(self._take_voxel_size_from_layer)
        self._take_voxel_size_from_layer()

    # ---------------------------------------------------------------- choices
    def _psf_choices(self, *_: Any) -> list[tuple[str, Any]]:
        return psf_choices(self._viewer)

    def _take_voxel_size_from_layer(self, *_: Any) -> None:
        voxel = voxel_size_um(self.image.value)
        if voxel is not None:
            self.dxy_um.value, self.dz_um.value = voxel

    # ------------------------------------------------------------- validation
    def _on_inputs_changed(self, *_: Any) -> None:
        super()._on_inputs_changed()
        layer = self.image.value
        # A 3D layer is one volume: always deconvolved whole. More leading axes: the current
        # volume, all of them, lazily, or into a file.
        stack = layer is not None and layer.ndim > 3
        self.runner.scope.visible = stack
        self.runner.save_button.visible = stack

    def _show_relevant_inputs(self) -> None:
        generated = self.psf_source.value == PSF_GENERATED
        self.psf_layer.visible = not generated
        for widget in (self.na, self.wavelength_nm, self.immersion_index, self.psf_model, self.confocal):
            widget.visible = generated
        self.excitation_nm.visible = generated and bool(self.confocal.value)
        self.dxy_um.visible = self.dz_um.visible = generated
        rl = self.method.value == METHOD_RL
        self.automatic_iterations.visible = self.acceleration.visible = self.tv_weight.visible = rl
        self.iterations.visible = rl and not self.automatic_iterations.value
        self.snr_db.visible = self.method.value == METHOD_WIENER_3D

    def invalid_reason(self) -> str | None:
        """Why the inputs cannot run now (``None`` when they can)."""
        reason = super().invalid_reason()
        if reason is not None:
            return reason
        image = self.image.value
        if image.ndim < 3:
            return (
                f"Image {image.name!r} is 2D: 3D deconvolution needs a z-stack (z, y, x). Use the "
                "Wiener-net sharpener for 2D images."
            )
        if self.psf_source.value == PSF_FROM_LAYER:
            psf = self.psf_layer.value
            if psf is None:
                return "No PSF layer: open a 3D PSF file, or choose 'Generated from optics'."
            if psf is image or psf.name == image.name:
                return "The PSF layer is the image itself: choose the layer that holds the PSF."
            if psf.rgb or psf.ndim != 3:
                return (
                    f"PSF layer {psf.name!r} is {'RGB' if psf.rgb else f'{psf.ndim}D'}: 3D "
                    "deconvolution needs a single-channel 3D PSF (z, y, x)."
                )
        return None

    # -------------------------------------------------------------------- run
    def run(self) -> Any:
        """Start the deconvolution of the current volume (or every volume) of the chosen image.

        Returns
        -------
        superqt.utils.GeneratorWorker
            The running worker; ``self.runner.wait()`` returns the added layer.

        Raises
        ------
        ValueError, TypeError
            Invalid inputs (see :meth:`invalid_reason` and :meth:`engine_job`),
            the lazy scope, or a job already running.
        """
        layer = self._valid_image()
        scope = self.runner.scope.value
        if layer.ndim > 3 and scope == SCOPE_LAZY:
            selection = self.runner.selection(layer, scope=SCOPE_LAZY)
        else:
            selection = self.runner.selection(layer, scope=SCOPE_WHOLE_STACK)
        if layer.ndim > 3 and scope == SCOPE_CURRENT_SLICE:
            selection = self._current_volume(selection)
        return self.start_job(selection, self.engine_job(selection))

    def _current_volume(self, whole: JobSelection) -> JobSelection:
        """The volume at the viewer's current index of every axis before z."""
        layer = whole.layer
        n_lead = layer.ndim - 3
        shape = _spatial_shape(layer)
        position = np.asarray(layer.world_to_data(self._viewer.dims.point))[:n_lead]
        index = tuple(
            int(np.clip(np.round(p), 0, n - 1)) for p, n in zip(position, shape[:n_lead], strict=True)
        )
        names = leading_axis_names(layer, layer.ndim - 2)[:n_lead]
        suffix = " (" + ", ".join(f"{a}={i}" for a, i in zip(names, index, strict=True)) + ")"
        channel_axis = None if whole.channel_axis is None else whole.channel_axis - n_lead
        return JobSelection(layer=layer, index=index, channel_axis=channel_axis, name_suffix=suffix)

    def _psf_from_layer(self, volume_shape: tuple[int, int, int]) -> np.ndarray:
        """The PSF layer's array (read on the GUI thread; PSFs are small)."""
        layer = self.psf_layer.value
        psf = np.array(level0(layer), dtype=np.float32, copy=True)
        if any(k > n for k, n in zip(psf.shape, volume_shape, strict=True)):
            raise ValueError(
                f"PSF layer {layer.name!r} {psf.shape} is larger than the volume {volume_shape} in some "
                "axis: crop the PSF around its peak, or use a larger stack."
            )
        return psf

    def _psf_description(self, psf_shape: tuple[int, ...]) -> dict[str, Any]:
        if self.psf_source.value == PSF_FROM_LAYER:
            return {"psf": "layer", "psf_layer": self.psf_layer.value.name}
        description = {
            "psf": f"{self.psf_model.value} {'confocal' if self.confocal.value else 'widefield'}",
            "psf_shape": list(psf_shape),
            "na": float(self.na.value),
            "wavelength_nm": float(self.wavelength_nm.value),
            "dxy_um": float(self.dxy_um.value),
            "dz_um": float(self.dz_um.value),
            "immersion_index": float(self.immersion_index.value),
        }
        if self.confocal.value:
            description["excitation_nm"] = float(self.excitation_nm.value)
        return description

    def engine_job(self, selection: JobSelection) -> EngineJob:
        """3D Richardson-Lucy, Wiener-net 3D or 3D Wiener on ``selection`` with the chosen PSF.

        Raises
        ------
        ValueError
            A 2D image, or a PSF layer larger than the volume.
        """
        shape = _spatial_shape(selection.layer)
        if len(shape) < 3:
            raise ValueError(f"Image {selection.layer.name!r} is 2D: 3D deconvolution needs a z-stack.")
        volume_shape = shape[-3:]
        from_layer = self.psf_source.value == PSF_FROM_LAYER
        if from_layer:
            psf_array = self._psf_from_layer(volume_shape)
            psf_shape = psf_array.shape
            optics = {}
        else:
            psf_array = None
            dxy, dz = float(self.dxy_um.value), float(self.dz_um.value)
            psf_shape = generated_psf_shape(volume_shape, dxy, dz)
            confocal = bool(self.confocal.value)
            optics = {
                "na": float(self.na.value),
                "wavelength": float(self.wavelength_nm.value) / 1000.0,
                "dxy": dxy,
                "dz": dz,
                "ni": float(self.immersion_index.value),
                "model": self.psf_model.value,
                "confocal": confocal,
                "excitation_wavelength": float(self.excitation_nm.value) / 1000.0 if confocal else None,
            }
            if optics["na"] >= optics["ni"]:
                raise ValueError(
                    f"NA {optics['na']} must be below the immersion index {optics['ni']}: check both."
                )
        method = self.method.value
        rl = method == METHOD_RL
        rl_options = {
            "iterations": "auto" if self.automatic_iterations.value else int(self.iterations.value),
            "acceleration": bool(self.acceleration.value),
            "tv_weight": float(self.tv_weight.value),
        }
        snr_db = float(self.snr_db.value)
        options = rl_options if rl else {"snr_db": snr_db} if method == METHOD_WIENER_3D else {}
        metadata = {
            "napari_deblur_method": ENGINE_METHOD_NAMES[method],
            **options,
            "source_layer": selection.layer.name,
            **self._psf_description(psf_shape),
        }

        def call_engine(data: Any, channel_axis: int | None, lazy: bool) -> Any:
            from napari_deblur import engine

            psf = psf_array if from_layer else engine.microscope_psf(psf_shape, **optics)
            functions = {  # (the public function: lazy for a dask stack, its generator twin)
                METHOD_RL: (engine.richardson_lucy, engine.iter_richardson_lucy),
                METHOD_WIENER_NET_3D: (engine.wiener_net_3d, engine.iter_wiener_net_3d),
                METHOD_WIENER_3D: (engine.wiener_deconvolve_3d, engine.iter_wiener_deconvolve_3d),
            }
            public, twin = functions[method]
            # lazy: one whole volume per chunk of the result, computed when first shown or saved
            deconvolve = public if lazy else twin
            return deconvolve(data, psf, channel_axis=channel_axis, **options)

        # 3D deconvolution gathers each plane's haze back into its source: peaks far above the
        # input's contrast range, so the output gets its own contrast.
        return self.image_job(call_engine, OUTPUT_SUFFIXES[method], metadata, contrast="robust")
