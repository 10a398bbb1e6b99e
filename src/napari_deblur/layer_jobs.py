"""Engine jobs on napari layers, without Qt: what a job reads from a layer, and the layers it adds.

:func:`select_input` checks an input layer and describes the data a scope
selects (:class:`JobSelection`); :func:`add_output_layers` turns a job's
results (:class:`OutputLayerSpec`) into layers just above the input, with the
input's geometry (scale, translate, rotation, shear, affine, units, axis
labels) and names that never overwrite an existing layer. The job-step helpers
read the data, drive the engine and save whole stacks. napari's layer model is
used, never Qt, so all of this runs and is tested without a display; the Qt
runner (:mod:`napari_deblur._qt.job_runner`) adds the buttons, the worker
thread and the progress bar.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

SCOPE_CURRENT_SLICE = "Current slice"
SCOPE_WHOLE_STACK = "Whole stack"
SCOPE_LAZY = "Whole stack, lazily (computed as you scroll)"
SCOPES = (SCOPE_CURRENT_SLICE, SCOPE_WHOLE_STACK)
LAZY_SCOPES = (*SCOPES, SCOPE_LAZY)
_DEFAULT_LABEL = re.compile(r"^-?\d+$")

MakeSteps = Callable[[np.ndarray, "int | None"], Generator[Any, Any, Any]]
MakeLazy = Callable[[Any, "int | None"], Any]
MakeOutputs = Callable[[Any], Sequence["OutputLayerSpec"]]


@dataclass
class OutputLayerSpec:
    """One layer a job adds to the viewer.

    Parameters
    ----------
    data : array-like or list
        Layer data (for ``"shapes"``: a list of vertex arrays in data
        coordinates of the output; for a current-slice job, vertices with one
        coordinate per input axis are in the input's own data coordinates,
        so the shapes lie on that slice).
    suffix : str
        The layer is named ``f"{input name} {suffix}"`` (plus the slice
        description for a current-slice job, and `` [n]`` when that name is
        taken).
    layer_type : {"image", "labels", "shapes"}
        Kind of layer to create.
    kwargs : dict
        Extra keyword arguments for the layer constructor (``colormap``,
        ``contrast_limits``, ``metadata``, ``opacity``...). Geometry (scale,
        translate, rotate, shear, affine, units, axis_labels) is taken from
        the input and should not be given here.
    match_input_contrast : bool
        For image outputs: use the input's contrast limits (and, for
        grayscale, its colormap and gamma) unless ``kwargs`` sets them.
    """

    data: Any
    suffix: str
    layer_type: Literal["image", "labels", "shapes"] = "image"
    kwargs: dict[str, Any] = field(default_factory=dict)
    match_input_contrast: bool = False


@dataclass(frozen=True)
class JobSelection:
    """The part of an input layer a job works on.

    Attributes
    ----------
    layer : napari.layers.Image
        The input layer.
    index : tuple of int or None
        Data index along the leading (non-spatial) axes for a current-slice
        job; ``None`` for the whole layer.
    channel_axis : int or None
        Axis of the selected data that holds RGB(A) channels, or ``None``.
    name_suffix : str
        ``""`` or a slice description such as ``" (slice z=4)"``.
    lazy : bool
        The whole layer as a dask array, for a lazy result (index is ``None``).
    """

    layer: Any
    index: tuple[int, ...] | None
    channel_axis: int | None
    name_suffix: str
    lazy: bool = False

    @property
    def covered_axes(self) -> tuple[int, ...]:
        """Layer (world) axes the selected data spans, channel axis excluded."""
        ndim = self.layer.ndim
        start = 0 if self.index is None else len(self.index)
        return tuple(range(start, ndim))

    def read_data(self) -> Any:
        """The selected data (level 0 if multiscale), never writable into the layer.

        Returns a read-only numpy array, read in full: slow for lazy (dask,
        zarr) data, so call it in the worker. For a lazy selection, returns a
        dask array without reading any pixel: the layer's own dask array, or
        its data wrapped one plane per chunk.
        """
        data = level0(self.layer)
        if self.lazy:
            if is_dask_array(data):
                return data
            import dask.array as da

            from napari_deblur.engine.core.lazy import plane_chunks

            if isinstance(data, np.ndarray):
                data = data.view()
                data.flags.writeable = False
            return da.from_array(data, chunks=plane_chunks(tuple(data.shape), self.channel_axis))
        if self.index is not None:
            data = data[self.index]
        array = np.asarray(data)
        view = array.view()
        view.flags.writeable = False
        return view


def level0(layer: Any) -> Any:
    """A layer's full-resolution data (level 0 of a multiscale pyramid)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def is_dask_array(data: Any) -> bool:
    """Whether ``data`` is a dask array (without importing dask)."""
    dask_array = sys.modules.get("dask.array")
    return dask_array is not None and isinstance(data, dask_array.Array)


def offers_lazy_scope(layer: Any) -> bool:
    """Whether ``layer`` is a stack held as a dask array (so it can be processed lazily)."""
    return layer is not None and layer.ndim > 2 and is_dask_array(level0(layer))


def leading_axis_names(layer: Any, n_lead: int) -> list[str]:
    labels = list(getattr(layer, "axis_labels", ()) or ())[:n_lead]
    defaults = {1: ["z"], 2: ["t", "z"]}.get(n_lead, [f"axis {i}" for i in range(n_lead)])
    names = []
    for i in range(n_lead):
        label = str(labels[i]) if i < len(labels) else ""
        names.append(defaults[i] if not label or _DEFAULT_LABEL.match(label) else label)
    return names


def free_gpu_cache() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def job_generator(selection: JobSelection, make_steps: MakeSteps) -> Generator[Any, Any, Any]:
    """Worker body: read the data, build the engine steps, forward their progress.

    superqt's generator worker swallows exceptions that subclass RuntimeError
    (``torch.cuda.OutOfMemoryError`` included), so they are re-raised here as
    ``EngineError``.
    """
    try:
        data = selection.read_data()
        steps = make_steps(data, selection.channel_axis)
        if not inspect.isgenerator(steps):
            raise TypeError(
                "make_steps must return a job generator (yielding JobProgress, returning the "
                f"result), got {type(steps).__name__}"
            )
        result = yield from steps
    except RuntimeError as exc:
        free_gpu_cache()
        from napari_deblur.engine import EngineError

        message = str(exc) or type(exc).__name__
        if "out of memory" in message.lower():
            message += " (try 'Current slice' or a smaller image)"
        raise EngineError(message) from exc
    return result


def lazy_result_steps(make_lazy: MakeLazy, data: Any, channel_axis: int | None) -> Generator:
    """Job steps of the lazy scope: the engine returns the lazy result at once."""
    from napari_deblur.engine import JobProgress

    lazy = make_lazy(data, channel_axis)
    yield JobProgress(1.0, "Lazy result ready: planes are computed as they are shown.")
    return lazy


def save_steps(
    make_lazy: MakeLazy, path: str, description: str, data: Any, channel_axis: int | None
) -> Generator:
    """Job steps of a save: compute the lazy result into ``path``, return the file opened lazily."""
    from napari_deblur.io.stack_files import iter_save_lazy, open_lazy_image

    lazy = make_lazy(data, channel_axis)
    # Outputs either keep the input's channel axis (sharpened images) or drop it (maps).
    output_channel_axis = channel_axis if lazy.ndim == data.ndim else None
    # The save dialog asked before an existing file was chosen; folders napari-deblur did not
    # write are still never replaced.
    saved = yield from iter_save_lazy(
        lazy, path, channel_axis=output_channel_axis, description=description, overwrite="files"
    )
    saved_data, _ = open_lazy_image(saved)
    return saved_data


def select_input(
    layer: Any, scope: str, world_point: Sequence[float], *, index: Sequence[int] | None = None
) -> JobSelection:
    """Validate ``layer`` and describe the data ``scope`` selects.

    Parameters
    ----------
    layer : napari.layers.Image
        The input layer.
    scope : str
        One of :data:`LAZY_SCOPES`. The lazy scope selects the whole layer
        as a dask array (of any layer).
    world_point : sequence of float
        The viewer's position (``viewer.dims.point``): the current slice.
    index : sequence of int, optional
        For the current-slice scope of a stack: the data index along the
        leading axes to take instead of the slice on screen.

    Returns
    -------
    JobSelection

    Raises
    ------
    ValueError
        No layer, an empty layer, a non-real dtype (complex, object...),
        or an ``index`` outside the stack.
    TypeError
        The layer is not an Image layer (Labels, Points...).
    """
    from napari.layers import Image, Labels

    if layer is None:
        raise ValueError("No image layer chosen: open an image and choose it as input.")
    if isinstance(layer, Labels) or not isinstance(layer, Image):
        raise TypeError(f"Layer {layer.name!r} is a {type(layer).__name__} layer: choose an Image layer.")
    data = level0(layer)
    shape = tuple(int(s) for s in data.shape)
    if any(s == 0 for s in shape):
        raise ValueError(f"Layer {layer.name!r} is empty (shape {shape}): choose another layer.")
    dtype = np.dtype(data.dtype)
    if dtype.kind not in "biuf":
        raise ValueError(
            f"Layer {layer.name!r} has dtype {dtype}, which is not a real number type: "
            "convert it to float (e.g. take abs() of complex data) first."
        )
    n_lead = layer.ndim - 2
    if n_lead < 0:
        raise ValueError(
            f"Layer {layer.name!r} is {layer.ndim}D: napari-deblur needs images with at least "
            "two spatial axes."
        )
    chosen, index = index, None
    suffix = ""
    if n_lead > 0 and scope == SCOPE_CURRENT_SLICE:
        if chosen is None:
            position = np.asarray(layer.world_to_data(world_point))[:n_lead]
            index = tuple(int(np.clip(np.round(p), 0, n - 1)) for p, n in zip(position, shape[:n_lead]))
        else:
            index = tuple(int(i) for i in chosen)
            if len(index) != n_lead or any(not 0 <= i < n for i, n in zip(index, shape[:n_lead])):
                raise ValueError(f"Slice {index} is not in layer {layer.name!r} of shape {shape}.")
        names = leading_axis_names(layer, n_lead)
        suffix = " (slice " + ", ".join(f"{a}={i}" for a, i in zip(names, index)) + ")"
    channel_axis = None
    if layer.rgb:
        channel_axis = len(shape) - 1 - (0 if index is None else len(index))
    return JobSelection(
        layer=layer,
        index=index,
        channel_axis=channel_axis,
        name_suffix=suffix,
        lazy=scope == SCOPE_LAZY,
    )


def add_output_layers(
    viewer: Any, selection: JobSelection, specs: Sequence[OutputLayerSpec], *, show: bool = False
) -> list[Any]:
    """Make the layers of ``specs`` and insert them just above the input, in order.

    Parameters
    ----------
    viewer : napari.Viewer or napari.components.ViewerModel
        Where the input layer is.
    selection : JobSelection
        What the job worked on (names, geometry).
    specs : sequence of OutputLayerSpec
    show : bool
        Make the input and the outputs visible (side by side).

    Returns
    -------
    list of napari layers
        The added layers.
    """
    taken = {layer.name for layer in viewer.layers}
    layers = []
    for spec in specs:
        layers.append(make_output_layer(selection, spec, taken))
        taken.add(layers[-1].name)
    viewer_layers = viewer.layers
    source = selection.layer
    position = viewer_layers.index(source) + 1 if source in viewer_layers else len(viewer_layers)
    for layer in layers:
        viewer_layers.insert(position, layer)
        position += 1
    if show:
        source.visible = True
        for layer in layers:
            layer.visible = True
    return layers


def unique_layer_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base [n]`` with the first ``n`` whose name is not in ``taken``."""
    if base not in taken:
        return base
    n = 1
    while f"{base} [{n}]" in taken:
        n += 1
    return f"{base} [{n}]"


def make_output_layer(selection: JobSelection, spec: OutputLayerSpec, taken: set[str]) -> Any:
    """The napari layer of ``spec``, with the input's geometry and a name not in ``taken``.

    Raises
    ------
    ValueError
        An unknown ``spec.layer_type``.
    """
    from napari.layers import Image, Labels, Shapes

    source = selection.layer
    kwargs = dict(spec.kwargs)
    name = unique_layer_name(f"{source.name} {spec.suffix}{selection.name_suffix}", taken)
    kwargs.pop("name", None)
    if spec.layer_type == "image":
        data = layer_array(spec.data)
        if "rgb" not in kwargs:
            kwargs["rgb"] = bool(source.rgb and data.ndim >= 3 and data.shape[-1] == level0(source).shape[-1])
        out_ndim = data.ndim - (1 if kwargs["rgb"] else 0)
        if spec.match_input_contrast:
            kwargs.setdefault("contrast_limits", list(source.contrast_limits))
            if not kwargs["rgb"] and not source.rgb:
                kwargs.setdefault("colormap", source.colormap)
                kwargs.setdefault("gamma", source.gamma)
        kwargs.update(output_geometry(source, selection.covered_axes, out_ndim))
        return Image(data, name=name, **kwargs)
    if spec.layer_type == "labels":
        data = layer_array(spec.data)
        kwargs.update(output_geometry(source, selection.covered_axes, data.ndim))
        return Labels(data, name=name, **kwargs)
    if spec.layer_type == "shapes":
        shapes = list(spec.data)
        out_ndim = kwargs.pop("ndim", None)
        if out_ndim is None:
            out_ndim = np.asarray(shapes[0]).shape[-1] if shapes else len(selection.covered_axes)
        axes = selection.covered_axes
        if selection.index is not None and int(out_ndim) == source.ndim:
            axes = tuple(range(source.ndim))  # shapes on one slice of the stack
        kwargs.update(output_geometry(source, axes, int(out_ndim)))
        return Shapes(shapes, ndim=int(out_ndim), name=name, **kwargs)
    raise ValueError(f"Unknown output layer type {spec.layer_type!r}: use 'image', 'labels' or 'shapes'.")


def layer_array(data: Any) -> Any:
    """Layer data as an array; dask arrays stay lazy (napari computes the planes it shows)."""
    return data if is_dask_array(data) else np.asarray(data)


def output_geometry(source: Any, covered_axes: Sequence[int], out_ndim: int) -> dict[str, Any]:
    """Geometry kwargs for an ``out_ndim`` output of ``source`` over ``covered_axes``.

    The output's trailing axes match the trailing covered axes of the input;
    extra leading output axes (e.g. an SNR axis) get unit scale, zero
    translate and no rotation.
    """
    from napari.utils.transforms import Affine

    covered = list(covered_axes)
    if out_ndim <= len(covered):
        axes = covered[len(covered) - out_ndim :]
        n_new = 0
    else:
        axes = covered
        n_new = out_ndim - len(covered)

    if n_new == 0 and axes == list(range(source.ndim)):
        return {
            "scale": source.scale,
            "translate": source.translate,
            "rotate": source.rotate,
            "shear": source.shear,
            "affine": source.affine.affine_matrix,
            "units": source.units,
            "axis_labels": source.axis_labels,
        }

    linear = Affine(rotate=source.rotate, shear=source.shear, ndim=source.ndim).set_slice(axes)
    affine = source.affine.set_slice(axes)
    scale = np.asarray(source.scale)[axes]
    if np.allclose(linear.linear_matrix, np.diag(np.diag(linear.linear_matrix))):
        scale = scale * np.diag(linear.linear_matrix)
    else:
        scale = scale * np.asarray(linear.scale)
    translate = np.asarray(source.translate)[axes]
    units = [source.units[i] for i in axes]
    labels = [str(source.axis_labels[i]) for i in axes]
    if n_new:
        new_axes = list(range(n_new))
        linear = linear.expand_dims(new_axes)
        affine = affine.expand_dims(new_axes)
        scale = np.concatenate([np.ones(n_new), scale])
        translate = np.concatenate([np.zeros(n_new), translate])
        units = ["pixel"] * n_new + units
        new_labels = []
        for i in range(n_new):
            label = str(-(out_ndim - i))
            while label in labels or label in new_labels:
                label = f"new {label}"
            new_labels.append(label)
        labels = new_labels + labels
    geometry = {
        "scale": scale,
        "translate": translate,
        "affine": affine.affine_matrix,
        "units": units,
        "axis_labels": labels,
    }
    matrix = linear.linear_matrix
    if not np.allclose(matrix, np.diag(np.diag(matrix))):
        # Only pass rotate/shear when there is one (napari's Affine.shear of a
        # diagonal transform has the wrong length for a layer argument).
        geometry["rotate"] = linear.rotate
        geometry["shear"] = linear.shear
    return geometry
