"""Let glibc reuse large freed blocks instead of mapping fresh pages for every tensor.

glibc's ``malloc`` serves every block above ``M_MMAP_THRESHOLD`` (at most
32 MiB) with a new ``mmap`` and unmaps it on ``free``, so the engine's large CPU
temporaries fault their pages in afresh for every layer and tile. The first
time the engine picks the CPU (:func:`~napari_deblur.engine.core.devices.select_device`),
:func:`reuse_freed_memory` raises the mmap threshold to :data:`MMAP_THRESHOLD_BYTES`
and the heap-trim threshold to :data:`TRIM_THRESHOLD_BYTES`, and limits glibc
to one arena so that worker threads (napari's, dask's) share the main heap.
Per-plane jobs run inside :func:`job_memory`: :data:`IDLE_SECONDS` after the
last one ends (or fails, or is cancelled) the heap's free memory goes back to
the system, so an idle session does not keep it.

It is a process-wide setting, made once, only where the C library is glibc
(Linux), and not when the user has set any ``MALLOC_*`` tunable in the
environment (their choice wins). ``NAPARI_DEBLUR_KEEP_MALLOC=1`` turns it off.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import threading
from contextlib import contextmanager

logger = logging.getLogger(__name__)

MMAP_THRESHOLD_BYTES = 512 * 1024 * 1024
"""Blocks at least this large are still mapped and unmapped directly."""

TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024
"""Free memory at the top of the heap above this is given back to the system."""

OPT_OUT_VARIABLE = "NAPARI_DEBLUR_KEEP_MALLOC"

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

IDLE_SECONDS = 2.0
"""Free heap memory goes back to the system this long after the last job ended."""

_lock = threading.Lock()
_state: dict[str, object] = {}
_jobs = {"running": 0, "started": 0, "trims": 0}


def _should_tune() -> tuple[bool, str]:
    if os.environ.get(OPT_OUT_VARIABLE, "").strip() not in ("", "0"):
        return False, f"{OPT_OUT_VARIABLE} is set"
    tunables = sorted(name for name in os.environ if name.startswith("MALLOC_"))
    if tunables or "GLIBC_TUNABLES" in os.environ:
        return False, f"the environment sets {', '.join(tunables) or 'GLIBC_TUNABLES'}"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False, "the C library is not glibc"
    return True, ""


def reuse_freed_memory() -> bool:
    """Tune glibc's malloc once per process (see the module notes).

    Returns
    -------
    bool
        True when the setting is in effect (made now or earlier).
    """
    with _lock:
        if "done" in _state:
            return _state["done"]
        tune, reason = _should_tune()
        done = False
        if tune:
            try:
                libc = ctypes.CDLL("libc.so.6")
                done = all(
                    libc.mallopt(parameter, value) == 1
                    for parameter, value in (
                        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
                        (_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
                        (_M_ARENA_MAX, 1),
                    )
                )
                reason = "" if done else "mallopt refused a setting"
            except (OSError, AttributeError) as error:
                reason = f"libc could not be loaded ({error})"
        if not done:
            logger.debug("malloc left as it is: %s", reason)
        _state["done"] = done
        if done:
            _state["libc"] = libc
        return done


@contextmanager
def job_memory():
    """Mark a CPU job; the heap's free memory goes back to the system once jobs stop.

    When the last running job ends (or fails, or is cancelled), a timer gives
    the free memory back (``malloc_trim``) after :data:`IDLE_SECONDS` unless a
    new job has started by then. Back-to-back calls (a script's loop, a
    benchmark) keep reusing the same blocks; an idle napari session does not
    keep them. Only where :func:`reuse_freed_memory` is in effect; without it
    glibc gives large blocks back on ``free`` anyway.
    """
    with _lock:
        _jobs["running"] += 1
        _jobs["started"] += 1
    try:
        yield
    finally:
        with _lock:
            _jobs["running"] -= 1
            started = _jobs["started"]
            idle = _jobs["running"] == 0
        if idle and _state.get("libc") is not None:
            timer = threading.Timer(IDLE_SECONDS, _trim_if_still_idle, args=(_jobs, started))
            timer.daemon = True
            timer.start()


def _trim_if_still_idle(jobs: dict, started: int) -> None:
    with _lock:
        if jobs is _jobs and jobs["running"] == 0 and jobs["started"] == started:
            _state["libc"].malloc_trim(0)
            _jobs["trims"] += 1
