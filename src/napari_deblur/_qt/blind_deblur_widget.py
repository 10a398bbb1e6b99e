"""Deblur (blind): a shaken or out-of-focus image sharpened in one press, with no PSF given.

"Deblur (blind)" runs :func:`napari_deblur.engine.iter_deblur_blind`: the blur
kernel of the plane on screen (or of every plane, "Whole stack") is estimated
from the image itself (luminance for colour), then every channel is
deconvolved by Wiener-net with it. Two layers are added: ``<input> deblurred
(blind)`` and the kernel, ``<input> PSF (blind)``, a PSF layer (one kernel per
plane for a stack). To change the kernel before the last step, edit or
replace that layer and deconvolve with it in the Wiener-net sharpener, which
lists PSF layers first. The kernel size is chosen automatically unless a
largest size is set.

"Whole stack, lazily" and "Save whole stack to file…" are not offered: each
plane's kernel is estimated before that plane can be deconvolved.

Script use::

    dock, widget = viewer.window.add_plugin_dock_widget("napari-deblur", "Deblur (blind)")
    widget.run()
    deblurred, psf = widget.runner.wait()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from magicgui.widgets import CheckBox, SpinBox

from napari_deblur._qt.job_widget import EngineJob, EngineJobWidget
from napari_deblur._qt.layer_choices import image_input
from napari_deblur._qt.wiener_widget import network_passes_input
from napari_deblur.layer_jobs import SCOPE_LAZY, JobSelection, OutputLayerSpec
from napari_deblur.layer_roles import psf_metadata

if TYPE_CHECKING:
    import napari

SETTINGS_KEY = "blind_deblur"
OUTPUT_SUFFIX = "deblurred (blind)"
PSF_SUFFIX = "PSF (blind)"
PSF_COLORMAP = "magma"  # as the PSF reader and the samples
#: Largest kernel the automatic size looks for (engine.methods.blind_psf.AUTO_KERNEL_BOUND).
AUTO_BOUND = 75


class BlindDeblurWidget(EngineJobWidget):
    """Dock widget that estimates the blur kernel and deconvolves with it in one job.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer (given by napari when the widget is docked).

    Attributes
    ----------
    image, automatic_size, size, network_passes : magicgui widgets
        The inputs; set their ``value`` from scripts.
    runner : JobRunner
        Deblur (blind) / Cancel, progress; ``runner.wait()`` returns the
        deblurred layer and the PSF layer.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        self.image = image_input(
            napari_viewer,
            "Blurred image layer (PSF layers are not listed): a photo (colour or grey) or a stack.",
        )
        self.automatic_size = CheckBox(
            name="automatic_size",
            text="Choose the kernel size",
            value=True,
            tooltip=f"Look for a kernel of any size up to {AUTO_BOUND} px (and half the image's "
            "smaller side); the PSF layer is cut to the kernel's support.",
        )
        self.size = SpinBox(
            name="size",
            label="Largest kernel (px)",
            min=3,
            max=151,
            step=2,
            value=31,
            tooltip="Upper bound of the kernel side in pixels (odd); the image must be at least "
            "twice as large on each side.",
        )
        self.network_passes = network_passes_input()
        super().__init__(
            napari_viewer,
            name="blind_deblur_widget",
            inputs=[self.image, self.automatic_size, self.size, self.network_passes],
            run_text="Deblur (blind)",
            settings_key=SETTINGS_KEY,
            remembered=["automatic_size", "size", "network_passes"],
            watched=[self.image, self.automatic_size],
        )
        self.runner.save_button.visible = False

    def _show_relevant_inputs(self) -> None:
        self.size.visible = not self.automatic_size.value

    def run(self) -> Any:
        """Start the blind deblurring of the plane on screen (or of every plane).

        Returns
        -------
        superqt.utils.GeneratorWorker
            The running worker; ``self.runner.wait()`` returns the deblurred
            layer and the PSF layer.

        Raises
        ------
        ValueError, TypeError
            Invalid inputs, the lazy scope, or a job already running. An image
            too small for the kernel size is reported by the engine when the
            job runs.
        """
        if self.runner.scope.value == SCOPE_LAZY:
            raise ValueError(
                "Blind deblurring estimates each plane's kernel first: 'Whole stack, lazily' is not "
                "available. Choose 'Current slice' or 'Whole stack'."
            )
        return super().run()

    def engine_job(self, selection: JobSelection) -> EngineJob:
        """Estimate the kernel of each selected plane, then deconvolve with Wiener-net."""
        size = None if self.automatic_size.value else int(self.size.value)
        passes = int(self.network_passes.value)
        source = {"source_layer": selection.layer.name}
        if selection.index is not None:
            source["slice"] = list(selection.index)

        def call_engine(data: Any, channel_axis: int | None, lazy: bool) -> Any:
            from napari_deblur.engine import iter_deblur_blind

            return iter_deblur_blind(data, size=size, channel_axis=channel_axis, ensemble=passes)

        def make_outputs(result: Any) -> list[OutputLayerSpec]:
            from napari_deblur.engine import psf_blur_level

            image, psf = result
            planes = psf if psf.ndim == 3 else psf[None]
            method = {
                "napari_deblur_method": "blind_deblur",
                "kernel_size": "automatic" if size is None else size,
            }
            return [
                OutputLayerSpec(
                    data=image,
                    suffix=OUTPUT_SUFFIX,
                    kwargs={"metadata": {**method, **source, "network_passes": passes}},
                    match_input_contrast=True,
                ),
                OutputLayerSpec(
                    data=psf,
                    suffix=PSF_SUFFIX,
                    kwargs={
                        "rgb": False,
                        "colormap": PSF_COLORMAP,
                        "metadata": psf_metadata(
                            **method,
                            **source,
                            blur_level_px=[float(psf_blur_level(k)) for k in planes],
                            psf_per_plane=psf.ndim == 3,
                        ),
                    },
                ),
            ]

        return EngineJob(call_engine, make_outputs, OUTPUT_SUFFIX)
