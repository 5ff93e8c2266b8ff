"""Torch thread settings per phase of training.

Gradient updates (minibatches of hundreds of observations) use `torch_threads` threads (0: torch's
default, one per core). Acting on a batch of `num_envs` observations uses one: such a batch is too
small to split well, and the other cores belong to the envs (ale-py's C++ threads). Measured with
`bench/levers.py`; `agents/__init__.py` also makes idle OpenMP threads sleep instead of spinning.
"""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def acting_threads():
    """One torch thread inside the block (acting on the envs' observations), then back."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
