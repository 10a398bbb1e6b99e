"""Image stacks on disk, lazily: open TIFF, NumPy, PNG/JPEG or zarr as dask arrays, save lazy results.

Imports only numpy at module level (the command line's ``--help`` stays fast).
Used by ``napari-deblur run`` and by the widgets' "save whole stack" action.
Inputs are opened one plane per chunk without reading the pixels; every chunk
reopens its file when it is read, so the arrays can be sent to
``dask.distributed`` worker processes. Results are written plane by plane to
``<name>.partial`` and renamed when complete: a failure, a cancel or Ctrl-C
leaves no partial output behind.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the engine (torch) is imported when a stack is saved, not for `--help`
    from napari_deblur.engine.jobs import JobSteps

#: Files (and zarr folders) that can be opened lazily.
STACK_INPUT_SUFFIXES = (".tif", ".tiff", ".npy", ".png", ".jpg", ".jpeg", ".zarr")
#: What results can be saved as.
STACK_OUTPUT_SUFFIXES = (".zarr", ".tif", ".tiff")
PARTIAL_SUFFIX = ".partial"


class StackFileError(ValueError):
    """A file that cannot be opened or written as an image stack (message names the file)."""


def guess_channel_axis(shape: tuple[int, ...]) -> int | None:
    """RGB(A) when the last axis has 3 or 4 entries and the planes exceed 30 px (as napari guesses)."""
    if len(shape) >= 3 and shape[-1] in (3, 4) and min(shape[-3:-1]) > 30:
        return len(shape) - 1
    return None


class _FileArray:
    """A read-only array view of a TIFF or ``.npy`` file that opens it on every read (picklable)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.kind = "npy" if self.path.suffix.lower() == ".npy" else "tif"
        stored = self._open()
        self.shape = tuple(int(n) for n in stored.shape)
        self.dtype = np.dtype(stored.dtype)
        self.ndim = len(self.shape)

    def _open(self):
        if self.kind == "npy":
            return np.load(self.path, mmap_mode="r", allow_pickle=False)
        import tifffile
        import zarr

        return zarr.open(tifffile.imread(self.path, aszarr=True), mode="r")

    def __getitem__(self, index):
        return np.asarray(self._open()[index])


def open_lazy_image(path) -> tuple:
    """Open an image file as a dask array, one plane per chunk, without reading its pixels.

    Returns
    -------
    (dask.array.Array, channel_axis or None)

    Raises
    ------
    StackFileError
        Missing file, unsupported suffix, or unreadable content.
    """
    import dask.array as da

    from napari_deblur.engine.lazy import plane_chunks

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in STACK_INPUT_SUFFIXES:
        raise StackFileError(f"cannot read {str(path)!r}: unsupported file type "
                             f"{suffix or '(none)'!r}; use one of {', '.join(STACK_INPUT_SUFFIXES)}")
    if not path.exists():
        raise StackFileError(f"{str(path)!r} does not exist")
    try:
        if suffix == ".zarr":
            array = da.from_zarr(str(path))
        elif suffix in (".png", ".jpg", ".jpeg"):
            import skimage.io

            array = da.from_array(np.asarray(skimage.io.imread(path)))
        else:
            source = _FileArray(path)
            array = da.from_array(source, chunks=plane_chunks(source.shape, guess_channel_axis(source.shape)),
                                  asarray=True, fancy=False,
                                  meta=np.empty((0,) * source.ndim, dtype=source.dtype))
    except Exception as error:  # any reader failure is this file's problem, reported by name
        raise StackFileError(f"cannot read {str(path)!r}: {error}".splitlines()[0]) from error
    if array.ndim < 2 or array.size == 0:
        raise StackFileError(f"{str(path)!r} holds no image (shape {array.shape})")
    channel_axis = guess_channel_axis(tuple(array.shape))
    return array.rechunk(plane_chunks(tuple(array.shape), channel_axis)), channel_axis


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def iter_save_lazy(lazy, path, *, channel_axis: int | None = None, at_once: int = 1,
                   description: str = "") -> JobSteps[Path]:
    """Compute a lazy result plane by plane into ``path`` (``.zarr`` or ``.tif``).

    Memory stays at about ``at_once`` planes. The data go to ``<path>.partial``
    first, which is renamed to ``path`` (replacing it) when every plane is
    written, and deleted on any error, cancel (the generator is closed) or
    ``KeyboardInterrupt``.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    from napari_deblur.engine.lazy import iter_compute_planes, plane_chunks

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in STACK_OUTPUT_SUFFIXES:
        raise StackFileError(f"cannot write {str(path)!r}: save as one of {', '.join(STACK_OUTPUT_SUFFIXES)}")
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    _remove(partial)
    shape = tuple(int(n) for n in lazy.shape)
    try:
        if suffix == ".zarr":
            import zarr

            target = zarr.open_array(str(partial), mode="w", shape=shape, dtype="float32",
                                     chunks=plane_chunks(shape, channel_axis))
            if description:
                target.attrs["napari_deblur"] = description
        else:
            import tifffile

            rgb = channel_axis == len(shape) - 1 and shape[-1] in (3, 4)
            target = tifffile.memmap(partial, shape=shape, dtype=np.float32,
                                     photometric="rgb" if rgb else "minisblack",
                                     metadata={"napari_deblur": description} if description else None)

        write = target.__setitem__
        yield from iter_compute_planes(lazy, write, at_once=at_once, message=f"writing {path.name}")
        if suffix != ".zarr":
            target.flush()
        del write, target  # release the memory map before the rename
        _remove(path)
        os.replace(partial, path)
    except BaseException:
        _remove(partial)
        raise
    return path
