"""`pliable train`: build everything, then open the run directory and train (resume.py continues
a stopped run in its directory).

A write that fails (a checkpoint, a side file, the event file, status.json, config.yaml: disk
full, permission lost) stops the run with one line on stderr, `error: writing <file>: [Errno 28]
No space left on device; the last good checkpoint is <path>`, and exit status 74 (EX_IOERR);
status.json says `{"status": "failed", "reason": "write_failed", ...}` with the error and that
checkpoint, or, if status.json cannot be written either, the line says so. A W&B run
(`logging.wandb`) that cannot start (not logged in, W&B unreachable) stops the run the same way
before training, with reason "wandb_failed" and exit status 69 (EX_UNAVAILABLE).
"""

from __future__ import annotations

import contextlib
import signal
import sys

from agents.runtime.checkpoints import DISK_ERRNOS, WriteFailed, os_message
from agents.runtime.logger import RunLogger
from agents.runtime.run_dir import (
    log_config,
    new_run_dir,
    read_status,
    run_lock,
    save_config,
    write_status,
)
from agents.runtime.safety import (
    Checkpointer,
    Diverged,
    DivergenceCheck,
    Stopped,
    divergence,
    stop_on_signals,
)
from agents.runtime.tb_layout import custom_scalars_layout
from agents.runtime.trainer import Trainer
from agents.runtime.wandb_sync import WandbFailed, with_run_id
from analysis.monitor.observer import SpectralMonitor


def build_trainer(cfg, observers=()) -> Trainer:
    """Envs, strategies, agent and monitor, all checked: bad input fails here, before a write."""
    trainer = Trainer(cfg, observers)
    if cfg.monitor.enabled:  # checks its settings against the network, writes nothing
        trainer.observers.append(SpectralMonitor.for_agent(cfg.monitor, trainer.agent))
    return trainer


EXIT_WRITE_FAILED = 74  # EX_IOERR of sysexits.h: a file could not be written
EXIT_WANDB_FAILED = 69  # EX_UNAVAILABLE: logging.wandb could not start its W&B run


def run_training(cfg, observers=(), stream=sys.stdout) -> int:
    trainer = build_trainer(cfg, observers)
    cfg = with_run_id(cfg)  # logging.wandb on: its W&B run's id, saved in config.yaml below
    try:
        run_dir = new_run_dir(cfg)
    except WriteFailed as exc:  # a full or read-only disk (bad paths are ConfigErrors)
        return report_write_failure(None, exc, None, 0)
    try:
        save_config(run_dir, cfg)
    except WriteFailed as exc:
        return report_write_failure(run_dir, exc, None, 0)
    with run_lock(run_dir):
        try:
            logger = RunLogger(run_dir, trainer.sequence.total_steps, cfg.print_every, stream,
                               config=cfg)
        except WriteFailed as exc:
            return report_write_failure(run_dir, exc, None, 0)
        except WandbFailed as exc:
            return report_wandb_failure(run_dir, exc, None, 0)
        log_config(logger.writer, cfg)
        logger.writer.add_custom_scalars(custom_scalars_layout(cfg))  # once: a resume keeps it
        return train_in(run_dir, trainer, logger, stream)


def train_in(run_dir, trainer, logger, stream=sys.stdout, restore=None, checkpoint=None) -> int:
    """Train to the end in `run_dir` (from the start, or from a checkpoint through `restore`, see
    Trainer.run; `checkpoint`: that checkpoint's path), keeping status.json and the checkpoints
    current; returns the exit status. The logger is closed however training ends (a W&B run
    finishes with that status; 1 when training raised)."""
    code = 1
    try:
        code = _train_in(run_dir, trainer, logger, stream, restore, checkpoint)
    finally:
        logger.close(code)
    return code


def _train_in(run_dir, trainer, logger, stream, restore, checkpoint) -> int:
    ctx = trainer.ctx
    checkpointer = Checkpointer(trainer, run_dir, trainer.cfg.checkpoint, ctx.global_step)
    checkpointer.last_path = checkpoint
    trainer.observers = [DivergenceCheck(), *trainer.observers, checkpointer]
    try:
        write_status(run_dir, "running", step=ctx.global_step)
    except WriteFailed as exc:
        return report_write_failure(run_dir, exc, checkpoint, ctx.global_step)
    print(f"run directory: {run_dir}", file=stream, flush=True)
    resume = f"resume with: python train.py --resume {run_dir}"
    try:
        with stop_on_signals(checkpointer):
            trainer.run(logger, run_dir, restore=restore)
        logger.flush()  # the final checkpoint flushed already: anything logged after it
    except Stopped as stop:
        try:
            write_status(run_dir, "interrupted", step=ctx.global_step,
                         checkpoint=str(stop.checkpoint))
        except WriteFailed as exc:
            return report_write_failure(run_dir, exc, stop.checkpoint, ctx.global_step)
        print(f"\n{signal.Signals(stop.signum).name}: stopped at step {ctx.global_step:,}, "
              f"checkpoint {stop.checkpoint}\n{resume}", file=stream)
        return 128 + stop.signum
    except KeyboardInterrupt:  # a second signal, or a Ctrl-C while no handler is installed
        last = checkpointer.last_path
        try:
            write_status(run_dir, "interrupted", step=ctx.global_step,
                         checkpoint=last and str(last))
        except WriteFailed as exc:
            return report_write_failure(run_dir, exc, last, ctx.global_step)
        print(f"\ninterrupted at step {ctx.global_step:,}; the last checkpoint is {last}\n{resume}",
              file=stream)
        return 130
    except Diverged as exc:
        return report_divergence(run_dir, exc, checkpointer.last_path)
    except WriteFailed as exc:
        return report_write_failure(run_dir, exc, checkpointer.last_path, ctx.global_step)
    except Exception as exc:
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
            failed = WriteFailed(f"writing {exc.filename or 'a file of the run'}", exc)
            return report_write_failure(run_dir, failed, checkpointer.last_path, ctx.global_step)
        what = nonfinite_after_error(trainer)  # a NaN often fails a check first (logits, ...)
        if what is None:
            with contextlib.suppress(WriteFailed):  # the error itself is the one to report
                write_status(run_dir, "failed", step=ctx.global_step, error=repr(exc))
            raise
        diverged = Diverged(ctx.global_step, f"{what} ({type(exc).__name__} raised)")
        return report_divergence(run_dir, diverged, checkpointer.last_path)
    except BaseException as exc:
        with contextlib.suppress(WriteFailed):
            write_status(run_dir, "failed", step=ctx.global_step, error=repr(exc))
        raise
    try:
        write_status(run_dir, "finished", step=ctx.global_step)
    except WriteFailed as exc:
        return report_write_failure(run_dir, exc, checkpointer.last_path, ctx.global_step)
    print(f"done: {ctx.global_step:,} env steps in {run_dir}\n"
          f"view the curves: tensorboard --logdir {run_dir.parent}", file=stream)
    return 0


def report_write_failure(run_dir, exc: WriteFailed, last_checkpoint, step: int) -> int:
    """A file could not be written: exit status 74."""
    report_failure(run_dir, "write_failed", exc, step, last_checkpoint)
    return EXIT_WRITE_FAILED


def report_wandb_failure(run_dir, exc: WandbFailed, last_checkpoint, step: int) -> int:
    """The W&B run could not start (before any training): exit status 69."""
    report_failure(run_dir, "wandb_failed", exc, step, last_checkpoint)
    return EXIT_WANDB_FAILED


def report_failure(run_dir, reason: str, exc: Exception, step: int, last_checkpoint) -> None:
    """One line on stderr naming `exc` and the last good checkpoint; status.json failed (the
    reason, the step, that line, the checkpoint), or the line says why status.json is not."""
    message = f"{exc}; the last good checkpoint is {last_checkpoint}" if last_checkpoint \
        else f"{exc}; no checkpoint was written before"
    if run_dir is not None:
        try:
            write_status(run_dir, "failed", reason=reason, step=step, error=message,
                         checkpoint=last_checkpoint and str(last_checkpoint))
        except WriteFailed as status_failed:
            said = read_status(run_dir).get("status")
            message += ("; status.json could not be updated either "
                        f"({os_message(status_failed.error)})"
                        + (f" and still says '{said}'" if said else ""))
    print(f"error: {message}", file=sys.stderr)


def nonfinite_after_error(trainer) -> str | None:
    try:
        return divergence(trainer.agent)
    except Exception:  # the error broke the device too (CUDA errors persist): report the first
        return None


def report_divergence(run_dir, exc: Diverged, last_checkpoint) -> int:
    """Training diverged: exit status 1."""
    report_failure(run_dir, "diverged", exc, exc.step, last_checkpoint)
    return 1
