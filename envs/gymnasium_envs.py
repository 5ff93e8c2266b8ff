"""gymnasium's own envs (CartPole-v1, ...): the fallback family, for every registered id that no
other family's prefix claims."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from agents.errors import ConfigError
from envs.families import EnvFamily, known_id_patterns, make_registered, register_env_family
from envs.info import ObservationLayout
from envs.tasks import TaskSpec
from envs.wrappers import apply_shifts


@register_env_family("gymnasium")
class GymnasiumFamily(EnvFamily):
    def check(self, task: TaskSpec) -> None:
        if task.env_id not in gym.registry:
            raise ConfigError(f"unknown env '{task.env_id}' "
                              f"({', '.join(known_id_patterns())} or a gymnasium id)")

    def make_single(self, task: TaskSpec) -> gym.Env:
        return apply_shifts(make_registered(task), task)

    @classmethod
    def layout(cls, observation_space) -> ObservationLayout:
        """gymnasium's conventions: a 3-D observation is an HWC image (as its image envs render
        them), anything else a vector."""
        scale = 1 / 255 if observation_space.dtype == np.uint8 else 1.0
        if len(observation_space.shape) == 3:
            return ObservationLayout(image=True, channels_last=True, arch="nature_cnn",
                                     input_scale=scale)
        return ObservationLayout(image=False, arch="mlp", input_scale=scale)
