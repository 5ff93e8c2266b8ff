"""Read run directories into one tidy table: one row per logged scalar.

A run directory holds `config.yaml` (the resolved config), TensorBoard event files and optionally
`status.json`. `read_runs(root)` reads every run directory under `root` into one DataFrame with the
columns of `TIDY_COLUMNS`:

    run           run directory, relative to the root that was read (posix path)
    agent         config `agent` ("ppo", "dqn")
    strategy_set  sorted names under config `plasticity` joined by "+", "none" when empty
    seed          config `seed`
    sequence      config `exp_name`, or the task names joined by "+" when it is empty
    switch_every  config `sequence.switch_every` (env steps per task segment)
    task          name of the task being trained on at `step`
    task_index    position in the schedule (0, 1, 2, ... one per segment, across cycles)
    cycle         pass over the task list that `task_index` belongs to
    step          global step (env steps) the scalar was logged at
    metric        TensorBoard tag, e.g. "charts/episodic_return", "spectrum/post/lambda_max"
    value         the scalar

Schedule convention: segment k covers the steps [k * switch_every, (k + 1) * switch_every), so a
scalar logged exactly at a switch step belongs to the new task; that is where the spectral monitor
logs what it measured at that switch. Steps past the end of the schedule (the final log at
`switch_every * len(tasks) * cycles`) belong to the last segment.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tensorboard.backend.event_processing import event_accumulator

TIDY_COLUMNS = (
    "run", "agent", "strategy_set", "seed", "sequence", "switch_every",
    "task", "task_index", "cycle", "step", "metric", "value",
)
CONFIG_FILE = "config.yaml"
STATUS_FILE = "status.json"
EVENT_FILE_PREFIX = "events.out.tfevents."
TASK_RETURN_PATTERN = r"^task/(.+)/episodic_return$"


class RunReadError(Exception):
    """A run directory that cannot be read; `read_runs` skips it with a warning."""


@dataclass(frozen=True)
class RunInfo:
    """What the tidy table needs from a run's config and status file."""

    agent: str
    strategy_set: str
    seed: int
    sequence: str
    switch_every: int
    tasks: tuple[str, ...]  # one pass over the task list, in config order
    cycles: int
    shuffled: bool  # each cycle has its own order, so task names come from the logged tags
    status: str  # from status.json; "unknown" when it is missing or unreadable

    @property
    def num_segments(self) -> int:
        return len(self.tasks) * self.cycles


def read_run_info(run_dir: str | Path) -> RunInfo:
    """Parse `config.yaml` (and `status.json`) of one run; raises RunReadError when unusable."""
    run_dir = Path(run_dir)
    try:
        config = OmegaConf.to_container(OmegaConf.load(run_dir / CONFIG_FILE), resolve=True)
        sequence = config["sequence"]
        tasks = tuple(_task_name(task) for task in sequence["tasks"])
        info = RunInfo(
            agent=str(config["agent"]),
            strategy_set="+".join(sorted(config.get("plasticity") or {})) or "none",
            seed=int(config["seed"]),
            sequence=config.get("exp_name") or "+".join(tasks),
            switch_every=int(sequence["switch_every"]),
            tasks=tasks,
            cycles=int(sequence.get("cycles", 1)),
            shuffled=sequence.get("order", "fixed") == "shuffled",
            status=_read_status(run_dir),
        )
    except (OSError, KeyError, TypeError, ValueError, AttributeError,
            yaml.YAMLError, OmegaConfBaseException) as exc:
        raise RunReadError(f"{run_dir / CONFIG_FILE}: {type(exc).__name__}: {exc}") from exc
    if not info.tasks or info.switch_every <= 0 or info.cycles <= 0:
        raise RunReadError(f"{run_dir / CONFIG_FILE}: empty task schedule")
    return info


def _task_name(task: dict) -> str:
    """The task's configured name, else one built from what distinguishes it."""
    if task.get("name"):
        return str(task["name"])
    details = {**(task.get("kwargs") or {})}
    for key in ("permute_obs", "permute_actions"):
        if task.get(key) is not None:
            details[key] = task[key]
    suffix = ",".join(f"{key}={value}" for key, value in details.items())
    return f"{task['env_id']}[{suffix}]" if suffix else str(task["env_id"])


def _read_status(run_dir: Path) -> str:
    try:
        return str(json.loads((run_dir / STATUS_FILE).read_text())["status"])
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"  # absent, or being written right now


def read_scalars(run_dir: str | Path) -> pd.DataFrame:
    """Every scalar in the run dir's event files, as columns step, metric, value."""
    run_dir = Path(run_dir)
    if not any(path.name.startswith(EVENT_FILE_PREFIX) for path in run_dir.iterdir()):
        raise RunReadError(f"{run_dir}: no TensorBoard event files")
    accumulator = event_accumulator.EventAccumulator(
        str(run_dir),
        size_guidance={event_accumulator.SCALARS: 0},  # 0 = keep every event, no reservoir sampling
        purge_orphaned_data=False,  # a run dir is written once: never drop out-of-order steps
    )
    accumulator.Reload()
    frames = [
        pd.DataFrame(
            [(event.step, event.value) for event in accumulator.Scalars(tag)],
            columns=["step", "value"],
        ).assign(metric=tag)
        for tag in accumulator.Tags()[event_accumulator.SCALARS]
    ]
    if not frames:
        raise RunReadError(f"{run_dir}: event files hold no scalars (empty or corrupt)")
    scalars = pd.concat(frames, ignore_index=True)
    return scalars.astype({"step": "int64", "value": "float64"})[["step", "metric", "value"]]


def segment_schedule(info: RunInfo, scalars: pd.DataFrame) -> list[str | None]:
    """Task name of every segment of the schedule.

    Fixed order repeats the task list. A shuffled order is not in the config, so each segment
    takes the task whose `task/<name>/episodic_return` tag has most episodes in it (robust to an
    episode logged on the boundary); a segment without episodes stays unnamed (None).
    """
    if not info.shuffled:
        return list(info.tasks) * info.cycles
    episodes = pd.DataFrame({
        "segment": _task_index(scalars["step"], info),
        "task": scalars["metric"].str.extract(TASK_RETURN_PATTERN, expand=False),
    }).dropna()
    busiest = episodes.groupby("segment")["task"].agg(lambda tasks: tasks.value_counts().index[0])
    return [busiest.get(segment) for segment in range(info.num_segments)]


def _task_index(steps, info: RunInfo) -> np.ndarray:
    return np.minimum(np.asarray(steps) // info.switch_every, info.num_segments - 1)


def read_run(run_dir: str | Path, name: str | None = None) -> pd.DataFrame:
    """One run as a tidy table (see the module docstring); raises RunReadError when unusable."""
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    scalars = read_scalars(run_dir)
    task_index = _task_index(scalars["step"], info)
    schedule = np.array(segment_schedule(info, scalars), dtype=object)
    table = scalars.assign(
        run=name or run_dir.name,
        agent=info.agent,
        strategy_set=info.strategy_set,
        seed=info.seed,
        sequence=info.sequence,
        switch_every=info.switch_every,
        task=schedule[task_index],
        task_index=task_index,
        cycle=task_index // len(info.tasks),
    )
    return table[list(TIDY_COLUMNS)]


def find_run_dirs(root: str | Path) -> list[Path]:
    """Directories under `root` (itself included) that hold a config.yaml, sorted.

    A directory with event files but no config.yaml cannot be placed in a schedule, so it is
    reported with a warning instead.
    """
    run_dirs = []
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        if CONFIG_FILE in files:
            run_dirs.append(Path(directory))
            subdirs.clear()  # checkpoints and spectra live inside a run; no runs nest
        elif any(file.startswith(EVENT_FILE_PREFIX) for file in files):
            warnings.warn(f"skipping {directory}: event files but no {CONFIG_FILE}", stacklevel=2)
    return sorted(run_dirs)


def read_runs(root: str | Path, statuses: Collection[str] | None = None) -> pd.DataFrame:
    """Every run under `root` as one tidy table; unreadable runs are skipped with a warning.

    `statuses` keeps only runs whose status.json says one of them ("unknown" when absent), e.g.
    `("finished",)` so that a crashed run's truncated last task does not enter the scores.
    """
    root = Path(root)
    tables = []
    for run_dir in find_run_dirs(root):
        try:
            if statuses is not None and read_run_info(run_dir).status not in statuses:
                continue
            tables.append(read_run(run_dir, name=_run_name(run_dir, root)))
        except RunReadError as exc:
            warnings.warn(f"skipping run {run_dir}: {exc}", stacklevel=2)
    if not tables:
        return pd.DataFrame(columns=list(TIDY_COLUMNS))
    return pd.concat(tables, ignore_index=True)


def _run_name(run_dir: Path, root: Path) -> str:
    relative = run_dir.relative_to(root).as_posix()
    return run_dir.name if relative == "." else relative


def save_table(table: pd.DataFrame, path: str | Path) -> None:
    """Write the table as Parquet when the name ends in .parquet, else as CSV."""
    path = Path(path)
    if path.suffix == ".parquet":
        table.to_parquet(path, index=False)
    else:
        table.to_csv(path, index=False)


def load_table(path: str | Path) -> pd.DataFrame:
    """Read a table written by `save_table`."""
    path = Path(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path)
