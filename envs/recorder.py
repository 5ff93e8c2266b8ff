"""The training envs' history since their last reset: what an exact resume replays.

Vector envs cannot be saved (emulators, subprocesses, Python objects, and no pickle in a
checkpoint), but every env here is deterministic given its reset seed and the actions it was sent.
So a checkpoint stores those (one small integer per env step, or a float32 vector of continuous
actions) and a resumed run rebuilds the envs by stepping fresh ones through the same actions,
without the network: episode counters, frame stacks, normalisation statistics and the agent's
next observation all come back exactly.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch


class ActionRecorder(gym.vector.VectorWrapper):
    """Records the reset seed and every action; `replay` brings fresh envs to the same state."""

    def __init__(self, env: gym.vector.VectorEnv, statistics=None):
        """`statistics`: the run's normalisation statistics these envs update
        (envs.normalize.RunningStatistics), None: none."""
        super().__init__(env)
        space = env.single_action_space
        if isinstance(space, gym.spaces.Discrete):
            stored = np.min_scalar_type(int(space.n) - 1)  # uint8 for ALE, MiniGrid
            self._sent = np.int64  # as the agents send them
        else:  # Box: stored and replayed as the agents send them, bit for bit
            stored = self._sent = space.dtype
        self._actions = np.empty((256, env.num_envs, *space.shape), stored)
        self.count = 0
        self.seed: int | None = None
        self.statistics = statistics
        self._statistics_at_reset: dict | None = None

    @property
    def actions(self) -> np.ndarray:
        return self._actions[: self.count]

    def reset(self, *, seed=None, options=None):
        if seed is None or options:
            raise ValueError("training envs must be reset with a seed (and no options): a resumed "
                             "run rebuilds them from it")
        self.seed, self.count = int(seed), 0
        if self.statistics is not None:  # what a replay starts from
            self._statistics_at_reset = self.statistics.state_dict()
        return super().reset(seed=seed, options=options)

    def step(self, actions):
        if self.count == len(self._actions):
            self._actions = np.concatenate([self._actions, np.empty_like(self._actions)])
        self._actions[self.count] = actions
        self.count += 1
        return super().step(actions)

    def state_dict(self) -> dict:
        state = {"seed": self.seed, "actions": torch.from_numpy(self.actions.copy())}
        if self.statistics is not None:
            state["normalization"] = self._statistics_at_reset
        return state

    def replay(self, state: dict):
        """Reset with the recorded seed and step through the recorded actions; returns the last
        observation (the one the agent acts on next). The normalisation statistics restart from
        the reset's (checkpoints from before normalisation hold none: nothing to restore)."""
        if self.statistics is not None and "normalization" in state:
            self.statistics.load_state_dict(state["normalization"])
        obs, _ = self.reset(seed=state["seed"])
        for actions in state["actions"].numpy().astype(self._sent):
            obs, *_ = self.step(actions)
        return obs
