"""A resume rebuilds envs by replaying their recorded actions (envs/recorder.py): fresh envs end
in the same state, on MiniGrid and on both Atari backends (ale-py's C++ vector env, and gymnasium
wrappers around a mode or a permutation), and on MuJoCo with continuous actions and running
normalisation."""

import io

import numpy as np
import pytest
import torch
from gymnasium.wrappers.vector import NormalizeReward, RecordEpisodeStatistics

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


NORMALIZE = ["env.normalize_obs=true", "env.normalize_reward=true"]


def hopper_factory(*overrides) -> EnvFactory:
    cfg = load_config("tiny.yaml", ["sequence.tasks=[{env_id: Hopper-v5}, {env_id: Hopper-v5, "
                                    "physics: {friction: 0.5}}]", "env.num_envs=2", *overrides])
    return EnvFactory(cfg.env, TaskSequence.from_config(cfg.sequence, cfg.seed))


def wrapper(envs, kind):
    while not isinstance(envs, kind):
        envs = envs.env
    return envs


def gaussian_steps(envs, steps: int, rng) -> list:
    """Float32 actions as a Gaussian policy sends them, often outside the bounds (the env
    clips them); returns the last step's outputs."""
    for _ in range(steps):
        actions = rng.normal(0, 1.5, (envs.num_envs, 3)).astype(np.float32)
        out = envs.step(actions)
    return [actions, *out]


def saved_and_loaded(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)  # as a checkpoint is read


@pytest.mark.parametrize("normalize", [False, True])
def test_continuous_actions_and_normalisation_replay_bitwise(normalize):
    """The statistics a checkpoint holds are those at the live segment's reset (an earlier
    segment moved them); replaying its actions on a fresh run's envs brings back the envs, the
    statistics and the reward normaliser's discounted returns, bit for bit."""
    overrides = NORMALIZE if normalize else []
    factory = hopper_factory(*overrides)
    first, second = factory.sequence.tasks
    rng = np.random.default_rng(0)
    earlier = ActionRecorder(factory.make_vector(first, training=True), factory.statistics)
    earlier.reset(seed=1)
    gaussian_steps(earlier, 50, rng)
    earlier.close()
    envs = ActionRecorder(factory.make_vector(second, training=True), factory.statistics)
    envs.reset(seed=11)
    actions, obs, *_ = gaussian_steps(envs, 300, rng)
    record = saved_and_loaded(envs.state_dict())
    assert record["actions"].dtype == torch.float32 and tuple(record["actions"].shape) == (300,
                                                                                           2, 3)
    np.testing.assert_array_equal(record["actions"][-1].numpy(), actions)
    assert ("normalization" in record) == normalize
    resumed = hopper_factory(*overrides)  # a new process: statistics as a run starts them
    replayed = ActionRecorder(resumed.make_vector(second, training=True), resumed.statistics)
    np.testing.assert_array_equal(replayed.replay(record), obs)
    episodes = [wrapper(e, RecordEpisodeStatistics) for e in (envs, replayed)]
    assert episodes[0].episode_count == episodes[1].episode_count > 0
    assert list(episodes[0].return_queue) == list(episodes[1].return_queue)
    if normalize:
        for a, b in zip(factory.statistics.state_dict().values(),
                        resumed.statistics.state_dict().values(), strict=True):
            assert torch.equal(a["mean"], b["mean"]) and torch.equal(a["var"], b["var"])
            assert a["count"] == b["count"]
        np.testing.assert_array_equal(wrapper(envs, NormalizeReward).accumulated_reward,
                                      wrapper(replayed, NormalizeReward).accumulated_reward)
    for _ in range(20):  # and they go on identically
        step = rng.normal(0, 1.5, (2, 3)).astype(np.float32)
        for a, b in zip(envs.step(step)[:4], replayed.step(step)[:4], strict=True):
            np.testing.assert_array_equal(a, b)
    envs.close()
    replayed.close()


def test_a_checkpoint_from_before_normalisation_still_replays():
    """Its envs entry holds no statistics: the replay starts from a run's first ones."""
    factory = hopper_factory(*NORMALIZE)
    envs = ActionRecorder(factory.make_vector(factory.sequence.tasks[0], training=True),
                          factory.statistics)
    envs.reset(seed=4)
    _, obs, *_ = gaussian_steps(envs, 30, np.random.default_rng(1))
    record = {k: v for k, v in envs.state_dict().items() if k != "normalization"}
    resumed = hopper_factory(*NORMALIZE)
    replayed = ActionRecorder(resumed.make_vector(resumed.sequence.tasks[0], training=True),
                              resumed.statistics)
    np.testing.assert_array_equal(replayed.replay(record), obs)
    envs.close()
    replayed.close()
