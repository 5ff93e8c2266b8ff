"""MiniGrid tasks: the agent's egocentric 7x7x3 image view, the same 7 actions everywhere."""

from __future__ import annotations

import gymnasium as gym
import minigrid  # noqa: F401  (registers the MiniGrid-* ids)

from agents.config import ConfigError
from envs.tasks import TaskSpec
from envs.wrappers import apply_shifts


class ImageObservation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """The 'image' part of MiniGrid's dict observation. minigrid's own ImgObsWrapper does the
    same but cannot be re-created from its spec, which gymnasium's env checker requires."""

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.ObservationWrapper.__init__(self, env)
        self.observation_space = env.observation_space["image"]

    def observation(self, observation):
        return observation["image"]


def check_task(task: TaskSpec) -> None:
    if task.env_id not in gym.registry:
        known = sorted(k for k in gym.registry if k.startswith("MiniGrid-"))
        raise ConfigError(f"unknown MiniGrid env '{task.env_id}' (known: {', '.join(known)})")


def make_single(task: TaskSpec) -> gym.Env:
    try:
        env = gym.make(task.env_id, **task.kwargs)
    except TypeError as exc:
        raise ConfigError(f"task '{task.name}': bad kwargs for {task.env_id}: {exc}") from None
    return apply_shifts(ImageObservation(env), task)


def make_vector(task: TaskSpec, num_envs: int):
    return gym.vector.SyncVectorEnv(
        [lambda: make_single(task) for _ in range(num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
