"""The optional Weights & Biases mirror (`logging.wandb`): an offline run holds the resolved config
and every TensorBoard scalar under the same tag at the same step; a bench groups its runs by bench
and strategy set; a resumed run continues the same W&B run; without wandb, turning the mirror on
is one line. Nothing here reaches a network (offline mode, and connections beyond loopback fail).
"""

import io
import ipaddress
import json
import socket
import struct
import sys
import time

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_resume import CrashAt

from agents.runtime.config import load_config
from agents.runtime.launch import run_training
from agents.runtime.resume import resume_training
from agents.runtime.run_dir import read_status
from analysis.study.grid import run_cell
from analysis.study.grid_config import load_bench

SHORT = ("sequence.switch_every=512", "ppo.num_steps=32", "torch_threads=1",
         "checkpoint.every=256")
WANDB = ("logging.wandb.enabled=true", "logging.wandb.mode=offline")
BLOCK, HEADER = 32768, 7  # wandb's .wandb file: a LevelDB-style log of protobuf Records


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """wandb offline, its files in tmp_path/wandb_dir (returned), no connection off this host."""
    wandb = pytest.importorskip("wandb")
    wandb_dir = tmp_path / "wandb_dir"
    wandb_dir.mkdir()
    for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir),
                       "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    connect = socket.socket.connect

    def loopback_only(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] != "localhost" \
                and not ipaddress.ip_address(address[0]).is_loopback:
            raise AssertionError(f"a test tried to reach {address}")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)
    yield wandb_dir
    wandb.teardown()  # wandb reads its environment once per process: the next test has its own


def records(path):
    """Every Record of an offline run's .wandb file, by kind (history, run, config, exit, ...)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, found, pending, pos = path.read_bytes(), {}, b"", HEADER
    assert data[:4] == b":W&B"
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # a block's tail too short for a header: padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        pending += data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind in (1, 4):  # FULL, LAST: a record is complete
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            found.setdefault(record.WhichOneof("record_type"), []).append(record)
    return found


def offline_runs(wandb_dir):
    """The .wandb files of the offline runs, oldest first: complete, as wandb's service writes
    them to their end only when it stops (after wandb.finish returns)."""
    import wandb

    wandb.teardown()
    return sorted((wandb_dir / "wandb").glob("offline-run-*/run-*.wandb"))


def history(found) -> dict:
    """tag -> {step: value} of the mirrored TensorBoard scalars (W&B's own keys left out)."""
    points = {}
    for record in found.get("history", []):
        row = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
               for item in record.history.item}
        for tag, value in row.items():
            if tag != "global_step" and not tag.startswith("_"):
                points.setdefault(tag, {})[row["global_step"]] = value
    return points


def tensorboard_scalars(run_dir) -> dict:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def test_a_bench_run_is_mirrored_with_its_config_scalars_and_group(offline, tmp_path):
    """One bench cell, offline: the W&B run is grouped by the bench and typed by the strategy
    set, holds the resolved config, and every TensorBoard scalar under its own tag and step."""
    bench_file = tmp_path / "study.yaml"
    bench_file.write_text(json.dumps({
        "base": "tiny.yaml", "reference": False, "strategies": [{"name": "l2", "plasticity": {
            "l2": {}}}], "overrides": [*SHORT, *WANDB, "logging.wandb.tags=[paper]"]}))
    (cell,) = load_bench(bench_file, tmp_path / "out").cells
    result = run_cell(cell)
    assert result.status == "finished", result.error
    (path,) = offline_runs(offline)
    found = records(path)
    (run,) = found["run"]
    assert (run.run.run_group, run.run.job_type, list(run.run.tags)) == ("study", "l2",
                                                                         ["paper", "l2"])
    assert run.run.display_name == "tiny__l2__s1"
    config = {item.key: json.loads(item.value_json) for item in run.run.config.update}
    assert config["strategy_set"] == "l2" and "l2" in config["plasticity"]
    assert config["logging"]["wandb"]["id"] == run.run.run_id
    assert config["sequence"]["switch_every"] == 512
    assert found["exit"][0].exit.exit_code == 0
    mirrored, logged = history(found), tensorboard_scalars(cell.run_dir)
    assert "task/Empty-5x5-v0/episodic_return" in logged
    assert logged.keys() <= mirrored.keys(), logged.keys() - mirrored.keys()
    for tag, points in logged.items():
        assert mirrored[tag] == pytest.approx(points), tag


class InterruptAt(CrashAt):
    """A Ctrl-C after the scalars of `step` are logged."""

    def after_iteration(self, run):
        if run.ctx.global_step >= self.step:
            raise KeyboardInterrupt


@pytest.mark.parametrize("stop,exit_code", [(CrashAt, 1), (InterruptAt, 130)])
def test_a_resumed_run_continues_the_same_wandb_run(offline, tiny_cfg, tmp_path, stop,
                                                    exit_code):
    """A crash or an interrupt finishes the W&B run with the run's exit status; --resume reopens
    it (same id, its config.yaml's) and mirrors only what the resumed process logs."""
    import wandb

    cfg = tiny_cfg(*SHORT, *WANDB, f"run_dir={tmp_path / 'run'}")
    if stop is CrashAt:
        with pytest.raises(RuntimeError, match="simulated crash"):
            run_training(cfg, [stop(640)], stream=io.StringIO())
    else:
        assert run_training(cfg, [stop(640)], stream=io.StringIO()) == exit_code
    assert wandb.run is None  # finished
    run_id = load_config(tmp_path / "run" / "config.yaml").logging.wandb.id
    assert run_id and not cfg.logging.wandb.id  # the caller's config is left as it was
    # wandb syncs the event files stamped (in whole seconds) from its run's start on: a resume
    # in the second the stopped process opened its file would sync that file again
    time.sleep(1.1)
    assert resume_training(tmp_path / "run", stream=io.StringIO()) == 0
    assert read_status(tmp_path / "run")["status"] == "finished"
    first, second = (records(path) for path in offline_runs(offline))
    assert [r.run.run_id for r in first["run"] + second["run"]] == [run_id, run_id]
    assert [r.exit.exit_code for r in first["exit"] + second["exit"]] == [exit_code, 0]
    resumed = history(second)["charts/episodic_return"]
    assert resumed and min(resumed) > 512  # from the step-512 checkpoint on, not from 0
    logged = tensorboard_scalars(tmp_path / "run")["charts/episodic_return"]
    assert {step: logged[step] for step in resumed} == pytest.approx(resumed)


def test_a_wandb_run_that_cannot_start_fails_the_run_in_one_line(offline, tiny_cfg, tmp_path,
                                                                  monkeypatch, capsys):
    import wandb

    def refuse(**settings):
        raise wandb.errors.UsageError("api_key not configured (no-tty)")

    monkeypatch.setattr(wandb, "init", refuse)
    cfg = tiny_cfg(*SHORT, *WANDB, f"run_dir={tmp_path / 'run'}")
    assert run_training(cfg, stream=io.StringIO()) == 69
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: logging.wandb: wandb.init failed: "
                                                    "UsageError: api_key not configured"), err
    status = read_status(tmp_path / "run")
    assert (status["status"], status["reason"]) == ("failed", "wandb_failed")
    assert not list((tmp_path / "run").glob("events.*"))  # stopped before any training


def test_wandb_not_installed_is_one_line_naming_the_extra(monkeypatch, tmp_path,
                                                          assert_one_line_exit_2):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    line = assert_one_line_exit_2(
        ["train", "tiny", f"runs_root={tmp_path / 'runs'}", "logging.wandb.enabled=true"],
        "pip install 'pliable[wandb]'", tmp_path)
    assert line.startswith("error: logging.wandb.enabled: the wandb package is not installed")


@pytest.mark.parametrize("override,message", [
    ("logging.wandb.mode=cloud", "logging.wandb.mode: 'cloud' is not one of"),
    ("logging.wandb.project=a/b", "logging.wandb.project: 'a/b' must not contain"),
    ("logging.wandb.tags=[" + "x" * 65 + "]", "must be 1 to 64 characters"),
])
def test_bad_wandb_settings_are_one_line(override, message, tmp_path, assert_one_line_exit_2):
    pytest.importorskip("wandb")
    assert_one_line_exit_2(["train", "tiny", f"runs_root={tmp_path / 'runs'}",
                            "logging.wandb.enabled=true", override], message, tmp_path)


def test_the_mirror_is_off_by_default_and_never_imports_wandb(tiny_cfg, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    assert tiny_cfg().logging.wandb.enabled is False  # would raise if validation imported it
