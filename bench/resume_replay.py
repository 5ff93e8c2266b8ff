"""What a resume costs: rebuilding the live segment's envs by replaying its recorded actions.

    .venv/bin/python bench/resume_replay.py            # ~30 s on a 2-core CPU

A resume steps fresh envs through every action since the segment started (envs/recorder.py), so
its cost grows with how far into the segment the run stopped: at worst a whole segment. For each
shipped config's first task this prints the replay rate (env steps/s, summed over envs), the time
to replay a whole segment (`sequence.switch_every` steps) and the record's size per segment.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents.runtime.config import load_config  # noqa: E402
from envs.factory import EnvFactory  # noqa: E402
from envs.recorder import ActionRecorder  # noqa: E402
from envs.tasks import TaskSequence  # noqa: E402

CONFIGS = {  # name: (config, overrides, vector steps timed)
    "MiniGrid (minigrid_ppo)": ("minigrid_ppo.yaml", [], 4000),
    "Atari, default modes (ale_vector)": (
        "atari_modes_ppo.yaml", ["sequence.tasks=[{env_id: ALE/Breakout-v5}]"], 1000),
    "Atari modes (gymnasium wrappers)": ("atari_modes_ppo.yaml", [], 1000),
}


def replay_rate(config: str, overrides: list[str], vector_steps: int) -> tuple[float, int, int]:
    """(env steps/s of a replay, switch_every, record bytes per segment) for the first task."""
    cfg = load_config(config, overrides)
    sequence = TaskSequence.from_config(cfg.sequence, cfg.seed)
    factory = EnvFactory(cfg.env, sequence)
    task, rng = sequence.tasks[0], np.random.default_rng(0)
    envs = ActionRecorder(factory.make_vector(task))
    envs.reset(seed=cfg.seed)
    for _ in range(vector_steps):
        envs.step(rng.integers(factory.action_space.n, size=cfg.env.num_envs))
    record = envs.state_dict()
    envs.close()
    fresh = ActionRecorder(factory.make_vector(task))
    start = time.perf_counter()
    fresh.replay(record)
    seconds = time.perf_counter() - start
    fresh.close()
    per_step = record["actions"].element_size()
    return vector_steps * cfg.env.num_envs / seconds, cfg.sequence.switch_every, per_step


def main() -> None:
    torch.set_num_threads(1)
    print(f"{'config':<36} {'replay steps/s':>15} {'segment':>11} {'full replay':>12} "
          f"{'record':>9}")
    for name, (config, overrides, vector_steps) in CONFIGS.items():
        rate, segment, per_step = replay_rate(config, overrides, vector_steps)
        print(f"{name:<36} {rate:>15,.0f} {segment:>11,} {segment / rate:>10,.0f} s "
              f"{segment * per_step / 2**20:>6.1f} MB")


if __name__ == "__main__":
    main()
