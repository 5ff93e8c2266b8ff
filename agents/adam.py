"""Adam as every agent builds it, and the check of its settings (below the learner and the
strategies, which both use them)."""

from __future__ import annotations

import functools

import torch

from agents.errors import ConfigError


def adam_factory(learning_rate: float, eps: float, betas=(0.9, 0.999)):
    """Adam with its settings bound (`.keywords`: a strategy replacing Adam reuses them, one
    binding weight decay or betas edits them). fused: one kernel per parameter, 3x faster a step
    than torch's per-tensor loop (its CPU default) on the Nature CNN and within round-off of it
    (bench/levers.py, tests)."""
    return functools.partial(torch.optim.Adam, lr=learning_rate, eps=eps,
                             betas=tuple(float(b) for b in betas), fused=True)


def check_adam_betas(key: str, betas) -> None:
    """Adam's (β1, β2): two numbers, each in [0, 1); anything else is a one-line ConfigError."""
    values = list(betas) if betas is not None else []
    if len(values) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool)
                                   and 0.0 <= b < 1.0 for b in values):
        raise ConfigError(f"{key} must be two numbers, each in [0, 1) (e.g. [0.9, 0.999]), "
                          f"got {values}")
