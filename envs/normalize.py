"""Running observation and reward normalisation (`env.normalize_obs`, `env.normalize_reward`), as
CleanRL's ppo_continuous_action: observations to zero mean, unit variance, clipped; rewards
divided by the running std of a discounted return, clipped. The wrappers go above
RecordEpisodeStatistics, so logged returns stay raw.

One set of statistics serves the whole run (RunningStatistics, held by the EnvFactory): every
training segment's envs update the same objects, so they persist across task switches; any other
envs (the spectral monitor's probes) read a frozen copy and never disturb them.
"""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector.utils import batch_space
from gymnasium.wrappers.utils import RunningMeanStd
from gymnasium.wrappers.vector import ClipReward, NormalizeReward

from agents.errors import ConfigError


class NormalizeObservation(gym.vector.VectorWrapper):
    """gymnasium.wrappers.vector.NormalizeObservation for SAME_STEP autoreset, which gymnasium's
    refuses: it would leave info["final_obs"], what agents bootstrap from, raw. Each step's (and
    reset's) observations update the statistics; the final ones are scaled by them, unrecorded."""

    def __init__(self, env: gym.vector.VectorEnv, obs_rms: RunningMeanStd, update: bool,
                 clip: float, epsilon: float = 1e-8):
        super().__init__(env)
        self.obs_rms, self.update_running_mean = obs_rms, update
        self.clip, self.epsilon = clip, epsilon
        self.single_observation_space = gym.spaces.Box(
            -clip, clip, env.single_observation_space.shape, np.float32)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return self._normalize(obs), info

    def step(self, actions):
        obs, rewards, terminated, truncated, info = self.env.step(actions)
        obs = self._normalize(obs)
        if "final_obs" in info:
            final = info["final_obs"]
            if final.dtype == object:  # SyncVectorEnv: the ended envs' observations, else None
                final = final.copy()
                for i in np.flatnonzero(info["_final_obs"]):
                    final[i] = self._scale(final[i])
            else:  # a full array (ale-py's AtariVectorEnv)
                final = self._scale(final)
            info = {**info, "final_obs": final}
        return obs, rewards, terminated, truncated, info

    def _normalize(self, obs):
        if self.update_running_mean:
            self.obs_rms.update(obs)
        return self._scale(obs)

    def _scale(self, obs):
        scaled = (obs - self.obs_rms.mean) / np.sqrt(self.obs_rms.var + self.epsilon)
        return np.clip(scaled, -self.clip, self.clip).astype(np.float32)


class RunningStatistics:
    """The run's normalisation statistics (None where that normalisation is off) and the
    wrappers that use them. A checkpoint stores them as they were when the live segment's envs
    were reset (envs/recorder.py), so replaying its actions brings them back exactly."""

    def __init__(self, env_cfg, observation_space: gym.spaces.Space):
        self.env_cfg = env_cfg
        self.obs = self.ret = None
        if env_cfg.normalize_obs:
            if not (isinstance(observation_space, gym.spaces.Box)
                    and np.issubdtype(observation_space.dtype, np.floating)):
                raise ConfigError(f"env.normalize_obs normalises float vector observations, not "
                                  f"{observation_space}")
            self.obs = RunningMeanStd(shape=observation_space.shape)
        if env_cfg.normalize_reward:
            self.ret = RunningMeanStd(shape=())

    @classmethod
    def of(cls, env_cfg, observation_space) -> RunningStatistics | None:
        """The statistics a run's `env:` config asks for; None: no normalisation."""
        if env_cfg.normalize_obs or env_cfg.normalize_reward:
            return cls(env_cfg, observation_space)
        return None

    def wrap(self, envs: gym.vector.VectorEnv, training: bool) -> gym.vector.VectorEnv:
        """`envs` normalised: by these statistics, updating them (training), or by a frozen
        copy of them as they are now (any other envs)."""
        shared = (lambda rms: rms) if training else copy.deepcopy
        cfg = self.env_cfg
        if self.obs is not None:
            envs = NormalizeObservation(envs, shared(self.obs), training, cfg.clip_obs)
        if self.ret is not None:
            envs = NormalizeReward(envs, gamma=cfg.gamma_reward)
            envs.return_rms, envs.update_running_mean = shared(self.ret), training
            envs = ClipReward(envs, -cfg.clip_reward, cfg.clip_reward)
        return envs

    def state_dict(self) -> dict:
        return {name: {"mean": torch.tensor(rms.mean), "var": torch.tensor(rms.var),
                       "count": float(rms.count)}
                for name, rms in (("obs", self.obs), ("return", self.ret)) if rms is not None}

    def load_state_dict(self, state: dict) -> None:
        """In place: the wrappers of the live envs hold these very objects."""
        for name, rms in (("obs", self.obs), ("return", self.ret)):
            if rms is not None:
                saved = state[name]
                rms.mean, rms.var = saved["mean"].numpy().copy(), saved["var"].numpy().copy()
                rms.count = saved["count"]
