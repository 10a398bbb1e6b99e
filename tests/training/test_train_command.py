"""``python -m training``: the command line and the training report."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training import train

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("model", ["wiener-net", "blurmap", "gwis-level", "region-selector"])
def test_every_model_has_its_command(model, capsys):
    with pytest.raises(SystemExit) as stop:
        train.main([model, "--help"])
    assert stop.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--steps", "--seed", "--threads", "--out"):
        assert option in help_text


def test_region_selector_command_takes_its_cache(capsys):
    with pytest.raises(SystemExit):
        train.main(["region-selector", "--help"])
    help_text = capsys.readouterr().out
    assert "--windows" in help_text and "--cache" in help_text


def test_the_command_runs_from_the_repository_root():
    done = subprocess.run(
        [sys.executable, "-m", "training", "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert "python -m training" in done.stdout and "region-selector" in done.stdout


def test_reports_of_shipped_weights_go_to_training_not_the_package(tmp_path):
    shipped = train._default_weights_path("blur_map.pt")
    assert train._report_path(shipped) == train.REPORTS_DIR / "blur_map.md"
    assert train._report_path(tmp_path / "candidate.pt") == tmp_path / "candidate.md"


def test_training_report_names_the_processor_and_its_cpu_kernels(tmp_path):
    """Weights reproduce byte for byte only on the same kind of CPU kernels, so reports say which."""
    report = tmp_path / "report.md"
    train._report(
        report, "Example", "python -m training example", {"device": "cpu", "history": []}, [], 90.0, "Notes."
    )
    text = report.read_text()
    assert f"torch CPU kernels {torch.backends.cpu.get_cpu_capability()}" in text
    assert "Processor: " in text and "wall time 1.5 min" in text
