"""Shared helpers for the napari-deblur benchmarks (evaluation split only).

Everything the protocols of ``shared/eval/README.md`` have in common lives here
so that every benchmark blurs, adds noise and scores the same way:

- :func:`load_eval_image`: the eval-split images of scikit-image as grayscale
  float64 in [0, 1] (colour images: luminance, ``skimage.color.rgb2gray``).
- :func:`load_levin_kernels`, :func:`load_usrnet_kernels`: the real blur kernels
  from the MATLAB files in ``shared/eval/kernels``.
- :func:`blur_real_boundary`: blur with *real* boundaries (a larger crop is
  convolved with ``mode="valid"``, so content from outside the frame bleeds in,
  as in a camera).
- :func:`psnr_excluding_border`, :func:`ssim_excluding_border`,
  :func:`frame_band_psnr`: metrics with peak 1 after excluding a border as wide
  as the kernel, and the frame band against the interior (ringing check).

These images and kernels are for evaluation only: never train, tune or pick a
checkpoint on them.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: The eval split of ``shared/eval/README.md`` (scikit-image bundled data).
EVAL_IMAGES: tuple[str, ...] = (
    "camera",
    "text",
    "cell",
    "hubble_deep_field",
    "retina",
    "rocket",
    "brick",
)

#: Noise levels of protocol 3 (Wiener-net), standard deviations on a [0, 1] scale.
WIENER_NET_NOISE_SIGMAS: tuple[float, ...] = (2.55 / 255.0, 7.65 / 255.0)

_REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_eval_dir() -> Path:
    """Folder with the evaluation kernels and protocols (``shared/eval``).

    Looked up in this order: the ``NAPARI_DEBLUR_EVAL_DIR`` environment
    variable, ``<repo>/shared/eval``, ``<repo>/../shared/eval``.

    Raises
    ------
    FileNotFoundError
        If none of these folders exists.
    """
    candidates = []
    env = os.environ.get("NAPARI_DEBLUR_EVAL_DIR")
    if env:
        candidates.append(Path(env))
    candidates += [_REPO_ROOT / "shared" / "eval", _REPO_ROOT.parent / "shared" / "eval"]
    for folder in candidates:
        if (folder / "kernels").is_dir():
            return folder
    raise FileNotFoundError(
        "could not find the shared evaluation data (shared/eval/kernels); looked in "
        + ", ".join(str(c) for c in candidates)
        + ". Set NAPARI_DEBLUR_EVAL_DIR to the folder that holds 'kernels/'."
    )


def to_gray_unit(image: np.ndarray) -> np.ndarray:
    """Convert an image to grayscale float64 in [0, 1].

    Integer images are divided by the maximum of their dtype; colour images
    (last axis 3 or 4) become luminance with ``skimage.color.rgb2gray``
    (an alpha channel is dropped first).

    Parameters
    ----------
    image : ndarray, shape (H, W) or (H, W, 3|4)
        Image of any real dtype.

    Returns
    -------
    ndarray of float64, shape (H, W)
    """
    from skimage.color import rgb2gray
    from skimage.util import img_as_float64

    image = img_as_float64(np.asarray(image))
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        image = rgb2gray(image[..., :3])
    if image.ndim != 2:
        raise ValueError(f"expected a 2D grayscale or an RGB(A) image, got shape {image.shape}")
    return np.clip(image, 0.0, 1.0)


def load_eval_image(name: str) -> np.ndarray:
    """Load one eval-split image as grayscale float64 in [0, 1].

    Parameters
    ----------
    name : str
        One of :data:`EVAL_IMAGES`.

    Returns
    -------
    ndarray of float64, shape (H, W)

    Raises
    ------
    ValueError
        If ``name`` is not in the eval split (training images are refused on
        purpose).
    """
    if name not in EVAL_IMAGES:
        raise ValueError(f"{name!r} is not an eval-split image; use one of {', '.join(EVAL_IMAGES)}")
    import skimage.data

    return to_gray_unit(getattr(skimage.data, name)())


def _read_mat_cell(path: Path, variable: str) -> list[np.ndarray]:
    """Read a MATLAB cell array of 2D arrays (v7.3/HDF5 or v5) as float64 arrays."""
    import h5py

    if h5py.is_hdf5(path):
        kernels = []
        with h5py.File(path, "r") as f:
            cell = f[variable]
            for ref in np.asarray(cell).ravel(order="F"):
                # HDF5 stores MATLAB arrays column-major: transpose back.
                kernels.append(np.asarray(f[ref], dtype=np.float64).T)
        return kernels
    from scipy.io import loadmat

    cell = loadmat(path)[variable]
    return [np.asarray(k, dtype=np.float64) for k in cell.ravel(order="F")]


def _normalised(kernels: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [k / k.sum() for k in kernels]


def load_levin_kernels(path: str | os.PathLike | None = None) -> list[np.ndarray]:
    """Levin et al. (CVPR 2009) camera-shake kernels, float64, each summing to 1.

    Parameters
    ----------
    path : path-like, optional
        The ``Levin09.mat`` file (MATLAB v7.3); default
        ``shared/eval/kernels/Levin09.mat``.

    Returns
    -------
    list of 8 ndarrays
        Sizes 19, 17, 15, 27, 13, 21, 23, 23 (square, odd).

    Notes
    -----
    :func:`napari_deblur.io.psf_files.read_psf_file` reads the same kernels
    (equal to float32 precision) but zero-pads them to a common 27 x 27; the
    benchmarks keep the true sizes because the excluded border and the frame
    band are as wide as each kernel.
    """
    path = Path(path) if path is not None else shared_eval_dir() / "kernels" / "Levin09.mat"
    return _normalised(_read_mat_cell(path, "kernels"))


def load_usrnet_kernels(path: str | os.PathLike | None = None) -> list[np.ndarray]:
    """The 12 kernels of the USRNet paper (``kernels_12.mat``), float64, sum 1.

    Four isotropic Gaussians, four anisotropic Gaussians, four motion kernels;
    all 25x25.
    """
    path = Path(path) if path is not None else shared_eval_dir() / "kernels" / "kernels_12.mat"
    return _normalised(_read_mat_cell(path, "kernels"))


def center_crop(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Central ``shape`` window of the last two axes of ``image``."""
    h, w = image.shape[-2:]
    oh, ow = shape
    if oh > h or ow > w:
        raise ValueError(f"cannot crop {shape} out of an image of shape {(h, w)}")
    top, left = (h - oh) // 2, (w - ow) // 2
    return image[..., top : top + oh, left : left + ow]


def eval_crop_shape(image_shape: Sequence[int], max_size: int, margin: int) -> tuple[int, int]:
    """Output size for an image: at most ``max_size`` per side, leaving ``margin``.

    ``margin`` pixels are kept free on every side so that the largest kernel
    can take its real-boundary context from the image itself; using one shape
    for every kernel makes all kernels score the same region.
    """
    h, w = image_shape[-2:]
    shape = (min(max_size, h - 2 * margin), min(max_size, w - 2 * margin))
    if min(shape) < 16:
        raise ValueError(f"image of shape {(h, w)} is too small for a margin of {margin} px")
    return shape


def blur_real_boundary(
    source: np.ndarray,
    psf: np.ndarray,
    out_shape: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Blur the central ``out_shape`` window of ``source`` with real boundaries.

    A window larger than the output by the kernel's reach is convolved with
    ``mode="valid"`` (true convolution, the kernel is flipped), so pixels near
    the frame see the scene outside it, as in a camera; no padding is invented.

    Parameters
    ----------
    source : ndarray, shape (H, W)
        Sharp image, larger than ``out_shape`` by at least the kernel size.
    psf : ndarray, shape (kh, kw)
        Blur kernel (used as given; normalise it first).
    out_shape : (int, int)
        Shape of the blurred output.

    Returns
    -------
    blurred, sharp : ndarray of float64, shape ``out_shape``
        The blurred window and the sharp window it corresponds to
        (pixel-aligned: the kernel's centre ``(kh // 2, kw // 2)`` maps a
        sharp pixel onto the same blurred pixel).
    """
    from scipy.signal import fftconvolve

    source = np.asarray(source, dtype=np.float64)
    psf = np.asarray(psf, dtype=np.float64)
    h, w = source.shape
    oh, ow = out_shape
    kh, kw = psf.shape
    top, left = (h - oh) // 2, (w - ow) // 2
    # valid-convolution output i reads source[i + kh - 1 - j]; the centre tap
    # j = kh // 2 must land on the sharp pixel, hence this offset.
    off_y, off_x = kh - 1 - kh // 2, kw - 1 - kw // 2
    y0, x0 = top - off_y, left - off_x
    if y0 < 0 or x0 < 0 or y0 + oh + kh - 1 > h or x0 + ow + kw - 1 > w:
        raise ValueError(
            f"source {source.shape} too small for a {out_shape} output with a {psf.shape} kernel"
        )
    window = source[y0 : y0 + oh + kh - 1, x0 : x0 + ow + kw - 1]
    blurred = fftconvolve(window, psf, mode="valid")
    sharp = source[top : top + oh, left : left + ow]
    return blurred, sharp.copy()


def case_rng(*keys: int | str, base_seed: int = 20240601) -> np.random.Generator:
    """A fixed, independent random generator for one benchmark case.

    The seed depends only on ``keys`` (e.g. image name, kernel index, noise
    index), so a case gets the same noise whatever subset is run.
    """
    words = [base_seed]
    for key in keys:
        words.append(zlib.crc32(str(key).encode()) if isinstance(key, str) else int(key))
    return np.random.default_rng(words)


def add_gaussian_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Add white Gaussian noise of standard deviation ``sigma`` (no clipping)."""
    return image + rng.normal(0.0, sigma, size=image.shape)


def _inner(image: np.ndarray, border: int) -> np.ndarray:
    if border <= 0:
        return image
    if 2 * border >= min(image.shape[-2:]):
        raise ValueError(f"border {border} leaves nothing of an image of shape {image.shape}")
    return image[..., border:-border, border:-border]


def psnr_excluding_border(estimate: np.ndarray, reference: np.ndarray, border: int) -> float:
    """PSNR in dB (peak 1) after dropping ``border`` pixels on each side."""
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(_inner(reference, border), _inner(estimate, border), data_range=1.0))


def ssim_excluding_border(estimate: np.ndarray, reference: np.ndarray, border: int) -> float:
    """SSIM (``skimage.metrics``, data_range 1) after dropping ``border`` pixels on each side."""
    from skimage.metrics import structural_similarity

    return float(
        structural_similarity(
            _inner(reference, border).astype(np.float64),
            _inner(estimate, border).astype(np.float64),
            data_range=1.0,
        )
    )


def frame_band_psnr(estimate: np.ndarray, reference: np.ndarray, band: int) -> tuple[float, float]:
    """PSNR (peak 1) in the frame band of width ``band`` and in the interior.

    A method that rings at the frame (e.g. FFT deconvolution that assumes
    periodic boundaries) scores much lower in the band than inside.

    Returns
    -------
    band_psnr, interior_psnr : float
    """
    err = (np.asarray(estimate, np.float64) - np.asarray(reference, np.float64)) ** 2
    mask = np.ones(err.shape, dtype=bool)
    mask[band:-band, band:-band] = False

    def _psnr(mse: float) -> float:
        return float("inf") if mse == 0 else float(10.0 * np.log10(1.0 / mse))

    return _psnr(err[mask].mean()), _psnr(err[~mask].mean())


# ----------------------------------------------------------------------------- report header


def process_memory_bytes(field: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (this process image's peak) from ``/proc/self/status``.

    ``VmHWM`` starts afresh at ``exec``; ``ru_maxrss`` does not (Linux keeps the parent's peak in it), so
    a child started by a parent that made a large volume would report the parent's peak.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """The command that reproduces a benchmark run, for the top of its report."""
    import shlex
    import sys

    args = sys.argv[1:] if argv is None else list(argv)
    return "python " + " ".join(shlex.quote(a) for a in [script, *args])


def environment_line() -> str:
    """Versions and machine of a benchmark run, for the top of its report."""
    import platform

    import skimage
    import torch

    return (
        f"Python {platform.python_version()}, numpy {np.__version__}, scikit-image "
        f"{skimage.__version__}, torch {torch.__version__}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs."
    )
