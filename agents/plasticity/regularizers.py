"""Regularisers on weights and features: L2, L2-Init, Parseval, spectral regularisation (loss
penalties added in `Learner.optimize`, so they go through the optimizer with the agent's loss);
coupled weight decay (bound into Adam); effective rank (a plain ascent step outside the optimizer,
the seed paper's, or a loss penalty) and the seed's ER + L2 preset."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from agents.adam import check_adam_betas
from agents.errors import ConfigError, at_least, non_negative
from agents.plasticity.base import (
    Strategy,
    StrategyStack,
    check_mode_settings,
    register_strategy,
)
from analysis.spectral.ranks import entropy_effective_rank


def weight_layer_params(network) -> list[torch.nn.Parameter]:
    """Weights and biases of every Conv2d/Linear (hidden layers and heads), not norm affines."""
    return [p for layer in network.weight_layers().values() for p in layer.parameters()]


def as_matrix(weight: torch.Tensor) -> torch.Tensor:
    """(out, fan_in): a conv kernel's rows are its output channels."""
    return weight.reshape(weight.shape[0], -1)


@register_strategy("l2")
class L2(Strategy):
    """L2 penalty coef·‖θ‖² on every weight and bias (not norm affines), added to the loss: its
    gradient 2·coef·θ is clipped with the loss's (`weight_decay` adds coef·θ after clipping, to
    every parameter, inside Adam: the seed paper's L2)."""

    paper = "weight decay as an L2 loss term; e.g. Lyle et al. 2023, Kumar et al. 2023"

    @dataclass
    class Settings:
        coef: float = field(default=1e-4, metadata=non_negative())

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
        coef: float = field(default=1e-2, metadata=non_negative())

    def setup(self, ctx):
        self.params = weight_layer_params(ctx.network)
        self.initial = [p.detach().clone() for p in self.params]

    def loss_penalty(self, step):
        return self.settings.coef * sum((p - p0).pow(2).sum()
                                        for p, p0 in zip(self.params, self.initial))


def differentiable_effective_rank(features: torch.Tensor) -> torch.Tensor:
    """exp(H(σ/Σσ)) of the (batch, units) feature matrix (trailing dims are units), with
    gradients, in the features' dtype: analysis.spectral.features.effective_rank is the detached
    float64 metric (the same formula without the floor)."""
    sigma = torch.linalg.svdvals(features.reshape(features.shape[0], -1))
    return entropy_effective_rank(sigma, floor=1e-12)


@dataclass
class EffectiveRankSettings:
    mode: str = "step"  # step (the seed's: a plain ascent step) | penalty (a loss term)
    # mode step: θ ← θ + er_lr·∇ER after every er_batch-th gradient step, er_step times, on
    # er_batch × minibatch-size observations from ctx.sample_obs (at most max_obs)
    er_lr: float = field(default=1e-6, metadata=non_negative())
    er_batch: int = field(default=128, metadata=at_least(1))
    er_step: int = field(default=1, metadata=at_least(1))
    # ours (0: no cap): the seed's ER step sees one 2048-step rollout
    max_obs: int = field(default=2048, metadata=at_least(0))
    # mode penalty: −coef·mean_l erank(F_l) added to the loss every every_steps gradient steps
    coef: float = field(default=1e-3, metadata=non_negative())
    every_steps: int = field(default=1, metadata=at_least(1))
    # 0: the minibatch's own features; n: n recent observations
    batch_size: int = field(default=0, metadata=at_least(0))


MODE_SETTINGS = {"step": ("er_lr", "er_batch", "er_step", "max_obs"),
                 "penalty": ("coef", "every_steps", "batch_size")}


@register_strategy("effective_rank")
class EffectiveRank(Strategy):
    """Raise the effective rank ER = Σ_networks mean_l exp(H(σ/Σσ)) of the hidden layers'
    features, as the seed sums its actor's and critic's means (network.separate_heads); one
    shared torso is one network, the mean over its hidden layers. mode step
    (the seed's): every er_batch gradient steps, er_step plain steps θ ← θ + er_lr·∇ER on
    min(er_batch × minibatch, max_obs) observations from ctx.sample_obs (PPO: drawn with
    replacement from the current rollout; DQN: the replay), outside the optimizer (no Adam
    moments, clipping or weight decay; no .grad written); mode penalty: −coef·ER added to the
    loss every every_steps steps, on the minibatch (batch_size 0) or batch_size fresh
    observations."""

    paper = "He et al. 2025 (arXiv 2509.22335); effective rank: Roy & Vetterli 2007"
    Settings = EffectiveRankSettings
    state_attributes = ("ranks",)

    def __init__(self, settings, key: str = "effective_rank"):
        super().__init__(settings)
        check_mode_settings(key, settings, "mode", MODE_SETTINGS)

    def setup(self, ctx):
        self.generator = self.make_generator(ctx)
        self.params = list(ctx.network.parameters())
        self.towers = list(ctx.network.towers.values())
        self.ranks: dict[str, torch.Tensor] = {}

    def layer_ranks(self, features: dict) -> torch.Tensor:
        """ER, each tower's mean over its hidden layers, summed over towers (differentiable);
        records each layer's rank."""
        ranks = {name: differentiable_effective_rank(f) for name, f in features.items()}
        self.ranks = {name: r.detach() for name, r in ranks.items()}
        return sum(torch.stack([ranks[name] for name in tower]).mean() for tower in self.towers)

    def loss_penalty(self, step):
        ctx = step.ctx
        if self.settings.mode != "penalty" or ctx.update_count % self.settings.every_steps:
            return None
        features = step.features
        if self.settings.batch_size:
            obs = ctx.sample_obs(self.settings.batch_size, self.generator)
            _, features = ctx.network(obs, return_features=True)
        return -self.settings.coef * self.layer_ranks(features)

    def after_optimizer_step(self, step):
        ctx = step.ctx  # update_count has counted the step just taken
        if self.settings.mode != "step" or ctx.update_count % self.settings.er_batch:
            return
        count = self.settings.er_batch * step.obs.shape[0]
        if self.settings.max_obs:
            count = min(count, self.settings.max_obs)
        obs = ctx.sample_obs(count, self.generator)
        for _ in range(self.settings.er_step):
            _, features = ctx.network(obs, return_features=True)
            # autograd.grad: no .grad is written, so the next optimizer step never sees it
            grads = torch.autograd.grad(self.layer_ranks(features), self.params,
                                        allow_unused=True)
            with torch.no_grad():
                for param, grad in zip(self.params, grads):
                    if grad is not None:
                        param.add_(grad, alpha=self.settings.er_lr)

    def metrics(self):
        return {f"erank/{name}": r for name, r in self.ranks.items()}


def bind_optimizer_settings(factory, strategy: str, **settings):
    """`factory` with `settings` bound over the ones it has: the learner's Adam factory (and
    adamo's) is a functools.partial whose `.keywords` are Adam's settings."""
    if not isinstance(factory, functools.partial):
        raise ConfigError(f"plasticity.{strategy}: cannot set the optimizer's "
                          f"{', '.join(settings)}: a strategy before it hid Adam's settings")
    return functools.partial(factory.func, *factory.args, **{**factory.keywords, **settings})


@register_strategy("weight_decay")
class WeightDecay(Strategy):
    """Coupled weight decay (the seed's L2): Adam's weight_decay, coef·θ added to the clipped
    gradient of every parameter before Adam's moments (optax add_decayed_weights before adam).
    Unlike `l2`, it is not a loss term: gradient clipping never sees it. With adamo, AdamO decays
    the same way, and trac wraps either; with `er_l2` the two coefficients add up."""

    paper = "He et al. 2025 (arXiv 2509.22335): L2 as coupled weight decay; Dohare et al. 2024"
    order = 30  # binds Adam's settings before adamo (40) replaces or trac (60) wraps it

    @dataclass
    class Settings:
        coef: float = field(default=1e-3, metadata=non_negative())

    def __init__(self, settings, key: str = "weight_decay"):
        super().__init__(settings)
        self.key = key  # where its settings sit in the config (er_l2 nests one)

    def configure_optimizer(self, factory):
        decay = getattr(factory, "keywords", {}).get("weight_decay", 0.0) + self.settings.coef
        return bind_optimizer_settings(factory, self.key, weight_decay=decay)

    def setup(self, ctx):
        self.params = list(ctx.network.parameters())

    def metrics(self):
        # ‖θ‖ over every parameter, what the decay pulls toward zero (Adam decays them all)
        return {"weight_norm": torch.linalg.vector_norm(
            torch.stack([p.detach().norm() for p in self.params]))}


@register_strategy("er_l2")
class EffectiveRankL2(Strategy):
    """Preset, the seed paper's recipe: effective_rank (mode step, er_lr 1e-6, er_batch 128) +
    coupled weight_decay (1e-3); settings nested (plasticity.er_l2.weight_decay.coef=...).
    `betas` replaces the agent's Adam betas: the seed's are [0.99, 0.99], but at our PPO
    learning rate they cost first-task learning (0.69 of the baseline's AUC on Empty-6x6 against
    0.87 with the agent's; bench/first_task_defaults.py), so the default (null) keeps the
    agent's."""

    paper = "He et al. 2025 (arXiv 2509.22335)"

    @dataclass
    class Settings:
        effective_rank: EffectiveRankSettings = field(default_factory=EffectiveRankSettings)
        weight_decay: WeightDecay.Settings = field(default_factory=WeightDecay.Settings)
        betas: Optional[list[float]] = None  # the seed's: [0.99, 0.99]

    def __init__(self, settings):
        super().__init__(settings)
        if settings.betas is not None:
            check_adam_betas("plasticity.er_l2.betas", settings.betas)
        self.parts = StrategyStack([
            EffectiveRank(settings.effective_rank, key="er_l2.effective_rank"),
            WeightDecay(settings.weight_decay, key="er_l2.weight_decay")])

    def configure_optimizer(self, factory):
        factory = self.parts.configure_optimizer(factory)
        if self.settings.betas is not None:
            factory = bind_optimizer_settings(factory, self.name,
                                              betas=tuple(float(b) for b in self.settings.betas))
        return factory

    def setup(self, ctx):
        self.parts.setup(ctx)

    def loss_penalty(self, step):
        penalties = self.parts.loss_penalty(step)
        return sum(penalties.values()) if penalties else None

    def after_optimizer_step(self, step):
        self.parts.after_optimizer_step(step)

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
        coef: float = field(default=1e-3, metadata=non_negative())
        scale: float = field(default=1.0, metadata=non_negative())  # s

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
        coef: float = field(default=1e-4, metadata=non_negative())
        target: float = field(default=1.0, metadata=non_negative())
        power_iterations: int = field(default=1, metadata=at_least(1))  # per gradient step

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
