"""The ``napari-deblur`` command line: help, the demo without a GUI, ``run`` on files and stacks."""

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
    assert "demo" in done.stdout and "run" in done.stdout
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
        main(["run", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--psf", "--snr-db", "--output-dir", "--blur", "--device", "--scheduler", "--workers"):
        assert option in out


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
    psnr_in, psnr_wiener, psnr_net = (float(p.title.split("PSNR ")[1].split(" dB")[0]) for p in panels[:3])
    assert psnr_wiener > psnr_in + 2.0
    assert psnr_net > psnr_wiener


def test_unknown_sample_is_rejected():
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--no-gui", "--sample", "nope"])
    assert exc.value.code == 2
    with pytest.raises(ValueError, match="unknown demo sample"):
        demo.demo_panels("nope")


# --------------------------------------------------------------------------- run METHOD


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


@pytest.fixture(scope="module")
def edge_stack():
    """(3, 48, 56) float32 stack of blurred random blobs."""
    from scipy import ndimage

    rng = np.random.default_rng(1)
    sharp = (rng.random((3, 48, 56)) > 0.5).astype(np.float32)
    return ndimage.gaussian_filter(sharp, (0, 1.5, 1.5)).astype(np.float32)


def _no_partial_files(folder: Path) -> bool:
    return not any(p.name.endswith(".partial") for p in folder.iterdir())


def test_run_wiener_restores_tif_and_npy(tmp_path, psf_file, blurred_pair, capsys):
    sharp, blurred = blurred_pair
    tif = tmp_path / "cells.tif"
    tifffile.imwrite(tif, blurred.astype(np.float32))
    npy = tmp_path / "stack.npy"
    np.save(npy, blurred)
    out_dir = tmp_path / "out"

    status = main(
        ["run", "wiener", "--psf", str(psf_file), "--snr-db", "40", str(tif), str(npy), "-o", str(out_dir)]
    )

    assert status == 0
    outputs = [out_dir / "cells_wiener.tif", out_dir / "stack_wiener.tif"]
    assert capsys.readouterr().out.split() == [str(p) for p in outputs]
    for path in outputs:
        result = tifffile.imread(path)
        assert result.dtype == np.float32 and result.shape == blurred.shape
        error_in = np.abs(blurred - sharp).mean()
        error_out = np.abs(result - sharp).mean()
        assert error_out < 0.7 * error_in


def test_batch_is_the_same_command_and_keeps_the_scale_of_an_rgb_png(tmp_path, psf_file, blurred_pair):
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


def test_run_gwis_auto_on_a_zarr_stack_writes_zarr_equal_to_the_engine(tmp_path, edge_stack, capsys):
    import zarr

    from napari_deblur.engine import sharpen_gwis

    source = tmp_path / "cells.zarr"
    zarr.save_array(str(source), edge_stack)
    assert main(["run", "gwis", str(source), "-o", str(tmp_path / "out")]) == 0
    result = zarr.open_array(str(tmp_path / "out" / "cells_gwis.zarr"), mode="r")[:]
    expected = sharpen_gwis(edge_stack, "auto")
    np.testing.assert_allclose(result, expected, atol=1e-5)
    assert "100%" in capsys.readouterr().err  # the progress bar reached its end


def test_run_blur_map_of_a_tif_stack_and_format_option(tmp_path, edge_stack):
    from napari_deblur.engine import estimate_blur_map

    tif = tmp_path / "z.tif"
    tifffile.imwrite(tif, edge_stack, photometric="minisblack")
    assert main(["run", "blur-map", str(tif), "-o", str(tmp_path), "--format", "zarr"]) == 0
    import zarr

    result = zarr.open_array(str(tmp_path / "z_blur-map.zarr"), mode="r")[:]
    np.testing.assert_allclose(result, estimate_blur_map(edge_stack), atol=1e-5)


def test_bad_files_are_reported_one_line_each_and_the_others_still_written(tmp_path, edge_stack, capsys):
    good = tmp_path / "good.npy"
    np.save(good, edge_stack)
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"this is not a tiff")
    nan = tmp_path / "nan.npy"
    bad = edge_stack.copy()
    bad[1, 5, 5] = np.nan
    np.save(nan, bad)
    out = tmp_path / "out"

    status = main(
        [
            "run",
            "gwis",
            "--blur",
            "1.5",
            str(corrupt),
            str(tmp_path / "gone.tif"),
            str(nan),
            str(good),
            "-o",
            str(out),
        ]
    )

    assert status == 1
    err_lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err_lines) == 3
    assert "corrupt.tif" in err_lines[0] and "gone.tif" in err_lines[1] and "does not exist" in err_lines[1]
    assert "nan.npy" in err_lines[2] and "NaN" in err_lines[2]
    assert sorted(p.name for p in out.iterdir()) == ["good_gwis.tif"]


def test_ctrl_c_leaves_no_partial_output(tmp_path, edge_stack, monkeypatch, capsys):
    from napari_deblur.engine.core import lazy

    def interrupted(result, write, **_):
        index = next(lazy.plane_slices(tuple(result.shape), result.chunks))
        write(index, np.asarray(result[index]))
        yield lazy.JobProgress(0.3, "plane 1")
        raise KeyboardInterrupt

    monkeypatch.setattr(lazy, "iter_compute_planes", interrupted)
    source = tmp_path / "s.npy"
    np.save(source, edge_stack)
    for fmt in ("tif", "zarr"):
        out = tmp_path / f"out-{fmt}"
        assert main(["run", "gwis", "--blur", "1", str(source), "-o", str(out), "--format", fmt]) == 130
        assert list(out.iterdir()) == []
    assert "interrupted" in capsys.readouterr().err


def test_run_on_local_worker_processes(tmp_path, edge_stack):
    pytest.importorskip("distributed")
    from napari_deblur.engine import sharpen_gwis

    source = tmp_path / "s.tif"
    tifffile.imwrite(source, edge_stack, photometric="minisblack")
    assert main(["run", "gwis", "--blur", "2", "--workers", "2", str(source), "-o", str(tmp_path)]) == 0
    np.testing.assert_allclose(
        tifffile.imread(tmp_path / "s_gwis.tif"), sharpen_gwis(edge_stack, 2.0), atol=1e-5
    )


def _run_expecting_error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("napari-deblur: error: ") and err.count("\n") == 1
    return err


def test_run_rejects_missing_psf(tmp_path, blurred_pair, capsys):
    tif = tmp_path / "a.tif"
    tifffile.imwrite(tif, blurred_pair[1].astype(np.float32))
    err = _run_expecting_error(
        ["run", "wiener", "--psf", str(tmp_path / "nope.npy"), str(tif), "-o", str(tmp_path / "o")], capsys
    )
    assert "nope.npy" in err and "does not exist" in err
    assert not (tmp_path / "o").exists()
    err = _run_expecting_error(["run", "wiener-net", str(tif), "-o", str(tmp_path / "o")], capsys)
    assert "needs a PSF" in err


def test_run_rejects_bad_psf_and_bad_blur(tmp_path, blurred_pair, capsys):
    tif = tmp_path / "a.tif"
    tifffile.imwrite(tif, blurred_pair[1].astype(np.float32))
    bad = tmp_path / "psf.npy"
    bad.write_text("not a numpy file")
    err = _run_expecting_error(
        ["run", "wiener", "--psf", str(bad), str(tif), "-o", str(tmp_path / "o")], capsys
    )
    assert "bad PSF file" in err
    for blur in ("sharp", "-1", "nan"):
        err = _run_expecting_error(
            ["run", "gwis", "--blur", blur, str(tif), "-o", str(tmp_path / "o")], capsys
        )
        assert "--blur" in err


def test_run_psf_stack_needs_an_index(tmp_path, blurred_pair, capsys):
    tif = tmp_path / "a.tif"
    tifffile.imwrite(tif, blurred_pair[1].astype(np.float32))
    stack = tmp_path / "psfs.npy"
    np.save(stack, np.stack([_gaussian_psf(1.0), _gaussian_psf(1.5)]).astype(np.float32))
    assert main(["run", "wiener", "--psf", str(stack), str(tif), "-o", str(tmp_path / "o")]) == 1
    assert "--psf-index" in capsys.readouterr().err
    assert _no_partial_files(tmp_path / "o") and not (tmp_path / "o" / "a_wiener.tif").exists()
    assert (
        main(["run", "wiener", "--psf", str(stack), "--psf-index", "2", str(tif), "-o", str(tmp_path / "o")])
        == 0
    )
    assert (tmp_path / "o" / "a_wiener.tif").is_file()
    capsys.readouterr()
    _run_expecting_error(
        ["run", "wiener", "--psf", str(stack), "--psf-index", "3", str(tif), "-o", str(tmp_path)], capsys
    )


def test_run_a_3d_psf_deconvolves_in_3d_and_a_kernel_stack_says_psf_per_plane(tmp_path, capsys):
    from napari_deblur.engine import wiener_deconvolve, wiener_deconvolve_3d

    rng = np.random.default_rng(4)
    stack = rng.uniform(1, 2, (6, 40, 40)).astype(np.float32)
    tif = tmp_path / "z.tif"
    tifffile.imwrite(tif, stack)
    psf_3d = np.stack([_gaussian_psf(2.0), _gaussian_psf(1.0), _gaussian_psf(2.0)]).astype(np.float32)
    np.save(tmp_path / "psf3d.npy", psf_3d)
    kernels = np.stack([_gaussian_psf(1.0 + 0.1 * z) for z in range(6)]).astype(np.float32)
    np.save(tmp_path / "kernels.npy", kernels)

    assert (
        main(["run", "wiener", "--psf", str(tmp_path / "psf3d.npy"), str(tif), "-o", str(tmp_path / "a")])
        == 0
    )
    out = tifffile.imread(tmp_path / "a" / "z_wiener.tif")
    np.testing.assert_allclose(out, wiener_deconvolve_3d(stack, psf_3d, device="cpu"), rtol=1e-4, atol=1e-4)

    argv = ["run", "wiener", "--psf", str(tmp_path / "kernels.npy"), "--psf-per-plane", str(tif)]
    assert main([*argv, "-o", str(tmp_path / "b")]) == 0
    out = tifffile.imread(tmp_path / "b" / "z_wiener.tif")
    expected = wiener_deconvolve(stack, kernels, psf_per_plane=True, device="cpu")
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    capsys.readouterr()


# --------------------------------------------------------------------------- GUI demo (Xvfb)


@pytest.mark.gui
def test_demo_screenshot_in_a_window(tmp_path):
    if demo.display_missing_reason():
        pytest.skip("needs a display: run under xvfb-run")
    out = tmp_path / "shot.png"
    env = {k: v for k, v in os.environ.items() if k != "QT_QPA_PLATFORM"}
    done = subprocess.run(
        [sys.executable, "-m", "napari_deblur.cli", "demo", "--screenshot", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == str(out.resolve())
    _assert_png_not_blank(out)


def test_run_wiener_net_takes_the_ensemble_size_and_refuses_others(tmp_path, psf_file, blurred_pair, capsys):
    from napari_deblur.cli import WIENER_NET_ENSEMBLES
    from napari_deblur.engine import wiener_net_deconvolve
    from napari_deblur.engine.methods import wiener_net

    assert WIENER_NET_ENSEMBLES == wiener_net.ENSEMBLE_SIZES
    _, blurred = blurred_pair
    tif = tmp_path / "a.tif"
    tifffile.imwrite(tif, blurred.astype(np.float32))
    assert (
        main(
            [
                "run",
                "wiener-net",
                "--psf",
                str(psf_file),
                "--ensemble",
                "8",
                str(tif),
                "-o",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    written = tifffile.imread(tmp_path / "o" / "a_wiener-net.tif")
    psf = np.load(psf_file)
    np.testing.assert_allclose(written, wiener_net_deconvolve(blurred, psf, ensemble=8), atol=1e-5)
    assert np.abs(written - wiener_net_deconvolve(blurred, psf, ensemble=1)).max() > 1e-4
    with pytest.raises(SystemExit) as exc:
        main(["run", "wiener-net", "--psf", str(psf_file), "--ensemble", "3", str(tif), "-o", str(tmp_path)])
    assert exc.value.code == 2 and "--ensemble" in capsys.readouterr().err


def test_run_refuses_a_photo_as_psf_unless_forced(tmp_path, blurred_pair, capsys):
    import skimage.data

    _, blurred = blurred_pair
    tif = tmp_path / "a.tif"
    tifffile.imwrite(tif, blurred.astype(np.float32))
    photo = tmp_path / "photo_psf.npy"
    np.save(photo, skimage.data.camera()[200:216, 200:216].astype(np.float32))  # small enough, not a kernel
    err = _run_expecting_error(
        ["run", "wiener", "--psf", str(photo), str(tif), "-o", str(tmp_path / "o")], capsys
    )
    assert "does not look like a blur kernel" in err and "--force" in err
    assert not (tmp_path / "o").exists()

    big = tmp_path / "big_psf.npy"
    np.save(big, _gaussian_psf(sigma=6.0, size=33))  # a kernel, but wider than a quarter of 64 px
    assert main(["run", "wiener", "--psf", str(big), str(tif), "-o", str(tmp_path / "o")]) == 1
    line = capsys.readouterr().err
    assert "larger than a quarter of the image's side" in line and "a.tif" in line
    assert not (tmp_path / "o" / "a_wiener.tif").exists()

    assert main(["run", "wiener", "--psf", str(photo), "--force", str(tif), "-o", str(tmp_path / "o")]) == 0
    assert tifffile.imread(tmp_path / "o" / "a_wiener.tif").shape == blurred.shape


def test_run_accepts_every_kernel_family():
    from napari_deblur.cli import _kernel_problem
    from napari_deblur.engine import disk_psf, gaussian_psf, motion_psf, random_motion_psf, ring_psf

    kernels = [
        gaussian_psf(0.5),
        gaussian_psf(3.0),
        disk_psf(3),
        disk_psf(9),
        ring_psf(5),
        ring_psf(12),
        motion_psf(15, 30),
        motion_psf(31, 45),
        random_motion_psf(25, rng=np.random.default_rng(1)),
        np.ones((1, 1)),
    ]
    for kernel in kernels:
        assert _kernel_problem(kernel, "k") is None, kernel.shape


def _shaken_frames(tmp_path):
    """Two frames of a train-split crop shaken by one 9 px motion: (file, sharp core, kernel)."""
    from scipy.signal import fftconvolve
    from skimage import data

    from napari_deblur.engine import motion_psf

    sharp = data.astronaut()[80:260, 120:300].mean(axis=-1) / 255.0  # train split
    kernel = motion_psf(9, 20, 11)
    blurred = fftconvolve(sharp, kernel, mode="valid").astype(np.float32)
    stack = tmp_path / "frames.tif"
    tifffile.imwrite(stack, np.stack([blurred, blurred]))
    return stack, blurred, sharp[5:-5, 5:-5], kernel


def test_run_blind_estimates_the_kernel_of_each_plane_and_sharpens(tmp_path, capsys):
    """'blind' needs no PSF: a shaken train-split crop comes out closer to the sharp one, and the
    kernel each frame used is written beside it."""
    from napari_deblur.engine import kernel_similarity

    stack, blurred, truth, kernel = _shaken_frames(tmp_path)

    assert main(["run", "blind", str(stack), "-o", str(tmp_path / "out"), "--ensemble", "1"]) == 0

    result = tifffile.imread(tmp_path / "out" / "frames_blind.tif")
    assert result.shape == (2,) + blurred.shape and result.dtype == np.float32
    core = (slice(12, -12), slice(12, -12))
    for plane in result:
        assert np.abs(plane - truth)[core].mean() < 0.8 * np.abs(blurred - truth)[core].mean()
    kernels = tifffile.imread(tmp_path / "out" / "frames_blind_psf.tif")
    assert kernels.ndim == 3 and kernels.shape[0] == 2 and kernels.shape[1] == kernels.shape[2]
    assert kernels.dtype == np.float32 and kernels.min() >= 0
    np.testing.assert_allclose(kernels.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    for estimate in kernels:
        assert kernel_similarity(estimate, kernel) > 0.8
    assert capsys.readouterr().out.split() == [
        str(tmp_path / "out" / "frames_blind.tif"),
        str(tmp_path / "out" / "frames_blind_psf.tif"),
    ]


def test_run_blind_never_replaces_a_kernel_file_it_did_not_write(tmp_path, capsys):
    """A user's file where the kernels would go stops that input before any work; it is untouched."""
    stack, *_ = _shaken_frames(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    mine = out / "frames_blind_psf.tif"
    mine.write_bytes(b"my own notes")

    assert main(["run", "blind", str(stack), "-o", str(out), "--ensemble", "1", "--overwrite"]) == 1

    assert "frames_blind_psf.tif" in capsys.readouterr().err
    assert mine.read_bytes() == b"my own notes"
    assert sorted(p.name for p in out.iterdir()) == ["frames_blind_psf.tif"]


def test_run_blind_on_worker_processes_writes_the_kernels_they_estimated(tmp_path, capsys):
    """Planes estimated in other processes send their kernels back: the kernel file is written."""
    pytest.importorskip("distributed")
    from napari_deblur.engine import kernel_similarity

    stack, blurred, _, kernel = _shaken_frames(tmp_path)
    out = tmp_path / "out"

    assert main(["run", "blind", str(stack), "-o", str(out), "--ensemble", "1", "--workers", "1"]) == 0

    assert tifffile.imread(out / "frames_blind.tif").shape == (2,) + blurred.shape
    kernels = tifffile.imread(out / "frames_blind_psf.tif")
    assert kernels.shape[0] == 2 and kernels.dtype == np.float32
    np.testing.assert_allclose(kernels.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    for estimate in kernels:
        assert kernel_similarity(estimate, kernel) > 0.8
    assert capsys.readouterr().out.split() == [
        str(out / "frames_blind.tif"),
        str(out / "frames_blind_psf.tif"),
    ]


def test_run_defocus_writes_what_the_engine_gives_for_auto_and_a_level(tmp_path, capsys, edge_stack):
    from napari_deblur.engine import deblur_defocus

    source = tmp_path / "cells.tif"
    tifffile.imwrite(source, edge_stack, photometric="minisblack")
    out = tmp_path / "out"
    assert main(["run", "defocus", str(source), "-o", str(out), "--ensemble", "1"]) == 0
    np.testing.assert_allclose(
        tifffile.imread(out / "cells_defocus.tif"), deblur_defocus(edge_stack, ensemble=1), atol=1e-5
    )
    arguments = ["--blur", "1.5", "--psf-model", "disk", "--ensemble", "1", "--overwrite"]
    assert main(["run", "defocus", str(source), "-o", str(out), *arguments]) == 0
    np.testing.assert_allclose(
        tifffile.imread(out / "cells_defocus.tif"),
        deblur_defocus(edge_stack, 1.5, psf_model="disk", ensemble=1),
        atol=1e-5,
    )
    assert capsys.readouterr().out.split()[-1] == str(out / "cells_defocus.tif")
