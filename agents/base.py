"""The agent seam: what every agent implements, and the registry the config's `agent:` choices and
sections derive from.

The runtime (agents/runtime/), the spectral monitor (analysis/monitor/), checkpoints and resume
use an agent through these names only. A new agent is one module:

    @register_agent("sac", config=SACConfig)      # SACConfig: the `sac:` section's dataclass
    class SAC(Agent):
        ...

and `agent: sac` in a config selects it (`agents/catalogue.py` imports the shipped ones).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import numpy as np
import torch

from agents.errors import ConfigError
from agents.learner import Learner
from agents.networks import Network

AGENTS: dict[str, type[Agent]] = {}


def register_agent(name: str, config: type):
    """Class decorator: the agent `name`, configured by the dataclass `config` (its section)."""
    def decorate(cls):
        if name in AGENTS and AGENTS[name] is not cls:
            raise ValueError(f"an agent named '{name}' is already registered ({AGENTS[name]})")
        cls.name, cls.Config = name, config
        AGENTS[name] = cls
        return cls
    return decorate


@dataclass(frozen=True)
class Episode:
    """One finished episode: the env step (summed over envs) at which it ended, its raw return
    and length (gymnasium's RecordEpisodeStatistics)."""

    step: int
    ret: Any  # numpy scalar, logged as is
    length: Any


def finished_episodes(info: dict, step: int) -> list[Episode]:
    """The episodes a vector step ended, from its `info` (none when it ended none)."""
    if "episode" not in info:
        return []
    done = info["_episode"]
    return [Episode(step, ret, length) for ret, length in
            zip(info["episode"]["r"][done], info["episode"]["l"][done])]


@dataclass
class Iteration:
    """What one training iteration returns: the runtime logs `stats` at the step the iteration
    ended on (tensors are read back once, there) and every finished episode at its own step."""

    stats: dict[str, Any]
    episodes: list[Episode] = field(default_factory=list)


class Agent:
    """The contract. Construction: `Agent(cfg, env, strategies, device)` with the run's config,
    the sequence's `envs.EnvInfo` (spaces, observation layout, reward transform, replay hint),
    the built `StrategyStack` and the torch device. `__init__` calls `build_learner` (which
    sets `learner`, the one update path, and `network`, an `agents.networks.Network`: the
    monitor and the strategies find its blocks and heads by name); `ctx` is `learner.ctx`;
    `last_batch` is None until the first training batch of each task."""

    name: ClassVar[str] = ""
    Config: ClassVar[type]
    network: Network  # the online network (block and head names: the monitor reads them)
    learner: Learner  # build_learner's: the one update path, the counters, the NaN flag
    last_batch: Optional[Any] = None

    @classmethod
    def check_config(cls, cfg) -> None:
        """Checks of the agent's section that need the rest of the config (ConfigError)."""

    @property
    def ctx(self):
        return self.learner.ctx

    def build_learner(self, cfg, spec, strategies, device) -> None:
        """`learner` and `network` from the spec and the agent's own section `cfg.<name>`
        (learning_rate, adam_eps, adam_betas, max_grad_norm); strategies draw observations
        through `sample_recent_obs`. Call `learner.setup()` once the agent is built."""
        section = cfg[self.name]
        self.learner = Learner(spec, strategies, dict(agent=self.name, seed=cfg.seed),
                               section.learning_rate, section.adam_eps, section.max_grad_norm,
                               device, cfg.compile, section.adam_betas, cfg.precision)
        self.network = self.learner.network
        self.ctx.sample_obs = self.sample_recent_obs

    def sample_recent_obs(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n observations of the current task (with replacement), for strategies that probe
        the network (ReDo, CBP, ...); by default from the last training batch."""
        if self.last_batch is None:
            raise RuntimeError("no training batch collected yet on this task")
        idx = torch.randint(len(self.last_batch), (n,), generator=generator)
        return self.last_batch.obs[idx.to(self.last_batch.obs.device)]

    def begin_task(self, envs, seed: int) -> None:
        """A task starts on `envs` (the runtime's, reset here with `seed`)."""
        raise NotImplementedError

    def train_iteration(self, envs, max_steps: int, generator: torch.Generator) -> Iteration:
        """Act and learn for at most `max_steps` env steps (summed over envs), moving
        `ctx.global_step`; `generator` is the run's own CPU RNG (minibatch order, ε draws)."""
        raise NotImplementedError

    def loss(self, batch, forward):
        """(loss, stats, outputs, features) of `batch` with `forward(obs) -> (outputs,
        features)`: the one loss definition that training and the monitor's curvature share.
        It calls `forward` once, on `batch.obs`: the monitor's Gauss-Newton and KFAC linearise
        around that one evaluation (and refuse a loss that evaluates other observations).
        A batch (`last_batch`, `probe_batch`'s) has `.obs`, `len()` and `index(indices)`, which
        the monitor subsamples with."""
        raise NotImplementedError

    def probe_batch(self, envs, num_steps: int, seed: int):
        """A fresh batch from `envs` (not the training ones) with the current policy, leaving
        training untouched: no counters moved, global RNGs as they were."""
        raise NotImplementedError

    def next_observation(self) -> torch.Tensor:
        """The observation the agent acts on next (what a resume's replayed envs must give)."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Tensors, numbers, strings and lists/dicts of them (checkpoints load weights_only),
        everything but the envs and the side files."""
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError

    def side_files(self) -> dict[str, Any]:
        """Large state saved in files of its own beside a checkpoint, by name (DQN: its replay
        buffer as "replay"); each value has state_dict() and load_state_dict(state)."""
        return {}

    def without_side_file(self, name: str, step: int) -> str:
        """A resume from a checkpoint saved without side file `name` (e.g. save_replay=false):
        adapt, and say in one line what the user gets instead of an exact continuation."""
        raise ConfigError(f"this checkpoint lacks its {name} file, which {self.name} needs")


def forked_rng(device: torch.device):
    """torch's global RNGs saved and restored around a block, the device's too on a GPU."""
    device = torch.device(device)
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def derive_seed(*keys: int) -> int:
    """An independent, reproducible seed for each tuple of integers (< 2**31: ale-py's vector
    env takes int32 seeds)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0] >> 1)
