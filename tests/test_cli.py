"""The ``napari-deblur`` command line: help, the demo without a GUI, batch Wiener."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_deblur import demo
from napari_deblur.cli import main

# --------------------------------------------------------------------------- help / entry point


def test_console_script_points_at_main():
    (script,) = entry_points(group="console_scripts", name="napari-deblur")
    assert script.value == "napari_deblur.cli:main"


def test_help_lists_commands_without_heavy_imports():
    code = (
        "import sys\n"
        "from napari_deblur.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "heavy = sorted(m for m in ('napari', 'torch', 'qtpy', 'matplotlib') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "demo" in done.stdout and "batch" in done.stdout
    assert "HEAVY []" in done.stdout


def test_installed_script_help():
    script = shutil.which("napari-deblur")
    if script is None:
        pytest.skip("the napari-deblur script is not on PATH (package not installed)")
    done = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "usage: napari-deblur" in done.stdout

def test_subcommand_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["batch", "wiener", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--psf" in out and "--snr-db" in out and "--output-dir" in out


def test_demo_lists_match_the_manifest():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(Path(demo.__file__).with_name("napari.yaml"))
    widget_names = [w.display_name for w in manifest.contributions.widgets]
    sample_keys = [s.key for s in manifest.contributions.sample_data]
    assert list(demo.DEMO_WIDGETS) == widget_names
    assert set(demo.DEMO_SAMPLES) <= set(sample_keys)


# --------------------------------------------------------------------------- demo without a GUI


def _assert_png_not_blank(path: Path) -> None:
    import matplotlib.image

    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) > 100
    gray = image[..., :3].mean(axis=-1)
    assert gray.std() > 0.05, "the figure is (nearly) one colour"


@pytest.fixture
def no_display(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")


def test_display_missing_reason(monkeypatch, no_display):
    assert "DISPLAY" in demo.display_missing_reason()
    monkeypatch.setenv("DISPLAY", ":99")
    assert demo.display_missing_reason() is None
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    assert "offscreen" in demo.display_missing_reason()


def test_demo_no_gui_writes_figure(tmp_path, capsys, no_display):
    out = tmp_path / "figs" / "demo.png"
    assert main(["demo", "--no-gui", "--output", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[0].startswith("No napari window (--no-gui given)")
    assert printed[-1] == str(out.resolve())
    _assert_png_not_blank(out)


def test_demo_without_display_falls_back_to_figure(tmp_path, capsys, monkeypatch, no_display):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--sample", "defocus_ramp"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert "no display" in printed[0]
    expected = tmp_path / demo.DEFAULT_FIGURE_NAME
    assert printed[-1] == str(expected.resolve())
    _assert_png_not_blank(expected)


def test_demo_falls_back_to_figure_without_qt(tmp_path, capsys, monkeypatch):
    def no_qt(*_args, **_kwargs):
        raise ImportError("No Qt bindings could be found\nsecond line")

    monkeypatch.setenv("DISPLAY", ":99")
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    monkeypatch.setattr(demo, "run_gui_demo", no_qt)
    out = tmp_path / "demo.png"
    assert main(["demo", "--sample", "defocus_ramp", "--screenshot", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert "No Qt bindings could be found" in printed[0] and len(printed) == 2
    assert printed[-1] == str(out.resolve())
    _assert_png_not_blank(out)


def test_camera_shake_demo_panels_restore():
    panels = demo.demo_panels("camera_shake")
    assert [p.title.split("\n")[0] for p in panels][:3] == [
        "Camera shake (blurred)",
        f"Wiener, SNR {demo.DEMO_SNR_DB:g} dB",
        "Wiener-net",
    ]
    psnr_in, psnr_wiener, psnr_net = (
        float(p.title.split("PSNR ")[1].split(" dB")[0]) for p in panels[:3]
    )
    assert psnr_wiener > psnr_in + 2.0
    assert psnr_net > psnr_wiener


def test_unknown_sample_is_rejected():
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--no-gui", "--sample", "nope"])
    assert exc.value.code == 2
    with pytest.raises(ValueError, match="unknown demo sample"):
        demo.demo_panels("nope")


# --------------------------------------------------------------------------- batch wiener


def _gaussian_psf(sigma: float = 1.5, size: int = 9) -> np.ndarray:
    x = np.arange(size) - size // 2
    g = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma**2))
    return g / g.sum()


@pytest.fixture(scope="module")
def blurred_pair():
    """A smooth textured image (64x64, [0, 1]) and its Gaussian blur, no noise."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    sharp = ndimage.gaussian_filter(rng.random((64, 64)), 1.0)
    sharp = (sharp - sharp.min()) / np.ptp(sharp)
    blurred = ndimage.convolve(sharp, _gaussian_psf(), mode="reflect")
    return sharp, blurred


@pytest.fixture
def psf_file(tmp_path):
    path = tmp_path / "psf.npy"
    np.save(path, _gaussian_psf().astype(np.float32))
    return path


def test_batch_wiener_restores_tif_and_npy(tmp_path, psf_file, blurred_pair, capsys):
    sharp, blurred = blurred_pair
    tif = tmp_path / "cells.tif"
    tifffile.imwrite(tif, blurred.astype(np.float32))
    npy = tmp_path / "stack.npy"
    np.save(npy, blurred)
    out_dir = tmp_path / "out"

    status = main(["batch", "wiener", "--psf", str(psf_file), "--snr-db", "40",
                   str(tif), str(npy), "--output-dir", str(out_dir)])

    assert status == 0
    outputs = [out_dir / "cells_wiener.tif", out_dir / "stack_wiener.tif"]
    assert capsys.readouterr().out.split() == [str(p) for p in outputs]
    for path in outputs:
        result = tifffile.imread(path)
        assert result.dtype == np.float32 and result.shape == blurred.shape
        error_in = np.abs(blurred - sharp).mean()
        error_out = np.abs(result - sharp).mean()
        assert error_out < 0.7 * error_in


def test_batch_wiener_keeps_scale_of_rgb_png(tmp_path, psf_file, blurred_pair):
    import skimage.io

    _, blurred = blurred_pair
    rgb = np.stack([blurred, blurred[::-1], blurred[:, ::-1]], axis=-1)
    png = tmp_path / "photo.png"
    skimage.io.imsave(png, (rgb * 255).round().astype(np.uint8), check_contrast=False)

    assert main(["batch", "wiener", "--psf", str(psf_file), str(png), "--output-dir", str(tmp_path)]) == 0

    result = tifffile.imread(tmp_path / "photo_wiener.tif")
    assert result.shape == rgb.shape and result.dtype == np.float32
    assert 100 < result.mean() < 155  # 0..255 scale kept, mean about preserved
    np.testing.assert_allclose(result[..., 0].mean(), rgb[..., 0].mean() * 255, rtol=0.02)


def _run_expecting_error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("napari-deblur: error: ") and err.count("\n") == 1
    return err


def test_batch_rejects_missing_psf(tmp_path, blurred_pair, capsys):
    tif = tmp_path / "a.tif"
    tifffile.imwrite(tif, blurred_pair[1].astype(np.float32))
    err = _run_expecting_error(
        ["batch", "wiener", "--psf", str(tmp_path / "nope.npy"), str(tif), "--output-dir", str(tmp_path / "o")],
        capsys,
    )
    assert "nope.npy" in err and "does not exist" in err
    assert not (tmp_path / "o").exists()


def test_batch_rejects_bad_psf(tmp_path, blurred_pair, capsys):
    tif = tmp_path / "a.tif"
    tifffile.imwrite(tif, blurred_pair[1].astype(np.float32))
    bad = tmp_path / "psf.npy"
    bad.write_text("not a numpy file")
    err = _run_expecting_error(
        ["batch", "wiener", "--psf", str(bad), str(tif), "--output-dir", str(tmp_path / "o")], capsys
    )
    assert "bad PSF file" in err


def test_batch_rejects_missing_input(tmp_path, psf_file, capsys):
    err = _run_expecting_error(
        ["batch", "wiener", "--psf", str(psf_file), str(tmp_path / "gone.tif"), "--output-dir", str(tmp_path)],
        capsys,
    )
    assert "gone.tif" in err


def test_batch_psf_stack_needs_an_index(tmp_path, blurred_pair, capsys):
    tif = tmp_path / "a.tif"
    tifffile.imwrite(tif, blurred_pair[1].astype(np.float32))
    stack = tmp_path / "psfs.npy"
    np.save(stack, np.stack([_gaussian_psf(1.0), _gaussian_psf(1.5)]).astype(np.float32))
    err = _run_expecting_error(
        ["batch", "wiener", "--psf", str(stack), str(tif), "--output-dir", str(tmp_path / "o")], capsys
    )
    assert "--psf-index" in err
    assert main(["batch", "wiener", "--psf", str(stack), "--psf-index", "2", str(tif),
                 "--output-dir", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "a_wiener.tif").is_file()
    capsys.readouterr()
    _run_expecting_error(
        ["batch", "wiener", "--psf", str(stack), "--psf-index", "3", str(tif), "--output-dir", str(tmp_path)],
        capsys,
    )


# --------------------------------------------------------------------------- GUI demo (Xvfb)


@pytest.mark.gui
def test_demo_screenshot_in_a_window(tmp_path):
    if demo.display_missing_reason():
        pytest.skip("needs a display: run under xvfb-run")
    out = tmp_path / "shot.png"
    env = {k: v for k, v in os.environ.items() if k != "QT_QPA_PLATFORM"}
    done = subprocess.run(
        [sys.executable, "-m", "napari_deblur.cli", "demo", "--screenshot", str(out)],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == str(out.resolve())
    _assert_png_not_blank(out)

