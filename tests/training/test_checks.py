"""Wrong kernels, low-contrast crops and the candidate judge of the Wiener-net held-out checks;
the weight comparison."""

import numpy as np
import pytest
import torch

from napari_deblur.engine.physics.psf import random_motion_psf
from training.checks import same_weights, wiener_net_candidate_judge, wiener_net_heldout_check


@pytest.fixture(scope="module")
def check():
    return wiener_net_heldout_check


@pytest.fixture(scope="module")
def kernels():
    from training.kernels import embed

    rng = np.random.default_rng(0)
    return torch.from_numpy(np.stack([embed(random_motion_psf(11, rng=rng), 31) for _ in range(3)]))


def second_moment(k: torch.Tensor) -> torch.Tensor:
    """Variance of each kernel's mass along rows plus along columns (px^2)."""
    coords = torch.arange(k.shape[-1], dtype=k.dtype)
    total = 0
    for axis in (-1, -2):
        marginal = k.sum(dim=axis)
        mean = (marginal * coords).sum(-1, keepdim=True)
        total = total + (marginal * (coords - mean) ** 2).sum(-1)
    return total


def test_no_error_returns_the_kernels(check, kernels):
    assert check.wrong_kernels(kernels, None) is kernels


def test_wide_adds_the_gaussian_variance(check, kernels):
    wide = check.wrong_kernels(kernels, "wide")
    assert wide.shape == kernels.shape
    torch.testing.assert_close(wide.sum(dim=(-2, -1)), torch.ones(3, dtype=wide.dtype))
    assert bool((wide >= 0).all())
    # Convolution adds variances: 2 axes x 0.8^2 (the 7-tap Gaussian is truncated a little).
    added = second_moment(wide) - second_moment(kernels)
    torch.testing.assert_close(
        added, torch.full_like(added, 2 * check.WIDE_KERNEL_SIGMA**2), atol=0.05, rtol=0
    )


def test_tails_cut_drops_faint_values(check, kernels):
    cut = check.wrong_kernels(kernels, "tails-cut")
    torch.testing.assert_close(cut.sum(dim=(-2, -1)), torch.ones(3, dtype=cut.dtype))
    faint = kernels < check.TAIL_FRACTION * kernels.amax(dim=(-2, -1), keepdim=True)
    assert bool((cut[faint] == 0).all())
    assert bool((cut[~faint] > kernels[~faint]).all())  # the rest renormalised upwards


def test_unknown_error_is_refused(check, kernels):
    with pytest.raises(ValueError, match="kernel error"):
        check.wrong_kernels(kernels, "shifted")


def test_contrast_scales_each_crop_about_its_own_mean(check):
    offsets = torch.arange(3.0).view(3, 1, 1, 1)
    crops = torch.rand(3, 1, 20, 24, generator=torch.Generator().manual_seed(0)) + offsets
    assert check.with_contrast(crops, 1.0) is crops
    low = check.with_contrast(crops, 0.15)
    torch.testing.assert_close(low.mean(dim=(-2, -1)), crops.mean(dim=(-2, -1)))
    torch.testing.assert_close(low.std(dim=(-2, -1)), 0.15 * crops.std(dim=(-2, -1)))


@pytest.fixture(scope="module")
def judge():
    return wiener_net_candidate_judge


def _table(rows):
    """A check-script table with the given (old gap, old lost, new gap, new lost) per row."""
    lines = [
        "| held-out crops (16, noise 0.01, seed 2000, interior) | Wiener, best SNR |"
        + " x | lost | worst |" * 4,
        "|---|" + "---:|" * 13,
    ]
    for i, (old, old_lost, new, new_lost) in enumerate(rows):
        cells = [
            f"row {i}",
            "30.00",
            "+9.99",
            "9/16",
            "-9.99",
            f"{old:+.2f}",
            f"{old_lost}/16",
            "-1.00",
            "+9.99",
            "9/16",
            "-9.99",
            f"{new:+.2f}",
            f"{new_lost}/16",
            "-1.00",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _tables(judge, change):
    """Every draw of the rule: 14 rows of gap 2.0 dB, 2 crops lost, changed by ``change(group, row)``."""
    return {
        name: _table([(2.0, 2, *change(name.rsplit("_", 1)[0], i)) for i in range(14)])
        for name, _ in judge.DRAWS
    }


def test_the_judge_ships_a_candidate_that_gains_with_wide_kernels_and_keeps_the_rest(judge):
    tables = _tables(judge, lambda group, row: (2.4, 2) if group == "W" else (2.0, 2))
    lines, ship = judge.verdict(tables)
    assert ship and lines[-1] == "SHIP"
    assert "| W | 5 | +2.00 (140) | +2.40 (140) | +0.40 |" in lines


@pytest.mark.parametrize(
    ("change", "failed"),
    [
        (lambda group, row: (2.1, 2), "(a)"),  # too little wide-kernel gain
        (lambda group, row: (1.9, 2) if group == "T0.03" else (2.5, 2), "(b)"),  # true-kernel mean falls 0.1
        (lambda group, row: (1.7, 2) if row == 3 else (2.5, 2), "(c)"),  # one row falls 0.3
        (lambda group, row: (1.8, 2) if group == "C" else (2.5, 2), "(d)"),  # tails-cut mean falls 0.2
        (lambda group, row: (2.5, 3) if row < 3 else (2.5, 2), "(e)"),  # lost 112 -> 136
    ],
)
def test_the_judge_refuses_a_candidate_that_breaks_one_criterion(judge, change, failed):
    lines, ship = judge.verdict(_tables(judge, change))
    assert not ship and lines[-1] == "DO NOT SHIP"
    assert [line.split()[1] for line in lines if line.startswith("FAILED")] == [failed]


def test_snr_pick_line_counts_the_members_taken(check):
    snrs = torch.tensor([9.0, 13.0, 17.0])
    line = check.snr_pick_line(torch.tensor([5, 0, 2]), snrs)
    assert line.endswith("(7 crops): 9 dB: 5, 17 dB: 2")


def test_same_weights_compares_tensors_not_file_bytes(tmp_path, capsys):
    weights = {"conv.weight": torch.arange(6.0).reshape(2, 3), "conv.bias": torch.zeros(2)}
    torch.save(weights, tmp_path / "shipped.pt")
    torch.save(weights, tmp_path / "remade.pt")
    assert (tmp_path / "shipped.pt").read_bytes() != (tmp_path / "remade.pt").read_bytes()
    assert same_weights.main([str(tmp_path / "shipped.pt"), str(tmp_path / "remade.pt")]) == 0
    assert "the same 2 tensors" in capsys.readouterr().out

    changed = dict(weights, **{"conv.weight": weights["conv.weight"] + 0.5})
    torch.save(changed, tmp_path / "changed.pt")
    assert same_weights.main([str(tmp_path / "shipped.pt"), str(tmp_path / "changed.pt")]) == 1
    assert "conv.weight: largest difference 0.5" in capsys.readouterr().out
    torch.save({"conv.weight": weights["conv.weight"]}, tmp_path / "fewer.pt")
    assert same_weights.main([str(tmp_path / "shipped.pt"), str(tmp_path / "fewer.pt")]) == 1
    assert "only in the first file: conv.bias" in capsys.readouterr().out
