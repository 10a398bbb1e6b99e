"""Shared pytest fixtures for napari-deblur."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Same name as napari_deblur._widgets.settings.CONFIG_DIR_ENV (not imported here so
# engine-only test runs never import the widget modules).
_CONFIG_DIR_ENV = "NAPARI_DEBLUR_CONFIG_DIR"


@pytest.fixture(autouse=True)
def _isolated_widget_settings(tmp_path, monkeypatch):
    """Keep remembered widget settings in a temporary folder, never the user's config."""
    folder = tmp_path / "napari-deblur-config"
    monkeypatch.setenv(_CONFIG_DIR_ENV, str(folder))
    return folder


@pytest.fixture(scope="session")
def load_script():
    """``load_script(name)``: ``scripts/<name>.py`` imported as a module, with ``benchmarks/`` and
    ``scripts/`` importable as they are when the script runs (it imports from both)."""
    for folder in (ROOT / "benchmarks", ROOT / "scripts"):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
