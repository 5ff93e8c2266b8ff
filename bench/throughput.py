"""Throughput against CleanRL and the env-only limit, as ratios measured within one run.

Also the replay buffer's bytes per Atari transition (the DQN sides' notes).

    .venv/bin/python bench/throughput.py                    # everything, ~6 min on 2 cores
    .venv/bin/python bench/throughput.py ppo minigrid       # some groups (ppo, dqn, minigrid)
    .venv/bin/python bench/throughput.py --repeats 7        # longer, steadier
    .venv/bin/python bench/throughput.py --cleanrl ~/cleanrl          # PPO, DQN against CleanRL's
    .venv/bin/python bench/throughput.py ppo --cleanrl ~/cleanrl --ppo-steps 2048   # own scripts

Every side runs in its own process, with its own thread settings (ours: the config's; the
baselines: torch's defaults, libgomp's as the shell sets them). The driver alternates the sides
of a group round after round, so that load from other users falls on all of them alike (in the
listed order in even rounds, reversed in odd ones, so that a drift over the sitting favours no
side across a pair of rounds), and reports medians; a ratio is the median over rounds of the ratio
within a round.

Without --cleanrl, the Atari baselines are a CleanRL-style restatement (bench/cleanrl_style.py),
not CleanRL's code, and say so. Each side is built and warmed up once, then runs one chunk a
round. Our side trains through the agent's `train_iteration` with a real RunLogger (TensorBoard
files in a temporary directory); the baselines log nothing.

With --cleanrl DIR, the ppo and dqn groups time CleanRL's own ppo_atari.py and dqn_atari.py
instead. DIR is a clone of https://github.com/vwxyzjn/cleanrl at commit fe8d8a0:

    git clone https://github.com/vwxyzjn/cleanrl && git -C cleanrl checkout fe8d8a0
    .venv/bin/pip install -c constraints.txt tyro     # their one import pliable lacks

bench/cleanrl_real.py copies the two scripts and cleanrl_utils/ into a temporary directory and
patches them for gymnasium 1.x by exact string replacements (its docstring lists them and why;
a clone at another commit fails with one line naming the snippet that did not match); their
hyperparameters, network, wrappers and loop stay as published. Each round then runs every side
as a whole process from start to end, `--ppo-steps` (30,720) or `--dqn-steps` (20,000) env steps,
and takes the run's own whole-run rate: CleanRL's last `SPS: N` line (global_step over the time
since its start_time, set once envs and network are built; DQN prints it every 100 steps after
learning_starts) and our `train.py`'s final progress line (env steps over the time since
training began, env creation included). How the sides map:

    ppo_cleanrl_script  ppo_atari.py --env-id ALE/Breakout-v5 --total-timesteps N --no-cuda
    ppo                 train.py configs/atari_modes_ppo.yaml, Breakout mode 0 alone
                        (the gymnasium backend)
    ppo_ale             the same, `sequence.tasks=[{env_id: ALE/Breakout-v5}]` (ale_vector)
    dqn_cleanrl_script  dqn_atari.py, the same flags and --learning-starts 1000
                        --buffer-size 50000 --start-e 0.01 --end-e 0.01
    dqn, dqn_ale        train.py configs/atari_modes_dqn.yaml, the same two tasks, the same
                        learning_starts, buffer and epsilon (DQN_BENCH)
    *_bf16              each pliable side with `precision=bf16` added

Both sides run ALE/Breakout-v5 (sticky actions 0.25, default mode 0), 4 emulated frames an env
step, max-pooled (bench/cleanrl_real.py on fidelity); our runs are one task, one cycle, no
periodic or switch checkpoints (the final one stays, inside our timed span); their TensorBoard
runs and ours are written to a temporary directory. Targets: fp32 sides >= 1.5x, bf16 sides >= 2x
CleanRL's script; a target reads "met" or "MISSED" only when every round's ratio agrees, and
"undecided" (with what the median says) when the rounds straddle it. A whole run includes
start-up, so the defaults take ~40 min on 2 cores with 2 rounds (`--repeats`); `--ppo-steps 2048
--dqn-steps 3000` checks that everything runs.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import cleanrl_real  # noqa: E402  (no heavy imports: the workers import torch)

SHELL_ENV = dict(os.environ)  # the shell's own (GOMP_SPINCOUNT as the user set it)
BREAKOUT_MODE0 = "sequence.tasks=[{env_id: ALE/Breakout-v5, kwargs: {mode: 0}}]"
BREAKOUT = "sequence.tasks=[{env_id: ALE/Breakout-v5}]"
BF16 = "precision=bf16"
DQN_LEARNING_STARTS, DQN_BUFFER = 1000, 50_000
# a short fill, then greedy as late in training
DQN_BENCH = [f"dqn.buffer_size={DQN_BUFFER}", f"dqn.learning_starts={DQN_LEARNING_STARTS}",
             "dqn.log_every=500", "dqn.start_e=0.01", "dqn.end_e=0.01"]
RESTATEMENT = "CleanRL-style restatement, not CleanRL's code"

# side: (label, what its chunk is)
SIDES = {
    "ppo": "pliable PPO, Breakout mode 0 (gymnasium backend)",
    "ppo_ale": "pliable PPO, Breakout (ale_vector backend)",
    "ppo_cleanrl": RESTATEMENT,  # of ppo_atari.py, Breakout mode 0
    "ppo_cleanrl_tuned": "  the same, GOMP_SPINCOUNT=1000 (our setting)",
    "dqn": "pliable DQN, Breakout mode 0 (gymnasium backend)",
    "dqn_ale": "pliable DQN, Breakout (ale_vector backend)",
    "dqn_cleanrl": RESTATEMENT,  # of dqn_atari.py, Breakout mode 0
    "dqn_cleanrl_tuned": "  the same, GOMP_SPINCOUNT=1000 (our setting)",
    "minigrid": "pliable PPO, default config (MiniGrid-Empty-6x6)",
    "minigrid_env": "env only: the same vector env, random actions",
}
GROUPS = {
    "ppo": dict(title="PPO on Atari (CleanRL ppo_atari hyperparameters: 8 envs x 128 steps, "
                f"4 epochs x 4 minibatches, Nature CNN), against a {RESTATEMENT}",
                sides=["ppo", "ppo_ale", "ppo_cleanrl", "ppo_cleanrl_tuned"], target=1.5,
                reference="CleanRL's ppo_atari itself ran at ~290 steps/s on a 2-core machine "
                "like this one (issue 8)"),
    "dqn": dict(title="DQN on Atari (CleanRL dqn_atari hyperparameters: an update of batch 32 "
                f"every 4 env steps; epsilon 0.01 on both sides), against a {RESTATEMENT}",
                sides=["dqn", "dqn_ale", "dqn_cleanrl", "dqn_cleanrl_tuned"], target=1.5,
                reference="CleanRL's dqn_atari itself ran at ~105 steps/s on such a machine "
                "(issue 8)"),
    "minigrid": dict(title="PPO on MiniGrid (default config) against the env-only limit",
                     sides=["minigrid", "minigrid_env"], target=0.5,
                     reference=None),
}

# --cleanrl DIR: whole runs, side: what runs (a CleanRL script, or train.py with a config and
# overrides); each pliable side also has a `_bf16` twin with BF16 added (TARGETS by precision)
SCRIPT_SIDES = {
    "ppo_cleanrl_script": dict(label="CleanRL's own ppo_atari.py (fe8d8a0, gymnasium 1.x)",
                               script="ppo"),
    "ppo": dict(label=SIDES["ppo"], config="atari_modes_ppo.yaml", overrides=[BREAKOUT_MODE0]),
    "ppo_ale": dict(label=SIDES["ppo_ale"], config="atari_modes_ppo.yaml", overrides=[BREAKOUT]),
    "dqn_cleanrl_script": dict(label="CleanRL's own dqn_atari.py (fe8d8a0, gymnasium 1.x)",
                               script="dqn"),
    "dqn": dict(label=SIDES["dqn"], config="atari_modes_dqn.yaml",
                overrides=[BREAKOUT_MODE0, *DQN_BENCH]),
    "dqn_ale": dict(label=SIDES["dqn_ale"], config="atari_modes_dqn.yaml",
                    overrides=[BREAKOUT, *DQN_BENCH]),
}
SCRIPT_SIDES.update({f"{side}_bf16": dict(spec, label=f"  the same, {BF16}",
                                          overrides=[*spec["overrides"], BF16])
                     for side, spec in list(SCRIPT_SIDES.items()) if "config" in spec})
TARGETS = {"fp32": 1.5, "bf16": 2.0}  # pliable / CleanRL's script
SCRIPT_GROUPS = {
    "ppo": dict(title="PPO on Atari, whole runs: pliable's train.py against CleanRL's own "
                "ppo_atari.py (8 envs x 128 steps, 4 epochs x 4 minibatches, Nature CNN)",
                sides=["ppo_cleanrl_script", "ppo", "ppo_bf16", "ppo_ale", "ppo_ale_bf16"]),
    "dqn": dict(title="DQN on Atari, whole runs: pliable's train.py against CleanRL's own "
                "dqn_atari.py (an update of batch 32 every 4 env steps, epsilon 0.01)",
                sides=["dqn_cleanrl_script", "dqn", "dqn_bf16", "dqn_ale", "dqn_ale_bf16"]),
}
# our whole runs: the one task alone, no periodic or switch checkpoints (the final one stays)
WHOLE_RUN = ["sequence.cycles=1", "checkpoint.every=0", "checkpoint.at_switch=false",
             "checkpoint.save_replay=false"]


# -- workers (one process per side) ----------------------------------------------------------
def is_baseline(side: str) -> bool:
    return "cleanrl" in side


def build_side(side: str, run_dir: str):
    """Returns (chunk: () -> env steps, notes: dict) for a side, warmed up."""
    import torch

    if is_baseline(side):
        from bench.cleanrl_style import DQNBaseline, PPOBaseline

        torch.manual_seed(1)
        if side.startswith("ppo"):
            baseline = PPOBaseline("ALE/Breakout-v5", {"mode": 0})
            chunk = baseline.iteration
        else:
            baseline = DQNBaseline("ALE/Breakout-v5", {"mode": 0}, capacity=50_000,
                                   epsilon=0.01)
            baseline.steps(1000, learn=False)
            chunk = lambda: baseline.steps(500)  # noqa: E731
        chunk()
        return chunk, {"torch threads": torch.get_num_threads()}
    if side == "minigrid_env":
        return env_only_chunk(), {}

    config, overrides = {
        "ppo": ("atari_modes_ppo.yaml", [BREAKOUT_MODE0]),
        "ppo_ale": ("atari_modes_ppo.yaml", [BREAKOUT]),
        "dqn": ("atari_modes_dqn.yaml", [BREAKOUT_MODE0, *DQN_BENCH]),
        "dqn_ale": ("atari_modes_dqn.yaml", [BREAKOUT, *DQN_BENCH]),
        "minigrid": ("minigrid_ppo.yaml", []),
    }[side]
    chunk, agent = training_chunk(config, overrides, run_dir)
    for _ in range(3 if side.startswith("dqn") else 1):  # DQN: past learning_starts
        chunk()
    notes = {"torch threads": torch.get_num_threads()}
    if side.startswith("dqn"):
        notes["replay bytes/transition"] = agent.buffer.nbytes_per_transition
    return chunk, notes


def training_chunk(config: str, overrides: list[str], run_dir: str):
    """(chunk, agent): chunk() runs one `train_iteration` of the config's agent on its first
    task (a PPO rollout and update; DQN's log_every env steps) and returns its env steps."""
    import torch

    from agents.runtime.config import load_config
    from agents.runtime.logger import RunLogger
    from agents.runtime.trainer import Trainer, segment_seed

    cfg = load_config(config, overrides)
    trainer = Trainer(cfg)
    agent, task = trainer.agent, trainer.sequence.tasks[0]
    envs = trainer.env_factory.make_vector(task)
    agent.begin_task(envs, segment_seed(cfg.seed, 0))
    logger = RunLogger(run_dir, trainer.sequence.total_steps, 1e9, open(os.devnull, "w"))
    generator = torch.Generator().manual_seed(cfg.seed)

    def chunk() -> int:
        """One iteration, logged as the runtime logs it; its env steps."""
        before = agent.ctx.global_step
        iteration = agent.train_iteration(envs, 10**12, generator)
        logger.episodes(iteration.episodes, task.name)
        logger.scalars(iteration.stats, agent.ctx.global_step)
        return agent.ctx.global_step - before
    return chunk, agent


def env_only_chunk(steps: int = 2048):
    """The default config's first vector env, exactly as training builds it, random actions."""
    import numpy as np

    from agents.runtime.config import load_config
    from envs.factory import EnvFactory
    from envs.tasks import TaskSequence

    cfg = load_config("minigrid_ppo.yaml")
    factory = EnvFactory(cfg.env, TaskSequence.from_config(cfg.sequence, cfg.seed))
    envs = factory.make_vector(factory.sequence.tasks[0])
    envs.reset(seed=cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    n, num_actions = envs.num_envs, int(envs.single_action_space.n)

    def chunk():
        for _ in range(steps // n):
            envs.step(rng.integers(0, num_actions, n))
        return steps

    chunk()
    return chunk


def worker(side: str) -> None:
    import tempfile

    sys.path.insert(0, str(ROOT))
    if is_baseline(side):
        import torch  # noqa: F401  (libgomp loads with the shell's settings, as CleanRL's)
    else:
        from agents.runtime.process import set_process_defaults

        set_process_defaults()  # as in training: before torch loads
    with tempfile.TemporaryDirectory() as run_dir:
        chunk, notes = build_side(side, run_dir)
        print("ready", repr(notes), flush=True)
        for line in sys.stdin:
            if line.strip() != "go":
                break
            start = time.perf_counter()
            steps = chunk()
            print(steps, time.perf_counter() - start, flush=True)


# -- driver ----------------------------------------------------------------------------------
def in_round_order(sides: list[str], round_: int) -> list[str]:
    """The sides as listed in even rounds, reversed in odd ones (A B C, C B A, ...): a machine
    that speeds up or slows down over a sitting then favours no side across a pair of rounds, as
    it would favour the later sides if every round ran them in one order."""
    return sides if round_ % 2 == 0 else sides[::-1]


def start_worker(side: str) -> subprocess.Popen:
    env = dict(SHELL_ENV) if is_baseline(side) else dict(os.environ)
    if side.endswith("tuned"):
        env["GOMP_SPINCOUNT"] = "1000"
    return subprocess.Popen([sys.executable, __file__, "--worker", side], cwd=ROOT, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def run_group(name: str, repeats: int) -> dict[str, list[float]]:
    group = GROUPS[name]
    workers = {side: start_worker(side) for side in group["sides"]}
    try:
        notes = {}
        for side, proc in workers.items():
            line = proc.stdout.readline()
            if not line.startswith("ready"):
                raise RuntimeError(f"worker {side} failed to start (see its output above)")
            notes[side] = line.split(" ", 1)[1].strip()
        rates = {side: [] for side in workers}
        for round_ in range(repeats):
            for side in in_round_order(list(workers), round_):
                proc = workers[side]
                proc.stdin.write("go\n")
                proc.stdin.flush()
                steps, seconds = proc.stdout.readline().split()
                rates[side].append(int(steps) / float(seconds))
    finally:
        for proc in workers.values():
            proc.stdin.close()
            proc.wait(timeout=60)
    report(group, rates, notes)
    return rates


def verdict(ratios: list[float], target: float) -> str:
    """met / MISSED only when every round agrees; otherwise the rounds straddle the target and
    this sitting's spread, not the code, decides what a median would say."""
    if all(r >= target for r in ratios):
        return "met"
    if all(r < target for r in ratios):
        return "MISSED"
    return f"undecided, the median {'met' if statistics.median(ratios) >= target else 'missed'}"


def report(group: dict, rates: dict[str, list[float]], notes: dict[str, str]) -> None:
    print(f"\n{group['title']}")
    for side, values in rates.items():
        print(f"  {side:<20} {SIDES[side]:<50} {statistics.median(values):7,.0f} env steps/s  "
              f"(rounds: {', '.join(f'{v:,.0f}' for v in values)}; {notes[side]})")
    bases = [side for side in rates if is_baseline(side) or side.endswith("_env")]
    print("  ratios, each the median over rounds of the ratio within a round:")
    for side in rates:
        for base in [] if side in bases else bases:
            ratios = [a / b for a, b in zip(rates[side], rates[base])]
            ratio = statistics.median(ratios)
            note = (f"target {group['target']:g}x: {verdict(ratios, group['target'])}"
                    if base == bases[0]
                    else "the code alone: thread settings alike")
            print(f"    {side} / {base}: {ratio:.2f}x ({note})")
    if group["reference"]:
        print(f"  for orientation: {group['reference']}; the baselines above restate its loop "
              "(bench/cleanrl_style.py), they are not CleanRL's code (--cleanrl DIR times its "
              "own script)")


# -- --cleanrl DIR: CleanRL's own scripts and our train.py, whole processes ------------------
def side_command(side: str, steps: int, scripts: dict[str, Path], tmp: Path):
    """(argv, cwd, parse) of one whole run of `side`: parse(stdout) is its whole-run SPS."""
    spec = SCRIPT_SIDES[side]
    if "script" in spec:
        args = cleanrl_real.script_args(spec["script"], steps, DQN_LEARNING_STARTS, DQN_BUFFER)
        script = scripts[spec["script"]]  # its runs/ lands beside it, in the temporary directory
        return [sys.executable, str(script), *args], script.parent, cleanrl_real.last_sps
    argv = [sys.executable, str(ROOT / "train.py"), str(ROOT / "configs" / spec["config"]),
            *spec["overrides"], *WHOLE_RUN, f"sequence.switch_every={steps}",
            f"runs_root={tmp / 'pliable'}"]
    return argv, tmp, last_progress_sps


def last_progress_sps(output: str) -> float | None:
    """The SPS of train.py's last progress line: the final one, over the whole run."""
    rates = re.findall(r"^step .*\| SPS\s+([\d,]+) \|", output, flags=re.MULTILINE)
    return float(rates[-1].replace(",", "")) if rates else None


def run_side(side: str, steps: int, scripts: dict[str, Path], tmp: Path) -> float:
    argv, cwd, parse = side_command(side, steps, scripts, tmp)
    proc = subprocess.run(argv, cwd=cwd, env=SHELL_ENV, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True)
    rate = parse(proc.stdout) if proc.returncode == 0 else None
    if rate is None:
        tail = "\n".join((proc.stderr.strip() or proc.stdout.strip()).splitlines()[-15:])
        sys.exit(f"{tail}\nbench/throughput.py: side {side} failed (exit {proc.returncode}, "
                 f"no SPS line): {shlex.join(argv)}")
    return rate


def run_script_group(name: str, repeats: int, steps: int, scripts: dict[str, Path],
                     tmp: Path) -> dict[str, list[float]]:
    group = SCRIPT_GROUPS[name]
    rates = {side: [] for side in group["sides"]}
    for round_ in range(repeats):
        for side in in_round_order(group["sides"], round_):
            rates[side].append(run_side(side, steps, scripts, tmp))
            print(f"  round {round_ + 1}/{repeats}: {side} {rates[side][-1]:,.0f} SPS",
                  flush=True)
    report_scripts(group, steps, rates)
    return rates


def report_scripts(group: dict, steps: int, rates: dict[str, list[float]]) -> None:
    print(f"\n{group['title']}; {steps:,} env steps a run")
    for side, values in rates.items():
        print(f"  {side:<20} {SCRIPT_SIDES[side]['label']:<52} {statistics.median(values):7,.0f}"
              f" env steps/s  (rounds: {', '.join(f'{v:,.0f}' for v in values)})")
    base = group["sides"][0]
    print(f"  ratios to {base}, the median over rounds of the ratio within a round:")
    for side in group["sides"][1:]:
        ratios = [a / b for a, b in zip(rates[side], rates[base])]
        ratio = statistics.median(ratios)
        target = TARGETS["bf16" if BF16 in SCRIPT_SIDES[side]["overrides"] else "fp32"]
        print(f"    {side} / {base}: {ratio:.2f}x (rounds: "
              f"{', '.join(f'{r:.2f}x' for r in ratios)}; target {target:g}x: "
              f"{verdict(ratios, target)})")


def prepare_cleanrl(directory: str, tmp: Path) -> dict[str, Path]:
    """The patched scripts in `tmp`, or one line and exit 2: missing dependencies (checked in
    this interpreter, which runs them) or a directory that is not CleanRL at the right commit."""
    missing = cleanrl_real.missing_dependencies()
    if missing:
        print(f"bench/throughput.py --cleanrl: CleanRL's scripts need {', '.join(missing)}, "
              f"missing here; install with: .venv/bin/pip install -c constraints.txt "
              f"{' '.join(missing)}", file=sys.stderr)
        sys.exit(2)
    try:
        return cleanrl_real.patched_copy(directory, tmp / "cleanrl")
    except cleanrl_real.PatchError as exc:
        print(f"bench/throughput.py --cleanrl: {exc}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("groups", nargs="*", help=f"any of {', '.join(GROUPS)} (default: all)")
    parser.add_argument("--repeats", type=int, help="rounds per group (default 3; 2 for the "
                        "whole runs of --cleanrl)")
    parser.add_argument("--cleanrl", metavar="DIR", help="time CleanRL's own ppo_atari.py and "
                        "dqn_atari.py from this clone (at commit fe8d8a0) in the ppo and dqn "
                        "groups, instead of the restatement; needs tyro")
    parser.add_argument("--ppo-steps", type=int, default=30_720,
                        help="with --cleanrl: env steps of each PPO run (a multiple of 1,024; "
                        "default 30,720)")
    parser.add_argument("--dqn-steps", type=int, default=20_000,
                        help="with --cleanrl: env steps of each DQN run (a multiple of 8 above "
                        f"{DQN_LEARNING_STARTS + 100:,}; default 20,000)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return
    unknown = set(args.groups) - set(GROUPS)
    if unknown:
        parser.error(f"unknown group(s) {', '.join(sorted(unknown))} (groups: {', '.join(GROUPS)})")
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: at least 1")
    if args.ppo_steps < 1024 or args.ppo_steps % 1024:
        parser.error(f"--ppo-steps {args.ppo_steps}: a positive multiple of 1,024 (8 envs x 128)")
    if args.dqn_steps <= DQN_LEARNING_STARTS + 100 or args.dqn_steps % 8:
        parser.error(f"--dqn-steps {args.dqn_steps}: a multiple of 8 (our 8 envs) above "
                     f"{DQN_LEARNING_STARTS + 100:,} (learning_starts {DQN_LEARNING_STARTS:,}, "
                     "then CleanRL's first SPS line)")
    names = args.groups or list(GROUPS)
    with tempfile.TemporaryDirectory(prefix="throughput-") as tmp:
        scripts = (prepare_cleanrl(args.cleanrl, Path(tmp))
                   if args.cleanrl and set(names) & set(SCRIPT_GROUPS) else {})
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
        for name in names:
            if scripts and name in SCRIPT_GROUPS:
                steps = args.ppo_steps if name == "ppo" else args.dqn_steps
                run_script_group(name, args.repeats or 2, steps, scripts, Path(tmp))
            else:
                run_group(name, args.repeats or 3)


if __name__ == "__main__":
    main()
