"""Defocus deblur: each part of an image deconvolved by its own amount of defocus.

"Defocus deblur" runs :func:`napari_deblur.engine.iter_deblur_defocus` (or
:func:`napari_deblur.engine.deblur_defocus` lazily) through the shared
:class:`~napari_deblur._qt.job_runner.JobRunner`: Wiener-net with a per-pixel
Gaussian or disk kernel whose size follows a blur map, the learned map
estimated in the same job (default), a blur-map layer (e.g. from the Blur map
widget, edited by hand), or one constant level. The output is ``<input>
deblurred (defocus)``. The GWIS sharpener stays for edge-only sharpening
without ringing.

Script use::

    dock, widget = viewer.window.add_plugin_dock_widget("napari-deblur", "Defocus deblur")
    widget.psf_model.value = "disk"
    widget.run()
    (deblurred,) = widget.runner.wait()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox

from napari_deblur._qt.blur_level_inputs import BLUR_AUTOMATIC, BlurLevelInputs, BlurLevelWidget
from napari_deblur._qt.job_widget import EngineJob
from napari_deblur._qt.layer_choices import image_input
from napari_deblur._qt.wiener_widget import network_passes_input
from napari_deblur.layer_jobs import JobSelection

if TYPE_CHECKING:
    import napari

SETTINGS_KEY = "defocus_deblur"
OUTPUT_SUFFIX = "deblurred (defocus)"
#: Kernel shapes offered (engine.methods.defocus_deblur.PSF_MODELS), label -> engine name.
PSF_MODELS = {"Gaussian (soft optics, microscopes)": "gaussian", "Disk (camera lens)": "disk"}


class DefocusDeblurWidget(BlurLevelWidget):
    """Dock widget that deconvolves every pixel with the defocus its blur level says.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer (given by napari when the widget is docked).

    Attributes
    ----------
    image, blur_source, blur_level, blur_map, psf_model, network_passes : magicgui widgets
        The inputs; set their ``value`` from scripts (``psf_model`` takes
        ``"gaussian"`` or ``"disk"``).
    runner : JobRunner
        Scope, side by side, Run / Cancel, progress; ``runner.wait()`` returns
        the added layer.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        self._viewer = napari_viewer
        self.image = image_input(
            napari_viewer, "Image layer to deblur (PSF layers are not listed): a photo or a stack."
        )
        self.blur_inputs = BlurLevelInputs(napari_viewer, default_source=BLUR_AUTOMATIC, default_level=1.5)
        self.blur_source, self.blur_level, self.blur_map = self.blur_inputs.widgets
        self.psf_model = ComboBox(
            name="psf_model",
            label="Defocus shape",
            choices=[(label, value) for label, value in PSF_MODELS.items()],
            value="gaussian",
            tooltip="Shape of the blur at each pixel: a Gaussian (a soft, gradual defocus, as in "
            "microscopes) or a uniform disk (an out-of-focus camera lens: bright spots become "
            "discs). Its size follows the blur level.",
        )
        self.network_passes = network_passes_input()
        super().__init__(
            napari_viewer,
            name="defocus_widget",
            inputs=[self.image, *self.blur_inputs.widgets, self.psf_model, self.network_passes],
            run_text="Deblur",
            settings_key=SETTINGS_KEY,
            remembered=["blur_source", "blur_level", "psf_model", "network_passes"],
            watched=[self.image, self.blur_source, self.blur_map],
        )

    def engine_job(self, selection: JobSelection) -> EngineJob:
        """Map-driven deconvolution of ``selection`` (a constant level, a map layer, or the estimate).

        Raises
        ------
        ValueError
            The blur map's shape is neither the image's nor one plane's.
        """
        blur_map, described = self.blur_inputs.argument(selection, automatic=None)
        psf_model = str(self.psf_model.value)
        passes = int(self.network_passes.value)
        metadata = {
            "napari_deblur_method": "defocus_deblur",
            "source_layer": selection.layer.name,
            "psf_model": psf_model,
            "network_passes": passes,
            **described,
        }

        def call_engine(data: Any, channel_axis: int | None, lazy: bool) -> Any:
            from napari_deblur.engine import deblur_defocus, iter_deblur_defocus

            method = deblur_defocus if lazy else iter_deblur_defocus
            return method(data, blur_map, psf_model=psf_model, channel_axis=channel_axis, ensemble=passes)

        return self.image_job(call_engine, OUTPUT_SUFFIX, metadata)
