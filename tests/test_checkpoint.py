"""Checkpoint files: atomic against kill -9, loaded without running code, refused with one clear
line when corrupt or foreign, and every strategy's state loadable that way."""

import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import agents.runtime.checkpoints as checkpoint
from agents.runtime.checkpoints import (
    FORMAT,
    VERSION,
    CheckpointError,
    atomic_save,
    load_checkpoint,
)

ROOT = Path(__file__).resolve().parent.parent

WRITER = """
import sys, torch
from agents.runtime.checkpoints import atomic_save
path = sys.argv[1]
atomic_save({"format": "pliable-checkpoint", "version": 1, "x": torch.arange(3.0)}, path)
print("first written", flush=True)
big = torch.ones(50_000_000)  # 200 MB: a write long enough to be killed in the middle
while True:
    atomic_save({"format": "pliable-checkpoint", "version": 1, "x": big}, path)
"""


def test_a_write_killed_midway_leaves_the_previous_checkpoint_loadable(tmp_path):
    path = tmp_path / "step_000000000256.pt"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "first written"
        temp = path.with_name(f".{path.name}.tmp-{writer.pid}")
        deadline = time.monotonic() + 60
        while not (temp.exists() and 0 < temp.stat().st_size < 100_000_000):
            assert time.monotonic() < deadline, "the big write never started"
            time.sleep(0.001)  # poll without spinning a core the writer needs
        writer.kill()  # SIGKILL: no handler, no cleanup
    finally:
        writer.wait()
    assert temp.exists(), "the kill landed after the write: nothing was tested"
    assert torch.equal(load_checkpoint(path)["x"], torch.arange(3.0))  # untouched by the kill
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(temp)  # what a non-atomic write would have left as the checkpoint


def test_a_write_that_fails_leaves_the_previous_checkpoint_and_no_temporary(tmp_path,
                                                                          monkeypatch):
    path = tmp_path / "final.pt"
    atomic_save({"format": FORMAT, "version": VERSION, "x": torch.ones(2)}, path)

    def crash_midway(obj, file):
        file.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"format": FORMAT, "version": VERSION, "x": torch.zeros(2)}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final.pt"]
    assert torch.equal(load_checkpoint(path)["x"], torch.ones(2))


class RunsCode:
    """Unpickling this calls open(marker, "w"): a file appears if the load runs code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.mark.parametrize("as_zip", [True, False], ids=["torch-zip", "raw-pickle"])
def test_a_tampered_checkpoint_is_refused_without_running_its_code(tmp_path, as_zip):
    marker = tmp_path / "code-was-run"
    path = tmp_path / "switch_001.pt"
    tampered = {"format": FORMAT, "version": VERSION, "agent": RunsCode(marker)}
    if as_zip:
        torch.save(tampered, path)
    else:
        path.write_bytes(pickle.dumps(tampered, protocol=2))  # torch's own protocol
    with pytest.raises(CheckpointError, match=r"refused to load.*\(io.open\)") as refused:
        load_checkpoint(path)
    assert "\n" not in str(refused.value)
    assert not marker.exists()
    if as_zip:  # the file really is hostile: an unsafe load runs it
        torch.load(path, weights_only=False)
    else:
        pickle.loads(path.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("content,message", [
    (b"", "is not a pliable checkpoint"),
    (b"hello, this is not a checkpoint", "is not a pliable checkpoint"),
    ("truncated", "truncated or corrupt"),
    ("foreign", "is not a pliable checkpoint"),
    ("version", "checkpoint version 99 is not 1"),
])
def test_corrupt_or_foreign_files_give_one_clear_line(tmp_path, content, message):
    path = tmp_path / "step_000000000512.pt"
    if content == "truncated":
        atomic_save({"format": FORMAT, "version": VERSION, "x": torch.ones(1000)}, path)
        path.write_bytes(path.read_bytes()[:1500])
    elif content == "foreign":
        torch.save({"model": torch.ones(3)}, path)  # a torch file, but some other program's
    elif content == "version":
        torch.save({"format": FORMAT, "version": 99}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as error:
        load_checkpoint(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


@pytest.mark.parametrize("value,where", [
    ({"agent": {"obs": np.zeros(3)}}, "x.pt.agent.obs is a ndarray"),
    ({"rng": [1, np.float64(0.5)]}, r"x.pt.rng\[1\] is a float64"),
    ({"losses": __import__("collections").deque([1.0])}, "x.pt.losses is a deque"),
])
def test_saving_what_a_safe_load_would_refuse_fails_at_once(tmp_path, value, where):
    with pytest.raises(TypeError, match=where):
        atomic_save(value, tmp_path / "x.pt")
    assert not any(tmp_path.iterdir())


def strategy_names():
    import agents.plasticity  # noqa: F401  (registers the catalogue)
    from agents.plasticity.base import STRATEGIES

    return sorted(STRATEGIES)


@pytest.mark.parametrize("name", strategy_names())
def test_every_strategy_state_round_trips_through_a_safe_load(name, tmp_path):
    """After a few gradient steps, a strategy's state saved and loaded weights_only into a fresh
    twin makes the twin behave identically: the same penalty and the same weights next step."""
    from strategy_helpers import make_learner, optimize, step_context, value_loss

    trained, twin = make_learner({name: {}}, seed=0), make_learner({name: {}}, seed=1)
    twin.obs = trained.obs  # the same data; everything else differs until the load
    optimize(trained, steps=3, loss_fn=value_loss)
    state = {"format": FORMAT, "version": VERSION, "learner": trained.state_dict()}
    atomic_save(state, tmp_path / "c.pt")
    twin.load_state_dict(load_checkpoint(tmp_path / "c.pt")["learner"])
    for learner in (trained, twin):
        optimize(learner, steps=2, loss_fn=value_loss)
    for (key, a), b in zip(trained.network.state_dict().items(),
                           twin.network.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    penalties = [learner.strategies.loss_penalty(step_context(learner, loss_fn=value_loss))
                 for learner in (trained, twin)]
    assert penalties[0].keys() == penalties[1].keys()
    assert all(torch.equal(penalties[0][k], penalties[1][k]) for k in penalties[0])
