"""Training code for the engine's learned models (data generation, losses, loops).

Nothing here runs at import of :mod:`napari_deblur.engine`; the entry point is
``python -m napari_deblur.engine.train MODEL ...``. Sources follow the
project's data rules: procedural images and the *train* split of
scikit-image's bundled images only, never the evaluation split.
"""
