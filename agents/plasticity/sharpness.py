"""Sharpness-aware minimisation: the optimizer steps from θ with the gradient taken at the worst
nearby point θ + ε, to first order ε = ρ·g/‖g‖, g the gradient at θ (Foret et al. 2021)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from agents.errors import non_negative
from agents.plasticity.base import Strategy, register_strategy


def full_loss(step, penalties: dict[str, torch.Tensor]) -> torch.Tensor:
    """The agent's loss plus the strategies' penalties, detached."""
    return (step.loss + sum(penalties.values())).detach()


@register_strategy("sam")
class SAM(Strategy):
    """Sharpness-aware minimisation: every step goes from θ with the gradient at θ + ρ·g/‖g‖,
    the worst point within radius ρ to first order. g = ∇L(θ) of the full loss (the agent's loss
    and every strategy's penalty, ‖g‖ over all parameters); the loss and the penalties are
    computed again at the perturbed point, and their gradient there is what clipping and the
    optimizer (Adam, AdamO, TRAC) step with, from θ restored exactly. Two forward/backward
    passes per step; refuses c_chain. Logs ‖g‖ and the sharpness L(θ + ε) − L(θ)."""

    paper = "Foret et al. 2021, Sharpness-aware minimization for efficiently improving " \
            "generalization (ICLR 2021); for plasticity: Lee et al. 2023, PLASTIC (NeurIPS 2023)"
    wraps_gradient = True
    # c_chain's penalty moves its state on every call (θ⁻ snapshot, λ's running means): a second
    # call at θ + ε would take θ + ε for θ⁻ and count each step twice.
    incompatible = {"c_chain": "c_chain's penalty keeps per-step state that sam's second "
                               "evaluation would corrupt"}
    state_attributes = ("last",)

    @dataclass
    class Settings:
        # ρ, the perturbation's radius. Foret et al. pick it per task from {0.01, 0.02, 0.05,
        # 0.1, 0.2, 0.5}; 0.05, their usual choice, is the default because PLASTIC's 0.1 costs
        # first-task learning here (AUC 0.75 of no strategy's on Empty-6x6, 3 seeds; 0.05: 0.86,
        # 0.02: 0.90; bench/first_task_defaults.py)
        rho: float = field(default=0.05, metadata=non_negative())

    def setup(self, ctx):
        self.params = list(ctx.network.parameters())
        self.last: dict[str, torch.Tensor] = {}

    def gradient(self, step, backward):
        penalties = backward(step)  # g at θ; the step reports the loss and penalties at θ
        params = [p for p in self.params if p.grad is not None]
        with torch.no_grad():
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
            scale = self.settings.rho / (norm + 1e-12)  # Foret et al.'s guard against g = 0
            start = [p.detach().clone() for p in params]
            for p in params:
                p.add_(p.grad * scale)
        perturbed = step.reevaluate()
        # .grad: ∇L(θ + ε), penalties included (and adamo's decoupled ∇R, which it sets there)
        perturbed_penalties = backward(perturbed)
        with torch.no_grad():
            for p, theta in zip(params, start):
                p.copy_(theta)  # not p -= ε: (θ + ε) − ε need not round back to θ
        self.last = {"grad_norm": norm, "sharpness": full_loss(perturbed, perturbed_penalties)
                     - full_loss(step, penalties)}
        return penalties

    def metrics(self):
        return self.last
