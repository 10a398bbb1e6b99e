"""Held-out checks and judges of retrained weights: ``python -m training.checks.NAME ...``."""
