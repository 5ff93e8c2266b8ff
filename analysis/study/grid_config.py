"""A benchmark grid: one base experiment x strategy sets x sequences x seeds, one run per cell.

    name: my_study                     # default: the file's stem
    base: minigrid_ppo.yaml            # an experiment config (a path, or a name in configs/)
    seeds: [1, 2, 3]
    strategies:                        # named sets of plasticity strategies
      - {name: none}
      - {name: er_l2, plasticity: {er_l2: {}}}
    sequences:                         # optional: named settings of `sequence.*`
      short: {switch_every: 50000}
    overrides: [ppo.ent_coef=0.02]     # dotted overrides of the base config, for every cell
    reference: true                    # add the fresh-agent reference set (the default)

Each cell is the base config with the overrides, the sequence's settings and exactly the set's
strategies (the base config's own are switched off), labelled so that the tidy table of
`analysis.study.results` finds it: `strategy_set` = the set's name, `exp_name` = the sequence's
name; and for Weights & Biases (`logging.wandb`), group = the bench's name and job_type = the
set's name where the base config leaves them unset, the set's name added to the tags.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from agents.errors import ConfigError
from agents.runtime.config import (
    CONFIG_DIR,
    load_config,
    load_yaml_mapping,
    merge_config,
    resolve_config_path,
)
from analysis.study.aggregate import REFERENCE

BENCH_DIR = CONFIG_DIR / "benchmarks"
# a freshly initialised agent on every task: every layer reset at every switch
REFERENCE_PLASTICITY = {"reset": {"layers": ["all"], "at_switch": True}}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*$")  # names become directory names
GRID_KEYS = ("seed", "plasticity", "strategy_set", "exp_name", "run_dir", "runs_root")


@dataclass
class StrategySetConfig:
    name: str = MISSING
    plasticity: dict[str, Any] = field(default_factory=dict)  # as the config's `plasticity`


@dataclass
class BenchConfig:
    base: str = MISSING
    name: str = ""
    seeds: list[int] = field(default_factory=lambda: [1])
    strategies: list[StrategySetConfig] = field(default_factory=list)
    sequences: dict[str, dict[str, Any]] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    reference: bool = True
    cpus_per_run: float = 1.0  # resources of one run (torch gets as many threads)
    gpus_per_run: float = 0.0


@dataclass(frozen=True, eq=False)
class Cell:
    strategy_set: str
    sequence: str
    seed: int
    run_dir: Path
    cfg: DictConfig  # the run's resolved, validated experiment config

    @property
    def label(self) -> str:
        return f"{self.strategy_set}/{self.sequence}/s{self.seed}"


@dataclass(frozen=True)
class Bench:
    name: str
    root: Path  # OUT/<name>: the directory `pliable report` reads
    cells: list[Cell]
    cpus_per_run: float
    gpus_per_run: float


def load_bench(path: str | Path, out: str | Path = "runs/bench") -> Bench:
    """Read, validate and expand a benchmark config; ConfigError (one line) on bad input."""
    path = resolve_config_path(path, BENCH_DIR)
    bench = merge_config(OmegaConf.structured(BenchConfig), load_yaml_mapping(path), str(path),
                         schema=BenchConfig)
    name = bench.name or path.stem
    _check(bench, name, path)
    root = Path(out).resolve() / name
    try:
        cells = expand(bench, root)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return Bench(name, root, cells, bench.cpus_per_run, bench.gpus_per_run)


def strategy_sets(bench: DictConfig) -> dict[str, dict]:
    """Name -> plasticity mapping of every set in the grid, the reference last."""
    sets = {s.name: OmegaConf.to_container(s.plasticity) for s in bench.strategies}
    if bench.reference:
        sets[REFERENCE] = REFERENCE_PLASTICITY
    return sets


def expand(bench: DictConfig, root: Path) -> list[Cell]:
    """Every (strategy set, sequence, seed) cell, in that nesting order."""
    base = load_config(bench.base, list(bench.overrides))
    sequences = {key: OmegaConf.to_container(value) for key, value in bench.sequences.items()}
    sequences = sequences or {base.exp_name: {}}
    shared = list(bench.overrides)
    if base.torch_threads == 0:  # one run per slot: as many torch threads as its CPUs
        shared.insert(0, f"torch_threads={max(1, math.ceil(bench.cpus_per_run))}")
    switch_off = [f"plasticity.{key}=null" for key in base.plasticity]
    cells = []
    for set_name, plasticity in strategy_sets(bench).items():
        chosen = [f"plasticity.{key}={json.dumps(value)}" for key, value in plasticity.items()]
        try:  # the set alone first, so that its errors name it
            load_config(bench.base, [*shared, *switch_off, *chosen])
        except ConfigError as exc:
            hint = " (or set reference: false)" if set_name == REFERENCE else ""
            raise ConfigError(f"strategy set '{set_name}': {exc}{hint}") from None
        for sequence_name, settings in sequences.items():
            sequence = [f"sequence.{key}={json.dumps(value)}" for key, value in settings.items()]
            cfg = load_config(bench.base, [*shared, *sequence, *switch_off, *chosen])
            wandb = cfg.logging.wandb  # W&B: runs grouped by bench, typed by strategy set
            wandb_labels = {"group": wandb.group or root.name,
                            "job_type": wandb.job_type or set_name,
                            "tags": list(dict.fromkeys([*wandb.tags, set_name])),
                            "id": ""}  # each cell its own W&B run, whatever the base says
            for seed in bench.seeds:
                run_dir = root / set_name / sequence_name / f"s{seed}"
                labels = {"seed": seed, "strategy_set": set_name, "exp_name": sequence_name,
                          "run_dir": str(run_dir),  # a mapping: names are never parsed as YAML
                          "logging": {"wandb": wandb_labels}}
                cell_cfg = merge_config(cfg, OmegaConf.create(labels), str(run_dir))
                cells.append(Cell(set_name, sequence_name, seed, run_dir, cell_cfg))
    return cells


def _check(bench: DictConfig, name: str, path: Path) -> None:
    """What the schema cannot express; every message names the key."""

    def fail(message: str):
        raise ConfigError(f"{path}: {message}")

    if not NAME.match(name):
        fail(f"name '{name}' must be letters, digits and _.+=- (it names a directory)")
    if not bench.seeds or len(set(bench.seeds)) < len(bench.seeds):
        fail(f"seeds must be a non-empty list of distinct integers, got {list(bench.seeds)}")
    if not bench.strategies:
        fail("strategies is empty: list at least one set, e.g. [{name: none}]")
    set_names = [s.name for s in bench.strategies]
    for kind, names in (("strategies", set_names), ("sequences", list(bench.sequences))):
        for bad in (n for n in names if not NAME.match(n)):
            fail(f"{kind}: name '{bad}' must be letters, digits and _.+=- (it names a directory)")
        if len(set(names)) < len(names):
            fail(f"{kind}: names must be distinct, got {', '.join(names)}")
    if bench.reference and REFERENCE in set_names:
        fail(f"strategies: '{REFERENCE}' is the automatic fresh-agent reference; rename yours "
             "or set reference: false")
    for override in bench.overrides:
        key = override.split("=", 1)[0].strip().split(".", 1)[0]
        if key in GRID_KEYS:
            fail(f"overrides: '{override}' sets '{key}', which the grid sets per cell "
                 "(use seeds, strategies or sequences)")
    if bench.cpus_per_run <= 0 or bench.gpus_per_run < 0:
        fail(f"cpus_per_run must be > 0 and gpus_per_run >= 0, got {bench.cpus_per_run} and "
             f"{bench.gpus_per_run}")


def check_cells(cells: list[Cell]) -> None:
    """What training would reject at its start and loading a config does not check, before
    anything is written: every sequence's envs, once each (strategies: `expand`)."""
    from envs.factory import EnvFactory
    from envs.tasks import TaskSequence

    checked_sequences = set()
    for cell in cells:
        if cell.sequence not in checked_sequences:
            checked_sequences.add(cell.sequence)
            EnvFactory(cell.cfg.env, TaskSequence.from_config(cell.cfg.sequence, cell.seed))
