"""TensorBoard scalars with CleanRL's tags, plus the console progress line."""

from __future__ import annotations

import collections
import sys
import time

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter


class RunLogger:
    def __init__(self, run_dir, total_steps: int, print_every: float = 5.0, stream=sys.stdout,
                 resume_step: int | None = None):
        """`resume_step`: continue a run's event files from a checkpoint at that step; whatever
        the earlier process logged after it is hidden (TensorBoard's purge_step)."""
        purge_step = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(str(run_dir), purge_step=purge_step)
        self.total_steps = total_steps
        self.print_every = print_every
        self.stream = stream
        self.recent_returns: collections.deque = collections.deque(maxlen=20)
        self.task_label = ""
        self._last_print = 0.0
        self._sps_clock = (time.perf_counter(), resume_step or 0)

    def scalars(self, values: dict, step: int) -> None:
        """Tensors are read back to the host once here, not per gradient step."""
        for tag, value in values.items():
            if isinstance(value, torch.Tensor):
                value = value.item()
            self.writer.add_scalar(tag, float(value), step)

    def episodes(self, episodes, task_name: str) -> None:
        """Finished episodes (agents.base.Episode), each at the step it ended."""
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

    def close(self) -> None:
        self.writer.close()
