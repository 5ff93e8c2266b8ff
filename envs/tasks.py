"""Task sequences: which environment is live at every env step of a continual run."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from agents.errors import ConfigError
from envs.families import family_for


@dataclass(frozen=True)
class TaskSpec:
    env_id: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    permute_obs: Optional[int] = None
    permute_actions: Optional[int] = None

    def __post_init__(self):
        if not self.name:
            object.__setattr__(self, "name", default_task_name(self))


def default_task_name(task: TaskSpec) -> str:
    base = family_for(task.env_id).short_name(task.env_id)
    parts = [base] + [f"{k}{v}" for k, v in sorted(task.kwargs.items())]
    if task.permute_obs is not None:
        parts.append(f"pobs{task.permute_obs}")
    if task.permute_actions is not None:
        parts.append(f"pact{task.permute_actions}")
    return "_".join(str(p) for p in parts).replace("/", "_")


@dataclass(frozen=True)
class Segment:
    """One stretch of training on one task: [start, end) in env steps."""

    index: int  # position in the schedule (what charts/task_index logs)
    task: TaskSpec
    cycle: int
    start: int
    end: int


class TaskSequence:
    """Tasks in a fixed or seeded-shuffled order, each live for `switch_every` env steps."""

    def __init__(self, tasks: list[TaskSpec], switch_every: int, cycles: int = 1,
                 order: str = "fixed", seed: int = 0):
        if not tasks:
            raise ValueError("a task sequence needs at least one task")
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique, got {names}")
        self.tasks = list(tasks)
        self.switch_every = switch_every
        self.cycles = cycles
        self.order = order
        rng = np.random.default_rng(seed)
        self.schedule: list[int] = []
        for _ in range(cycles):
            ids = list(range(len(tasks)))
            if order == "shuffled":
                ids = [int(i) for i in rng.permutation(len(tasks))]
            self.schedule.extend(ids)

    @classmethod
    def from_config(cls, seq_cfg, seed: int) -> TaskSequence:
        tasks = [
            TaskSpec(env_id=t.env_id, kwargs=dict(t.kwargs), name=t.name or "",
                     permute_obs=t.permute_obs, permute_actions=t.permute_actions)
            for t in seq_cfg.tasks
        ]
        try:
            return cls(tasks, seq_cfg.switch_every, seq_cfg.cycles, seq_cfg.order, seed)
        except ValueError as exc:  # duplicate names: the config's tasks need a `name` each
            raise ConfigError(f"sequence.tasks: {exc}: give repeated envs a name of their "
                              "own") from None

    @property
    def total_steps(self) -> int:
        return self.switch_every * len(self.schedule)

    @property
    def switch_steps(self) -> list[int]:
        return [i * self.switch_every for i in range(1, len(self.schedule))]

    def segment(self, index: int) -> Segment:
        start = index * self.switch_every
        return Segment(index, self.tasks[self.schedule[index]], index // len(self.tasks),
                       start, start + self.switch_every)

    def segment_at(self, step: int) -> Segment:
        """The segment live at env step `step` (a switch step belongs to the new task)."""
        return self.segment(min(step // self.switch_every, len(self.schedule) - 1))

    def __iter__(self) -> Iterator[Segment]:
        return (self.segment(i) for i in range(len(self.schedule)))

    def __len__(self) -> int:
        return len(self.schedule)
