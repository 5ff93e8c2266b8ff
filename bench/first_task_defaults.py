"""Every plasticity strategy at its defaults on the default config's first task, against none.

    .venv/bin/python bench/first_task_defaults.py                        # all strategies (~12 min)
    .venv/bin/python bench/first_task_defaults.py --strategies c_chain trac --seeds 5
    .venv/bin/python bench/first_task_defaults.py --strategies 'c_chain={target: 0.01}'
    .venv/bin/python bench/first_task_defaults.py --agent dqn            # configs/minigrid_dqn.yaml
    .venv/bin/python bench/first_task_defaults.py --config tiny_continuous --steps 60000 \
        --set env.num_envs=1 ppo.num_steps=2048 ppo.num_minibatches=32 ppo.update_epochs=10

A strategy's defaults should be a setting a user can start from: on the first task of the default
config (PPO: configs/minigrid_ppo.yaml, MiniGrid-Empty-6x6-v0; or `--config`'s), a run with the
strategy on should learn about as well as one with none. Each strategy and the baseline (no
strategy) train `--steps` env steps on that task alone (sequence.tasks cut to it, one cycle, no
spectral monitor, no periodic or switch checkpoints) for seeds 1..`--seeds`, each run a `train.py`
process, `--jobs` at a time, all in the same sitting so load falls on all alike.

Per strategy it prints, from each run's `charts/episodic_return` (TensorBoard events, read by
analysis.study.results): the area under the learning curve (analysis.study.aggregate.segment_auc:
the time-average of the piecewise-linear return curve over the task) as a ratio to the baseline's,
with a 95% bootstrap CI over seeds (both sides' seeds resampled), the mean return over the last
quarter of the steps as a ratio to the baseline's, and PASS when both ratios are >= `--threshold`
(0.8). A strategy that at its defaults acts only at task switches (reset, shrink_perturb,
plasticity_injection) has nothing to do on a single task and is marked so: it passes trivially. So
is one whose runs give the baseline's returns episode for episode (same seed, same run: it never
changed training in these steps, e.g. a schedule longer than the run). The last line sums up. A
strategy argument is a
registered name or NAME={yaml flow mapping} of settings to try. """

from __future__ import annotations

import argparse
import concurrent.futures
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import yaml
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agents.errors import ConfigError  # noqa: E402
from agents.plasticity import STRATEGIES, build_strategies  # noqa: E402
from agents.runtime.config import TaskConfig, load_config  # noqa: E402
from analysis.study.aggregate import RETURN_METRIC, task_scores  # noqa: E402
from analysis.study.results import read_run  # noqa: E402
from envs.tasks import TaskSequence  # noqa: E402

CONFIGS = {agent: ROOT / "configs" / f"minigrid_{agent}.yaml" for agent in ("ppo", "dqn")}
BASELINE = "none"
FINAL_WINDOW = 0.25  # the final quarter of the steps
# A strategy whose settings make it act only at task switches: nothing happens on one task.
SWITCH_ONLY = {
    "reset": lambda s: s.at_switch and not s.every_steps,
    "shrink_perturb": lambda s: s.when == "switch",
    "plasticity_injection": lambda s: s.at_switch and not s.every_steps,
}


@dataclass(frozen=True, eq=False)  # hashed by identity
class Arm:
    label: str  # as given on the command line
    name: str  # the strategy's registered name, or "none"
    settings: dict


def fail(message: str) -> NoReturn:
    """Bad input: one line on stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse_arm(text: str) -> Arm:
    name, _, rest = text.partition("=")
    if name != BASELINE and name not in STRATEGIES:
        fail(f"unknown strategy '{name}' (known: {', '.join(sorted(STRATEGIES))})")
    try:
        settings = yaml.safe_load(rest) if rest else {}
    except yaml.YAMLError as exc:
        fail(f"{text}: settings are not YAML ({str(exc).splitlines()[0]})")
    if not isinstance(settings, dict):
        fail(f"{text}: settings must be a mapping, e.g. {name}={{key: value}}")
    return Arm(text, name, settings)


def switch_only(arm: Arm, agent: str) -> bool:
    if arm.name not in SWITCH_ONLY:
        return False
    stack = build_strategies({arm.name: arm.settings})
    return SWITCH_ONLY[arm.name](stack.strategies[0].settings)


def write_config(arm: Arm, args, directory: Path) -> Path:
    """The default config cut to its first task, with this arm's strategy, as one YAML file."""
    cfg = load_config(args.config or CONFIGS[args.agent], args.set)
    first = TaskSequence.from_config(cfg.sequence, cfg.seed).tasks[0]  # `vary` expanded
    cfg.sequence.tasks = [TaskConfig(
        env_id=first.env_id, name=first.name, kwargs=dict(first.kwargs),
        physics=dict(first.physics), permute_obs=first.permute_obs,
        permute_actions=first.permute_actions)]
    cfg.sequence.vary = {}
    cfg.sequence.cycles = 1
    cfg.sequence.switch_every = args.steps
    cfg.monitor.enabled = False
    cfg.checkpoint.every = 0
    cfg.checkpoint.at_switch = False
    cfg.print_every = 1e9
    cfg.plasticity = {} if arm.name == BASELINE else {arm.name: arm.settings}
    cfg.strategy_set = arm.label
    path = directory / f"{len(list(directory.glob('*.yaml'))):02d}.yaml"
    path.write_text(yaml.safe_dump(OmegaConf.to_container(cfg, resolve=True)))
    load_config(path)  # the strategy's settings checked, before anything trains
    return path


def train(config: Path, seed: int, run_dir: Path) -> tuple[Path, float, str]:
    start = time.perf_counter()
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(run_dir.parent / f"{run_dir.name}.log", "w") as log:
        done = subprocess.run([sys.executable, str(ROOT / "train.py"), str(config), f"seed={seed}",
                               f"run_dir={run_dir}"], stdout=log, stderr=subprocess.STDOUT,
                              cwd=ROOT)
    error = "" if done.returncode == 0 else f"exit status {done.returncode}, log {log.name}"
    return run_dir, time.perf_counter() - start, error


def scores(run_dir: Path) -> tuple[float, float, np.ndarray]:
    """(AUC, final-quarter mean return, every episodic return in order) of a one-task run."""
    table = read_run(run_dir)
    row = task_scores(table, window=FINAL_WINDOW).iloc[0]
    returns = table.loc[table["metric"] == RETURN_METRIC].sort_values("step", kind="stable")
    return float(row["auc"]), float(row["final_return"]), returns["value"].to_numpy()


def ratio_ci(values: np.ndarray, base: np.ndarray, reps: int = 10_000,
             seed: int = 0) -> tuple[float, float, float]:
    """mean(values) / mean(base) and its 95% percentile bootstrap CI, each side's seeds
    resampled with replacement."""
    rng = np.random.default_rng(seed)
    ratio = values.mean() / base.mean()
    v = values[rng.integers(len(values), size=(reps, len(values)))].mean(1)
    b = base[rng.integers(len(base), size=(reps, len(base)))].mean(1)
    low, high = np.quantile(v / b, [0.025, 0.975])
    return float(ratio), float(low), float(high)


def add_run_options(parser: argparse.ArgumentParser, set_help: str) -> None:
    """--jobs, --set and --out: how a bench of train.py runs runs them (bench/precision.py too)."""
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (2)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help=set_help)
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temporary "
                        "directory, removed afterwards)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--agent", choices=tuple(CONFIGS), default="ppo")
    parser.add_argument("--config", help="the config whose first task to train (a path or a "
                        "name in configs/; default: the agent's MiniGrid config)")
    parser.add_argument("--steps", type=int, default=40_000, help="env steps per run (40000)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 1..N per strategy (3)")
    parser.add_argument("--strategies", nargs="+", metavar="STRATEGY",
                        help="names, or NAME={settings} (default: every registered strategy)")
    parser.add_argument("--threshold", type=float, default=0.8, help="PASS at this ratio (0.8)")
    add_run_options(parser, "config overrides for every run, baseline included")
    args = parser.parse_args()

    arms = [parse_arm(text) for text in (args.strategies or sorted(STRATEGIES))]
    arms = [Arm(BASELINE, BASELINE, {})] + [a for a in arms if a.name != BASELINE]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        try:
            configs = {arm: write_config(arm, args, out) for arm in arms}
        except ConfigError as exc:
            fail(str(exc))
        task = load_config(configs[arms[0]]).sequence.tasks[0].env_id
        agent = load_config(configs[arms[0]]).agent
        print(f"{agent} on {task}, {args.steps:,} env steps, seeds 1..{args.seeds}, "
              f"{len(arms)} arms (baseline first), {args.jobs} at a time; runs in {out}",
              flush=True)
        results: dict[Arm, list] = {arm: [] for arm in arms}
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            futures = {
                pool.submit(train, configs[arm], seed, out / f"arm{i:02d}" / f"s{seed}"): arm
                for i, arm in enumerate(arms) for seed in range(1, args.seeds + 1)}
            for n, future in enumerate(concurrent.futures.as_completed(futures), 1):
                arm = futures[future]
                run_dir, seconds, error = future.result()
                results[arm].append((run_dir, error))
                print(f"  [{n:3d}/{len(futures)}] {arm.label} {run_dir.name}: "
                      f"{error or 'done'} ({seconds:.0f} s)", flush=True)
        report(arms, results, args, time.perf_counter() - started)


def report(arms, results, args, seconds: float) -> None:
    table = {}  # arm -> ({seed: (auc, final, returns)}, errors)
    for arm in arms:
        done = {int(d.name[1:]): scores(d) for d, error in results[arm] if not error}
        table[arm] = (done, [error for _, error in results[arm] if error])
    base = table[arms[0]][0]
    if not base:
        raise SystemExit(f"every baseline run failed: {table[arms[0]][1]}")
    threshold, width = args.threshold, max(26, *(len(arm.label) + 1 for arm in arms))
    print(f"\nratios to the baseline ({BASELINE}); AUC: time-average of the return curve; "
          f"final: mean return over the last quarter; PASS: both >= {threshold}")
    print(f"{'strategy':<{width}} {'AUC':>6} {'AUC ratio [95% CI]':>22} {'final':>6} "
          f"{'final ratio [95% CI]':>22}  verdict")
    base_scores = np.array([base[seed][:2] for seed in sorted(base)])
    passed, failed, trivial, idle = [], [], [], []
    for arm in arms:
        done, errors = table[arm]
        if errors or not done:
            first = errors[0] if errors else ""
            print(f"{arm.label:<{width}} {len(errors)} run(s) failed: {first}")
            failed.append(arm.label)
            continue
        values = np.array([done[seed][:2] for seed in sorted(done)])
        auc, final = ratio_ci(values[:, 0], base_scores[:, 0]), ratio_ci(values[:, 1],
                                                                         base_scores[:, 1])
        verdict = "PASS" if min(auc[0], final[0]) >= threshold else "FAIL"
        note = ""
        if arm.name == BASELINE:
            verdict = "-"
        elif switch_only(arm, args.agent):
            note = "  (acts only at task switches: trivially)"
            trivial.append(arm.label)
        elif all(seed in base and np.array_equal(done[seed][2], base[seed][2]) for seed in done):
            # the same seed gives the same run: identical returns mean it never changed training
            note = "  (same returns as the baseline, run by run: did not act in these steps)"
            idle.append(arm.label)
        if verdict != "-":
            (passed if verdict == "PASS" else failed).append(arm.label)
        print(f"{arm.label:<{width}} {values[:, 0].mean():6.3f} {_ci(auc):>22} "
              f"{values[:, 1].mean():6.3f} {_ci(final):>22}  {verdict}{note}")
    print(f"\n{len(passed)}/{len(passed) + len(failed)} pass (>= {threshold} of the baseline's "
          f"AUC and final return, {args.seeds} seeds, {args.steps:,} steps)"
          + (f"; FAIL: {', '.join(failed)}" if failed else "")
          + (f"; trivially (switch-only): {', '.join(trivial)}" if trivial else "")
          + (f"; did not act in {args.steps:,} steps: {', '.join(idle)}" if idle else "")
          + f"; {seconds / 60:.1f} min")


def _ci(stat) -> str:
    return f"{stat[0]:.2f} [{stat[1]:.2f}, {stat[2]:.2f}]"


if __name__ == "__main__":
    main()
