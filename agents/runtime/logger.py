"""TensorBoard scalars with CleanRL's tags, plus the console progress line.

TensorBoard writes the event file from a background thread (tensorboard's EventFileWriter). An
OSError there (disk full, permission lost) would kill that thread with a traceback of its own,
and resurface on the main thread at some later `add_*` call, wherever that is. Instead the
thread's record writer keeps the first error and writes nothing after it (a file that ends early,
no gap in it), and RunLogger raises it as WriteFailed at its next call, and at `flush`, which the
Checkpointer calls before every checkpoint: no checkpoint claims events that are not on disk.

With `logging.wandb` on, the logger starts the W&B run (wandb_sync.py) before its writer, which
wandb then mirrors, and finishes it when it closes.
"""

from __future__ import annotations

import collections
import contextlib
import sys
import threading
import time

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

from agents.runtime.checkpoints import WriteFailed
from agents.runtime.wandb_sync import WandbRun


class RunLogger:
    def __init__(self, run_dir, total_steps: int, print_every: float = 5.0, stream=sys.stdout,
                 resume_step: int | None = None, config=None):
        """`resume_step`: continue a run's event files from a checkpoint at that step; whatever
        the earlier process logged after it is hidden (TensorBoard's purge_step). `config`: the
        run's resolved config, whose `logging.wandb` may turn the W&B mirror on."""
        purge_step = None if resume_step is None else resume_step + 1
        mirrored = config is not None and config.logging.wandb.enabled
        self.wandb = WandbRun(config) if mirrored else None
        mirror = self.wandb.mirroring(run_dir) if mirrored else contextlib.nullcontext()
        try:
            with quiet_event_thread(), mirror:
                self.writer = SummaryWriter(str(run_dir), purge_step=purge_step)
        except OSError as exc:
            if self.wandb:
                self.wandb.finish(1)
            raise WriteFailed(f"writing the TensorBoard events in {run_dir}", exc) from None
        self._events = EventWriteGuard.install(self.writer)
        self.event_file = getattr(self._events, "file_name", f"in {run_dir}")
        self.total_steps = total_steps
        self.print_every = print_every
        self.stream = stream
        self.recent_returns: collections.deque = collections.deque(maxlen=20)
        self.task_label = ""
        self._last_print = 0.0
        self._sps_clock = (time.perf_counter(), resume_step or 0)

    def scalars(self, values: dict, step: int) -> None:
        """Tensors are read back to the host once here, not per gradient step."""
        self.check()
        for tag, value in values.items():
            if isinstance(value, torch.Tensor):
                value = value.item()
            self.writer.add_scalar(tag, float(value), step)

    def episodes(self, episodes, task_name: str) -> None:
        """Finished episodes (agents.base.Episode), each at the step it ended."""
        self.check()
        for episode in episodes:
            self.writer.add_scalar("charts/episodic_return", episode.ret, episode.step)
            self.writer.add_scalar("charts/episodic_length", episode.length, episode.step)
            self.writer.add_scalar(f"task/{task_name}/episodic_return", episode.ret, episode.step)
            self.recent_returns.append(float(episode.ret))

    def start_task(self, label: str, task_index: int, step: int) -> None:
        self.task_label = label
        self.recent_returns.clear()
        self.writer.add_scalar("charts/task_index", task_index, step)

    def sps(self, step: int) -> int:
        """Env steps per second since the previous call; logged as charts/SPS."""
        now = time.perf_counter()
        then, then_step = self._sps_clock
        self._sps_clock = (now, step)
        rate = int((step - then_step) / max(now - then, 1e-9))
        self.writer.add_scalar("charts/SPS", rate, step)
        return rate

    def progress(self, step: int, sps: int, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last_print < self.print_every:
            return
        self._last_print = now
        ret = f"{np.mean(self.recent_returns):.3g}" if self.recent_returns else "-"
        print(f"step {step:>10,}/{self.total_steps:,} ({100 * step / self.total_steps:3.0f}%) | "
              f"SPS {sps:>6,} | {self.task_label} | return {ret} (last "
              f"{len(self.recent_returns)} ep)", file=self.stream, flush=True)

    def check(self) -> None:
        """WriteFailed if an event could not be written (by the writer's thread, since)."""
        error = self._events and self._events.error
        if error is not None:
            raise WriteFailed(f"writing the TensorBoard events {self.event_file}", error)

    def flush(self) -> None:
        """Every event logged so far written to the file (the OS has it), or WriteFailed."""
        try:
            self.writer.flush()
        except OSError as exc:  # a tensorboard whose thread the guard could not reach
            raise WriteFailed(f"writing the TensorBoard events {self.event_file}", exc) from None
        self.check()

    def close(self, exit_code: int = 0) -> None:
        """Never raises: on the way out of a failed run the first error is the one to report.
        The W&B run, if any, finishes after the event file is complete, with `exit_code`."""
        with contextlib.suppress(OSError):
            self.writer.close()
        if self.wandb:
            self.wandb.finish(exit_code)


class EventWriteGuard:
    """Wraps the record writer that tensorboard's writer thread calls: the first OSError is kept
    in `error`, not raised in the thread, and nothing is written after it."""

    def __init__(self, records, file_name: str | None):
        self.error: OSError | None = None
        self.file_name = file_name
        for name in ("write", "flush"):
            setattr(records, name, self._guarded(getattr(records, name)))

    @classmethod
    def install(cls, writer: SummaryWriter) -> EventWriteGuard | None:
        """None if this tensorboard is built otherwise: its own error path then applies."""
        try:
            events = writer._get_file_writer().event_writer
            records = events._async_writer._writer
            return cls(records, getattr(events, "_file_name", None))
        except AttributeError:
            return None

    def _guarded(self, call):
        def guarded(*args):
            if self.error is not None:
                return None
            try:
                return call(*args)
            except OSError as exc:
                self.error = exc
                return None
        return guarded


@contextlib.contextmanager
def quiet_event_thread():
    """While the writer opens its file (before the guard is in place): an OSError in its thread
    is raised again by the main thread's flush, so the thread's own traceback is not printed."""
    previous = threading.excepthook

    def hook(args):
        if not (issubclass(args.exc_type, OSError)
                and type(args.thread).__name__ == "_AsyncWriterThread"):
            previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous
