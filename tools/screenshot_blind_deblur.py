"""Screenshots of blind deblurring in a real napari window.

Opens the camera-shake sample, docks "Deblur (blind)" and presses it (kernel
size chosen automatically), lays the input and the result side by side with
the estimated kernel, and saves the window. Prints the estimate's kernel
similarity to the sample's true PSF and the PSNR of the input and of the result
against the sharp image. With a second path, it then docks the Region selector,
clicks "Find regions" and saves the window (the regions layer on the image).

    xvfb-run -a -s "-screen 0 1280x1024x24" python tools/screenshot_blind_deblur.py \
        docs/images/blind-deblur.png docs/images/region-selector.png
"""

from __future__ import annotations

import sys

import numpy as np

PLUGIN = "napari-deblur"


def main(path: str, selector_path: str | None = None) -> None:
    import napari

    from napari_deblur import engine
    from napari_deblur._qt.job_runner import viewer_grid
    from napari_deblur.demo import process_events
    from napari_deblur.layer_roles import is_psf_metadata
    from napari_deblur.sample_data import camera_shake_arrays

    viewer = napari.Viewer(title="napari-deblur: blind deblurring", show=True)
    viewer.window.resize(1280, 960)
    layers = viewer.open_sample(PLUGIN, "camera_shake")
    true_psf_layer = next(layer for layer in layers if is_psf_metadata(layer.metadata))
    image_layer = next(layer for layer in layers if layer is not true_psf_layer)

    _dock, blind = viewer.window.add_plugin_dock_widget(PLUGIN, "Deblur (blind)")
    blind.reset_choices()
    blind.image.value = image_layer
    blind.automatic_size.value = True
    blind.run()
    restored_layer, estimated_psf_layer = blind.runner.wait()

    _blurred, _psf, sharp = camera_shake_arrays()  # the sample's defaults, as File > Open Sample
    similarity = engine.kernel_similarity(
        np.asarray(estimated_psf_layer.data), np.asarray(true_psf_layer.data)
    )
    print(f"estimated kernel {estimated_psf_layer.data.shape}, similarity to the true PSF: {similarity:.3f}")
    for name, data in (("input", image_layer.data), ("Deblur (blind)", restored_layer.data)):
        print(f"PSNR {name}: {_psnr(np.asarray(data, dtype=np.float64), sharp):.2f} dB")

    for layer in viewer.layers:
        layer.visible = layer in (image_layer, restored_layer)
    viewer_grid(viewer).enabled = True
    viewer_grid(viewer).shape = (1, 2)
    viewer.reset_view()
    process_events(1.0)
    viewer.screenshot(path, canvas_only=False)
    print(f"saved {path}")

    if selector_path:
        viewer_grid(viewer).enabled = False
        _dock, selector = viewer.window.add_plugin_dock_widget(PLUGIN, "Region selector")
        selector.reset_choices()
        selector.image.value = image_layer
        selector.size.value = 192
        selector.run()
        selector.runner.wait()
        for layer in viewer.layers:
            layer.visible = layer is image_layer or layer.name.endswith(" regions")
        viewer.reset_view()
        process_events(1.0)
        viewer.screenshot(selector_path, canvas_only=False)
        print(f"saved {selector_path}")
    viewer.close()


def _psnr(estimate: np.ndarray, reference: np.ndarray) -> float:
    """PSNR for images in [0, 1] (the estimate clipped to that range)."""
    mse = float(np.mean((np.clip(estimate, 0.0, 1.0) - reference) ** 2))
    return 10 * np.log10(1.0 / mse)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "blind-deblur.png", sys.argv[2] if len(sys.argv) > 2 else None)
