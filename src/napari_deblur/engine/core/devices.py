"""Choosing the torch device: CUDA first, then Apple MPS, then the CPU.

This is the only module that decides where engine work runs.
"""

from __future__ import annotations

import logging
import os

import torch

from .cpu_memory import reuse_freed_memory
from .jobs import EngineMemoryError

logger = logging.getLogger(__name__)

DeviceLike = "str | torch.device | None"
_KNOWN_TYPES = ("cpu", "cuda", "mps")

CPU_BFLOAT16_OPT_OUT = "NAPARI_DEBLUR_CPU_FLOAT32"
"""Set to ``1`` to keep every CPU convolution in float32 (:func:`cpu_bfloat16_is_fast`)."""


def mps_is_available() -> bool:
    """True when PyTorch can use Apple's Metal (MPS) backend."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def select_device(device: str | torch.device | None = None) -> torch.device:
    """Return the torch device to run on.

    The first time it returns the CPU, it also lets glibc keep large freed
    blocks for reuse (:func:`~napari_deblur.engine.core.cpu_memory.reuse_freed_memory`).

    Parameters
    ----------
    device : {None, "auto", "cpu", "cuda", "cuda:N", "mps"} or torch.device
        ``None`` or ``"auto"`` picks CUDA when a GPU is visible, else Apple MPS,
        else the CPU. An explicit device is honoured when it exists.

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        If the name is not a device type torch knows, or the requested
        accelerator is not available on this machine.
    """
    chosen = _resolve_device(device)
    if chosen.type == "cpu":
        reuse_freed_memory()
    return chosen


def _resolve_device(device) -> torch.device:
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        if torch.cuda.is_available():
            chosen = torch.device("cuda")
        elif mps_is_available():
            chosen = torch.device("mps")
        else:
            chosen = torch.device("cpu")
        logger.debug("automatic device choice: %s", chosen)
        return chosen
    if isinstance(device, torch.device):
        chosen = device
    elif isinstance(device, str):
        try:
            chosen = torch.device(device.strip().lower())
        except RuntimeError as exc:
            raise ValueError(f"Unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'mps'.") from exc
    else:
        raise TypeError(f"device must be a string, a torch.device or None, not {type(device).__name__}.")
    if chosen.type not in _KNOWN_TYPES:
        raise ValueError(f"Unsupported device {chosen}; use 'auto', 'cpu', 'cuda' or 'mps'.")
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                "device='cuda' was requested but PyTorch sees no CUDA GPU here; use device='auto' or 'cpu'."
            )
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={str(chosen)!r} was requested but only "
                f"{torch.cuda.device_count()} CUDA device(s) are visible."
            )
    if chosen.type == "mps" and not mps_is_available():
        raise ValueError(
            "device='mps' was requested but Apple MPS is not available here; use device='auto' or 'cpu'."
        )
    return chosen


_OUT_OF_MEMORY_TEXTS = (
    "out of memory",  # CUDA, MPS
    "can't allocate memory",  # the CPU allocator on Linux (errno ENOMEM)
    "not enough memory",  # the CPU allocator on Windows
    "defaultcpuallocator",  # any failure of torch's CPU allocator
    "failed to allocate",
)


def is_out_of_memory(error: BaseException) -> bool:
    """True when ``error`` says an allocation failed, on the CPU or an accelerator.

    Recognised: ``MemoryError`` (numpy's and Python's), ``torch.OutOfMemoryError``
    and ``RuntimeError`` whose message is a CUDA, MPS or CPU allocator's
    (``"out of memory"``, ``"DefaultCPUAllocator: can't allocate memory"``,
    ``"not enough memory"``). An :class:`~napari_deblur.engine.core.jobs.EngineMemoryError`
    is not: it is the verdict after the smaller tiles were tried already.
    """
    if isinstance(error, EngineMemoryError):
        return False
    if isinstance(error, MemoryError):
        return True
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(error, oom_type):
        return True
    if not isinstance(error, RuntimeError):
        return False
    message = str(error).lower()
    return any(text in message for text in _OUT_OF_MEMORY_TEXTS)


def release_cached_memory(device: torch.device) -> None:
    """Give cached accelerator memory back after a failure or a finished job."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def cpu_bfloat16_is_fast(device: torch.device) -> bool:
    """True where Wiener-net's and the blur map's convolutions run in bfloat16: CPUs with native
    bfloat16 dot products.

    Those are x86 CPUs with AVX512-BF16 or AMX tiles, in a torch built with
    oneDNN, which runs a bfloat16 convolution there in about two thirds of the
    float32 time. Elsewhere bfloat16 would be emulated and slower, so float32
    stays; accelerators keep float32 too (their time is not the limit).
    ``NAPARI_DEBLUR_CPU_FLOAT32=1`` turns bfloat16 off. Only the convolutions
    change precision; the caller keeps its input, blend and output in float32
    (:func:`~napari_deblur.engine.methods.wiener_net.apply_network`,
    :func:`~napari_deblur.engine.methods.blur_map.predict_log_level`).
    """
    if device.type != "cpu" or os.environ.get(CPU_BFLOAT16_OPT_OUT, "").strip() not in ("", "0"):
        return False
    return _cpu_has_native_bfloat16()


def _cpu_has_native_bfloat16() -> bool:
    if not torch.backends.mkldnn.is_available():  # without oneDNN, bfloat16 convolutions are slow
        return False
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, so looked up softly
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)
