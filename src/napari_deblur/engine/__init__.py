"""The napari-deblur engine: PyTorch image restoration with no GUI dependency.

Importing this package never imports napari, Qt or magicgui. Public functions
take and return numpy arrays (any real dtype in, float32 out in the input's
intensity scale); their ``iter_*`` twins are generators that report progress
for long jobs (see :mod:`napari_deblur.engine.core.jobs`). Work runs on CUDA, then
Apple MPS, then the CPU (:func:`select_device`). Leading axes (z, t, ...) are
planes; ``channel_axis`` names a colour axis, and when it is None a 3D array
whose last axis has 3 or 4 entries is read as an RGB/RGBA image.
"""

from .core.devices import select_device
from .core.jobs import EngineError, EngineMemoryError, JobCancelled, JobProgress, run_job
from .core.planes import PlaneLayout
from .core.validation import as_float_image, as_psf
from .methods.blind_deblur import BlindDeblurResult, deblur_blind, iter_deblur_blind
from .methods.blind_psf import estimate_psf, iter_estimate_psf, kernel_similarity
from .methods.blur_map import (
    BLUR_CLASS_EDGES,
    BLUR_CLASS_NAMES,
    blur_classes,
    estimate_blur_map,
    iter_estimate_blur_map,
)
from .methods.defocus_deblur import deblur_defocus, iter_deblur_defocus
from .methods.gwis import iter_sharpen_gwis, sharpen_gwis
from .methods.region_selector import Region, iter_select_regions, select_regions
from .methods.richardson_lucy import iter_richardson_lucy, richardson_lucy
from .methods.wiener import (
    WIENER_STACK_SNRS_DB,
    iter_wiener_deconvolve,
    iter_wiener_deconvolve_3d,
    iter_wiener_deconvolve_snr_stack,
    wiener_deconvolve,
    wiener_deconvolve_3d,
    wiener_deconvolve_snr_stack,
)
from .methods.wiener_net import iter_wiener_net_deconvolve, wiener_net_deconvolve
from .methods.wiener_net_3d import iter_wiener_net_3d, wiener_net_3d
from .physics.convolution import blur, iter_blur
from .physics.microscope_psf import microscope_psf, prepare_measured_psf
from .physics.psf import (
    disk_psf,
    gaussian_psf,
    motion_psf,
    psf_blur_level,
    random_motion_psf,
    ring_psf,
)

__all__ = [
    "BLUR_CLASS_EDGES",
    "BlindDeblurResult",
    "BLUR_CLASS_NAMES",
    "WIENER_STACK_SNRS_DB",
    "EngineError",
    "EngineMemoryError",
    "JobCancelled",
    "JobProgress",
    "PlaneLayout",
    "Region",
    "as_float_image",
    "as_psf",
    "blur",
    "blur_classes",
    "deblur_blind",
    "deblur_defocus",
    "disk_psf",
    "estimate_blur_map",
    "estimate_psf",
    "gaussian_psf",
    "iter_blur",
    "iter_deblur_blind",
    "iter_deblur_defocus",
    "iter_estimate_blur_map",
    "iter_estimate_psf",
    "iter_richardson_lucy",
    "iter_select_regions",
    "iter_sharpen_gwis",
    "iter_wiener_deconvolve",
    "iter_wiener_deconvolve_3d",
    "iter_wiener_deconvolve_snr_stack",
    "iter_wiener_net_3d",
    "iter_wiener_net_deconvolve",
    "kernel_similarity",
    "microscope_psf",
    "motion_psf",
    "prepare_measured_psf",
    "psf_blur_level",
    "random_motion_psf",
    "richardson_lucy",
    "ring_psf",
    "run_job",
    "select_device",
    "select_regions",
    "sharpen_gwis",
    "wiener_deconvolve",
    "wiener_deconvolve_3d",
    "wiener_deconvolve_snr_stack",
    "wiener_net_3d",
    "wiener_net_deconvolve",
]
