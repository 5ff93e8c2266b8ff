"""env.workers: envs stepped by the trainer and worker processes give SyncVectorEnv's steps,
resets and infos bit for bit; a worker's failure is one error in the trainer; the default picks
workers only for the Atari emulators."""

import io
import multiprocessing as mp
import os
import signal
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from agents.errors import ConfigError
from agents.runtime.config import load_config
from agents.runtime.launch import run_training
from analysis.study.compare import logged, run_differences
from envs import atari, families
from envs.config import EnvConfig
from envs.factory import EnvFactory
from envs.families import sync_vector_env
from envs.processes import ProcessVectorEnv, WorkerError, shares
from envs.tasks import TaskSequence, TaskSpec

BREAKOUT_MODE = TaskSpec("ALE/Breakout-v5", kwargs={"mode": 4})


def atari_maker(**env):
    # short episodes: every env ends (truncated) several times within the steps below
    cfg = OmegaConf.merge(OmegaConf.structured(EnvConfig),
                          {"backend": "gymnasium", "max_episode_frames": 100, **env})
    return lambda: atari.make_single(BREAKOUT_MODE, cfg, False)


def assert_same(a, b, where=""):
    """Observations, rewards, flags and infos (masks, final_obs arrays) equal, bit for bit."""
    if isinstance(a, tuple):  # a reset's or a step's results
        assert isinstance(b, tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, np.ndarray) and a.dtype == object:
        assert a.shape == b.shape, where
        for x, y in zip(a, b):
            assert (x is None and y is None) or np.array_equal(x, y), where
    else:
        assert np.asarray(a).dtype == np.asarray(b).dtype, where
        assert np.array_equal(a, b), where


@pytest.mark.parametrize("num_envs,processes", [(4, 2), (5, 3)])
def test_steps_resets_and_infos_equal_sync_vector_env_bit_for_bit(num_envs, processes):
    make = atari_maker()
    plain = sync_vector_env(make, num_envs)
    split = ProcessVectorEnv(make, num_envs, processes)
    try:
        assert split.single_observation_space == plain.single_observation_space
        assert split.action_space == plain.action_space
        assert split.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
        for seed in (7, list(range(100, 100 + num_envs))):
            assert_same(plain.reset(seed=seed), split.reset(seed=seed), "reset")
            rng, episode_ends = np.random.default_rng(0), 0
            for step in range(70):
                actions = rng.integers(0, 4, num_envs)
                expected, got = plain.step(actions), split.step(actions)
                assert_same(expected, got, f"step {step}")
                episode_ends += int(np.sum(expected[2] | expected[3]))
            assert episode_ends >= 2 * num_envs  # final_obs / final_info were compared too
    finally:
        plain.close()
        split.close()


def test_the_workers_are_other_processes_and_close_with_the_env():
    envs = ProcessVectorEnv(atari_maker(), 4, 2)
    envs.reset(seed=0)
    worker, = envs._workers
    assert list(worker.share) == [2, 3] and list(envs._own.indices) == [0, 1]
    assert worker.process.is_alive() and worker.process.pid != os.getpid()
    envs.close()
    assert not worker.process.is_alive()


def test_shares_split_the_envs_in_contiguous_near_equal_parts():
    assert shares(8, 2) == [range(0, 4), range(4, 8)]
    assert [len(s) for s in shares(10, 4)] == [2, 3, 2, 3]
    assert [i for s in shares(7, 3) for i in s] == list(range(7))


class FailingEnv(gym.Env):
    """Fails at its third step in a worker process (never in the trainer's)."""

    observation_space = gym.spaces.Box(0, 1, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.steps = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.steps += 1
        if self.steps == 3 and mp.parent_process() is not None:
            raise ValueError("the emulator broke")
        return np.zeros(2, np.float32), 0.0, False, False, {}


def test_an_env_failing_in_a_worker_raises_in_the_trainer_with_its_message():
    envs = ProcessVectorEnv(FailingEnv, 4, 2)
    envs.reset(seed=0)
    envs.step(np.zeros(4, int))
    envs.step(np.zeros(4, int))
    worker, = envs._workers
    with pytest.raises(WorkerError, match=r"ValueError: the emulator broke \(in the env worker "
                                          r"for envs 2-3\)"):
        envs.step(np.zeros(4, int))
    assert envs.closed and not worker.process.is_alive()


UNGUARDED_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
import gymnasium as gym
import numpy as np
from envs.processes import ProcessVectorEnv

class Counter(gym.Env):  # defined here, in __main__: it reaches the workers by value
    observation_space = gym.spaces.Box(0, 100, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)
    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.zeros(1, np.float32), {{}}
    def step(self, action):
        self.t += 1
        return np.full(1, self.t, np.float32), 0.0, False, False, {{}}

print("the script ran", flush=True)
envs = ProcessVectorEnv(Counter, 4, 2)
envs.reset(seed=0)
obs = envs.step(np.zeros(4, int))[0]
envs.close()
print("stepped", obs.ravel().tolist(), flush=True)
"""


def test_a_script_without_a_main_guard_runs_once_with_workers(tmp_path):
    """The workers do not import the user's __main__ again (multiprocessing's forkserver would,
    and the script would build envs inside each worker while it starts, and fail)."""
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED_SCRIPT.format(root=str(Path(__file__).resolve().parents[1])))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["the script ran", "stepped [1.0, 1.0, 1.0, 1.0]"]


def test_a_worker_killed_is_one_error_naming_it():
    envs = ProcessVectorEnv(atari_maker(), 4, 2)
    envs.reset(seed=0)
    worker, = envs._workers
    os.kill(worker.process.pid, signal.SIGKILL)
    worker.process.join()
    with pytest.raises(WorkerError, match=r"env worker process pliable-envs-2-3 died \(exit "
                                          r"code -9\)"):
        envs.step(np.zeros(4, int))
    assert envs.closed


def factory(tasks, **env):
    cfg = OmegaConf.merge(OmegaConf.structured(EnvConfig), env)
    return EnvFactory(cfg, TaskSequence(tasks, switch_every=100))


def test_by_default_only_the_atari_emulators_step_in_workers(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    modes = factory([BREAKOUT_MODE], backend="gymnasium")
    assert modes.family(BREAKOUT_MODE).workers(8) == 2
    assert modes.family(BREAKOUT_MODE).workers(7) == 1  # under 4 envs a worker
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert modes.family(BREAKOUT_MODE).workers(8) == 1  # one core: the trainer alone
    grid = TaskSpec("MiniGrid-Empty-6x6-v0")
    assert factory([grid]).family(grid).workers(16) == 1
    assert factory([grid], workers=3).family(grid).workers(16) == 3  # asked for: any family
    assert factory([grid], workers=3).family(grid).workers(2) == 2


def test_a_factory_with_workers_builds_them_and_gives_the_same_steps():
    grid = TaskSpec("MiniGrid-Empty-6x6-v0")
    one, two = factory([grid], workers=1), factory([grid], workers=2)
    plain, split = one.make_vector(grid, 4), two.make_vector(grid, 4)
    try:
        assert isinstance(split.unwrapped, ProcessVectorEnv)
        assert not isinstance(plain.unwrapped, ProcessVectorEnv)
        assert_same(plain.reset(seed=3), split.reset(seed=3))
        for step in range(40):
            actions = np.full(4, step % 3)
            assert_same(plain.step(actions), split.step(actions), f"step {step}")
    finally:
        plain.close()
        split.close()


def test_workers_below_one_is_a_config_error():
    with pytest.raises(ConfigError, match="env.workers"):
        load_config(None, ["env.workers=0"])


def test_a_ppo_run_on_modes_is_the_same_run_with_workers_as_without(tmp_path, monkeypatch):
    """Weights, optimizer, every logged scalar: the same with the envs in two processes."""
    built = []

    class Counted(ProcessVectorEnv):
        def __init__(self, *args, **kwargs):
            built.append(kwargs.get("processes"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(families, "ProcessVectorEnv", Counted)
    overrides = ["sequence.tasks=[{env_id: ALE/Breakout-v5, kwargs: {mode: 4}}]",
                 "sequence.switch_every=384", "sequence.cycles=1", "env.num_envs=4",
                 "env.max_episode_frames=200", "ppo.num_steps=32", "ppo.num_minibatches=2",
                 "ppo.update_epochs=1", "checkpoint.every=0", "print_every=100000"]
    run_dirs = []
    for workers in (1, 2):
        root = tmp_path / f"workers{workers}"
        cfg = load_config("configs/atari_modes_ppo.yaml",
                          [*overrides, f"env.workers={workers}", f"runs_root={root}"])
        assert run_training(cfg, stream=io.StringIO()) == 0
        run_dirs.append(next(root.glob("*/*")))
        assert built == ([] if workers == 1 else [2])  # the training envs, in two processes
    assert not run_differences(*run_dirs)
    assert sum(tag == "charts/episodic_return" for tag, _, _ in logged(run_dirs[0])) >= 4
