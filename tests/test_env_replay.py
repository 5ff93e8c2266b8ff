"""A resume rebuilds envs by replaying their recorded actions (envs/recorder.py): fresh envs end
in the same state, on MiniGrid and on both Atari backends (ale-py's C++ vector env, and gymnasium
wrappers around a mode or a permutation)."""

import numpy as np
import pytest

from agents.runtime.config import load_config
from envs.factory import EnvFactory
from envs.recorder import ActionRecorder
from envs.tasks import TaskSequence

TASKS = {
    "minigrid": ("tiny.yaml", "[{env_id: MiniGrid-DoorKey-5x5-v0, permute_actions: 2}]", 2000),
    "ale_vector": ("atari_modes_ppo.yaml", "[{env_id: ALE/Breakout-v5}]", 400),
    "gymnasium": ("atari_modes_ppo.yaml", "[{env_id: ALE/Breakout-v5, kwargs: {mode: 4}}]", 400),
}


@pytest.mark.parametrize("name", TASKS)
def test_replayed_envs_reach_the_recorded_state(name):
    config, tasks, steps = TASKS[name]
    cfg = load_config(config, [f"sequence.tasks={tasks}", "env.num_envs=4"])
    sequence = TaskSequence.from_config(cfg.sequence, cfg.seed)
    factory = EnvFactory(cfg.env, sequence)
    envs = ActionRecorder(factory.make_vector(sequence.tasks[0]))
    obs, _ = envs.reset(seed=11)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        obs, *_ = envs.step(rng.integers(factory.action_space.n, size=4))
    record = envs.state_dict()
    assert record["seed"] == 11 and tuple(record["actions"].shape) == (steps, 4)
    replayed = ActionRecorder(factory.make_vector(sequence.tasks[0]))
    np.testing.assert_array_equal(replayed.replay(record), obs)
    original, copy = envs.env, replayed.env  # RecordEpisodeStatistics: episodes in progress
    assert original.episode_count == copy.episode_count > 0
    np.testing.assert_array_equal(original.episode_returns, copy.episode_returns)
    np.testing.assert_array_equal(original.episode_lengths, copy.episode_lengths)
    assert list(original.return_queue) == list(copy.return_queue)
    for _ in range(20):  # and they go on identically
        actions = rng.integers(factory.action_space.n, size=4)
        for a, b in zip(envs.step(actions)[:4], replayed.step(actions)[:4], strict=True):
            np.testing.assert_array_equal(a, b)
    envs.close()
    replayed.close()
