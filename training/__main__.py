"""``python -m training MODEL [options]``: see :mod:`training.train`."""

from training.train import main

main()
