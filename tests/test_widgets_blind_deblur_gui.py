"""GUI tests of the Deblur (blind) widget in a real napari window: one press, two layers.

Run under an X server::

    xvfb-run -a -s "-screen 0 1280x1024x24" pytest tests/test_widgets_blind_deblur_gui.py -q
"""

from __future__ import annotations

import numpy as np
import pytest

# Importing the main GUI test module first skips this one too without a display, pytest-qt or napari.
from test_widgets_gui import JOB_TIMEOUT_MS, PLUGIN, _names, _run_and_wait, _shown

pytestmark = pytest.mark.gui

WIDGET = "Deblur (blind)"


@pytest.fixture(scope="session")
def shaken_photo():
    """A 200x200 colour crop of astronaut (train split) blurred by a known camera shake."""
    from skimage import data

    from napari_deblur import engine

    psf = engine.random_motion_psf(15, rng=1)
    sharp = data.astronaut()[100:300, 150:350].astype(np.float32) / 255.0
    blurred = np.stack([engine.blur(sharp[..., c], psf) for c in range(3)], axis=-1)
    return blurred, sharp, psf


def _dock(viewer):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    return widget


def _psnr(a, b):
    core = (slice(16, -16), slice(16, -16))
    return 10 * np.log10(1.0 / np.mean((np.asarray(a)[core] - np.asarray(b)[core]) ** 2))


def test_one_press_adds_a_sharper_colour_image_and_its_kernel(make_napari_viewer, qtbot, shaken_photo):
    from napari_deblur.engine import kernel_similarity
    from napari_deblur.layer_roles import is_psf_metadata

    blurred, sharp, true_psf = shaken_photo
    viewer = make_napari_viewer()
    source = viewer.add_image(blurred, name="photo", rgb=True, scale=(0.5, 0.5), translate=(3, 4))
    before = np.array(source.data, copy=True)
    widget = _dock(viewer)
    widget.image.value = source
    assert widget.automatic_size.value and not _shown(widget.size)
    assert not _shown(widget.runner.save_button)

    _run_and_wait(qtbot, widget)

    deblurred, psf = widget.runner.last_outputs
    assert _names(viewer)[-2:] == ["photo deblurred (blind)", "photo PSF (blind)"]
    assert deblurred.data.shape == blurred.shape and deblurred.rgb
    np.testing.assert_allclose(deblurred.scale, source.scale)
    np.testing.assert_allclose(deblurred.translate, source.translate)
    assert _psnr(deblurred.data, sharp) > _psnr(blurred, sharp) + 2.0
    assert psf.data.ndim == 2 and psf.data.shape[0] % 2 == 1 and psf.data.shape[0] <= 31
    assert float(psf.data.sum()) == pytest.approx(1.0, abs=1e-4)
    assert is_psf_metadata(psf.metadata) and psf.metadata["kernel_size"] == "automatic"
    assert kernel_similarity(psf.data, true_psf) > 0.6
    np.testing.assert_array_equal(source.data, before)


def test_a_set_size_bounds_the_kernel_and_the_lazy_scope_is_refused(make_napari_viewer, qtbot, shaken_photo):
    from napari_deblur.layer_jobs import SCOPE_CURRENT_SLICE, SCOPE_LAZY, SCOPE_WHOLE_STACK

    blurred = shaken_photo[0][..., 1]
    viewer = make_napari_viewer()
    source = viewer.add_image(np.stack([blurred, blurred[::-1]]), name="frames")
    widget = _dock(viewer)
    widget.image.value = source
    widget.automatic_size.value = False
    assert _shown(widget.size)
    widget.size.value = 21

    widget.runner.scope.value = SCOPE_CURRENT_SLICE  # frame 0
    _run_and_wait(qtbot, widget)
    deblurred, psf = widget.runner.last_outputs
    assert deblurred.data.shape == blurred.shape
    assert psf.data.shape == (21, 21)
    assert psf.metadata["kernel_size"] == 21

    widget.runner.scope.value = SCOPE_WHOLE_STACK  # one kernel per frame
    _run_and_wait(qtbot, widget)
    deblurred, psf = widget.runner.last_outputs
    assert deblurred.data.shape == source.data.shape
    assert psf.data.shape == (2, 21, 21)
    assert len(psf.metadata["blur_level_px"]) == 2

    if SCOPE_LAZY in list(widget.runner.scope.choices):
        widget.runner.scope.value = SCOPE_LAZY
        with pytest.raises(ValueError, match="lazily"):
            widget.run()


def test_a_too_small_image_is_reported_and_adds_no_layer(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    source = viewer.add_image(np.random.default_rng(0).random((8, 8), dtype=np.float32), name="tiny")
    widget = _dock(viewer)
    widget.image.value = source
    widget.run()
    qtbot.waitUntil(lambda: not widget.runner.is_running, timeout=JOB_TIMEOUT_MS)
    assert _names(viewer) == ["tiny"]
