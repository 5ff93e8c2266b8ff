"""Env families are a seam: a new one is one module (here, this test module) registering a family
with its own checks and observation layout, and the runtime trains, stops and resumes it exactly
as it does MiniGrid, without another line changed. And the built-in families say what agents need
(layout, reward transform, replay frame stacks) as the networks and replay buffer once guessed."""

import contextlib
import io
import os
import signal

import gymnasium as gym
import numpy as np
import pytest
from omegaconf import OmegaConf
from test_resume import MONITOR, assert_same_run

from agents.errors import ConfigError
from agents.runtime.run_dir import read_status
from agents.runtime.trainer import Trainer
from envs import atari, minigrid
from envs.config import EnvConfig
from envs.factory import EnvFactory
from envs.families import (
    EnvFamily,
    family_for,
    plain_layout,
    register_env_family,
    unregister_env_family,
)
from envs.info import ObservationLayout
from envs.tasks import TaskSequence, TaskSpec
from envs.wrappers import apply_shifts


class Walk(gym.Env):
    """A corridor: from a seeded cell, walk right to its end (reward 1) within LIMIT steps.
    Observes (cell, steps left) as small integers; deterministic given its seed and actions."""

    LIMIT = 12
    observation_space = gym.spaces.Box(0, LIMIT, (2,), np.uint8)
    action_space = gym.spaces.Discrete(3)  # left, stay, right
    interrupt_after: int | None = None  # env steps until a SIGINT to this process (as Ctrl-C)

    def __init__(self, length: int = 5):
        self.length = length

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.cell, self.left = int(self.np_random.integers(0, self.length - 1)), self.LIMIT
        return self._obs(), {}

    def step(self, action):
        self._count_down_to_interrupt()
        self.cell = min(max(self.cell + int(action) - 1, 0), self.length)
        self.left -= 1
        arrived = self.cell == self.length
        return self._obs(), float(arrived), arrived, self.left == 0, {}

    def _obs(self):
        return np.array([self.cell, self.left], np.uint8)

    @classmethod
    def _count_down_to_interrupt(cls):
        if cls.interrupt_after is not None:
            cls.interrupt_after -= 1
            if cls.interrupt_after == 0:
                cls.interrupt_after = None
                os.kill(os.getpid(), signal.SIGINT)


gym.register("Toy/Walk-v0", entry_point=Walk)
gym.register("PlainWalk-v0", entry_point=Walk)  # no family's prefix: gymnasium's


class ToyFamily(EnvFamily):
    """The whole family: its checks, its envs, its layout (the rest: EnvFamily's defaults)."""

    observation_layout = ObservationLayout(image=False, arch="mlp", input_scale=1 / Walk.LIMIT)

    def check(self, task):
        if set(task.kwargs) - {"length"}:
            raise ConfigError(f"task '{task.name}': Toy envs take only a length")

    def make_single(self, task):
        return apply_shifts(gym.make(task.env_id, **task.kwargs), task)


@pytest.fixture(scope="module")
def toy_family():
    """Registered for this module's tests only: unknown-env errors elsewhere list no Toy/*."""
    register_env_family("toy", prefixes=("Toy/",))(ToyFamily)
    yield ToyFamily
    unregister_env_family("toy")


TOY_TASKS = ("sequence.tasks=[{env_id: Toy/Walk-v0}, {env_id: Toy/Walk-v0, kwargs: {length: 4}},"
             " {env_id: Toy/Walk-v0, name: Walk_mirrored, permute_actions: 1}]")
TOY_RUN = ("tiny.yaml", TOY_TASKS, "sequence.switch_every=512", "ppo.num_steps=32",
           "torch_threads=1", "checkpoint.every=256", "print_every=1000", *MONITOR)


def cli(*argv) -> int:
    import train

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return train.cli(["train", *argv])


def factory(config: dict, *tasks: TaskSpec) -> EnvFactory:
    env_cfg = OmegaConf.merge(OmegaConf.structured(EnvConfig), config)
    return EnvFactory(env_cfg, TaskSequence(list(tasks), 8))


BREAKOUT, PONG = TaskSpec("ALE/Breakout-v5"), TaskSpec("ALE/Pong-v5")
EMPTY = TaskSpec("MiniGrid-Empty-5x5-v0")


def test_a_new_family_trains_stops_and_resumes_exactly(toy_family, tmp_path, monkeypatch):
    assert cli(*TOY_RUN, f"run_dir={tmp_path / 'reference'}") == 0
    # Single-env steps, training's and the monitor's fresh batches: inside the second task.
    monkeypatch.setattr(Walk, "interrupt_after", 900)
    assert cli(*TOY_RUN, f"run_dir={tmp_path / 'run'}") == 130
    status = read_status(tmp_path / "run")
    assert status["status"] == "interrupted" and 512 < status["step"] < 1024
    assert "/step_" in status["checkpoint"]  # mid-segment
    assert cli("--resume", str(tmp_path / "run")) == 0
    assert_same_run(tmp_path / "run", tmp_path / "reference")
    assert sorted(p.name for p in (tmp_path / "run" / "spectra").iterdir()) == sorted(
        p.name for p in (tmp_path / "reference" / "spectra").iterdir())


def test_the_family_claims_its_prefix_and_says_what_agents_know(toy_family, tiny_cfg):
    assert family_for("Toy/Walk-v0") is ToyFamily and family_for("CartPole-v1").name == "gymnasium"
    sequence = TaskSequence([TaskSpec("Toy/Walk-v0"), TaskSpec("Toy/Walk-v0", {"length": 3})], 8)
    assert [t.name for t in sequence.tasks] == ["Walk-v0", "Walk-v0_length3"]
    info = EnvFactory(OmegaConf.structured(EnvConfig), sequence).info
    assert info.layout == ToyFamily.observation_layout and info.action_space.n == 3
    assert info.reward_transform is None and info.replay_frame_stack == 1
    for agent in ("ppo", "dqn"):  # the layout reaches the agents' networks
        spec = Trainer(tiny_cfg(TOY_TASKS, f"agent={agent}")).agent.network.spec
        assert spec.input_scale == 1 / Walk.LIMIT and {b.kind for b in spec.blocks} == {"linear"}
    with pytest.raises(ConfigError, match="Toy envs take only a length"):
        factory({}, TaskSpec("Toy/Walk-v0", {"size": 3}))
    with pytest.raises(ConfigError, match=r"\(MiniGrid-\*, ALE/\*, Toy/\* or a gymnasium id\)"):
        factory({}, TaskSpec("Nope-v0"))


def test_unregistered_the_prefix_falls_back_to_gymnasium(toy_family):
    unregister_env_family("toy")
    try:
        assert family_for("Toy/Walk-v0").name == "gymnasium"
        with pytest.raises(ValueError, match="already registered as .*atari"):
            register_env_family("toy2", prefixes=("ALE/",))(type("Toy2", (EnvFamily,), {}))
    finally:
        register_env_family("toy", prefixes=("Toy/",))(ToyFamily)


def test_atari_sequences_clip_rewards_and_share_frame_stacks():
    info = factory({}, BREAKOUT, PONG).info
    assert info.layout == atari.LAYOUT and info.reward_transform is np.sign
    assert info.replay_frame_stack == 4 and info.action_space.n == 18  # games differ: all 18
    assert factory({"clip_rewards": False}, BREAKOUT).info.reward_transform is None
    assert factory({"frame_stack": 2}, BREAKOUT).info.replay_frame_stack == 2
    permuted = TaskSpec("ALE/Breakout-v5", permute_obs=0, name="permuted")
    assert factory({}, BREAKOUT, permuted).info.replay_frame_stack == 1  # a permuted stack isn't


def test_minigrid_and_gymnasium_layouts():
    info = factory({}, EMPTY).info
    assert info.layout == minigrid.LAYOUT and info.reward_transform is None
    assert info.replay_frame_stack == 1
    cartpole = factory({}, TaskSpec("CartPole-v1")).info.layout
    assert cartpole == ObservationLayout(image=False, arch="mlp", input_scale=1.0)
    # a 3-D observation of gymnasium's own: read as networks always read one (a CHW stack),
    # wrong for an HWC image env such as CarRacing, which needs a family of its own
    frames = family_for("CarRacing-v3").layout(gym.spaces.Box(0, 255, (96, 96, 3), np.uint8))
    assert frames == atari.LAYOUT


def test_mixed_families_need_the_same_layout(toy_family):
    with pytest.raises(ConfigError, match="lay out their observations differently"):
        factory({}, TaskSpec("Toy/Walk-v0"), TaskSpec("PlainWalk-v0"))


@pytest.mark.parametrize("space, layout", [
    (gym.spaces.Box(0, 10, (10, 10, 3), np.uint8), minigrid.LAYOUT),
    (gym.spaces.Box(0, 255, (4, 84, 84), np.uint8), atari.LAYOUT),
    (gym.spaces.Box(-1, 1, (6,), np.float32), ObservationLayout(arch="mlp", input_scale=1.0)),
    (gym.spaces.Box(0, 255, (6,), np.uint8), ObservationLayout(arch="mlp", input_scale=1 / 255)),
])
def test_a_bare_space_is_read_as_networks_always_read_it(space, layout):
    """gymnasium's own envs (the fallback family) keep the reading networks had before families
    declared layouts, so that no config's numbers change."""
    assert plain_layout(space) == layout
