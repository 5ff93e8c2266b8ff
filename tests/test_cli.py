"""The command line: a smoke run writes the expected tags; bad input is one line, exit 2."""

import subprocess
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_tiny_run_writes_the_expected_tags(tmp_path):
    result = run_cli("configs/tiny.yaml", f"runs_root={tmp_path}")
    assert result.returncode == 0, result.stderr
    run_dirs = list((tmp_path / "tiny").iterdir())
    assert len(run_dirs) == 1 and run_dirs[0].name.startswith("none__s1__")
    run_dir = run_dirs[0]
    assert f"run directory: {run_dir}" in result.stdout
    assert f"tensorboard --logdir {run_dir.parent}" in result.stdout
    assert (run_dir / "config.yaml").is_file()
    assert '"finished"' in (run_dir / "status.json").read_text()
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    expected = {
        "charts/episodic_return", "charts/episodic_length", "charts/SPS",
        "charts/learning_rate", "charts/task_index", "losses/value_loss", "losses/policy_loss",
        "losses/entropy", "losses/approx_kl", "losses/clipfrac", "losses/explained_variance",
        "task/Empty-5x5-v0/episodic_return",
    }
    assert expected <= tags, expected - tags
    assert [(e.step, e.value) for e in acc.Scalars("charts/task_index")] == [
        (0, 0.0), (1024, 1.0), (2048, 2.0)]
    assert "hyperparameters" in "".join(acc.Tags()["tensors"])


def test_print_config_resolves_overrides(tmp_path):
    result = run_cli("tiny", "ppo.learning_rate=1e-3", "seed=7", "--print-config")
    assert result.returncode == 0
    assert "learning_rate: 0.001" in result.stdout and "seed: 7" in result.stdout


def test_help_explains_overrides():
    result = run_cli("--help")
    assert result.returncode == 0 and "dotted" in result.stdout


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    """The real entry point once; every kind of bad input is checked in-process in
    test_bad_input.py, through the same guard."""
    result = run_cli("tiny", "ppo.learnin_rate=1", f"runs_root={tmp_path}")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "unknown config key 'ppo.learnin_rate'" in lines[0]
    assert "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir()), "bad input must not write anything"
