"""The training loop: one agent, one task sequence, events in a fixed order around every switch.

At a switch:  task_end(prev)  ->  strategies.on_task_switch(prev, next)  ->  env swap
              ->  task_start(next).
Observers (the spectral monitor, ...) therefore see the old task at task_end and the new task,
before any update on it, at task_start. The trainer owns the training envs: it makes, hands to
the agent and closes them.
"""

from __future__ import annotations

import itertools
import random
import time

import numpy as np
import torch

from agents.base import derive_seed
from agents.catalogue import agent_class
from agents.errors import ConfigError, library_message
from agents.plasticity import build_strategies
from agents.run_view import Observer, RunView
from envs.factory import EnvFactory
from envs.recorder import ActionRecorder
from envs.tasks import Segment, TaskSequence


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def segment_seed(seed: int, segment_index: int) -> int:
    """Independent, reproducible env seeds for every segment of the schedule."""
    return derive_seed(seed, segment_index)


def usable_device(name: str, precision: str = "fp32") -> torch.device:
    """`name` as a torch device this machine can compute on at `precision`; otherwise (an
    unknown device type, CUDA on a machine without it, an index past the last GPU, bf16 on a GPU
    without it) one line with the reason."""
    try:
        device = torch.device(name)
        torch.zeros(1, device=device).cpu()  # allocates and copies back: the device really works
    except Exception as exc:
        raise ConfigError(f"device: '{name}' cannot be used on this machine: "
                          f"{library_message(exc)}") from None
    if (precision == "bf16" and device.type == "cuda"
            and not torch.cuda.is_bf16_supported(including_emulation=False)):
        raise ConfigError(f"precision: bf16 needs a GPU that computes in bf16 (Ampere or later); "
                          f"{torch.cuda.get_device_name(device)} does not: use precision=fp32")
    return device


class Trainer:
    def __init__(self, cfg, observers: list[Observer] = ()):
        """Builds and checks everything (envs, strategies, agent) before anything is written."""
        self.cfg = cfg
        self.observers = list(observers)
        self.logger = None
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        seed_everything(cfg.seed)
        self.device = usable_device(cfg.device, cfg.precision)
        self.sequence = TaskSequence.from_config(cfg.sequence, cfg.seed)
        self.env_factory = EnvFactory(cfg.env, self.sequence)
        self.strategies = build_strategies(cfg.plasticity)
        self.agent = agent_class(cfg.agent)(cfg, self.env_factory.info, self.strategies,
                                            self.device)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.envs: ActionRecorder | None = None
        self.view = RunView(self.agent, self.sequence, self.env_factory)

    @property
    def ctx(self):
        return self.agent.ctx

    @property
    def segment(self) -> Segment | None:
        return self.view.segment

    def _emit(self, hook: str, *args) -> None:
        for observer in self.observers:
            getattr(observer, hook)(self.view, *args)

    def make_envs(self, segment: Segment) -> ActionRecorder:
        """The segment's vector env, its actions recorded (what a resume replays); they update
        the run's normalisation statistics (env.normalize_*), which the recorder snapshots."""
        return ActionRecorder(self.env_factory.make_vector(segment.task, training=True),
                              self.env_factory.statistics)

    def enter(self, segment: Segment, envs: ActionRecorder) -> None:
        """`segment` is live on `envs`: the ones just started, or rebuilt by a resume (whose
        counters and console state come from the checkpoint)."""
        self.envs, self.view.segment = envs, segment

    def _start(self, segment: Segment) -> None:
        envs = self.make_envs(segment)
        self.agent.begin_task(envs, segment_seed(self.cfg.seed, segment.index))
        self.enter(segment, envs)
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

    def run(self, logger, run_dir, *, restore=None) -> None:
        """Train from ctx.global_step to the end, logging to `logger`, observers writing under
        `run_dir`: from the start, or from a checkpoint, where `restore(trainer, segment)`
        rebuilds the live segment's envs (and calls `enter`) instead of starting it."""
        self.logger = self.view.log = logger
        self.view.run_dir = run_dir
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
                iteration = self.agent.train_iteration(
                    self.envs, segment.end - self.ctx.global_step, self.generator)
                step = self.ctx.global_step
                self.logger.episodes(iteration.episodes, segment.task.name)
                self.logger.scalars(iteration.stats, step)
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
