"""A small learner with strategies switched on, for tests that check a mechanism on the weights."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from omegaconf import OmegaConf

from agents.context import StepContext
from agents.learner import Learner
from agents.networks import NetworkConfig, make_spec
from agents.plasticity import build_strategies
from envs import minigrid

SPACES = {
    "mlp": gym.spaces.Box(-1, 1, (6,), np.float32),
    "cnn": gym.spaces.Box(0, 10, (7, 7, 3), np.uint8),  # MiniGrid's CNN: conv -> flatten -> fc
}


PPO_HEADS = {"policy": 4, "value": 1}


def make_learner(plasticity: dict, arch: str = "mlp", agent: str = "ppo", lr: float = 1e-3,
                 seed: int = 0, batch: int = 32, heads: dict = PPO_HEADS) -> Learner:
    """A Learner (Adam, no clipping) with `plasticity` switched on and a fixed observation batch
    behind ctx.sample_obs; a PPO-shaped network unless `heads` says otherwise."""
    torch.manual_seed(seed)
    space = SPACES[arch]
    net_cfg = OmegaConf.merge(OmegaConf.structured(NetworkConfig),
                              {"hidden_sizes": [16, 12], "width": 0.5 if arch == "cnn" else 1})
    layout = minigrid.LAYOUT if arch == "cnn" else None
    spec = make_spec(net_cfg, space, heads, {"policy": 0.01, "value": 1.0}, layout)
    learner = Learner(spec, build_strategies(OmegaConf.create(plasticity)),
                      dict(agent=agent, seed=seed), lr, 1e-8, None, torch.device("cpu"))
    learner.obs = observations(arch, batch, seed)
    learner.ctx.sample_obs = lambda n, generator: learner.obs[:n]
    learner.setup()
    return learner


def observations(arch: str, n: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if arch == "cnn":
        return torch.randint(0, 11, (n, 7, 7, 3), generator=generator, dtype=torch.uint8)
    return torch.randn(n, 6, generator=generator)


def step_context(learner: Learner, obs=None, loss_fn=None) -> StepContext:
    """A forward pass on `obs` and a loss (default: a zero loss connected to every output)."""
    obs = learner.obs if obs is None else obs

    def evaluate():  # as Agent.loss returns: (loss, stats, outputs, features)
        outputs, features = learner.network(obs, return_features=True)
        if loss_fn is None:
            return sum(o.sum() for o in outputs.values()) * 0.0, {}, outputs, features
        return loss_fn(outputs), {}, outputs, features

    loss, _, _, features = evaluate()
    return StepContext(learner.ctx, obs, loss, features, loss_fn=evaluate)


def optimize(learner: Learner, steps: int = 1, loss_fn=None) -> None:
    for _ in range(steps):
        learner.optimize(step_context(learner, loss_fn=loss_fn))


def value_loss(outputs):
    """A loss with a real gradient on every parameter the value head depends on."""
    return (outputs["value"] - 1.0).pow(2).mean() + outputs["policy"].pow(2).mean()
