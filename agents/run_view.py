"""The observer seam: what an observer of a run (the spectral monitor, a test's recorder) sees.

The runtime calls each observer's hooks with a `RunView`, never the trainer itself: observers read
the agent, the sequence and the live segment, build envs of their own through the env factory,
write under the run directory and log through the sink; the training envs, RNGs and counters are
the runtime's. Events, in order, around a switch (agents/runtime/trainer.py):

    on_task_end(prev)  ->  strategies' on_task_switch  ->  env swap  ->  on_task_start(next)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol, TextIO

from agents.base import Agent
from envs.factory import EnvFactory
from envs.tasks import Segment, TaskSequence


class LogSink(Protocol):
    """Where observers log: TensorBoard scalars (tensors read back once) and the SummaryWriter
    for histograms and figures, and the console."""

    writer: Any  # torch.utils.tensorboard.SummaryWriter
    stream: TextIO

    def scalars(self, values: dict, step: int) -> None: ...


@dataclass
class RunView:
    agent: Agent
    sequence: TaskSequence
    env_factory: EnvFactory
    run_dir: Optional[Path] = None  # set when the run starts (Trainer.run)
    log: Optional[LogSink] = None
    segment: Optional[Segment] = None  # the live one

    @property
    def ctx(self):
        """The agent's counters (global_step, update_count, ...): read, never write."""
        return self.agent.ctx


class Observer:
    """Observes a run; every hook is optional. An observer whose `state_dict` returns a dict is
    saved in checkpoints (under its class name) and given it back on resume."""

    def state_dict(self) -> Optional[dict]:
        return None  # nothing to save

    def load_state_dict(self, state: dict) -> None: ...

    def on_task_start(self, run: RunView, segment: Segment) -> None: ...

    def on_task_end(self, run: RunView, segment: Segment) -> None: ...

    def after_iteration(self, run: RunView) -> None: ...

    def on_run_end(self, run: RunView) -> None: ...
