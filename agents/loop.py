"""The training loop: one agent, one task sequence, events in a fixed order around every switch.

At a switch:  task_end(prev)  ->  strategies.on_task_switch(prev, next)  ->  env swap
              ->  task_start(next).
Listeners (the spectral monitor, ...) therefore see the old task's envs and batches at task_end
and the new task's envs, before any update on them, at task_start.
"""

from __future__ import annotations

import itertools
import random
import time

import numpy as np
import torch

from agents.dqn import DQN
from agents.plasticity.base import build_strategies
from agents.ppo import PPO
from envs.factory import EnvFactory
from envs.recorder import ActionRecorder
from envs.tasks import Segment, TaskSequence

AGENTS = {"ppo": PPO, "dqn": DQN}


class Listener:
    """Observes the loop; every hook is optional."""

    def on_task_start(self, trainer: Trainer, segment: Segment) -> None: ...

    def on_task_end(self, trainer: Trainer, segment: Segment) -> None: ...

    def after_iteration(self, trainer: Trainer) -> None: ...

    def on_run_end(self, trainer: Trainer) -> None: ...


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def segment_seed(seed: int, segment_index: int) -> int:
    """Independent, reproducible env seeds for every segment of the schedule (< 2**31: ale-py's
    vector env takes int32 seeds)."""
    return int(np.random.SeedSequence([seed, segment_index]).generate_state(1)[0] >> 1)


class Trainer:
    def __init__(self, cfg, listeners=()):
        """Builds and checks everything (envs, strategies, agent) before anything is written."""
        self.cfg = cfg
        self.listeners = list(listeners)
        self.logger = None
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        seed_everything(cfg.seed)
        self.device = torch.device(cfg.device)
        self.sequence = TaskSequence.from_config(cfg.sequence, cfg.seed)
        self.env_factory = EnvFactory(cfg.env, self.sequence)
        self.strategies = build_strategies(cfg.plasticity, cfg.agent)
        self.agent = AGENTS[cfg.agent](
            cfg, self.env_factory.observation_space, self.env_factory.action_space,
            self.strategies, self.device, self.env_factory.reward_transform(),
            self.sequence.total_steps)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.envs = None
        self.segment: Segment | None = None

    @property
    def ctx(self):
        return self.agent.ctx

    def _emit(self, hook: str, *args) -> None:
        for listener in self.listeners:
            getattr(listener, hook)(self, *args)

    def make_envs(self, segment: Segment) -> ActionRecorder:
        """The segment's vector env, its actions recorded (what a resume replays)."""
        return ActionRecorder(self.env_factory.make_vector(segment.task))

    def _start(self, segment: Segment) -> None:
        self.envs = self.make_envs(segment)
        self.agent.begin_task(self.envs, segment_seed(self.cfg.seed, segment.index))
        self.segment = segment
        self.ctx.task_index, self.ctx.task_name = segment.index, segment.task.name
        self.logger.start_task(
            f"task {segment.index + 1}/{len(self.sequence)} {segment.task.name}",
            segment.index, segment.start)
        self._emit("on_task_start", segment)

    def _switch(self, prev: Segment, nxt: Segment) -> None:
        self._emit("on_task_end", prev)
        self.strategies.on_task_switch(self.ctx, prev, nxt)
        self.envs.close()
        self._start(nxt)

    def run(self, logger, restore=None) -> None:
        """Train from ctx.global_step to the end: from the start, or from a checkpoint, where
        `restore(trainer, segment)` rebuilds the live segment's envs instead of starting it."""
        self.logger = logger
        start, first_step = time.perf_counter(), self.ctx.global_step
        first = self.sequence.segment_at(first_step).index
        prev = None
        for segment in itertools.islice(self.sequence, first, None):
            if prev is not None:
                self._switch(prev, segment)
            elif restore is not None:
                restore(self, segment)
            else:
                self._start(segment)
            while self.ctx.global_step < segment.end:
                self.agent.train_iteration(segment.end - self.ctx.global_step, self.logger,
                                           segment.task.name, self.generator)
                step = self.ctx.global_step
                self.logger.scalars({f"plasticity/{k}": v
                                     for k, v in self.strategies.metrics().items()}, step)
                self.logger.progress(step, self.logger.sps(step))
                self._emit("after_iteration")  # after all logging: a checkpoint may follow
            prev = segment
        self._emit("on_task_end", prev)
        self.envs.close()
        self._emit("on_run_end")
        self.logger.progress(self.ctx.global_step, int(
            (self.ctx.global_step - first_step) / (time.perf_counter() - start)), force=True)
