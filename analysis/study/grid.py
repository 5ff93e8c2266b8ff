"""`pliable bench BENCH.yaml`: train every cell of a benchmark grid, each in its own run directory.

Re-running the same command skips the finished runs and re-runs the others; an unfinished run's
directory is first moved aside to `<dir>.failed-<n>`, so nothing is lost. A run that crashes has
its traceback in its status.json and stdout.log and never stops the others.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from agents.errors import ConfigError
from agents.runtime.launch import run_training
from agents.runtime.run_dir import read_status, write_status
from analysis.study.executors import LocalExecutor, RayExecutor
from analysis.study.grid_config import Bench, Cell, check_cells, load_bench
from analysis.study.progress import BENCH_BAR_FORMAT, eta_postfix, eta_text

LOG_FILE = "stdout.log"
RUN_ENDS = ("finished", "interrupted", "failed")  # what training leaves in status.json

EPILOG = """\
BENCH is a benchmark YAML file, or the name of one in configs/benchmarks/:
  pliable bench configs/benchmarks/plasticity_loss.yaml
  pliable bench plasticity_loss --address auto            # on the Ray cluster of this node
Every run is written to OUT/<bench>/<strategy set>/<sequence>/s<seed>/ (its console output in
stdout.log); re-running skips finished runs. Then: pliable report OUT/<bench>
"""


@dataclass(frozen=True)
class CellResult:
    label: str
    status: str  # finished | failed | interrupted | skipped
    seconds: float = 0.0
    error: str = ""  # traceback text of a failure


class RunLog(io.TextIOBase):
    """A run's console output, bound for run_dir/stdout.log.

    `run_training` creates the run directory itself and refuses one that is not empty, so what
    is written before the directory exists is held back until then (or until `close`).
    """

    def __init__(self, path: Path):
        self.path = path
        self.held: list[str] = []
        self.file = None

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self.file is None and self.path.parent.is_dir():
            self._open()
        if self.file is None:
            self.held.append(text)
        else:
            self.file.write(text)
            self.file.flush()
        return len(text)

    def _open(self) -> None:
        self.file = open(self.path, "a")  # closed by close()
        self.file.write("".join(self.held))
        self.held.clear()

    def close(self) -> None:
        if self.file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._open()
        self.file.close()
        super().close()


def run_cell(cell: Cell) -> CellResult:
    """Train one cell; a failure is recorded in its run directory, never raised."""
    start = time.perf_counter()
    log = RunLog(cell.run_dir / LOG_FILE)
    error, raised = "", False
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            code = run_training(cell.cfg, stream=log)
        # training writes how it ended (a divergence with its reason) before it returns; none,
        # or a stale "running", means it died before it could
        recorded = read_status(cell.run_dir)
        status = recorded.get("status") if recorded.get("status") in RUN_ENDS else "failed"
        if status == "failed":
            error = recorded.get("error", f"run exited with status {code}")
    except Exception:
        error, raised, status = traceback.format_exc(), True, "failed"
        log.write(error)
    finally:
        log.close()
    if raised:
        record_failure(cell.run_dir, error)
    return CellResult(cell.label, status, time.perf_counter() - start, error)


def record_failure(run_dir: Path, error: str) -> None:
    """status.json says failed, with the traceback and the step training had reached."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_status(run_dir, "failed", step=read_status(run_dir).get("step", 0), error=error)


def plan(cells: list[Cell]) -> list[tuple[Cell, str]]:
    """Each cell with what to do: run (new), skip (finished) or rerun (unfinished or failed)."""
    actions = []
    for cell in cells:
        if read_status(cell.run_dir).get("status") == "finished":
            actions.append((cell, "skip"))
        else:
            actions.append((cell, "rerun" if cell.run_dir.exists() else "run"))
    return actions


def move_aside(run_dir: Path) -> Path:
    """Rename an unfinished run's directory to the first free `<dir>.failed-<n>`."""
    n = 1
    while (target := run_dir.with_name(f"{run_dir.name}.failed-{n}")).exists():
        n += 1
    run_dir.rename(target)
    return target


def run_bench(bench: Bench, executor, out: TextIO) -> list[CellResult]:
    """Run the cells that are not finished; one progress bar over the grid, a line per run."""
    actions = plan(bench.cells)
    results = [CellResult(cell.label, "skipped") for cell, action in actions if action == "skip"]
    todo = [cell for cell, action in actions if action != "skip"]
    for cell, action in actions:
        if action == "skip":
            print(f"{'skipped':<11} {cell.label}  (finished before)", file=out)
        elif action == "rerun":
            print(f"{'moved aside':<11} {cell.run_dir} -> {move_aside(cell.run_dir).name}",
                  file=out)
    with tqdm(total=len(actions), initial=len(results), desc=bench.name, unit="run",
              file=sys.stderr, dynamic_ncols=True, bar_format=BENCH_BAR_FORMAT,
              postfix=eta_text(0, 0, len(todo))) as bar:
        for cell, outcome in executor.map_unordered(run_cell, todo):
            if not isinstance(outcome, CellResult):  # the executor lost the run
                error = "".join(traceback.format_exception(outcome))
                record_failure(cell.run_dir, error)
                outcome = CellResult(cell.label, "failed", error=error)
            results.append(outcome)
            bar.update(1)
            bar.set_postfix_str(eta_postfix(bar))  # the pace of the cells ended so far
            bar.write(status_line(outcome, cell), file=out)
    return results


def status_line(result: CellResult, cell: Cell) -> str:
    line = f"{result.status:<11} {result.label}  ({result.seconds:.0f} s)"
    if result.error:
        line += f"  {last_line(result.error)}; log: {cell.run_dir / LOG_FILE}"
    return line


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1] if text.strip() else ""


def summarize(bench: Bench, results: list[CellResult], out: TextIO) -> int:
    """Counts per status, each failure with its error; exit status 1 unless every run finished."""
    counts = collections.Counter(result.status for result in results)
    print(f"bench {bench.name}: {len(results)} runs: "
          + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())), file=out)
    for result in results:
        if result.status in ("failed", "interrupted"):
            print(f"  {result.status}: {result.label}: {last_line(result.error) or '-'}", file=out)
    print(f"report: pliable report {bench.root}", file=out)
    return 0 if set(counts) <= {"finished", "skipped"} else 1


def print_plan(bench: Bench, out: TextIO) -> None:
    actions = plan(bench.cells)
    print(f"bench {bench.name}: {len(actions)} runs in {bench.root}", file=out)
    for cell, action in actions:
        note = {"skip": "finished", "run": "new", "rerun": "unfinished: moved aside, run again"}
        print(f"  {action:<6} {cell.label:<40} {note[action]}", file=out)


def bench_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pliable bench", description="Run a benchmark grid (strategy sets x sequences x "
        "seeds) as processes of this machine, or as Ray tasks on a cluster.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="benchmark YAML file (or a name in configs/benchmarks/)")
    parser.add_argument("--address", help="run on this Ray cluster ('auto': this node's); "
                        "default: processes of this machine, as many as its CPUs allow")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the runs and what would happen to each; run nothing")
    parser.add_argument("--max-parallel", type=int, metavar="N",
                        help="at most N runs at once (default: as many as the CPUs allow)")
    parser.add_argument("--out", default="runs/bench", help="runs root (default: runs/bench)")
    return parser


def main(argv: list[str]) -> int:
    args = bench_parser().parse_args(argv)
    if args.max_parallel is not None and args.max_parallel < 1:
        raise ConfigError(f"--max-parallel must be a positive integer, got {args.max_parallel}")
    bench = load_bench(args.config, args.out)
    check_cells(bench.cells)
    if args.dry_run:
        print_plan(bench, sys.stdout)
        return 0
    if args.address:  # Ray, on a cluster
        executor = RayExecutor(bench.cpus_per_run, bench.gpus_per_run, args.address,
                               args.max_parallel)
    else:  # processes of this machine: no port opened (Ray's local servers face the network)
        executor = LocalExecutor(bench.cpus_per_run, bench.gpus_per_run, args.max_parallel)
    try:
        results = run_bench(bench, executor, sys.stdout)
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        executor.close()
    return summarize(bench, results, sys.stdout)

