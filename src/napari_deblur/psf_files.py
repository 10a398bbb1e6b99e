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

This module imports neither Qt nor napari; the engine (and with it torch) is
imported only inside the napari reader function, to measure the blur level.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_deblur.layer_roles import psf_metadata

__all__ = [
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


# --------------------------------------------------------------------------- reading


def read_psf_file(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a PSF or a stack of PSFs from a file.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.mat`` (MATLAB v5 or v7.3), ``.tif``/``.tiff``, ``.npy`` or
        ``.png`` file.

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
        extension says), when its extension is not supported, or when its
        content is not a usable kernel: empty, not 2D/3D, not real numbers,
        NaN/inf values, a kernel whose sum is zero or negative, or (MATLAB) no
        numeric or cell variable to read.

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

    if suffix == ".mat":
        kernels, from_list = _read_mat(path)
        if from_list:
            kernels = [_normalised_kernel(k, f"{path.name}, kernel {i + 1}") for i, k in enumerate(kernels)]
            if len(kernels) == 1:
                return kernels[0]
            return _stack_centred(kernels)
        return _normalised_psf(kernels[0], path.name)

    if suffix in (".tif", ".tiff"):
        data = _read_tiff(path)
    elif suffix == ".npy":
        data = _read_npy(path)
    else:
        data = _read_png(path)
    return _normalised_psf(data, path.name)


def _fail_to_read(path: Path, kind: str, exc: BaseException) -> ValueError:
    return ValueError(
        f"Cannot read {path.name!r} as a {kind} file ({type(exc).__name__}: {exc}). "
        "The file may be truncated or corrupt; re-export the PSF and try again."
    )


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            data = series.asarray()
            axes = series.axes
    # Untrusted file content: tifffile raises many exception types for a bad file.
    except Exception as exc:  # noqa: BLE001 - re-raised as a ValueError with the cause chained
        raise _fail_to_read(path, "TIFF", exc) from exc
    if axes.endswith("S") and data.ndim >= 3 and data.shape[-1] in (3, 4):
        data = _rgb_to_grey(data)
    return data


def _read_npy(path: Path) -> np.ndarray:
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - untrusted content; re-raised as ValueError
        raise _fail_to_read(path, "NumPy .npy", exc) from exc
    if not isinstance(data, np.ndarray):
        raise ValueError(f"{path.name!r} does not hold a single NumPy array; save the PSF with numpy.save.")
    return data


def _read_png(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    try:
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


def _read_mat(path: Path) -> tuple[list[np.ndarray], bool]:
    """Kernels stored in a MATLAB file.

    Returns the kernels and whether they came from a cell array (a list of
    separate kernels) rather than one numeric array.
    """
    with open(path, "rb") as fh:
        head = fh.read(512 + len(_HDF5_SIGNATURE))
    # MATLAB v7.3 files are HDF5 with a 512-byte user block (the text header).
    if head[512:].startswith(_HDF5_SIGNATURE) or head.startswith(_HDF5_SIGNATURE):
        variables = _read_mat_hdf5(path)
    else:
        variables = _read_mat_v5(path)
    name, value = _pick_mat_variable(variables, path)
    if isinstance(value, list):
        if not value:
            raise ValueError(f"Variable {name!r} in {path.name!r} is an empty cell array; it holds no kernel.")
        return value, True
    if value.ndim == 3:
        # MATLAB keeps a stack as (y, x, k): the kernel index last.
        return [np.moveaxis(value, -1, 0)], False
    return [value], False


def _read_mat_v5(path: Path) -> dict[str, Any]:
    import scipy.io

    try:
        raw = scipy.io.loadmat(path, squeeze_me=False, struct_as_record=True)
    except Exception as exc:  # noqa: BLE001 - untrusted content; re-raised as ValueError
        raise _fail_to_read(path, "MATLAB", exc) from exc
    return {key: _from_v5(value) for key, value in raw.items() if not key.startswith("__")}


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


def _read_mat_hdf5(path: Path) -> dict[str, Any]:
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            return {
                key: _from_hdf5(h5, h5[key])
                for key in h5
                if not key.startswith("#")  # '#refs#', '#subsystem#' are MATLAB internals
            }
    except Exception as exc:  # noqa: BLE001 - untrusted content; re-raised as ValueError
        raise _fail_to_read(path, "MATLAB v7.3 (HDF5)", exc) from exc


def _from_hdf5(h5: Any, node: Any) -> Any:
    """A MATLAB v7.3 variable as a numeric array (MATLAB order), a list (cell) or ``None``."""
    import h5py

    if not isinstance(node, h5py.Dataset):
        return None  # structs, sparse matrices, objects are groups
    matlab_class = node.attrs.get("MATLAB_class", b"")
    if isinstance(matlab_class, bytes):
        matlab_class = matlab_class.decode("ascii", "replace")
    if node.attrs.get("MATLAB_empty", 0):
        return [] if matlab_class == "cell" else np.zeros((0, 0))
    if matlab_class == "cell" or node.dtype == h5py.ref_dtype:
        refs = node[()]
        # HDF5 stores column-major, so the transposed array is in MATLAB order.
        items = []
        for ref in np.asarray(refs).T.ravel(order="F"):
            converted = _from_hdf5(h5, h5[ref])
            if isinstance(converted, list):
                items.extend(converted)
            else:
                items.append(converted)
        return items
    if matlab_class in ("char", "logical") or node.dtype.kind not in "biuf":
        return None
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
        raise ValueError(
            f"A PSF to write must be 2D (h, w) or a stack (N, h, w); got shape {array.shape}."
        )
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
        The file is corrupt or does not hold a usable PSF (see
        :func:`read_psf_file`).
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
