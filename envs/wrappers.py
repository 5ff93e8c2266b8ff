"""Distribution shifts usable on any task: fixed permutations of observations or actions."""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class PermuteObservation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Shuffles the elements of every observation with one fixed, seeded permutation.

    Spatial structure is destroyed on purpose: the permuted-input shift of Dohare et al.
    """

    def __init__(self, env: gym.Env, seed: int):
        gym.utils.RecordConstructorArgs.__init__(self, seed=seed)
        gym.ObservationWrapper.__init__(self, env)
        size = int(np.prod(env.observation_space.shape))
        self.permutation = np.random.default_rng(seed).permutation(size)

    def observation(self, observation):
        flat = np.asarray(observation).reshape(-1)
        return flat[self.permutation].reshape(self.observation_space.shape)


class PermuteActions(gym.ActionWrapper, gym.utils.RecordConstructorArgs):
    """Relabels the discrete actions with one fixed, seeded permutation."""

    def __init__(self, env: gym.Env, seed: int):
        gym.utils.RecordConstructorArgs.__init__(self, seed=seed)
        gym.ActionWrapper.__init__(self, env)
        if not isinstance(env.action_space, gym.spaces.Discrete):
            raise ValueError("permute_actions needs a discrete action space")
        self.permutation = np.random.default_rng(seed).permutation(int(env.action_space.n))

    def action(self, action):
        return int(self.permutation[int(action)])


class FireReset(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Presses FIRE after reset in games that wait for it (gymnasium has no such wrapper;
    ale-py's AtariVectorEnv does the same with use_fire_reset)."""

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.Wrapper.__init__(self, env)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        obs, _, terminated, truncated, info = self.env.step(1)
        if terminated or truncated:
            obs, info = self.env.reset(**kwargs)
        return obs, info


def apply_shifts(env: gym.Env, task) -> gym.Env:
    if task.permute_obs is not None:
        env = PermuteObservation(env, task.permute_obs)
    if task.permute_actions is not None:
        env = PermuteActions(env, task.permute_actions)
    return env
