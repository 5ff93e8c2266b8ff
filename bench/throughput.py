"""Throughput against CleanRL-style baselines and against the env-only limit, as ratios measured
in one run; also the replay buffer's bytes per Atari transition.

    .venv/bin/python bench/throughput.py                    # everything, ~6 min on 2 cores
    .venv/bin/python bench/throughput.py ppo minigrid       # some groups (ppo, dqn, minigrid)
    .venv/bin/python bench/throughput.py --repeats 7        # longer, steadier
    .venv/bin/python bench/throughput.py ppo --cleanrl ~/cleanrl/cleanrl/ppo_atari.py

Every side runs in its own process, built and warmed up once, with its own thread settings
(ours: the config's; the baselines: torch's defaults, libgomp's as the shell sets them). The
driver then alternates the sides of a group, one chunk each, round after round, so that load from
other users falls on all of them alike, and reports medians; a ratio is the median over rounds
of the ratio within a round. Our side trains through the agent's `train_iteration` with a real
RunLogger (TensorBoard files in a temporary directory); the baselines log nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHELL_ENV = dict(os.environ)  # the shell's own (GOMP_SPINCOUNT as the user set it)
BREAKOUT_MODE0 = "sequence.tasks=[{env_id: ALE/Breakout-v5, kwargs: {mode: 0}}]"
BREAKOUT = "sequence.tasks=[{env_id: ALE/Breakout-v5}]"
DQN_BENCH = ["dqn.buffer_size=50000", "dqn.learning_starts=1000", "dqn.log_every=500",
             "dqn.start_e=0.01", "dqn.end_e=0.01"]  # a short fill, then greedy as late in training

# side: (label, what its chunk is)
SIDES = {
    "ppo": "pliable PPO, Breakout mode 0 (gymnasium backend)",
    "ppo_ale": "pliable PPO, Breakout (ale_vector backend)",
    "ppo_cleanrl": "CleanRL-style PPO baseline, Breakout mode 0",
    "ppo_cleanrl_tuned": "  the same, GOMP_SPINCOUNT=1000 (our setting)",
    "dqn": "pliable DQN, Breakout mode 0 (gymnasium backend)",
    "dqn_ale": "pliable DQN, Breakout (ale_vector backend)",
    "dqn_cleanrl": "CleanRL-style DQN baseline, Breakout mode 0",
    "dqn_cleanrl_tuned": "  the same, GOMP_SPINCOUNT=1000 (our setting)",
    "minigrid": "pliable PPO, default config (MiniGrid-Empty-6x6)",
    "minigrid_env": "env only: the same vector env, random actions",
}
GROUPS = {
    "ppo": dict(title="PPO on Atari (CleanRL ppo_atari hyperparameters: 8 envs x 128 steps, "
                "4 epochs x 4 minibatches, Nature CNN)",
                sides=["ppo", "ppo_ale", "ppo_cleanrl", "ppo_cleanrl_tuned"], target=1.5,
                reference="CleanRL's ppo_atari itself ran at ~290 steps/s on a 2-core machine "
                "like this one (issue 8)"),
    "dqn": dict(title="DQN on Atari (CleanRL dqn_atari hyperparameters: an update of batch 32 "
                "every 4 env steps; epsilon 0.01 on both sides)",
                sides=["dqn", "dqn_ale", "dqn_cleanrl", "dqn_cleanrl_tuned"], target=1.5,
                reference="CleanRL's dqn_atari itself ran at ~105 steps/s on such a machine "
                "(issue 8)"),
    "minigrid": dict(title="PPO on MiniGrid (default config) against the env-only limit",
                     sides=["minigrid", "minigrid_env"], target=0.5,
                     reference=None),
}


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
        from agents.runtime.openmp import spin_briefly

        spin_briefly()  # our GOMP_SPINCOUNT default, set before torch loads
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
        for _ in range(repeats):
            for side, proc in workers.items():
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


def report(group: dict, rates: dict[str, list[float]], notes: dict[str, str]) -> None:
    print(f"\n{group['title']}")
    for side, values in rates.items():
        print(f"  {side:<20} {SIDES[side]:<50} {statistics.median(values):7,.0f} env steps/s  "
              f"(rounds: {', '.join(f'{v:,.0f}' for v in values)}; {notes[side]})")
    bases = [side for side in rates if is_baseline(side) or side.endswith("_env")]
    print("  ratios, each the median over rounds of the ratio within a round:")
    for side in rates:
        for base in [] if side in bases else bases:
            ratio = statistics.median(a / b for a, b in zip(rates[side], rates[base]))
            met = "met" if ratio >= group["target"] else "MISSED"
            note = (f"target {group['target']:g}x: {met}" if base == bases[0]
                    else "the code alone: thread settings alike")
            print(f"    {side} / {base}: {ratio:.2f}x ({note})")
    if group["reference"]:
        print(f"  for orientation: {group['reference']}; the baselines above restate its loop "
              "(bench/cleanrl_style.py), they are not CleanRL's code")


def time_cleanrl_script(path: str, kind: str) -> float:
    """Runs a user's copy of CleanRL's ppo_atari.py / dqn_atari.py; returns its last SPS line."""
    args = ["--total-timesteps", "10240"] if kind == "ppo" else [
        "--total-timesteps", "6000", "--learning-starts", "2000", "--buffer-size", "50000"]
    out = subprocess.run([sys.executable, path, *args], env=SHELL_ENV, capture_output=True,
                         text=True, check=True).stdout
    rates = re.findall(r"SPS:\s*(\d+)", out)
    if not rates:
        raise RuntimeError(f"{path} printed no 'SPS: N' line")
    return float(rates[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("groups", nargs="*", help=f"any of {', '.join(GROUPS)} (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per group (default 3)")
    parser.add_argument("--cleanrl", metavar="PATH", help="also time a copy of CleanRL's "
                        "ppo_atari.py (needs its dependencies: stable-baselines3, tyro)")
    parser.add_argument("--cleanrl-dqn", metavar="PATH", help="... and of its dqn_atari.py")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return
    unknown = set(args.groups) - set(GROUPS)
    if unknown:
        parser.error(f"unknown group(s) {', '.join(sorted(unknown))} (groups: {', '.join(GROUPS)})")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
          f"{args.repeats} rounds per group")
    for name in args.groups or GROUPS:
        rates = run_group(name, args.repeats)
        for kind, path in (("ppo", args.cleanrl), ("dqn", args.cleanrl_dqn)):
            if path and name == kind:
                sps = time_cleanrl_script(path, kind)
                ours = statistics.median(rates[kind])
                print(f"  CleanRL's own script ({path}): {sps:,.0f} SPS (its last line, run "
                      f"alone, start-up included); pliable / it: {ours / sps:.2f}x")


if __name__ == "__main__":
    main()
