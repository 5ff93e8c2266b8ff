"""A run directory: resolved config, status, TensorBoard events; never overwritten.

A file here that cannot be written (disk full, permission lost) raises WriteFailed
(checkpoints.py), naming the file and the OS's message; status.json is replaced atomically, so a
failed write leaves the previous status as it was."""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from pathlib import Path

from omegaconf import OmegaConf
from torch.utils.tensorboard.summary import hparams

from agents.errors import ConfigError, library_message
from agents.plasticity import strategy_set_name
from agents.runtime.checkpoints import DISK_ERRNOS, WriteFailed


def new_run_dir(cfg) -> Path:
    """An explicit run_dir must not exist yet; a generated one gets a suffix if it does. A
    directory that cannot be made there is a ConfigError naming the key and the OS's message."""
    key, where = ("run_dir", cfg.run_dir) if cfg.run_dir else ("runs_root", cfg.runs_root)
    try:
        return _new_run_dir(cfg)
    except OSError as exc:
        if exc.errno in DISK_ERRNOS:  # a full or read-only disk: exit 74; else bad input
            raise WriteFailed(f"creating the run directory {where}", exc) from None
        raise ConfigError(f"{key}: cannot create the run directory {where}: "
                          f"{library_message(exc)}") from None


def _new_run_dir(cfg) -> Path:
    if cfg.run_dir:
        path = Path(cfg.run_dir)
        if path.exists() and any(path.iterdir()):
            raise ConfigError(f"run_dir {path} already exists and is not empty: pick another "
                              "(runs are never overwritten)")
        path.mkdir(parents=True, exist_ok=True)
        return path
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"{strategy_set_name(cfg.plasticity)}__s{cfg.seed}__{stamp}"
    base = Path(cfg.runs_root) / cfg.exp_name / name
    path, suffix = base, 1
    while True:
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            path = base.with_name(f"{base.name}-{suffix}")
            suffix += 1


def write_status(run_dir: Path, status: str, **extra) -> None:
    payload = {"status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}
    tmp = run_dir / "status.json.tmp"
    try:
        tmp.write_text(json.dumps(payload, indent=2))
        tmp.replace(run_dir / "status.json")
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise WriteFailed(f"writing {run_dir / 'status.json'}", exc) from None


def read_status(run_dir: Path) -> dict:
    """What `write_status` last wrote; {} when there is none (or it is being replaced)."""
    try:
        return json.loads((Path(run_dir) / "status.json").read_text())
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Held (on config.yaml: no file of its own) while a process trains in run_dir, so that a
    second one (a `--resume` of a live run) is refused; the OS releases it when the process ends,
    even by kill -9."""
    with open(Path(run_dir) / "config.yaml", "rb") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{run_dir} is being trained by another process: stop that one "
                              "before resuming") from None
        except OSError:  # a filesystem without locks (some NFS mounts): go on unguarded
            pass
        yield


def save_config(run_dir: Path, cfg) -> None:
    """Written in place, not renamed over: run_lock holds a lock on this very file. A failed
    write puts the previous text back (a resume's overrides), so the run stays resumable."""
    path = run_dir / "config.yaml"
    previous = path.read_text() if path.is_file() else None
    try:
        path.write_text(OmegaConf.to_yaml(cfg))
    except OSError as exc:
        with contextlib.suppress(OSError):
            if previous is None:
                path.unlink(missing_ok=True)
            else:
                path.write_text(previous)
        raise WriteFailed(f"writing {path}", exc) from None


def flat_hparams(cfg) -> dict:
    """Dotted config keys -> scalars/strings, as TensorBoard's HParams plugin takes them."""
    flat = {"strategies": strategy_set_name(cfg.plasticity)}

    def walk(node, prefix):
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict) and key != "plasticity":
                walk(value, name + ".")
            elif isinstance(value, (bool, int, float, str)):
                flat[name] = value
            else:
                flat[name] = json.dumps(value)
    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def log_config(writer, cfg) -> None:
    """The config as a text table (CleanRL's 'hyperparameters') and as TensorBoard hparams."""
    flat = flat_hparams(cfg)
    rows = "\n".join(f"|{k}|{v}|" for k, v in flat.items())
    writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{rows}")
    # Written into the run's own event file (add_hparams would open a second run directory).
    file_writer = writer._get_file_writer()
    for summary in hparams(flat, {"charts/episodic_return": 0.0}):
        file_writer.add_summary(summary)
