"""One optimisation step, shared by the training loops."""

from __future__ import annotations

import torch

MAX_GRADIENT_NORM = 1.0
"""Gradients are clipped to this total norm before each step."""


def take_step(
    loss: torch.Tensor, model: torch.nn.Module, optimiser: torch.optim.Optimizer, schedule
) -> float:
    """Back-propagate ``loss``, clip the gradients, step the optimiser and its schedule.

    Returns the loss as a float (for the running mean of the report).
    """
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRADIENT_NORM)
    optimiser.step()
    schedule.step()
    return float(loss.detach())
