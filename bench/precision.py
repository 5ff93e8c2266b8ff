"""Learning under `precision: bf16` against fp32: the same runs, side by side, returns with CIs.

    .venv/bin/python bench/precision.py                       # both runs below, 3 seeds (~37 min)
    .venv/bin/python bench/precision.py --runs minigrid --seeds 5
    .venv/bin/python bench/precision.py --breakout-steps 50000 --jobs 1

bf16 autocast changes the round-off of every gradient step's forward pass (agents/learner.py);
this checks that it leaves learning as it was. Two runs, each trained at both precisions for
seeds 1..`--seeds` (3), every run a `train.py` process, `--jobs` (2) at a time with one torch
thread each (this is about returns, not speed: bench/throughput.py times bf16):

- `minigrid`: the default run (configs/minigrid_ppo.yaml: three MiniGrid tasks, twice around,
  600k steps), spectral monitor and checkpoints off (the monitor observes, it never changes
  training);
- `breakout`: PPO on Breakout (configs/atari_modes_ppo.yaml's hyperparameters, the ale_vector
  backend) for `--breakout-steps` (100,000) env steps.

For every run and precision it prints the study's scores (analysis.study.aggregate.task_scores:
the area under the learning curve, AUC, and the mean return over the last quarter of each task,
averaged over tasks) as the mean over seeds with a 95% percentile bootstrap CI, and whether the
fp32 and bf16 CIs overlap, each score (the issue's bar: they do).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agents.errors import ConfigError  # noqa: E402
from agents.runtime.config import load_config  # noqa: E402
from analysis.study.aggregate import bootstrap_interval, task_scores  # noqa: E402
from analysis.study.results import read_run  # noqa: E402
from bench.first_task_defaults import FINAL_WINDOW, add_run_options, fail, train  # noqa: E402

PRECISIONS = ("fp32", "bf16")
QUIET = ["monitor.enabled=false", "checkpoint.every=0", "checkpoint.at_switch=false",
         "print_every=1e9", "torch_threads=1"]
SCORES = {"auc": "AUC", "final_return": "final"}


def run_overrides(name: str, args) -> tuple[str, list[str]]:
    """(config, overrides) of one of the bench's runs."""
    if name == "minigrid":
        return "minigrid_ppo.yaml", []
    return "atari_modes_ppo.yaml", ["sequence.tasks=[{env_id: ALE/Breakout-v5}]",
                                    f"sequence.switch_every={args.breakout_steps}",
                                    "sequence.cycles=1"]


def write_config(name: str, precision: str, args, directory: Path) -> Path:
    config, overrides = run_overrides(name, args)
    cfg = load_config(config, [*overrides, *QUIET, f"precision={precision}", *args.set])
    cfg.strategy_set = precision
    path = directory / f"{name}_{precision}.yaml"
    path.write_text(yaml.safe_dump(OmegaConf.to_container(cfg, resolve=True)))
    return path


def run_scores(run_dir: Path) -> dict[str, float]:
    """The run's AUC and final-quarter return, each averaged over its tasks (segments)."""
    table = task_scores(read_run(run_dir), window=FINAL_WINDOW)
    return {score: float(table[score].mean()) for score in SCORES}


def mean_ci(values: np.ndarray) -> tuple[float, float, float]:
    """The mean over seeds and its 95% percentile bootstrap CI (seeds resampled)."""
    low, high = bootstrap_interval(lambda m: m.mean(axis=(1, 2)), [values[:, None]])
    return float(values.mean()), float(low), float(high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--runs", nargs="+", choices=("minigrid", "breakout"),
                        default=["minigrid", "breakout"])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 1..N per precision (3)")
    parser.add_argument("--breakout-steps", type=int, default=100_000,
                        help="env steps of the Breakout run (100000)")
    add_run_options(parser, "config overrides for every run")
    args = parser.parse_args()
    if args.seeds < 2:
        fail("--seeds must be at least 2 (a CI over seeds)")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        try:
            configs = {(name, p): write_config(name, p, args, out)
                       for name in args.runs for p in PRECISIONS}
        except ConfigError as exc:  # a bad --set: the config loader's one line
            fail(str(exc))
        print(f"{', '.join(args.runs)} at {' and '.join(PRECISIONS)}, seeds 1..{args.seeds}, "
              f"{args.jobs} at a time; runs in {out}", flush=True)
        done: dict[tuple[str, str], dict[int, dict]] = {key: {} for key in configs}
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            # seeds outermost: fp32 and bf16 of a seed run side by side, under the same load
            futures = {pool.submit(train, configs[key], seed, out / f"{key[0]}_{key[1]}"
                                   / f"s{seed}"): (key, seed)
                       for seed in range(1, args.seeds + 1) for key in configs}
            for n, future in enumerate(concurrent.futures.as_completed(futures), 1):
                key, seed = futures[future]
                run_dir, seconds, error = future.result()
                if error:
                    fail(f"{key[0]} {key[1]} seed {seed}: {error}")
                done[key][seed] = run_scores(run_dir)
                print(f"  [{n:2d}/{len(futures)}] {key[0]} {key[1]} seed {seed}: "
                      f"{seconds:.0f} s", flush=True)
    report(args.runs, done, time.perf_counter() - started)


def report(runs, done, seconds: float) -> None:
    print("\nmean over seeds [95% bootstrap CI]; AUC: time-average of the return curve, final: "
          "mean return over the last quarter, each averaged over the run's tasks")
    verdicts = []
    for name in runs:
        print(f"{name}:")
        cis = {}
        for precision in PRECISIONS:
            seeds = done[(name, precision)]
            cells = []
            for score, label in SCORES.items():
                cis[precision, score] = mean_ci(np.array([seeds[s][score] for s in sorted(seeds)]))
                mean, low, high = cis[precision, score]
                cells.append(f"{label} {mean:7.3f} [{low:7.3f}, {high:7.3f}]")
            print(f"  {precision}  " + "   ".join(cells))
        for score, label in SCORES.items():
            (_, low32, high32), (_, low16, high16) = (cis[p, score] for p in PRECISIONS)
            overlap = low16 <= high32 and low32 <= high16
            verdicts.append(overlap)
            print(f"  {label}: the CIs {'overlap' if overlap else 'DO NOT overlap'}")
    print(f"\n{sum(verdicts)}/{len(verdicts)} scores with overlapping CIs; {seconds / 60:.1f} min")


if __name__ == "__main__":
    main()
