"""The coarse-resolution upsampling convolution and the glibc malloc setting."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from napari_deblur.engine.core import cpu_memory
from napari_deblur.engine.nets.layers import (
    ENSEMBLE_SIZES,
    dihedral_views,
    fold_phase_major,
    mean_over_views,
    unshuffle_order_of_phase_major,
    upsample_nearest_then_conv,
)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(2, 6, 7, 9), (1, 3, 1, 1), (1, 5, 1, 4), (3, 4, 16, 16)])
def test_upsample_then_conv_equals_the_two_step_form(shape, channels_last):
    torch.manual_seed(sum(shape))
    conv = nn.Conv2d(shape[1], 5, 3, padding=1)
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    reference = conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    fast = upsample_nearest_then_conv(x, conv)
    assert fast.shape == reference.shape == (shape[0], 5, 2 * shape[2], 2 * shape[3])
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
    # Training goes through the same function: the gradients must agree too.
    weights = torch.randn_like(reference)
    grads_reference = torch.autograd.grad((reference * weights).sum(), [x, conv.weight, conv.bias])
    grads_fast = torch.autograd.grad((fast * weights).sum(), [x, conv.weight, conv.bias])
    for fast_grad, reference_grad in zip(grads_fast, grads_reference):
        torch.testing.assert_close(fast_grad, reference_grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 4, 6), (1, 17, 8, 2), (1, 1, 2, 2)])
def test_phase_major_fold_holds_pixel_unshuffles_values_in_its_own_order(shape, channels_last):
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    folded = fold_phase_major(x)
    unshuffled = F.pixel_unshuffle(x, 2)
    assert folded.shape == unshuffled.shape
    assert torch.equal(folded, unshuffled[:, unshuffle_order_of_phase_major(shape[1])])
    # Channel p C + c is channel c at phase p = 2 dy + dx of each 2x2 block.
    channels = shape[1]
    for dy in (0, 1):
        for dx in (0, 1):
            phase = 2 * dy + dx
            assert torch.equal(folded[:, phase * channels : (phase + 1) * channels], x[..., dy::2, dx::2])
    if channels_last:  # the copy the CPU convolutions want, made by the fold itself
        assert folded.is_contiguous(memory_format=torch.channels_last)


def test_upsample_then_conv_without_bias():
    conv = nn.Conv2d(3, 2, 3, padding=1, bias=False)
    x = torch.randn(1, 3, 5, 6)
    torch.testing.assert_close(
        upsample_nearest_then_conv(x, conv), conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    )


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(3, 2, 5, padding=2),
        nn.Conv2d(3, 2, 3, padding=0),
        nn.Conv2d(3, 2, 3, stride=2, padding=1),
        nn.Conv2d(4, 2, 3, padding=1, groups=2),
        nn.Conv2d(3, 2, 3, padding=2, dilation=2),
    ],
)
def test_upsample_then_conv_refuses_other_convolutions(conv):
    with pytest.raises(ValueError, match="3x3 convolution with padding 1"):
        upsample_nearest_then_conv(torch.zeros(1, conv.in_channels, 4, 4), conv)


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 1, 6, 6)])
def test_every_ensemble_view_is_undone_by_its_inverse_and_the_views_differ(shape):
    features = torch.randn(shape)
    views = dihedral_views()
    assert len(views) == max(ENSEMBLE_SIZES)
    seen = []
    for forward, inverse in views:
        assert torch.equal(inverse(forward(features)), features)
        seen.append(forward(torch.arange(36.0).view(6, 6)))
    assert len({tuple(view.flatten().tolist()) for view in seen}) == len(views)


def test_the_mean_over_views_of_an_equivariant_map_is_that_map():
    x = torch.randn(2, 3, 8, 8)
    for ensemble in ENSEMBLE_SIZES:
        torch.testing.assert_close(mean_over_views(lambda t: 2 * t + 1, x, ensemble), 2 * x + 1)


def test_the_mean_over_views_of_a_position_dependent_map_averages_its_views():
    # Adding the row index is not equivariant: the half turn adds (H - 1 - row) instead,
    # so the mean of the two views adds (H - 1) / 2 everywhere.
    x = torch.zeros(1, 1, 5, 4)
    rows = torch.arange(5.0).view(1, 1, 5, 1)
    torch.testing.assert_close(mean_over_views(lambda t: t + rows, x, 1), x + rows)
    torch.testing.assert_close(mean_over_views(lambda t: t + rows, x, 2), x + 2.0)


@pytest.mark.parametrize("ensemble", [0, 3, 16, True, 2.0, "2", None])
def test_only_the_listed_ensemble_sizes_are_accepted(ensemble):
    with pytest.raises(ValueError, match="ensemble must be one of"):
        mean_over_views(lambda t: t, torch.zeros(1, 1, 4, 4), ensemble)


def test_numpy_integer_ensemble_sizes_are_accepted():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    torch.testing.assert_close(mean_over_views(lambda t: t * 2, x, np.int64(4)), x * 2)


@pytest.mark.parametrize(
    "variable, value",
    [
        ("NAPARI_DEBLUR_KEEP_MALLOC", "1"),
        ("MALLOC_ARENA_MAX", "2"),
        ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=1"),
    ],
)
def test_malloc_is_left_alone_when_the_user_says_so(monkeypatch, variable, value):
    monkeypatch.setattr(cpu_memory, "_state", {})
    monkeypatch.setenv(variable, value)
    assert cpu_memory.reuse_freed_memory() is False
    assert cpu_memory.reuse_freed_memory() is False  # decided once


_FAULT_PROBE = """
import json, resource, sys
import numpy as np
from napari_deblur.engine import select_device
select_device("cpu")
faults = []
for _ in range(4):  # 64 MB blocks, above glibc's largest automatic mmap threshold (32 MiB)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = np.ones(16 * 1024 * 1024, dtype=np.float32)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del block
print(json.dumps(faults))
"""


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the malloc setting exists only with glibc",
)
def test_choosing_the_cpu_makes_large_blocks_reusable():
    """A freed 64 MB block is served again without faulting its pages in anew."""

    def page_faults(extra_env):
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith("MALLOC_") and name != "GLIBC_TUNABLES"
        }
        env.pop(cpu_memory.OPT_OUT_VARIABLE, None)
        env.update(extra_env)
        done = subprocess.run(
            [sys.executable, "-c", _FAULT_PROBE],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return json.loads(done.stdout.strip().splitlines()[-1])

    # Transparent huge pages fault in 2 MiB at a time, so a fresh 64 MB block costs at
    # least 32 faults (16384 with 4 KiB pages); a reused one costs none.
    least_faults_of_a_fresh_block = 64 // 2
    untouched = page_faults({cpu_memory.OPT_OUT_VARIABLE: "1"})
    tuned = page_faults({})
    assert min(untouched[1:]) >= least_faults_of_a_fresh_block  # every block faults in again
    assert max(tuned[1:]) < least_faults_of_a_fresh_block  # the freed block is reused


class _RecordingLibc:
    def __init__(self):
        self.trims = 0

    def malloc_trim(self, pad):
        self.trims += 1
        return 1


def _wait_for(condition, seconds=5.0):
    import time

    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


@pytest.fixture
def recording_libc(monkeypatch):
    """Malloc counted as tuned, with a stand-in libc that records ``malloc_trim`` calls."""
    libc = _RecordingLibc()
    monkeypatch.setattr(cpu_memory, "_state", {"done": True, "libc": libc})
    monkeypatch.setattr(cpu_memory, "_jobs", {"running": 0, "started": 0, "trims": 0})
    return libc


def test_free_memory_goes_back_once_jobs_stop(monkeypatch, recording_libc):
    libc = recording_libc
    monkeypatch.setattr(cpu_memory, "IDLE_SECONDS", 0.2)
    with cpu_memory.job_memory():
        with cpu_memory.job_memory():  # nested jobs: nothing is given back while one runs
            pass
        assert not _wait_for(lambda: libc.trims > 0, seconds=0.5)
    assert _wait_for(lambda: libc.trims == 1)


def test_a_new_job_keeps_the_memory(monkeypatch, recording_libc):
    libc = recording_libc
    monkeypatch.setattr(cpu_memory, "IDLE_SECONDS", 0.3)
    with cpu_memory.job_memory():
        pass
    with cpu_memory.job_memory():  # starts before the first job's timer fires
        assert not _wait_for(lambda: libc.trims > 0, seconds=0.6)
    assert _wait_for(lambda: libc.trims == 1)  # only the second job's timer trims


def test_a_failed_job_also_gives_memory_back(monkeypatch, recording_libc):
    libc = recording_libc
    monkeypatch.setattr(cpu_memory, "IDLE_SECONDS", 0.05)
    with pytest.raises(ZeroDivisionError):
        with cpu_memory.job_memory():
            1 / 0
    assert _wait_for(lambda: libc.trims == 1)


def test_untuned_malloc_is_never_trimmed(monkeypatch):
    monkeypatch.setattr(cpu_memory, "_state", {"done": False})
    monkeypatch.setattr(cpu_memory, "_jobs", {"running": 0, "started": 0, "trims": 0})
    monkeypatch.setattr(cpu_memory, "IDLE_SECONDS", 0.01)
    with cpu_memory.job_memory():
        pass
    assert not _wait_for(lambda: cpu_memory._jobs["trims"] > 0, seconds=0.2)
