"""Loss penalties on weights and features: L2, L2-Init, effective rank (and the ER+L2 preset),
Parseval, spectral regularisation. Each is added to the loss in `Learner.optimize`, so it goes
through the same optimizer as the agent's loss (none is folded into Adam's weight decay)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from agents.plasticity.base import Strategy, StrategyStack, register_strategy


def weight_layer_params(network) -> list[torch.nn.Parameter]:
    """Weights and biases of every Conv2d/Linear (hidden layers and heads), not norm affines."""
    return [p for layer in network.weight_layers().values() for p in layer.parameters()]


def as_matrix(weight: torch.Tensor) -> torch.Tensor:
    """(out, fan_in): a conv kernel's rows are its output channels."""
    return weight.reshape(weight.shape[0], -1)


@register_strategy("l2")
class L2(Strategy):
    """L2 penalty coef·‖θ‖² on every weight and bias, added to the loss."""

    paper = "weight decay as an L2 loss term; e.g. Lyle et al. 2023, Kumar et al. 2023"

    @dataclass
    class Settings:
        coef: float = 1e-4

    def setup(self, ctx):
        self.params = weight_layer_params(ctx.network)

    def loss_penalty(self, step):
        return self.settings.coef * sum(p.pow(2).sum() for p in self.params)


@register_strategy("l2_init")
class L2Init(Strategy):
    """Regenerative regularisation: coef·‖θ − θ₀‖², pulling weights toward their initial values."""

    paper = "Kumar et al. 2023, Maintaining plasticity in continual learning via regenerative " \
            "regularization (arXiv 2308.11958)"
    state_attributes = ("initial",)

    @dataclass
    class Settings:
        coef: float = 1e-2

    def setup(self, ctx):
        self.params = weight_layer_params(ctx.network)
        self.initial = [p.detach().clone() for p in self.params]

    def loss_penalty(self, step):
        return self.settings.coef * sum((p - p0).pow(2).sum()
                                        for p, p0 in zip(self.params, self.initial))


def differentiable_effective_rank(features: torch.Tensor) -> torch.Tensor:
    """exp(H(σ/Σσ)) of the (batch, units) feature matrix (trailing dims are units), with
    gradients: analysis.features.effective_rank is the detached float64 twin used for metrics."""
    sigma = torch.linalg.svdvals(features.reshape(features.shape[0], -1))
    p = sigma / sigma.sum().clamp_min(1e-12)
    return torch.exp(-(p * p.clamp_min(1e-12).log()).sum())


@register_strategy("effective_rank")
class EffectiveRank(Strategy):
    """Maximise the effective rank exp(H(σ/Σσ)) of every hidden layer's features:
    penalty −coef·Σ_l erank(F_l), on the minibatch or on a fresh batch of recent observations."""

    paper = "He et al. 2025 (arXiv 2509.22335); effective rank: Roy & Vetterli 2007"
    state_attributes = ("ranks",)

    @dataclass
    class Settings:
        coef: float = 1e-2
        every_steps: int = 1  # gradient steps between penalties
        batch_size: int = 0  # 0: the minibatch's own features; n: n recent observations

    def setup(self, ctx):
        self.generator = self.make_generator(ctx)
        self.ranks: dict[str, torch.Tensor] = {}

    def loss_penalty(self, step):
        ctx = step.ctx
        if ctx.update_count % self.settings.every_steps:
            return None
        features = step.features
        if self.settings.batch_size:
            obs = ctx.sample_obs(self.settings.batch_size, self.generator)
            _, features = ctx.network(obs, return_features=True)
        ranks = {name: differentiable_effective_rank(f) for name, f in features.items()}
        self.ranks = {name: r.detach() for name, r in ranks.items()}
        return -self.settings.coef * sum(ranks.values())

    def metrics(self):
        return {f"erank/{name}": r for name, r in self.ranks.items()}


@register_strategy("er_l2")
class EffectiveRankL2(Strategy):
    """Preset: effective_rank + l2 together, the seed paper's recommendation (settings nested:
    plasticity.er_l2.l2.coef=...)."""

    paper = "He et al. 2025 (arXiv 2509.22335)"

    @dataclass
    class Settings:
        effective_rank: EffectiveRank.Settings = field(default_factory=EffectiveRank.Settings)
        l2: L2.Settings = field(default_factory=L2.Settings)

    def __init__(self, settings):
        super().__init__(settings)
        self.parts = StrategyStack([EffectiveRank(settings.effective_rank), L2(settings.l2)])

    def setup(self, ctx):
        self.parts.setup(ctx)

    def loss_penalty(self, step):
        return sum(self.parts.loss_penalty(step).values())

    def metrics(self):
        return self.parts.metrics()

    def state_dict(self):
        return self.parts.state_dict()

    def load_state_dict(self, state):
        self.parts.load_state_dict(state)


@register_strategy("parseval")
class Parseval(Strategy):
    """Parseval regularisation λ·Σ_l ‖W_l W_lᵀ − s·I‖²_F over the hidden layers (not the heads),
    keeping each layer's rows orthogonal."""

    paper = "Chung et al. 2024, Parseval regularization for continual reinforcement learning " \
            "(NeurIPS 2024); Cisse et al. 2017"

    @dataclass
    class Settings:
        coef: float = 1e-3
        scale: float = 1.0  # s

    def setup(self, ctx):
        self.layers = list(ctx.network.hidden_layers().values())

    def loss_penalty(self, step):
        total = 0.0
        for layer in self.layers:
            w = as_matrix(layer.weight)
            gram = w @ w.T
            identity = torch.eye(len(gram), device=gram.device, dtype=gram.dtype)
            total = total + (gram - self.settings.scale * identity).pow(2).sum()
        return self.settings.coef * total


@register_strategy("spectral_reg")
class SpectralRegularization(Strategy):
    """coef·Σ_l (σ_max(W_l) − target)² over the hidden layers; σ_max from persistent power
    iteration (as torch's spectral_norm: singular vectors carried between steps, no SVD)."""

    paper = "Lewandowski et al. 2024, Learning continually by spectral regularization " \
            "(arXiv 2406.06811)"
    state_attributes = ("left", "sigma")

    @dataclass
    class Settings:
        coef: float = 1e-4
        target: float = 1.0
        power_iterations: int = 1  # per gradient step

    def setup(self, ctx):
        generator = self.make_generator(ctx)
        self.layers = ctx.network.hidden_layers()
        self.left = {name: F.normalize(torch.randn(layer.weight.shape[0], generator=generator),
                                       dim=0).to(layer.weight.device)
                     for name, layer in self.layers.items()}
        self.sigma: dict[str, torch.Tensor] = {}

    def sigma_max(self, name: str, iterations: int) -> torch.Tensor:
        """uᵀWv with u, v from `iterations` more power steps; its gradient is u vᵀ."""
        w = as_matrix(self.layers[name].weight)
        with torch.no_grad():
            u = self.left[name]
            for _ in range(iterations):
                v = F.normalize(w.T @ u, dim=0)
                u = F.normalize(w @ v, dim=0)
            self.left[name] = u
        return u @ w @ v

    def loss_penalty(self, step):
        sigmas = {name: self.sigma_max(name, self.settings.power_iterations)
                  for name in self.layers}
        self.sigma = {name: s.detach() for name, s in sigmas.items()}
        return self.settings.coef * sum((s - self.settings.target) ** 2 for s in sigmas.values())

    def metrics(self):
        return {f"sigma_max/{name}": s for name, s in self.sigma.items()}
