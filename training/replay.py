"""Build a seeded pool once per process, and replay it when the same draws are asked for again.

A training command builds the same costly pools several times: each of
Wiener-net's three stages and four validation sets draws a kernel pool (3000
kernels) and a pool of 200 dead-leaves images from its own seeded generator,
and several of them start from the same generator state (the validation sets
share a seed; the first two stages share one). On a GPU machine that took
about a minute per stage, longer than a thousand training steps.

:func:`replay_or_build` keys a build by its name, its parameters and the
generator's state before it. The first call builds and remembers the result
and the state after it; a later call with the same key returns the same
(read-only) result and moves the generator to that state, exactly as the
build would have. So every random stream, and every trained weight, is the
same as without the cache.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

import numpy as np

T = TypeVar("T")

REPLAY_CACHE_SIZE = 32
"""Builds kept per process, the least recently used dropped first. A Wiener-net stage makes
about nine (its training and validation pools); the largest, 200 dead-leaves images of 384 px,
is 118 MB, and a three-stage command holds four of them."""

_replays: OrderedDict = OrderedDict()


def replay_or_build(name: str, parameters: tuple, rng: np.random.Generator, build: Callable[[], T]) -> T:
    """``build()``, which draws from ``rng``, or its remembered result for the same ``rng`` state.

    Arrays in the result (alone, or in a list or tuple) are made read-only,
    since later calls share them.
    """
    key = (name, repr(parameters), repr(rng.bit_generator.state))
    if key in _replays:
        _replays.move_to_end(key)
        result, state_after = _replays[key]
        rng.bit_generator.state = state_after
        return result
    result = build()
    for array in result if isinstance(result, (list, tuple)) else [result]:
        if isinstance(array, np.ndarray):
            array.flags.writeable = False
    _replays[key] = (result, rng.bit_generator.state)
    while len(_replays) > REPLAY_CACHE_SIZE:
        _replays.popitem(last=False)
    return result
