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


def psf_metadata(**extra: Any) -> dict[str, Any]:
    """Metadata for a layer that holds a PSF (2D kernel or a stack of kernels)."""
    return {ROLE_KEY: PSF_ROLE, **extra}


def is_psf_metadata(metadata: Mapping[str, Any] | None) -> bool:
    """True when ``metadata`` marks a PSF layer."""
    return bool(metadata) and metadata.get(ROLE_KEY) == PSF_ROLE
