"""Hostile PSF files: tiny files that declare huge sizes, zip bombs, corrupt headers.

Every file is made here and is at most a few kB; no test allocates more than a
few MB. Each must give a ValueError that names the file, before the declared
size is allocated (the readers check headers first; a small ``max_elements``
stands in for a large file where the check is on inflated data).
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from napari_deblur.io.psf_files import (
    MAX_PSF_ELEMENTS,
    MAX_PSF_SIDE,
    napari_get_reader,
    read_psf_file,
)

# --------------------------------------------------------------------------- MATLAB v5, by hand

_MI_INT8, _MI_INT32, _MI_UINT32, _MI_DOUBLE, _MI_MATRIX, _MI_COMPRESSED = 1, 5, 6, 9, 14, 15
_MX_CELL, _MX_DOUBLE = 1, 6


def _element(data_type: int, payload: bytes) -> bytes:
    return struct.pack("<II", data_type, len(payload)) + payload + b"\0" * (-len(payload) % 8)


def _matrix(matrix_class: int, dims, name: str = "", body: bytes = b"") -> bytes:
    """An miMATRIX element (little-endian); ``body`` is the real part or the cells."""
    flags = _element(_MI_UINT32, struct.pack("<II", matrix_class, 0))
    shape = _element(_MI_INT32, struct.pack(f"<{len(dims)}i", *dims))
    return _element(_MI_MATRIX, flags + shape + _element(_MI_INT8, name.encode()) + body)


def _compressed(element: bytes) -> bytes:
    payload = zlib.compress(element)
    return struct.pack("<II", _MI_COMPRESSED, len(payload)) + payload  # never padded


def _v5_file(path: Path, *elements: bytes) -> Path:
    header = b"MATLAB 5.0 MAT-file, written by napari-deblur's hostile-file tests".ljust(116)
    path.write_bytes(header + b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM" + b"".join(elements))
    return path


def _doubles(values: np.ndarray) -> bytes:
    return _element(_MI_DOUBLE, np.asarray(values, "<f8").ravel(order="F").tobytes())


def test_hand_made_v5_file_reads_back(tmp_path):
    """The helpers write a valid file: the refusals below are about size, not format."""
    kernel = np.arange(1.0, 10.0).reshape(3, 3)
    plain = _v5_file(tmp_path / "plain.mat", _matrix(_MX_DOUBLE, (3, 3), "psf", _doubles(kernel)))
    np.testing.assert_allclose(read_psf_file(plain), kernel / kernel.sum(), rtol=1e-6)
    packed = _v5_file(
        tmp_path / "packed.mat", _compressed(_matrix(_MX_DOUBLE, (3, 3), "psf", _doubles(kernel)))
    )
    np.testing.assert_allclose(read_psf_file(packed), kernel / kernel.sum(), rtol=1e-6)


@pytest.mark.parametrize(
    "element",
    [
        _matrix(_MX_DOUBLE, (200_000, 20_000), "psf"),  # 4e9 doubles, no data
        _matrix(_MX_CELL, (100_000, 20_000), "kernels"),  # 2e9 cells: 14.9 GiB of object pointers
        _matrix(_MX_CELL, (1, 1), "kernels", _matrix(_MX_CELL, (100_000, 20_000))),  # nested
        _compressed(_matrix(_MX_CELL, (100_000, 20_000), "kernels")),
        _matrix(_MX_DOUBLE, (3, MAX_PSF_SIDE + 1), "psf"),  # one axis too long
    ],
    ids=["double", "cell", "nested-cell", "compressed-cell", "long-axis"],
)
def test_v5_mat_declaring_a_huge_array_is_refused(tmp_path, element):
    path = _v5_file(tmp_path / "huge_declared.mat", element)
    assert path.stat().st_size < 1024
    with pytest.raises(ValueError, match=r"huge_declared\.mat.*declares"):
        read_psf_file(path)


def test_v5_zip_bomb_is_refused_while_inflating(tmp_path):
    """512 kB of zeros compressed to about 500 bytes; the budget for 1000 values is 72 kB."""
    zeros = _matrix(_MX_DOUBLE, (256, 256), "psf", _doubles(np.zeros((256, 256))))
    path = _v5_file(tmp_path / "bomb.mat", _compressed(zeros))
    assert path.stat().st_size < 2048
    with pytest.raises(ValueError, match=r"bomb\.mat.*inflate"):
        read_psf_file(path, max_elements=1000)


def test_v5_corrupt_compressed_data_is_a_value_error(tmp_path):
    packed = bytearray(_compressed(_matrix(_MX_DOUBLE, (8, 8), "psf", _doubles(np.ones((8, 8))))))
    packed[20:30] = b"\xff" * 10
    path = _v5_file(tmp_path / "corrupt_zlib.mat", bytes(packed))
    with pytest.raises(ValueError, match=r"corrupt_zlib\.mat"):
        read_psf_file(path)


def test_v5_truncated_element_is_a_value_error(tmp_path):
    whole = _matrix(_MX_DOUBLE, (8, 8), "psf", _doubles(np.ones((8, 8))))
    path = _v5_file(tmp_path / "cut.mat", whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=r"cut\.mat.*truncated or corrupt"):
        read_psf_file(path)


def test_v5_cell_stack_larger_than_the_budget_is_refused(tmp_path):
    """Cells of 1x1 and 41x41 kernels pad to a 3 x 41 x 41 stack: over a 3000-value budget."""
    cells = b"".join(
        _matrix(_MX_DOUBLE, shape, "", _doubles(np.ones(shape))) for shape in [(1, 1), (1, 1), (41, 41)]
    )
    path = _v5_file(tmp_path / "padded.mat", _matrix(_MX_CELL, (1, 3), "kernels", cells))
    with pytest.raises(ValueError, match=r"padded\.mat.*padded to one stack"):
        read_psf_file(path, max_elements=3000)
    assert read_psf_file(path).shape == (3, 41, 41)


# --------------------------------------------------------------------------- MATLAB v7.3 (HDF5)


def _v73_header(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, written by napari-deblur's hostile-file tests".ljust(128))


def test_v73_sparse_chunked_dataset_declaring_80_gb_is_refused(tmp_path):
    import h5py

    path = tmp_path / "sparse_psf.mat"
    with h5py.File(path, "w", userblock_size=512) as h5:
        dataset = h5.create_dataset(
            "psf", shape=(100_000, 100_000), dtype="f8", chunks=(64, 64), compression="gzip"
        )
        dataset.attrs["MATLAB_class"] = np.bytes_(b"double")
    _v73_header(path)
    assert path.stat().st_size < 16_384  # nothing written: every chunk is the fill value
    with pytest.raises(ValueError, match=r"sparse_psf\.mat.*declares 100000 x 100000"):
        read_psf_file(path)


def test_v73_cell_pointing_at_a_huge_dataset_is_refused(tmp_path):
    import h5py

    path = tmp_path / "cell_psf.mat"
    with h5py.File(path, "w", userblock_size=512) as h5:
        refs = h5.create_group("#refs#")
        small = refs.create_dataset("a", data=np.ones((3, 3)))
        huge = refs.create_dataset("b", shape=(50_000, 50_000), dtype="f8", chunks=(64, 64))
        for dataset in (small, huge):
            dataset.attrs["MATLAB_class"] = np.bytes_(b"double")
        cell = h5.create_dataset("kernels", data=np.array([[small.ref], [huge.ref]], dtype=h5py.ref_dtype))
        cell.attrs["MATLAB_class"] = np.bytes_(b"cell")
    _v73_header(path)
    with pytest.raises(ValueError, match=r"cell_psf\.mat.*declares 50000 x 50000"):
        read_psf_file(path)


# --------------------------------------------------------------------------- TIFF


def _patch_tiff_tag(path: Path, tag_name: str, value: int) -> None:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags[tag_name]
        offset, dtype = tag.valueoffset, tag.dtype
    fmt = {3: "<H", 4: "<I"}[int(dtype)]
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(struct.pack(fmt, value))


def test_tiff_header_claiming_40000_squared_is_refused(tmp_path):
    import tifffile

    path = tmp_path / "claims_psf.tif"
    tifffile.imwrite(path, np.ones((16, 16), np.float32), compression="zlib")
    _patch_tiff_tag(path, "ImageWidth", 40_000)
    _patch_tiff_tag(path, "ImageLength", 40_000)
    with pytest.raises(ValueError, match=r"claims_psf\.tif.*declares 40000 x 40000"):
        read_psf_file(path)


def test_tiff_deflate_segment_inflating_beyond_its_page_is_refused(tmp_path):
    """A 16x16 uint8 page whose strip inflates to 1 MB (about 1 kB compressed)."""
    import tifffile

    path = tmp_path / "bomb_psf.tif"
    tifffile.imwrite(path, np.ones((16, 16), np.uint8), compression="zlib", rowsperstrip=16)
    bomb = zlib.compress(b"\0" * 2**20, 9)
    offset = path.stat().st_size
    with open(path, "ab") as fh:
        fh.write(bomb)
    _patch_tiff_tag(path, "StripOffsets", offset)
    _patch_tiff_tag(path, "StripByteCounts", len(bomb))
    assert path.stat().st_size < 4096
    with pytest.raises(ValueError, match=r"bomb_psf\.tif.*inflates beyond"):
        read_psf_file(path)


def test_tiff_over_a_small_budget_is_refused_and_reads_within_it(tmp_path):
    import tifffile

    path = tmp_path / "stack_psf.tif"
    tifffile.imwrite(path, np.ones((4, 9, 9), np.float32), photometric="minisblack")
    with pytest.raises(ValueError, match=r"stack_psf\.tif.*declares 4 x 9 x 9"):
        read_psf_file(path, max_elements=100)
    with pytest.raises(ValueError, match=r"stack_psf\.tif"):
        read_psf_file(path, max_side=8)
    assert read_psf_file(path, max_elements=324, max_side=9).shape == (4, 9, 9)


# --------------------------------------------------------------------------- NumPy


def _npy_header(shape, dtype="<f8") -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": tuple(shape)}).encode()
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def test_npy_header_declaring_a_huge_array_is_refused(tmp_path):
    path = tmp_path / "huge_psf.npy"
    path.write_bytes(_npy_header((100_000, 100_000)) + b"\0" * 64)
    with pytest.raises(ValueError, match=r"huge_psf\.npy.*declares 100000 x 100000"):
        read_psf_file(path)


def test_truncated_npy_is_refused_before_reading(tmp_path):
    path = tmp_path / "short_psf.npy"
    path.write_bytes(_npy_header((512, 512)) + b"\0" * 16)
    with pytest.raises(ValueError, match=r"short_psf\.npy.*truncated") as error:
        read_psf_file(path)
    assert "allow_pickle" not in str(error.value)


@pytest.mark.parametrize(
    "content",
    [b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f8'}", b"\x93NUMPY\x09\x00" + b"\0" * 32, b"\x93NUM"],
    ids=["bad-dict", "bad-version", "short-magic"],
)
def test_corrupt_npy_headers_are_value_errors_naming_the_file(tmp_path, content):
    path = tmp_path / "broken_psf.npy"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"broken_psf\.npy") as error:
        read_psf_file(path)
    assert "allow_pickle" not in str(error.value)


# --------------------------------------------------------------------------- PNG


def _png_with_size(path: Path, width: int, height: int) -> Path:
    """A real 8x8 grey PNG whose IHDR then claims ``width`` x ``height`` (CRC recomputed)."""
    import imageio.v3 as iio

    iio.imwrite(path, np.full((8, 8), 100, np.uint8))
    data = bytearray(path.read_bytes())
    start = data.index(b"IHDR")
    data[start + 4 : start + 12] = struct.pack(">II", width, height)
    data[start + 17 : start + 21] = struct.pack(">I", zlib.crc32(bytes(data[start : start + 17])))
    path.write_bytes(bytes(data))
    return path


def test_png_over_pillows_bomb_limit_is_a_value_error(tmp_path):
    path = _png_with_size(tmp_path / "bomb_psf.png", 100_000, 100_000)
    with pytest.raises(ValueError, match=r"bomb_psf\.png") as error:
        read_psf_file(path)
    assert "unknown error" not in str(error.value)


def test_png_over_the_psf_limit_is_refused_from_its_header(tmp_path):
    path = _png_with_size(tmp_path / "wide_psf.png", 6000, 6000)  # under Pillow's limit, over MAX_PSF_SIDE
    with pytest.raises(ValueError, match=r"wide_psf\.png.*declares 6000 x 6000"):
        read_psf_file(path)


def test_png_over_a_small_budget_is_refused(tmp_path):
    import imageio.v3 as iio

    path = tmp_path / "small_psf.png"
    iio.imwrite(path, np.full((16, 16), 7, np.uint8))
    with pytest.raises(ValueError, match=r"small_psf\.png.*declares 16 x 16"):
        read_psf_file(path, max_elements=100)
    assert read_psf_file(path).shape == (16, 16)


# --------------------------------------------------------------------------- memory, reader, limits


def test_memory_error_becomes_a_value_error_naming_the_file(tmp_path, monkeypatch):
    from napari_deblur.io import psf_files

    path = tmp_path / "fine_psf.npy"
    np.save(path, np.ones((5, 5)))

    def out_of_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 14.9 GiB")

    monkeypatch.setattr(psf_files, "_as_real_array", out_of_memory)
    with pytest.raises(ValueError, match=r"Not enough memory to read 'fine_psf\.npy'.*14\.9 GiB"):
        read_psf_file(path)
    monkeypatch.undo()
    monkeypatch.setattr(np.lib.format, "read_array", out_of_memory)
    with pytest.raises(ValueError, match=r"Not enough memory to read 'fine_psf\.npy'"):
        read_psf_file(path)


def test_napari_reader_raises_value_error_for_hostile_files(tmp_path):
    path = _v5_file(tmp_path / "hostile.mat", _matrix(_MX_CELL, (100_000, 20_000), "kernels"))
    reader = napari_get_reader(str(path))
    assert callable(reader)
    with pytest.raises(ValueError, match=r"hostile\.mat"):
        reader(str(path))


def test_get_reader_never_raises(tmp_path):
    class Unreadable(os.PathLike):
        def __fspath__(self):
            raise RuntimeError("a path object that fails")

    assert napari_get_reader(Unreadable()) is None
    assert napari_get_reader([Unreadable()]) is None
    assert napari_get_reader(str(tmp_path / ("x" * 5000 + "_psf.npy"))) is None  # name too long


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, None])
def test_limits_must_be_positive_integers(tmp_path, bad):
    path = tmp_path / "ok_psf.npy"
    np.save(path, np.ones((3, 3)))
    with pytest.raises(ValueError, match="max_elements"):
        read_psf_file(path, max_elements=bad)


def test_default_limits_are_documented_sizes():
    assert MAX_PSF_SIDE == 4096 and MAX_PSF_ELEMENTS == 2**25
