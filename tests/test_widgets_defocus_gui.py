"""GUI tests of the Defocus deblur widget in a real napari window (the shared runner).

Run under an X server::

    xvfb-run -a -s "-screen 0 1280x1024x24" pytest tests/test_widgets_defocus_gui.py -q
"""

from __future__ import annotations

import json

import numpy as np
import pytest

# Importing the main GUI test module first skips this one too without a display, pytest-qt or napari.
from test_widgets_gui import PLUGIN, _names, _run_and_wait, _shown

pytestmark = pytest.mark.gui

WIDGET = "Defocus deblur"


@pytest.fixture(scope="module")
def half_focused():
    """A 160x160 grey crop of astronaut (train split): left half 1 px Gaussian blur, right half 3 px."""
    from skimage import data

    from napari_deblur import engine

    sharp = data.astronaut()[60:220, 140:300].mean(axis=-1).astype(np.float32) / 255.0
    levels = np.where(np.arange(160)[None, :] < 80, 1.0, 3.0) * np.ones((160, 1))
    levels = levels.astype(np.float32)
    left = engine.blur(sharp, engine.gaussian_psf(1.0))
    right = engine.blur(sharp, engine.gaussian_psf(3.0))
    noise = np.random.default_rng(2).normal(0, 0.005, sharp.shape).astype(np.float32)
    return (np.where(levels < 2, left, right) + noise).astype(np.float32), levels, sharp


def _dock(viewer):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    return widget


def test_automatic_map_is_the_default_and_the_output_keeps_the_geometry(
    make_napari_viewer, qtbot, half_focused
):
    from napari_deblur import engine

    blurred, _levels, sharp = half_focused
    viewer = make_napari_viewer()
    source = viewer.add_image(blurred, name="photo", scale=(0.5, 0.5), translate=(2, 3))
    before = np.array(source.data, copy=True)
    widget = _dock(viewer)
    widget.image.value = source
    assert widget.blur_source.value == "Automatic (learned map)"
    assert not _shown(widget.blur_level) and not _shown(widget.blur_map)
    widget.network_passes.value = 1
    _run_and_wait(qtbot, widget)
    (output,) = widget.runner.last_outputs
    assert _names(viewer) == ["photo", "photo deblurred (defocus)"]
    np.testing.assert_allclose(output.scale, source.scale)
    np.testing.assert_allclose(output.translate, source.translate)
    assert (
        output.metadata["blur_levels"] == "estimate_blur_map" and output.metadata["psf_model"] == "gaussian"
    )
    expected = engine.deblur_defocus(blurred, engine.estimate_blur_map(blurred), ensemble=1)
    np.testing.assert_allclose(np.asarray(output.data), expected, atol=1e-5)
    np.testing.assert_array_equal(source.data, before)

    def error(image):
        return float(np.mean((np.clip(image, 0, 1)[16:-16, 16:-16] - sharp[16:-16, 16:-16]) ** 2))

    assert error(np.asarray(output.data)) < 0.8 * error(blurred)


def test_a_blur_map_layer_drives_it_and_the_image_as_its_own_map_blocks_with_a_reason(
    make_napari_viewer, qtbot, half_focused
):
    from napari_deblur import engine

    blurred, levels, _sharp = half_focused
    viewer = make_napari_viewer()
    source = viewer.add_image(blurred, name="photo")
    widget = _dock(viewer)
    widget.image.value = source
    widget.blur_source.value = "Blur-map layer"
    assert _shown(widget.blur_map) and not _shown(widget.blur_level)
    assert not widget.runner.run_button.enabled
    assert "blur map is the image itself" in widget.runner.blocked_reason  # the only layer
    viewer.add_image(levels, name="focus map")
    widget.reset_choices()
    widget.blur_map.value = viewer.layers["focus map"]
    widget.psf_model.value = "disk"
    widget.network_passes.value = 1
    assert widget.runner.run_button.enabled
    _run_and_wait(qtbot, widget)
    (output,) = widget.runner.last_outputs
    assert output.metadata["blur_map_layer"] == "focus map" and output.metadata["psf_model"] == "disk"
    np.testing.assert_allclose(
        np.asarray(output.data),
        engine.deblur_defocus(blurred, levels, psf_model="disk", ensemble=1),
        atol=1e-5,
    )


def test_whole_stack_and_remembered_settings(
    make_napari_viewer, qtbot, half_focused, _isolated_widget_settings
):
    from napari_deblur import engine
    from napari_deblur._qt.defocus_widget import DefocusDeblurWidget
    from napari_deblur.layer_jobs import SCOPE_WHOLE_STACK

    blurred = half_focused[0][:96, :96]
    stack = np.stack([blurred, blurred[::-1]])
    viewer = make_napari_viewer()
    source = viewer.add_image(stack, name="frames")
    widget = _dock(viewer)
    widget.image.value = source
    widget.blur_source.value = "Constant"
    widget.blur_level.value = 1.2
    widget.network_passes.value = 1
    widget.runner.scope.value = SCOPE_WHOLE_STACK
    _run_and_wait(qtbot, widget)
    (output,) = widget.runner.last_outputs
    assert output.data.shape == stack.shape
    np.testing.assert_allclose(
        np.asarray(output.data), engine.deblur_defocus(stack, 1.2, ensemble=1), atol=1e-5
    )

    saved = json.loads((_isolated_widget_settings / "widgets.json").read_text())["defocus_deblur"]
    assert saved["blur_source"] == "Constant" and saved["blur_level"] == pytest.approx(1.2)
    again = DefocusDeblurWidget(viewer)
    try:
        assert again.blur_source.value == "Constant" and again.blur_level.value == pytest.approx(1.2)
        assert again.network_passes.value == 1
    finally:
        again.close()
        again.native.deleteLater()
