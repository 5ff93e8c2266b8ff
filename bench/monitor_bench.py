"""What the spectral monitor costs: its share of a run's wall time, and one Hessian-vector product
against one training gradient step.

    .venv/bin/python bench/monitor_bench.py                 # MiniGrid default, then Atari (short)
    .venv/bin/python bench/monitor_bench.py --skip-atari    # ~1.5 min on a 2-core CPU
    .venv/bin/python bench/monitor_bench.py --skip-atari --full   # the whole default run

Each config is trained shortened (fewer env steps per task, the same per-measurement work), with
the monitor's default settings. The monitor times its own hooks, so its share is measured
directly; the share for the full config is projected: training time scales with env steps,
spectrum time with the number of measurements (pre and post at every boundary), feature-metric
time with the number of calls (one every `monitor.metrics_every` gradient updates; one call is
timed on its own, since a short Atari run makes none). The Atari part takes ~5-7 min: one
measurement on the Nature CNN is ~2 min on one core.
"""

from __future__ import annotations

import argparse
import copy
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents.runtime.config import load_config  # noqa: E402
from agents.runtime.logger import RunLogger  # noqa: E402
from agents.runtime.trainer import Trainer  # noqa: E402
from analysis.monitor.measure import loss_closure, plasticity_metrics  # noqa: E402
from analysis.monitor.observer import SpectralMonitor  # noqa: E402
from analysis.spectral.hessian import HessianOperator  # noqa: E402
from bench.timing import seconds_per_call  # noqa: E402
from envs.tasks import TaskSequence  # noqa: E402

SETTINGS = {
    # name: (config, overrides of the full run, overrides that shorten it)
    "MiniGrid default (minigrid_ppo)": ("minigrid_ppo.yaml", [], ["sequence.switch_every=25000"]),
    "Atari cycle (atari_cycle_ppo), one task": (
        "atari_cycle_ppo.yaml", [], ["sequence.tasks=[{env_id: ALE/Pong-v5}]",
                                     "sequence.cycles=1", "sequence.switch_every=2048"]),
}


def timed_run(cfg, run_dir: Path):
    """Train with the monitor on; returns (wall seconds, monitor, trainer, torch threads)."""
    trainer = Trainer(cfg)
    threads = torch.get_num_threads()
    monitor = SpectralMonitor.for_agent(cfg.monitor, trainer.agent)
    trainer.observers.append(monitor)
    logger = RunLogger(run_dir, trainer.sequence.total_steps, 1e9, io.StringIO())
    start = time.perf_counter()
    trainer.run(logger, run_dir)
    wall = time.perf_counter() - start
    logger.close()
    return wall, monitor, trainer, threads


def monitored_batch(trainer, monitor):
    seed = monitor.seed_for(0, "post")
    batch = monitor.fresh_batch(trainer.view, trainer.sequence.segment(0), seed)
    return monitor.subsample(batch, seed)


def hvp_vs_gradient_step(agent, batch, repeats: int = 10) -> tuple[float, float]:
    """Seconds of one HVP of the agent's loss and of one gradient step (forward, backward, Adam)
    on the same batch, the step on a copy of the network."""
    operator = HessianOperator(loss_closure(agent, batch), dict(agent.network.named_parameters()))
    vector = torch.randn(operator.dim, generator=torch.Generator().manual_seed(0))
    network = copy.deepcopy(agent.network)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-8)

    def gradient_step():
        optimizer.zero_grad(set_to_none=True)
        agent.loss(batch, lambda obs: network(obs, return_features=True))[0].backward()
        optimizer.step()

    return (seconds_per_call(lambda: operator.matvec(vector), repeats),
            seconds_per_call(gradient_step, repeats))


def bench(name: str, config: str, full_overrides: list[str], short_overrides: list[str],
          extra: list[str]) -> None:
    full = load_config(config, [*full_overrides, *extra])
    with tempfile.TemporaryDirectory() as tmp:
        short = load_config(config, [*full_overrides, *short_overrides, *extra,
                                     f"runs_root={tmp}", "monitor.enabled=true"])
        wall, monitor, trainer, threads = timed_run(short, Path(tmp) / "run")
        batch = monitored_batch(trainer, monitor)
        hvp, step = hvp_vs_gradient_step(trainer.agent, batch)
        start_params = {k: v.detach().clone() for k, v in trainer.agent.network.named_parameters()}
        metrics_call = seconds_per_call(lambda: plasticity_metrics(
            trainer.agent, batch, start_params, short.monitor, seed=0), calls=1)
    spectrum, metrics = monitor.seconds["spectrum"], monitor.seconds["metrics"]
    training = wall - spectrum - metrics
    measurements = 2 * len(trainer.sequence)
    full_sequence = TaskSequence.from_config(full.sequence, full.seed)
    scale = full_sequence.total_steps / trainer.sequence.total_steps
    full_spectrum = spectrum / measurements * 2 * len(full_sequence)
    every = full.monitor.metrics_every
    full_metrics = metrics_call * (trainer.ctx.update_count * scale // every if every else 0)
    full_monitor = full_spectrum + full_metrics
    full_wall = training * scale + full_monitor
    params = sum(p.numel() for p in trainer.agent.network.parameters())
    print(f"\n{name}: {params:,} parameters, monitored batch {short.monitor.batch_size}, "
          f"torch threads {threads} (monitor {short.monitor.threads or 'same'}), "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"  {'shortened run' if short_overrides else 'run'}: "
          f"{trainer.sequence.total_steps:,} env steps in {wall:.1f} s; "
          f"monitor {spectrum + metrics:.1f} s = {100 * (spectrum + metrics) / wall:.1f}% "
          f"(spectrum {spectrum:.1f} s over {measurements} measurements = "
          f"{spectrum / measurements:.2f} s each; plasticity metrics {metrics:.1f} s, "
          f"{metrics_call:.2f} s a call)")
    print(f"  full run (projected): {full_sequence.total_steps:,} env steps, {full_wall:.0f} s; "
          f"monitor {full_monitor:.0f} s (metrics {full_metrics:.0f} s) = "
          f"{100 * full_monitor / full_wall:.1f}% of the wall time")
    print(f"  one HVP {1e3 * hvp:.1f} ms vs one training gradient step {1e3 * step:.1f} ms "
          f"on the same batch: {hvp / step:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-atari", action="store_true")
    parser.add_argument("--full", action="store_true",
                        help="train the MiniGrid config at full length (minutes), no projection")
    parser.add_argument("overrides", nargs="*", help="dotted overrides for every config, "
                        "e.g. torch_threads=1 monitor.ggn=false")
    args = parser.parse_args()
    for name, (config, full, short) in SETTINGS.items():
        if args.skip_atari and "Atari" in name:
            continue
        if args.full and "MiniGrid" in name:
            short = []
        bench(name, config, full, short, args.overrides)


if __name__ == "__main__":
    main()
