"""Image stacks on disk, lazily: open TIFF, NumPy, PNG/JPEG or zarr as dask arrays, save lazy results.

Imports only numpy at module level (the command line's ``--help`` stays fast).
Used by ``napari-deblur run`` and by the widgets' "save whole stack" action.
Inputs are opened one plane per chunk without reading the pixels; every chunk
reopens its file when it is read, so the arrays can be sent to
``dask.distributed`` worker processes. Results are written plane by plane
(ordinary writes, no memory map) to a hidden ``.<name>.*.partial`` beside
the target and renamed when complete: a failure, a full disk, a cancel,
Ctrl-C or SIGTERM (when the caller turns it into an exception, as the command
line does) leaves no partial output behind. Nothing that exists is replaced
unless the caller allows it, and a folder that napari-deblur did not write is
never removed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:  # the engine (torch) is imported when a stack is saved, not for `--help`
    from napari_deblur.engine.core.jobs import JobSteps

#: Files (and zarr folders) that can be opened lazily.
STACK_INPUT_SUFFIXES = (".tif", ".tiff", ".npy", ".png", ".jpg", ".jpeg", ".zarr")
#: What results can be saved as.
STACK_OUTPUT_SUFFIXES = (".zarr", ".tif", ".tiff")
PARTIAL_SUFFIX = ".partial"
#: Key of the attribute (zarr) or TIFF metadata entry that marks a file napari-deblur wrote.
OUTPUT_MARK = "napari_deblur"
MAX_PLANE_PIXELS = 2**28
"""Largest plane (rows x columns x channels) that :func:`open_lazy_image` accepts by default.

268 million values: a 16384 x 16384 grayscale plane, 1 GiB in float32. A
file's header declares its shape before any pixel is read, so a tiny or
corrupt file that claims a huge plane is refused before anything is
allocated. Pass ``max_plane_pixels=`` (``--max-plane-megapixels`` on the
command line) to accept larger planes."""

OverwritePolicy = Literal["never", "own", "files"]
"""What :func:`iter_save_lazy` may replace: ``"never"`` nothing; ``"own"`` only
files and folders napari-deblur wrote; ``"files"`` any regular file, and
folders napari-deblur wrote."""


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


def _plane_values(shape: tuple[int, ...]) -> int:
    """Values in one plane of ``shape``: rows x columns, times the channels of RGB(A)."""
    channel_axis = guess_channel_axis(shape)
    if channel_axis is not None:
        return math.prod(shape[-3:])
    return math.prod(shape[-2:]) if len(shape) >= 2 else math.prod(shape)


def _check_plane_size(path: Path, shape: tuple[int, ...], max_plane_pixels: int) -> None:
    values = _plane_values(shape)
    if values > max_plane_pixels:
        raise StackFileError(
            f"{str(path)!r} declares planes of {values:,} values (shape {tuple(shape)}), more than "
            f"the limit of {max_plane_pixels:,}; crop or tile it first, or raise the limit "
            f"(max_plane_pixels=, or --max-plane-megapixels on the command line)"
        )


def _check_input_kind(path: Path, suffix: str) -> None:
    """Refuse what is not a regular file (a zarr input: a folder), e.g. FIFOs and devices."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise StackFileError(f"{str(path)!r} does not exist") from None
    except OSError as error:
        raise StackFileError(f"cannot read {str(path)!r}: {error.strerror or error}") from error
    if suffix == ".zarr":
        if not stat.S_ISDIR(mode):
            raise StackFileError(f"cannot read {str(path)!r}: a .zarr input must be a zarr folder")
    elif not stat.S_ISREG(mode):
        raise StackFileError(f"cannot read {str(path)!r}: not a regular file (a folder, pipe or device)")


def _read_picture(path: Path, max_plane_pixels: int) -> np.ndarray:
    """A PNG or JPEG, its declared size checked before it is decoded."""
    from PIL import Image

    try:
        with Image.open(path) as picture:  # reads the header only
            width, height = picture.size
            bands = len(picture.getbands())
    except Image.DecompressionBombError as error:
        raise StackFileError(
            f"cannot read {str(path)!r}: the decoder refuses it as too large ({error})".splitlines()[0]
        ) from error
    _check_plane_size(path, (height, width, bands) if bands > 1 else (height, width), max_plane_pixels)
    import skimage.io

    return np.asarray(skimage.io.imread(path))


def open_lazy_image(path, *, max_plane_pixels: int = MAX_PLANE_PIXELS) -> tuple:
    """Open an image file as a dask array, one plane per chunk, without reading its pixels.

    Parameters
    ----------
    path : str or os.PathLike
        A TIFF, ``.npy``, PNG or JPEG file, or a zarr folder.
    max_plane_pixels : int
        Largest plane accepted (rows x columns x channels), see
        :data:`MAX_PLANE_PIXELS`; checked against the declared shape before
        any pixel is read.

    Returns
    -------
    (dask.array.Array, channel_axis or None)

    Raises
    ------
    StackFileError
        Missing file, not a regular file (a FIFO, a device), unsupported
        suffix, a plane over ``max_plane_pixels``, or unreadable content
        (including a decoder running out of memory).
    """
    import dask.array as da

    from napari_deblur.engine.core.lazy import plane_chunks

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in STACK_INPUT_SUFFIXES:
        raise StackFileError(
            f"cannot read {str(path)!r}: unsupported file type "
            f"{suffix or '(none)'!r}; use one of {', '.join(STACK_INPUT_SUFFIXES)}"
        )
    _check_input_kind(path, suffix)
    try:
        if suffix == ".zarr":
            array = da.from_zarr(str(path))
        elif suffix in (".png", ".jpg", ".jpeg"):
            array = da.from_array(_read_picture(path, max_plane_pixels))
        else:
            source = _FileArray(path)
            array = da.from_array(
                source,
                chunks=plane_chunks(source.shape, guess_channel_axis(source.shape)),
                asarray=True,
                fancy=False,
                meta=np.empty((0,) * source.ndim, dtype=source.dtype),
            )
    except StackFileError:
        raise
    except MemoryError as error:
        raise StackFileError(f"cannot read {str(path)!r}: not enough memory to decode it") from error
    except Exception as error:  # any reader failure is this file's problem, reported by name
        if "allow_pickle" in str(error):
            raise StackFileError(
                f"cannot read {str(path)!r}: it holds Python objects, not pixels "
                "(such files are never loaded)"
            ) from error
        raise StackFileError(f"cannot read {str(path)!r}: {error}".splitlines()[0]) from error
    if array.ndim < 2 or array.size == 0:
        raise StackFileError(f"{str(path)!r} holds no image (shape {array.shape})")
    _check_plane_size(path, tuple(int(n) for n in array.shape), max_plane_pixels)
    channel_axis = guess_channel_axis(tuple(array.shape))
    return array.rechunk(plane_chunks(tuple(array.shape), channel_axis)), channel_axis


def written_by_napari_deblur(path) -> bool:
    """Whether ``path`` is a ``.tif`` file or ``.zarr`` folder that :func:`iter_save_lazy` wrote.

    Recognised by the mark every output carries (:data:`OUTPUT_MARK`): a zarr
    attribute, or an entry of the TIFF's shaped metadata. Unreadable files are
    not.
    """
    path = Path(path)
    try:
        if path.is_dir():
            import zarr

            return OUTPUT_MARK in zarr.open_array(str(path), mode="r").attrs
        if path.is_file() and path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                description = tif.pages[0].description if len(tif.pages) else ""
            return OUTPUT_MARK in json.loads(description or "{}")
    except Exception:  # anything unreadable was not written by us
        return False
    return False


def check_replaceable(path, overwrite: OverwritePolicy = "never") -> None:
    """Raise :class:`StackFileError` unless ``path`` is free or ``overwrite`` allows replacing it.

    Parameters
    ----------
    path : str or os.PathLike
        Where an output will be written.
    overwrite : {"never", "own", "files"}
        See :data:`OverwritePolicy`. A folder napari-deblur did not write, and
        anything that is neither a regular file nor a folder, are never
        replaceable.
    """
    path = Path(path)
    if not os.path.lexists(path):
        return
    if overwrite not in ("never", "own", "files"):
        raise ValueError(f"overwrite must be 'never', 'own' or 'files', not {overwrite!r}")
    own = written_by_napari_deblur(path)
    if overwrite == "never":
        hint = " (pass --overwrite to replace it)" if own else ""
        raise StackFileError(f"{str(path)!r} already exists; nothing was written{hint}")
    if path.is_symlink() or not (path.is_file() or path.is_dir()):
        raise StackFileError(
            f"{str(path)!r} exists and is not a regular file or folder; it is never replaced"
        )
    if path.is_dir() and not own:
        raise StackFileError(
            f"{str(path)!r} is a folder that napari-deblur did not write; "
            "it is never replaced: move it away or choose another name"
        )
    if overwrite == "own" and not own:
        raise StackFileError(
            f"{str(path)!r} exists and was not written by napari-deblur; "
            "it is never replaced: move it away or choose another name"
        )


def _remove(path: Path) -> None:
    """Remove ``path`` (a partial output of this module, or an output it checked as replaceable)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        path.unlink()


def _give_usual_permissions(path: Path, mode: int) -> None:
    """The permissions a plainly created file or folder gets (temporary files are private)."""
    os.chmod(path, mode & ~_current_umask())


def _current_umask() -> int:
    try:  # Linux says it without changing it (os.umask would, for every thread, for a moment)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


class _TiffPlaneWriter:
    """Writes blocks of a contiguous float32 TIFF with ``os.pwrite`` (no memory map).

    A write that fails (a full disk, an I/O error) raises ``OSError`` where a
    memory map would kill the process with SIGBUS.
    """

    def __init__(self, path: Path, shape: tuple[int, ...], *, rgb: bool, description: str):
        import tifffile

        tifffile.imwrite(
            path,
            shape=shape,
            dtype=np.float32,
            photometric="rgb" if rgb else "minisblack",
            metadata={OUTPUT_MARK: description},
        )  # header only: the data area is sparse
        with tifffile.TiffFile(path) as tif:
            offset = tif.series[0].dataoffset
        if offset is None:  # pragma: no cover - tifffile writes shaped float32 contiguously
            raise StackFileError(
                f"cannot write {str(path)!r}: the TIFF writer did not lay out contiguous data"
            )
        self.offset, self.shape = int(offset), shape
        self.strides = tuple(int(np.prod(shape[i + 1 :])) * 4 for i in range(len(shape)))
        self.fd = os.open(path, os.O_WRONLY)

    def __setitem__(self, index: tuple[slice, ...], values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype="<f4")
        starts = [s.start or 0 for s in index] + [0] * (len(self.shape) - len(index))
        block = values.shape
        # The block is contiguous from the first axis after which every axis is whole.
        first = len(self.shape)
        while first > 0 and block[first - 1] == self.shape[first - 1]:
            first -= 1
        first = max(first - 1, 0)
        for outer in np.ndindex(*block[:first]):
            position = [start + i for start, i in zip(starts[:first], outer)] + starts[first:]
            data = memoryview(values[outer].reshape(-1)).cast("B")
            at = self.offset + sum(p * s for p, s in zip(position, self.strides))
            while data:
                written = os.pwrite(self.fd, data, at)
                data, at = data[written:], at + written

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def iter_save_lazy(
    lazy,
    path,
    *,
    channel_axis: int | None = None,
    at_once: int = 1,
    description: str = "",
    overwrite: OverwritePolicy = "never",
) -> JobSteps[Path]:
    """Compute a lazy result plane by plane into ``path`` (``.zarr`` or ``.tif``).

    Memory stays at about ``at_once`` planes. The data go to a hidden
    ``.<name>.*.partial`` beside ``path`` first, written with ordinary file
    writes, and that is renamed to ``path`` when every plane is written; it is
    deleted on any error (a full disk too), cancel (the generator is closed)
    or ``KeyboardInterrupt``. Every output is marked as written by
    napari-deblur (:data:`OUTPUT_MARK`, with ``description`` as its value).

    Parameters
    ----------
    lazy : dask.array.Array
        The result to compute.
    path : str or os.PathLike
        ``.zarr`` folder or ``.tif`` file to write.
    channel_axis : int, optional
        Colour axis of ``lazy`` (kept whole in each chunk; RGB TIFFs).
    at_once : int
        Planes computed together.
    description : str
        Stored with the data.
    overwrite : {"never", "own", "files"}
        What may be replaced when ``path`` exists (:func:`check_replaceable`).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    StackFileError
        An unsupported suffix, or ``path`` exists and may not be replaced
        (checked before anything is computed, and again before the rename).
    OSError
        Writing failed (e.g. a full disk); nothing is left behind.
    """
    from napari_deblur.engine.core.lazy import iter_compute_planes, plane_chunks

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in STACK_OUTPUT_SUFFIXES:
        raise StackFileError(f"cannot write {str(path)!r}: save as one of {', '.join(STACK_OUTPUT_SUFFIXES)}")
    check_replaceable(path, overwrite)
    shape = tuple(int(n) for n in lazy.shape)
    mark = description or "napari-deblur output"
    parent = path.parent if str(path.parent) else Path(".")
    partial: Path | None = None
    target = None
    try:
        if suffix == ".zarr":
            import zarr

            partial = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX, dir=parent))
            _give_usual_permissions(partial, 0o777)
            target = zarr.open_array(
                str(partial), mode="w", shape=shape, dtype="float32", chunks=plane_chunks(shape, channel_axis)
            )
            target.attrs[OUTPUT_MARK] = mark
        else:
            handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX, dir=parent)
            os.close(handle)
            partial = Path(name)
            _give_usual_permissions(partial, 0o666)
            rgb = channel_axis == len(shape) - 1 and shape[-1] in (3, 4)
            target = _TiffPlaneWriter(partial, shape, rgb=rgb, description=mark)

        yield from iter_compute_planes(
            lazy, target.__setitem__, at_once=at_once, message=f"writing {path.name}"
        )
        if suffix != ".zarr":
            os.fsync(target.fd)
            target.close()
        check_replaceable(path, overwrite)  # anything that appeared meanwhile is checked too
        if path.is_dir():  # an own output folder (checked): a rename cannot replace a full folder
            _remove(path)
        os.replace(partial, path)  # atomic for files
        partial = None
    finally:
        if isinstance(target, _TiffPlaneWriter):
            target.close()
        if partial is not None:
            _remove(partial)
    return path
