"""pliable's command line.

    python train.py [CONFIG.yaml] [dotted.key=value ...]     (the same as `pliable train ...`)
    pliable <command> ...                                    (train, strategies, ...)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agents.runtime.process import set_process_defaults

TRAIN_EPILOG = """\
CONFIG is a YAML file, or the name of one in configs/ (default: configs/minigrid_ppo.yaml).
Overrides are dotted keys of the config, applied after the file, type-checked:
  python train.py configs/minigrid_ppo.yaml ppo.learning_rate=1e-4 seed=3
  python train.py configs/atari_modes_ppo.yaml plasticity.l2.coef=1e-4 plasticity.redo={}
Runs are written to runs/<exp_name>/<strategies>__s<seed>__<time>/ (config.yaml, TensorBoard
events, status.json, checkpoints/); an existing run directory is never overwritten.
Ctrl-C (or SIGTERM) finishes the current update, writes a checkpoint and exits; then
  python train.py --resume RUN_DIR            continues exactly where the run stopped
"""


def train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pliable train", description="Train an agent on a task sequence.",
        epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="YAML config file (or a name in configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config and exit")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue a stopped run from its newest checkpoint, with its own "
                        "config (overrides: print_every, checkpoint.*)")
    return parser


def split_config_arg(args) -> tuple[str | None, list[str]]:
    """`python train.py seed=3` has no config file: the first positional is an override."""
    if args.config is not None and "=" in args.config:
        return None, [args.config, *args.overrides]
    return args.config, list(args.overrides)


def train(argv: list[str]) -> int:
    args = train_parser().parse_args(argv)
    from agents.runtime.config import load_config, to_yaml
    from agents.runtime.launch import run_training

    path, overrides = split_config_arg(args)
    if args.resume:
        from agents.errors import ConfigError
        from agents.runtime.resume import resume_training

        if path is not None:
            raise ConfigError(f"--resume uses the run's own config.yaml: drop '{path}'")
        return resume_training(args.resume, overrides)
    cfg = load_config(path, overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    return run_training(cfg)


def strategies(argv: list[str]) -> int:
    """`pliable strategies`: every plasticity strategy with its settings, defaults and paper."""
    parser = argparse.ArgumentParser(
        prog="pliable strategies",
        description="List the plasticity strategies, their settings, defaults and papers.")
    parser.add_argument("--markdown", action="store_true",
                        help="print the manual's strategy table (docs/strategies.md) instead")
    parser.add_argument("--compact", action="store_true",
                        help="with --markdown: the README's shorter table")
    parser.add_argument("--readme", metavar="PATH", type=Path,
                        help="with --markdown: rewrite the compact table in PATH (between its "
                        "<!-- strategies:start --> and <!-- strategies:end --> lines)")
    parser.add_argument("--docs", metavar="PATH", type=Path,
                        help="with --markdown: rewrite the full table in PATH (the same markers)")
    args = parser.parse_args(argv)
    from agents.plasticity import describe_strategies, strategies_markdown, with_table

    if (args.readme or args.docs or args.compact) and not args.markdown:
        parser.error("--compact, --readme and --docs go with --markdown: add --markdown")
    targets = [(path, compact) for path, compact in ((args.readme, True), (args.docs, False))
               if path]
    for path, compact in targets:
        path.write_text(with_table(path.read_text(), compact))
        print(f"wrote the strategy table into {path}")
    if not targets:
        print(strategies_markdown(args.compact) if args.markdown else describe_strategies(),
              end="")
    return 0


def bench(argv: list[str]) -> int:
    """`pliable bench`: run a benchmark grid (local processes, or Ray with --address)."""
    from analysis.study.grid import main as bench_main

    return bench_main(argv)


def report(argv: list[str]) -> int:
    """`pliable report`: tables, statistics and plots of a runs directory (analysis/study/)."""
    from analysis.study.report import main as report_main

    return report_main(argv)


def spectrum(argv: list[str]) -> int:
    """`pliable spectrum`: the spectral monitor's measurements on a saved agent."""
    from analysis.study.spectrum import main as spectrum_main

    return spectrum_main(argv)


COMMANDS = {"train": train, "strategies": strategies, "bench": bench, "report": report,
            "spectrum": spectrum}


def cli(argv: list[str] | None = None) -> int:
    """Entry point of the `pliable` console script."""
    set_process_defaults()
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: pliable {" + ",".join(COMMANDS) + "} ...\n\n"
              "  train       train an agent on a task sequence (pliable train --help)\n"
              "  strategies  list the plasticity strategies, their settings and papers\n"
              "  bench       run a grid of strategy sets x sequences x seeds (here, or on Ray)\n"
              "  report      tables, robust statistics and plots from a runs directory\n"
              "  spectrum    Hessian spectrum of a checkpoint's agent on a fresh batch",
              file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command '{argv[0]}'", file=sys.stderr)
            return 2
        return 0
    return guarded(COMMANDS[argv[0]], argv[1:])


def guarded(command, argv: list[str]) -> int:
    """Bad input -> one line on stderr and exit status 2, never a traceback."""
    from agents.errors import ConfigError

    try:
        return command(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def main() -> None:
    set_process_defaults()
    sys.exit(guarded(train, sys.argv[1:]))


if __name__ == "__main__":
    main()
