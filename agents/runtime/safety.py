"""When checkpoints are written, and the two ways a run stops early: a signal, or divergence.

The Checkpointer is the trainer's last observer (DivergenceCheck its first), so everything logged
at a step is in the event file before a checkpoint of that step is written (TensorBoard resumes
with purge_step = step + 1).
It writes:
- a periodic checkpoint once `checkpoint.every` env steps have passed since the last checkpoint,
  after an iteration that ends inside a segment;
- a switch checkpoint at every segment's start (after the switch's strategies and env swap,
  before any update on the new task); one is also written there when a periodic one fell due at
  the segment's end, or a stop was requested there, since a run can only resume inside a segment
  or at its start;
- the final checkpoint at the end of the run.
SIGINT/SIGTERM set a flag: the current iteration finishes, a checkpoint is written and the run
stops with `Stopped`. A second signal stops at once (KeyboardInterrupt), the last checkpoint kept.
Before every checkpoint the event file is flushed; a write that fails there or in the checkpoint
raises WriteFailed (checkpoints.py), and `last_path` stays the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path

import torch

from agents.run_view import Observer
from agents.runtime.checkpoints import WriteFailed, checkpoint_path, prune, save_trainer

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(Exception):
    """A signal stopped the run after a checkpoint was written; exit status 128 + signal."""

    def __init__(self, signum: int, checkpoint: Path):
        super().__init__(f"{signal.Signals(signum).name}: stopped at {checkpoint}")
        self.signum, self.checkpoint = signum, checkpoint


class Diverged(Exception):
    """A NaN/Inf loss or parameter; the run stops without checkpointing the diverged state."""

    def __init__(self, step: int, what: str):
        super().__init__(f"training diverged at step {step:,}: {what}")
        self.step = step


def divergence(agent) -> str | None:
    """What is not finite (a loss of any gradient step since the start, or the parameters now),
    or None. One host sync: call once per iteration."""
    norm = torch.nn.utils.get_total_norm([p.detach() for p in agent.network.parameters()])
    bad_loss, bad_params = torch.stack([agent.learner.nonfinite_loss, ~norm.isfinite()]).tolist()
    if bad_loss:
        return "a gradient step's loss was NaN or Inf"
    return "the parameters are NaN or Inf" if bad_params else None


class DivergenceCheck(Observer):
    """The first observer: stops a diverged run before anyone measures or saves it."""

    def after_iteration(self, run) -> None:
        self.check(run)

    def on_task_start(self, run, segment) -> None:  # a switch's strategies edit weights
        self.check(run)

    @staticmethod
    def check(run) -> None:
        what = divergence(run.agent)
        if what is not None:
            raise Diverged(run.ctx.global_step, what)


class Checkpointer(Observer):
    """Saves `trainer` (the runtime's own observer: a checkpoint is the whole trainer's state,
    RNGs and envs included, which no other observer may touch)."""

    def __init__(self, trainer, run_dir: Path, settings, start_step: int = 0):
        self.trainer, self.run_dir, self.settings = trainer, Path(run_dir), settings
        self.last_step = start_step  # step of the newest checkpoint (or where training began)
        self.last_path: Path | None = None  # the newest good checkpoint
        self.signum: int | None = None  # set by the signal handler

    def after_iteration(self, run) -> None:
        step = run.ctx.global_step
        if step >= run.segment.end:  # the next segment's start takes over
            return
        if self._due(step) or self.signum is not None:
            self.save("periodic")

    def on_task_start(self, run, segment) -> None:
        if self.settings.at_switch or self._due(segment.start) or self.signum is not None:
            self.save("switch")

    def on_run_end(self, run) -> None:
        DivergenceCheck.check(run)
        self.save("final")

    def save(self, kind: str) -> None:
        trainer = self.trainer
        trainer.logger.flush()  # the events up to this step are on disk before it is claimed
        path = checkpoint_path(self.run_dir, kind, trainer)
        save_trainer(trainer, path, kind, self.settings.save_replay)
        self.last_step, self.last_path = trainer.ctx.global_step, path
        try:
            prune(self.run_dir, trainer.sequence, self.settings.keep_last)
        except OSError as exc:
            raise WriteFailed(f"removing old checkpoints in {path.parent}", exc) from None
        if self.signum is not None and kind != "final":
            raise Stopped(self.signum, path)

    def _due(self, step: int) -> bool:
        every = self.settings.every
        return bool(every) and step // every > self.last_step // every


@contextlib.contextmanager
def stop_on_signals(checkpointer: Checkpointer):
    """SIGINT/SIGTERM ask `checkpointer` to stop after a checkpoint; a second one stops now.
    Only the main thread can install handlers: elsewhere (a thread pool) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, frame):
        if checkpointer.signum is not None:
            raise KeyboardInterrupt
        checkpointer.signum = signum
        message = (f"\n{signal.Signals(signum).name}: finishing this update, then writing a "
                   "checkpoint (send it again to stop at once)\n")
        with contextlib.suppress(OSError):  # os.write: print() is not safe inside a handler
            os.write(2, message.encode())

    previous = {signum: signal.signal(signum, handle) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
