"""Screenshot of the Deconvolve (microscopy) widget on the widefield-volume sample.

Usage (Linux without a display)::

    xvfb-run -a -s "-screen 0 1366x768x24" python tools/screenshot_microscopy.py docs/images/microscopy-widget.png
"""

from __future__ import annotations

import sys

import napari

from napari_deblur.demo import process_events, show_side_by_side


def main(path: str) -> None:
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1366, 720)
    viewer.open_sample("napari-deblur", "widefield_volume")
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-deblur", "Deconvolve (microscopy)")
    widget.reset_choices()
    widget.run()
    widget.runner.wait(timeout=600)
    show_side_by_side(viewer)
    process_events(1.0)
    viewer.screenshot(path, canvas_only=False)
    viewer.close()
    print(path)


if __name__ == "__main__":
    main(sys.argv[1])
