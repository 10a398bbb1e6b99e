"""Read and write PSF / blur-kernel files, and the npe2 reader and writer for them.

Supported inputs
----------------
* MATLAB ``.mat`` files, both v5 (read with :func:`scipy.io.loadmat`) and
  v7.3 (HDF5, read with :mod:`h5py`). A cell array of kernels, such as the
  ``kernels`` variable of Levin et al.'s ``Levin09.mat``, opens as one stack
  ``(N, n, n)``: every kernel is zero-padded around its own centre to a common
  odd size ``n``. A numeric 3D array is read in MATLAB's ``(y, x, k)`` order
  and returned as ``(k, y, x)``.
* TIFF (``.tif``, ``.tiff``), NumPy (``.npy``) and PNG (``.png``) files
  holding a 2D kernel ``(h, w)`` or a stack of kernels ``(N, h, w)``. RGB(A)
  images are converted to grey.

Every kernel comes back as float32 normalised to sum 1 (each plane of a stack
on its own, which is what :func:`napari_deblur.engine.blur` expects from a
per-plane PSF stack).

Untrusted files
---------------
A PSF file is read only after its declared size is known: the TIFF series
shape, the ``.npy`` header, the PNG header, every matrix header of a MATLAB v5
file (nested cells included) and every HDF5 dataset shape of a v7.3 file. A
file that declares an axis longer than :data:`MAX_PSF_SIDE` or more than
:data:`MAX_PSF_ELEMENTS` values in all is refused with ``ValueError`` before
anything of that size is allocated (both limits can be lowered or raised per
call, see :func:`read_psf_file`). Compressed MATLAB v5 variables are inflated
under a byte budget, and deflate-compressed TIFF segments are checked not to
inflate beyond their page's declared size, so a small "zip bomb" is refused
too. Decoder errors and ``MemoryError`` become ``ValueError`` naming the file.

This module imports neither Qt nor napari; the engine (and with it torch) is
imported only inside the napari reader function, to measure the blur level.
"""

from __future__ import annotations

import io
import logging
import math
import os
import struct
import warnings
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_deblur.layer_roles import psf_metadata

__all__ = [
    "MAX_PSF_ELEMENTS",
    "MAX_PSF_SIDE",
    "PSF_READ_EXTENSIONS",
    "PSF_WRITE_EXTENSIONS",
    "napari_get_reader",
    "napari_write_psf",
    "read_psf_file",
    "write_psf_file",
]

logger = logging.getLogger(__name__)

PSF_READ_EXTENSIONS = (".mat", ".tif", ".tiff", ".npy", ".png")
"""File extensions :func:`read_psf_file` understands."""

PSF_WRITE_EXTENSIONS = (".tif", ".tiff", ".npy")
"""File extensions :func:`write_psf_file` can write."""

# Extensions that are PSFs only when the file name says so (``*psf*``, ``*kernel*``);
# otherwise they are ordinary images that napari's built-in reader should open.
_NAMED_ONLY_EXTENSIONS = (".tif", ".tiff", ".npy", ".png")
_NAME_MARKERS = ("psf", "kernel")

# MATLAB variables looked at first, in this order (case-insensitive).
_PREFERRED_MAT_NAMES = ("kernels", "psfs", "psf", "kernel", "k")

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

MAX_PSF_SIDE = 4096
"""Longest axis (pixels, or kernels in a stack) a PSF file may declare.

A blur kernel wider than 4096 px is wider than almost every image it could be
applied to; a file declaring more is refused with ``ValueError`` before it is
read. Override per call with ``read_psf_file(path, max_side=...)``."""

MAX_PSF_ELEMENTS = 2**25
"""Most values (all axes and all variables together, 33.5 million) a PSF file may declare.

That is two 4096 x 4096 kernels, or 512 kernels of 256 x 256: 256 MiB as
float64 while the PSF is normalised. A file declaring more is refused with
``ValueError`` before it is read; compressed MATLAB data is inflated to at most
``8 * MAX_PSF_ELEMENTS`` bytes plus 64 KiB of headers. Override per call with
``read_psf_file(path, max_elements=...)``."""

_HEADER_SLACK_BYTES = 2**16


# --------------------------------------------------------------------------- reading


def read_psf_file(
    path: str | os.PathLike[str],
    *,
    max_elements: int = MAX_PSF_ELEMENTS,
    max_side: int = MAX_PSF_SIDE,
) -> np.ndarray:
    """Read a PSF or a stack of PSFs from a file.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.mat`` (MATLAB v5 or v7.3), ``.tif``/``.tiff``, ``.npy`` or
        ``.png`` file.
    max_elements : int
        Most values the file may declare, all arrays together (and, for a
        cell array, the stack of padded kernels); default
        :data:`MAX_PSF_ELEMENTS`.
    max_side : int
        Longest axis the file may declare; default :data:`MAX_PSF_SIDE`.

    Returns
    -------
    numpy.ndarray
        float32. A single kernel as ``(h, w)``; several kernels (a MATLAB cell
        array, a 3D array) as ``(N, h, w)``. Every kernel (every plane of a
        stack) sums to 1. Kernels from a cell array are centred and
        zero-padded to a common odd size.

    Raises
    ------
    ValueError
        When the file cannot be read (missing, truncated, not the format its
        extension says, a decoder error, not enough memory), when it declares
        more than ``max_elements`` values or an axis longer than ``max_side``
        (checked before reading the data), when compressed data inflates
        beyond that size, when its extension is not supported, or when its
        content is not a usable kernel: empty, not 2D/3D, not real numbers,
        NaN/inf values, a kernel whose sum is zero or negative, or (MATLAB) no
        numeric or cell variable to read. The message names the file.

    Examples
    --------
    >>> psfs = read_psf_file("Levin09.mat")  # doctest: +SKIP
    >>> psfs.shape  # doctest: +SKIP
    (8, 27, 27)
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in PSF_READ_EXTENSIONS:
        raise ValueError(
            f"Cannot read a PSF from {path.name!r}: unsupported extension {suffix or '(none)'!r}. "
            f"Use one of {', '.join(PSF_READ_EXTENSIONS)}."
        )
    if not path.is_file():
        raise ValueError(f"Cannot read a PSF from {str(path)!r}: no such file.")
    limits = _Limits(_positive_int(max_elements, "max_elements"), _positive_int(max_side, "max_side"))
    try:
        return _read_psf(path, suffix, limits)
    except MemoryError as exc:
        raise ValueError(
            f"Not enough memory to read {path.name!r} as a PSF ({exc or 'MemoryError'}). "
            "Crop the kernel to its support, or free memory and try again."
        ) from exc
    except RecursionError as exc:
        raise ValueError(f"Cannot read {path.name!r}: its MATLAB cells are nested too deeply.") from exc


def _read_psf(path: Path, suffix: str, limits: _Limits) -> np.ndarray:
    if suffix == ".mat":
        kernels, from_list = _read_mat(path, limits)
        if from_list:
            kernels = [_normalised_kernel(k, f"{path.name}, kernel {i + 1}") for i, k in enumerate(kernels)]
            if len(kernels) == 1:
                return kernels[0]
            size = max(max(k.shape) for k in kernels)
            size += 1 - size % 2
            limits.check(path, (len(kernels), size, size), "the kernels padded to one stack")
            return _stack_centred(kernels)
        return _normalised_psf(kernels[0], path.name)

    if suffix in (".tif", ".tiff"):
        data = _read_tiff(path, limits)
    elif suffix == ".npy":
        data = _read_npy(path, limits)
    else:
        data = _read_png(path, limits)
    return _normalised_psf(data, path.name)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


class _Limits:
    """The size a PSF file may declare, and the values declared so far (all arrays together)."""

    def __init__(self, max_elements: int, max_side: int) -> None:
        self.max_elements = max_elements
        self.max_side = max_side
        self.declared = 0

    @property
    def inflate_budget(self) -> int:
        """Most bytes compressed data may inflate to: every value as float64, plus headers."""
        return 8 * self.max_elements + _HEADER_SLACK_BYTES

    def check(self, path: Path, shape: Sequence[int], what: str = "the PSF", *, add: bool = False) -> None:
        """Raise ``ValueError`` when ``shape`` (with what was declared before, if ``add``) is too large."""
        shape = tuple(int(n) for n in shape)
        if any(n < 0 for n in shape):
            raise ValueError(
                f"Cannot read {path.name!r}: {what} declares a negative size {shape}; the file is corrupt."
            )
        elements = math.prod(shape)
        total = self.declared + elements if add else elements
        longest = max(shape, default=0)
        if longest > self.max_side or total > self.max_elements:
            size = " x ".join(str(n) for n in shape) or "a scalar"
            so_far = f" ({total} values with the arrays before it)" if add and self.declared else ""
            raise ValueError(
                f"Refusing to read {path.name!r}: {what} declares {size} = {elements} values{so_far}, "
                f"over the limit of {self.max_elements} values and {self.max_side} per axis "
                "(MAX_PSF_ELEMENTS, MAX_PSF_SIDE). A PSF that large is almost certainly not a blur "
                "kernel; crop it to its support, or pass larger max_elements / max_side to "
                "read_psf_file if it really is one."
            )
        if add:
            self.declared = total


def _fail_to_read(path: Path, kind: str, exc: BaseException) -> ValueError:
    if isinstance(exc, MemoryError):
        return ValueError(
            f"Not enough memory to read {path.name!r} as a {kind} file ({exc or 'MemoryError'}). "
            "Crop the kernel to its support, or free memory and try again."
        )
    return ValueError(
        f"Cannot read {path.name!r} as a {kind} file ({type(exc).__name__}: {exc}). "
        "The file may be truncated or corrupt; re-export the PSF and try again."
    )


_DEFLATE_COMPRESSIONS = (8, 32946, 50013)  # TIFF COMPRESSION values of zlib / deflate


def _read_tiff(path: Path, limits: _Limits) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, dtype = tuple(series.shape), np.dtype(series.dtype)
            limits.check(path, shape, f"its first TIFF series ({dtype})")
            _check_deflate_segments(path, tif, series)
            data = series.asarray(maxworkers=1)
            axes = series.axes
    except ValueError as exc:
        if str(exc).startswith(("Refusing to read", "Cannot read")):
            raise
        raise _fail_to_read(path, "TIFF", exc) from exc
    # Untrusted file content: tifffile raises many exception types for a bad file.
    except Exception as exc:  # noqa: BLE001 - re-raised as a ValueError with the cause chained
        raise _fail_to_read(path, "TIFF", exc) from exc
    if axes.endswith("S") and data.ndim >= 3 and data.shape[-1] in (3, 4):
        data = _rgb_to_grey(data)
    return data


def _check_deflate_segments(path: Path, tif: Any, series: Any) -> None:
    """Refuse deflate segments that inflate beyond their page's (or segment's) declared size.

    Without imagecodecs, tifffile inflates each segment with ``zlib.decompress``,
    which has no size limit: a 1 MB segment can inflate to 1 GB whatever the
    page declares. Each segment is inflated here first, at most one byte past
    the page's declared size, and thrown away.
    """
    for page in series.pages:
        key = getattr(page, "keyframe", page)
        if page is None or key is None or key.compression not in _DEFLATE_COMPRESSIONS:
            continue
        itemsize = np.dtype(key.dtype).itemsize
        # A segment (strip or tile) may be larger than a small page: edge tiles are padded.
        segment = math.prod(key.chunks) * itemsize * max(int(key.samplesperpixel), 1)
        page_bytes = max(int(key.nbytes), segment)
        for offset, count in zip(page.dataoffsets, page.databytecounts):
            if not count:
                continue
            tif.filehandle.seek(offset)
            compressed = tif.filehandle.read(count)
            inflated = zlib.decompressobj().decompress(compressed, page_bytes + 1)
            if len(inflated) > page_bytes:
                raise ValueError(
                    f"Refusing to read {path.name!r}: a compressed TIFF segment of {count} bytes "
                    f"inflates beyond the {page_bytes} bytes its page declares; the file is corrupt "
                    "or hostile (a 'zip bomb')."
                )


def _read_npy(path: Path, limits: _Limits) -> np.ndarray:
    fmt = np.lib.format
    try:
        with open(path, "rb") as fh:
            version = fmt.read_magic(fh)
            if version == (1, 0):
                shape, fortran_order, dtype = fmt.read_array_header_1_0(fh)
            else:  # 2.0 and 3.0 (UTF-8 field names) share the 4-byte header length
                shape, fortran_order, dtype = fmt.read_array_header_2_0(fh)
            header_end = fh.tell()
    except Exception as exc:  # noqa: BLE001 - untrusted content; re-raised as ValueError
        raise _fail_to_read(path, "NumPy .npy", exc) from exc
    if dtype.hasobject:
        raise ValueError(
            f"{path.name!r} holds Python objects ({dtype}), not numbers; PSF files are never "
            "unpickled. Save the kernel as a numeric array, e.g. numpy.save(path, psf.astype(float))."
        )
    limits.check(path, shape, f"its array ({dtype})")
    expected = math.prod(shape) * dtype.itemsize
    available = path.stat().st_size - header_end
    if available < expected:
        raise ValueError(
            f"Cannot read {path.name!r}: its header declares {expected} bytes of {dtype} data "
            f"{tuple(shape)} but only {available} follow. The file is truncated or corrupt; "
            "re-export the PSF and try again."
        )
    try:
        with open(path, "rb") as fh:
            data = fmt.read_array(fh, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - untrusted content; re-raised as ValueError
        raise _fail_to_read(path, "NumPy .npy", exc) from exc
    return data


def _read_png(path: Path, limits: _Limits) -> np.ndarray:
    import imageio.v3 as iio
    from PIL import Image

    # The header first (Pillow decodes nothing on open): refuse a huge image before
    # imageio decodes it, and before Pillow's own decompression-bomb check, whose error
    # imageio reports as "An unknown error occurred while initializing plugin pillow".
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                channels = 4 if image.mode in ("P", "PA") else len(image.getbands())
                frames = int(getattr(image, "n_frames", 1))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError(
            f"Refusing to read {path.name!r}: the PNG declares more pixels than Pillow's "
            f"decompression-bomb limit ({exc}). A PSF that large is almost certainly not a blur kernel."
        ) from exc
    except Exception as exc:  # noqa: BLE001 - untrusted content; re-raised as ValueError
        raise _fail_to_read(path, "PNG", exc) from exc
    shape = (frames, height, width, channels) if frames > 1 else (height, width, channels)
    limits.check(path, shape, "the PNG image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            data = np.asarray(iio.imread(path, plugin="pillow"))
    except Exception as exc:  # noqa: BLE001 - untrusted content; re-raised as ValueError
        raise _fail_to_read(path, "PNG", exc) from exc
    if data.ndim == 3 and data.shape[-1] in (3, 4):
        data = _rgb_to_grey(data)
    elif data.ndim == 3 and data.shape[-1] == 2:  # grey + alpha
        data = data[..., 0]
    return data


def _rgb_to_grey(data: np.ndarray) -> np.ndarray:
    """Luminance of an RGB(A) array (alpha dropped), float64."""
    rgb = np.asarray(data[..., :3], dtype=np.float64)
    return rgb @ np.array([0.2125, 0.7154, 0.0721])


def _read_mat(path: Path, limits: _Limits) -> tuple[list[np.ndarray], bool]:
    """Kernels stored in a MATLAB file.

    Returns the kernels and whether they came from a cell array (a list of
    separate kernels) rather than one numeric array.
    """
    with open(path, "rb") as fh:
        head = fh.read(512 + len(_HDF5_SIGNATURE))
    # MATLAB v7.3 files are HDF5 with a 512-byte user block (the text header).
    if head[512:].startswith(_HDF5_SIGNATURE) or head.startswith(_HDF5_SIGNATURE):
        variables = _read_mat_hdf5(path, limits)
    else:
        variables = _read_mat_v5(path, limits)
    name, value = _pick_mat_variable(variables, path)
    if isinstance(value, list):
        if not value:
            raise ValueError(
                f"Variable {name!r} in {path.name!r} is an empty cell array; it holds no kernel."
            )
        return value, True
    if value.ndim == 3:
        # MATLAB keeps a stack as (y, x, k): the kernel index last.
        return [np.moveaxis(value, -1, 0)], False
    return [value], False


# MATLAB v5 data types and array classes (MAT-File Format, MathWorks).
_MI_INT32, _MI_MATRIX, _MI_COMPRESSED = 5, 14, 15
_MX_CELL, _MX_STRUCT, _MX_OBJECT, _MX_SPARSE = 1, 2, 3, 5
_MX_LAST_NUMERIC = 15  # mxUINT64; 16 (function) and 17 (opaque) have no plain dims


def _read_mat_v5(path: Path, limits: _Limits) -> dict[str, Any]:
    import scipy.io

    try:
        raw = path.read_bytes() if path.stat().st_size <= limits.inflate_budget else None
    except OSError as exc:
        raise _fail_to_read(path, "MATLAB", exc) from exc
    if raw is None:
        raise ValueError(
            f"Refusing to read {path.name!r}: the file is {path.stat().st_size} bytes, more than a PSF "
            f"within the limit of {limits.max_elements} values needs (MAX_PSF_ELEMENTS)."
        )
    try:
        expanded = _v5_expanded(path, raw, limits)
        if expanded is None:  # MATLAB v4: no compression, no cells; headers are listed by whosmat
            for name, shape, _ in scipy.io.whosmat(io.BytesIO(raw)):
                limits.check(path, shape, f"variable {name!r}", add=True)
            expanded = raw
        loaded = scipy.io.loadmat(io.BytesIO(expanded), squeeze_me=False, struct_as_record=True)
    except ValueError as exc:
        if str(exc).startswith(("Refusing to read", "Cannot read")):
            raise
        raise _fail_to_read(path, "MATLAB", exc) from exc
    except Exception as exc:  # noqa: BLE001 - untrusted content; re-raised as ValueError
        raise _fail_to_read(path, "MATLAB", exc) from exc
    return {key: _from_v5(value) for key, value in loaded.items() if not key.startswith("__")}


def _v5_expanded(path: Path, raw: bytes, limits: _Limits) -> bytes | None:
    """A MATLAB v5 file with every compressed variable inflated, after checking every matrix header.

    Compressed variables are inflated under :attr:`_Limits.inflate_budget` bytes
    in all; every matrix header (nested cells and struct fields included)
    declares a size that is checked against ``limits`` before scipy sees it, so
    scipy allocates nothing larger. Returns ``None`` for a file without a v5
    header (MATLAB v4), and raises ``ValueError`` for truncated elements.
    """
    if len(raw) < 128 or raw[126:128] not in (b"IM", b"MI"):
        return None
    endian = "<" if raw[126:128] == b"IM" else ">"
    budget = limits.inflate_budget
    parts = [raw[:128]]
    pos = 128
    while pos + 8 <= len(raw):
        mtype, nbytes = struct.unpack_from(endian + "II", raw, pos)
        end = pos + 8 + nbytes
        if end > len(raw):
            raise ValueError(
                f"a variable declares {nbytes} bytes but the file ends {len(raw) - pos - 8} bytes on"
            )
        if mtype == _MI_COMPRESSED:
            inflater = zlib.decompressobj()
            element = inflater.decompress(raw[pos + 8 : end], budget + 1)
            if len(element) > budget:
                raise ValueError(
                    f"Refusing to read {path.name!r}: its compressed variables inflate to more than "
                    f"{limits.inflate_budget} bytes, more than a PSF within the limit of "
                    f"{limits.max_elements} values needs (MAX_PSF_ELEMENTS); the file may be a 'zip bomb'."
                )
            pos = end
        else:
            end += -nbytes % 8  # uncompressed elements are padded to 8 bytes
            element = raw[pos:end]
            pos = end
        budget -= len(element)
        _check_v5_matrix(path, element, 0, len(element), endian, limits)
        parts.append(element)
    return b"".join(parts)


def _v5_subelement(buf: bytes, pos: int, end: int, endian: str) -> tuple[int, int, int, int]:
    """``(type, data start, data length, next position)`` of the data element at ``pos``."""
    if pos + 4 > end:
        raise ValueError("a matrix ends inside an element tag")
    (first,) = struct.unpack_from(endian + "I", buf, pos)
    if first >> 16:  # small data element: type and length in one word, data in the next
        return first & 0xFFFF, pos + 4, first >> 16, pos + 8
    if pos + 8 > end:
        raise ValueError("a matrix ends inside an element tag")
    (length,) = struct.unpack_from(endian + "I", buf, pos + 4)
    stop = pos + 8 + length
    if stop > end:
        raise ValueError(f"an element declares {length} bytes but its matrix ends {end - pos - 8} bytes on")
    return first, pos + 8, length, stop + (-length % 8)


def _check_v5_matrix(
    path: Path, buf: bytes, pos: int, end: int, endian: str, limits: _Limits, depth: int = 0
) -> None:
    """Check the dims of the miMATRIX element at ``pos`` and, for cells and structs, of its children."""
    mtype, body, length, _ = _v5_subelement(buf, pos, end, endian)
    if mtype != _MI_MATRIX or length == 0:
        return
    if depth > 32:
        raise ValueError(f"Cannot read {path.name!r}: its MATLAB cells are nested more than 32 deep.")
    stop = body + length
    _, flags_at, flags_length, cursor = _v5_subelement(buf, body, stop, endian)
    if flags_length < 4:
        raise ValueError("a matrix has no array flags")
    matrix_class = struct.unpack_from(endian + "I", buf, flags_at)[0] & 0xFF
    if matrix_class in (_MX_SPARSE,) or matrix_class > _MX_LAST_NUMERIC:
        return  # sparse arrays are built from their (bounded) data; functions and objects are not read
    dims_type, dims_at, dims_length, cursor = _v5_subelement(buf, cursor, stop, endian)
    if dims_type != _MI_INT32:
        raise ValueError("a matrix has no dimensions")
    dims = struct.unpack_from(f"{endian}{dims_length // 4}i", buf, dims_at)
    what = "a MATLAB cell" if depth else "a MATLAB variable"
    limits.check(path, dims, what, add=True)
    if matrix_class not in (_MX_CELL, _MX_STRUCT, _MX_OBJECT):
        return
    _, _, _, cursor = _v5_subelement(buf, cursor, stop, endian)  # the name
    while cursor + 8 <= stop:
        child_type, _, _, following = _v5_subelement(buf, cursor, stop, endian)
        if child_type == _MI_MATRIX:
            _check_v5_matrix(path, buf, cursor, stop, endian, limits, depth + 1)
        cursor = following


def _from_v5(value: Any) -> Any:
    """A loadmat value as a numeric array, a list of kernels (cell) or ``None`` (anything else)."""
    if not isinstance(value, np.ndarray):
        return None
    if value.dtype == object:  # cell array, MATLAB (column-major) order
        items = []
        for item in value.ravel(order="F"):
            converted = _from_v5(item)
            if isinstance(converted, list):  # nested cells: flatten
                items.extend(converted)
            else:
                items.append(item if converted is None else converted)
        return items
    if value.dtype.kind in "biuf":
        return value
    return None  # char, struct, complex, ...


def _read_mat_hdf5(path: Path, limits: _Limits) -> dict[str, Any]:
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            return {
                key: _from_hdf5(h5, h5[key], path, limits)
                for key in h5
                if not key.startswith("#")  # '#refs#', '#subsystem#' are MATLAB internals
            }
    except ValueError as exc:
        if str(exc).startswith(("Refusing to read", "Cannot read")):
            raise
        raise _fail_to_read(path, "MATLAB v7.3 (HDF5)", exc) from exc
    except Exception as exc:  # noqa: BLE001 - untrusted content; re-raised as ValueError
        raise _fail_to_read(path, "MATLAB v7.3 (HDF5)", exc) from exc


def _from_hdf5(h5: Any, node: Any, path: Path, limits: _Limits, depth: int = 0) -> Any:
    """A MATLAB v7.3 variable as a numeric array (MATLAB order), a list (cell) or ``None``.

    Every dataset's declared shape is checked against ``limits`` before it is read.
    """
    import h5py

    if not isinstance(node, h5py.Dataset):
        return None  # structs, sparse matrices, objects are groups
    if depth > 32:
        raise ValueError(f"Cannot read {path.name!r}: its MATLAB cells are nested more than 32 deep.")
    matlab_class = node.attrs.get("MATLAB_class", b"")
    if isinstance(matlab_class, bytes):
        matlab_class = matlab_class.decode("ascii", "replace")
    if node.attrs.get("MATLAB_empty", 0):
        return [] if matlab_class == "cell" else np.zeros((0, 0))
    is_cell = matlab_class == "cell" or node.dtype == h5py.ref_dtype
    if not is_cell and (matlab_class in ("char", "logical") or node.dtype.kind not in "biuf"):
        return None
    what = f"dataset {node.name!r}" + (" (a cell)" if is_cell else f" ({node.dtype})")
    limits.check(path, node.shape or (), what, add=True)
    if is_cell:
        refs = node[()]
        # HDF5 stores column-major, so the transposed array is in MATLAB order.
        items = []
        for ref in np.asarray(refs).T.ravel(order="F"):
            converted = _from_hdf5(h5, h5[ref], path, limits, depth + 1)
            if isinstance(converted, list):
                items.extend(converted)
            else:
                items.append(converted)
        return items
    # HDF5 keeps MATLAB's column-major layout: transpose back to (y, x, ...).
    return np.asarray(node[()]).T


def _pick_mat_variable(variables: dict[str, Any], path: Path) -> tuple[str, Any]:
    usable = {name: value for name, value in variables.items() if value is not None}
    by_lower = {name.lower(): name for name in usable}
    for preferred in _PREFERRED_MAT_NAMES:
        if preferred in by_lower:
            name = by_lower[preferred]
            return name, _check_cell_items(name, usable[name], path)
    if len(usable) == 1:
        name, value = next(iter(usable.items()))
        return name, _check_cell_items(name, value, path)
    if not usable:
        found = ", ".join(repr(name) for name in variables) or "none"
        raise ValueError(
            f"{path.name!r} holds no numeric or cell-array variable to read as a PSF (variables: {found}). "
            "Save the kernel as a numeric matrix or a cell array of matrices, e.g. `kernels`."
        )
    names = ", ".join(repr(name) for name in usable)
    raise ValueError(
        f"{path.name!r} holds several numeric variables ({names}) and none is called "
        f"{' / '.join(_PREFERRED_MAT_NAMES)}. Rename the PSF variable to `psf` or `kernels`."
    )


def _check_cell_items(name: str, value: Any, path: Path) -> Any:
    if isinstance(value, list):
        for index, item in enumerate(value):
            if not isinstance(item, np.ndarray):
                raise ValueError(
                    f"Cell {index + 1} of variable {name!r} in {path.name!r} is not a numeric matrix "
                    "(text, struct or object); every cell must hold one kernel."
                )
    return value


def _normalised_kernel(kernel: np.ndarray, what: str) -> np.ndarray:
    """One 2D kernel as float32 summing to 1."""
    kernel = _as_real_array(kernel, what)
    kernel = np.squeeze(kernel) if kernel.ndim > 2 else kernel
    if kernel.ndim != 2:
        raise ValueError(f"{what}: a kernel must be a 2D matrix, got shape {kernel.shape}.")
    return _normalise_planes(kernel[np.newaxis], what)[0]


def _normalised_psf(data: np.ndarray, what: str) -> np.ndarray:
    """A 2D PSF or a stack of 2D PSFs as float32, each plane summing to 1."""
    data = _as_real_array(data, what)
    if data.ndim > 2:  # drop singleton axes such as (1, h, w) or (h, w, 1)
        squeezed = np.squeeze(data)
        data = squeezed if squeezed.ndim >= 2 else data.reshape(data.shape[-2:])
    if data.ndim == 2:
        return _normalise_planes(data[np.newaxis], what)[0]
    if data.ndim == 3:
        return _normalise_planes(data, what)
    raise ValueError(
        f"{what}: a PSF must be 2D (h, w) or a stack of 2D kernels (N, h, w), got shape {data.shape}."
    )


def _as_real_array(data: Any, what: str) -> np.ndarray:
    data = np.asarray(data)
    if data.dtype == object or data.dtype.kind not in "biuf":
        raise ValueError(f"{what}: a PSF must hold real numbers, got dtype {data.dtype}.")
    if data.size == 0:
        raise ValueError(f"{what}: the PSF is empty (shape {data.shape}).")
    data = data.astype(np.float64)
    if not np.all(np.isfinite(data)):
        raise ValueError(f"{what}: the PSF contains NaN or infinite values; fix or re-export it.")
    return data


def _normalise_planes(stack: np.ndarray, what: str) -> np.ndarray:
    """Divide each plane of a float64 ``(N, h, w)`` stack by its sum; float32 out."""
    sums = stack.sum(axis=(-2, -1))
    scale = np.abs(stack).sum(axis=(-2, -1))
    bad = np.flatnonzero(sums <= 1e-12 * np.maximum(scale, 1e-300))
    if bad.size:
        where = "" if stack.shape[0] == 1 else f" (plane {bad[0]} of {stack.shape[0]})"
        raise ValueError(
            f"{what}: the PSF sums to {sums[bad[0]]:.3g}{where}; a PSF must have a positive sum "
            "(it is normalised to 1). Check that the file holds a blur kernel."
        )
    return (stack / sums[:, np.newaxis, np.newaxis]).astype(np.float32)


def _stack_centred(kernels: Sequence[np.ndarray]) -> np.ndarray:
    """Zero-pad 2D kernels around their centres to one odd size and stack them.

    The geometric centre of each kernel (pixel ``(h - 1) / 2``) lands on the
    centre pixel of the common frame; for even sizes the extra row/column goes
    after the kernel, as in MATLAB's ``padarray`` convention for PSFs.
    """
    size = max(max(k.shape) for k in kernels)
    size += 1 - size % 2  # odd
    stack = np.zeros((len(kernels), size, size), dtype=np.float32)
    for index, kernel in enumerate(kernels):
        h, w = kernel.shape
        top = (size - h) // 2
        left = (size - w) // 2
        stack[index, top : top + h, left : left + w] = kernel
    return stack


# --------------------------------------------------------------------------- writing


def write_psf_file(path: str | os.PathLike[str], data: Any) -> str:
    """Write a PSF (2D) or a PSF stack (3D) as float32 TIFF or NumPy file.

    The values are written as they are (no normalisation), so a PSF that sums
    to 1 reads back unchanged with :func:`read_psf_file`.

    Parameters
    ----------
    path : str or os.PathLike
        Target file ending in ``.tif``, ``.tiff`` or ``.npy``. A path without
        an extension gets ``.tif``.
    data : array_like
        ``(h, w)`` or ``(N, h, w)`` real, finite values.

    Returns
    -------
    str
        The path written.

    Raises
    ------
    ValueError
        Unsupported extension, empty / non-real / non-finite data, or data
        that is not 2D or 3D.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not suffix:
        path = path.with_suffix(".tif")
        suffix = ".tif"
    if suffix not in PSF_WRITE_EXTENSIONS:
        raise ValueError(
            f"Cannot write a PSF as {suffix!r} ({path.name!r}); use one of {', '.join(PSF_WRITE_EXTENSIONS)}."
        )
    array = _as_real_array(data, f"PSF to write to {path.name!r}")
    if array.ndim not in (2, 3):
        raise ValueError(f"A PSF to write must be 2D (h, w) or a stack (N, h, w); got shape {array.shape}.")
    array = array.astype(np.float32)
    if suffix == ".npy":
        np.save(path, array, allow_pickle=False)
    else:
        import tifffile

        tifffile.imwrite(path, array, photometric="minisblack")
    return str(path)


def napari_write_psf(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer for an image layer holding a PSF.

    Parameters
    ----------
    path : str
        Target path (``.tif``, ``.tiff`` or ``.npy``).
    data : array_like
        The layer data, ``(h, w)`` or ``(N, h, w)``.
    meta : dict
        The layer attributes (unused: the file stores the kernel only).

    Returns
    -------
    list of str
        The written path.

    Raises
    ------
    ValueError
        See :func:`write_psf_file`.
    """
    return [write_psf_file(path, data)]


# --------------------------------------------------------------------------- npe2 reader


def napari_get_reader(path: Any) -> Callable[[Any], list[tuple]] | None:
    """npe2 reader contribution: a reader function for PSF files, or ``None``.

    Handles one path: any ``.mat`` file, and ``.tif``, ``.tiff``, ``.npy``,
    ``.png`` files whose name contains ``psf`` or ``kernel``
    (case-insensitive). Returns ``None`` for everything else (directories,
    several paths, other files) and never raises.

    Parameters
    ----------
    path : str, os.PathLike or list of them
        What napari asks to open.

    Returns
    -------
    callable or None
        ``reader(path) -> list[LayerData]``, one image layer holding the PSF
        with ``metadata=psf_metadata(source=..., blur_level_px=...)``. The
        reader function raises ``ValueError`` for a corrupt file.
    """
    try:
        return _reader_for(path)
    except Exception:  # noqa: BLE001 - npe2 asks every reader; declining is the only safe answer
        logger.debug("PSF reader declined %r", path, exc_info=True)
        return None


def _reader_for(path: Any) -> Callable[[Any], list[tuple]] | None:
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    if not isinstance(path, (str, os.PathLike)):
        return None
    try:
        candidate = Path(os.fspath(path))
        if candidate.is_dir() or not candidate.is_file():
            return None
    except (OSError, TypeError, ValueError):
        return None
    suffix = candidate.suffix.lower()
    if suffix == ".mat":
        return read_psf_layers
    if suffix in _NAMED_ONLY_EXTENSIONS and any(m in candidate.name.lower() for m in _NAME_MARKERS):
        return read_psf_layers
    return None


def read_psf_layers(path: Any) -> list[tuple[np.ndarray, dict[str, Any], str]]:
    """Read a PSF file as napari LayerData: ``[(psf, attributes, "image")]``.

    Parameters
    ----------
    path : str, os.PathLike or a one-element list of them

    Returns
    -------
    list of tuple
        One image layer named after the file stem, ``magma`` colour map, and
        ``metadata=psf_metadata(source=<path>, blur_level_px=<float>)``; a
        stack also carries ``blur_levels_px`` (one value per kernel) and
        ``blur_level_px`` is their mean.

    Raises
    ------
    ValueError
        The file is corrupt, larger than :data:`MAX_PSF_ELEMENTS` /
        :data:`MAX_PSF_SIDE`, or does not hold a usable PSF (see
        :func:`read_psf_file`). npe2 passes this on to napari, which shows it.
    """
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            raise ValueError(f"The PSF reader opens one file at a time, got {len(path)} paths.")
        path = path[0]
    psf = read_psf_file(path)
    extra: dict[str, Any] = {"source": str(path)}
    levels = _blur_levels(psf)
    if levels is not None:
        if psf.ndim == 2:
            extra["blur_level_px"] = levels[0]
        else:
            extra["blur_level_px"] = float(np.mean(levels))
            extra["blur_levels_px"] = levels
    attributes = {
        "name": Path(os.fspath(path)).stem,
        "metadata": psf_metadata(**extra),
        "colormap": "magma",
    }
    return [(psf, attributes, "image")]


def _blur_levels(psf: np.ndarray) -> list[float] | None:
    """Blur level (pixels) of each kernel, via the engine; ``None`` if it is unavailable."""
    try:
        from napari_deblur.engine import psf_blur_level
    except ImportError:
        logger.warning("napari_deblur.engine is not importable; PSF blur level left out of the metadata.")
        return None
    planes = psf[np.newaxis] if psf.ndim == 2 else psf
    return [float(psf_blur_level(plane)) for plane in planes]
