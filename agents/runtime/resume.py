"""`python train.py --resume RUN_DIR`: continue a stopped run in its own directory, exactly.

From the newest checkpoint come the agent (networks, optimizer, strategies, counters, the DQN
replay buffer), the envs (fresh ones stepped through the live segment's recorded actions,
envs/recorder.py), the RNG states and the TensorBoard position (what the stopped process logged
after the checkpoint is hidden by purge_step). On CPU the result equals, bit for bit, the run
that was never stopped (tests/test_resume.py).
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

import torch

from agents.errors import ConfigError
from agents.runtime.checkpoints import (
    CHECKPOINT_DIR,
    CheckpointError,
    WriteFailed,
    list_checkpoints,
    load_checkpoint,
    load_trainer_state,
    set_rng_state,
)
from agents.runtime.config import load_config
from agents.runtime.launch import (
    build_trainer,
    report_wandb_failure,
    report_write_failure,
    train_in,
)
from agents.runtime.logger import RunLogger
from agents.runtime.run_dir import run_lock, save_config
from agents.runtime.wandb_sync import WandbFailed
from envs.tasks import TaskSequence

# Settings that leave the trajectory as it is; anything else would make a different run.
RESUME_OVERRIDES = ("print_every", "checkpoint.every", "checkpoint.keep_last",
                    "checkpoint.save_replay", "checkpoint.at_switch")


def resume_training(run_dir: str | Path, overrides=(), stream=sys.stdout) -> int:
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"--resume {run_dir}: not a run directory (it has no config.yaml)")
    for override in overrides:
        if override.split("=", 1)[0] not in RESUME_OVERRIDES:
            raise ConfigError(f"--resume: '{override}' would change the run; on resume only "
                              f"{', '.join(RESUME_OVERRIDES)} may be set")
    cfg = load_config(run_dir / "config.yaml", overrides)
    with run_lock(run_dir):
        path = newest_checkpoint(run_dir, TaskSequence.from_config(cfg.sequence, cfg.seed))
        state = load_checkpoint(path, cfg.device)
        if state["kind"] == "final":
            print(f"{run_dir} finished at step {state['step']:,}: nothing to resume", file=stream)
            return 0
        trainer = build_trainer(cfg)
        try:
            missing = load_trainer_state(trainer, state, path)
        except CheckpointError:
            raise
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{path} does not belong to this run "
                                  f"({str(exc).strip().splitlines()[0]})") from None
        notes = [trainer.agent.without_side_file(name, state["step"]) for name in missing]
        try:
            if overrides:
                save_config(run_dir, cfg)
            # logging.wandb on: the same W&B run (its id is in config.yaml), resume="allow"
            logger = RunLogger(run_dir, trainer.sequence.total_steps, cfg.print_every, stream,
                               resume_step=state["step"], config=cfg)
        except WriteFailed as exc:
            return report_write_failure(run_dir, exc, path, state["step"])
        except WandbFailed as exc:
            return report_wandb_failure(run_dir, exc, path, state["step"])
        logger.task_label = state["logger"]["task_label"]
        logger.recent_returns.extend(state["logger"]["recent_returns"])
        print(f"resuming {run_dir} from {path.name} at step {state['step']:,}", file=stream)
        for note in notes:
            print(note, file=stream)
        restore = functools.partial(rebuild_envs, state=state, stream=stream)
        return train_in(run_dir, trainer, logger, stream, restore, checkpoint=path)


def newest_checkpoint(run_dir: Path, sequence) -> Path:
    checkpoints = list_checkpoints(run_dir, sequence)
    if not checkpoints:
        raise ConfigError(f"--resume {run_dir}: no checkpoint in {run_dir / CHECKPOINT_DIR} "
                          "(the run stopped before writing one: start it again)")
    return checkpoints[-1][1]


def rebuild_envs(trainer, segment, state: dict, stream) -> None:
    """Trainer.run's `restore`: fresh envs of the live segment stepped through the recorded
    actions, then the RNG states (after building envs, which must not disturb them)."""
    if segment.index != state["segment"]:
        raise CheckpointError(f"the checkpoint at step {state['step']:,} says segment "
                              f"{state['segment']}, this run's schedule says {segment.index}")
    start = time.perf_counter()
    envs = trainer.make_envs(segment)
    obs = envs.replay(state["envs"])
    if not torch.equal(torch.as_tensor(obs), trainer.agent.next_observation().cpu()):
        envs.close()
        raise CheckpointError(f"replaying the recorded actions on task {segment.task.name} did "
                              "not reproduce the saved observation: its env is not deterministic "
                              "given its seed and actions, so this run cannot resume exactly")
    trainer.enter(segment, envs)
    set_rng_state(trainer, state["rng"])
    print(f"rebuilt the envs of {segment.task.name}: {envs.count * envs.num_envs:,} env steps "
          f"replayed in {time.perf_counter() - start:.1f} s", file=stream, flush=True)
