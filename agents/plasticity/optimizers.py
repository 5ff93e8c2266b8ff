"""Strategies that change the optimizer: AdamO (replaces Adam) and TRAC (tunes any optimizer).

Both act through torch's optimizer step hooks, never by overriding `step`: torch wraps each
optimizer class's `step` with the hooks once, so a subclass calling `super().step()` would run the
hooks twice once plain Adam has been instantiated anywhere.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.special import erfi

from agents.errors import decay_rate, non_negative, positive
from agents.plasticity.base import Strategy, register_strategy
from agents.plasticity.isometry import IsometrySettings, check_isometry_settings, isometry_terms


class AdamO(torch.optim.Adam):
    """Adam with a decoupled isometry step, as AdamW decouples weight decay: the moments see only
    the loss gradient g (plus weight_decay·θ when one is bound: Adam's coupled decay); after
    Adam's update, θ ← θ − lr·coef·r with r = ∇R(θ) set beforehand in `regularizer_grads`
    (param -> gradient, consumed by the step)."""

    def __init__(self, params, isometry_coef: float = 0.0, **adam_kwargs):
        super().__init__(params, **adam_kwargs)
        self.isometry_coef = isometry_coef
        self.regularizer_grads: dict[torch.Tensor, torch.Tensor] = {}
        self.register_step_post_hook(AdamO._decoupled_step)

    @torch.no_grad()
    def _decoupled_step(self, args, kwargs) -> None:
        for group in self.param_groups:
            for param in group["params"]:
                grad = self.regularizer_grads.get(param)
                if grad is not None:
                    param.add_(grad, alpha=-group["lr"] * self.isometry_coef)
        self.regularizer_grads = {}


@dataclass
class AdamOSettings(IsometrySettings):
    # λ: the isometry step is lr·λ·∇R (ours; the paper's is not public to us)
    coef: float = field(default=0.1, metadata=non_negative())


@register_strategy("adamo")
class AdamOStrategy(Strategy):
    """AdamO: Adam whose isometry regulariser (the `isometry` strategy's R, either estimator)
    is a step decoupled from Adam's moments, as AdamW decouples weight decay: θ ← θ − lr·coef·∇R
    after Adam's update."""

    paper = "Rosseau et al. 2026, Preserving plasticity in continual learning via dynamical " \
            "isometry (arXiv 2606.09762)"
    Settings = AdamOSettings
    replaces_optimizer = True
    order = 40  # configures the optimizer before wrappers (trac) see it
    state_attributes = ("gaps",)

    def __init__(self, settings):
        super().__init__(settings)
        check_isometry_settings(self.name, settings)

    def configure_optimizer(self, factory):
        # The learner's factory is functools.partial(Adam, lr=..., eps=..., betas=...), with any
        # weight_decay bound by strategies before this one: keep its settings, and stay a
        # partial so that strategies after this one (er_l2's betas) can bind theirs.
        return functools.partial(AdamO, isometry_coef=self.settings.coef, **factory.keywords)

    def setup(self, ctx):
        self.generator = self.make_generator(ctx)
        self.params = list(ctx.network.parameters())
        self.gaps: dict[str, torch.Tensor] = {}

    def loss_penalty(self, step):
        if self.settings.coef == 0:
            return None
        gaps = isometry_terms(self.settings, step, self.generator)
        grads = torch.autograd.grad(sum(gaps.values()), self.params, allow_unused=True)
        step.ctx.optimizer.regularizer_grads = {
            p: g for p, g in zip(self.params, grads) if g is not None}
        self.gaps = {name: g.detach() for name, g in gaps.items()}
        return None  # nothing enters the loss, hence nothing enters Adam's moments

    def metrics(self):
        return {f"gap/{name}": g for name, g in self.gaps.items()}


class TracTuner:
    """TRAC (Muppidi et al. 2024) on any optimizer, through its step hooks: the parameters are
    θ = θ_ref + S·Δ, where Δ accumulates the base optimizer's updates and the scale S = Σ_i s_i
    comes from erfi-based parameter-free tuners with discounts β_i (Zhang et al. 2024).

    Written here rather than taken from `trac-optimizer` 0.0.2 (the authors' package, whose
    tuner this follows), because that package recovers Δ as (θ − θ_ref)/(S + eps) from the
    float32 weights instead of keeping it: while S is ~1e-8, S·Δ is below the rounding of every
    weight that did not start at zero, so such weights never move, and once S ≤ 0 the recovered
    Δ is 0, so h = 0 from then on and the weights stay at θ_ref for good. It also appends a line
    to a log file at every step, keeps its state under a string key of `optimizer.state` (a
    checkpoint cannot be loaded into a new optimizer) and subclasses the optimizer class (so it
    cannot sit on AdamO). Here Δ is kept in its own tensors; edits other strategies make to the
    weights between steps (resets, perturbations, projections) move θ_ref, so they stay as made.
    """

    def __init__(self, optimizer, betas, s_init: float, eps: float):
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.betas = np.asarray(betas, dtype=np.float64)
        self.s_init, self.eps = s_init, eps
        self.s = np.zeros_like(self.betas)
        self.sigma = np.full_like(self.betas, 1e-8)
        self.variance = np.zeros_like(self.betas)
        self.reference: list[torch.Tensor] | None = None
        self.delta: list[torch.Tensor] = []
        optimizer.register_step_pre_hook(self._before_step)
        optimizer.register_step_post_hook(self._after_step)

    @property
    def scale(self) -> float:
        return max(float(self.s.sum()), 0.0)

    def weights(self, reference: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return reference + delta * self.scale

    @torch.no_grad()
    def _before_step(self, optimizer, args, kwargs) -> None:
        if self.reference is None:
            self.reference = [p.detach().clone() for p in self.params]
            self.delta = [torch.zeros_like(p) for p in self.params]
        for p, reference, delta in zip(self.params, self.reference, self.delta):
            reference.add_(p - self.weights(reference, delta))  # exactly 0 unless edited
        products = [(d * p.grad).sum() for d, p in zip(self.delta, self.params)
                    if p.grad is not None]
        self.h = float(torch.stack(products).sum()) if products else 0.0  # ⟨g, Δ⟩
        self.start = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def _after_step(self, optimizer, args, kwargs) -> None:
        for p, start, delta in zip(self.params, self.start, self.delta):
            delta.add_(p - start)  # the base optimizer's update
        self.variance = self.betas**2 * self.variance + self.h**2
        self.sigma = self.betas * self.sigma - self.h
        ratio = self.sigma / (math.sqrt(2) * np.sqrt(self.variance) + self.eps)
        self.s = self.s_init / erfi(1 / math.sqrt(2)) * erfi(ratio)
        for p, reference, delta in zip(self.params, self.reference, self.delta):
            p.copy_(self.weights(reference, delta))
        del self.start

    def state_dict(self) -> dict:
        tuners = {name: torch.from_numpy(getattr(self, name).copy())
                  for name in ("s", "sigma", "variance")}
        return {**tuners, "reference": self.reference, "delta": self.delta}

    def load_state_dict(self, state: dict) -> None:
        for name in ("s", "sigma", "variance"):
            setattr(self, name, state[name].cpu().numpy().copy())
        self.reference, self.delta = state["reference"], state["delta"]


@register_strategy("trac")
class Trac(Strategy):
    """TRAC, a parameter-free scale on top of the optimizer (Adam, or AdamO): θ = θ_ref + S·Δ,
    Δ the optimizer's accumulated updates, S from erfi-based parameter-free tuners with
    discounts `betas`. s_init is 1e-2, not the paper's 1e-8, from which a first task learns
    slowly (plasticity.trac.s_init=1e-8 is the paper's)."""

    paper = "Muppidi et al. 2024, Fast TRAC: a parameter-free optimizer for lifelong " \
            "reinforcement learning (NeurIPS 2024)"
    order = 60

    @dataclass
    class Settings:
        betas: list[float] = field(
            default_factory=lambda: [0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999],
            metadata=decay_rate(each=True))
        # The paper's s_init is 1e-8: S then needs ~40 consistent steps to reach 1 and, with
        # PPO's noisy ⟨Δ, g⟩ on a sparse-reward task, stays at 0.01-0.3 (a first MiniGrid task
        # learned at 0.35 of plain Adam's AUC). From 1e-2, S starts at ~0.1 (docs/strategies.md).
        s_init: float = field(default=1e-2, metadata=positive())
        eps: float = field(default=1e-8, metadata=positive())

    def configure_optimizer(self, factory):
        def build(params):
            optimizer = factory(params)
            self.tuner = TracTuner(optimizer, self.settings.betas, self.settings.s_init,
                                   self.settings.eps)
            return optimizer
        return build

    def metrics(self):
        return {"scale": self.tuner.scale}

    def state_dict(self):
        return self.tuner.state_dict()

    def load_state_dict(self, state):
        self.tuner.load_state_dict(state)
