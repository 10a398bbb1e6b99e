"""GUI tests of the Region selector widget (find windows, estimate a PSF) in a real napari window.

``engine.iter_select_regions`` is replaced by a fake with known windows in
most tests (the widget's job is to show them and to estimate a PSF from them);
one test runs the real selector. Run under an X server::

    xvfb-run -a -s "-screen 0 1280x1024x24" pytest tests/test_widgets_region_selector_gui.py -q
"""

from __future__ import annotations

import json
from typing import NamedTuple

import numpy as np
import pytest

# Importing the main GUI test module first skips this one too without a display, pytest-qt or napari.
from test_widgets_gui import (
    JOB_TIMEOUT_MS,
    PLUGIN,
    _names,
    _run_and_wait,
    _shown,
    notifications,  # noqa: F401  (fixture)
)

pytestmark = pytest.mark.gui

WIDGET = "Region selector"
PSF_SIZE = 25


class FakeRegion(NamedTuple):
    y: int
    x: int
    height: int
    width: int
    score: float


#: What the fake selector proposes on the 200x200 test image, best first.
FAKE_REGIONS = [
    FakeRegion(20, 40, 128, 128, 0.91),
    FakeRegion(100, 10, 64, 64, 0.55),
    FakeRegion(130, 130, 64, 64, 0.12),
]


@pytest.fixture(scope="session")
def blurred_and_psf():
    """A 200x200 crop of astronaut's luminance (train split) blurred by a known camera shake."""
    from skimage import color, data

    from napari_deblur import engine

    psf = engine.random_motion_psf(15, rng=1)
    sharp = color.rgb2gray(data.astronaut())[100:300, 150:350].astype(np.float32)
    return engine.blur(sharp, psf), psf


@pytest.fixture
def fake_select_regions(monkeypatch):
    """Replace ``engine.iter_select_regions`` (imported by the widget when the job runs).

    The fake yields progress and returns :data:`FAKE_REGIONS`; calls are recorded.
    """
    import napari_deblur.engine
    from napari_deblur.engine import JobProgress

    calls = []

    def iter_select_regions(
        image, *, size=128, count=5, device=None, channel_axis=None, ranking="consensus", psf_size=25
    ):
        calls.append(
            {
                "shape": np.shape(image),
                "size": size,
                "count": count,
                "channel_axis": channel_axis,
                "ranking": ranking,
                "psf_size": psf_size,
            }
        )
        yield JobProgress(0.5, "scoring windows")
        return list(FAKE_REGIONS[:count])

    monkeypatch.setattr(napari_deblur.engine, "iter_select_regions", iter_select_regions)
    return calls


def _dock(viewer):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    return widget


def _estimate_and_wait(qtbot, widget):
    widget.estimate_psf()
    assert widget.runner.is_running
    qtbot.waitUntil(lambda: not widget.runner.is_running, timeout=JOB_TIMEOUT_MS)


def _viewer_with_image(make_napari_viewer, blurred, **kwargs):
    viewer = make_napari_viewer()
    layer = viewer.add_image(blurred, name="blurred", colormap="gray", **kwargs)
    return viewer, layer


def _corners(region, leading=()):
    y, x, h, w = region[:4]
    yx = np.array(
        [[y - 0.5, x - 0.5], [y - 0.5, x + w - 0.5], [y + h - 0.5, x + w - 0.5], [y + h - 0.5, x - 0.5]]
    )
    return np.concatenate([np.broadcast_to(np.asarray(leading, float), (4, len(leading))), yx], axis=1)


# --- find regions --------------------------------------------------------------------------


def test_find_regions_adds_scored_rectangles_over_the_input(
    make_napari_viewer, qtbot, blurred_and_psf, fake_select_regions
):
    blurred, _ = blurred_and_psf
    viewer, source = _viewer_with_image(
        make_napari_viewer, blurred, scale=(0.5, 0.25), translate=(10.0, -3.0)
    )
    before = np.array(source.data, copy=True)
    widget = _dock(viewer)
    assert widget.image.value is source
    assert widget.size.value == 192 and widget.count.value == 5 and widget.psf_size.value == 25
    assert (widget.size.min, widget.size.max, widget.count.min, widget.count.max) == (64, 512, 1, 20)
    assert not _shown(widget.runner.scope) and not _shown(widget.runner.save_button)
    widget.size.value = 64
    widget.count.value = 3

    _run_and_wait(qtbot, widget)

    assert fake_select_regions == [
        {
            "shape": (200, 200),
            "size": 64,
            "count": 3,
            "channel_axis": None,
            "ranking": "consensus",
            "psf_size": 25,
        }
    ]
    (regions,) = widget.runner.last_outputs
    assert regions.name == "blurred regions"
    assert _names(viewer) == ["blurred", "blurred regions"]
    assert widget.regions.value is regions
    assert len(regions.data) == 3
    assert list(regions.shape_type) == ["rectangle"] * 3
    for vertices, region in zip(regions.data, FAKE_REGIONS):
        np.testing.assert_allclose(np.sort(vertices, axis=0), np.sort(_corners(region), axis=0))
    np.testing.assert_allclose(regions.scale, source.scale)
    np.testing.assert_allclose(regions.translate, source.translate)
    np.testing.assert_allclose(regions.features["score"], [0.91, 0.55, 0.12])
    assert list(regions.features["rank"]) == [1, 2, 3]
    assert list(regions.text.values) == ["#1 0.91", "#2 0.55", "#3 0.12"]
    assert regions.edge_color_mode == "colormap"
    assert not np.allclose(regions.edge_color[0], regions.edge_color[2])  # coloured by score
    np.testing.assert_allclose(regions.face_color[:, 3], 0.0)  # transparent
    assert regions.metadata["regions"] == [list(r[:4]) for r in FAKE_REGIONS]
    assert regions.metadata["ranking"] == "consensus"
    np.testing.assert_array_equal(source.data, before)


def test_the_widget_ranks_by_consensus_only_and_passes_the_psf_size(
    make_napari_viewer, qtbot, blurred_and_psf, fake_select_regions
):
    blurred, _ = blurred_and_psf
    viewer, _ = _viewer_with_image(make_napari_viewer, blurred)
    widget = _dock(viewer)
    assert not hasattr(widget, "ranking")  # the network ranking (at chance) is not offered
    widget.psf_size.value = 15
    _run_and_wait(qtbot, widget)
    assert fake_select_regions[-1]["ranking"] == "consensus"
    assert fake_select_regions[-1]["psf_size"] == 15
    (regions,) = widget.runner.last_outputs
    assert regions.metadata["ranking"] == "consensus"


def test_find_regions_on_a_stack_puts_rectangles_on_the_slice_on_screen(
    make_napari_viewer, qtbot, blurred_and_psf, fake_select_regions
):
    blurred, _ = blurred_and_psf
    stack = np.stack([np.zeros_like(blurred), blurred, np.zeros_like(blurred)])
    viewer, source = _viewer_with_image(make_napari_viewer, stack, scale=(2.0, 1.0, 1.0))
    widget = _dock(viewer)
    viewer.dims.set_point(0, 2.0)  # world z=2 is plane 1
    widget.count.value = 2
    _run_and_wait(qtbot, widget)

    (regions,) = widget.runner.last_outputs
    assert regions.name == "blurred regions (slice z=1)"
    assert regions.ndim == 3
    np.testing.assert_allclose(regions.scale, source.scale)
    for vertices, region in zip(regions.data, FAKE_REGIONS):
        np.testing.assert_allclose(np.sort(vertices, axis=0), np.sort(_corners(region, (1,)), axis=0))
    assert fake_select_regions[0]["shape"] == (200, 200)

    # The PSF comes from that slice even when the viewer shows another one.
    viewer.dims.set_point(0, 0.0)
    _estimate_and_wait(qtbot, widget)
    (psf,) = widget.runner.last_outputs
    assert psf.name == "blurred PSF (slice z=1)"
    assert psf.metadata["slice"] == [1]
    assert psf.metadata["region"] == list(FAKE_REGIONS[0][:4])
    assert np.ptp(psf.data) > 0  # not the point kernel of a flat (all-zero) plane


def test_rgb_image_gives_2d_rectangles_and_a_grey_psf(
    make_napari_viewer, qtbot, blurred_and_psf, fake_select_regions
):
    blurred, _ = blurred_and_psf
    rgb = np.stack([blurred, 0.8 * blurred, 0.6 * blurred], axis=-1)
    viewer, _ = _viewer_with_image(make_napari_viewer, rgb, rgb=True)
    widget = _dock(viewer)
    _run_and_wait(qtbot, widget)
    assert fake_select_regions[0]["channel_axis"] == 2
    (regions,) = widget.runner.last_outputs
    assert regions.ndim == 2
    _estimate_and_wait(qtbot, widget)
    (psf,) = widget.runner.last_outputs
    assert not psf.rgb and psf.data.shape == (PSF_SIZE, PSF_SIZE)
    assert float(psf.data.sum()) == pytest.approx(1.0, abs=1e-4)


def test_selector_errors_are_reported_and_add_no_layer(
    make_napari_viewer,
    qtbot,
    blurred_and_psf,
    monkeypatch,
    notifications,  # noqa: F811
):
    import napari_deblur.engine

    def broken(image, **kwargs):
        raise ValueError("image too small for 128 px windows")
        yield  # a generator, as the engine's

    monkeypatch.setattr(napari_deblur.engine, "iter_select_regions", broken)
    viewer, _ = _viewer_with_image(make_napari_viewer, blurred_and_psf[0])
    widget = _dock(viewer)
    _run_and_wait(qtbot, widget)
    assert _names(viewer) == ["blurred"]
    assert any("too small" in message for message in notifications)
    assert widget.estimate_button.enabled and widget.runner.run_button.enabled

    def nothing(image, **kwargs):
        yield from ()
        return []

    monkeypatch.setattr(napari_deblur.engine, "iter_select_regions", nothing)
    _run_and_wait(qtbot, widget)
    assert _names(viewer) == ["blurred"]
    assert "smaller window" in str(widget.runner.last_error)


def test_cancel_adds_no_layer(make_napari_viewer, qtbot, blurred_and_psf, monkeypatch):
    import time

    import napari_deblur.engine
    from napari_deblur.engine import JobProgress

    def slow(image, **kwargs):
        for step in range(200):
            yield JobProgress(step / 200, "scoring windows")
            time.sleep(0.01)
        return list(FAKE_REGIONS)

    monkeypatch.setattr(napari_deblur.engine, "iter_select_regions", slow)
    viewer, _ = _viewer_with_image(make_napari_viewer, blurred_and_psf[0])
    widget = _dock(viewer)
    cancelled = []
    widget.runner.job_cancelled.connect(lambda: cancelled.append(True))
    widget.runner.job_progress.connect(lambda *_: widget.runner.cancel())
    _run_and_wait(qtbot, widget)
    assert cancelled == [True]
    assert _names(viewer) == ["blurred"]
    assert widget.estimate_button.enabled


# --- estimate PSF --------------------------------------------------------------------------


def test_estimate_psf_from_the_best_rectangle_feeds_wiener_net(
    make_napari_viewer, qtbot, blurred_and_psf, fake_select_regions
):
    from napari_deblur.engine import kernel_similarity
    from napari_deblur.layer_roles import is_psf_metadata

    blurred, true_psf = blurred_and_psf
    viewer, source = _viewer_with_image(make_napari_viewer, blurred, scale=(0.5, 0.5))
    viewer.add_image(np.ones((9, 9), np.float32), name="a plain image")  # listed before the PSF
    before = np.array(source.data, copy=True)
    widget = _dock(viewer)
    widget.reset_choices()
    widget.image.value = source
    _run_and_wait(qtbot, widget)
    regions = widget.runner.last_outputs[0]
    regions.selected_data = set()

    _estimate_and_wait(qtbot, widget)

    (psf,) = widget.runner.last_outputs
    assert psf.name == "blurred PSF"
    assert psf.data.shape == (PSF_SIZE, PSF_SIZE)
    assert float(psf.data.sum()) == pytest.approx(1.0, abs=1e-4)
    assert is_psf_metadata(psf.metadata)
    assert psf.metadata["source_layer"] == "blurred"
    assert psf.metadata["region"] == [20, 40, 128, 128]  # the best-scoring window
    assert psf.metadata["region_score"] == pytest.approx(0.91)
    assert psf.metadata["blur_level_px"] > 0
    assert psf.colormap.name == "magma"
    np.testing.assert_allclose(psf.scale, source.scale)
    assert kernel_similarity(psf.data, true_psf) > 0.6
    np.testing.assert_array_equal(source.data, before)
    assert psf not in widget.image.choices  # a PSF is not an image to search

    _, wiener = viewer.window.add_plugin_dock_widget(PLUGIN, "Wiener-net sharpener")
    wiener.reset_choices()
    assert wiener.psf_layer.choices[0] is psf
    assert wiener.psf_layer.value is psf
    wiener.image.value = source
    _run_and_wait(qtbot, wiener)
    (sharpened,) = wiener.runner.last_outputs
    assert sharpened.metadata["psf_layer"] == "blurred PSF"


def test_estimate_psf_from_a_selected_or_drawn_rectangle(
    make_napari_viewer, qtbot, blurred_and_psf, fake_select_regions
):
    blurred, _ = blurred_and_psf
    viewer, source = _viewer_with_image(make_napari_viewer, blurred, translate=(5.0, 7.0))
    widget = _dock(viewer)
    _run_and_wait(qtbot, widget)
    regions = widget.runner.last_outputs[0]

    regions.selected_data = {2}
    _estimate_and_wait(qtbot, widget)
    (psf,) = widget.runner.last_outputs
    assert psf.metadata["region"] == [130, 130, 64, 64]
    assert psf.metadata["region_score"] == pytest.approx(0.12)

    # A rectangle the user drew on the regions layer (data coordinates of the image).
    regions.add_rectangles(np.array([[60.5, 30.5], [160.5, 150.5]]))
    assert regions.features["rank"].iloc[-1] == 0  # drawn: no rank
    regions.selected_data = {3}
    _estimate_and_wait(qtbot, widget)
    (psf,) = widget.runner.last_outputs
    assert psf.name == "blurred PSF [1]"
    assert psf.metadata["region"] == [61, 31, 100, 120]

    # A shapes layer of the user's own (no scores, its own geometry): mapped through the world.
    own = viewer.add_shapes(
        [np.array([[0.0, 0.0], [60.0, 50.0]])],
        shape_type="rectangle",
        scale=(2.0, 2.0),
        translate=(4.5, 6.5),
        name="my rectangle",
    )
    widget.reset_choices()
    widget.regions.value = own
    own.selected_data = set()
    _estimate_and_wait(qtbot, widget)
    (psf,) = widget.runner.last_outputs
    assert psf.metadata["region"] == [0, 0, 120, 100]
    assert float(psf.data.sum()) == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(source.translate, (5.0, 7.0))


def test_estimate_psf_from_the_whole_plane_needs_no_regions_layer(make_napari_viewer, qtbot, blurred_and_psf):
    from napari_deblur._qt.region_selector_widget import PSF_FROM_REGION, PSF_FROM_WHOLE_IMAGE
    from napari_deblur.engine import kernel_similarity

    blurred, true_psf = blurred_and_psf
    stack = np.stack([np.zeros_like(blurred), blurred, np.ones_like(blurred)])
    viewer, source = _viewer_with_image(make_napari_viewer, stack, scale=(3.0, 0.5, 0.5))
    viewer.dims.set_point(0, 3.0)  # slice 1 on screen: the blurred plane
    before = np.array(source.data, copy=True)
    widget = _dock(viewer)
    widget.reset_choices()
    widget.image.value = source
    assert widget.regions.value is None and widget.regions.enabled
    widget.psf_from.value = PSF_FROM_WHOLE_IMAGE
    assert not widget.regions.enabled

    _estimate_and_wait(qtbot, widget)

    (psf,) = widget.runner.last_outputs
    assert psf.data.shape == (PSF_SIZE, PSF_SIZE)
    assert float(psf.data.sum()) == pytest.approx(1.0, abs=1e-4)
    assert psf.metadata["region"] == "whole image"
    assert psf.metadata["slice"] == [1]
    assert "regions_layer" not in psf.metadata and "region_score" not in psf.metadata
    assert kernel_similarity(psf.data, true_psf) > 0.6
    np.testing.assert_array_equal(source.data, before)

    widget.psf_from.value = PSF_FROM_REGION  # back to rectangles: a regions layer is needed again
    assert widget.regions.enabled
    with pytest.raises(ValueError, match="No regions layer"):
        widget.estimate_psf()


def test_bad_rectangles_give_clear_errors_and_no_layer(
    make_napari_viewer,
    qtbot,
    blurred_and_psf,
    fake_select_regions,
    notifications,  # noqa: F811
):
    blurred, _ = blurred_and_psf
    viewer, source = _viewer_with_image(make_napari_viewer, blurred)
    before = np.array(source.data, copy=True)
    widget = _dock(viewer)

    with pytest.raises(ValueError, match="No regions layer"):
        widget.estimate_psf()
    widget.estimate_button.changed.emit(True)  # the button reports instead of raising
    assert any("No regions layer" in message for message in notifications)

    _run_and_wait(qtbot, widget)
    regions = widget.runner.last_outputs[0]
    names = _names(viewer)

    # Smaller than twice the PSF size: the engine says so when the job runs.
    regions.selected_data = {1}
    widget.psf_size.value = 41
    _estimate_and_wait(qtbot, widget)
    assert _names(viewer) == names
    assert isinstance(widget.runner.last_error, ValueError)
    assert "too small" in str(widget.runner.last_error)
    widget.psf_size.value = PSF_SIZE

    # Reaching outside the image (drawn past its bottom edge).
    regions.add_rectangles(np.array([[150.0, 20.0], [260.0, 120.0]]))
    regions.selected_data = {len(regions.data) - 1}
    with pytest.raises(ValueError, match="outside"):
        widget.estimate_psf()

    # Several selected, a non-rectangle, a rotated rectangle.
    regions.selected_data = {1, 2}
    with pytest.raises(ValueError, match="select one rectangle"):
        widget.estimate_psf()
    regions.add_polygons([np.array([[10.0, 10.0], [100.0, 20.0], [60.0, 120.0]])])
    regions.selected_data = {len(regions.data) - 1}
    with pytest.raises(ValueError, match="not a rectangle"):
        widget.estimate_psf()
    angle = np.deg2rad(30)
    rotated = 100 + 40 * np.array([[np.cos(a), np.sin(a)] for a in angle + np.deg2rad([45, 135, 225, 315])])
    regions.add_rectangles(rotated)
    regions.selected_data = {len(regions.data) - 1}
    with pytest.raises(ValueError, match="rotated"):
        widget.estimate_psf()

    assert _names(viewer) == names
    np.testing.assert_array_equal(source.data, before)


def test_without_an_image_find_regions_is_disabled_and_labels_are_not_offered(make_napari_viewer):
    viewer = make_napari_viewer()
    labels = viewer.add_labels(np.zeros((64, 64), np.int32), name="labels")
    widget = _dock(viewer)
    assert widget.image.value is None
    assert labels not in widget.image.choices and labels not in widget.regions.choices
    assert not widget.runner.run_button.enabled
    assert "No image layer" in widget.runner.status.value
    with pytest.raises(ValueError, match="No image layer"):
        widget.run()
    with pytest.raises(ValueError, match="No image layer"):
        widget.estimate_psf()
    with pytest.raises(TypeError, match="Image layer"):
        widget.runner.selection(labels)
    with pytest.raises(ValueError, match="plane on screen"):
        widget.save_whole_stack("stack.zarr")


# --- settings, manifest ---------------------------------------------------------------------


def test_settings_are_remembered(make_napari_viewer, _isolated_widget_settings):
    from napari_deblur._qt.region_selector_widget import PSF_FROM_WHOLE_IMAGE, RegionSelectorWidget

    viewer = make_napari_viewer()
    widget = _dock(viewer)
    widget.size.value = 96
    widget.count.value = 7
    widget.psf_size.value = 31
    widget.psf_from.value = PSF_FROM_WHOLE_IMAGE

    saved = json.loads((_isolated_widget_settings / "widgets.json").read_text())
    assert saved["region_selector"] == {
        "size": 96,
        "count": 7,
        "psf_size": 31,
        "psf_from": PSF_FROM_WHOLE_IMAGE,
    }

    again = RegionSelectorWidget(viewer)
    try:
        assert (again.size.value, again.count.value, again.psf_size.value) == (96, 7, 31)
        assert again.psf_from.value == PSF_FROM_WHOLE_IMAGE and not again.regions.enabled
    finally:
        again.close()
        again.native.deleteLater()


def test_manifest_and_demo_list_the_widget():
    from npe2 import PluginManager

    from napari_deblur.demo import DEMO_WIDGETS

    manifest = PluginManager.instance().get_manifest(PLUGIN)
    widgets = {w.display_name: w.command for w in manifest.contributions.widgets}
    assert widgets[WIDGET] == "napari-deblur.make_region_selector_widget"
    commands = {c.id: c.python_name for c in manifest.contributions.commands}
    assert commands[widgets[WIDGET]] == ("napari_deblur._qt.region_selector_widget:RegionSelectorWidget")
    assert WIDGET in DEMO_WIDGETS


# --- the real selector --------------------------------------------------------------


def test_real_selector_and_estimate_on_the_blurred_crop(make_napari_viewer, qtbot, blurred_and_psf):
    blurred, _ = blurred_and_psf
    viewer, _ = _viewer_with_image(make_napari_viewer, blurred)
    widget = _dock(viewer)
    widget.size.value = 96
    widget.count.value = 3
    _run_and_wait(qtbot, widget)
    (regions,) = widget.runner.last_outputs
    assert 1 <= len(regions.data) <= 3
    scores = np.asarray(regions.features["score"])
    assert np.all(np.diff(scores) <= 0) and np.all((scores >= 0) & (scores <= 1))
    _estimate_and_wait(qtbot, widget)
    (psf,) = widget.runner.last_outputs
    assert psf.data.shape == (PSF_SIZE, PSF_SIZE)
    assert float(psf.data.sum()) == pytest.approx(1.0, abs=1e-4)
