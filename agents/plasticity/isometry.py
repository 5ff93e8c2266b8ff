"""Dynamical isometry: layer-wise input-output Jacobians with singular values near one.

Two estimators (`estimator` setting). `gram` is the weight-space penalty
R_l = ‖W_lᵀW_l − I‖²_F when layer l widens (out ≥ in), ‖W_l W_lᵀ − I‖²_F when it narrows (a conv
kernel as the matrix (out, in·k·k)): from a secondary source (the `zij` optimizer notes,
github.com/junaidaliop/zij docs/math/adamo.md, citing Rosseau et al., ICML 2026); the paper's own
text (arXiv 2606.09762) was not readable to us beyond its abstract, which names "an efficient
isometry-promoting regularization scheme" without its formula. `jacobian` (the default) is ours:
for every hidden block
(layer -> norm -> activation -> pool) at the inputs it sees on the minibatch, with Gaussian probes
v ~ N(0, I),

    R_l = E_v[(‖J_l v‖² − ‖v‖²)²] / d_l = (2‖J_lᵀJ_l − I‖²_F + tr(J_lᵀJ_l − I)²) / d_l,

zero exactly when J_l is an isometry. Probes go on the smaller side of J_l, of dimension d_l
(through a jvp when the block does not shrink its input, a vjp on the output side when it does),
because a map into fewer dimensions can only be a co-isometry (J Jᵀ = I): its singular values are
then all one. Dividing by d_l is ours: unscaled, a conv layer's per-sample Jacobian (d_l in the
thousands) outweighs a dense layer's by orders of magnitude (measured: 8·10⁶ for the Nature CNN's
conv1 against 1.5·10³ for its fc1 at initialisation), and no coefficient suits both MiniGrid and
Atari networks. For a linear block the numerator estimates the Gram deviation ‖WᵀW − I‖²_F (or
‖WWᵀ − I‖²_F) that descriptions of the paper give, plus a trace term; through a ReLU it measures
the Jacobian the data actually sees. Each block's input is detached: its term trains its own
parameters only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from agents.errors import at_least, non_negative
from agents.plasticity.base import Strategy, check_mode_settings, register_strategy


def isometry_gap(block, inputs: torch.Tensor, generator: torch.Generator,
                 probes: int = 1, out_numel: int | None = None) -> torch.Tensor:
    """One-sample-per-probe estimate of E_v[(‖J v‖² − ‖v‖²)²] / d for `block`'s per-sample
    Jacobian (d: the probe dimension), averaged over the rows of `inputs`; differentiable w.r.t.
    the block's parameters. `out_numel`: the block's output size per sample, if known."""
    x = inputs.detach().repeat(probes, *([1] * (inputs.dim() - 1)))
    if out_numel is None:
        with torch.no_grad():
            out_numel = block(x[:1]).numel()

    def gaussian(shape):
        return torch.randn(shape, generator=generator).to(device=x.device, dtype=x.dtype)

    if out_numel >= x[0].numel():
        v = gaussian(x.shape)
        _, jv = torch.func.jvp(block, (x,), (v,))
        probed, image = v, jv
    else:
        x.requires_grad_(True)
        y = block(x)
        u = gaussian(y.shape)
        (jtu,) = torch.autograd.grad(y, x, u, create_graph=True)
        probed, image = u, jtu
    gap = image.flatten(1).pow(2).sum(1) - probed.flatten(1).pow(2).sum(1)
    return gap.pow(2).mean() / probed[0].numel()


def network_isometry_gap(network, obs: torch.Tensor, features: dict, generator, probes: int,
                         samples: int) -> dict[str, torch.Tensor]:
    """R_l for every hidden block on (the first `samples` rows of) the minibatch."""
    rows = slice(None) if samples <= 0 else slice(samples)
    features = {name: value[rows] for name, value in features.items()}
    inputs = network.block_inputs(obs[rows], features)
    return {name: isometry_gap(block, inputs[name], generator, probes, features[name][0].numel())
            for name, block in network.blocks.items()}


def gram_deviation(weight: torch.Tensor) -> torch.Tensor:
    """‖WᵀW − I‖²_F when W (out, fan_in) widens (out ≥ fan_in), else ‖WWᵀ − I‖²_F: zero exactly
    when W's singular values are all one; differentiable."""
    w = weight.reshape(weight.shape[0], -1)
    gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
    identity = torch.eye(len(gram), device=gram.device, dtype=gram.dtype)
    return (gram - identity).pow(2).sum()


@dataclass
class IsometrySettings:
    # ours: the paper's values are not public to us
    coef: float = field(default=1e-2, metadata=non_negative())
    estimator: str = "jacobian"  # jacobian (ours, at the data) | gram (weights; secondary source)
    # Gaussian probes per sample (jacobian only)
    probes: int = field(default=1, metadata=at_least(1))
    # minibatch rows the Jacobians are taken at (0: all; jacobian only)
    samples: int = field(default=32, metadata=at_least(0))


def check_isometry_settings(strategy: str, settings: IsometrySettings) -> None:
    """The estimator is known; probes/samples left at their defaults under `gram`, which reads
    the weights alone."""
    check_mode_settings(strategy, settings, "estimator",
                        {"jacobian": ("probes", "samples"), "gram": ()})


def isometry_terms(settings: IsometrySettings, step, generator) -> dict[str, torch.Tensor]:
    """R_l for every hidden block/layer, by the chosen estimator (differentiable)."""
    network = step.ctx.network
    if settings.estimator == "gram":
        return {name: gram_deviation(layer.weight)
                for name, layer in network.hidden_layers().items()}
    return network_isometry_gap(network, step.obs, step.features, generator, settings.probes,
                                settings.samples)


@register_strategy("isometry")
class Isometry(Strategy):
    """Isometry penalty coef·Σ_l R_l, every singular value pulled toward 1. estimator jacobian:
    R_l = E_v[(‖J_l v‖² − ‖v‖²)²]/d_l over hidden blocks' input-output Jacobians at the
    minibatch, Gaussian probes v of dimension d_l (jvp or vjp); estimator gram: R_l =
    ‖WᵀW − I‖²_F (layer widens) or ‖WWᵀ − I‖²_F (narrows) on each hidden layer's weights."""

    paper = "Rosseau et al. 2026, Preserving plasticity in continual learning via dynamical " \
            "isometry (arXiv 2606.09762)"
    Settings = IsometrySettings
    state_attributes = ("gaps",)

    def __init__(self, settings):
        super().__init__(settings)
        check_isometry_settings(self.name, settings)

    def setup(self, ctx):
        self.generator = self.make_generator(ctx)
        self.gaps: dict[str, torch.Tensor] = {}

    def loss_penalty(self, step):
        gaps = isometry_terms(self.settings, step, self.generator)
        self.gaps = {name: g.detach() for name, g in gaps.items()}
        return self.settings.coef * sum(gaps.values())

    def metrics(self):
        return {f"gap/{name}": g for name, g in self.gaps.items()}
