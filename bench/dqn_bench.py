"""DQN throughput on MiniGrid and Atari, and the replay buffer's memory per transition.

    .venv/bin/python bench/dqn_bench.py        # about a minute on a 2-core CPU

For each setting: env steps/s while only acting and storing (before learning_starts), gradient
updates/s (train steps on a filled buffer, batch from the config), env steps/s of the whole loop
at the config's replay ratio, and bytes per stored transition. One torch thread: on a shared
2-core machine a second one spin-waits against the envs (measured 5-7x slower under load).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents.runtime.config import load_config  # noqa: E402
from agents.runtime.trainer import Trainer, segment_seed  # noqa: E402

SETTINGS = {
    # name: (config, overrides, env steps to time, train steps to time)
    "MiniGrid (minigrid_dqn)": ("minigrid_dqn.yaml", [], 4000, 200),
    "Atari modes (atari_modes_dqn, gymnasium backend)": ("atari_modes_dqn.yaml", [], 1600, 40),
    "Atari Breakout (ale_vector backend)": (
        "atari_modes_dqn.yaml", ["sequence.tasks=[{env_id: ALE/Breakout-v5}]"], 1600, 40),
}


def run_env_steps(agent, envs, env_steps: int, generator) -> float:
    """Seconds for env_steps env steps of the training loop (train steps due included)."""
    start, end = time.perf_counter(), agent.ctx.global_step + env_steps
    while agent.ctx.global_step < end:
        agent.train_iteration(envs, end - agent.ctx.global_step, generator)
    return time.perf_counter() - start


def measure(config: str, overrides: list[str], env_steps: int, train_steps: int) -> dict:
    # A buffer as large as the config's would only cost allocation time here.
    cfg = load_config(config, [*overrides, "torch_threads=1", "dqn.buffer_size=100000",
                               f"dqn.learning_starts={env_steps}"])
    trainer = Trainer(cfg)
    agent, task = trainer.agent, trainer.sequence.tasks[0]
    envs = trainer.env_factory.make_vector(task)
    agent.begin_task(envs, segment_seed(cfg.seed, 0))
    generator = torch.Generator().manual_seed(0)
    acting = env_steps / run_env_steps(agent, envs, env_steps, generator)  # nothing due yet

    start = time.perf_counter()
    for _ in range(train_steps):
        agent.train_step()
    updates = train_steps * agent.updates_per_train_step / (time.perf_counter() - start)

    loop_steps = train_steps * cfg.dqn.train_frequency  # as many train steps, inside the loop
    loop = loop_steps / run_env_steps(agent, envs, loop_steps, generator)
    envs.close()
    per_transition = agent.buffer.nbytes_per_transition
    return {"acting env steps/s": acting, "updates/s": updates,
            f"loop env steps/s (replay ratio {cfg.dqn.replay_ratio:g})": loop,
            "batch size": cfg.dqn.batch_size, "buffer bytes/transition": per_transition,
            "buffer MiB per 100k transitions": per_transition * 100_000 / 2**20}


def main() -> None:
    print(f"torch {torch.__version__}, 1 thread")
    for name, (config, overrides, env_steps, train_steps) in SETTINGS.items():
        results = measure(config, overrides, env_steps, train_steps)
        print(f"\n{name}")
        for key, value in results.items():
            print(f"  {key:<40} {value:>10,.0f}")


if __name__ == "__main__":
    main()
