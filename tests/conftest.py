"""Shared pytest fixtures for napari-deblur."""

from __future__ import annotations

import pytest

# Same name as napari_deblur._qt.settings.CONFIG_DIR_ENV (not imported here so
# engine-only test runs never import the widget modules).
_CONFIG_DIR_ENV = "NAPARI_DEBLUR_CONFIG_DIR"


@pytest.fixture(autouse=True)
def _isolated_widget_settings(tmp_path, monkeypatch):
    """Keep remembered widget settings in a temporary folder, never the user's config."""
    folder = tmp_path / "napari-deblur-config"
    monkeypatch.setenv(_CONFIG_DIR_ENV, str(folder))
    return folder
