"""napari-deblur dock widgets: the Qt side of the plugin.

Every widget runs its engine jobs through :class:`JobRunner` (worker thread,
progress, cancel, errors, output layers with the input's geometry). Importing
this package does not import torch or the engine.
"""

from napari_deblur._qt.job_runner import JobRunner

__all__ = ["JobRunner"]
