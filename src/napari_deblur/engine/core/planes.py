"""Stacks, time series and colour: the engine works on planes.

An image is seen as leading axes (z, t, ...), two spatial axes (rows, columns)
and optionally a channel axis (``channel_axis``, e.g. RGB). Internally every
job works on ``(N, C, H, W)`` tensors: ``N`` planes of ``C`` channels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass

import numpy as np
import torch

from .cpu_memory import job_memory
from .image_stats import luminance
from .jobs import JobProgress, JobSteps, scaled_steps
from .validation import FLOAT32_MAX, as_float_image, check_psf_fits

MIN_PLANE_SIZE = 2

LARGEST_PLAIN_MAGNITUDE = 2.0**32
"""Planes whose largest magnitude exceeds this are processed scaled down by a power of two.

float32 holds values up to 3.4e38, but the methods square intensities (plane
statistics, local contrast, Fourier sums), which overflows from about 1e19
(a uint64 image near its top, or float data in odd units). Dividing by a power
of two is exact, so such a plane gives the same result as its scaled-down
copy; intensity outputs are scaled back. Planes at or below this magnitude
(every 8-, 16- and 32-bit integer image) run unscaled."""

SMALLEST_PLAIN_MAGNITUDE = 2.0**-16
"""Planes whose largest magnitude is below this (and not 0) are processed scaled up by a power of two.

The methods hold small absolute constants (divisions guarded by ``1e-6`` to
``1e-8``, noise floors, flatness tests) that are negligible next to ordinary
intensities but dominate a plane that peaks near 1e-8: unscaled, Wiener-net
would give up to 1e6 times the signal there and the blur map twice the level.
Such a plane is multiplied by the power of two that brings its peak into
``[0.5, 1)``, which is exact (float32 keeps every bit), and intensity outputs
are scaled back. Planes from here up to :data:`LARGEST_PLAIN_MAGNITUDE`
(float images in [0, 1], integer images) run unscaled."""


@dataclass(frozen=True)
class PlaneLayout:
    """Where the planes, rows, columns and channels of an image are.

    Parameters
    ----------
    shape : tuple of int
        The image's shape.
    channel_axis : int or None
        Axis holding colour channels, normalised to be non-negative.
        :meth:`of` reads a 3D shape ending in 3 or 4 as colour when it is
        None (:func:`colour_axis`).
    """

    shape: tuple[int, ...]
    channel_axis: int | None

    @classmethod
    def of(cls, shape: tuple[int, ...], channel_axis: int | None = None) -> PlaneLayout:
        """Describe ``shape``; raises ``ValueError`` for impossible layouts.

        ``channel_axis=None`` on a 3D shape ending in 3 or 4 means colour on the
        last axis (an RGB/RGBA photo, as napari shows it), not a stack of planes
        3 or 4 pixels wide.
        """
        shape = tuple(int(s) for s in shape)
        ndim = len(shape)
        channel_axis = colour_axis(shape, channel_axis)
        if channel_axis is not None:
            if isinstance(channel_axis, bool) or not isinstance(channel_axis, (int, np.integer)):
                raise TypeError(f"channel_axis must be an int or None, not {channel_axis!r}.")
            if not -ndim <= channel_axis < ndim:
                raise ValueError(f"channel_axis={channel_axis} is out of range for shape {shape}.")
            channel_axis = int(channel_axis) % ndim
            if ndim < 3:
                raise ValueError(
                    f"channel_axis is set but the image has only {ndim} dimensions {shape}; "
                    f"a colour image needs rows, columns and channels."
                )
        layout = cls(shape, channel_axis)
        height, width = layout.plane_shape
        if height < MIN_PLANE_SIZE or width < MIN_PLANE_SIZE:
            raise ValueError(
                f"Each image plane must be at least {MIN_PLANE_SIZE}x{MIN_PLANE_SIZE} pixels, "
                f"got {height}x{width} (shape {shape}). Is channel_axis right?"
            )
        return layout

    @property
    def _non_channel_shape(self) -> tuple[int, ...]:
        if self.channel_axis is None:
            return self.shape
        return self.shape[: self.channel_axis] + self.shape[self.channel_axis + 1 :]

    @property
    def plane_shape(self) -> tuple[int, int]:
        """(rows, columns) of one plane."""
        rows, cols = self._non_channel_shape[-2:]
        return rows, cols

    @property
    def leading_shape(self) -> tuple[int, ...]:
        """Shape of the plane axes (z, t, ...), empty for a single plane."""
        return self._non_channel_shape[:-2]

    @property
    def n_planes(self) -> int:
        return int(np.prod(self.leading_shape, dtype=np.int64))

    @property
    def n_channels(self) -> int:
        return 1 if self.channel_axis is None else self.shape[self.channel_axis]

    def to_planes(self, image: np.ndarray) -> np.ndarray:
        """Rearrange ``image`` to ``(N, C, H, W)`` (a view when possible)."""
        if self.channel_axis is None:
            return image.reshape((self.n_planes, 1) + self.plane_shape)
        moved = np.moveaxis(image, self.channel_axis, -1)
        planes = moved.reshape((self.n_planes,) + self.plane_shape + (self.n_channels,))
        return planes.transpose(0, 3, 1, 2)

    def from_planes(self, planes: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_planes`: ``(N, C, H, W)`` back to the image layout."""
        if self.channel_axis is None:
            return planes.reshape(self.shape)
        moved = planes.transpose(0, 2, 3, 1).reshape(
            self.leading_shape + self.plane_shape + (self.n_channels,)
        )
        return np.moveaxis(moved, -1, self.channel_axis)

    def psf_per_plane(self, psf: np.ndarray) -> np.ndarray:
        """Kernels for the planes: ``(1, h, w)`` shared, or ``(N, h, w)`` one per plane.

        A 2D PSF applies to every plane. A stack of 2D kernels (``psf_per_plane``
        in the public functions) needs one kernel per plane: its depth must
        equal the number of planes, or the length of the axis just before the
        rows (z), in which case it repeats over outer axes (t).
        """
        check_psf_fits(psf.shape, self.plane_shape)
        if psf.ndim == 2:
            return psf[None]
        depth = psf.shape[0]
        if depth == self.n_planes:
            return psf
        if self.leading_shape and depth == self.leading_shape[-1]:
            repeats = self.n_planes // depth
            return np.tile(psf, (repeats, 1, 1))
        raise ValueError(
            f"A PSF stack needs one kernel per plane: it has {depth} kernels but the image has "
            f"{self.n_planes} plane(s) (leading axes {self.leading_shape}). Use a 2D PSF for all "
            f"planes, or pick the matching kernel."
        )


def colour_axis(shape: tuple[int, ...], channel_axis: int | None) -> int | None:
    """``channel_axis``, or -1 for a 3D shape ending in 3 or 4 channels when it is None (RGB/RGBA,
    as napari shows such an array); None otherwise."""
    if channel_axis is None and len(shape) == 3 and shape[-1] in (3, 4):
        return -1
    return channel_axis


def single_grey_plane(image, channel_axis: int | None, *, caller: str) -> np.ndarray:
    """The one 2D plane a single-plane method works on: grayscale, or the luminance of colour.

    A trailing axis of 3 or 4 channels is taken as RGB/RGBA when ``channel_axis``
    is None (as napari shows it). Returns a float32 copy, in the image's own
    scale up to a power of two: a plane beyond :data:`LARGEST_PLAIN_MAGNITUDE`
    comes back divided by one, a plane below :data:`SMALLEST_PLAIN_MAGNITUDE`
    multiplied by one (both callers are blind to the intensity scale; their
    window statistics would overflow, or their small constants dominate).
    Raises ``ValueError`` naming ``caller`` for stacks and other shapes.
    """

    pixels = as_float_image(image)
    channel_axis = colour_axis(pixels.shape, channel_axis)
    if channel_axis is None and pixels.ndim != 2:
        raise ValueError(
            f"{caller} works on one 2D plane, got shape {pixels.shape}. Pass a single plane "
            f"(e.g. image[z]) or, for colour, set channel_axis (a trailing axis of 3 or 4 "
            f"channels is taken as RGB/RGBA automatically)."
        )
    layout = PlaneLayout.of(pixels.shape, channel_axis)
    if layout.n_planes != 1:
        raise ValueError(
            f"{caller} works on one plane, but shape {pixels.shape} with channel_axis="
            f"{channel_axis} holds {layout.n_planes} planes; pass a single plane (e.g. image[z])."
        )
    planes = np.array(layout.to_planes(pixels), dtype=np.float32)  # (1, C, H, W)
    grey = luminance(torch.from_numpy(scaled_down(planes, magnitude_exponent(planes))))
    return grey[0, 0].numpy()


def magnitude_exponent(pixels: np.ndarray) -> int:
    """The power of two a plane is processed divided by: 0 for ordinary magnitudes.

    Returns ``e`` such that ``pixels / 2**e`` peaks in ``[0.5, 1)`` when the
    largest magnitude of ``pixels`` exceeds :data:`LARGEST_PLAIN_MAGNITUDE`
    (``e > 0``) or is below :data:`SMALLEST_PLAIN_MAGNITUDE` but not 0
    (``e < 0``); otherwise, and for empty or all-zero planes, 0.
    """
    if not pixels.size:
        return 0
    peak = max(float(pixels.max()), -float(pixels.min()))  # no |pixels| temporary
    if peak > LARGEST_PLAIN_MAGNITUDE or 0.0 < peak < SMALLEST_PLAIN_MAGNITUDE:
        return math.frexp(peak)[1]
    return 0


def scaled_down(pixels: np.ndarray, exponent: int) -> np.ndarray:
    """``pixels / 2**exponent`` (exact; a negative exponent scales up), or ``pixels`` itself
    for 0 (no copy on the usual path)."""
    return np.ldexp(pixels, -exponent) if exponent else pixels


def scaled_back(values: np.ndarray, exponent: int) -> np.ndarray:
    """``values * 2**exponent`` as float32, clipped to the float32 range: the inverse of
    :func:`scaled_down` for intensity outputs (tiny outputs may round to subnormals or 0)."""
    if not exponent:
        return values
    return np.clip(np.ldexp(values.astype(np.float64), exponent), -FLOAT32_MAX, FLOAT32_MAX).astype(
        np.float32
    )


PlaneStepsFn = Callable[[torch.Tensor, "torch.Tensor | None"], JobSteps[torch.Tensor]]


def iter_planewise(
    image: np.ndarray,
    layout: PlaneLayout,
    plane_steps: PlaneStepsFn,
    *,
    device: torch.device,
    psf: np.ndarray | None = None,
    outputs_per_plane: int = 1,
    message: str = "",
    intensity_output: bool = True,
) -> Generator[JobProgress, None, np.ndarray]:
    """Run a per-plane job over every plane of ``image``.

    Parameters
    ----------
    image : numpy.ndarray, float32
        Validated image in its own layout.
    layout : PlaneLayout
        Its layout.
    plane_steps : callable
        ``plane_steps(x, psf)`` with ``x`` a ``(1, C, H, W)`` tensor on ``device``
        and ``psf`` a ``(h, w)`` tensor (or None) returns a job generator whose
        result is a ``(E, C, H, W)`` tensor, ``E == outputs_per_plane``.
    psf : numpy.ndarray, optional
        Normalised 2D PSF or per-plane 3D stack.
    outputs_per_plane : int
        ``E``; above 1 the result gets a new leading axis of that length.
    intensity_output : bool
        Whether the outputs are in the image's intensity units (restored
        images; scaled back after a huge plane was scaled down or a tiny one
        scaled up, see :data:`LARGEST_PLAIN_MAGNITUDE` and
        :data:`SMALLEST_PLAIN_MAGNITUDE`, and kept within the float32 range) or
        not (a blur map in pixels).

    Returns
    -------
    numpy.ndarray, float32
        ``image.shape``, or ``(E,) + image.shape`` when ``outputs_per_plane > 1``.
    """
    planes = layout.to_planes(image)
    kernels = None if psf is None else layout.psf_per_plane(psf)
    n_planes = layout.n_planes
    result = np.empty((outputs_per_plane,) + planes.shape, dtype=np.float32)
    with job_memory():  # free memory goes back to the system once jobs stop
        for index in range(n_planes):
            # A private copy: callers may pass read-only views (napari layers); torch needs writable memory.
            pixels = np.array(planes[index : index + 1], dtype=np.float32)
            exponent = magnitude_exponent(pixels)
            plane = torch.from_numpy(scaled_down(pixels, exponent)).to(device)
            kernel = None
            if kernels is not None:
                kernel = torch.from_numpy(np.array(kernels[index if len(kernels) > 1 else 0])).to(device)
            output = yield from scaled_steps(
                plane_steps(plane, kernel), index / n_planes, (index + 1) / n_planes
            )
            values = output.detach().to("cpu", torch.float32).numpy()
            if intensity_output:
                values = scaled_back(values, exponent)
            result[:, index] = values
            label = f"{message}: plane {index + 1}/{n_planes}" if n_planes > 1 else message
            yield JobProgress((index + 1) / n_planes, label)
    restored = np.stack([layout.from_planes(result[e]) for e in range(outputs_per_plane)])
    return restored if outputs_per_plane > 1 else restored[0]
