"""Training of napari-deblur's learned models: data, losses, loops, baselines and checks.

Not part of the installed package; run from the repository root, e.g.
``python -m training wiener-net`` (:mod:`training.train`). Sources follow the
project's data rules: procedural images and the *train* split of
scikit-image's bundled images only, never the evaluation split.
"""
