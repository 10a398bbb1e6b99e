"""Choices and defaults shared by the engine, the widgets and the command line.

Only the standard library is imported here, so the command line's ``--help``
and the widgets' construction stay fast and free of torch.
"""

ENSEMBLE_SIZES = (1, 2, 4, 8)
"""Allowed numbers of network passes (flipped or turned views averaged) for Wiener-net."""

DEFAULT_ENSEMBLE = 2
"""Network passes Wiener-net runs unless told otherwise."""
