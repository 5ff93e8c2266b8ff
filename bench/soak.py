"""Soak test of stop and resume: a tiny run interrupted many times, resumed each time, must end
exactly as the run that was never interrupted.

    python bench/soak.py                      # 20 SIGTERMs (some doubled) and 4 SIGKILLs, ~3 min
    python bench/soak.py --sigterms 50 --sigkills 10 --seed 3 --keep /tmp/soak

`python train.py tiny ...` runs in a subprocess; at a random moment (seeded: mostly while it
trains, some while it starts up or replays its envs) it gets SIGTERM (a checkpoint, then exit
143), two SIGTERMs in quick succession (the second stops at once: exit 130, the previous
checkpoint kept), or SIGKILL; after each, every checkpoint must load and status.json must say
what happened, and `python train.py --resume RUN_DIR` continues. The uninterrupted run trains
meanwhile. At the end the final checkpoints must be equal (every tensor, counter and RNG state)
and so must the logged scalars (tag, step, value; wall-clock ones by step only). Prints each
interruption and resume, then PASS or FAIL (exit status 1).
"""

from __future__ import annotations

import argparse
import logging
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


from agents.runtime.checkpoints import list_checkpoints, load_checkpoint  # noqa: E402
from agents.runtime.run_dir import read_status  # noqa: E402
from analysis.study.compare import run_differences  # noqa: E402

OVERRIDES = ("print_every=0", "torch_threads=1", "sequence.switch_every=8192",
             "checkpoint.every=256")  # 3 x 8,192 steps, 96 iterations of 256 steps


class Process:
    """`python train.py ARGS` with its stdout read by a thread: lines with their arrival time."""

    def __init__(self, args: list[str]):
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [threading.Thread(target=self._read, daemon=True),
                        threading.Thread(target=self.err.extend, args=(self.proc.stderr,),
                                         daemon=True)]
        for reader in self.readers:
            reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.out.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, prefix: str, timeout: float = 120) -> bool:
        """Until a line starting with `prefix` (True) or the end of output (False)."""
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            if line is None:
                return False
            if line.startswith(prefix):
                return True

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        """Its exit status and stderr, once it ended and both pipes are read to the end."""
        self.proc.wait(timeout=timeout)
        for reader in self.readers:
            reader.join(timeout=10)
        return self.proc.returncode, "".join(self.err)


def schedule(sigterms: int, sigkills: int, rng: random.Random) -> list[str]:
    """The interruptions in a seeded order: a fifth of the SIGTERMs doubled."""
    doubled = max(1, sigterms // 5) if sigterms else 0
    kinds = ["sigterm"] * (sigterms - doubled) + ["sigterm x2"] * doubled + ["sigkill"] * sigkills
    rng.shuffle(kinds)
    return kinds


def interrupt(process: Process, kind: str, rng: random.Random, first: bool) -> str:
    """Sends `kind` at a random moment; returns when, in words."""
    if not first and rng.random() < 0.2:  # while it starts, loads and replays its envs
        delay = rng.uniform(0.5, 4.0)
        time.sleep(delay)
        when = f"{delay:.2f} s after start"
    else:
        if not process.wait_for("step "):
            return "never: it had ended"
        delay = rng.uniform(0.0, 0.6)
        time.sleep(delay)
        when = f"{delay:.2f} s into training"
    if kind == "sigkill":
        process.proc.send_signal(signal.SIGKILL)
    else:
        process.proc.send_signal(signal.SIGTERM)
        if kind == "sigterm x2":
            time.sleep(rng.uniform(0.0, 0.2))
            if process.proc.poll() is None:
                process.proc.send_signal(signal.SIGTERM)
    return when


def check_run_dir(run_dir: Path, code: int, sequence) -> list[str]:
    """Problems after an interruption: a checkpoint that does not load, a status that lies."""
    problems = []
    for _, path in list_checkpoints(run_dir, sequence):
        try:
            load_checkpoint(path)
        except Exception as exc:  # noqa: BLE001  (any failure to load is the finding)
            problems.append(f"{path.name} does not load: {exc}")
    status = read_status(run_dir)
    if code in (130, 143):
        if status.get("status") != "interrupted":
            problems.append(f"exit {code} but status.json says {status}")
        elif not Path(status.get("checkpoint") or "-").is_file():
            problems.append(f"status.json names a checkpoint that is not there: {status}")
    elif code in (-9, -15) and status.get("status") not in ("running", "interrupted"):
        problems.append(f"killed, but status.json says {status}")
    elif code not in (0, 130, 143, -9, -15):
        problems.append(f"unexpected exit status {code}")
    return problems


def resumed_line(process: Process, run_dir: Path) -> str:
    """What a resume said it resumed from, or that it was stopped before it could say."""
    said = [line.strip() for line in process.out if line.startswith("resuming ")]
    return (said[0].replace(str(run_dir), "RUN_DIR") if said
            else "--resume, stopped before it loaded a checkpoint")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sigterms", type=int, default=20)
    parser.add_argument("--sigkills", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="of the interruptions' moments")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it")
    args = parser.parse_args(argv)
    logging.getLogger("tensorboard").setLevel(logging.ERROR)  # its notes on purged steps
    from agents.runtime.config import load_config
    from envs.tasks import TaskSequence

    work = args.keep or Path(tempfile.mkdtemp(prefix="pliable-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    run_dir, reference = work / "interrupted", work / "uninterrupted"
    for path in (run_dir, reference):
        shutil.rmtree(path, ignore_errors=True)
    cfg = load_config("tiny", list(OVERRIDES))
    sequence = TaskSequence.from_config(cfg.sequence, cfg.seed)
    rng = random.Random(args.seed)
    kinds = schedule(args.sigterms, args.sigkills, rng)
    print(f"soak: {' '.join(OVERRIDES)} ({sequence.total_steps:,} steps); "
          f"{len(kinds)} interruptions, seed {args.seed}, in {work}", flush=True)
    start = time.monotonic()
    uninterrupted = Process(["tiny", *OVERRIDES, f"run_dir={reference}"])
    problems: list[str] = []
    process = Process(["tiny", *OVERRIDES, f"run_dir={run_dir}"])
    done = False
    for index, kind in enumerate(kinds, 1):
        when = interrupt(process, kind, rng, first=index == 1)
        code, err = process.finish()
        print(f"    run {index}: " + (resumed_line(process, run_dir) if index > 1
                                       else "python train.py tiny ..."), flush=True)
        status = read_status(run_dir)
        found = check_run_dir(run_dir, code, sequence)
        if code not in (0, 130, 143, -9, -15) or "Traceback" in err:
            found.append(f"stderr: {err.strip()[-600:]}")
        problems += [f"interruption {index}: {p}" for p in found]
        last = (status.get("checkpoint") or "-").rsplit("/", 1)[-1]
        print(f"{index:3}/{len(kinds)} {kind:<10} at {when:<24} -> exit {code:>4}, status "
              f"{status.get('status')} at step {status.get('step', 0):,} (checkpoint {last})"
              + (f"  PROBLEM: {found}" if found else ""), flush=True)
        if code == 0:
            done = True
            print("    the run finished before the next interruption", flush=True)
            break
        process = Process(["--resume", str(run_dir)])
    if not done:
        code, err = process.finish()
        print(f"    run {len(kinds) + 1}: {resumed_line(process, run_dir)}; ran to the end: "
              f"exit {code}", flush=True)
        if code != 0:
            problems.append(f"the last resume exited {code}: {err.strip()[-600:]}")
    code, err = uninterrupted.finish()
    if code != 0:
        problems.append(f"the uninterrupted run exited {code}: {err.strip()[-600:]}")
    if not problems:
        problems += run_differences(run_dir, reference)
    print(f"{len(kinds)} interruptions in {time.monotonic() - start:.0f} s; final checkpoints "
          "and scalars compared with the uninterrupted run's", flush=True)
    for problem in problems:
        print(f"  {problem}")
    print("FAIL" if problems else "PASS")
    if not args.keep and not problems:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
