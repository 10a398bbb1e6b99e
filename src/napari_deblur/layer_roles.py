"""How napari-deblur marks what a layer holds, in ``layer.metadata``.

Qt-free and napari-free so the reader, the sample data, the widgets and the
command line share one convention.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ROLE_KEY = "napari_deblur_role"
PSF_ROLE = "psf"
BLUR_MAP_ROLE = "blur_map"
PSF_PER_PLANE_KEY = "psf_per_plane"
"""Metadata flag of a PSF layer that holds one 2D kernel per image plane (not a 3D PSF)."""


def psf_metadata(**extra: Any) -> dict[str, Any]:
    """Metadata for a layer that holds a PSF (2D kernel or a stack of kernels)."""
    return {ROLE_KEY: PSF_ROLE, **extra}


def is_psf_metadata(metadata: Mapping[str, Any] | None) -> bool:
    """True when ``metadata`` marks a PSF layer."""
    return bool(metadata) and metadata.get(ROLE_KEY) == PSF_ROLE


def is_per_plane_psf(metadata: Mapping[str, Any] | None) -> bool:
    """True when ``metadata`` marks a stack of 2D kernels, one per image plane (:data:`PSF_PER_PLANE_KEY`)."""
    return bool(metadata) and bool(metadata.get(PSF_PER_PLANE_KEY, False))
