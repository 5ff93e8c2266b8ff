"""How a run stops early: a signal (a checkpoint first, then exit 130/143 and how to resume) or
divergence (the run marked failed, the last good checkpoint kept)."""

import io
import json
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from signals import Signals

from agents.plasticity.base import STRATEGIES, Strategy
from agents.runtime.checkpoints import load_checkpoint
from agents.runtime.launch import run_training
from agents.runtime.resume import resume_training
from agents.runtime.run_dir import read_status
from agents.runtime.safety import divergence
from agents.runtime.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent
TINY = ("sequence.switch_every=512", "ppo.num_steps=32", "torch_threads=1", "checkpoint.every=256")


def test_sigint_to_a_real_run_checkpoints_exits_130_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), "tiny", f"run_dir={run_dir}", "print_every=0",
         "torch_threads=1", "sequence.switch_every=2048", "checkpoint.every=512"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # a progress line: training is under way
        if line.startswith("step "):
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "SIGINT: finishing this update, then writing a checkpoint" in err
    assert f"resume with: python train.py --resume {run_dir}" in out
    status = read_status(run_dir)
    assert status["status"] == "interrupted" and 0 < status["step"] < 6144
    stopped = load_checkpoint(status["checkpoint"])
    assert stopped["step"] == status["step"]
    assert resume_training(run_dir, stream=io.StringIO()) == 0
    assert read_status(run_dir) | {"time": None} == {"status": "finished", "step": 6144,
                                                     "time": None}


def test_sigterm_exits_143_after_a_checkpoint(tiny_cfg, tmp_path):
    cfg = tiny_cfg(*TINY, f"run_dir={tmp_path / 'run'}")
    out = io.StringIO()
    assert run_training(cfg, [Signals(384, signal.SIGTERM)], stream=out) == 143
    assert "SIGTERM: stopped at step 384, checkpoint" in out.getvalue()
    assert read_status(tmp_path / "run")["checkpoint"].endswith("step_000000000384.pt")


def test_a_second_signal_stops_at_once_keeping_the_last_checkpoint(tiny_cfg, tmp_path):
    cfg = tiny_cfg(*TINY, f"run_dir={tmp_path / 'run'}")
    assert run_training(cfg, [Signals(640, signal.SIGINT, signal.SIGINT)],
                        stream=io.StringIO()) == 130
    status = read_status(tmp_path / "run")
    assert status["status"] == "interrupted" and status["step"] == 640
    assert status["checkpoint"].endswith("switch_001.pt")  # the newest written before
    assert not (tmp_path / "run" / "checkpoints" / "step_000000000640.pt").exists()


@dataclass
class NanSettings:
    at_update: int = 20
    raise_next: bool = False  # the next step raises, as a library check on NaN inputs would


class NanLoss(Strategy):
    """Test-only: a NaN loss penalty at one gradient step."""

    name = "nan_loss"
    Settings = NanSettings

    def loss_penalty(self, step):
        if step.ctx.update_count + 1 == self.settings.at_update:
            return step.loss * float("nan")
        if self.settings.raise_next and step.ctx.update_count == self.settings.at_update:
            raise ValueError("expected finite logits")
        return None


@pytest.mark.parametrize("at_update,raise_next,raised", [
    (24, False, ""),  # the iteration's last step: found by the check after the iteration
    (20, False, ""),  # mid-iteration: the NaN weights run on to that check
    (20, True, " (ValueError raised)"),  # a check fails on the NaN first
])
def test_a_nan_loss_stops_the_run_marked_failed_with_its_last_good_checkpoint(
        tiny_cfg, tmp_path, monkeypatch, capsys, at_update, raise_next, raised):
    monkeypatch.setitem(STRATEGIES, "nan_loss", NanLoss)
    cfg = tiny_cfg(*TINY, f"run_dir={tmp_path / 'run'}", "plasticity.nan_loss="
                   f"{{at_update: {at_update}, raise_next: {str(raise_next).lower()}}}")
    # 8 gradient steps per 128-step iteration: updates 17-24 are the iteration ending at 384
    assert run_training(cfg, stream=io.StringIO()) == 1
    good = tmp_path / "run" / "checkpoints" / "step_000000000256.pt"
    message = (f"training diverged at step 384: a gradient step's loss was NaN or Inf{raised}; "
               f"the last good checkpoint is {good}")
    assert capsys.readouterr().err == f"error: {message}\n"
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status | {"time": None} == {"status": "failed", "reason": "diverged", "step": 384,
                                       "error": message, "checkpoint": str(good), "time": None}
    assert sorted(p.name for p in good.parent.iterdir()) == ["step_000000000256.pt",
                                                             "switch_000.pt"]
    kept = load_checkpoint(good)["agent"]["network"]
    assert all(torch.isfinite(t).all() for t in kept.values())


def test_divergence_names_a_nan_loss_or_parameter(tiny_cfg):
    agent = Trainer(tiny_cfg()).agent
    assert divergence(agent) is None
    with torch.no_grad():
        next(agent.network.parameters())[0] = float("inf")
    assert divergence(agent) == "the parameters are NaN or Inf"
    agent.learner.nonfinite_loss |= True
    assert divergence(agent) == "a gradient step's loss was NaN or Inf"
