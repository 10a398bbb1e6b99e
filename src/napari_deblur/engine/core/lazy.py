"""Dask arrays in, lazy dask arrays out: every engine method on stacks larger than memory.

A public engine function given a ``dask.array.Array`` returns at once a lazy
float32 dask array. Its blocks are **whole planes**: one block per plane
(one index of every leading axis), all rows, columns and channels. Each
block is computed by the same in-memory function on that plane, so the lazy
result equals the in-memory one exactly, whatever the input's chunks (they
are rechunked: a plane cut into spatial chunks is put together first).

Blocks are whole planes because the methods use the whole plane (Fourier
division, per-plane noise and range statistics); inside a block the engine
tiles the plane on the device as in memory.

What stays bounded: memory is about (planes computed at once) x (one plane's
working set); napari showing a lazy result computes only the plane on screen.
Checks that need the pixels (NaN, infinity) run when a block is computed and
raise the same ``ValueError`` as in memory; shape, dtype and PSF checks run at
once. ``progress`` and ``cancel`` apply to in-memory calls; a lazy result is
computed plane by plane with :func:`iter_compute_planes` (progress, cancel)
or by dask itself (``.compute()``, ``.to_zarr()``, a ``dask.distributed``
client: every worker process loads a model once per device and uses its own
GPU when it has one, since ``device=None`` is resolved on the worker).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from .jobs import JobProgress, JobSteps
from .planes import PlaneLayout
from .validation import as_psf, is_dask_array, is_volume_psf

BlockFn = Callable[..., np.ndarray]


def check_lazy_image(image, *, name: str = "image") -> None:
    """The checks of :func:`~napari_deblur.engine.as_float_image` that need no pixels."""
    dtype = np.dtype(image.dtype)
    if np.issubdtype(dtype, np.complexfloating):
        raise ValueError(f"{name} is complex ({dtype}); pass a real image, e.g. abs({name}).")
    if not (dtype.kind == "b" or np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise TypeError(f"{name} has dtype {dtype}, which is not a number type; pass a numeric array.")
    if int(np.prod(image.shape, dtype=np.int64)) == 0:
        raise ValueError(f"{name} is empty (shape {tuple(image.shape)}); pass an array with pixels.")
    if image.ndim < 2:
        raise ValueError(
            f"{name} must have at least 2 dimensions (rows and columns), got shape {tuple(image.shape)}."
        )


def lazy_layout(image, channel_axis: int | None) -> PlaneLayout:
    """Check a dask image (what can be checked without its pixels) and describe its planes."""
    check_lazy_image(image)
    return PlaneLayout.of(tuple(image.shape), channel_axis)


def lazy_with_psf(method: BlockFn, image, psf, *, channel_axis: int | None = None, **kwargs):
    """``method(plane, kernel, channel_axis=..., **kwargs)`` lazily over the planes of ``image``.

    ``psf`` is checked and normalised at once (:func:`~napari_deblur.engine.as_psf`).
    With ``psf_per_plane=True`` in ``kwargs``, a PSF stack gives each plane
    its own kernel, as in memory; without it, a 3D PSF goes volume by volume
    (:func:`lazy_by_volume`).
    """
    kernel = as_psf(psf)
    if is_volume_psf(kernel, bool(kwargs.get("psf_per_plane", False))):
        return lazy_by_volume(method, image, psf, channel_axis=channel_axis, **kwargs)
    layout = lazy_layout(image, channel_axis)
    kernels = layout.psf_per_plane(kernel)

    def compute_block(block, plane):
        kernel = kernels[plane if len(kernels) > 1 else 0]
        return method(block, kernel, channel_axis=channel_axis, **kwargs)

    return lazy_planewise(compute_block, image, channel_axis=channel_axis)


def lazy_by_volume(method: BlockFn, image, psf, *, channel_axis: int | None = None, **kwargs):
    """``method(volume, psf, channel_axis=..., **kwargs)`` lazily over the volumes of ``image``.

    For a 3D PSF, each chunk of the result is one whole ``(z, y, x)`` volume
    (with its colour channels): a (t, z, y, x) stack is computed one time point
    at a time, as in memory. A 2D PSF goes plane by plane (:func:`lazy_with_psf`).

    Raises
    ------
    ValueError
        What :func:`check_lazy_image` raises; a 3D PSF with fewer than three
        spatial axes.
    """
    kernel = np.asarray(psf)
    if kernel.ndim != 3:
        return lazy_with_psf(method, image, psf, channel_axis=channel_axis, **kwargs)
    check_lazy_image(image)
    axis = None if channel_axis is None else channel_axis % image.ndim
    spatial = [a for a in range(image.ndim) if a != axis]
    if len(spatial) < 3:
        raise ValueError(
            f"A 3D PSF needs a 3D volume (z, y, x), got a dask image of shape {tuple(image.shape)}"
            f"{' with channel_axis=' + str(channel_axis) if channel_axis is not None else ''}."
        )
    volume_axes = set(spatial[-3:]) | ({axis} if axis is not None else set())
    chunks = tuple(n if a in volume_axes else 1 for a, n in enumerate(image.shape))

    def compute_block(block):
        return np.asarray(method(block, kernel, channel_axis=channel_axis, **kwargs), dtype=np.float32)

    return image.rechunk(chunks).map_blocks(compute_block, dtype=np.float32)


def plane_chunks(shape: tuple[int, ...], channel_axis: int | None) -> tuple[int, ...]:
    """One plane per chunk: 1 along leading axes, whole rows, columns and channels.

    ``channel_axis`` is non-negative or None.
    """
    spatial = [a for a in range(len(shape)) if a != channel_axis][-2:]
    return tuple(n if a in spatial or a == channel_axis else 1 for a, n in enumerate(shape))


def lazy_planewise(
    compute_block: BlockFn,
    image,
    *,
    channel_axis: int | None = None,
    per_plane=None,
    drop_channels: bool = False,
):
    """Map ``compute_block`` lazily over the planes of the dask array ``image``.

    Parameters
    ----------
    compute_block : callable
        ``compute_block(block, plane_index)`` or, with ``per_plane``,
        ``compute_block(block, plane_index, per_plane_block)``: ``block`` is
        one plane in the image's own layout (leading axes of length 1,
        ``channel_axis`` unchanged), ``plane_index`` its flat index among the
        planes, ``per_plane_block`` the matching plane of ``per_plane``
        (leading axes of length 1, rows, columns). Returns a float32 array of
        the block's shape, or without its channel axis when ``drop_channels``.
    image : dask.array.Array
    channel_axis : int, optional
    per_plane : array_like, optional
        Values per pixel (e.g. a blur map) of shape ``(H, W)`` (the same for
        every plane) or the image's non-channel shape; dask or numpy.
    drop_channels : bool
        The output has no channel axis (one value per pixel, e.g. a map).

    Returns
    -------
    dask.array.Array, float32, one chunk per plane.
    """
    import dask.array as da

    layout = lazy_layout(image, channel_axis)
    blocks = image.rechunk(plane_chunks(layout.shape, layout.channel_axis))
    leading_shape = layout.leading_shape
    n_leading = len(leading_shape)
    leading_axes = [a for a in range(image.ndim) if a != layout.channel_axis][:n_leading]
    arrays = [blocks]
    if per_plane is not None:
        arrays.append(_per_plane_blocks(per_plane, layout))

    def block_fn(block, *extra, block_info=None):
        location = block_info[0]["chunk-location"]
        plane = (
            int(np.ravel_multi_index(tuple(location[a] for a in leading_axes), leading_shape))
            if n_leading
            else 0
        )
        extra = [
            np.squeeze(e, axis=layout.channel_axis) if layout.channel_axis is not None else e for e in extra
        ]
        return np.asarray(compute_block(block, plane, *extra), dtype=np.float32)

    kwargs = {}
    if drop_channels and layout.channel_axis is not None:
        kwargs["drop_axis"] = layout.channel_axis
    return da.map_blocks(
        block_fn,
        *arrays,
        dtype=np.float32,
        meta=np.empty((0,) * (image.ndim - (1 if "drop_axis" in kwargs else 0)), dtype=np.float32),
        **kwargs,
    )


def _per_plane_blocks(values, layout: PlaneLayout):
    """``values`` as a dask array chunked like the image's planes (a length-1 channel axis added)."""
    import dask.array as da

    full_shape = layout.leading_shape + layout.plane_shape
    values = values if is_dask_array(values) else da.from_array(np.asarray(values))
    if tuple(values.shape) == layout.plane_shape and layout.leading_shape:
        values = da.broadcast_to(values, full_shape)
    if tuple(values.shape) != full_shape:
        allowed = f"{layout.plane_shape}" + (f" or {full_shape}" if layout.leading_shape else "")
        raise ValueError(
            f"The per-pixel array has shape {tuple(values.shape)} but the image's planes are "
            f"{layout.plane_shape} (image shape {layout.shape}); give shape {allowed}."
        )
    if layout.channel_axis is not None:
        values = da.expand_dims(values, layout.channel_axis)
    chunks = tuple(1 if axis < len(layout.leading_shape) else -1 for axis in range(len(full_shape)))
    if layout.channel_axis is not None:
        chunks = chunks[: layout.channel_axis] + (1,) + chunks[layout.channel_axis :]
    return values.rechunk(chunks)


def plane_slices(shape: tuple[int, ...], chunks: tuple[tuple[int, ...], ...]) -> Iterator[tuple[slice, ...]]:
    """The index of every block of a dask array with ``chunks``, in C order."""
    bounds = [np.concatenate([[0], np.cumsum(c)]) for c in chunks]
    for index in np.ndindex(*[len(c) for c in chunks]):
        yield tuple(slice(int(b[i]), int(b[i + 1])) for b, i in zip(bounds, index))


def iter_compute_planes(
    lazy,
    write: Callable[[tuple[slice, ...], np.ndarray], None],
    *,
    at_once: int = 1,
    message: str = "computing",
) -> JobSteps[int]:
    """Compute a lazy result block by block and hand each to ``write(index, values)``.

    ``at_once`` blocks are computed together (with dask's current scheduler:
    threads, or a ``dask.distributed`` client), so memory stays at about
    ``at_once`` blocks; progress is reported and cancellation honoured after
    each group. Returns the number of blocks written.
    """
    import dask

    indices = list(plane_slices(tuple(lazy.shape), lazy.chunks))
    total = len(indices)
    at_once = max(1, int(at_once))
    yield JobProgress(0.0, f"{message}: 0/{total}")
    for start in range(0, total, at_once):
        group = indices[start : start + at_once]
        values = dask.compute(*[lazy[index] for index in group])
        for index, value in zip(group, values):
            write(index, value)
        done = start + len(group)
        yield JobProgress(done / total, f"{message}: {done}/{total}")
    return total
