"""The one update path: every gradient step of every agent goes through `Learner.optimize`.

penalties from strategies -> backward -> gradient clipping -> optimizer step -> post-step hooks.
PPO and DQN build a loss and call `optimize`; they never name a strategy.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from agents.context import StepContext, TrainContext
from agents.networks import Network, NetworkSpec
from agents.plasticity.base import StrategyStack


def adam_factory(learning_rate: float, eps: float):
    return lambda params: torch.optim.Adam(params, lr=learning_rate, eps=eps)


class Learner:
    def __init__(self, spec: NetworkSpec, strategies: StrategyStack, ctx_kwargs: dict,
                 learning_rate: float, adam_eps: float, max_grad_norm: Optional[float],
                 device: torch.device):
        self.strategies = strategies
        strategies.configure_network(spec)
        self.network = Network(spec).to(device)
        factory = strategies.configure_optimizer(adam_factory(learning_rate, adam_eps))
        self.optimizer = factory(list(self.network.parameters()))
        self.max_grad_norm = max_grad_norm
        self.ctx = TrainContext(network=self.network, optimizer=self.optimizer, device=device,
                                **ctx_kwargs)

    def setup(self) -> None:
        """Call once the agent has filled in the rest of the context (targets, samplers)."""
        self.strategies.setup(self.ctx)

    def set_learning_rate(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def optimize(self, step: StepContext) -> dict[str, torch.Tensor]:
        """One gradient step on step.loss plus strategy penalties; returns detached stats."""
        penalties = self.strategies.loss_penalty(step)
        total = step.loss + sum(penalties.values()) if penalties else step.loss
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        stats = {f"plasticity/{name}/penalty": p.detach() for name, p in penalties.items()}
        if self.max_grad_norm is not None:
            stats["losses/grad_norm"] = nn.utils.clip_grad_norm_(
                self.network.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.ctx.update_count += 1
        self.strategies.after_optimizer_step(step)
        return stats

    def after_update(self) -> None:
        self.ctx.iteration += 1
        self.strategies.after_update(self.ctx)
