"""Read run directories into one tidy table: one row per logged scalar.

A run directory holds `config.yaml` (the resolved config), TensorBoard event files and optionally
`status.json`. `read_runs(root)` reads every run directory under `root` into one DataFrame with the
columns of `TIDY_COLUMNS`:

    run           run directory, relative to the root that was read (posix path)
    agent         config `agent` ("ppo", "dqn")
    strategy_set  config `strategy_set` (a bench sets it to the grid's name for the set), else
                  the active strategies under `plasticity` joined by "+", "none" when none
    seed          config `seed`
    sequence      config `exp_name` (a bench sets it to the grid's sequence name), else the task
                  names joined by "+"
    switch_every  config `sequence.switch_every` (env steps per task segment)
    task          name of the task being trained on at `step` (envs.tasks.TaskSpec's name)
    task_index    position in the schedule (0, 1, 2, ... one per segment, across cycles)
    cycle         pass over the task list that `task_index` belongs to
    step          global step (env steps) the scalar was logged at
    metric        TensorBoard tag, e.g. "charts/episodic_return", "spectrum/post/lambda_max"
    value         the scalar

Schedule convention: segment k covers the steps [k * switch_every, (k + 1) * switch_every), so a
scalar logged exactly at a switch step belongs to the new task; that is where the spectral monitor
logs what it measured at that switch. Steps past the end of the schedule (the final log at
`switch_every * len(tasks) * cycles`) belong to the last segment. The schedule is rebuilt from the
config by `envs.tasks.TaskSequence`, exactly as the trainer built it (shuffled orders included).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tensorboard.backend.event_processing import event_accumulator

from agents.plasticity import strategy_set_name
from agents.runtime.config import SequenceConfig
from agents.runtime.run_dir import read_status
from envs.tasks import TaskSequence

TIDY_COLUMNS = (
    "run", "agent", "strategy_set", "seed", "sequence", "switch_every",
    "task", "task_index", "cycle", "step", "metric", "value",
)
CONFIG_FILE = "config.yaml"
EVENT_FILE_PREFIX = "events.out.tfevents."
SPECTRA_DIR = "spectra"
POST_SWITCH_FILE = re.compile(r"^switch_(\d+)_post\.npz$")
DENSITY_ARRAYS = ("density_nodes", "density_weights")  # analysis.monitor.outputs.save_npz's


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
    schedule: tuple[str, ...]  # task name of every segment, in training order
    tasks_per_cycle: int
    status: str  # from status.json; "unknown" when it is missing or unreadable

    @property
    def num_segments(self) -> int:
        return len(self.schedule)


def read_run_info(run_dir: str | Path) -> RunInfo:
    """Parse `config.yaml` (and `status.json`) of one run; raises RunReadError when unusable."""
    run_dir = Path(run_dir)
    try:
        config = OmegaConf.load(run_dir / CONFIG_FILE)
        # only the sequence is typed by the schema: the rest may predate today's keys
        sequence = TaskSequence.from_config(
            OmegaConf.merge(OmegaConf.structured(SequenceConfig), config.sequence),
            int(config.seed))
        tasks = [task.name for task in sequence.tasks]
        info = RunInfo(
            agent=str(config.agent),
            strategy_set=config.get("strategy_set") or strategy_set_name(config.get("plasticity")),
            seed=int(config.seed),
            sequence=config.get("exp_name") or "+".join(tasks),
            switch_every=int(sequence.switch_every),
            schedule=tuple(segment.task.name for segment in sequence),
            tasks_per_cycle=len(tasks),
            status=read_status(run_dir).get("status", "unknown"),
        )
    except (OSError, KeyError, TypeError, ValueError, AttributeError,
            yaml.YAMLError, OmegaConfBaseException) as exc:
        raise RunReadError(f"{run_dir / CONFIG_FILE}: {type(exc).__name__}: {exc}") from exc
    if not info.schedule or info.switch_every <= 0:
        raise RunReadError(f"{run_dir / CONFIG_FILE}: empty task schedule")
    return info


def read_scalars(run_dir: str | Path) -> pd.DataFrame:
    """Every scalar in the run dir's event files, as columns step, metric, value."""
    run_dir = Path(run_dir)
    if not any(path.name.startswith(EVENT_FILE_PREFIX) for path in run_dir.iterdir()):
        raise RunReadError(f"{run_dir}: no TensorBoard event files")
    accumulator = event_accumulator.EventAccumulator(
        str(run_dir),
        size_guidance={event_accumulator.SCALARS: 0},  # 0 = keep every event, no reservoir sampling
        # Drops only what a resumed run's SessionLog.START (SummaryWriter purge_step) hides: the
        # events a stopped process logged after its last checkpoint, logged again on resume.
        purge_orphaned_data=True,
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


def read_run(run_dir: str | Path, name: str | None = None,
             info: RunInfo | None = None) -> pd.DataFrame:
    """One run as a tidy table (see the module docstring); raises RunReadError when unusable.
    `info`: the run's `read_run_info`, when the caller has it already."""
    run_dir = Path(run_dir)
    info = info or read_run_info(run_dir)
    scalars = read_scalars(run_dir)
    # as TaskSequence.segment_at: a switch step starts the new task; the end stays in the last
    task_index = np.minimum(scalars["step"].to_numpy() // info.switch_every, info.num_segments - 1)
    table = scalars.assign(
        run=name or run_dir.name,
        agent=info.agent,
        strategy_set=info.strategy_set,
        seed=info.seed,
        sequence=info.sequence,
        switch_every=info.switch_every,
        task=np.array(info.schedule, dtype=object)[task_index],
        task_index=task_index,
        cycle=task_index // info.tasks_per_cycle,
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
    return read_runs_by_status(root, statuses)[0]


def read_runs_by_status(root: str | Path, statuses: Collection[str] | None = None,
                        progress: Callable[[list[Path]], Iterable[Path]] = iter
                        ) -> tuple[pd.DataFrame, dict[str, str]]:
    """`read_runs`, and the status of each readable run it left out for its status, by run
    name: what a report lists as not finished, without reading any config again. `progress`
    wraps the list of run directories, e.g. in a progress bar."""
    root = Path(root)
    tables, left_out = [], {}
    for run_dir in progress(find_run_dirs(root)):
        name = _run_name(run_dir, root)
        try:
            info = read_run_info(run_dir)
            if statuses is not None and info.status not in statuses:
                left_out[name] = info.status
                continue
            tables.append(read_run(run_dir, name=name, info=info))
        except RunReadError as exc:
            warnings.warn(f"skipping run {run_dir}: {exc}", stacklevel=2)
    if not tables:
        return pd.DataFrame(columns=list(TIDY_COLUMNS)), left_out
    return pd.concat(tables, ignore_index=True), left_out


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


def read_switch_densities(run_dir: str | Path) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """The Hessian densities the spectral monitor saved after each switch, in switch order:
    (switch number from `spectra/switch_###_post.npz`, nodes, weights).

    The arrays are the 1-D `DENSITY_ARRAYS` the monitor saves, the weights summing to 1. A file
    without them, with arrays of another shape, or unreadable, is skipped with a warning.
    """
    densities = []
    for path in sorted(Path(run_dir, SPECTRA_DIR).glob("switch_*_post.npz")):
        match = POST_SWITCH_FILE.match(path.name)
        if not match:
            continue
        try:
            with np.load(path) as arrays:
                nodes, weights = (np.asarray(arrays[name], dtype=float) for name in DENSITY_ARRAYS)
        except (OSError, ValueError, KeyError) as exc:
            warnings.warn(f"skipping density {path}: {exc}", stacklevel=2)
            continue
        if nodes.ndim != 1 or nodes.shape != weights.shape or not nodes.size:
            warnings.warn(f"skipping density {path}: nodes and weights are not two 1-D arrays "
                          "of one length", stacklevel=2)
            continue
        densities.append((int(match.group(1)), nodes, weights))
    return densities
