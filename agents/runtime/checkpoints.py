"""Checkpoints: what a run needs to continue exactly, written atomically, loaded without pickle.

A checkpoint holds only tensors, numbers, strings and lists/tuples/dicts of them, so it loads with
`torch.load(weights_only=True)`, which never runs code from the file. Its keys:

    format, version   "pliable-checkpoint", 1
    kind, step        periodic | switch | final, and the env step (ctx.global_step) it was taken at
    segment           position in the task schedule of the segment it was taken in
    agent             agent.state_dict(): networks, optimizer, strategies, counters, current obs
    rng               torch / numpy / python global RNG states, the trainer's generator (and CUDA's)
    envs              the live envs' reset seed and every action sent since (resume.py)
    logger            the console's task label and recent returns
    listeners         the observers' states (Observer.state_dict, by class name; the key's name
                      is from when observers were called listeners)
    side_files        the agent's side files saved beside this one: name -> file name (DQN:
                      {"replay": "<name>.replay.pt"}); {} when none was saved. (Checkpoints of
                      earlier pliable versions say `replay_file`, read as {"replay": ...}.)

Files in RUN_DIR/checkpoints/: `step_<step>.pt` (periodic, the newest `keep_last` kept),
`switch_<segment>.pt` (at the start of every segment, all kept), `final.pt`; an agent's side files
(`Agent.side_files()`: a DQN replay buffer, 7 GB for a 1M Atari buffer) in `<name>.<side>.pt`
beside the newest `keep_last` checkpoints only, never beside the final one.

A write that fails (disk full, permission lost) raises WriteFailed, which names the file and the
OS's message; it leaves no partial file (nor the side files written for the checkpoint that
failed) and touches no earlier checkpoint: the run stops (launch.py, exit status 74) and resumes
from the last good one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import random
import re
from pathlib import Path

import numpy as np
import torch

from agents.errors import ConfigError

FORMAT, VERSION = "pliable-checkpoint", 1
CHECKPOINT_DIR = "checkpoints"
PERIODIC, SWITCH = re.compile(r"^step_(\d+)\.pt$"), re.compile(r"^switch_(\d+)\.pt$")
FINAL = "final.pt"
SIDE_FILE = re.compile(r"^(step_\d+|switch_\d+|final)\.[a-z_]+\.pt$")
_LEAVES = (int, float, bool, str, type(None))


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used: one line, exit status 2 (it is bad input to resume)."""


# A disk that takes no more (full, over quota, read-only): whoever meets one of these is a write
# failure, even a writer that did not say so with WriteFailed (a strategy's, a library's).
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


class WriteFailed(OSError):
    """A file of the run could not be written (ENOSPC, EACCES, EIO, ...): `what` was being
    written, `error` is the OSError. An OSError itself, so `except OSError` still catches it."""

    def __init__(self, what: str, error: OSError):
        super().__init__(error.errno, os_message(error))
        self.what, self.error = what, error

    def __str__(self) -> str:
        return f"{self.what}: {os_message(self.error)}"


def os_message(error: OSError) -> str:
    """`[Errno 28] No space left on device`, without the (temporary) file name OSError adds."""
    if isinstance(error, WriteFailed):
        return str(error)
    if error.errno is not None and error.strerror:
        return f"[Errno {error.errno}] {error.strerror}"
    return str(error) or type(error).__name__


# -- file names -------------------------------------------------------------------------------
def checkpoint_path(run_dir: Path, kind: str, trainer) -> Path:
    names = {"periodic": f"step_{trainer.ctx.global_step:012d}.pt",
             "switch": f"switch_{trainer.segment.index:03d}.pt", "final": FINAL}
    return Path(run_dir) / CHECKPOINT_DIR / names[kind]


def side_path(path: Path, name: str) -> Path:
    """Where checkpoint `path`'s side file `name` lives."""
    return path.with_name(f"{path.name.removesuffix('.pt')}.{name}.pt")


def side_files_of(path: Path) -> list[Path]:
    stem = path.name.removesuffix(".pt")
    return [p for p in path.parent.glob(f"{stem}.*.pt") if SIDE_FILE.match(p.name)]


def list_checkpoints(run_dir: Path, sequence) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint in the run, oldest first; a switch checkpoint's step is
    its segment's start, the final one's the schedule's end."""
    found = []
    for path in (Path(run_dir) / CHECKPOINT_DIR).glob("*.pt"):
        if match := PERIODIC.match(path.name):
            found.append((int(match[1]), path))
        elif (match := SWITCH.match(path.name)) and int(match[1]) < len(sequence):
            found.append((sequence.segment(int(match[1])).start, path))
        elif path.name == FINAL:
            found.append((sequence.total_steps, path))
    return sorted(found)


def prune(run_dir: Path, sequence, keep_last: int) -> None:
    """Keep the newest `keep_last` periodic checkpoints, side files only beside the newest
    `keep_last` checkpoints of an unfinished run, and no file left by a write that was killed."""
    checkpoints = list_checkpoints(run_dir, sequence)
    periodic = [path for _, path in checkpoints if PERIODIC.match(path.name)]
    for path in periodic[:-keep_last]:
        path.unlink()
    finished = checkpoints[-1][1].name == FINAL
    keep = set() if finished else {side for _, path in checkpoints[-keep_last:]
                                   for side in side_files_of(path)}
    for path in (Path(run_dir) / CHECKPOINT_DIR).glob("*.*.pt"):
        if SIDE_FILE.match(path.name) and path not in keep:
            path.unlink()
    for path in (Path(run_dir) / CHECKPOINT_DIR).glob(".*.tmp-*"):
        path.unlink(missing_ok=True)


# -- writing and reading ----------------------------------------------------------------------
def atomic_save(obj, path: str | Path) -> None:
    """torch.save into a temporary file of the same directory, fsync, then rename over `path`:
    a reader (or a crash at any instant) sees the old file or the new one, never a partial one.
    An OSError (disk full, ...) leaves `path` as it was and no temporary file; one raised after
    the rename (the directory's fsync) has `renamed` set: the new file is complete and in place."""
    path = Path(path)
    check_loadable(obj, path.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # the write's own error is the one to report
            tmp.unlink(missing_ok=True)
        raise
    try:
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # makes the rename itself durable
        finally:
            os.close(directory)
    except OSError as exc:
        exc.renamed = True
        raise


def check_loadable(value, where: str) -> None:
    """Raise (when saving, not when resuming days later) if `value` holds anything that
    `torch.load(weights_only=True)` would refuse: numpy arrays and scalars, deques, objects."""
    if isinstance(value, dict):
        for key, item in value.items():
            check_loadable(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_loadable(item, f"{where}[{index}]")
    elif not isinstance(value, torch.Tensor) and type(value) not in _LEAVES:
        raise TypeError(f"checkpoint entry {where} is a {type(value).__name__}: state_dict() must "
                        "return tensors, numbers, strings and lists/dicts of them")


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """A checkpoint's contents, loaded weights_only; CheckpointError if the file is missing,
    truncated, not a pliable checkpoint, or holds objects whose loading would run code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    state = safe_load(path, device)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a pliable checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {state.get('version')} is not "
                              f"{VERSION}, the one this pliable reads")
    return state


def safe_load(path: Path, device, mmap: bool = False):
    try:
        return torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc):
            what = re.search(r"GLOBAL (\S+)|Unsupported (operand \d+)", str(exc))
            raise CheckpointError(
                f"{path}: refused to load: it holds Python objects that loading would construct "
                f"or run ({what[1] or what[2] if what else 'pickle'}); a checkpoint holds only "
                "tensors and plain data") from None
        raise CheckpointError(f"{path} is not a pliable checkpoint (not a torch file)") from None
    except Exception as exc:  # zip errors of a truncated file, EOF, a foreign format, ...
        with open(path, "rb") as file:
            zipped = file.read(4) == b"PK\x03\x04"  # what torch.save writes
        if not zipped:
            raise CheckpointError(f"{path} is not a pliable checkpoint (not a torch file)") \
                from None
        reason = str(exc).strip().split(". ")[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is truncated or corrupt ({reason.splitlines()[0]})") \
            from None


# -- what a trainer saves ---------------------------------------------------------------------
def trainer_state(trainer, kind: str) -> dict:
    return {
        "format": FORMAT, "version": VERSION, "kind": kind,
        "step": trainer.ctx.global_step, "segment": trainer.segment.index,
        "agent": trainer.agent.state_dict(),
        "rng": rng_state(trainer),
        "envs": trainer.envs.state_dict(),
        "logger": {"task_label": trainer.logger.task_label,
                   "recent_returns": list(trainer.logger.recent_returns)},
        "listeners": {type(observer).__name__: state for observer in trainer.observers
                      if (state := observer.state_dict()) is not None},
        "side_files": {},
    }


def save_trainer(trainer, path: Path, kind: str, save_side_files: bool) -> None:
    """The trainer's state in `path`; the agent's side files first, each in a file of its own.
    WriteFailed if a file cannot be written: the side files already written for `path` are
    removed again (unless `path` itself was written whole), earlier checkpoints untouched."""
    state = trainer_state(trainer, kind)
    written, main = [], False
    try:
        if save_side_files and kind != "final":
            for name, part in trainer.agent.side_files().items():
                side = side_path(path, name)
                what = f"writing checkpoint {path.name}'s {name} file {side}"
                atomic_save(part.state_dict(), side)
                written.append(side)
                state["side_files"][name] = side.name
        what, main = f"writing checkpoint {path}", True
        atomic_save(state, path)
    except OSError as exc:
        if not (main and getattr(exc, "renamed", False)):
            for side in written:
                with contextlib.suppress(OSError):
                    side.unlink(missing_ok=True)
        raise WriteFailed(what, exc) from None


def load_trainer_state(trainer, state: dict, path: Path) -> list[str]:
    """Agent, its side files and observers; returns the names of the agent's side files that
    the checkpoint does not hold. The RNGs, the envs and the logger are restored by resume.py
    once the envs are rebuilt."""
    trainer.agent.load_state_dict(state["agent"])
    for observer in trainer.observers:
        name = type(observer).__name__
        if name in state["listeners"]:
            observer.load_state_dict(state["listeners"][name])
    saved = state.get("side_files")
    if saved is None:  # written before side files had names: a DQN's replay buffer or None
        saved = {"replay": state["replay_file"]} if state.get("replay_file") else {}
    missing = []
    for name, part in trainer.agent.side_files().items():
        if name not in saved:
            missing.append(name)
            continue
        side = path.with_name(saved[name])
        if not side.is_file():
            raise CheckpointError(f"{path} needs its {name} file {side.name}, which is missing")
        try:  # memory-mapped: a multi-GB buffer is copied into place, not loaded twice
            part.load_state_dict(safe_load(side, "cpu", mmap=True))
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"{side}: not this run's {name} file ({exc})") from None
    return missing


def rng_state(trainer) -> dict:
    name, keys, *rest = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (name, torch.from_numpy(keys.astype(np.int64)), *rest),
             "trainer": trainer.generator.get_state()}
    if trainer.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(trainer, state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.cpu().numpy().astype(np.uint32), *rest))
    trainer.generator.set_state(state["trainer"].cpu())
    if "cuda" in state:
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
