"""A write that fails (disk full, permission lost) in a checkpoint, a replay side file, the
TensorBoard event file or status.json stops the run with one line on stderr and exit status 74,
no traceback; the previous checkpoint stays loadable, no partial file is left, status.json says
what happened (or the line says it could not), and a resume from the last good checkpoint equals
the run that never failed."""

import errno
import io
import os
import re
import signal
from pathlib import Path

import pytest
import torch
from signals import Signals
from tensorboard.compat.tensorflow_stub.io import gfile
from test_resume import DQN, MONITOR, PPO, assert_same_run, train

import agents.runtime.checkpoints as checkpoints
import analysis.monitor.outputs as outputs
from agents.run_view import Observer
from agents.runtime.checkpoints import WriteFailed, atomic_save, load_checkpoint
from agents.runtime.launch import EXIT_WRITE_FAILED, run_training
from agents.runtime.resume import resume_training
from agents.runtime.run_dir import read_status, write_status

ENOSPC, EACCES = (f"[Errno {code}] {os.strerror(code)}" for code in (errno.ENOSPC, errno.EACCES))


class Disk:
    """Writes that fail once `armed` (by ArmAt, after an iteration's logging) for the paths
    `which` accepts: what a disk that fills up, or a permission taken away, does."""

    def __init__(self, code: int, which=lambda name: True):
        self.code, self.which, self.armed, self.failures = code, which, False, 0

    def fails(self, name) -> bool:
        return self.armed and self.which(Path(str(name)).name)

    def fail(self, name) -> None:
        if self.fails(name):
            self.failures += 1
            raise OSError(self.code, os.strerror(self.code))


class ArmAt(Observer):
    def __init__(self, step: int, disk: Disk):
        self.step, self.disk = step, disk

    def after_iteration(self, run):
        if run.ctx.global_step >= self.step:
            self.disk.armed = True


def break_torch_save(monkeypatch, disk):
    real = torch.save

    def save(obj, file, *args, **kwargs):
        if disk.fails(file.name):
            file.write(b"PK\x03\x04 the first bytes")  # a partial file, as a full disk leaves
            disk.fail(file.name)
        return real(obj, file, *args, **kwargs)
    monkeypatch.setattr(checkpoints.torch, "save", save)


def break_replace(monkeypatch, disk):
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        disk.fail(dst)
        return real(src, dst, *args, **kwargs)
    monkeypatch.setattr(checkpoints.os, "replace", replace)


def break_fsync(monkeypatch, disk):
    real = os.fsync

    def fsync(fd):
        disk.fail(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)
    monkeypatch.setattr(checkpoints.os, "fsync", fsync)


def break_events(monkeypatch, disk):
    """TensorBoard's writer thread appends every record to the event file."""
    real = gfile.LocalFileSystem.append

    def append(self, filename, *args, **kwargs):
        disk.fail(filename)
        return real(self, filename, *args, **kwargs)
    monkeypatch.setattr(gfile.LocalFileSystem, "append", append)


def break_status(monkeypatch, disk):
    real = Path.write_text

    def write_text(self, *args, **kwargs):
        disk.fail(self)
        return real(self, *args, **kwargs)
    monkeypatch.setattr(Path, "write_text", write_text)


def break_everything(monkeypatch, disk):
    for breaker in (break_torch_save, break_events, break_status):
        breaker(monkeypatch, disk)


def is_replay(name):
    return ".replay." in name


CHECKPOINT = "writing checkpoint {run}/checkpoints/step_000000000768.pt"
EVENTS = "writing the TensorBoard events {run}/events.out.tfevents.*"
REPLAY = ("writing checkpoint step_000000000768.pt's replay file "
          "{run}/checkpoints/step_000000000768.replay.pt")
STILL_RUNNING = f"; status.json could not be updated either ({ENOSPC}) and still says 'running'"
# site: agent, breaker, errno, the paths that fail (None: all), what failed, the line's end
SITES = {
    "checkpoint-torch.save-ENOSPC": ("ppo", break_torch_save, errno.ENOSPC, None, CHECKPOINT, ""),
    "checkpoint-fsync-ENOSPC": ("ppo", break_fsync, errno.ENOSPC, None, CHECKPOINT, ""),
    "checkpoint-rename-EACCES": ("ppo", break_replace, errno.EACCES,
                                 lambda name: name.startswith("step_"), CHECKPOINT, ""),
    "replay-side-file-ENOSPC": ("dqn", break_torch_save, errno.ENOSPC, is_replay, REPLAY, ""),
    "checkpoint-after-its-replay-file-ENOSPC": (
        "dqn", break_torch_save, errno.ENOSPC, lambda name: not is_replay(name), CHECKPOINT, ""),
    "event-file-ENOSPC": ("ppo", break_events, errno.ENOSPC, None, EVENTS, ""),
    "event-file-EACCES": ("ppo", break_events, errno.EACCES, None, EVENTS, ""),
    "disk-full-status-json-too": ("ppo", break_everything, errno.ENOSPC, None, EVENTS,
                                  STILL_RUNNING),  # the events fail first
}


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """The runs that never failed."""
    from agents.runtime.config import load_config

    root = tmp_path_factory.mktemp("reference")
    for name, (config, *overrides) in {"ppo": PPO, "dqn": DQN}.items():
        cfg = load_config(config, [*overrides, "print_every=1000", f"run_dir={root / name}"])
        assert run_training(cfg, stream=io.StringIO()) == 0
    return {"ppo": root / "ppo", "dqn": root / "dqn"}


@pytest.mark.parametrize("site", SITES)
def test_a_failed_write_stops_with_one_line_and_the_run_resumes_exactly(
        tiny_cfg, tmp_path, monkeypatch, capsys, references, site):
    agent, breaker, code, which, what, end = SITES[site]
    disk = Disk(code, which or (lambda name: True))
    breaker(monkeypatch, disk)
    exit_code, run_dir = train(tiny_cfg, PPO if agent == "ppo" else DQN, tmp_path,
                               [ArmAt(640, disk)])  # the next checkpoint is due at 768
    err = capsys.readouterr().err
    assert exit_code == EXIT_WRITE_FAILED == 74
    assert disk.failures >= 1
    good = run_dir / "checkpoints" / "switch_001.pt"  # at 512
    assert err.count("\n") == 1 and "Traceback" not in err, err
    line = (f"error: {what.format(run=run_dir)}: [Errno {code}] {os.strerror(code)}; the last "
            f"good checkpoint is {good}{end}\n")
    assert re.fullmatch(re.escape(line).replace(r"\*", r"[^:]*"), err), err
    monkeypatch.undo()  # the disk has room again

    status = read_status(run_dir)
    if site == "disk-full-status-json-too":
        assert status["status"] == "running"
    else:
        assert status | {"time": None} == {
            "status": "failed", "reason": "write_failed", "step": 768, "time": None,
            "error": err.rstrip("\n").removeprefix("error: "), "checkpoint": str(good)}
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    expected = ["step_000000000256.pt", "switch_000.pt", "switch_001.pt"]
    if agent == "dqn":  # side files beside the newest keep_last=2 checkpoints only
        expected = sorted(expected + ["step_000000000256.replay.pt", "switch_001.replay.pt"])
    assert names == expected  # nothing partial, nothing of step 768, nothing good pruned
    assert load_checkpoint(good)["step"] == 512

    out = io.StringIO()
    assert resume_training(run_dir, stream=out) == 0
    assert "from switch_001.pt at step 512" in out.getvalue()
    assert_same_run(run_dir, references[agent])


def test_the_final_checkpoint_failing_keeps_the_last_periodic_one(tiny_cfg, tmp_path,
                                                                 monkeypatch, capsys,
                                                                 references):
    disk = Disk(errno.ENOSPC, lambda name: "final" in name)
    break_torch_save(monkeypatch, disk)
    disk.armed = True
    exit_code, run_dir = train(tiny_cfg, PPO, tmp_path)
    err = capsys.readouterr().err
    good = run_dir / "checkpoints" / "step_000000001280.pt"
    assert exit_code == 74
    assert err == (f"error: writing checkpoint {run_dir}/checkpoints/final.pt: {ENOSPC}; "
                   f"the last good checkpoint is {good}\n")
    assert read_status(run_dir)["reason"] == "write_failed"
    monkeypatch.undo()
    assert resume_training(run_dir, stream=io.StringIO()) == 0
    assert_same_run(run_dir, references["ppo"])


def test_status_json_that_cannot_be_written_at_the_end_is_said(tiny_cfg, tmp_path,
                                                                monkeypatch, capsys):
    disk = Disk(errno.EACCES, lambda name: name == "status.json.tmp")
    break_status(monkeypatch, disk)
    cfg = tiny_cfg("sequence.switch_every=256", "ppo.num_steps=32", "torch_threads=1",
                   f"run_dir={tmp_path / 'run'}")
    observers = [ArmAt(768, disk)]  # the last iteration: the next status write is "finished"
    assert run_training(cfg, observers, stream=io.StringIO()) == 74
    final = tmp_path / "run" / "checkpoints" / "final.pt"
    assert capsys.readouterr().err == (
        f"error: writing {tmp_path / 'run'}/status.json: {EACCES}; the last good checkpoint is "
        f"{final}; status.json could not be updated either ({EACCES}) and still says "
        "'running'\n")
    assert load_checkpoint(final)["kind"] == "final"
    assert not (tmp_path / "run" / "status.json.tmp").exists()


def test_write_failed_names_the_file_and_is_an_oserror(tmp_path):
    failed = WriteFailed("writing x.pt", PermissionError(errno.EACCES, "Permission denied",
                                                         "/tmp/.x.pt.tmp-1"))
    assert str(failed) == f"writing x.pt: {EACCES}" and isinstance(failed, OSError)
    assert failed.errno == errno.EACCES
    (tmp_path / "status.json").mkdir()  # cannot be replaced by a file
    with pytest.raises(WriteFailed, match=r"writing .*status\.json: \[Errno 21\]"):
        write_status(tmp_path, "running")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]


def test_a_checkpoint_renamed_but_not_synced_keeps_its_side_files(tmp_path, monkeypatch):
    """The directory's fsync failing after the rename: the new file is whole and in place."""
    path = tmp_path / "x.pt"
    calls = []
    real = os.fsync

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 2:  # the file's, then the directory's
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(fd)
    monkeypatch.setattr(checkpoints.os, "fsync", fsync)
    with pytest.raises(OSError) as raised:
        atomic_save({"format": "pliable-checkpoint", "version": 1}, path)
    assert raised.value.renamed and load_checkpoint(path)["version"] == 1


def test_a_full_disk_under_any_other_writer_is_a_write_failure_too(tiny_cfg, tmp_path,
                                                                   monkeypatch, capsys):
    """The spectral monitor's .npz files (np.savez raises a plain OSError with the file name)."""
    disk = Disk(errno.ENOSPC)
    real = outputs.np.savez

    def savez(path, **arrays):
        if disk.fails(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, **arrays)
    monkeypatch.setattr(outputs.np, "savez", savez)
    exit_code, run_dir = train(tiny_cfg, PPO[:5] + MONITOR, tmp_path, [ArmAt(640, disk)])
    assert exit_code == 74
    good = run_dir / "checkpoints" / "switch_001.pt"
    assert re.fullmatch(rf"error: writing {re.escape(str(run_dir))}/spectra/[^:]+\.npz: "
                        rf"{re.escape(ENOSPC)}; the last good checkpoint is {re.escape(str(good))}"
                        r"\n", capsys.readouterr().err)
    assert read_status(run_dir)["reason"] == "write_failed"


def test_a_resume_that_cannot_write_its_overrides_keeps_the_config(tiny_cfg, tmp_path,
                                                                   monkeypatch, capsys,
                                                                   references):
    code, run_dir = train(tiny_cfg, PPO, tmp_path, [Signals(640, signal.SIGINT)])
    assert code == 130
    config = (run_dir / "config.yaml").read_text()
    once = iter([True])  # the first write fails; putting the old text back succeeds
    disk = Disk(errno.ENOSPC, lambda name: name == "config.yaml" and next(once, False))
    disk.armed = True
    break_status(monkeypatch, disk)
    assert resume_training(run_dir, ["checkpoint.every=512"], stream=io.StringIO()) == 74
    good = run_dir / "checkpoints" / "step_000000000640.pt"
    assert capsys.readouterr().err == (f"error: writing {run_dir}/config.yaml: {ENOSPC}; the last "
                                       f"good checkpoint is {good}\n")
    assert (run_dir / "config.yaml").read_text() == config
    assert read_status(run_dir)["checkpoint"] == str(good)
    monkeypatch.undo()
    assert resume_training(run_dir, stream=io.StringIO()) == 0
    assert_same_run(run_dir, references["ppo"])


def test_an_event_file_that_cannot_be_opened_stops_before_training(tiny_cfg, tmp_path,
                                                                   monkeypatch, capsys):
    """The writer's thread fails on its first write, before any guard: still one line."""
    def write(self, filename, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(gfile.LocalFileSystem, "write", write)
    cfg = tiny_cfg(f"run_dir={tmp_path / 'run'}")
    assert run_training(cfg, stream=io.StringIO()) == 74
    assert capsys.readouterr().err == (f"error: writing the TensorBoard events in {tmp_path}/run: "
                                       f"{ENOSPC}; no checkpoint was written before\n")
    assert read_status(tmp_path / "run")["reason"] == "write_failed"
