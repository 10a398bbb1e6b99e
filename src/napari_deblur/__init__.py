"""napari-deblur: find where an image is blurred and sharpen it.

The numerical work lives in :mod:`napari_deblur.engine` (PyTorch, no Qt);
the napari widgets, reader, writer and sample data are thin layers on top.
Nothing heavy is imported here so that napari starts quickly.
"""

__version__ = "0.2.0.dev0"
