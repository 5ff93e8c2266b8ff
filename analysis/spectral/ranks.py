"""Roy & Vetterli's effective rank, the one formula behind every effective rank pliable reports
or trains on: feature metrics (features.py), Hessian spectra (hessian.py) and the
`effective_rank` strategy's loss. Imports torch and numpy only, so strategies may use it."""

from __future__ import annotations

import numpy as np
import torch


def entropy_effective_rank(values, floor: float | None = None):
    """``exp(H(p))`` with ``p_i = v_i / sum_j v_j`` of non-negative ``values`` (singular values,
    eigenvalue magnitudes), in the values' own array type: a torch tensor (differentiable when it
    has a grad) or a numpy array, each computed with its own library's kernels.

    Equals the count when all non-zero values are equal, and is smaller the more a few dominate.

    ``floor=None`` (metrics): zero values carry no mass, and an all-zero spectrum has rank 0.
    ``floor=eps`` (a loss; torch only): the sum and every ``p_i`` are clamped from below at eps
    instead, so there is no data-dependent branch or shape and the gradient stays finite (an
    all-zero spectrum then has rank 1).
    """
    xp = torch if isinstance(values, torch.Tensor) else np
    total = values.sum()
    if floor is None:
        if total == 0:
            return xp.zeros_like(total)
        p = values[values > 0] / total
        log_p = xp.log(p)
    else:
        p = values / total.clamp_min(floor)
        log_p = p.clamp_min(floor).log()
    return xp.exp(-(p * log_p).sum())
