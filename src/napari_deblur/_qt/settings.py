"""Remembered widget settings: the values a user chose last time, per widget.

Only plain values (numbers, strings, booleans) are stored, never layers: they
live in one JSON file, ``widgets.json``, in the napari-deblur configuration
folder (``platformdirs.user_config_dir("napari-deblur")``). Set the environment
variable ``NAPARI_DEBLUR_CONFIG_DIR`` to use another folder (the tests do, so
they never touch the user's configuration).

magicgui's own ``persist=True`` is not used: it breaks with layer arguments.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from magicgui.widgets import Container

logger = logging.getLogger(__name__)

CONFIG_DIR_ENV = "NAPARI_DEBLUR_CONFIG_DIR"
SETTINGS_FILE_NAME = "widgets.json"
_PLAIN_TYPES = (bool, int, float, str)


def settings_path() -> Path:
    """Path of the JSON file that holds the remembered widget settings.

    Returns
    -------
    pathlib.Path
        ``$NAPARI_DEBLUR_CONFIG_DIR/widgets.json`` when that variable is set,
        otherwise ``widgets.json`` in the user configuration folder of
        napari-deblur. The file may not exist yet.
    """
    folder = os.environ.get(CONFIG_DIR_ENV)
    if not folder:
        from platformdirs import user_config_dir

        folder = user_config_dir("napari-deblur", appauthor=False)
    return Path(folder) / SETTINGS_FILE_NAME


def _read_all() -> dict[str, dict[str, Any]]:
    path = settings_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        logger.warning("Cannot read napari-deblur settings %s: %s", path, exc)
        return {}
    try:
        content = json.loads(text)
    except json.JSONDecodeError as exc:
        logger.warning("Ignoring corrupt napari-deblur settings %s: %s", path, exc)
        return {}
    if not isinstance(content, dict):
        return {}
    return {k: v for k, v in content.items() if isinstance(v, dict)}


def load_widget_settings(widget_name: str) -> dict[str, Any]:
    """Values remembered for one widget.

    Parameters
    ----------
    widget_name : str
        Key of the widget, e.g. ``"wiener"``.

    Returns
    -------
    dict
        ``{field name: value}``; empty when nothing was saved or the file is
        unreadable (a warning is logged, never raised).
    """
    return dict(_read_all().get(widget_name, {}))


def save_widget_settings(widget_name: str, values: Mapping[str, Any]) -> None:
    """Remember ``values`` for one widget (other widgets' values are kept).

    Parameters
    ----------
    widget_name : str
        Key of the widget, e.g. ``"wiener"``.
    values : Mapping[str, Any]
        ``{field name: value}``; only bool, int, float and str values are
        stored, anything else is skipped.

    Notes
    -----
    A file that cannot be written is logged as a warning: losing a remembered
    value must never break a widget.
    """
    plain = {k: v for k, v in values.items() if isinstance(v, _PLAIN_TYPES)}
    everything = _read_all()
    if everything.get(widget_name) == plain:
        return
    everything[widget_name] = plain
    path = settings_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(everything, indent=1, sort_keys=True), encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        logger.warning("Cannot save napari-deblur settings to %s: %s", path, exc)


def remember_values(container: Container, widget_name: str, fields: Iterable[str]) -> None:
    """Restore remembered values into ``container`` and save them on change.

    Parameters
    ----------
    container : magicgui.widgets.Container
        Widget whose sub-widgets (found by name, nested containers included)
        hold the values.
    widget_name : str
        Key under which the values are stored.
    fields : Iterable[str]
        Names of the sub-widgets to remember; they must hold plain values (no
        layers). A remembered value the widget no longer accepts (e.g. a
        choice that was removed) is skipped.
    """
    widgets = {}
    for name in fields:
        widget = _find_widget(container, name)
        if widget is None:
            raise ValueError(f"{widget_name!r} has no sub-widget named {name!r} to remember")
        widgets[name] = widget

    for name, value in load_widget_settings(widget_name).items():
        widget = widgets.get(name)
        if widget is None:
            continue
        try:
            widget.value = value
        except (ValueError, TypeError) as exc:
            logger.info("Not restoring %s.%s=%r: %s", widget_name, name, value, exc)

    def _save(*_: Any) -> None:
        save_widget_settings(widget_name, {n: w.value for n, w in widgets.items()})

    for widget in widgets.values():
        widget.changed.connect(_save)


def _find_widget(container: Container, name: str) -> Any:
    from magicgui.widgets import Container

    for widget in container:
        if widget.name == name:
            return widget
        if isinstance(widget, Container):
            found = _find_widget(widget, name)
            if found is not None:
                return found
    return None
