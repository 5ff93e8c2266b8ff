"""gymnasium's own envs (CartPole-v1, ...): the fallback family, for every registered id that no
other family's prefix claims."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from agents.errors import ConfigError
from envs import atari, minigrid
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
        """A vector, or an image read as networks read one before families declared layouts
        (kept so that no config's numbers change): a small 3-channel HWC image (below 16 rows)
        as MiniGrid's, any other 3-D observation as a CHW frame stack. An HWC image env of
        gymnasium's own (CarRacing's 96x96x3) is not read right by this rule: such a family
        declares its layout itself."""
        shape = tuple(observation_space.shape)
        if len(shape) != 3:
            scale = 1 / 255 if observation_space.dtype == np.uint8 else 1.0
            return ObservationLayout(image=False, arch="mlp", input_scale=scale)
        return minigrid.LAYOUT if shape[-1] == 3 and shape[0] < 16 else atari.LAYOUT
