"""GUI tests of lazy (dask) outputs and "Save whole stack to file…" in the shared job runner.

Run under an X server, e.g.::

    xvfb-run -a -s "-screen 0 1280x1024x24" pytest tests/test_widgets_lazy_gui.py -q
"""

from __future__ import annotations

import time

import numpy as np
import pytest

da = pytest.importorskip("dask.array")

# Importing the main GUI test module first skips this one too without a display, pytest-qt or napari.
from test_widgets_gui import (
    BLUR_MAP_WIDGET,
    GWIS_WIDGET,
    JOB_TIMEOUT_MS,
    PLUGIN,
    _names,
    _run_and_wait,
    notifications,  # noqa: F401 - fixture
)

pytestmark = pytest.mark.gui

LAZY_SCOPE = "Whole stack, lazily (computed as you scroll)"
STACK_SHAPE = (3, 64, 64)
BLUR_LEVEL = 1.5


def _stack(seed=0):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    sharp = (rng.random(STACK_SHAPE) > 0.8).astype(np.float32)
    return np.stack([gaussian_filter(plane, 1.5) for plane in sharp]).astype(np.float32)


def _recording_dask(array, planes_read, seconds_per_plane=0.0):
    """``array`` as a dask array of one plane per chunk that records (and may slow) each read."""

    def read(block, block_info=None):
        planes_read.append(block_info[0]["chunk-location"][0])
        time.sleep(seconds_per_plane)
        return block

    chunks = (1, *array.shape[1:])
    meta = np.empty((0,) * array.ndim, dtype=array.dtype)
    return da.from_array(array, chunks=chunks).map_blocks(read, dtype=array.dtype, meta=meta)


def _dock(viewer, widget_name, image):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, widget_name)
    widget.reset_choices()
    widget.image.value = image
    return widget


def _add_dask_stack(viewer, array, planes_read, name="stack"):
    """Add a dask stack layer; forget the reads napari made to set its contrast."""
    layer = viewer.add_image(_recording_dask(array, planes_read), name=name)
    layer.scale = (2.0, 0.5, 0.5)
    layer.translate = (1.0, 3.0, -2.0)
    planes_read.clear()
    return layer


def test_the_lazy_scope_is_offered_and_chosen_for_dask_stacks_only(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    in_memory = viewer.add_image(_stack(), name="numpy stack")
    planes_read = []
    lazy_stack = _add_dask_stack(viewer, _stack(), planes_read, name="dask stack")
    widget = _dock(viewer, GWIS_WIDGET, in_memory)
    scope = widget.runner.scope
    assert LAZY_SCOPE not in scope.choices

    widget.image.value = lazy_stack
    assert LAZY_SCOPE in scope.choices and scope.value == LAZY_SCOPE
    scope.value = "Current slice"
    widget.reset_choices()  # the same input again: the user's choice stays
    assert scope.value == "Current slice"

    # The current slice of a dask stack is still computed in memory.
    viewer.dims.set_point(0, lazy_stack.translate[0] + 2 * lazy_stack.scale[0])
    widget.blur_level.value = BLUR_LEVEL
    _run_and_wait(qtbot, widget)
    (plane_output,) = widget.runner.last_outputs
    assert plane_output.name == "dask stack GWIS (slice z=2)"
    assert isinstance(plane_output.data, np.ndarray) and plane_output.data.shape == STACK_SHAPE[1:]
    assert set(planes_read) == {2}

    widget.image.value = in_memory
    assert LAZY_SCOPE not in scope.choices and scope.value == "Current slice"
    widget.image.value = lazy_stack  # chosen again: lazy by default, falling back to whole stack
    assert scope.value == LAZY_SCOPE
    widget.image.value = in_memory
    assert LAZY_SCOPE not in scope.choices and scope.value == "Whole stack"


def test_gwis_lazily_computes_only_the_plane_on_screen(make_napari_viewer, qtbot):
    from napari_deblur.engine import sharpen_gwis

    viewer = make_napari_viewer()
    stack = _stack()
    planes_read = []
    source = _add_dask_stack(viewer, stack, planes_read)
    widget = _dock(viewer, GWIS_WIDGET, source)
    widget.blur_level.value = BLUR_LEVEL
    assert widget.runner.scope.value == LAZY_SCOPE
    _run_and_wait(qtbot, widget)

    (output,) = widget.runner.last_outputs
    assert output.name == "stack GWIS"
    assert isinstance(output.data, da.Array) and output.data.shape == STACK_SHAPE
    assert len(set(planes_read)) <= 1  # napari computed the plane on screen, nothing more
    np.testing.assert_allclose(output.scale, source.scale)
    np.testing.assert_allclose(output.translate, source.translate)
    np.testing.assert_allclose(output.contrast_limits, source.contrast_limits)
    assert output.metadata == {
        "napari_deblur_method": "gwis",
        "source_layer": "stack",
        "blur_level_px": BLUR_LEVEL,
    }
    expected = sharpen_gwis(stack[0], BLUR_LEVEL)
    np.testing.assert_allclose(np.asarray(output.data[0]), expected, atol=1e-5)


def test_gwis_driven_by_a_dask_blur_map_stays_lazy(make_napari_viewer, qtbot):
    from napari_deblur.engine import sharpen_gwis

    viewer = make_napari_viewer()
    stack = _stack()
    levels = np.broadcast_to(np.linspace(0.5, 3.0, STACK_SHAPE[-1], dtype=np.float32), STACK_SHAPE)
    planes_read, map_planes_read = [], []
    source = _add_dask_stack(viewer, stack, planes_read)
    blur_map = _add_dask_stack(viewer, np.ascontiguousarray(levels), map_planes_read, name="map")
    widget = _dock(viewer, GWIS_WIDGET, source)
    widget.blur_source.value = "Blur-map layer"
    widget.blur_map.value = blur_map
    _run_and_wait(qtbot, widget)

    (output,) = widget.runner.last_outputs
    assert output.name == "stack GWIS" and output.metadata["blur_map_layer"] == "map"
    assert isinstance(output.data, da.Array)
    assert len(set(planes_read)) <= 1 and len(set(map_planes_read)) <= 1
    expected = sharpen_gwis(stack[1], levels[1])
    np.testing.assert_allclose(np.asarray(output.data[1]), expected, atol=1e-5)


def test_classical_wiener_lazily_matches_in_memory(make_napari_viewer, qtbot):
    from napari_deblur.engine import gaussian_psf, wiener_deconvolve

    viewer = make_napari_viewer()
    stack = _stack()
    source = _add_dask_stack(viewer, stack, [])
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Wiener-net sharpener")
    widget.image.value = source
    widget.method.value = "Wiener (classical)"
    widget.psf_source.value = "Gaussian"
    widget.gaussian_sigma.value = 1.5
    assert widget.runner.scope.value == LAZY_SCOPE
    _run_and_wait(qtbot, widget)

    (output,) = widget.runner.last_outputs
    assert output.name == "stack Wiener" and isinstance(output.data, da.Array)
    assert output.metadata["snr_db"] == widget.snr_db.value
    expected = wiener_deconvolve(stack[1], gaussian_psf(1.5), snr_db=widget.snr_db.value)
    np.testing.assert_allclose(np.asarray(output.data[1]), expected, atol=1e-5)


def test_blur_map_lazily_adds_a_map_and_classes(make_napari_viewer, qtbot):
    from napari_deblur.engine import blur_classes, estimate_blur_map
    from napari_deblur.layer_roles import BLUR_MAP_ROLE, ROLE_KEY

    viewer = make_napari_viewer()
    stack = _stack()
    planes_read = []
    source = _add_dask_stack(viewer, stack, planes_read)
    widget = _dock(viewer, BLUR_MAP_WIDGET, source)
    assert widget.runner.scope.value == LAZY_SCOPE
    _run_and_wait(qtbot, widget)

    blur_map, classes = widget.runner.last_outputs
    assert (blur_map.name, classes.name) == ("stack blur map (px)", "stack blur classes")
    assert isinstance(blur_map.data, da.Array) and isinstance(classes.data, da.Array)
    assert len(set(planes_read)) <= 1
    for layer in (blur_map, classes):
        assert layer.data.shape == STACK_SHAPE
        np.testing.assert_allclose(layer.scale, source.scale)
        np.testing.assert_allclose(layer.translate, source.translate)
    assert blur_map.metadata[ROLE_KEY] == BLUR_MAP_ROLE and blur_map.colormap.name == "inferno"
    assert classes.metadata["bin_edges_px"][:5] == [0.0, 0.5, 1.0, 2.0, 4.0]
    assert classes.data.dtype == np.uint8 and classes.colormap.color_dict[1] is not None

    expected = estimate_blur_map(stack[2])
    np.testing.assert_allclose(np.asarray(blur_map.data[2]), expected, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(classes.data[2]), blur_classes(np.asarray(blur_map.data[2])))


def test_save_whole_stack_to_zarr_and_open_it_lazily(make_napari_viewer, qtbot, tmp_path):
    from napari_deblur.engine import sharpen_gwis

    viewer = make_napari_viewer()
    stack = _stack()
    source = viewer.add_image(stack, name="stack", scale=(2.0, 0.5, 0.5))
    widget = _dock(viewer, GWIS_WIDGET, source)
    widget.blur_level.value = BLUR_LEVEL
    target = tmp_path / "sharpened.zarr"
    suggested = []

    def choose_save_path(suggested_name):
        suggested.append(suggested_name)
        return str(target)

    widget.runner.choose_save_path = choose_save_path
    progress = []
    widget.runner.job_progress.connect(lambda fraction, message: progress.append(fraction))

    assert widget.runner.save_button.enabled
    widget.runner.save_button.changed.emit(True)  # as a click, through the runner's callback
    assert widget.runner.is_running
    qtbot.waitUntil(lambda: not widget.runner.is_running, timeout=JOB_TIMEOUT_MS)

    assert suggested == ["stack GWIS.zarr"]
    assert target.is_dir() and not (tmp_path / "sharpened.zarr.partial").exists()
    assert progress[-1] == 1.0 and len(progress) >= STACK_SHAPE[0]
    assert widget.runner.progress.value == widget.runner.progress.max
    (saved,) = widget.runner.last_outputs
    assert saved.name == "stack GWIS" and _names(viewer) == ["stack", "stack GWIS"]
    assert isinstance(saved.data, da.Array)
    np.testing.assert_allclose(saved.scale, source.scale)
    assert saved.metadata["napari_deblur_method"] == "gwis"
    np.testing.assert_allclose(np.asarray(saved.data), sharpen_gwis(stack, BLUR_LEVEL), atol=1e-5)


def test_save_blur_map_of_a_dask_stack_to_tif(make_napari_viewer, qtbot, tmp_path):
    from napari_deblur.engine import estimate_blur_map

    viewer = make_napari_viewer()
    stack = _stack()
    source = _add_dask_stack(viewer, stack, [])
    widget = _dock(viewer, BLUR_MAP_WIDGET, source)
    widget.save_whole_stack(str(tmp_path / "map.tif"))
    blur_map, classes = widget.runner.wait(timeout=JOB_TIMEOUT_MS / 1000)

    assert (blur_map.name, classes.name) == ("stack blur map (px)", "stack blur classes")
    assert isinstance(blur_map.data, da.Array) and isinstance(classes.data, da.Array)
    np.testing.assert_allclose(np.asarray(blur_map.data), estimate_blur_map(stack), atol=1e-5)


def test_cancelling_a_save_leaves_no_file(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    slow = _recording_dask(_stack(), [], seconds_per_plane=0.5)
    source = viewer.add_image(slow, name="slow", contrast_limits=(0.0, 1.0))
    widget = _dock(viewer, GWIS_WIDGET, source)
    folder = tmp_path / "saved"
    folder.mkdir()
    target = folder / "never.zarr"
    widget.runner.choose_save_path = lambda suggested_name: str(target)
    cancelled, partial_seen = [], []
    widget.runner.job_cancelled.connect(lambda: cancelled.append(True))

    def cancel_once_writing(fraction, message):
        partial_seen.append(any(p.name.endswith(".partial") for p in folder.iterdir()))
        widget.runner.cancel()

    widget.runner.job_progress.connect(cancel_once_writing)

    widget.save_whole_stack()
    qtbot.waitUntil(lambda: not widget.runner.is_running, timeout=JOB_TIMEOUT_MS)

    assert cancelled == [True] and partial_seen[0]
    assert list(folder.iterdir()) == []  # neither never.zarr nor its hidden partial folder
    assert _names(viewer) == ["slow"]
    assert widget.runner.run_button.enabled and widget.runner.save_button.enabled


def test_a_failed_save_shows_the_error_and_leaves_no_file(
    make_napari_viewer,
    qtbot,
    tmp_path,
    notifications,  # noqa: F811 - the imported fixture
):
    viewer = make_napari_viewer()
    stack = _stack()
    stack[2, 5, 5] = np.nan
    source = viewer.add_image(stack, name="broken", contrast_limits=(0.0, 1.0))
    widget = _dock(viewer, GWIS_WIDGET, source)
    folder = tmp_path / "saved"
    folder.mkdir()
    widget.save_whole_stack(str(folder / "broken.zarr"))
    qtbot.waitUntil(lambda: not widget.runner.is_running, timeout=JOB_TIMEOUT_MS)

    assert isinstance(widget.runner.last_error, ValueError)
    assert any("nan" in message.lower() for message in notifications)
    assert list(folder.iterdir()) == []
    assert _names(viewer) == ["broken"]


def test_a_path_that_is_neither_zarr_nor_tif_is_refused(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    source = viewer.add_image(_stack(), name="stack")
    widget = _dock(viewer, GWIS_WIDGET, source)
    with pytest.raises(ValueError, match=r"\.zarr, \.tif or \.tiff"):
        widget.save_whole_stack(str(tmp_path / "result.png"))
    widget.runner.choose_save_path = lambda suggested_name: None  # the dialog was cancelled
    assert widget.save_whole_stack() is None
    assert not widget.runner.is_running
