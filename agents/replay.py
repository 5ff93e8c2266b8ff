"""DQN replay buffer that stores every frame once, with n-step returns.

Layout: each parallel env owns a ring of `capacity // num_envs` frame slots. Consecutive stacked
observations of one env share all but one frame, so a transition takes a single slot: the newest
frame of its next_obs, with its action, reward and flags. Its obs is the `frame_stack` frames
before that slot and its next_obs the `frame_stack` frames ending at it. Where that chain breaks (an
episode start, a task switch, any obs that is not the previous next_obs) the whole obs is first
written into `frame_stack` slots of its own, so the first stack of an episode (repeated or
zero-padded frames, whatever the env made) comes back exactly as given. A run of transitions that
share one chain is a *segment*; n-step windows never leave it. Non-stacked observations (MiniGrid
images, vectors) are `frame_stack=1`: a frame is then the whole obs, still stored once.
"""

from __future__ import annotations

import numpy as np
import torch

# Arrays with one entry per slot, then the per-env write state: together, the checkpoint state.
_SLOT_ARRAYS = ("frames", "actions", "rewards", "terminated", "segment_end", "is_transition")
_STATE = (*_SLOT_ARRAYS, "cursor", "filled")


class ReplayBuffer:
    """Uniform replay for `num_envs` parallel envs with discrete actions.

    `capacity` counts frame slots: a transition takes one, and the start of a segment takes
    `frame_stack` more (a few percent of an Atari buffer). Each env keeps its newest slots.
    """

    def __init__(self, capacity: int, obs_shape: tuple[int, ...], *, num_envs: int = 1,
                 frame_stack: int = 1, obs_dtype=np.uint8, n_step: int = 1, gamma: float = 0.99,
                 device: str | torch.device = "cpu"):
        self.obs_shape = tuple(obs_shape)
        if frame_stack > 1 and self.obs_shape[0] != frame_stack:
            raise ValueError(f"frame_stack={frame_stack} needs obs stacked on axis 0, "
                             f"got obs_shape {self.obs_shape}")
        self.num_envs, self.frame_stack, self.n_step = num_envs, frame_stack, n_step
        self.gamma, self.device = gamma, torch.device(device)
        self.slots = capacity // num_envs
        if self.slots < frame_stack + n_step:
            raise ValueError(f"capacity {capacity} leaves {self.slots} slots per env; "
                             f"need at least frame_stack + n_step = {frame_stack + n_step}")
        self._frame_shape = self.obs_shape[1:] if frame_stack > 1 else self.obs_shape
        per_slot = (num_envs, self.slots)
        self.frames = np.zeros((*per_slot, *self._frame_shape), obs_dtype)
        self.actions = np.zeros(per_slot, np.int64)
        self.rewards = np.zeros(per_slot, np.float32)
        self.terminated = np.zeros(per_slot, bool)
        self.segment_end = np.zeros(per_slot, bool)  # episode end, task switch or broken chain
        self.is_transition = np.zeros(per_slot, bool)  # False: a slot of a segment's first obs
        self.cursor = np.zeros(num_envs, np.int64)  # next slot to write, per env
        self.filled = np.zeros(num_envs, np.int64)  # slots written so far, at most self.slots

    @property
    def nbytes_per_transition(self) -> int:
        """Bytes allocated per slot, i.e. per transition (segment starts cost frame_stack more)."""
        return sum(getattr(self, name).nbytes for name in _SLOT_ARRAYS) // self.actions.size

    def add(self, obs, next_obs, actions, rewards, terminated, truncated) -> None:
        """Store one vector-env step; each argument has a leading num_envs axis.

        next_obs must be the true next observation: the final one where an episode ended, not the
        autoreset one, which comes back as the next call's obs.
        """
        envs = np.arange(self.num_envs)
        obs, next_obs = np.asarray(obs), np.asarray(next_obs)
        if not np.can_cast(obs.dtype, self.frames.dtype, "same_kind"):  # e.g. floats into uint8
            raise TypeError(f"{obs.dtype} observations for a {self.frames.dtype} buffer: "
                            "set obs_dtype")
        obs = obs.astype(self.frames.dtype, copy=False)
        obs_frames = obs.reshape(self.num_envs, self.frame_stack, *self._frame_shape)
        next_frames = next_obs.astype(self.frames.dtype, copy=False).reshape(obs_frames.shape)
        if not np.array_equal(next_frames[:, :-1], obs_frames[:, 1:]):
            raise ValueError("next_obs is not obs shifted by one frame on axis 0, so these are not "
                             "frame stacks: use frame_stack=1")
        newest = (self.cursor - 1) % self.slots
        same_obs = (self._stacks(envs, newest) == obs).reshape(self.num_envs, -1).all(axis=1)
        continues = (self.filled > 0) & ~self.segment_end[envs, newest] & same_obs

        starts = envs[~continues]
        # A chain broken without an episode end must still stop n-step windows. (On an empty ring
        # this marks a slot that is rewritten before it is ever read.)
        self.segment_end[starts, newest[starts]] = True
        first_slots = (self.cursor[starts, None] + np.arange(self.frame_stack)) % self.slots
        self.frames[starts[:, None], first_slots] = obs_frames[starts]
        self.is_transition[starts[:, None], first_slots] = False
        self._advance(starts, self.frame_stack)

        slot = self.cursor.copy()
        self.frames[envs, slot] = next_frames[:, -1]
        self.actions[envs, slot] = actions
        self.rewards[envs, slot] = rewards
        self.terminated[envs, slot] = terminated
        self.segment_end[envs, slot] = np.logical_or(terminated, truncated)
        self.is_transition[envs, slot] = True
        self._advance(envs, 1)

    def on_task_switch(self) -> None:
        """Call before the first add() on new envs: no frame stack or n-step window joins tasks,
        even where the new env's first obs happens to equal the old env's last one."""
        self.segment_end[np.arange(self.num_envs), (self.cursor - 1) % self.slots] = True

    def clear(self) -> None:
        """Forget every transition; the arrays stay allocated."""
        self.cursor[:] = 0
        self.filled[:] = 0

    def sample(self, batch_size: int, generator: np.random.Generator) -> dict[str, torch.Tensor]:
        """Uniform batch of sampleable transitions, drawn with `generator` only.

        Keys: obs, actions, rewards, next_obs, dones (terminated, not truncated) for the 1-step
        transition; returns, bootstrap_obs, discounts for the n-step target
        returns + discounts * max_a Q(bootstrap_obs, a), where discounts = gamma**k for the k
        steps used (fewer than n_step where the segment ends) and 0 after a termination.
        With n_step=1 they equal rewards, next_obs and gamma * (1 - dones).
        """
        env, slot = self._draw(batch_size, generator)
        steps = np.arange(self.n_step)
        window = (slot[:, None] + steps) % self.slots
        ends = self.segment_end[env[:, None], window]
        inside = np.ones_like(ends)  # step j counts if no earlier step ended the segment
        inside[:, 1:] = ~np.logical_or.accumulate(ends[:, :-1], axis=1)
        used = inside.sum(axis=1)
        returns = (inside * self.rewards[env[:, None], window] * self.gamma**steps).sum(axis=1)
        terminal = (inside & self.terminated[env[:, None], window]).any(axis=1)
        next_obs = self._stacks(env, slot)
        batch = {
            "obs": self._stacks(env, slot - 1),
            "actions": self.actions[env, slot],
            "rewards": self.rewards[env, slot],
            "next_obs": next_obs,
            "dones": self.terminated[env, slot].astype(np.float32),
            "returns": returns.astype(np.float32),
            "bootstrap_obs": next_obs if self.n_step == 1 else self._stacks(env, slot + used - 1),
            "discounts": np.where(terminal, 0.0, self.gamma**used).astype(np.float32),
        }
        return {key: torch.as_tensor(value, device=self.device) for key, value in batch.items()}

    def sample_obs(self, batch_size: int, generator: np.random.Generator) -> torch.Tensor:
        """The observations alone of `sample(batch_size, generator)`: the same draws, without
        building the rest of the batch (what strategies sampling recent observations need)."""
        env, slot = self._draw(batch_size, generator)
        return torch.as_tensor(self._stacks(env, slot - 1), device=self.device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors sharing memory with the buffer (a multi-GB ring is not copied). Tensors, unlike
        numpy arrays, load with torch.load(weights_only=True)."""
        return {name: torch.from_numpy(getattr(self, name)) for name in _STATE}

    def load_state_dict(self, state: dict) -> None:
        for name in _STATE:
            target, value = getattr(self, name), np.asarray(state[name])
            if value.shape != target.shape or value.dtype != target.dtype:
                raise ValueError(f"state['{name}'] is {value.dtype}{list(value.shape)}, "
                                 f"this buffer holds {target.dtype}{list(target.shape)}")
            target[...] = value

    def _advance(self, envs: np.ndarray, count: int) -> None:
        self.cursor[envs] = (self.cursor[envs] + count) % self.slots
        self.filled[envs] = np.minimum(self.filled[envs] + count, self.slots)

    def _stacks(self, env: np.ndarray, last_slot: np.ndarray) -> np.ndarray:
        """Observations made of the frame_stack frames ending at last_slot of each env."""
        slots = (last_slot[:, None] + np.arange(1 - self.frame_stack, 1)) % self.slots
        return self.frames[env[:, None], slots].reshape(len(env), *self.obs_shape)

    def _sampleable(self, env: np.ndarray, age: np.ndarray) -> np.ndarray:
        """Whether the transition `age` slots before the newest of `env` can be sampled: its obs
        frames are still in the ring and its n-step window is closed by later transitions or by a
        segment end (the newest n-1 transitions of a running segment must wait)."""
        slot = (self.cursor[env] - 1 - age) % self.slots
        ok = (age + self.frame_stack < self.filled[env]) & self.is_transition[env, slot]
        if self.n_step > 1:
            ahead = np.arange(self.n_step - 1)
            ends = self.segment_end[env[:, None], (slot[:, None] + ahead) % self.slots]
            ok &= (age >= self.n_step - 1) | (ends & (ahead <= age[:, None])).any(axis=1)
        return ok

    def _draw(self, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(env, slot) of a uniform batch. Rejection sampling over written slots: few are not
        sampleable (segment starts, the newest n-1 and oldest frame_stack per env), so one round
        of 4x candidates nearly always suffices; a nearly empty buffer falls back to enumerating."""
        if not self.filled.any():
            raise ValueError("the replay buffer is empty")
        span = self.num_envs * int(self.filled.max())
        age, env = np.divmod(rng.integers(span, size=4 * batch_size), self.num_envs)
        accepted = np.flatnonzero(self._sampleable(env, age))[:batch_size]
        if len(accepted) < batch_size:
            age, env = np.divmod(np.arange(span), self.num_envs)
            sampleable = np.flatnonzero(self._sampleable(env, age))
            if len(sampleable) == 0:
                raise ValueError("no transition can be sampled yet")
            accepted = rng.choice(sampleable, size=batch_size)
        env, age = env[accepted], age[accepted]
        return env, (self.cursor[env] - 1 - age) % self.slots
