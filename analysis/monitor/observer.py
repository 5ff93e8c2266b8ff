"""The spectral monitor: the Hessian spectrum of the agent's own loss at every task boundary, and
feature-level plasticity metrics during training, in TensorBoard, `.npz` files and the console.

When (boundary `b` = the start of schedule segment `b`; the last boundary is the end of the run):
- `post` at `on_task_start`: a fresh batch of the new task, collected before any update on it by
  `agent.probe_batch` on envs the monitor builds (and closes) itself;
- `pre` at `on_task_end` (before the env swap, so the old task): with `monitor.pre_batch=fresh`
  (the default, as He et al.) a fresh batch of the old task collected the same way with the
  current parameters, so PPO's ratio is 1; with `last` the agent's last training batch of the
  old task (`agent.last_batch`: stale log-probabilities, PPO's clipping active);
- with `monitor.every_steps`, also on the latest training batch every N env steps (`periodic`);
- `plasticity/*` feature metrics on the latest training batch every `monitor.metrics_every`
  gradient updates.
An observer: every hook runs with the global RNGs (torch, numpy, random) saved and restored, on
its own seeds; nothing writes `.grad`, flips train/eval, or moves the agent's counters, so a run
with the monitor on follows the same trajectory as with it off.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from agents.base import derive_seed, forked_rng
from agents.errors import ConfigError
from agents.run_view import Observer, RunView
from analysis.monitor.measure import Measurement, measure_spectrum, plasticity_metrics
from analysis.monitor.outputs import density_figure, log_measurement, save_npz, summary_line

PHASES = ("pre", "post", "periodic", "metrics")  # position = the phase's part of its seeds


class SpectralMonitor(Observer):
    def __init__(self, settings, num_params: int):
        """``settings`` is the MonitorConfig; ``num_params`` the network's, to check top_k."""
        most = num_params - 1 if settings.method == "eigsh" else num_params
        if settings.top_k > most:
            raise ConfigError(f"monitor.top_k ({settings.top_k}) must be at most {most} for "
                              f"method={settings.method} on this {num_params}-parameter network")
        self.settings = settings
        self.seconds = {"spectrum": 0.0, "metrics": 0.0}  # wall time spent, by kind of work
        self._pending_pre: tuple[str, Measurement] | None = None  # shown with the next post
        self._task_start_params: dict[str, torch.Tensor] = {}
        self._next_metrics = settings.metrics_every
        self._next_periodic = settings.every_steps

    @classmethod
    def for_agent(cls, settings, agent) -> SpectralMonitor:
        """The monitor of `agent` with `settings` (the run's `monitor:` section)."""
        return cls(settings, sum(p.numel() for p in agent.network.parameters()))

    # -- loop events -------------------------------------------------------------------------
    def on_task_start(self, run: RunView, segment) -> None:
        with self._observing(run):
            agent = run.agent
            self._task_start_params = {name: p.detach().clone()
                                       for name, p in agent.network.named_parameters()}
            seed = self.seed_for(segment.index, "post")
            batch = self.fresh_batch(run, segment, seed)
            post = self._measure(run, batch, seed, f"switch_{segment.index:03d}_post", "post",
                                 segment.start, segment.task.name)
            measured, label = {"post": post}, f"start → {segment.task.name}"
            if self._pending_pre is not None:
                old_task, pre = self._pending_pre
                measured, label = {"pre": pre, "post": post}, f"{old_task} → {segment.task.name}"
                self._pending_pre = None
            self._report(run, segment.start, label, measured)

    def on_task_end(self, run: RunView, segment) -> None:
        with self._observing(run):
            boundary = segment.index + 1
            seed = self.seed_for(boundary, "pre")
            batch = self.pre_batch(run, segment, seed)
            if batch is None:
                return  # `last`, and no training batch on this task (a DQN filling its buffer)
            pre = self._measure(run, batch, seed, f"switch_{boundary:03d}_pre", "pre",
                                segment.end, segment.task.name)
            if segment.index == len(run.sequence) - 1:
                self._report(run, segment.end, f"{segment.task.name} → end", {"pre": pre})
            else:
                self._pending_pre = (segment.task.name, pre)

    def after_iteration(self, run: RunView) -> None:
        step, updates = run.ctx.global_step, run.ctx.update_count
        batch = run.agent.last_batch
        every, metrics_every = self.settings.every_steps, self.settings.metrics_every
        if every and step >= self._next_periodic:
            self._next_periodic = (step // every + 1) * every
            if batch is not None and step < run.segment.end:  # at the end: `pre` measures
                with self._observing(run):
                    seed = self.seed_for(step, "periodic")
                    measured = self._measure(run, batch, seed, f"step_{step:09d}",
                                             "periodic", step, run.segment.task.name)
                    self._report(run, step, run.segment.task.name,
                                 {"periodic": measured}, figure=False)
        if metrics_every and updates >= self._next_metrics and batch is not None:
            self._next_metrics = (updates // metrics_every + 1) * metrics_every
            with self._observing(run, "metrics"):
                seed = self.seed_for(updates, "metrics")
                metrics = plasticity_metrics(run.agent, self.subsample(batch, seed),
                                             self._task_start_params, self.settings, seed)
                run.log.scalars({f"plasticity/{k}": v for k, v in metrics.items()}, step)

    # -- checkpoints (agents/runtime/checkpoints.py) -------------------------------------------
    def state_dict(self) -> dict:
        """What a resumed run needs: the schedules and the task's starting weights (checkpoints
        fall inside a segment or at its start, so no `pre` measurement is pending)."""
        return {"next_metrics": self._next_metrics, "next_periodic": self._next_periodic,
                "task_start_params": self._task_start_params}

    def load_state_dict(self, state: dict) -> None:
        self._next_metrics, self._next_periodic = state["next_metrics"], state["next_periodic"]
        self._task_start_params = state["task_start_params"]

    # -- helpers ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _observing(self, run: RunView, kind: str = "spectrum"):
        """Global RNG states and torch's thread count restored afterwards, the time counted.

        One thread by default: the monitor's thousands of small sequential products gain little
        from a second one and lose the most when cores are shared (MiniGrid measurement on a
        loaded 2-core machine: 1.6-2.2 s with one thread, 12-24 s with two)."""
        start = time.perf_counter()
        numpy_state, python_state = np.random.get_state(), random.getstate()
        threads = torch.get_num_threads()
        try:
            if self.settings.threads:
                torch.set_num_threads(self.settings.threads)
            with forked_rng(run.ctx.device):
                yield
        finally:
            torch.set_num_threads(threads)
            np.random.set_state(numpy_state)
            random.setstate(python_state)
            self.seconds[kind] += time.perf_counter() - start

    def seed_for(self, key: int, phase: str) -> int:
        """A seed of its own for every measurement."""
        return derive_seed(self.settings.seed, PHASES.index(phase), key)

    def subsample(self, batch, seed: int):
        if len(batch) <= self.settings.batch_size:
            return batch
        generator = torch.Generator().manual_seed(seed)
        index = torch.randperm(len(batch), generator=generator)[: self.settings.batch_size]
        return batch.index(index.to(batch.obs.device))

    def pre_batch(self, run: RunView, segment, seed: int):
        """What `pre` measures at the end of `segment` (`monitor.pre_batch`): `fresh`, a fresh
        batch of its task (`fresh_batch`: the current parameters' own rollout, so PPO's ratio is
        1 and its clipping inactive; DQN's TD loss on fresh ε-greedy transitions against the
        current target network); `last`, the agent's last training batch (PPO's log-probs from
        before its last update, DQN's last minibatch), None when it has none."""
        if self.settings.pre_batch == "fresh":
            return self.fresh_batch(run, segment, seed)
        return run.agent.last_batch

    def fresh_batch(self, run: RunView, segment, seed: int):
        """A batch of `segment`'s task (the new one for `post`, the old one for a fresh `pre`)
        from probe envs of the monitor's own, reset with `seed` (training envs and their RNG
        untouched), with the current policy: `ceil(batch_size / num_envs)` steps per env."""
        envs = run.env_factory.make_vector(segment.task)  # as many envs as training's
        try:
            steps = math.ceil(self.settings.batch_size / envs.num_envs)
            return run.agent.probe_batch(envs, steps, seed)
        finally:
            envs.close()

    def _measure(self, run: RunView, batch, seed: int, stem: str, phase: str, step: int,
                 task: str) -> Measurement:
        measured = measure_spectrum(run.agent, self.subsample(batch, seed), self.settings, seed)
        save_npz(Path(run.run_dir) / "spectra" / f"{stem}.npz", measured, step=step,
                 phase=phase, task=task)
        log_measurement(run.log.writer, phase, measured, step)
        return measured

    def _report(self, run: RunView, step: int, label: str, measured: dict[str, Measurement],
                figure: bool = True) -> None:
        print(summary_line(step, label, measured), file=run.log.stream, flush=True)
        if figure:
            run.log.writer.add_figure(
                "spectrum/density_plot", density_figure(f"step {step:,}: {label}", measured,
                                                        self.settings.density_kernel), step)
