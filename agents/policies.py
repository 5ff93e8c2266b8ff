"""PPO's action distributions, read off the network's heads: a categorical over discrete actions,
a diagonal Gaussian with a state-independent log-std over continuous ones (CleanRL's
ppo_continuous_action, and both Slippery-Ant papers). Each says which heads it needs, samples,
and scores actions, so PPO's rollout and its one loss never branch on the action space.

Continuous actions are sent to the env as sampled: clipping to the action space is the env's
(gymnasium's ClipAction, envs/mujoco.py), so the log-probability is that of the sampled action.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch

from agents.errors import ConfigError

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def log_prob_and_entropy(logits: torch.Tensor, actions: torch.Tensor):
    """Categorical(logits).log_prob(actions) and .entropy(), from one log_softmax: half the
    time of building the distribution, whose argument checks and logsumexp dominate on small
    minibatches (bench/levers.py)."""
    log_p = logits.log_softmax(-1)
    return log_p.gather(-1, actions.unsqueeze(-1)).squeeze(-1), -(log_p.exp() * log_p).sum(-1)


def sample_categorical(logits: torch.Tensor) -> torch.Tensor:
    """torch.multinomial(softmax(logits), 1)'s draw, from the same RNG state (its one-sample path:
    argmax of probs over Exp(1) noise), without its input checks, which cost 30 µs a step."""
    probs = logits.softmax(-1)
    return (probs / torch.empty_like(probs).exponential_()).argmax(-1)


def gaussian_log_prob_and_entropy(mean: torch.Tensor, log_std: torch.Tensor,
                                  actions: torch.Tensor):
    """Normal(mean, exp(log_std)).log_prob(actions).sum(-1) and .entropy().sum(-1), written out:
    the same numbers without building a distribution per minibatch (tests check them against
    torch.distributions.Normal)."""
    z = (actions - mean) * torch.exp(-log_std)
    log_prob = (-0.5 * z.square() - log_std - HALF_LOG_2PI).sum(-1)
    entropy = (0.5 + HALF_LOG_2PI + log_std).sum(-1).expand(mean.shape[:-1])
    return log_prob, entropy


class CategoricalPolicy:
    """Discrete actions: logits from the `policy` head."""

    outputs = ("policy",)  # head outputs a rollout keeps to score its actions afterwards
    action_dtype = torch.long

    def __init__(self, space: gym.spaces.Discrete):
        self.action_shape: tuple[int, ...] = ()
        self.heads = {"policy": int(space.n)}
        self.constant_heads: dict[str, int] = {}

    def sample(self, outputs: dict) -> torch.Tensor:
        return sample_categorical(outputs["policy"])

    def log_prob_and_entropy(self, outputs: dict, actions: torch.Tensor):
        return log_prob_and_entropy(outputs["policy"], actions)


class GaussianPolicy:
    """Continuous actions: the mean from the `policy` head, a learned log-std per action
    dimension (the constant head `log_std`, zero at init: std 1)."""

    outputs = ("policy", "log_std")
    action_dtype = torch.float32

    def __init__(self, space: gym.spaces.Box):
        self.action_shape = tuple(space.shape)
        size = int(np.prod(space.shape))
        if len(self.action_shape) != 1:
            raise ConfigError(f"ppo: continuous actions must be a vector, got shape "
                              f"{self.action_shape}")
        self.heads = {"policy": size}
        self.constant_heads = {"log_std": size}

    def sample(self, outputs: dict) -> torch.Tensor:
        # torch.normal: the draw CleanRL's Normal(mean, std).sample() makes from the same state
        return torch.normal(outputs["policy"], outputs["log_std"].exp())

    def log_prob_and_entropy(self, outputs: dict, actions: torch.Tensor):
        return gaussian_log_prob_and_entropy(outputs["policy"], outputs["log_std"], actions)


def policy_for(action_space: gym.spaces.Space):
    """The distribution PPO acts with on `action_space`."""
    if isinstance(action_space, gym.spaces.Discrete):
        return CategoricalPolicy(action_space)
    if isinstance(action_space, gym.spaces.Box):
        return GaussianPolicy(action_space)
    raise ConfigError(f"ppo acts on Discrete or Box action spaces, not {action_space}")
