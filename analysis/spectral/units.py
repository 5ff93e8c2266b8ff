"""Per-unit activity of a layer (ReDo's scores). Imports torch only, so strategies may use it."""

from __future__ import annotations

import torch


def unit_scores(activation: torch.Tensor) -> torch.Tensor:
    """ReDo scores (Sokar et al. 2023): ``s_i = E|h_i| / mean_j E|h_j|``, one per unit.

    ``activation`` is ``batch x units``, or ``batch x channels x ...`` for convolutions, where a
    channel is a unit and the expectation runs over batch and positions. A layer whose
    activations are all zero has all scores 0.
    """
    magnitude = activation.detach().abs().to(torch.float64)
    reduce_dims = [0, *range(2, magnitude.dim())]
    per_unit = magnitude.mean(dim=reduce_dims)
    layer_mean = per_unit.mean()
    return per_unit / layer_mean if layer_mean > 0 else torch.zeros_like(per_unit)
