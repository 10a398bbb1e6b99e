"""GUI tests of the "Deconvolve (microscopy)" widget in a real napari window.

Run under an X server, e.g.::

    xvfb-run -a -s "-screen 0 1280x1024x24" pytest tests/test_widgets_microscopy_gui.py -q
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

pytestmark = pytest.mark.gui

PLUGIN = "napari-deblur"
WIDGET = "Deconvolve (microscopy)"
JOB_TIMEOUT_MS = 60_000
VOXEL = (0.2, 0.1, 0.1)


def _dock(viewer):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    return widget


def _run_and_wait(qtbot, widget):
    widget.run()
    assert widget.runner.is_running
    qtbot.waitUntil(lambda: not widget.runner.is_running, timeout=JOB_TIMEOUT_MS)


def _shown(widget):
    return not widget.native.isHidden()


@pytest.fixture(scope="session")
def tiny_volume():
    """A 16 x 48 x 48 widefield volume (beads) blurred by a small Gaussian 3D PSF, and that PSF."""
    from scipy.signal import fftconvolve

    from napari_deblur.engine import microscope_psf

    psf = microscope_psf((9, 15, 15), na=1.4, wavelength=0.52, dxy=0.1, dz=0.2, model="gaussian")
    rng = np.random.default_rng(0)
    sharp = np.full((24, 62, 62), 5.0)
    index = tuple(rng.integers(0, n, 40) for n in sharp.shape)
    sharp[index] += 400.0
    blurred = fftconvolve(sharp, psf, mode="valid")  # (16, 48, 48), content from outside the field
    return rng.poisson(np.clip(blurred, 0, None)).astype(np.float32), psf


def _peakiness(volume):
    """Brightest voxel over the mean: beads get brighter peaks as their blur is undone."""
    volume = np.asarray(volume, np.float64)
    return float(volume.max() / volume.mean())


def test_rl_with_a_generated_psf_adds_an_output_with_the_voxel_scale(make_napari_viewer, qtbot, tiny_volume):
    volume, _ = tiny_volume
    viewer = make_napari_viewer()
    source = viewer.add_image(volume, name="stack", scale=VOXEL, units=("micrometer",) * 3)
    before = np.array(source.data, copy=True)
    widget = _dock(viewer)
    assert widget.image.value is source
    assert widget.psf_source.value == "Generated from optics"
    # Voxel sizes come from the layer's scale in µm.
    assert widget.dxy_um.value == pytest.approx(0.1) and widget.dz_um.value == pytest.approx(0.2)
    assert not _shown(widget.runner.scope)  # one volume: always deconvolved whole
    assert not _shown(widget.runner.save_button)
    assert widget.automatic_iterations.value and not _shown(widget.iterations)  # stops by itself
    assert _shown(widget.automatic_iterations) and not _shown(widget.snr_db)
    widget.psf_model.value = "gaussian"
    widget.automatic_iterations.value = False
    assert _shown(widget.iterations)
    widget.iterations.value = 5
    assert widget.runner.run_button.enabled

    _run_and_wait(qtbot, widget)

    assert widget.runner.last_error is None
    (output,) = widget.runner.last_outputs
    assert output.name == "stack RL 3D"
    assert [layer.name for layer in viewer.layers] == ["stack", "stack RL 3D"]
    assert output.data.shape == volume.shape and output.data.dtype == np.float32
    np.testing.assert_allclose(output.scale, VOXEL)
    np.testing.assert_array_equal(source.data, before)
    assert output.metadata["napari_deblur_method"] == "richardson-lucy-3d"
    assert output.metadata["iterations"] == 5
    assert output.metadata["psf"] == "gaussian widefield"
    assert all(side % 2 == 1 for side in output.metadata["psf_shape"])
    assert _peakiness(output.data) > 1.2 * _peakiness(volume)
    # Its own contrast, to the 99.8th percentile: the input's limits would saturate the sharper peaks,
    # the result's maximum (a few beads) would leave the rest dark.
    high = float(np.percentile(output.data, 99.8))
    assert output.contrast_limits[1] == pytest.approx(high) and high < float(output.data.max())


def test_a_psf_layer_and_3d_wiener(make_napari_viewer, qtbot, tiny_volume):
    from napari_deblur.layer_roles import psf_metadata

    volume, psf = tiny_volume
    viewer = make_napari_viewer()
    viewer.add_image(volume, name="stack", scale=VOXEL)
    viewer.add_image(psf, name="bead PSF", scale=VOXEL, metadata=psf_metadata(source="test"))
    viewer.layers.selection.active = viewer.layers["stack"]
    widget = _dock(viewer)
    assert widget.image.value.name == "stack"  # PSF layers are not offered as images
    widget.psf_source.value = "PSF layer"
    assert widget.psf_layer.value.name == "bead PSF"
    assert _shown(widget.psf_layer) and not _shown(widget.na)
    widget.method.value = "Wiener (3D)"
    assert _shown(widget.snr_db) and not _shown(widget.iterations) and not _shown(widget.automatic_iterations)
    widget.snr_db.value = 25.0

    _run_and_wait(qtbot, widget)

    (output,) = widget.runner.last_outputs
    assert output.name == "stack Wiener 3D"
    np.testing.assert_allclose(output.scale, VOXEL)
    assert output.metadata["psf"] == "layer" and output.metadata["psf_layer"] == "bead PSF"
    assert output.metadata["snr_db"] == 25.0
    assert np.isfinite(output.data).all()


def test_current_slice_of_a_time_series_is_the_current_volume(make_napari_viewer, qtbot, tiny_volume):
    volume, psf = tiny_volume
    series = np.stack([volume, volume[::-1]])  # (t, z, y, x)
    viewer = make_napari_viewer()
    viewer.add_image(series, name="movie", scale=(5.0, *VOXEL))
    viewer.add_image(psf, name="psf", scale=VOXEL)
    viewer.layers.selection.active = viewer.layers["movie"]
    viewer.dims.set_current_step(0, 1)
    widget = _dock(viewer)
    assert _shown(widget.runner.scope)
    widget.runner.scope.value = "Current slice"
    widget.psf_source.value = "PSF layer"
    widget.psf_layer.value = viewer.layers["psf"]
    assert widget.automatic_iterations.value  # the default: the engine stops by itself

    _run_and_wait(qtbot, widget)

    (output,) = widget.runner.last_outputs
    assert output.name == "movie RL 3D (t=1)"
    assert output.metadata["iterations"] == "auto"
    assert output.data.shape == volume.shape
    np.testing.assert_allclose(output.scale, VOXEL)


def test_wiener_net_3d_on_a_dask_time_series_lazily_and_saved_to_a_file(
    make_napari_viewer, qtbot, tiny_volume, tmp_path
):
    import dask.array as da

    from napari_deblur.engine import wiener_net_3d

    volume, psf = tiny_volume
    series = da.from_array(np.stack([volume, volume[::-1]]), chunks=(1, 1, 48, 48))  # (t, z, y, x)
    viewer = make_napari_viewer()
    viewer.add_image(series, name="movie", scale=(5.0, *VOXEL))
    viewer.add_image(psf, name="psf", scale=VOXEL)
    viewer.layers.selection.active = viewer.layers["movie"]
    widget = _dock(viewer)
    widget.psf_source.value = "PSF layer"
    widget.psf_layer.value = viewer.layers["psf"]
    widget.method.value = "Wiener-net (3D, learned)"
    assert not _shown(widget.snr_db) and not _shown(widget.iterations)
    assert widget.runner.scope.value.startswith("Whole stack, lazily")  # a dask stack: lazy by default
    assert _shown(widget.runner.save_button)
    expected_second = wiener_net_3d(volume[::-1], psf, device="cpu")

    _run_and_wait(qtbot, widget)

    assert widget.runner.last_error is None
    (lazy,) = widget.runner.last_outputs
    assert lazy.name == "movie Wiener-net 3D" and isinstance(lazy.data, da.Array)
    assert lazy.metadata["napari_deblur_method"] == "wiener-net-3d"
    np.testing.assert_allclose(lazy.data[1].compute(), expected_second, rtol=1e-5, atol=1e-3)

    target = tmp_path / "deconvolved.zarr"
    widget.save_whole_stack(str(target))
    qtbot.waitUntil(lambda: not widget.runner.is_running, timeout=JOB_TIMEOUT_MS)
    assert widget.runner.last_error is None
    (saved,) = widget.runner.last_outputs
    assert target.is_dir() and isinstance(saved.data, da.Array)
    np.testing.assert_allclose(np.asarray(saved.data[1]), expected_second, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(saved.scale, (5.0, *VOXEL))


def test_settings_are_remembered(make_napari_viewer, _isolated_widget_settings):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((9, 32, 32), np.float32), name="stack")  # pixel scale: not µm
    widget = _dock(viewer)
    widget.method.value = "Wiener (3D)"
    widget.snr_db.value = 22.0
    widget.na.value = 1.2
    widget.wavelength_nm.value = 610.0
    widget.dz_um.value = 0.35
    widget.psf_model.value = "scalar"
    widget.confocal.value = True
    widget.automatic_iterations.value = False
    widget.iterations.value = 17
    saved = json.loads((_isolated_widget_settings / "widgets.json").read_text())["microscopy"]
    assert saved["na"] == pytest.approx(1.2) and saved["psf_model"] == "scalar"

    from napari_deblur._qt.microscopy_widget import MicroscopyWidget

    again = MicroscopyWidget(viewer)
    try:
        assert again.method.value == "Wiener (3D)"
        assert again.snr_db.value == pytest.approx(22.0)
        assert again.na.value == pytest.approx(1.2)
        assert again.wavelength_nm.value == pytest.approx(610.0)
        assert again.dz_um.value == pytest.approx(0.35)
        assert again.psf_model.value == "scalar"
        assert again.confocal.value is True
        assert _shown(again.excitation_nm)
        assert again.iterations.value == 17 and again.automatic_iterations.value is False
    finally:
        again.close()
        again.native.deleteLater()


def test_a_2d_image_or_a_2d_psf_gives_a_clear_reason(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32), np.float32), name="plane")
    widget = _dock(viewer)
    assert not widget.runner.run_button.enabled
    assert "2D" in widget.runner.blocked_reason and "z-stack" in widget.runner.blocked_reason
    with pytest.raises(ValueError, match="3D deconvolution needs a z-stack"):
        widget.run()

    viewer.add_image(np.zeros((9, 32, 32), np.float32), name="stack")
    viewer.add_image(np.ones((5, 5), np.float32), name="flat psf")
    widget.image.value = viewer.layers["stack"]
    widget.psf_source.value = "PSF layer"
    widget.psf_layer.value = viewer.layers["flat psf"]
    assert "needs a single-channel 3D PSF" in widget.runner.blocked_reason

    viewer.add_image(np.ones((11, 5, 5), np.float32), name="deep psf")
    widget.psf_layer.value = viewer.layers["deep psf"]
    assert widget.runner.blocked_reason is None
    with pytest.raises(ValueError, match="larger than the volume"):
        widget.run()


def test_widefield_volume_sample_opens_with_the_voxel_scale(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "widefield_volume")
    volume, psf = viewer.layers["Widefield volume"], viewer.layers["Widefield volume PSF"]
    np.testing.assert_allclose(volume.scale, VOXEL)
    np.testing.assert_allclose(psf.scale, VOXEL)
    widget = _dock(viewer)
    widget.image.value = volume
    assert widget.dxy_um.value == pytest.approx(0.1) and widget.dz_um.value == pytest.approx(0.2)
