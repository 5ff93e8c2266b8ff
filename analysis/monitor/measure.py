"""What the spectral monitor computes on one batch: the agent's own loss as a pure function of its
parameters, that loss's Hessian spectrum (plus Gauss-Newton and KFAC), and feature-level metrics.

The loss is the agent's `loss(batch, forward)` (PPO's clipped objective with value and entropy
terms, DQN's TD loss) with `forward` a `torch.func.functional_call` of the live network on other
parameter tensors. Everything runs on detached copies with `torch.autograd.grad`: no `.grad` is
written, and no parameter, train/eval mode or counter of the agent changes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from analysis.spectral.features import (
    active_fraction,
    dormant_ratio,
    feature_norm,
    feature_ranks,
    jacobian_singular_values,
    ntk_rank,
)
from analysis.spectral.hessian import (
    GGNOperator,
    HessianOperator,
    density_mass_above,
    eps_rank_of_density,
    epsilon_rank,
    grad_or_zeros,
    he2025_density,
    lanczos_top_and_trace,
    negative_curvature_fraction,
    operator_top_eigenvalues,
    operator_trace,
    spectral_effective_rank,
    stochastic_lanczos_quadrature,
    tau_trainability,
)
from analysis.spectral.kfac import kfac_factors

DORMANT_TAUS = (0.0, 0.025, 0.1)


@dataclass
class Measurement:
    """One batch's spectrum: named scalars (TensorBoard, the summary line) and arrays (.npz)."""

    scalars: dict[str, float]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0


# --------------------------------------------------------------------------------------------
# The agent's loss as closures
# --------------------------------------------------------------------------------------------
def loss_closure(agent, batch):
    """``loss_fn(params) -> scalar``: the agent's loss on ``batch`` with the network's parameters
    replaced by ``params`` (name -> tensor); what `analysis.spectral.hessian` differentiates."""
    network = agent.network

    def loss_fn(params):
        def forward(obs):
            return torch.func.functional_call(network, params, (obs,), {"return_features": True})

        return agent.loss(batch, forward)[0]

    return loss_fn


def heads_output_fn(network, obs):
    """``output_fn(params)``: every head's output on ``obs``, concatenated along features."""

    def output_fn(params):
        outputs = torch.func.functional_call(network, params, (obs,))
        return torch.cat([outputs[name] for name in network.heads], dim=1)

    return output_fn


def loss_on_head_outputs(agent, batch):
    """``loss(outputs)``: the agent's loss as a function of its heads' outputs on ``batch.obs``
    (a tuple, in the heads' order), what Gauss-Newton and KFAC linearise around. PPO's and DQN's
    losses evaluate the network once, on the batch's observations (DQN's targets are fixed)."""
    names = list(agent.network.heads)

    def loss_fn(outputs):
        def forward(obs):
            if obs is not batch.obs:
                raise ValueError("the loss evaluated the network on other observations than "
                                 "batch.obs: Gauss-Newton and KFAC need one evaluation")
            return dict(zip(names, outputs, strict=True)), {}

        return agent.loss(batch, forward)[0]

    return loss_fn


class _HeadsAsTuple(nn.Module):
    """The network with its head outputs as a tuple: the form `kfac_factors` takes."""

    def __init__(self, network):
        super().__init__()
        self.network = network

    def forward(self, obs):
        outputs = self.network(obs)
        return tuple(outputs[name] for name in self.network.heads)


def layer_names(network) -> dict[str, str]:
    """Module path of every weight layer -> a short name: the hidden block's, or `<head>_head`."""
    return {path: path.split(".")[1] + ("_head" if path.startswith("heads.") else "")
            for path in network.weight_layers()}


# --------------------------------------------------------------------------------------------
# The spectrum of one batch
# --------------------------------------------------------------------------------------------
def measure_spectrum(agent, batch, settings, seed: int) -> Measurement:
    """Top-k Hessian eigenvalues, SLQ density, the trace (Krylov-deflated Hutchinson with Lanczos)
    and their summaries, then the Gauss-Newton top-k and KFAC factors when ``settings`` (a
    MonitorConfig) asks for them."""
    start = time.perf_counter()
    params = dict(agent.network.named_parameters())
    dtype = torch.float64 if settings.float64 else None
    operator = HessianOperator(loss_closure(agent, batch), params, dtype)
    if settings.method == "lanczos":  # the trace deflated by the same Krylov basis
        top, trace = lanczos_top_and_trace(operator, settings.top_k, settings.lanczos_steps,
                                           settings.trace_probes, seed)
    else:
        top = operator_top_eigenvalues(operator, settings.top_k, "eigsh", tol=settings.eigsh_tol,
                                       seed=seed)
        trace = operator_trace(operator, settings.trace_probes, seed + 2)
    nodes, weights, sizes = stochastic_lanczos_quadrature(
        operator, settings.density_probes, settings.density_steps, seed + 1, return_sizes=True)
    lambda_max = float(top[0])
    scalars = {
        "loss": float(operator.loss),
        "lambda_max": lambda_max,
        "lambda_k": float(top[-1]),
        "lambda_min": float(nodes.min()),
        "trace": trace,
        "eps_rank_rel": eps_rank_rel(top, nodes, weights, settings.eps, operator.dim),
        "effective_rank": spectral_effective_rank(top),
        "negative_fraction": negative_curvature_fraction(nodes, weights),
        "tau_trainability": tau_trainability(nodes, weights, settings.tau, lambda_max=lambda_max),
    }
    # The seed paper's ε-rank (percent outside [-ε, ε] of their smoothed density), per ε.
    grid, density = he2025_density(nodes, weights, draw_sizes=sizes)
    he2025 = [eps_rank_of_density(grid, density, eps) for eps in settings.he2025_eps]
    scalars.update({he2025_eps_name(eps): value
                    for eps, value in zip(settings.he2025_eps, he2025, strict=True)})
    arrays = {"eigenvalues": top, "density_nodes": nodes, "density_weights": weights,
              "density_draw_sizes": np.array(sizes), "density_kernel": np.array(
                  settings.density_kernel), "he2025_eps": np.array(list(settings.he2025_eps)),
              "eps_rank_he2025": np.array(he2025), "num_params": np.array(operator.dim)}
    del operator  # frees the gradient graph before the extras build theirs
    if settings.ggn:
        ggn = GGNOperator(heads_output_fn(agent.network, batch.obs),
                          _split_heads(agent, batch), params, dtype)
        arrays["ggn_eigenvalues"] = operator_top_eigenvalues(
            ggn, settings.top_k, settings.method, settings.ggn_steps, settings.eigsh_tol, seed + 3)
        scalars["ggn/lambda_max"] = float(arrays["ggn_eigenvalues"][0])
    if settings.kfac:
        _add_kfac(agent, batch, settings.top_k, scalars, arrays)
    return Measurement(scalars, arrays, time.perf_counter() - start)


def he2025_eps_name(eps: float) -> str:
    """The scalar's name for He et al.'s ε-rank at ``eps``: `eps_rank_he2025/0.01`, ..."""
    return f"eps_rank_he2025/{eps:g}"


def eps_rank_rel(top: np.ndarray, nodes: np.ndarray, weights: np.ndarray, eps: float,
                 dim: int) -> float:
    """Our relative ε-rank, a count: #{i: λ_i > eps·λmax}, counted exactly among the top-k when
    λ_k is below the threshold, else estimated from the SLQ density as dim × its mass above it
    (never below k). One-sided (negative curvature never counts) and relative to λmax, unlike
    the seed paper's `analysis.spectral.hessian.eps_rank_he2025` (a percentage outside [-ε, ε])."""
    count = epsilon_rank(top, eps)
    if count < len(top):
        return float(count)
    return max(float(count), density_mass_above(nodes, weights, eps * top[0]) * dim)


def _split_heads(agent, batch):
    """The loss on the concatenated head outputs of `heads_output_fn`."""
    sizes = [head.out_features for head in agent.network.heads.values()]
    loss_fn = loss_on_head_outputs(agent, batch)
    return lambda concatenated: loss_fn(tuple(concatenated.split(sizes, dim=1)))


def _add_kfac(agent, batch, top_k: int, scalars: dict, arrays: dict) -> None:
    """Per layer: ranks of A and G and the top of λ(A)·μ(G); overall: the top-k of the
    block-diagonal KFAC matrix, i.e. of all layers' products pooled."""
    model = _HeadsAsTuple(agent.network)
    factors = kfac_factors(model, batch.obs, loss_on_head_outputs(agent, batch), top_k=top_k)
    short = layer_names(agent.network)
    pooled = []
    for path, block in factors.items():
        name = short[path.removeprefix("network.")]
        scalars[f"kfac/{name}/a_rank"] = float(block.activation_rank)
        scalars[f"kfac/{name}/g_rank"] = float(block.gradient_rank)
        scalars[f"kfac/{name}/lambda_max"] = float(block.spectrum[0])
        pooled.append(block.spectrum.cpu().numpy())
    arrays["kfac_eigenvalues"] = np.sort(np.concatenate(pooled))[::-1][:top_k].copy()
    scalars["kfac/lambda_max"] = float(arrays["kfac_eigenvalues"][0])


# --------------------------------------------------------------------------------------------
# Feature-level plasticity metrics
# --------------------------------------------------------------------------------------------
def plasticity_metrics(agent, batch, task_start_params: dict[str, torch.Tensor], settings,
                       seed: int) -> dict[str, float]:
    """Per hidden layer: ranks, dormant units, activity, feature norm and (optionally) Jacobian
    singular values; per weight layer: weight norm and change since ``task_start_params``; the
    loss's gradient norm; optionally the empirical NTK rank. Names are `plasticity/` suffixes."""
    network = agent.network
    with torch.no_grad():
        _, features = network(batch.obs, return_features=True)
    metrics = {}
    for name, activation in features.items():
        ranks = feature_ranks(activation)
        metrics[f"erank/{name}"] = ranks.effective
        metrics[f"srank/{name}"] = float(ranks.srank)
        metrics[f"stable_rank/{name}"] = ranks.stable
        metrics[f"active_fraction/{name}"] = active_fraction(activation)
        metrics[f"feature_norm/{name}"] = feature_norm(activation)
    dormant = dormant_ratio(features, DORMANT_TAUS)
    for tau in DORMANT_TAUS:
        metrics[f"dormant_ratio_{tau:g}/all"] = dormant.overall[tau]
        for name, ratios in dormant.per_layer.items():
            metrics[f"dormant_ratio_{tau:g}/{name}"] = ratios[tau]
    if settings.jacobians:
        inputs = network.block_inputs(batch.obs, features)
        for name, block in network.blocks.items():
            stats = jacobian_singular_values(block, inputs[name], seed=seed)
            for stat, value in stats.items():
                metrics[f"jacobian_{stat}/{name}"] = value
    metrics.update(_weight_metrics(network, task_start_params))
    params = {name: p.detach().requires_grad_(True) for name, p in network.named_parameters()}
    with torch.enable_grad():
        gradient = grad_or_zeros((loss_closure(agent, batch)(params),), tuple(params.values()),
                                 (None,))
    metrics["grad_norm"] = float(torch.linalg.vector_norm(torch.cat([g.reshape(-1)
                                                                     for g in gradient])))
    if settings.ntk:
        output_fn = lambda p, obs: heads_output_fn(network, obs)(p)  # noqa: E731
        metrics["ntk_rank"] = float(ntk_rank(output_fn, params, batch.obs[:settings.ntk_samples]))
    return metrics


def _weight_metrics(network, task_start_params) -> dict[str, float]:
    params = dict(network.named_parameters())
    metrics = {}
    for path, name in layer_names(network).items():
        weight = params[f"{path}.weight"].detach()
        metrics[f"weight_norm/{name}"] = float(weight.norm())
        metrics[f"weight_change/{name}"] = float((weight - task_start_params[f"{path}.weight"])
                                                 .norm())
    flat = torch.cat([p.detach().reshape(-1) for p in params.values()])
    start = torch.cat([task_start_params[name].reshape(-1) for name in params])
    metrics["weight_norm/all"] = float(flat.norm())
    metrics["weight_change/all"] = float((flat - start).norm())
    return metrics
