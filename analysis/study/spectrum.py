"""`pliable spectrum CHECKPOINT`: the spectral monitor's measurement of a saved agent, offline.

The agent is rebuilt from the config of the run the checkpoint belongs to and measured on a fresh
batch of the task it was on (or `--task NAME`), exactly as the monitor measures at a switch: on
`switch_003.pt` and its own task this reproduces the run's `spectra/switch_003_post.npz`.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from agents.errors import ConfigError
from agents.runtime.checkpoints import load_checkpoint
from agents.runtime.config import load_config, preset_overrides
from agents.runtime.trainer import Trainer
from analysis.monitor.measure import measure_spectrum
from analysis.monitor.observer import SpectralMonitor
from analysis.monitor.outputs import save_npz, summary_line
from analysis.spectral.hessian import GGNOperator, HessianOperator
from analysis.study.progress import progress_bar

EPILOG = """\
  pliable spectrum runs/tiny/none__s1__20260101-120000/checkpoints/switch_002.pt
  pliable spectrum CHECKPOINT --task DoorKey-5x5-v0 monitor.top_k=10 monitor.float64=true
Overrides may set monitor.* only. Writes OUT/<checkpoint>__<task>.npz (OUT defaults to
RUN_DIR/spectra/offline) with the arrays and scalars of the monitor's .npz files.
"""


def spectrum_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pliable spectrum", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Hessian spectrum (and GGN, KFAC) of a checkpoint's agent on a fresh batch.")
    parser.add_argument("checkpoint", help="a .pt file in RUN_DIR/checkpoints/")
    parser.add_argument("overrides", nargs="*", help="monitor.key=value settings")
    parser.add_argument("--task", help="task to draw the batch from (default: the checkpoint's)")
    parser.add_argument("--out", help="output directory (default: RUN_DIR/spectra/offline)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar on stderr (drawn only on a terminal anyway)")
    return parser


@contextlib.contextmanager
def counting_products(bar):
    """Tick `bar` at every Hessian- and Gauss-Newton-vector product meanwhile: where the time
    of a large network's spectrum goes, and `measure_spectrum` has no callback of its own. The
    products themselves are unchanged."""
    originals = {cls: cls.matvec for cls in (HessianOperator, GGNOperator)}

    def counted(matvec):
        def wrapper(self, vector):
            product = matvec(self, vector)
            bar.update(1)
            return product
        return wrapper

    for cls, matvec in originals.items():
        cls.matvec = counted(matvec)
    try:
        yield bar
    finally:
        for cls, matvec in originals.items():
            cls.matvec = matvec


def run_dir_of(checkpoint: Path) -> Path:
    for directory in (checkpoint.parent, checkpoint.parent.parent):
        if (directory / "config.yaml").is_file():
            return directory
    raise ConfigError(f"{checkpoint}: no config.yaml next to it or in its parent: a checkpoint "
                      "is read with the config of its run directory")


def main(argv: list[str]) -> int:
    args = spectrum_parser().parse_intermixed_args(argv)
    checkpoint = Path(args.checkpoint)
    for override in args.overrides:
        if not override.startswith("monitor."):
            raise ConfigError(f"'{override}': pliable spectrum takes monitor.* settings only")
    if not checkpoint.is_file():
        raise ConfigError(f"checkpoint not found: {checkpoint}")
    run_dir = run_dir_of(checkpoint)
    # The run's config.yaml is resolved: a preset asked for here must beat its values.
    cfg = load_config(run_dir / "config.yaml", preset_overrides(args.overrides))
    state = load_checkpoint(checkpoint, cfg.device)
    trainer = Trainer(cfg)
    monitor = SpectralMonitor.for_agent(cfg.monitor, trainer.agent)
    segment = trainer.sequence.segment(state["segment"])
    if args.task is not None:
        names = [task.name for task in trainer.sequence.tasks]
        if args.task not in names:
            raise ConfigError(f"--task: unknown task '{args.task}' (tasks: {', '.join(names)})")
        segment = next(s for s in trainer.sequence if s.task.name == args.task)
    trainer.agent.load_state_dict(state["agent"])
    seed = monitor.seed_for(state["segment"], "post")  # the monitor's own seed at that switch
    with progress_bar(desc="spectrum: drawing a batch", unit="product",
                      bar_format="{desc}: {n} [{elapsed}, {rate_fmt}]",
                      enabled=not args.no_progress) as bar:
        batch = monitor.subsample(monitor.fresh_batch(trainer.view, segment, seed), seed)
        bar.set_description("spectrum: Hessian/GGN-vector products")
        with counting_products(bar):
            measured = measure_spectrum(trainer.agent, batch, cfg.monitor, seed)
    out = Path(args.out) if args.out else run_dir / "spectra" / "offline"
    path = out / f"{checkpoint.stem}__{segment.task.name}.npz"
    save_npz(path, measured, step=state["step"], phase="post", task=segment.task.name,
             checkpoint=str(checkpoint))
    print(summary_line(state["step"], f"{checkpoint.name} on {segment.task.name}",
                       {"post": measured}))
    print(f"wrote {path}")
    return 0
