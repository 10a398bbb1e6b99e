"""Long engine jobs as generators: progress between steps, cancellation, one driver.

Every long engine function has a generator twin (``iter_*``) that yields
:class:`JobProgress` between planes or tiles and *returns* its result.
Scripts call the plain function, which drives the generator with
:func:`run_job`; the napari runner drives the same generator in a worker
thread, so cancelling there stops the job at its next step. Each plain
function is built from its twin by :func:`job_facade`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

from .validation import is_dask_array

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


_FACADE_PARAMETERS = (
    inspect.Parameter("progress", inspect.Parameter.KEYWORD_ONLY, default=None),
    inspect.Parameter("cancel", inspect.Parameter.KEYWORD_ONLY, default=None),
)


def job_facade(
    steps: Callable[..., JobSteps[Any]], *, lazy: Callable[..., Any] | None = None
) -> Callable[[Callable[[], Any]], Callable[..., Any]]:
    """Decorator that builds an engine function from its generator twin.

    Applied to a stub without parameters whose docstring documents the
    function, it returns a function with the twin's signature plus the
    keyword-only ``progress=None, cancel=None``, which runs
    ``run_job(steps(...), progress, cancel)``. The stub's name, docstring,
    module and return annotation are kept; its body is never run.

    Parameters
    ----------
    steps : callable
        The generator twin (``iter_*``), a function returning :data:`JobSteps`.
    lazy : callable, optional
        Called as ``lazy(facade, *args, **kwargs)``, with every argument of the
        twin (defaults filled in) and the built function itself, when the
        first argument (the image) is a dask array; its result is returned
        instead of running the job (a lazy dask array, see
        :mod:`napari_deblur.engine.core.lazy`). ``progress`` and ``cancel``
        are not passed on. Without ``lazy``, a dask image is run like any
        other array.

    Returns
    -------
    callable
        The decorator.

    Raises
    ------
    TypeError
        If the stub declares parameters, or the twin already has a
        ``progress`` or ``cancel`` parameter.

    Examples
    --------
    >>> @job_facade(iter_blur, lazy=lazy_with_psf)   # doctest: +SKIP
    ... def blur() -> np.ndarray:
    ...     '''Blur an image with a PSF (numpydoc).'''
    """
    twin = inspect.signature(steps)
    clashes = [p.name for p in _FACADE_PARAMETERS if p.name in twin.parameters]
    if clashes:
        raise TypeError(f"{steps.__name__} already has the parameter(s) {clashes}; a job facade adds them.")
    parameters = list(twin.parameters.values())
    keyword_end = next((i for i, p in enumerate(parameters) if p.kind is p.VAR_KEYWORD), len(parameters))
    parameters[keyword_end:keyword_end] = _FACADE_PARAMETERS
    image_parameter = next(iter(twin.parameters), None)

    def decorate(stub: Callable[[], Any]) -> Callable[..., Any]:
        stub_signature = inspect.signature(stub)
        if stub_signature.parameters:
            raise TypeError(
                f"The stub of {stub.__name__} declares parameters; declare it without any: it takes "
                f"those of {steps.__name__} plus progress and cancel."
            )

        def facade(*args, progress=None, cancel=None, **kwargs):
            if lazy is not None:
                bound = twin.bind(*args, **kwargs)
                if is_dask_array(bound.arguments.get(image_parameter)):
                    bound.apply_defaults()
                    return lazy(facade, *bound.args, **bound.kwargs)
            return run_job(steps(*args, **kwargs), progress, cancel)

        facade.__name__ = stub.__name__
        facade.__qualname__ = stub.__qualname__
        facade.__module__ = stub.__module__
        facade.__doc__ = stub.__doc__
        facade.__signature__ = twin.replace(
            parameters=parameters, return_annotation=stub_signature.return_annotation
        )
        facade.__annotations__ = {
            **{p.name: p.annotation for p in parameters if p.annotation is not p.empty},
            **(
                {"return": stub_signature.return_annotation}
                if stub_signature.return_annotation is not stub_signature.empty
                else {}
            ),
        }
        return facade

    return decorate
