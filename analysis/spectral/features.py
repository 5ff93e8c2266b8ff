"""Feature-level plasticity metrics: ranks, dormant units, layer Jacobians, NTK rank.

Inputs are tensors (a feature matrix is ``batch x units``; extra trailing dimensions are
flattened into units) or, for the Jacobian and NTK metrics, callables; outputs are floats or
small dicts. Nothing here writes ``.grad`` or flips train/eval: gradients come from
``torch.func`` or ``torch.autograd.grad`` on detached copies. Decompositions run in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from analysis.spectral.hessian import (
    Linearization,
    SymmetricOperator,
    stochastic_lanczos_quadrature,
)
from analysis.spectral.ranks import entropy_effective_rank
from analysis.spectral.units import unit_scores


# --------------------------------------------------------------------------------------------
# Ranks of a feature matrix
# --------------------------------------------------------------------------------------------
def _singular_values(features: torch.Tensor) -> torch.Tensor:
    """Singular values, descending, of the ``batch x units`` matrix, in float64."""
    matrix = features.detach().reshape(features.shape[0], -1).to(torch.float64)
    return torch.linalg.svdvals(matrix)


def _effective_rank_of(sigma: torch.Tensor) -> float:
    return float(entropy_effective_rank(sigma))


def _srank_of(sigma: torch.Tensor, delta: float) -> int:
    total = sigma.sum()
    if total == 0:
        return 0
    captured = sigma.cumsum(0) / total
    return int((captured < 1 - delta).sum()) + 1


def _stable_rank_of(sigma: torch.Tensor) -> float:
    if sigma[0] == 0:
        return 0.0
    return float((sigma**2).sum() / sigma[0] ** 2)


def effective_rank(features: torch.Tensor) -> float:
    """Roy & Vetterli's effective rank ``exp(H(p))``, ``p_i = sigma_i / sum_j sigma_j``.

    Equals the rank when all non-zero singular values are equal, and is smaller the more a few
    directions dominate; 0 for a zero matrix (`ranks.entropy_effective_rank`, in torch, so GPU
    features need no host copy).
    """
    return _effective_rank_of(_singular_values(features))


def srank(features: torch.Tensor, delta: float = 0.01) -> int:
    """Kumar et al. 2020: smallest ``k`` with ``sum_{i<=k} sigma_i / sum_i sigma_i >= 1 - delta``.

    Singular values are sorted in decreasing order; 0 for a zero matrix.
    """
    return _srank_of(_singular_values(features), delta)


def stable_rank(features: torch.Tensor) -> float:
    """``||F||_F^2 / ||F||_2^2 = sum_i sigma_i^2 / sigma_1^2``; 0 for a zero matrix."""
    return _stable_rank_of(_singular_values(features))


@dataclass(frozen=True)
class FeatureRanks:
    """`effective_rank`, `srank` and `stable_rank` of one feature matrix."""

    effective: float
    srank: int
    stable: float


def feature_ranks(features: torch.Tensor, delta: float = 0.01) -> FeatureRanks:
    """All three ranks from one SVD (the SVD dominates their cost on wide conv features)."""
    sigma = _singular_values(features)
    return FeatureRanks(_effective_rank_of(sigma), _srank_of(sigma, delta), _stable_rank_of(sigma))


def feature_norm(features: torch.Tensor) -> float:
    """Mean over the batch of each sample's feature-vector Euclidean norm."""
    matrix = features.detach().reshape(features.shape[0], -1).to(torch.float64)
    return float(matrix.norm(dim=1).mean())


# --------------------------------------------------------------------------------------------
# Unit activity (`unit_scores`, ReDo's scores, lives in units.py: strategies import it)
# --------------------------------------------------------------------------------------------
def dormant_mask(activation: torch.Tensor, tau: float) -> torch.Tensor:
    """Boolean mask of units with ReDo score ``s_i <= tau`` (``tau = 0``: exactly silent units)."""
    return unit_scores(activation) <= tau


@dataclass
class DormantRatios:
    """Fraction of dormant units per threshold: per layer, and over all units of all layers."""

    per_layer: dict[str, dict[float, float]]
    overall: dict[float, float]


def dormant_ratio(
    activations: Mapping[str, torch.Tensor], taus: Sequence[float] = (0.0, 0.025, 0.1)
) -> DormantRatios:
    """Share of dormant units (``s_i <= tau``, see `unit_scores`) for each ``tau``.

    ``activations`` maps layer names to their post-activation outputs on one batch. ``overall``
    pools the units of all layers, i.e. weights each layer's ratio by its number of units.
    """
    scores = {name: unit_scores(a) for name, a in activations.items()}
    per_layer = {
        name: {tau: float((s <= tau).double().mean()) for tau in taus} for name, s in scores.items()
    }
    pooled = torch.cat(list(scores.values()))
    overall = {tau: float((pooled <= tau).double().mean()) for tau in taus}
    return DormantRatios(per_layer, overall)


def active_fraction(activation: torch.Tensor, threshold: float = 0.0) -> float:
    """Share of all entries (samples x units x positions) above ``threshold``: for ReLU, firing."""
    return float((activation.detach() > threshold).double().mean())


# --------------------------------------------------------------------------------------------
# Layer-wise input-output Jacobians (dynamical isometry)
# --------------------------------------------------------------------------------------------
class _JacobianGram(SymmetricOperator):
    """``J J^T`` or ``J^T J``, whichever is smaller: eigenvalues = squared singular values of J."""

    def __init__(self, linearization: Linearization):
        self.linearization = linearization
        self.output_shape = linearization.output.shape
        output_dim = linearization.output.numel()
        input_dim = sum(x.numel() for x in linearization.primals.values())
        self.on_output_side = output_dim <= input_dim
        self.dim = min(output_dim, input_dim)
        self.dtype = linearization.output.dtype
        self.device = linearization.output.device

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        if self.on_output_side:
            pulled_back = self.linearization.vjp(vector.view(self.output_shape))
            return self.linearization.jvp(pulled_back).reshape(-1)
        return self.linearization.vjp(self.linearization.jvp(vector))


def _single_sample(block: Callable[[torch.Tensor], torch.Tensor]):
    return lambda x: block(x.unsqueeze(0)).squeeze(0)


def _exact_jacobian_stats(block, samples, band) -> dict[str, float]:
    with torch.no_grad():  # transforms ignore an outer no_grad; it only stops graphs on params
        jacobians = torch.func.vmap(torch.func.jacrev(_single_sample(block)))(samples)
    num_samples = samples.shape[0]
    output_dim = jacobians[0].numel() // samples[0].numel()
    matrices = jacobians.reshape(num_samples, output_dim, -1).to(torch.float64)
    sigma = torch.linalg.svdvals(matrices).reshape(-1)
    in_band = (sigma >= band[0]) & (sigma <= band[1])
    return {
        "mean": float(sigma.mean()),
        "min": float(sigma.min()),
        "max": float(sigma.max()),
        "share_in_band": float(in_band.double().mean()),
    }


def _estimated_jacobian_stats(block, samples, band, num_probes, num_steps, seed):
    single = _single_sample(block)
    means, shares, lows, highs = [], [], [], []
    for index, x in enumerate(samples):
        gram = _JacobianGram(Linearization(lambda p: single(p["x"]), {"x": x}))
        nodes, weights = stochastic_lanczos_quadrature(gram, num_probes, num_steps, seed + index)
        sigma = np.sqrt(np.clip(nodes, 0.0, None))
        means.append(np.sum(weights * sigma))
        shares.append(np.sum(weights[(sigma >= band[0]) & (sigma <= band[1])]))
        lows.append(sigma.min())
        highs.append(sigma.max())
    return {
        "mean": float(np.mean(means)),
        "min": float(np.min(lows)),
        "max": float(np.max(highs)),
        "share_in_band": float(np.mean(shares)),
    }


def jacobian_singular_values(
    block: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    num_samples: int = 8,
    method: str = "auto",
    band: tuple[float, float] = (0.5, 2.0),
    max_exact_entries: int = 2**22,
    num_probes: int = 4,
    num_steps: int = 30,
    seed: int = 0,
) -> dict[str, float]:
    """Singular values of a block's per-sample input-output Jacobian (dynamical isometry).

    ``block`` maps a batch of inputs to a batch of outputs (e.g. ``Linear`` then ``ReLU``) and
    must treat samples independently (no BatchNorm in train mode). The first ``num_samples`` rows
    of ``inputs`` are used; for each, ``J = d block(x) / d x`` (flattened ``out x in``) has
    ``min(out, in)`` singular values. Returns their ``mean``, ``min``, ``max`` and
    ``share_in_band`` (share within ``band``, inclusive), pooled over samples.

    method="exact": ``torch.func.vmap(jacrev)`` and a dense SVD; "estimate": matrix-free
    stochastic Lanczos quadrature on the smaller Gram matrix (``J J^T`` or ``J^T J``) with
    ``num_probes`` Rademacher probes of ``num_steps`` steps per sample, using only products
    ``J v`` and ``J^T u``. Its mean and share average over probes (random, but the quadrature
    itself is exact once ``num_steps`` reaches the number of distinct singular values); its max
    and min are extreme Ritz values, which bound the true max from below and the true min from
    above. "auto" is exact when a Jacobian has at most ``max_exact_entries`` entries.
    """
    samples = inputs[:num_samples].detach()
    if method == "auto":
        with torch.no_grad():
            output_dim = block(samples[:1]).numel()
        entries = output_dim * samples[0].numel()
        method = "exact" if entries <= max_exact_entries else "estimate"
    if method == "exact":
        return _exact_jacobian_stats(block, samples, band)
    if method == "estimate":
        return _estimated_jacobian_stats(block, samples, band, num_probes, num_steps, seed)
    raise ValueError(f"method must be 'auto', 'exact' or 'estimate', got {method!r}")


# --------------------------------------------------------------------------------------------
# Empirical neural tangent kernel
# --------------------------------------------------------------------------------------------
def ntk_gram(
    fn: Callable[[Mapping[str, torch.Tensor], torch.Tensor], torch.Tensor],
    params: Mapping[str, torch.Tensor],
    inputs: torch.Tensor,
    per_output: bool = False,
) -> torch.Tensor:
    """Empirical NTK Gram matrix ``K = G G^T`` of per-sample parameter gradients, float64.

    ``fn(params, x)`` maps a batch to outputs ``batch x ...``, e.g.
    ``lambda p, x: torch.func.functional_call(model, p, (x,))``. Output-summed (default): row
    ``i`` of ``G`` is the gradient of ``sum_o f_o(x_i)``, so ``K`` is ``batch x batch``.
    ``per_output``: one row per (sample, output), ``K`` is ``(batch * outputs)^2``. Per-sample
    gradients come from ``torch.func.vmap(jacrev)``; memory is ``rows x num_params``.
    """
    detached = {name: p.detach() for name, p in params.items()}

    def single(p, x):
        output = fn(p, x.unsqueeze(0)).squeeze(0)
        return output.reshape(-1) if per_output else output.sum()

    with torch.no_grad():
        jacobians = torch.func.vmap(torch.func.jacrev(single), in_dims=(None, 0))(detached, inputs)
    per_tensor = [
        jacobians[name].reshape(len(inputs), -1, p.numel()) for name, p in detached.items()
    ]
    gradients = torch.cat(per_tensor, dim=2).flatten(0, 1).to(torch.float64)
    return gradients @ gradients.T


def ntk_rank(
    fn: Callable[[Mapping[str, torch.Tensor], torch.Tensor], torch.Tensor],
    params: Mapping[str, torch.Tensor],
    inputs: torch.Tensor,
    rtol: float = 1e-6,
    per_output: bool = False,
) -> int:
    """Numerical rank of `ntk_gram`: eigenvalues above ``rtol * lambda_max``.

    ``rtol`` applies to eigenvalues of ``K``, i.e. ``sqrt(rtol)`` (1e-3 by default) to the
    singular values of the gradient matrix. 0 when all gradients vanish.
    """
    eigenvalues = torch.linalg.eigvalsh(ntk_gram(fn, params, inputs, per_output))
    largest = eigenvalues.max()
    if largest <= 0:
        return 0
    return int((eigenvalues > rtol * largest).sum())
