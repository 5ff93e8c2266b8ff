"""MiniGrid tasks: the agent's egocentric 7x7x3 image view, the same 7 actions everywhere."""

from __future__ import annotations

import gymnasium as gym
import minigrid  # noqa: F401  (registers the MiniGrid-* ids)

from agents.errors import ConfigError
from envs.families import EnvFamily, make_registered, register_env_family
from envs.info import ObservationLayout
from envs.tasks import TaskSpec
from envs.wrappers import apply_shifts

# HWC views whose cells hold small integer codes (object <= 10, colour <= 5, state <= 2).
LAYOUT = ObservationLayout(image=True, channels_last=True, arch="minigrid_cnn", input_scale=0.1)


class ImageObservation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """The 'image' part of MiniGrid's dict observation. minigrid's own ImgObsWrapper does the
    same but cannot be re-created from its spec, which gymnasium's env checker requires."""

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.ObservationWrapper.__init__(self, env)
        self.observation_space = env.observation_space["image"]

    def observation(self, observation):
        return observation["image"]


@register_env_family("minigrid", prefixes=("MiniGrid-",))
class MiniGridFamily(EnvFamily):
    observation_layout = LAYOUT

    def check(self, task: TaskSpec) -> None:
        if task.env_id not in gym.registry:
            known = sorted(k for k in gym.registry if k.startswith(self.prefixes))
            raise ConfigError(f"unknown MiniGrid env '{task.env_id}' (known: {', '.join(known)})")

    def make_single(self, task: TaskSpec) -> gym.Env:
        return apply_shifts(ImageObservation(make_registered(task)), task)
