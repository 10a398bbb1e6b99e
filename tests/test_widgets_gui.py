"""GUI tests of the job runner and the Wiener widget in a real napari window.

Run under an X server, e.g.::

    xvfb-run -a -s "-screen 0 1280x1024x24" pytest tests/test_widgets_gui.py -q
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    pytest.skip(
        "GUI tests need a display: run them under xvfb-run (see module docstring)",
        allow_module_level=True,
    )
pytest.importorskip("pytestqt")
pytest.importorskip("napari")

from napari_deblur._qt.job_runner import viewer_grid  # noqa: E402

pytestmark = pytest.mark.gui

PLUGIN = "napari-deblur"
WIDGET = "Wiener-net sharpener"
JOB_TIMEOUT_MS = 30_000


def _dock(viewer):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    return widget


def _run_and_wait(qtbot, widget):
    widget.run()
    assert widget.runner.is_running
    qtbot.waitUntil(lambda: not widget.runner.is_running, timeout=JOB_TIMEOUT_MS)


def _shown(widget):
    """Whether a sub-widget is set to show (``visible`` is False in a hidden window)."""
    return not widget.native.isHidden()


def _names(viewer):
    return [layer.name for layer in viewer.layers]


def _gradient_energy(image):
    image = np.asarray(image, dtype=np.float64)
    core = image[16:-16, 16:-16]
    gy, gx = np.gradient(core)
    return float(np.mean(gx**2 + gy**2))


@pytest.fixture
def notifications():
    """Error notifications dispatched during the test."""
    from napari.utils.notifications import NotificationSeverity, notification_manager

    seen = []

    def _collect(event):
        notification = event.value if hasattr(event, "value") else event
        if notification.severity == NotificationSeverity.ERROR:
            seen.append(str(notification.message))

    notification_manager.notification_ready.connect(_collect)
    yield seen
    notification_manager.notification_ready.disconnect(_collect)


def test_sharpens_camera_shake_sample_above_input_with_its_geometry(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, "camera_shake")
    source = viewer.layers["Camera shake (blurred)"]
    source.scale = (0.5, 0.25)
    source.translate = (10.0, -3.0)
    before = np.array(source.data, copy=True)
    widget = _dock(viewer)
    assert widget.image.value.name == source.name
    assert widget.psf_layer.value.name == "Camera shake PSF"  # PSF-marked layer first
    assert widget.runner.run_button.enabled

    widget.method.value = "Wiener (classical)"
    assert _shown(widget.snr_db)
    assert not _shown(widget.network_passes)  # only the learned method has a network
    widget.snr_db.value = 30.0
    _run_and_wait(qtbot, widget)

    name = f"{source.name} Wiener"
    assert name in _names(viewer)
    assert _names(viewer).index(name) == _names(viewer).index(source.name) + 1
    output = viewer.layers[name]
    assert [layer.name for layer in widget.runner.last_outputs] == [name]
    np.testing.assert_array_equal(source.data, before)
    assert output.data.shape == before.shape
    np.testing.assert_allclose(output.scale, source.scale)
    np.testing.assert_allclose(output.translate, source.translate)
    np.testing.assert_allclose(output.contrast_limits, source.contrast_limits)
    assert not np.allclose(output.data, before)
    assert _gradient_energy(output.data) > 1.5 * _gradient_energy(before)
    assert output.metadata["snr_db"] == 30.0
    assert widget.runner.progress.value == widget.runner.progress.max

    # A second run never reuses (and so never overwrites) the first output's name.
    first = np.array(output.data, copy=True)
    widget.snr_db.value = 15.0
    _run_and_wait(qtbot, widget)
    assert f"{name} [1]" in _names(viewer)
    np.testing.assert_array_equal(viewer.layers[name].data, first)

    screenshot = viewer.screenshot(canvas_only=True)
    assert screenshot.ndim == 3
    assert np.asarray(screenshot[..., :3], dtype=float).std() > 0


def test_wiener_net_is_the_default_and_beats_classical_wiener_on_the_sample(make_napari_viewer, qtbot):
    from skimage.metrics import peak_signal_noise_ratio

    from napari_deblur._qt.wiener_widget import DEFAULT_NETWORK_PASSES, NETWORK_PASSES
    from napari_deblur.demo import DEMO_SNR_DB
    from napari_deblur.engine import wiener_deconvolve, wiener_net_deconvolve
    from napari_deblur.engine.methods import wiener_net
    from napari_deblur.sample_data import camera_shake_arrays

    assert NETWORK_PASSES == wiener_net.ENSEMBLE_SIZES
    assert DEFAULT_NETWORK_PASSES == wiener_net.DEFAULT_ENSEMBLE

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "camera_shake")
    source = viewer.layers["Camera shake (blurred)"]
    widget = _dock(viewer)
    assert widget.method.value == "Wiener-net (learned)"
    assert not _shown(widget.snr_db)  # the learned method has no SNR to set
    assert _shown(widget.network_passes) and widget.network_passes.value == DEFAULT_NETWORK_PASSES
    _run_and_wait(qtbot, widget)

    (output,) = widget.runner.last_outputs
    assert output.name == f"{source.name} Wiener-net"
    assert output.metadata["napari_deblur_method"] == "wiener-net"
    assert "snr_db" not in output.metadata
    assert output.metadata["network_passes"] == DEFAULT_NETWORK_PASSES
    blurred, psf, sharp = camera_shake_arrays()
    np.testing.assert_array_equal(source.data, blurred)
    np.testing.assert_allclose(output.data, wiener_net_deconvolve(blurred, psf), atol=1e-5)

    def psnr(image):
        return peak_signal_noise_ratio(sharp, np.clip(image, 0, 1), data_range=1.0)

    classical = wiener_deconvolve(blurred, psf, snr_db=DEMO_SNR_DB)
    # Better than classical Wiener at the SNR hand-picked for this sample, without any tuning.
    assert psnr(output.data) > psnr(classical) > psnr(blurred) + 2.0


def test_run_is_disabled_with_a_reason_while_inputs_are_invalid(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = _dock(viewer)
    assert not widget.runner.run_button.enabled
    assert "No image layer" in widget.runner.status.value
    with pytest.raises(ValueError, match="No image layer"):
        widget.run()

    viewer.add_image(np.zeros((40, 40), np.float32), name="photo")
    # The only image cannot be its own PSF.
    assert not widget.runner.run_button.enabled
    assert widget.invalid_reason() is not None

    widget.psf_source.value = "Gaussian"
    assert widget.runner.run_button.enabled
    assert _shown(widget.gaussian_sigma) and not _shown(widget.psf_layer)
    assert not _shown(widget.disk_radius) and not _shown(widget.motion_angle)
    widget.psf_source.value = "Linear motion"
    assert _shown(widget.motion_length) and _shown(widget.motion_angle)
    assert not _shown(widget.gaussian_sigma)


def test_runner_rejects_non_image_layers(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = _dock(viewer)
    labels = viewer.add_labels(np.zeros((32, 32), np.int32), name="labels")
    with pytest.raises(TypeError, match="Image layer"):
        widget.runner.selection(labels)
    points = viewer.add_points(np.zeros((1, 2)), name="points")
    with pytest.raises(TypeError, match="Image layer"):
        widget.runner.selection(points)
    with pytest.raises(ValueError, match="No image layer"):
        widget.runner.selection(None)


def test_cancel_stops_the_job_and_adds_no_layer(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    viewer.add_image(rng.random((80, 96, 96), dtype=np.float32), name="stack")
    widget = _dock(viewer)
    widget.psf_source.value = "Gaussian"
    widget.runner.scope.value = "Whole stack"
    cancelled = []
    widget.runner.job_cancelled.connect(lambda: cancelled.append(True))
    widget.runner.job_progress.connect(lambda *_: widget.runner.cancel())

    _run_and_wait(qtbot, widget)

    assert cancelled == [True]
    assert _names(viewer) == ["stack"]
    assert widget.runner.last_outputs == []
    assert widget.runner.progress.value == 0
    assert widget.runner.run_button.enabled
    assert not widget.runner.cancel_button.enabled


def test_nan_image_shows_an_error_and_adds_no_layer(make_napari_viewer, qtbot, notifications):
    viewer = make_napari_viewer()
    image = np.ones((48, 48), np.float32)
    image[10, 10] = np.nan
    viewer.add_image(image, name="broken")
    widget = _dock(viewer)
    widget.psf_source.value = "Gaussian"
    failures = []
    widget.runner.job_failed.connect(failures.append)

    _run_and_wait(qtbot, widget)

    assert _names(viewer) == ["broken"]
    assert len(failures) == 1
    assert any("nan" in message.lower() for message in notifications)
    assert isinstance(widget.runner.last_error, ValueError)
    assert widget.runner.run_button.enabled


def test_runtime_errors_reach_the_user_as_engine_errors(make_napari_viewer, qtbot, notifications):
    from napari_deblur.engine import EngineError, JobProgress
    from napari_deblur.layer_jobs import OutputLayerSpec

    viewer = make_napari_viewer()
    layer = viewer.add_image(np.ones((32, 32), np.float32), name="image")
    widget = _dock(viewer)

    def make_steps(data, channel_axis):
        yield JobProgress(0.5, "half way")
        raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")

    def make_outputs(result):
        return [OutputLayerSpec(result, "never")]

    widget.runner.start(layer, make_steps, make_outputs)
    qtbot.waitUntil(lambda: not widget.runner.is_running, timeout=JOB_TIMEOUT_MS)

    assert isinstance(widget.runner.last_error, EngineError)
    assert any("out of memory" in message for message in notifications)
    assert _names(viewer) == ["image"]


def test_zstack_current_slice_and_whole_stack_with_per_plane_psf(make_napari_viewer, qtbot):
    from napari_deblur.engine import wiener_deconvolve

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "defocused_zstack")
    stack = viewer.layers["Out-of-focus z-stack"]
    psf_stack = viewer.layers["Out-of-focus z-stack PSF"]
    stack.translate = (4.0, 3.0, 2.0)
    before = np.array(stack.data, copy=True)
    widget = _dock(viewer)
    viewer.layers.selection.active = stack
    assert widget.image.value.name == stack.name
    assert widget.psf_layer.value.name == psf_stack.name
    assert _shown(widget.runner.scope)
    # The sample marks its PSF stack as one kernel per plane: the box is ticked by itself.
    assert _shown(widget.kernel_per_plane) and widget.kernel_per_plane.value

    plane = 5
    viewer.dims.set_point(0, stack.translate[0] + plane * stack.scale[0])
    widget.runner.scope.value = "Current slice"
    widget.method.value = "Wiener (classical)"
    widget.snr_db.value = 25.0
    _run_and_wait(qtbot, widget)

    (output,) = widget.runner.last_outputs
    assert output.name == f"{stack.name} Wiener (slice z={plane})"
    assert output.data.shape == before.shape[1:]
    np.testing.assert_allclose(output.scale, stack.scale[1:])
    np.testing.assert_allclose(output.translate, stack.translate[1:])
    expected = wiener_deconvolve(before[plane], np.asarray(psf_stack.data)[plane], snr_db=25.0)
    np.testing.assert_allclose(output.data, expected, rtol=1e-4, atol=1e-5)

    widget.runner.scope.value = "Whole stack"
    _run_and_wait(qtbot, widget)
    (whole,) = widget.runner.last_outputs
    assert whole.data.shape == before.shape
    np.testing.assert_allclose(whole.scale, stack.scale)
    np.testing.assert_allclose(whole.translate, stack.translate)
    np.testing.assert_allclose(whole.data[plane], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(stack.data, before)


def test_a_3d_psf_layer_is_sent_to_3d_deconvolution_unless_it_is_one_kernel_per_plane(
    make_napari_viewer, qtbot
):
    from napari_deblur.engine import gaussian_psf, wiener_deconvolve
    from napari_deblur.layer_roles import psf_metadata

    rng = np.random.default_rng(5)
    viewer = make_napari_viewer()
    stack = viewer.add_image(rng.uniform(0, 1, (4, 48, 48)).astype(np.float32), name="stack")
    kernels = np.stack([gaussian_psf(1.0 + 0.2 * z, size=9) for z in range(4)])
    viewer.add_image(kernels, name="psf 3d", metadata=psf_metadata(source="test"))
    viewer.layers.selection.active = stack
    widget = _dock(viewer)
    widget.psf_layer.value = viewer.layers["psf 3d"]
    assert _shown(widget.kernel_per_plane) and not widget.kernel_per_plane.value
    assert not widget.runner.run_button.enabled
    assert "Deconvolve (microscopy)" in widget.runner.blocked_reason

    widget.kernel_per_plane.value = True
    assert widget.runner.run_button.enabled
    widget.runner.scope.value = "Whole stack"
    widget.method.value = "Wiener (classical)"
    widget.snr_db.value = 25.0
    _run_and_wait(qtbot, widget)
    (output,) = widget.runner.last_outputs
    expected = wiener_deconvolve(np.asarray(stack.data), kernels, snr_db=25.0, psf_per_plane=True)
    np.testing.assert_allclose(output.data, expected, rtol=1e-4, atol=1e-5)

    widget.psf_source.value = "Gaussian"
    assert not _shown(widget.kernel_per_plane)


def test_side_by_side_turns_grid_mode_on_and_off(make_napari_viewer):
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((40, 40), np.float32), name="photo")
    layer.visible = False
    widget = _dock(viewer)
    widget.runner.side_by_side.value = True
    assert viewer_grid(viewer).enabled
    assert layer.visible
    widget.runner.side_by_side.value = False
    assert not viewer_grid(viewer).enabled
    viewer_grid(viewer).enabled = True  # changed elsewhere: the checkbox follows
    assert widget.runner.side_by_side.value


def test_rgb_image_keeps_its_channels(make_napari_viewer, qtbot):
    from scipy.ndimage import gaussian_filter

    viewer = make_napari_viewer()
    rng = np.random.default_rng(1)
    sharp = (rng.random((64, 64, 3)) > 0.7).astype(np.float64) * 255
    blurred = np.stack([gaussian_filter(sharp[..., c], 1.5) for c in range(3)], axis=-1)
    rgb = viewer.add_image(blurred.astype(np.uint8), name="rgb", rgb=True)
    before = np.array(rgb.data, copy=True)
    widget = _dock(viewer)
    widget.psf_source.value = "Gaussian"
    widget.gaussian_sigma.value = 1.5
    assert not _shown(widget.runner.scope)  # a single RGB picture has no slices

    widget.run()
    (output,) = widget.runner.wait(timeout=JOB_TIMEOUT_MS / 1000)  # the script-friendly wait
    assert output.rgb
    assert output.data.shape == before.shape
    np.testing.assert_array_equal(rgb.data, before)
    for channel in range(3):
        assert _gradient_energy(output.data[..., channel]) > _gradient_energy(before[..., channel])


def test_settings_are_remembered_in_the_test_config_folder(make_napari_viewer, _isolated_widget_settings):
    from napari_deblur._qt.wiener_widget import WienerWidget

    viewer = make_napari_viewer()
    widget = _dock(viewer)
    widget.snr_db.value = 12.5
    widget.psf_source.value = "Disk"
    widget.disk_radius.value = 4.5
    widget.network_passes.value = 8

    saved = json.loads((_isolated_widget_settings / "widgets.json").read_text())
    assert saved["wiener"]["snr_db"] == 12.5
    assert saved["wiener"]["network_passes"] == 8
    assert saved["wiener"]["psf_source"] == "Disk"

    again = WienerWidget(viewer)
    try:
        assert again.snr_db.value == 12.5
        assert again.psf_source.value == "Disk"
        assert again.disk_radius.value == 4.5
        assert again.network_passes.value == 8
        assert _shown(again.disk_radius)
    finally:
        again.close()
        again.native.deleteLater()


# --- GWIS sharpener (same runner) ----------------------------------------------------------

GWIS_WIDGET = "GWIS sharpener"


def test_gwis_sharpens_the_defocus_ramp_with_its_true_map(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, "defocus_ramp")
    source = viewer.layers["Defocus ramp (blurred)"]
    blur_map = viewer.layers["Defocus ramp: true blur map (px)"]
    source.scale = (0.5, 0.5)
    before = np.array(source.data, copy=True)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, GWIS_WIDGET)
    widget.reset_choices()
    assert blur_map not in widget.image.choices  # blur maps are not offered as images
    widget.image.value = source
    widget.blur_source.value = "Blur-map layer"
    widget.blur_map.value = blur_map
    _run_and_wait(qtbot, widget)
    (output,) = widget.runner.last_outputs
    assert output.name == "Defocus ramp (blurred) GWIS"
    assert tuple(output.scale) == (0.5, 0.5)
    assert np.array_equal(source.data, before)
    result = np.asarray(output.data)
    # The bottom (blur 4-6 px) gets sharper; values stay within the input's range (no overshoot).
    bottom = slice(-120, -20)
    assert _gradient_energy(result[bottom]) > 1.1 * _gradient_energy(before[bottom])
    assert result.min() >= before.min() - 1e-5 and result.max() <= before.max() + 1e-5


def test_gwis_rejects_a_map_of_the_wrong_shape(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    image = viewer.add_image(np.random.default_rng(0).random((64, 64)).astype(np.float32), name="img")
    viewer.add_image(np.ones((32, 32), np.float32), name="small map")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, GWIS_WIDGET)
    widget.reset_choices()
    widget.image.value = image
    widget.blur_source.value = "Blur-map layer"
    widget.blur_map.value = viewer.layers["small map"]
    with pytest.raises(ValueError, match="shape"):
        widget.run()
    assert _names(viewer) == ["img", "small map"]


def test_gwis_automatic_source_estimates_its_own_map(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, "defocus_ramp")
    source = viewer.layers["Defocus ramp (blurred)"]
    before = np.array(source.data, copy=True)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, GWIS_WIDGET)
    widget.reset_choices()
    widget.image.value = source
    widget.blur_source.value = "Automatic (learned map)"
    assert not widget.blur_level.visible and not widget.blur_map.visible
    _run_and_wait(qtbot, widget)
    (output,) = widget.runner.last_outputs
    assert output.name == "Defocus ramp (blurred) GWIS"
    assert output.metadata["blur_levels"] == "estimate_blur_map"
    assert np.array_equal(source.data, before)
    bottom = slice(-120, -20)
    assert _gradient_energy(np.asarray(output.data)[bottom]) > 1.1 * _gradient_energy(before[bottom])


# --- Blur map (same runner; two output layers) -----------------------------------------------

BLUR_MAP_WIDGET = "Blur map"


def test_blur_map_adds_a_marked_map_and_classes_that_gwis_accepts(make_napari_viewer, qtbot):
    from napari_deblur.engine import estimate_blur_map
    from napari_deblur.layer_roles import BLUR_MAP_ROLE, ROLE_KEY

    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, "defocus_ramp")
    source = viewer.layers["Defocus ramp (blurred)"]
    source.scale = (0.5, 0.5)
    source.translate = (3.0, -2.0)
    before = np.array(source.data, copy=True)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, BLUR_MAP_WIDGET)
    widget.reset_choices()
    assert viewer.layers["Defocus ramp: true blur map (px)"] not in widget.image.choices
    widget.image.value = source
    assert "0.5" in widget.legend.value and "severe" in widget.legend.value
    _run_and_wait(qtbot, widget)

    blur_map, classes = widget.runner.last_outputs
    assert blur_map.name == "Defocus ramp (blurred) blur map (px)"
    assert classes.name == "Defocus ramp (blurred) blur classes"
    for layer in (blur_map, classes):
        np.testing.assert_allclose(layer.scale, (0.5, 0.5))
        np.testing.assert_allclose(layer.translate, (3.0, -2.0))
    assert np.array_equal(source.data, before)
    np.testing.assert_allclose(blur_map.data, estimate_blur_map(before), atol=1e-5)
    assert blur_map.metadata[ROLE_KEY] == BLUR_MAP_ROLE and blur_map.metadata["units"] == "px"
    assert blur_map.colormap.name == "inferno"
    assert blur_map.contrast_limits[0] == 0.0
    assert blur_map.contrast_limits[1] == pytest.approx(float(np.max(blur_map.data)), rel=1e-3)
    assert classes.data.dtype == np.uint8 and set(np.unique(classes.data)) <= {1, 2, 3, 4, 5}
    assert classes.metadata["bin_edges_px"][:5] == [0.0, 0.5, 1.0, 2.0, 4.0]
    assert list(classes.features["class"]) == ["none", "sharp", "slight", "moderate", "strong", "severe"]
    # The defocus grows down the image: the map says so.
    rows = np.asarray(blur_map.data)
    assert np.median(rows[-100:-20]) > np.median(rows[20:100]) + 1.0

    # The GWIS sharpener offers the new map as a blur source (marked maps first).
    _, gwis = viewer.window.add_plugin_dock_widget(PLUGIN, GWIS_WIDGET)
    gwis.reset_choices()
    assert blur_map in gwis.blur_map.choices and blur_map not in gwis.image.choices
    gwis.image.value = source
    gwis.blur_source.value = "Blur-map layer"
    gwis.blur_map.value = blur_map
    _run_and_wait(qtbot, gwis)
    (sharpened,) = gwis.runner.last_outputs
    assert sharpened.data.shape == before.shape


def test_blur_map_of_a_stack_slice_or_whole_and_of_rgb(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    stack = viewer.add_image(rng.random((3, 48, 64)).astype(np.float32), name="stack")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, BLUR_MAP_WIDGET)
    widget.reset_choices()
    widget.image.value = stack
    widget.add_classes.value = False
    viewer.dims.set_point(0, 2)
    widget.runner.scope.value = "Current slice"
    _run_and_wait(qtbot, widget)
    (plane_map,) = widget.runner.last_outputs
    assert plane_map.name == "stack blur map (px) (slice z=2)"
    assert plane_map.data.shape == (48, 64)

    widget.runner.scope.value = "Whole stack"
    widget.add_classes.value = True
    _run_and_wait(qtbot, widget)
    whole_map, whole_classes = widget.runner.last_outputs
    assert whole_map.data.shape == whole_classes.data.shape == (3, 48, 64)
    np.testing.assert_allclose(whole_map.data[2], plane_map.data, atol=1e-5)

    rgb = viewer.add_image(rng.random((40, 50, 3)).astype(np.float32), name="colour", rgb=True)
    widget.reset_choices()
    widget.image.value = rgb
    _run_and_wait(qtbot, widget)
    rgb_map, _ = widget.runner.last_outputs
    assert not rgb_map.rgb and rgb_map.data.shape == (40, 50)


def test_blur_map_widget_shows_the_engine_class_edges():
    from napari_deblur._qt import blur_map_widget
    from napari_deblur.engine import BLUR_CLASS_EDGES, BLUR_CLASS_NAMES

    assert blur_map_widget.CLASS_EDGES_PX == BLUR_CLASS_EDGES
    assert blur_map_widget.CLASS_NAMES == BLUR_CLASS_NAMES
    assert blur_map_widget.class_ranges()[0] == "< 0.5 px"
    assert blur_map_widget.class_ranges()[-1] == ">= 4 px"


@pytest.mark.gui
def test_demo_window_fits_a_laptop_screen_with_tabbed_widgets_and_results_side_by_side(qtbot):
    from napari_deblur import demo
    from napari_deblur._qt.job_runner import viewer_grid
    from napari_deblur.layer_roles import is_psf_metadata

    viewer, widgets = demo.open_demo_viewer("camera_shake", show=True)
    try:
        window = viewer.window._qt_window
        assert window.width() <= 1366 and window.height() <= 768
        from qtpy.QtWidgets import QDockWidget

        docks = [dock for dock in window.findChildren(QDockWidget) if dock.windowTitle() in demo.DEMO_WIDGETS]
        assert len(docks) == len(demo.DEMO_WIDGETS)
        # one tab group, not a stack of docks (Qt tabifies once the window has laid them out)
        qtbot.waitUntil(
            lambda: all(len(window.tabifiedDockWidgets(d)) == len(docks) - 1 for d in docks), timeout=5000
        )
        demo.wait_for_demo_jobs(widgets)
        qtbot.waitUntil(lambda: viewer_grid(viewer).enabled, timeout=5000)
        names = [layer.name for layer in viewer.layers]
        assert "Camera shake (blurred) Wiener" in names and "Camera shake (blurred) Wiener-net" in names
        # The canvas keeps its room: the tabbed docks take the widgets' width, not the tabs' titles'
        # or a long status message's.
        qtbot.wait(500)
        assert viewer.window._qt_viewer.canvas.native.width() > 0.4 * window.width()
        assert all(not layer.visible for layer in viewer.layers if is_psf_metadata(layer.metadata))
    finally:
        viewer.close()
