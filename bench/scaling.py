"""How the cost of an env step scales with the number of envs, the network's width and the length
of the task sequence; ratios measured in one run.

    .venv/bin/python bench/scaling.py             # MiniGrid default config, ~3 min on 2 cores
    .venv/bin/python bench/scaling.py --atari     # also PPO on Breakout (Nature CNN), longer

- envs and width: PPO iterations (rollout + update) of the default config with env.num_envs in
  {1, 4, 8, 16} and network.width in {1, 2}, alternating within rounds; medians.
- sequence length: whole runs (`pliable train`: monitor, checkpoints, logs, as configured) of the
  default config with 1 switch (2 segments) and 10 switches (11 segments) of `--switch-every`
  env steps: cost per segment, which is constant when nothing grows with the number of switches
  (the monitor measures twice per boundary, so it is part of a segment's cost), and the run
  directory's size per segment (logs, checkpoints, spectra: the one thing meant to grow).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agents.runtime.process import set_process_defaults  # noqa: E402

set_process_defaults()  # as in training: before torch loads
from agents.runtime.config import load_config  # noqa: E402
from agents.runtime.launch import run_training  # noqa: E402
from bench.throughput import training_chunk  # noqa: E402
from bench.timing import compare  # noqa: E402

MINIGRID_TASKS = ("MiniGrid-Empty-6x6-v0", "MiniGrid-DoorKey-5x5-v0", "MiniGrid-LavaGapS5-v0")


def per_step_costs(config: str, variants: dict[str, list[str]], rounds: int) -> dict:
    """Median seconds per env step of each variant's training iterations, alternating."""
    with tempfile.TemporaryDirectory() as tmp:
        chunks = {name: training_chunk(config, overrides, f"{tmp}/{i}")[0]
                  for i, (name, overrides) in enumerate(variants.items())}
        return compare(chunks, rounds, per_unit=True)  # a chunk returns its env steps


def show(title: str, costs: dict[str, float]) -> None:
    print(f"\n{title}")
    first = next(iter(costs.values()))
    for name, cost in costs.items():
        print(f"  {name:<22} {1e3 * cost:8.3f} ms per env step   x{cost / first:.2f}")


def sweeps(config: str, label: str, rounds: int) -> None:
    show(f"{label}: cost per env step by number of envs (num_steps 128 each)",
         per_step_costs(config, {f"num_envs={n}": [f"env.num_envs={n}"] for n in (1, 4, 8, 16)},
                        rounds))
    show(f"{label}: cost per env step by network width",
         per_step_costs(config, {f"width x{w}": [f"network.width={w}"] for w in (1, 2)}, rounds))


def run_seconds(switches: int, switch_every: int) -> tuple[float, int]:
    """Wall seconds and run-directory bytes of a default-config run with `switches` switches."""
    tasks = ", ".join(f"{{env_id: {MINIGRID_TASKS[i % 3]}, name: t{i}}}"
                      for i in range(switches + 1))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config("minigrid_ppo.yaml", [f"sequence.tasks=[{tasks}]", "sequence.cycles=1",
                                                f"sequence.switch_every={switch_every}",
                                                f"runs_root={tmp}", "print_every=1e9"])
        start = time.perf_counter()
        run_training(cfg, stream=io.StringIO())
        seconds = time.perf_counter() - start
        size = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file())
    return seconds, size


def sequence_length(switch_every: int) -> None:
    short_a, size_short = run_seconds(1, switch_every)
    long, size_long = run_seconds(10, switch_every)
    short_b, _ = run_seconds(1, switch_every)  # before and after: load changes hit both
    short = (short_a + short_b) / 2
    print(f"\nsequence length: the default config (monitor on), {switch_every:,} env steps per "
          "task")
    print(f"  1 switch   (2 segments):  {short:6.1f} s, {short / 2:5.2f} s per segment, "
          f"{size_short / 2 / 1024:6.0f} KiB of logs per segment")
    print(f"  10 switches (11 segments): {long:6.1f} s, {long / 11:5.2f} s per segment, "
          f"{size_long / 11 / 1024:6.0f} KiB of logs per segment")
    print(f"  10-switch run / 1-switch run: x{long / short:.2f} for x5.5 the segments "
          f"(cost per segment x{(long / 11) / (short / 2):.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--atari", action="store_true", help="also PPO on Breakout")
    parser.add_argument("--switch-every", type=int, default=4096)
    args = parser.parse_args()
    sweeps("minigrid_ppo.yaml", "PPO, default config (MiniGrid CNN)", args.rounds)
    if args.atari:
        sweeps("atari_modes_ppo.yaml", "PPO, Breakout (Nature CNN)", args.rounds)
    sequence_length(args.switch_every)


if __name__ == "__main__":
    main()
