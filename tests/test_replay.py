"""The replay buffer returns exactly what was stored, checked against a naive list."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from agents.replay import ReplayBuffer

ATARI = {"obs_shape": (4, 84, 84), "frame_stack": 4}
MINIGRID = {"obs_shape": (7, 7, 3), "frame_stack": 1}


class FakeVectorEnv:
    """A SAME_STEP-autoreset vector env whose frames all differ: frame i is filled with i mod 251
    and carries i in its first two bytes. Reset stacks are repeated, zero-padded or all-new
    frames."""

    def __init__(self, num_envs: int, obs_shape: tuple[int, ...], frame_stack: int, seed: int):
        self.num_envs, self.frame_stack = num_envs, frame_stack
        self.frame_shape = obs_shape[1:] if frame_stack > 1 else obs_shape
        self.rng = np.random.default_rng(seed)
        self.frames_made = 0
        self.reset()

    def _frame(self) -> np.ndarray:
        self.frames_made += 1
        frame = np.full(self.frame_shape, self.frames_made % 251, np.uint8)
        frame.flat[:2] = divmod(self.frames_made, 256)
        return frame

    def _first_obs(self) -> np.ndarray:
        if self.frame_stack == 1:
            return self._frame()
        padding = self.rng.integers(3)
        if padding == 0:
            return np.stack([self._frame()] * self.frame_stack)
        if padding == 1:
            zeros = [np.zeros(self.frame_shape, np.uint8)] * (self.frame_stack - 1)
            return np.stack([*zeros, self._frame()])
        return np.stack([self._frame() for _ in range(self.frame_stack)])

    def reset(self) -> np.ndarray:
        self.obs = np.stack([self._first_obs() for _ in range(self.num_envs)])
        return self.obs.copy()

    def step(self):
        """-> (true next obs, terminated, truncated, obs for the next step). Now and then an env's
        next obs is also replaced without an episode end (a chain the buffer must not stitch)."""
        new = np.stack([self._frame() for _ in range(self.num_envs)])
        if self.frame_stack > 1:
            next_obs = np.concatenate([self.obs[:, 1:], new[:, None]], axis=1)
        else:
            next_obs = new
        event = self.rng.random(self.num_envs)
        terminated, truncated, jumped = event < 0.05, (event >= 0.05) & (event < 0.09), event > 0.98
        self.obs = next_obs.copy()
        for env in np.flatnonzero(terminated | truncated | jumped):
            self.obs[env] = self._first_obs()
        return next_obs, terminated, truncated, self.obs.copy()


@dataclass
class Stored:
    obs: np.ndarray
    action: int
    reward: np.float32
    next_obs: np.ndarray
    terminated: bool
    truncated: bool
    switch_after: bool = False


def drive(buffer: ReplayBuffer, steps: int, switch_at: int, seed: int) -> list[list[Stored]]:
    """Feed the buffer from a FakeVectorEnv; return each env's stored transitions in order.
    Actions are unique ids, so a sampled row names the transition it came from."""
    env = FakeVectorEnv(buffer.num_envs, buffer.obs_shape, buffer.frame_stack, seed)
    rng = np.random.default_rng(seed + 1)
    history = [[] for _ in range(buffer.num_envs)]
    obs = env.obs.copy()
    for step in range(steps):
        if step == switch_at:
            buffer.on_task_switch()
            for transitions in history:
                transitions[-1].switch_after = True
            obs = env.reset()
        actions = step * buffer.num_envs + np.arange(buffer.num_envs)
        rewards = rng.normal(size=buffer.num_envs).astype(np.float32)
        next_obs, terminated, truncated, following = env.step()
        buffer.add(obs, next_obs, actions, rewards, terminated, truncated)
        for i, transitions in enumerate(history):
            transitions.append(Stored(obs[i], int(actions[i]), rewards[i], next_obs[i],
                                      bool(terminated[i]), bool(truncated[i])))
        obs = following
    return history


def expected_windows(history, frame_stack, slots, n_step) -> dict[int, list[Stored]]:
    """Naive model: id -> n-step window of every transition that should be sampleable."""
    expected = {}
    for transitions in history:
        # A segment ends at an episode end, a switch, or where the next obs is not this next_obs.
        ends = [t.terminated or t.truncated or t.switch_after
                or (i + 1 < len(transitions)
                    and not np.array_equal(transitions[i + 1].obs, t.next_obs))
                for i, t in enumerate(transitions)]
        # Slot accounting: one per transition, frame_stack more at each segment start.
        position, written = [], 0
        for i in range(len(transitions)):
            if i == 0 or ends[i - 1]:
                written += frame_stack
            position.append(written)
            written += 1
        for i, t in enumerate(transitions):
            if position[i] - frame_stack < written - slots:
                continue  # its obs frames were overwritten
            window = []
            for j in range(i, min(i + n_step, len(transitions))):
                window.append(transitions[j])
                if ends[j]:
                    break
            if len(window) == n_step or ends[i + len(window) - 1]:
                expected[t.action] = window
    return expected


def sample_all(buffer: ReplayBuffer, expected: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """30 draws per sampleable transition: with this fixed seed every one of them comes up."""
    batch = buffer.sample(30 * len(expected), np.random.default_rng(seed))
    return {key: value.numpy() for key, value in batch.items()}


@pytest.mark.parametrize("layout", [ATARI, MINIGRID], ids=["atari", "minigrid"])
@pytest.mark.parametrize("n_step", [1, 3])
@pytest.mark.parametrize("steps", [40, 140], ids=["filling", "wrapped"])
def test_returns_exactly_what_was_stored(layout, n_step, steps):
    gamma = 0.9
    buffer = ReplayBuffer(3 * 60, num_envs=3, n_step=n_step, gamma=gamma, **layout)
    history = drive(buffer, steps=steps, switch_at=steps // 2, seed=n_step)
    flags = [(t.terminated, t.truncated, t.switch_after) for ts in history for t in ts]
    assert all(any(f[k] for f in flags) for k in range(3)), "the stream must cover every end"
    assert (buffer.filled == buffer.slots).all() == (steps > 60), "the ring wraps, or not yet"
    expected = expected_windows(history, buffer.frame_stack, buffer.slots, n_step)

    batch = sample_all(buffer, expected)
    assert set(batch["actions"].tolist()) == set(expected), "every sampleable transition, no other"
    for row, action in enumerate(batch["actions"]):
        window = expected[action]
        first, last = window[0], window[-1]
        assert np.array_equal(batch["obs"][row], first.obs)
        assert np.array_equal(batch["next_obs"][row], first.next_obs)
        assert batch["rewards"][row] == first.reward
        assert batch["dones"][row] == first.terminated
        assert np.array_equal(batch["bootstrap_obs"][row], last.next_obs)
        n_step_return = sum(gamma**j * t.reward for j, t in enumerate(window))
        assert batch["returns"][row] == pytest.approx(n_step_return, rel=1e-5)
        discount = 0 if last.terminated else gamma ** len(window)
        assert batch["discounts"][row] == pytest.approx(discount)
    assert batch["obs"].dtype == np.uint8 and batch["actions"].dtype == np.int64


def test_n_step_targets_by_hand():
    """One env, vector obs [step, episode], rewards 1, 2, 4, ...: gamma=0.5 makes the sums plain.
    The switch before step 8 keeps the obs chain going, so only on_task_switch() can cut there."""
    buffer = ReplayBuffer(64, (2,), obs_dtype=np.float32, n_step=3, gamma=0.5)
    episode = 0
    for step in range(11):
        if step == 8:
            buffer.on_task_switch()
        terminated, truncated = step == 2, step == 4
        obs = np.array([[step, episode]], np.float32)
        next_obs = obs + [[1, 0]]
        if terminated or truncated:
            episode += 1
        buffer.add(obs, next_obs, [step], [2.0**step], [terminated], [truncated])

    batch = buffer.sample(400, np.random.default_rng(0))
    rows = {int(a): i for i, a in enumerate(batch["actions"])}
    # step: (return, discount, step whose next_obs is the bootstrap obs)
    hand = {0: (1 + 1 + 1, 0, 2), 1: (2 + 2, 0, 2), 2: (4, 0, 2),  # terminated at step 2
            3: (8 + 8, 0.25, 4), 4: (16, 0.5, 4),  # truncated at step 4: bootstrap from its end
            5: (32 + 32 + 32, 0.125, 7), 6: (64 + 64, 0.25, 7), 7: (128, 0.5, 7),  # task switch
            8: (256 + 256 + 256, 0.125, 10)}  # steps 9 and 10 wait for later transitions
    assert sorted(rows) == sorted(hand)
    for step, (ret, discount, bootstrap) in hand.items():
        row = rows[step]
        assert batch["returns"][row] == ret and batch["discounts"][row] == discount
        assert batch["bootstrap_obs"][row][0] == bootstrap + 1


def test_one_step_targets_are_the_transition():
    buffer = ReplayBuffer(3 * 60, num_envs=3, n_step=1, gamma=0.9, **ATARI)
    drive(buffer, steps=100, switch_at=50, seed=5)
    batch = buffer.sample(256, np.random.default_rng(0))
    assert torch.equal(batch["returns"], batch["rewards"])
    assert torch.equal(batch["bootstrap_obs"], batch["next_obs"])
    assert torch.allclose(batch["discounts"], 0.9 * (1 - batch["dones"]))


def test_one_frame_per_transition():
    buffer = ReplayBuffer(1000, num_envs=8, **ATARI)
    assert 84 * 84 <= buffer.nbytes_per_transition <= 84 * 84 + 16
    assert buffer.nbytes_per_transition <= 7.5 * 1000
    assert buffer.nbytes_per_transition * 1_000_000 < 8e9


def test_sampling_is_reproducible():
    buffer = ReplayBuffer(3 * 60, num_envs=3, n_step=3, **ATARI)
    drive(buffer, steps=100, switch_at=50, seed=7)
    first, again, other = (buffer.sample(64, np.random.default_rng(seed)) for seed in (1, 1, 2))
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first["actions"], other["actions"])
    # The observations alone: the same draws, the same stacks.
    assert torch.equal(buffer.sample_obs(64, np.random.default_rng(1)), first["obs"])


def test_checkpoint_round_trip():
    buffer = ReplayBuffer(3 * 60, num_envs=3, n_step=3, **ATARI)
    drive(buffer, steps=100, switch_at=50, seed=3)
    file = io.BytesIO()
    torch.save(buffer.state_dict(), file)
    file.seek(0)
    restored = ReplayBuffer(3 * 60, num_envs=3, n_step=3, **ATARI)
    restored.load_state_dict(torch.load(file, weights_only=True))
    for name, value in buffer.state_dict().items():
        assert torch.equal(restored.state_dict()[name], value)
    with pytest.raises(ValueError, match="frames"):
        ReplayBuffer(3 * 50, num_envs=3, n_step=3, **ATARI).load_state_dict(buffer.state_dict())


def test_sampling_needs_a_closed_window():
    buffer = ReplayBuffer(40, (3,), obs_dtype=np.float32, n_step=3)
    with pytest.raises(ValueError, match="empty"):
        buffer.sample(4, np.random.default_rng(0))
    obs = np.zeros((1, 3), np.float32)
    buffer.add(obs, obs + 1, [0], [1.0], [False], [False])
    buffer.add(obs + 1, obs + 2, [1], [1.0], [False], [False])
    with pytest.raises(ValueError, match="sampled yet"):
        buffer.sample(4, np.random.default_rng(0))
    buffer.add(obs + 2, obs + 3, [2], [1.0], [False], [True])  # the truncation closes all three
    assert set(buffer.sample(64, np.random.default_rng(0))["actions"].tolist()) == {0, 1, 2}
    buffer.clear()
    with pytest.raises(ValueError, match="empty"):
        buffer.sample(4, np.random.default_rng(0))


def test_rejects_observations_it_would_not_return_exactly():
    buffer = ReplayBuffer(100, num_envs=1, **ATARI)
    obs = np.arange(4 * 84 * 84, dtype=np.uint8).reshape(1, 4, 84, 84)
    with pytest.raises(ValueError, match="frame_stack=1"):
        buffer.add(obs, obs, [0], [0.0], [False], [False])
    vectors = np.full((1, 4, 1, 1), 0.5)
    with pytest.raises(TypeError, match="obs_dtype"):
        ReplayBuffer(100, (4, 1, 1), frame_stack=4).add(vectors, vectors, [0], [0.0], [0], [0])
