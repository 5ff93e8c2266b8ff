"""What strategies and observers may see of a learner: narrow on purpose."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn


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


@dataclass
class StepContext:
    """One gradient step: the minibatch and what the loss's forward pass produced."""

    ctx: TrainContext
    obs: torch.Tensor
    loss: torch.Tensor
    features: dict[str, torch.Tensor]  # hidden block name -> activations (with graph)
    # Named parts of the loss, detached: PPO gives "policy_loss" (its clipped surrogate alone)
    extras: dict[str, Any] = field(default_factory=dict)
