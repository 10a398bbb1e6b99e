"""Screenshot of the Blur map widget in a real napari window, on the defocus sample and a real photo.

Opens the defocus sample (``camera`` blurred from 0 px at the top to 6 px at
the bottom) and scikit-image's ``camera`` photo as it is (its background is
out of focus in the original), docks the Blur map widget, estimates the map
and the blur classes of both, lays them out in a grid (one column per image:
input, map, classes) and saves the window. Prints the map's error on the sample
against its true map, and the median level of the photo's sky and coat.

    xvfb-run -a -s "-screen 0 1280x1024x24" python tools/screenshot_blur_map.py \
        docs/images/blur-map.png
"""

from __future__ import annotations

import sys

import numpy as np

PLUGIN = "napari-deblur"


def main(path: str) -> None:
    import napari
    from skimage import data

    from napari_deblur._qt.job_runner import viewer_grid
    from napari_deblur.demo import process_events
    from napari_deblur.layer_roles import BLUR_MAP_ROLE, ROLE_KEY

    viewer = napari.Viewer(title="napari-deblur: blur map", show=True)
    viewer.window.resize(1280, 820)
    sample_layers = viewer.open_sample(PLUGIN, "defocus_ramp")
    true_map = next(layer for layer in sample_layers if layer.metadata.get(ROLE_KEY) == BLUR_MAP_ROLE)
    sample = next(layer for layer in sample_layers if layer is not true_map)
    photo = viewer.add_image(data.camera().astype(np.float32) / 255.0, name="camera (photo)", colormap="gray")

    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Blur map")
    widget.reset_choices()
    widget.add_classes.value = True
    outputs = {}
    for layer in (sample, photo):
        widget.image.value = layer
        widget.run()
        outputs[layer.name] = widget.runner.wait()

    estimated = np.asarray(outputs[sample.name][0].data, dtype=np.float64)
    truth = np.asarray(true_map.data, dtype=np.float64)
    print(
        f"defocus sample: MAE of the map {np.mean(np.abs(estimated - truth)):.2f} px, "
        f"median over the top / bottom fifth {np.median(estimated[: len(estimated) // 5]):.2f} / "
        f"{np.median(estimated[-len(estimated) // 5 :]):.2f} px "
        f"(true {np.median(truth[: len(truth) // 5]):.2f} / {np.median(truth[-len(truth) // 5 :]):.2f})"
    )
    photo_map = np.asarray(outputs[photo.name][0].data)
    print(
        f"camera photo: median level of the sky (rows 0-100) {np.median(photo_map[:100]):.2f} px, "
        f"of the coat (rows 200-400, columns 150-300) {np.median(photo_map[200:400, 150:300]):.2f} px"
    )

    # Two columns (sample, photo), three rows (input, map, classes): the canvas is taller than wide.
    shown = [
        layer
        for pair in zip([sample, *outputs[sample.name]], [photo, *outputs[photo.name]])
        for layer in pair
    ]
    for layer in list(viewer.layers):
        layer.visible = layer in shown
    # The grid's first cell takes the last visible layer of the list: order the list backwards.
    for index, layer in enumerate(shown):
        viewer.layers.move(viewer.layers.index(layer), index)
    viewer_grid(viewer).enabled = True
    viewer_grid(viewer).shape = (3, 2)
    viewer.reset_view()
    process_events(1.0)
    viewer.screenshot(path, canvas_only=False)
    print(f"saved {path}")
    viewer.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "blur-map.png")
