"""What strategies and observers may see of a learner: narrow on purpose."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Optional

import torch
from torch import nn

from agents.errors import ConfigError


@dataclass
class TrainContext:
    """Live training state shared with strategies (read freely, change only what you own)."""

    agent: str  # the registered agent's name: "ppo" | "dqn" | ...
    network: nn.Module  # the online network being trained
    device: torch.device
    seed: int
    optimizer: Optional[torch.optim.Optimizer] = None
    global_step: int = 0  # env steps, summed over envs
    update_count: int = 0  # gradient steps taken
    iteration: int = 0  # completed agent iterations (PPO rollout+update, DQN train step)
    task_index: int = 0  # position in the schedule
    task_name: str = ""
    # Recent observations of the current task (uint8 or float, as the env gives them):
    # sample_obs(n, generator) -> tensor of n observations on `device`.
    sample_obs: Optional[Callable[[int, torch.Generator], torch.Tensor]] = None
    # The agent's target network (DQN's), a copy of `network` synced on the agent's schedule:
    # a strategy that changes the network's structure (plasticity_injection) changes it too.
    target_network: Optional[nn.Module] = None


@dataclass
class StepContext:
    """One gradient step: the minibatch and what the loss's forward pass produced."""

    ctx: TrainContext
    obs: torch.Tensor
    loss: torch.Tensor
    features: dict[str, torch.Tensor]  # hidden block name -> activations (with graph)
    # Named parts of the loss, detached: PPO gives "policy_loss" (its clipped surrogate alone)
    extras: dict[str, Any] = field(default_factory=dict)
    # The agent's loss on this minibatch re-run at the current parameters, as `Agent.loss`
    # returns it: (loss, stats, outputs, features); for `reevaluate`
    loss_fn: Optional[Callable[[], tuple]] = None

    def reevaluate(self) -> StepContext:
        """This step with its loss and features recomputed at the current parameters (a second
        forward pass: SAM's, at its perturbed point); extras stay the first pass's."""
        if self.loss_fn is None:
            raise ConfigError(f"agent {self.ctx.agent} gives no loss_fn in its StepContext: a "
                              "strategy that re-evaluates the loss (sam) cannot run with it")
        loss, _, _, features = self.loss_fn()
        return replace(self, loss=loss, features=features)
