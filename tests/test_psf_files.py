"""PSF file reading/writing and the npe2 reader/writer contributions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_deblur.io.psf_files import (
    napari_get_reader,
    napari_write_psf,
    read_psf_file,
    write_psf_file,
)
from napari_deblur.layer_roles import is_psf_metadata

KERNELS_DIR = Path("/work/shared/eval/kernels")
LEVIN = KERNELS_DIR / "Levin09.mat"
USRNET = KERNELS_DIR / "kernels_12.mat"
needs_eval_kernels = pytest.mark.skipif(
    not (LEVIN.is_file() and USRNET.is_file()), reason="evaluation kernels not present on this machine"
)

LEVIN_SIZES = (19, 17, 15, 27, 13, 21, 23, 23)


def _centroid_offset(kernel: np.ndarray) -> float:
    """Distance (px) between a kernel's centre of mass and its frame's centre pixel."""
    y, x = np.indices(kernel.shape)
    total = kernel.sum()
    cy, cx = (y * kernel).sum() / total, (x * kernel).sum() / total
    return float(np.hypot(cy - (kernel.shape[0] - 1) / 2, cx - (kernel.shape[1] - 1) / 2))


def _asymmetric_kernel(h: int = 7, w: int = 5) -> np.ndarray:
    kernel = np.zeros((h, w))
    kernel[1, 3] = 3.0
    kernel[h // 2, w // 2] = 2.0
    kernel[h - 2, 0] = 1.0
    return kernel


def _write_v73(path: Path, variables: dict[str, np.ndarray]) -> None:
    """A minimal MATLAB v7.3 file: HDF5 with a 512-byte text header, arrays stored column-major."""
    import h5py

    with h5py.File(path, "w", userblock_size=512) as h5:
        for name, value in variables.items():
            dataset = h5.create_dataset(name, data=np.asarray(value, dtype=np.float64).T)
            dataset.attrs["MATLAB_class"] = np.bytes_(b"double")
    with open(path, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created by: napari-deblur tests".ljust(128))


# --------------------------------------------------------------------------- real MATLAB files


@needs_eval_kernels
def test_levin_v73_cell_array_opens_as_one_centred_stack():
    psfs = read_psf_file(LEVIN)
    assert psfs.dtype == np.float32
    assert psfs.shape == (8, 27, 27)  # common odd size = the largest kernel
    np.testing.assert_allclose(psfs.sum(axis=(1, 2)), 1.0, atol=1e-5)
    assert psfs.min() >= 0
    for index, size in enumerate(LEVIN_SIZES):
        pad = (27 - size) // 2
        kernel = psfs[index]
        # zero padding around the original kernel, which stays in the middle
        assert np.count_nonzero(kernel[:pad]) == 0 and np.count_nonzero(kernel[27 - pad :]) == 0
        assert _centroid_offset(kernel) < 4.5


@needs_eval_kernels
def test_usrnet_v5_cell_array_opens_as_twelve_kernels():
    psfs = read_psf_file(USRNET)
    assert psfs.dtype == np.float32
    assert psfs.shape == (12, 25, 25)
    np.testing.assert_allclose(psfs.sum(axis=(1, 2)), 1.0, atol=1e-5)
    # the 8 Gaussian kernels are centred exactly
    for kernel in psfs[:8]:
        assert _centroid_offset(kernel) < 0.01
    for kernel in psfs:
        assert _centroid_offset(kernel) < 4.5


@needs_eval_kernels
def test_hdf5_kernels_are_transposed_to_matlab_orientation():
    # kernels_12 (v5) index 8 and 9 are Levin kernels 8 and 7 (v7.3): equal only if the
    # column-major HDF5 arrays are transposed and both are centred the same way.
    levin = read_psf_file(LEVIN)
    usrnet = read_psf_file(USRNET)
    np.testing.assert_allclose(levin[7, 2:-2, 2:-2], usrnet[8, 1:-1, 1:-1], atol=1e-6)
    np.testing.assert_allclose(levin[6, 2:-2, 2:-2], usrnet[9, 1:-1, 1:-1], atol=1e-6)
    assert not np.allclose(levin[7, 2:-2, 2:-2], usrnet[8, 1:-1, 1:-1].T, atol=1e-6)


@needs_eval_kernels
def test_reader_layer_for_levin_file():
    reader = napari_get_reader(str(LEVIN))
    assert callable(reader)
    layers = reader(str(LEVIN))
    assert len(layers) == 1
    data, attributes, layer_type = layers[0]
    assert layer_type == "image"
    assert data.shape == (8, 27, 27)
    assert attributes["name"] == "Levin09"
    meta = attributes["metadata"]
    assert is_psf_metadata(meta)
    assert meta["source"] == str(LEVIN)
    assert len(meta["blur_levels_px"]) == 8
    assert all(level > 0 for level in meta["blur_levels_px"])
    assert meta["blur_level_px"] == pytest.approx(np.mean(meta["blur_levels_px"]))


# --------------------------------------------------------------------------- MATLAB variants


def test_v5_single_kernel_stays_2d(tmp_path):
    import scipy.io

    kernel = _asymmetric_kernel()
    path = tmp_path / "blur.mat"
    scipy.io.savemat(path, {"psf": kernel})
    psf = read_psf_file(path)
    assert psf.shape == kernel.shape and psf.dtype == np.float32
    np.testing.assert_allclose(psf, kernel / kernel.sum(), rtol=1e-6)


def test_v73_single_kernel_is_transposed(tmp_path):
    kernel = _asymmetric_kernel()
    path = tmp_path / "blur73.mat"
    _write_v73(path, {"kernel": kernel})
    psf = read_psf_file(path)
    np.testing.assert_allclose(psf, kernel / kernel.sum(), rtol=1e-6)


def test_v5_numeric_3d_array_is_a_kernel_stack_last_axis_first(tmp_path):
    import scipy.io

    stack = np.stack([_asymmetric_kernel(), 2 * _asymmetric_kernel()[::-1]], axis=-1)  # MATLAB (y, x, k)
    path = tmp_path / "stack.mat"
    scipy.io.savemat(path, {"kernels": stack})
    psfs = read_psf_file(path)
    assert psfs.shape == (2, 7, 5)
    np.testing.assert_allclose(psfs.sum(axis=(1, 2)), 1.0, atol=1e-6)
    np.testing.assert_allclose(psfs[1], psfs[0][::-1], atol=1e-7)


def test_v5_cell_with_even_and_odd_kernels_is_padded_to_common_odd_size(tmp_path):
    import scipy.io

    cell = np.empty((1, 3), dtype=object)
    cell[0, 0] = np.ones((3, 3))
    cell[0, 1] = np.ones((4, 4))
    cell[0, 2] = np.ones((2, 6))
    path = tmp_path / "mixed.mat"
    scipy.io.savemat(path, {"kernels": cell})
    psfs = read_psf_file(path)
    assert psfs.shape == (3, 7, 7)
    np.testing.assert_allclose(psfs.sum(axis=(1, 2)), 1.0, atol=1e-6)
    assert _centroid_offset(psfs[0]) < 1e-6
    assert _centroid_offset(psfs[1]) <= np.sqrt(0.5) + 1e-6  # even size: half a pixel off at most


def test_mat_variable_choice(tmp_path):
    import scipy.io

    kernel = _asymmetric_kernel()
    named = tmp_path / "named.mat"
    scipy.io.savemat(named, {"image": np.ones((40, 40)), "PSF": kernel, "label": "hello"})
    np.testing.assert_allclose(read_psf_file(named), kernel / kernel.sum(), rtol=1e-6)

    only = tmp_path / "only.mat"
    scipy.io.savemat(only, {"blur_estimate": kernel, "note": "a comment"})
    np.testing.assert_allclose(read_psf_file(only), kernel / kernel.sum(), rtol=1e-6)

    ambiguous = tmp_path / "ambiguous.mat"
    scipy.io.savemat(ambiguous, {"a": kernel, "b": kernel})
    with pytest.raises(ValueError, match="several numeric variables"):
        read_psf_file(ambiguous)


def test_mat_wrong_type_variables_raise(tmp_path):
    import scipy.io

    text_only = tmp_path / "text.mat"
    scipy.io.savemat(text_only, {"psf": "not a kernel"})
    with pytest.raises(ValueError, match="no numeric or cell-array variable"):
        read_psf_file(text_only)

    cell = np.empty((1, 2), dtype=object)
    cell[0, 0] = np.ones((3, 3))
    cell[0, 1] = "text"
    text_cell = tmp_path / "textcell.mat"
    scipy.io.savemat(text_cell, {"kernels": cell})
    with pytest.raises(ValueError, match="real numbers"):
        read_psf_file(text_cell)


@needs_eval_kernels
@pytest.mark.parametrize("source", [LEVIN, USRNET], ids=["v73", "v5"])
def test_truncated_mat_raises_value_error(tmp_path, source):
    path = tmp_path / "truncated.mat"
    path.write_bytes(source.read_bytes()[: source.stat().st_size // 3])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_psf_file(path)


def test_garbage_mat_raises_value_error(tmp_path):
    path = tmp_path / "garbage.mat"
    path.write_bytes(b"this is not a MATLAB file at all" * 10)
    with pytest.raises(ValueError, match="garbage.mat"):
        read_psf_file(path)


# --------------------------------------------------------------------------- npy / tif / png


def test_npy_stack_is_normalised_per_plane(tmp_path):
    stack = np.stack([np.ones((5, 5)), 4 * np.ones((5, 5)), _asymmetric_kernel(5, 5)])
    path = tmp_path / "psf_stack.npy"
    np.save(path, stack)
    psfs = read_psf_file(path)
    assert psfs.shape == (3, 5, 5) and psfs.dtype == np.float32
    np.testing.assert_allclose(psfs.sum(axis=(1, 2)), 1.0, atol=1e-6)


def test_png_kernel_grey_and_rgb(tmp_path):
    import imageio.v3 as iio

    kernel = np.zeros((9, 9), dtype=np.uint8)
    kernel[4, 2:7] = 200
    kernel[3, 4] = 55
    grey = tmp_path / "motion_kernel.png"
    iio.imwrite(grey, kernel)
    psf = read_psf_file(grey)
    assert psf.shape == (9, 9)
    np.testing.assert_allclose(psf, kernel / kernel.sum(), rtol=1e-6)

    rgb = tmp_path / "motion_kernel_rgb.png"
    iio.imwrite(rgb, np.repeat(kernel[..., np.newaxis], 3, axis=-1))
    np.testing.assert_allclose(read_psf_file(rgb), psf, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.full((5, 5), np.nan), "NaN"),
        (-np.ones((5, 5)), "positive sum"),
        (np.zeros((5, 5)), "positive sum"),
        (np.zeros((0, 5)), "empty"),
        (np.ones((2, 2, 3, 3)), "2D"),
        (np.ones((5, 5), dtype=complex), "real numbers"),
        (np.stack([np.ones((3, 3)), np.zeros((3, 3))]), "plane 1"),
    ],
    ids=["nan", "negative", "zero", "empty", "4d", "complex", "zero-plane"],
)
def test_unusable_npy_content_raises(tmp_path, array, message):
    path = tmp_path / "bad_psf.npy"
    np.save(path, array)
    with pytest.raises(ValueError, match=message):
        read_psf_file(path)


def test_pickled_npy_is_refused_without_suggesting_allow_pickle(tmp_path):
    path = tmp_path / "pickled_psf.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickled_psf.npy.*Python objects") as error:
        read_psf_file(path)
    assert "allow_pickle" not in str(error.value)


@pytest.mark.parametrize("suffix", [".npy", ".tif", ".png"])
def test_corrupt_image_files_raise_value_error(tmp_path, suffix):
    good = tmp_path / f"good_psf{suffix}"
    write = {
        ".npy": lambda p: np.save(p, np.ones((16, 16))),
        ".tif": lambda p: write_psf_file(p, np.ones((16, 16))),
    }
    if suffix == ".png":
        import imageio.v3 as iio

        iio.imwrite(good, np.full((16, 16), 100, dtype=np.uint8))
    else:
        write[suffix](good)
    truncated = tmp_path / f"truncated_psf{suffix}"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(ValueError, match="truncated_psf"):
        read_psf_file(truncated)
    garbage = tmp_path / f"garbage_psf{suffix}"
    garbage.write_bytes(b"\x00\x01garbage" * 20)
    with pytest.raises(ValueError, match="garbage_psf"):
        read_psf_file(garbage)


def test_missing_file_and_unknown_extension_raise(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        read_psf_file(tmp_path / "missing_psf.npy")
    other = tmp_path / "psf.csv"
    other.write_text("1,2,3")
    with pytest.raises(ValueError, match="unsupported extension"):
        read_psf_file(other)


# --------------------------------------------------------------------------- writer round trip


@pytest.mark.parametrize("suffix", [".tif", ".tiff", ".npy"])
@pytest.mark.parametrize("shape", [(9, 7), (3, 9, 9), (4, 11, 11)], ids=["2d", "3-plane", "4-plane"])
def test_writer_then_reader_round_trip(tmp_path, suffix, shape):
    rng = np.random.default_rng(0)
    data = rng.uniform(0.0, 1.0, shape).astype(np.float32)
    data /= data.sum(axis=(-2, -1), keepdims=True)
    path = tmp_path / f"saved_psf{suffix}"
    written = napari_write_psf(str(path), data, {"name": "PSF", "metadata": {}})
    assert written == [str(path)]
    reader = napari_get_reader(str(path))
    assert callable(reader)
    read_back = reader(str(path))[0][0]
    assert read_back.shape == data.shape
    np.testing.assert_allclose(read_back, data, rtol=1e-5, atol=1e-8)


def test_writer_refuses_other_extensions_and_bad_data(tmp_path):
    with pytest.raises(ValueError, match=r"\.png"):
        write_psf_file(tmp_path / "psf.png", np.ones((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        write_psf_file(tmp_path / "psf.npy", np.full((3, 3), np.nan))
    with pytest.raises(ValueError, match="2D"):
        write_psf_file(tmp_path / "psf.npy", np.ones(5))
    assert write_psf_file(tmp_path / "psf_no_extension", np.ones((3, 3))).endswith(".tif")


# --------------------------------------------------------------------------- npe2 reader contract


@pytest.mark.parametrize(
    "name", ["photo.tif", "data.csv", "image.npy", "scan.png", "notes.txt", "psf_table.csv"]
)
def test_get_reader_declines_other_files(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"whatever")
    assert napari_get_reader(str(path)) is None


@pytest.mark.parametrize("name", ["my_PSF.tif", "Kernel_03.npy", "psf.tiff", "estimated-kernel.png", "x.MAT"])
def test_get_reader_accepts_psf_names_case_insensitive(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"whatever")
    assert callable(napari_get_reader(str(path)))
    assert callable(napari_get_reader(path))  # PathLike too


def test_get_reader_declines_directories_lists_and_junk(tmp_path):
    folder = tmp_path / "psf_folder.mat"
    folder.mkdir()
    first, second = tmp_path / "a_psf.npy", tmp_path / "b_psf.npy"
    np.save(first, np.ones((3, 3)))
    np.save(second, np.ones((3, 3)))
    assert napari_get_reader(str(folder)) is None
    assert napari_get_reader([str(first), str(second)]) is None
    assert napari_get_reader([]) is None
    assert napari_get_reader(None) is None
    assert napari_get_reader(42) is None
    assert napari_get_reader(str(tmp_path / "missing_psf.npy")) is None
    assert napari_get_reader("bad\x00path_psf.npy") is None
    reader = napari_get_reader([str(first)])  # a one-element list is one path
    assert callable(reader)
    np.testing.assert_allclose(reader([str(first)])[0][0], np.full((3, 3), 1 / 9), rtol=1e-6)


def test_reader_function_raises_value_error_for_corrupt_file(tmp_path):
    path = tmp_path / "broken_kernel.npy"
    path.write_bytes(b"\x93NUMPY broken")
    reader = napari_get_reader(str(path))
    assert callable(reader)
    with pytest.raises(ValueError, match="broken_kernel.npy"):
        reader(str(path))


def test_reader_layer_attributes_for_a_2d_psf(tmp_path):
    path = tmp_path / "Gauss_PSF.npy"
    np.save(path, _asymmetric_kernel())
    [(data, attributes, layer_type)] = napari_get_reader(str(path))(str(path))
    assert layer_type == "image" and data.ndim == 2
    assert attributes["name"] == "Gauss_PSF"
    assert attributes["colormap"] == "magma"
    assert is_psf_metadata(attributes["metadata"])
    assert isinstance(attributes["metadata"]["blur_level_px"], float)
    assert "blur_levels_px" not in attributes["metadata"]


def test_manifest_routes_psf_files_to_this_reader(tmp_path):
    import npe2

    path = tmp_path / "camera_psf.npy"
    np.save(path, np.ones((5, 5)))
    npe2.PluginManager.instance().discover()
    layers, contribution = npe2.read_get_reader(str(path), plugin_name="napari-deblur")
    assert contribution.command == "napari-deblur.get_psf_reader"
    assert is_psf_metadata(layers[0][1]["metadata"])
    np.testing.assert_allclose(np.asarray(layers[0][0]).sum(), 1.0, rtol=1e-6)

    manifest = npe2.PluginManager.instance().get_manifest("napari-deblur")
    patterns = {p for reader in manifest.contributions.readers for p in reader.filename_patterns}
    assert "*.mat" in patterns
    assert not any(p in patterns for p in ("*.tif", "*.npy", "*.png"))  # plain images stay napari's


def test_module_imports_no_qt_or_napari():
    code = (
        "import sys, napari_deblur.io.psf_files, napari_deblur.sample_data; "
        "bad = [m for m in ('napari', 'qtpy', 'PyQt6', 'magicgui', 'torch') if m in sys.modules]; "
        "sys.exit(', '.join(bad) or None)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"heavy modules imported at module top: {result.stderr or result.stdout}"
