"""`pliable spectrum CHECKPOINT`: a saved agent measured offline equals what the monitor
measured at that switch during training."""

import io
import sys

import numpy as np

import train
from agents.runtime.launch import run_training
from analysis.spectral.hessian import HessianOperator

MONITOR = ("monitor.enabled=true", "monitor.batch_size=64", "monitor.top_k=4",
           "monitor.lanczos_steps=8", "monitor.ggn_steps=8", "monitor.density_probes=1",
           "monitor.density_steps=8", "monitor.trace_probes=2", "monitor.metrics_every=0",
           "monitor.ntk=false", "monitor.jacobians=false")


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_spectrum_of_a_switch_checkpoint_reproduces_the_monitor(tiny_cfg, tmp_path, capsys,
                                                                 monkeypatch):
    run_dir = tmp_path / "run"
    cfg = tiny_cfg("sequence.switch_every=256", "ppo.num_steps=32", "torch_threads=1",
                   *MONITOR, f"run_dir={run_dir}")
    assert run_training(cfg) == 0
    checkpoint = run_dir / "checkpoints" / "switch_001.pt"
    capsys.readouterr()
    matvec, terminal = HessianOperator.matvec, Terminal()
    with monkeypatch.context() as patch:  # a terminal: the bar counts the products
        patch.setattr(sys, "stderr", terminal)
        assert train.cli(["spectrum", str(checkpoint)] + list(MONITOR[1:])) == 0
    assert "spectrum: Hessian/GGN-vector products: " in terminal.getvalue()
    assert HessianOperator.matvec is matvec  # the counting is undone
    out = capsys.readouterr().out.splitlines()
    written = run_dir / "spectra" / "offline" / "switch_001__DoorKey-5x5-v0.npz"
    assert out[0].startswith("spectrum @ 256 switch_001.pt on DoorKey-5x5-v0 (post) | λmax ")
    assert out[1] == f"wrote {written}"
    offline, online = np.load(written), np.load(run_dir / "spectra" / "switch_001_post.npz")
    for key in ("eigenvalues", "density_nodes", "density_weights", "ggn_eigenvalues",
                "kfac_eigenvalues", "trace", "loss", "lambda_max"):
        np.testing.assert_array_equal(offline[key], online[key], err_msg=key)
    assert int(offline["step"]) == 256 and str(offline["task"]) == "DoorKey-5x5-v0"

    other = tmp_path / "other"
    assert train.cli(["spectrum", str(checkpoint), "--task", "Empty-5x5-v0", "--out", str(other)]
                     + list(MONITOR[1:])) == 0
    measured = np.load(other / "switch_001__Empty-5x5-v0.npz")
    assert str(measured["task"]) == "Empty-5x5-v0"
    assert not np.array_equal(measured["eigenvalues"], offline["eigenvalues"])
