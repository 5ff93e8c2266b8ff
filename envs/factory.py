"""Builds the vector env of each task and checks that a sequence's tasks are compatible."""

from __future__ import annotations

import gymnasium as gym
from gymnasium.wrappers.vector import RecordEpisodeStatistics

from agents.config import ConfigError
from envs import atari, minigrid
from envs.tasks import TaskSequence, TaskSpec
from envs.wrappers import apply_shifts


class EnvFactory:
    """Makes envs for the tasks of one sequence, all with the same spaces."""

    def __init__(self, env_cfg, sequence: TaskSequence):
        self.env_cfg = env_cfg
        self.sequence = sequence
        for task in sequence.tasks:
            self._check(task)
        atari_tasks = [t for t in sequence.tasks if t.family == "atari"]
        self.full_action_space = atari.full_action_space_needed(atari_tasks, env_cfg)
        self.observation_space, self.action_space = self._common_spaces()

    def _check(self, task: TaskSpec) -> None:
        if task.family == "atari":
            atari.check_task(task)
        elif task.family == "minigrid":
            minigrid.check_task(task)
        elif task.env_id not in gym.registry:
            raise ConfigError(f"unknown env '{task.env_id}' (MiniGrid-*, ALE/* or a gymnasium id)")

    def make_single(self, task: TaskSpec) -> gym.Env:
        if task.family == "atari":
            return atari.make_single(task, self.env_cfg, self.full_action_space)
        if task.family == "minigrid":
            return minigrid.make_single(task)
        return apply_shifts(gym.make(task.env_id, **task.kwargs), task)

    def make_vector(self, task: TaskSpec, num_envs: int | None = None):
        """A vector env (SAME_STEP autoreset) recording raw episodic returns; reset it seeded."""
        num_envs = num_envs or self.env_cfg.num_envs
        if task.family == "atari":
            envs = atari.make_vector(task, self.env_cfg, num_envs, self.full_action_space)
        elif task.family == "minigrid":
            envs = minigrid.make_vector(task, num_envs)
        else:
            envs = gym.vector.SyncVectorEnv(
                [lambda: self.make_single(task) for _ in range(num_envs)],
                autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
            )
        return RecordEpisodeStatistics(envs)

    def reward_transform(self):
        families = {t.family for t in self.sequence.tasks}
        return atari.reward_transform(self.env_cfg) if families == {"atari"} else None

    def _common_spaces(self):
        spaces = []
        for task in self.sequence.tasks:
            env = self.make_single(task)
            spaces.append((task.name, env.observation_space, env.action_space))
            env.close()
        name0, obs0, act0 = spaces[0]
        for name, obs, act in spaces[1:]:
            if obs != obs0 or act != act0:
                raise ConfigError(
                    f"task '{name}' has observation space {obs} and action space {act}, but "
                    f"'{name0}' has {obs0} and {act0}: every task of a sequence needs the same"
                )
        if not isinstance(act0, gym.spaces.Discrete):
            raise ConfigError(f"only discrete action spaces are supported, got {act0}")
        return obs0, act0
