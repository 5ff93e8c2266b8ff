"""`pliable train`: build everything, then open the run directory and train (resume.py continues
a stopped run in its directory)."""

from __future__ import annotations

import signal
import sys

from agents.runtime.logger import RunLogger
from agents.runtime.run_dir import log_config, new_run_dir, run_lock, save_config, write_status
from agents.runtime.safety import (
    Checkpointer,
    Diverged,
    DivergenceCheck,
    Stopped,
    divergence,
    stop_on_signals,
)
from agents.runtime.trainer import Trainer
from analysis.monitor.observer import SpectralMonitor


def build_trainer(cfg, observers=()) -> Trainer:
    """Envs, strategies, agent and monitor, all checked: bad input fails here, before a write."""
    trainer = Trainer(cfg, observers)
    if cfg.monitor.enabled:  # checks its settings against the network, writes nothing
        trainer.observers.append(SpectralMonitor.for_agent(cfg.monitor, trainer.agent))
    return trainer


def run_training(cfg, observers=(), stream=sys.stdout) -> int:
    trainer = build_trainer(cfg, observers)
    run_dir = new_run_dir(cfg)
    save_config(run_dir, cfg)
    with run_lock(run_dir):
        logger = RunLogger(run_dir, trainer.sequence.total_steps, cfg.print_every, stream)
        log_config(logger.writer, cfg)
        return train_in(run_dir, trainer, logger, stream)


def train_in(run_dir, trainer, logger, stream=sys.stdout, restore=None) -> int:
    """Train to the end in `run_dir` (from the start, or from a checkpoint through `restore`, see
    Trainer.run), keeping status.json and the checkpoints current; returns the exit status."""
    ctx = trainer.ctx
    checkpointer = Checkpointer(trainer, run_dir, trainer.cfg.checkpoint, ctx.global_step)
    trainer.observers = [DivergenceCheck(), *trainer.observers, checkpointer]
    write_status(run_dir, "running", step=ctx.global_step)
    print(f"run directory: {run_dir}", file=stream, flush=True)
    resume = f"resume with: python train.py --resume {run_dir}"
    try:
        with stop_on_signals(checkpointer):
            trainer.run(logger, run_dir, restore=restore)
    except Stopped as stop:
        write_status(run_dir, "interrupted", step=ctx.global_step, checkpoint=str(stop.checkpoint))
        print(f"\n{signal.Signals(stop.signum).name}: stopped at step {ctx.global_step:,}, "
              f"checkpoint {stop.checkpoint}\n{resume}", file=stream)
        return 128 + stop.signum
    except KeyboardInterrupt:  # a second signal, or a Ctrl-C while no handler is installed
        last = checkpointer.last_path
        write_status(run_dir, "interrupted", step=ctx.global_step, checkpoint=last and str(last))
        print(f"\ninterrupted at step {ctx.global_step:,}; the last checkpoint is {last}\n{resume}",
              file=stream)
        return 130
    except Diverged as exc:
        return report_divergence(run_dir, exc, checkpointer.last_path)
    except Exception as exc:
        what = nonfinite_after_error(trainer)  # a NaN often fails a check first (logits, ...)
        if what is None:
            write_status(run_dir, "failed", step=ctx.global_step, error=repr(exc))
            raise
        diverged = Diverged(ctx.global_step, f"{what} ({type(exc).__name__} raised)")
        return report_divergence(run_dir, diverged, checkpointer.last_path)
    except BaseException as exc:
        write_status(run_dir, "failed", step=ctx.global_step, error=repr(exc))
        raise
    finally:
        logger.close()
    write_status(run_dir, "finished", step=ctx.global_step)
    print(f"done: {ctx.global_step:,} env steps in {run_dir}\n"
          f"view the curves: tensorboard --logdir {run_dir.parent}", file=stream)
    return 0


def nonfinite_after_error(trainer) -> str | None:
    try:
        return divergence(trainer.agent)
    except Exception:  # the error broke the device too (CUDA errors persist): report the first
        return None


def report_divergence(run_dir, exc: Diverged, last_checkpoint) -> int:
    """status.json says failed (reason diverged, the step, the last good checkpoint); exit 1."""
    message = f"{exc}; the last good checkpoint is {last_checkpoint}" if last_checkpoint \
        else f"{exc}; no checkpoint was written before"
    write_status(run_dir, "failed", reason="diverged", step=exc.step, error=message,
                 checkpoint=last_checkpoint and str(last_checkpoint))
    print(f"error: {message}", file=sys.stderr)
    return 1
