"""Layer lists for the widgets' combo boxes, shared by every widget.

Layers that hold a role (PSFs, blur maps; see :mod:`napari_deblur.layer_roles`)
are listed first where they are the expected input and left out where they
are not.
"""

from __future__ import annotations

from typing import Any

from magicgui.widgets import ComboBox

from napari_deblur.layer_roles import BLUR_MAP_ROLE, ROLE_KEY, is_psf_metadata


def is_image_layer(layer: Any) -> bool:
    """True for napari Image layers (not Labels, Points...)."""
    from napari.layers import Image

    return isinstance(layer, Image)


def image_input(viewer: Any, tooltip: str) -> ComboBox:
    """The "Image" combo box every widget starts with, listing :func:`image_choices`."""
    return ComboBox(name="image", label="Image", choices=lambda *_: image_choices(viewer), tooltip=tooltip)


def _has_role(layer: Any, role: str) -> bool:
    return bool(layer.metadata) and layer.metadata.get(ROLE_KEY) == role


def image_choices(viewer: Any) -> list[tuple[str, Any]]:
    """Image layers to process: everything but PSF and blur-map layers."""
    return [
        (layer.name, layer)
        for layer in viewer.layers
        if is_image_layer(layer)
        and not is_psf_metadata(layer.metadata)
        and not _has_role(layer, BLUR_MAP_ROLE)
    ]


def psf_choices(viewer: Any) -> list[tuple[str, Any]]:
    """Image layers that may hold a PSF, marked PSF layers first (no blur maps)."""
    images = [
        layer for layer in viewer.layers if is_image_layer(layer) and not _has_role(layer, BLUR_MAP_ROLE)
    ]
    marked = [layer for layer in images if is_psf_metadata(layer.metadata)]
    others = [layer for layer in images if not is_psf_metadata(layer.metadata)]
    return [(layer.name, layer) for layer in marked + others]


def blur_map_choices(viewer: Any) -> list[tuple[str, Any]]:
    """Image layers that may hold a blur map, marked blur maps first (no PSFs, no RGB)."""
    images = [
        layer
        for layer in viewer.layers
        if is_image_layer(layer) and not is_psf_metadata(layer.metadata) and not layer.rgb
    ]
    marked = [layer for layer in images if _has_role(layer, BLUR_MAP_ROLE)]
    others = [layer for layer in images if not _has_role(layer, BLUR_MAP_ROLE)]
    return [(layer.name, layer) for layer in marked + others]


def select_active_layer(combo: ComboBox, viewer: Any) -> None:
    """Point ``combo`` at the viewer's active layer when it is one of its choices."""
    active = viewer.layers.selection.active
    if active is None:
        return
    for layer in combo.choices:
        if layer is active:
            combo.value = layer
            return
