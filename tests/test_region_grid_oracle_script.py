"""The ranking and summary arithmetic of scripts/region_grid_oracle_check.py (no estimation run)."""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def check(load_script):
    return load_script("region_grid_oracle_check")


def test_within_case_auc(check):
    scores = np.array([0.9, 0.5, 0.1])
    assert check.within_case_auc(scores, np.array([True, False, False])) == 1.0
    assert check.within_case_auc(scores, np.array([False, False, True])) == 0.0
    assert check.within_case_auc(np.array([0.5, 0.5]), np.array([True, False])) == 0.5
    assert check.within_case_auc(scores, np.array([True, True, True])) is None
    assert check.within_case_auc(scores, np.array([False, False, False])) is None


def test_summary_counts_top_window_oracle_and_whole_image(check):
    def row(image, kernel, kind, score, ratio):
        return {"image": image, "kernel": kernel, "kind": kind, "region": "", "score": score,
                "error_ratio": ratio}

    rows = [
        # case 1: the top-scored window fails, another succeeds, the whole image fails
        row("a", 1, "whole image", float("nan"), 5.0), row("a", 1, "window", 0.9, 4.0),
        row("a", 1, "window", 0.2, 2.0),
        # case 2: the top window succeeds, the whole image succeeds
        row("a", 2, "whole image", float("nan"), 1.5), row("a", 2, "window", 0.8, 1.2),
        row("a", 2, "window", 0.1, 9.0),
    ]
    text = "\n".join(check.summary(rows))
    assert "| whole image | 50% |" in text
    assert "| selector's top-scored grid window | 50% |" in text
    assert "| some grid window (oracle over the selector's candidates) | 100% |" in text
    assert "| mean share of good windows in a case | 50% |" in text
    assert "mean 0.50" in text  # case 1 ranks wrongly (0), case 2 rightly (1)
