"""The training commands' data draws, pinned to numbers.

The shipped weights come from their training commands (the reports beside them). A change to the
data code that moves what a seed draws means the commands no longer make those weights; this test
says so at once rather than in a 30-minute rerun weeks later. Float rounding of the same draws on
another processor stays far inside the tolerance; a changed draw does not. If a change is meant,
remake the weights with their commands (or say in their reports why not) and paste the numbers the
failure prints. (Differences in the training arithmetic itself, e.g. between processors, are not
caught here: ``training/checks/same_weights.py`` compares a rerun's weights with the shipped ones.)

Small settings keep this fast; they run the same code as the shipped settings. A threshold moved
by a little (say a share of 25 % made 30 %) may draw the same few crops and pass unnoticed.
"""

import numpy as np
import pytest
import torch

from training import blur_map as tbm
from training import region_selector as trs
from training import wiener_net as twn

RELATIVE_TOLERANCE = 1e-4


def summary(*arrays) -> list[float]:
    """Per array: its sum, its sum of squares and a sum weighted by position (order matters)."""
    numbers = []
    for array in arrays:
        x = torch.as_tensor(np.asarray(array)).double().flatten()
        position = (torch.arange(x.numel(), dtype=torch.float64) % 7) + 1
        numbers += [x.sum().item(), (x * x).sum().item(), (position * x).sum().item()]
    return numbers


def check(name: str, measured: list[float], pinned: list[float]) -> None:
    assert measured == pytest.approx(pinned, rel=RELATIVE_TOLERANCE), (
        f"{name}: the training data drawn from a fixed seed changed; the shipped weights' command "
        f"no longer makes them. New numbers: {[float(f'{v:.8g}') for v in measured]}"
    )


def test_blur_map_batches_draw_what_they_drew():
    config = tbm.BlurMapTrainingConfig(batch=8, patch=48, n_dead_leaves=2, n_textures=2)
    batches = tbm.BlurMapBatches(config, 0, torch.device("cpu"))
    measured = []
    for _ in range(2):
        features, levels, _ = batches.draw()
        measured += summary(features, levels)
    check("blur map", measured, BLUR_MAP)


def test_wiener_net_batches_draw_what_they_drew():
    config = twn.WienerNetTrainingConfig(
        batch=8,
        patch=40,
        kernel_pool_size=12,
        n_dead_leaves=2,
        n_textures=2,
        texture_fraction=0.3,
        n_point_fields=2,
        point_field_fraction=0.3,
        n_text_pages=2,
        text_fraction=0.2,
        kernel_error_share=0.5,
    )
    batches = twn.BlurredBatches(config, 0, torch.device("cpu"))
    measured = []
    for _ in range(2):
        measured += summary(*batches.draw())
    check("Wiener-net", measured, WIENER_NET)


def test_region_selector_images_draw_what_they_drew():
    config = trs.RegionSelectorTrainingConfig(image_size=96)
    natural = trs._load_natural(config)
    drawn = [trs.blurred_image(index, natural, config) for index in range(16)]
    names = [sum(map(ord, d["kind"] + d["source"])) for d in drawn]
    measured = summary(
        np.stack([d["blurred"] for d in drawn]),
        np.stack([trs.embed(d["kernel"], trs.MAX_KERNEL) for d in drawn]),
        [d["noise"] for d in drawn],
        [d["estimate_size"] for d in drawn],
        names,
    )
    check("region selector", measured, REGION_SELECTOR)


# Pinned on 2026-11-29 (commit after 9b0634a); two batches of features and levels.
BLUR_MAP: list[float] = [
    2712.5517,
    9234.8561,
    10834.965,
    34695.545,
    115919.87,
    138844.57,
    3133.2016,
    8589.4429,
    12554.009,
    39458.855,
    125060.98,
    157824.27,
]
# Two batches of sharp crops, blurred crops and the kernels handed to the network.
WIENER_NET: list[float] = [
    7799.1947,
    5588.5949,
    31191.381,
    7803.6978,
    5155.8863,
    31206.039,
    8.0,
    0.10387589,
    31.968083,
    5672.8882,
    3443.0504,
    22686.767,
    5653.1661,
    3318.1566,
    22617.091,
    7.9999998,
    0.15428118,
    31.961659,
]
# Sixteen images: blurred pixels, true kernels, noise levels, estimate sizes, kinds and sources.
REGION_SELECTOR: list[float] = [
    77451.578,
    43348.798,
    309786.97,
    16.0,
    0.74196789,
    62.944704,
    0.19303729,
    0.0026901919,
    0.66524626,
    380.0,
    9584.0,
    1409.0,
    27785.0,
    52397871.0,
    95731.0,
]
