"""Long engine jobs as generators: progress between steps, cancellation, one driver.

Every long engine function has a generator twin (``iter_*``) that yields
:class:`JobProgress` between planes or tiles and *returns* its result.
Scripts call the plain function, which drives the generator with
:func:`run_job`; the napari runner drives the same generator in a worker
thread, so cancelling there stops the job at its next step.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class JobProgress:
    """How far a job has got: ``fraction`` in [0, 1] and a short message."""

    fraction: float
    message: str = ""


class JobCancelled(Exception):
    """Raised by :func:`run_job` when the caller asked to stop."""


class EngineError(Exception):
    """An engine failure that must reach the user (not a ``RuntimeError``).

    GUI worker threads lose exceptions that subclass ``RuntimeError`` (such as
    ``torch.OutOfMemoryError``), so the runner re-raises them as this type.
    """


class EngineMemoryError(EngineError, MemoryError):
    """Not enough memory for a job even in the smallest tiles the engine tries.

    Raised by the tiled methods (:func:`~napari_deblur.engine.core.tiling.iter_tiled`)
    after an out-of-memory error on the CPU or an accelerator has been retried
    with tiles down to :data:`~napari_deblur.engine.core.tiling.MIN_TILE_SIZE` px.
    An :class:`EngineError` (so the command line and the napari runner report
    it) and a ``MemoryError``; the allocator's own error is its ``__cause__``.
    """


JobSteps = Generator[JobProgress, None, T]
ProgressCallback = Callable[[JobProgress], Any]


def _cancel_requested(cancel: Any) -> bool:
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())


def run_job(
    steps: JobSteps[T],
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | Any = None,
) -> T:
    """Drive a job generator to its end and return its result.

    Parameters
    ----------
    steps : generator
        A job from one of the engine's ``iter_*`` functions.
    progress : callable, optional
        Called with each :class:`JobProgress`.
    cancel : callable returning bool, or an object with ``is_set()``
        Checked after every step (for example a ``threading.Event``).

    Returns
    -------
    The job's result.

    Raises
    ------
    JobCancelled
        If ``cancel`` asked to stop; the job's generator is closed first.
    """
    if _cancel_requested(cancel):
        steps.close()
        raise JobCancelled("The job was cancelled before it started.")
    while True:
        try:
            update = next(steps)
        except StopIteration as finished:
            return finished.value
        if progress is not None:
            progress(update)
        if _cancel_requested(cancel):
            steps.close()
            raise JobCancelled(f"The job was cancelled at {update.fraction:.0%}.")


def scaled_steps(steps: JobSteps[T], start: float, stop: float) -> JobSteps[T]:
    """Re-map the fractions of a sub-job to the range [start, stop] of a parent job."""
    span = stop - start
    while True:
        try:
            update = next(steps)
        except StopIteration as finished:
            return finished.value
        yield JobProgress(start + span * min(max(update.fraction, 0.0), 1.0), update.message)
