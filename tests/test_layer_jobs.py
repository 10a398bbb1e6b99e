"""Input selection and output layers of engine jobs: napari's layer model only, no Qt, no display."""

from __future__ import annotations

import numpy as np
import pytest
from napari.components import ViewerModel
from napari.layers import Labels

from napari_deblur.layer_jobs import (
    SCOPE_CURRENT_SLICE,
    SCOPE_LAZY,
    SCOPE_WHOLE_STACK,
    OutputLayerSpec,
    add_output_layers,
    select_input,
)


@pytest.fixture
def stack_viewer():
    viewer = ViewerModel()
    data = np.arange(4 * 6 * 5, dtype=np.float32).reshape(4, 6, 5)
    layer = viewer.add_image(
        data,
        name="cells",
        scale=(2.0, 0.5, 0.5),
        translate=(10.0, 1.0, 2.0),
        axis_labels=("z", "y", "x"),
        units=("um", "um", "um"),
    )
    viewer.add_image(np.zeros((6, 5), dtype=np.float32), name="other")
    return viewer, layer


def test_the_current_slice_is_the_one_at_the_viewers_world_position(stack_viewer):
    viewer, layer = stack_viewer
    viewer.dims.point = (10.0 + 2 * 2.0, 0.0, 0.0)  # world z of plane 2
    selection = select_input(layer, SCOPE_CURRENT_SLICE, viewer.dims.point)
    assert selection.index == (2,) and selection.name_suffix == " (slice z=2)"
    np.testing.assert_array_equal(selection.read_data(), layer.data[2])
    assert not selection.read_data().flags.writeable


def test_whole_stack_and_lazy_scopes_select_everything(stack_viewer):
    import dask.array as da

    viewer, layer = stack_viewer
    whole = select_input(layer, SCOPE_WHOLE_STACK, viewer.dims.point)
    assert whole.index is None and whole.read_data().shape == (4, 6, 5)
    lazy = select_input(layer, SCOPE_LAZY, viewer.dims.point)
    assert isinstance(lazy.read_data(), da.Array)


def test_bad_inputs_are_refused_with_what_to_do(stack_viewer):
    viewer, _ = stack_viewer
    with pytest.raises(TypeError, match="Labels layer"):
        select_input(Labels(np.zeros((4, 4), dtype=int)), SCOPE_WHOLE_STACK, (0, 0))
    _, layer = stack_viewer
    with pytest.raises(ValueError, match="is not in layer"):
        select_input(layer, SCOPE_CURRENT_SLICE, (0, 0, 0), index=(7,))
    with pytest.raises(ValueError, match="No image layer"):
        select_input(None, SCOPE_WHOLE_STACK, (0, 0))


def test_outputs_go_above_the_input_with_its_geometry_and_new_names(stack_viewer):
    viewer, layer = stack_viewer
    selection = select_input(layer, SCOPE_WHOLE_STACK, viewer.dims.point)
    specs = [OutputLayerSpec(layer.data * 2, "Wiener"), OutputLayerSpec(layer.data * 3, "Wiener")]
    added = add_output_layers(viewer, selection, specs)

    assert [ly.name for ly in viewer.layers] == ["cells", "cells Wiener", "cells Wiener [1]", "other"]
    for out in added:
        np.testing.assert_array_equal(out.scale, layer.scale)
        np.testing.assert_array_equal(out.translate, layer.translate)
        assert tuple(out.axis_labels) == ("z", "y", "x")
    assert np.array_equal(layer.data[0, 0], np.arange(5, dtype=np.float32))  # the input is untouched


def test_a_slice_output_takes_the_geometry_of_the_planes_axes(stack_viewer):
    viewer, layer = stack_viewer
    selection = select_input(layer, SCOPE_CURRENT_SLICE, viewer.dims.point, index=(1,))
    (out,) = add_output_layers(viewer, selection, [OutputLayerSpec(np.ones((6, 5)), "map")])
    assert out.name == "cells map (slice z=1)"
    np.testing.assert_array_equal(out.scale, (0.5, 0.5))
    np.testing.assert_array_equal(out.translate, (1.0, 2.0))


def test_an_unknown_layer_type_is_an_error(stack_viewer):
    viewer, layer = stack_viewer
    selection = select_input(layer, SCOPE_WHOLE_STACK, viewer.dims.point)
    with pytest.raises(ValueError, match="Unknown output layer type"):
        add_output_layers(viewer, selection, [OutputLayerSpec(layer.data, "x", layer_type="points")])
