"""The ``napari-deblur demo`` command: a sample, every widget, one result.

Two ways to show the plugin at work:

* :func:`run_gui_demo` opens napari with a sample and every plugin widget
  docked (:data:`DEMO_WIDGETS`) and, for the camera-shake sample, runs the
  Wiener widget with the sample's PSF: classical Wiener, then Wiener-net; for
  the defocus sample, Defocus deblur with the blur map it estimates. With a screenshot path it waits
  for the job, lays the layers out side by side, saves a screenshot of the
  whole window and closes (works under Xvfb and in CI).
* :func:`save_demo_figure` runs the same methods through the engine only (no
  Qt) and saves a matplotlib figure (Agg backend): for machines without a
  display.

napari, Qt, torch and matplotlib are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_deblur.layer_roles import is_psf_metadata

if TYPE_CHECKING:
    import napari

PLUGIN_NAME = "napari-deblur"

#: Display names (napari.yaml) of the widgets the demo docks, in order. Keep in
#: step with the manifest's ``widgets`` (a test checks it).
DEMO_WIDGETS: tuple[str, ...] = (
    "Wiener-net sharpener",
    "GWIS sharpener",
    "Blur map",
    "Region selector",
    "Deblur (blind)",
    "Defocus deblur",
    "Deconvolve (microscopy)",
)

#: Sample keys (napari.yaml ``sample_data``) the demo can open.
DEMO_SAMPLES: tuple[str, ...] = ("camera_shake", "defocus_ramp")

#: Name of the figure written without a GUI when no path is given.
DEFAULT_FIGURE_NAME = "napari-deblur-demo.png"

#: Wiener SNR (dB) the demo uses. The camera-shake sample carries noise of
#: sigma 0.01, about 28 dB below its signal; 25 dB restores it best
#: (PSNR 26.2 dB against 20.5 dB blurred; 25.4 dB at the default 30 dB).
DEMO_SNR_DB = 25.0

#: Longest time a demo job may take before the screenshot is given up (seconds).
JOB_TIMEOUT_S = 300.0

#: Largest window size (pixels): fits a 1366 x 768 laptop screen with room for a task bar.
DEMO_WINDOW_SIZE = (1366, 720)


# --------------------------------------------------------------------------- display


def display_missing_reason() -> str | None:
    """Why no napari window can be shown here, or ``None`` when one can.

    On Linux a window needs an X or Wayland server (``DISPLAY`` or
    ``WAYLAND_DISPLAY``); ``QT_QPA_PLATFORM=offscreen`` cannot draw napari's
    canvas either. Other platforms are assumed to have a display.

    Returns
    -------
    str or None
        A short human-readable reason, or ``None``.
    """
    if os.environ.get("QT_QPA_PLATFORM", "").lower() == "offscreen":
        return "QT_QPA_PLATFORM=offscreen cannot draw the napari canvas"
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        return "no display: neither DISPLAY nor WAYLAND_DISPLAY is set"
    return None


def _check_sample(sample: str) -> None:
    if sample not in DEMO_SAMPLES:
        raise ValueError(f"unknown demo sample {sample!r}; use one of {', '.join(DEMO_SAMPLES)}.")


# --------------------------------------------------------------------------- no-Qt figure


@dataclass
class Panel:
    """One image of the demo figure."""

    title: str
    data: np.ndarray
    cmap: str = "gray"
    vmin: float | None = 0.0
    vmax: float | None = 1.0
    colorbar: str | None = None


def _psnr(estimate: np.ndarray, reference: np.ndarray) -> float:
    from skimage.metrics import peak_signal_noise_ratio

    return float(
        peak_signal_noise_ratio(
            reference.astype(np.float64), np.clip(estimate, 0.0, 1.0).astype(np.float64), data_range=1.0
        )
    )


def demo_panels(sample: str) -> list[Panel]:
    """Run the demo's methods on ``sample`` with the engine only (no Qt).

    Parameters
    ----------
    sample : {"camera_shake", "defocus_ramp"}

    Returns
    -------
    list of Panel
        Input, each output and the maps / PSF, with titles (PSNR in dB against
        the sharp image where the sample knows it; outputs are clipped to
        [0, 1] for the PSNR).
    """
    from napari_deblur import sample_data

    _check_sample(sample)
    if sample == "camera_shake":
        from napari_deblur.engine import wiener_deconvolve, wiener_net_deconvolve

        blurred, psf, sharp = sample_data.camera_shake_arrays()
        restored = wiener_deconvolve(blurred, psf, snr_db=DEMO_SNR_DB)
        learned = wiener_net_deconvolve(blurred, psf)
        return [
            Panel(f"Camera shake (blurred)\nPSNR {_psnr(blurred, sharp):.2f} dB", blurred),
            Panel(f"Wiener, SNR {DEMO_SNR_DB:g} dB\nPSNR {_psnr(restored, sharp):.2f} dB", restored),
            Panel(f"Wiener-net\nPSNR {_psnr(learned, sharp):.2f} dB", learned),
            Panel("Sharp (ground truth)", sharp),
            Panel(f"PSF ({psf.shape[0]}x{psf.shape[1]} px)", psf, cmap="magma", vmin=0.0, vmax=None),
        ]
    from napari_deblur.engine import deblur_defocus, estimate_blur_map

    blurred, true_map = sample_data.defocus_ramp_arrays()
    estimated = estimate_blur_map(blurred)
    maximum = float(sample_data.DEFOCUS_RAMP_MAX_SIGMA)
    return [
        Panel("Defocus ramp (blurred)", blurred),
        Panel("Defocus deblur (estimated map)", np.clip(deblur_defocus(blurred, estimated), 0.0, 1.0)),
        *(
            Panel(title, levels, cmap="inferno", vmin=0.0, vmax=maximum, colorbar="sigma (px)")
            for title, levels in (
                ("Estimated blur map", estimated),
                ("True blur map (Gaussian sigma)", true_map),
            )
        ),
    ]


def save_demo_figure(sample: str, path: str | os.PathLike[str]) -> Path:
    """Run the demo without Qt and save a figure of the results as PNG.

    Parameters
    ----------
    sample : {"camera_shake", "defocus_ramp"}
        Which sample to process.
    path : path-like
        Where the PNG goes; parent folders are created.

    Returns
    -------
    pathlib.Path
        The absolute path of the written figure.

    Raises
    ------
    ValueError
        For an unknown sample.
    ImportError
        matplotlib is not installed (``pip install "napari-deblur[figure]"``).
    """
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError('the demo figure needs matplotlib: pip install "napari-deblur[figure]"') from error

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    panels = demo_panels(sample)
    path = Path(path).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.0 * len(panels), 4.8), squeeze=False, layout="constrained"
    )
    for ax, panel in zip(axes[0], panels):
        shown = ax.imshow(
            panel.data, cmap=panel.cmap, vmin=panel.vmin, vmax=panel.vmax, interpolation="nearest"
        )
        ax.set_title(panel.title, fontsize=10)
        ax.set_axis_off()
        if panel.colorbar:
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label=panel.colorbar)
    fig.suptitle(f"napari-deblur demo: {sample} (engine only, no napari window)", fontsize=11)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- napari


def open_demo_viewer(sample: str, *, show: bool = True) -> tuple[napari.Viewer, dict[str, Any]]:
    """A napari viewer with ``sample`` open and every :data:`DEMO_WIDGETS` docked.

    For ``camera_shake`` the Wiener widget is started on the sample's image
    with its PSF layer, classical at :data:`DEMO_SNR_DB` and then Wiener-net;
    for ``defocus_ramp`` Defocus deblur, with the map it estimates; the jobs
    run in the background
    (see :func:`wait_for_demo_jobs`).

    Parameters
    ----------
    sample : {"camera_shake", "defocus_ramp"}
        Which sample to open.
    show : bool
        Show the window (napari draws nothing into screenshots otherwise).

    Returns
    -------
    viewer : napari.Viewer
    widgets : dict
        The docked widgets by display name.
    """
    import napari

    _check_sample(sample)
    viewer = napari.Viewer(title=f"napari-deblur demo: {sample}", show=show)
    _fit_window_to_screen(viewer)
    layers = viewer.open_sample(PLUGIN_NAME, sample)
    widgets: dict[str, Any] = {}
    docks: dict[str, Any] = {}
    for name in DEMO_WIDGETS:  # tabbed: one widget visible at a time, the canvas keeps its room
        docks[name], widget = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, name, tabify=bool(docks))
        docks[name].setWindowTitle(name)  # the tab's text: without " (napari-deblur)", five tabs fit
        widgets[name] = widget
    in_use = "Wiener-net sharpener" if sample == "camera_shake" else "Defocus deblur"
    _bring_to_front(docks[in_use])
    _lay_out_results_when_done(viewer, widgets[in_use], jobs=2 if sample == "camera_shake" else 1)
    if sample == "camera_shake":
        _start_wiener(widgets[in_use], layers)
    else:
        _point_widgets_at_input(widgets, layers[0])
        _start_defocus_deblur(widgets[in_use], layers)
    return viewer, widgets


def _bring_to_front(dock: Any) -> None:
    """Show ``dock``'s tab (now and once the window has laid its docks out)."""
    from qtpy.QtCore import QTimer

    def settle() -> None:
        try:
            dock.raise_()
        except RuntimeError:  # the window was closed before the timer fired
            pass

    settle()
    QTimer.singleShot(0, settle)
    QTimer.singleShot(300, settle)


def _fit_window_to_screen(viewer: Any) -> None:
    """Size the window to :data:`DEMO_WINDOW_SIZE`, or smaller to fit the screen it is on."""
    from qtpy.QtWidgets import QApplication

    width, height = DEMO_WINDOW_SIZE
    screen = QApplication.primaryScreen()
    if screen is not None:
        available = screen.availableGeometry()
        width, height = min(width, available.width()), min(height, available.height())
    viewer.window.resize(width, height)


def show_side_by_side(viewer: Any) -> None:
    """Input and results side by side (napari's grid), PSFs hidden, the view fitted to the image."""
    from napari_deblur._qt.job_runner import viewer_grid

    for layer in viewer.layers:  # a 25 px PSF is only a dot in a grid cell
        if is_psf_metadata(layer.metadata):
            layer.visible = False
    viewer_grid(viewer).enabled = True
    viewer.reset_view()


def _lay_out_results_when_done(viewer: Any, widget: Any, jobs: int) -> None:
    """Show the results side by side once the last of ``widget``'s ``jobs`` jobs has added its layer."""
    expected = {"count": jobs}

    def finished(_layers: list[Any]) -> None:
        expected["count"] -= 1
        if expected["count"] <= 0:
            widget.runner.job_finished.disconnect(finished)
            show_side_by_side(viewer)

    widget.runner.job_finished.connect(finished)


def _start_defocus_deblur(widget: Any, layers: list[Any]) -> None:
    """Run Defocus deblur on the defocus sample with the blur map it estimates itself."""
    from napari_deblur._qt.blur_level_inputs import BLUR_AUTOMATIC
    from napari_deblur.layer_roles import BLUR_MAP_ROLE, ROLE_KEY

    image_layer = next(layer for layer in layers if layer.metadata.get(ROLE_KEY) != BLUR_MAP_ROLE)
    widget.reset_choices()
    widget.image.value = image_layer
    widget.blur_source.value = BLUR_AUTOMATIC
    widget.psf_model.value = "gaussian"
    widget.run()


def _point_widgets_at_input(widgets: dict[str, Any], image_layer: Any) -> None:
    """Select the sample's (blurred) image in every widget that has an image input."""
    for widget in widgets.values():
        choice = getattr(widget, "image", None)
        if choice is not None and hasattr(widget, "reset_choices"):
            widget.reset_choices()
            with contextlib.suppress(ValueError):
                choice.value = image_layer


def _start_wiener(widget: Any, layers: list[Any]) -> None:
    """Deconvolve the sample with its PSF layer: classical Wiener, then Wiener-net.

    The second job starts when the first has added its layer, so the two
    results sit side by side (the runner runs one job at a time).
    """
    from napari_deblur._qt.wiener_widget import METHOD_WIENER, METHOD_WIENER_NET, PSF_FROM_LAYER
    from napari_deblur.layer_roles import is_psf_metadata

    psf_layer = next(layer for layer in layers if is_psf_metadata(layer.metadata))
    image_layer = next(layer for layer in layers if layer is not psf_layer)
    widget.reset_choices()
    widget.image.value = image_layer
    widget.psf_source.value = PSF_FROM_LAYER
    widget.psf_layer.value = psf_layer
    widget.method.value = METHOD_WIENER
    widget.snr_db.value = DEMO_SNR_DB

    def run_learned(_layers: list[Any]) -> None:
        widget.runner.job_finished.disconnect(run_learned)
        widget.image.value = image_layer
        widget.method.value = METHOD_WIENER_NET
        widget.run()

    widget.runner.job_finished.connect(run_learned)
    widget.run()


def wait_for_demo_jobs(widgets: dict[str, Any], timeout: float = JOB_TIMEOUT_S) -> list[Any]:
    """Process Qt events until every demo widget's job has finished.

    Returns
    -------
    list
        The layers the jobs added.

    Raises
    ------
    TimeoutError
        A job is still running after ``timeout`` seconds.
    Exception
        A job's own error, when it failed.
    """
    added: list[Any] = []
    for widget in widgets.values():
        runner = getattr(widget, "runner", None)
        if runner is not None:
            added += runner.wait(timeout=timeout)
    return added


@contextlib.contextmanager
def _demo_settings() -> Iterator[None]:
    """Keep the demo's widget values out of the user's remembered settings.

    The widgets remember their values in a settings file; the demo sets its
    own values, so it runs against a temporary settings folder (unless the
    caller chose one with ``NAPARI_DEBLUR_CONFIG_DIR``).
    """
    from napari_deblur._qt.settings import CONFIG_DIR_ENV

    if os.environ.get(CONFIG_DIR_ENV):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="napari-deblur-demo-") as folder:
        os.environ[CONFIG_DIR_ENV] = folder
        try:
            yield
        finally:
            os.environ.pop(CONFIG_DIR_ENV, None)


def run_gui_demo(sample: str, screenshot: str | os.PathLike[str] | None = None) -> Path | None:
    """Open the napari demo; with ``screenshot``, save the window and close.

    Parameters
    ----------
    sample : {"camera_shake", "defocus_ramp"}
        Which sample to open.
    screenshot : path-like, optional
        Save a screenshot of the whole window (``canvas_only=False``) here
        after the demo job finished and the layers are laid out side by side
        (napari grid), then close napari. Without it, napari runs until the
        user closes it.

    Returns
    -------
    pathlib.Path or None
        The screenshot's absolute path, if one was asked for.

    Raises
    ------
    TimeoutError
        The demo job did not finish within :data:`JOB_TIMEOUT_S`.
    """
    import napari

    with _demo_settings():
        viewer, widgets = open_demo_viewer(sample, show=True)
        if screenshot is None:
            print(
                "napari-deblur demo: the napari window is open; the results appear side by side when "
                "the job is done. Close the window to end the demo.",
                flush=True,
            )
            napari.run()
            return None
        path = Path(screenshot).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            wait_for_demo_jobs(widgets)
            process_events(0.3)
            show_side_by_side(viewer)  # already done when the last job finished; again after the docks settle
            process_events(0.5)
            viewer.screenshot(str(path), canvas_only=False)
        finally:
            viewer.close()
        return path


def process_events(seconds: float) -> None:
    """Let Qt handle events for ``seconds`` (layers draw, docks settle) before a screenshot."""
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)
