"""Task sequences: which environment is live at every env step of a continual run."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
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
    # MuJoCo physics (envs/mujoco.py): friction, mass_scale, gravity_scale
    physics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        if not self.name:
            object.__setattr__(self, "name", default_task_name(self))


def default_task_name(task: TaskSpec) -> str:
    base = family_for(task.env_id).short_name(task.env_id)
    parts = [base] + [f"{k}{v}" for k, v in sorted(task.kwargs.items())]
    parts += [f"{k}{short_number(v)}" for k, v in sorted(task.physics.items())]
    if task.permute_obs is not None:
        parts.append(f"pobs{task.permute_obs}")
    if task.permute_actions is not None:
        parts.append(f"pact{task.permute_actions}")
    return "_".join(str(p) for p in parts).replace("/", "_")


def short_number(value: float) -> str:
    """A physics value as task names show it: 0.5, 2, 0.02135 (4 significant digits)."""
    return f"{value:.4g}"


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
                     permute_obs=t.permute_obs, permute_actions=t.permute_actions,
                     physics=dict(t.physics))
            for t in seq_cfg.tasks
        ]
        if seq_cfg.vary:
            tasks = varied_tasks(tasks, seq_cfg.vary, seed)
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


# -- sequence.vary: one task per value of a physics key ----------------------------------------
VARY_DRAW_KEYS = ("log_uniform", "count", "seed")


def varied_tasks(tasks: list[TaskSpec], vary: Mapping, seed: int) -> list[TaskSpec]:
    """`sequence.vary` ({key: [values]} or {key: {log_uniform: [low, high], count, seed}}): the
    one task of `tasks` once per value, in order, its physics[key] set to the value. A repeated
    value's task is named with its occurrence (_2, _3): a sequence's names are unique."""
    if len(tasks) != 1:
        raise ConfigError(f"sequence.vary needs exactly one task in sequence.tasks (the base "
                          f"whose physics it varies), got {len(tasks)}")
    if len(vary) != 1:
        raise ConfigError(f"sequence.vary: vary one physics key, got {sorted(vary)}")
    (key, spec), = vary.items()
    values = vary_values(f"sequence.vary.{key}", spec, seed)
    base, seen, varied = tasks[0], {}, []
    named = base.name != default_task_name(base)  # a name of the config's: kept as the stem
    for value in values:
        task = replace(base, physics={**base.physics, key: value},
                       name=f"{base.name}_{key}{short_number(value)}" if named else "")
        seen[task.name] = seen.get(task.name, 0) + 1
        varied.append(task if seen[task.name] == 1
                      else replace(task, name=f"{task.name}_{seen[task.name]}"))
    return varied


def vary_values(where: str, spec, seed: int) -> list[float]:
    """The values a vary entry lists, or draws: log-uniform on [low, high], `count` of them, by
    numpy's default_rng(seed) (seed null: the run's)."""
    if isinstance(spec, Sequence) and not isinstance(spec, str):
        if not spec:
            raise ConfigError(f"{where}: list at least one value")
        for value in spec:
            if not is_number(value) or value <= 0:
                raise ConfigError(f"{where}: every value must be a number > 0, got {value} "
                                  f"(in {list(spec)})")
        return [float(v) for v in spec]
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: expected a list of values or "
                          f"{{log_uniform: [low, high], count: N, seed: null}}, got {spec}")
    unknown = sorted(set(spec) - set(VARY_DRAW_KEYS))
    if unknown or "log_uniform" not in spec or "count" not in spec:
        raise ConfigError(f"{where}: expected {{log_uniform: [low, high], count: N, seed: null}}"
                          f", got {dict(spec)}")
    bounds, count, draw_seed = spec["log_uniform"], spec["count"], spec.get("seed")
    if (isinstance(bounds, str) or not isinstance(bounds, Sequence) or len(bounds) != 2
            or not all(is_number(b) for b in bounds) or not 0 < bounds[0] <= bounds[1]):
        raise ConfigError(f"{where}.log_uniform must be [low, high] with 0 < low <= high, got "
                          f"{bounds if isinstance(bounds, str) else list(bounds)}")
    if not is_integer(count) or count < 1:
        raise ConfigError(f"{where}.count must be a positive integer, got {count}")
    if draw_seed is not None and (not is_integer(draw_seed) or draw_seed < 0):
        raise ConfigError(f"{where}.seed must be an integer >= 0 or null (the run's seed), "
                          f"got {draw_seed}")
    rng = np.random.default_rng(seed if draw_seed is None else draw_seed)
    logs = rng.uniform(np.log(bounds[0]), np.log(bounds[1]), size=count)
    return [float(v) for v in np.exp(logs)]


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
