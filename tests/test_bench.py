"""`pliable bench`: the grid's expansion, bad input, the runner (failure, resume) in-process."""

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tqdm import tqdm

from agents.errors import ConfigError
from agents.plasticity import strategy_set_name
from agents.run_view import Observer
from agents.runtime.run_dir import write_status
from analysis.study import grid as bench_module
from analysis.study.executors import SerialExecutor
from analysis.study.grid import CellResult, RunLog, main, plan, run_bench, run_cell, summarize
from analysis.study.grid_config import (
    BENCH_DIR,
    REFERENCE,
    REFERENCE_PLASTICITY,
    check_cells,
    load_bench,
)
from analysis.study.progress import eta_postfix, eta_text

ROOT = Path(__file__).resolve().parent.parent


def write_bench(directory, **bench):
    path = directory / f"{bench.pop('file_name', 'grid')}.yaml"
    path.write_text(yaml.safe_dump({"base": "tiny.yaml", **bench}))
    return path


def test_grid_expands_to_exactly_the_expected_cells(tmp_path):
    base = tmp_path / "base.yaml"  # the tiny config with a strategy of its own
    base.write_text((ROOT / "configs" / "tiny.yaml").read_text() + "plasticity: {l2: {}}\n")
    path = write_bench(
        tmp_path, base=str(base), seeds=[1, 2],
        strategies=[{"name": "none"},
                    {"name": "er_l2", "plasticity": {"effective_rank": {}, "l2": {"coef": 1e-3}}}],
        sequences={"short": {"switch_every": 512}, "long": {"switch_every": 2048, "cycles": 2}},
        overrides=["ppo.update_epochs=1"])

    bench = load_bench(path, tmp_path / "out")

    expected = {(s, q, seed) for s in ("none", "er_l2", REFERENCE) for q in ("short", "long")
                for seed in (1, 2)}
    assert {(c.strategy_set, c.sequence, c.seed) for c in bench.cells} == expected
    assert len(bench.cells) == 12 and bench.root == (tmp_path / "out" / "grid").resolve()
    for cell in bench.cells:
        cfg = cell.cfg
        assert cell.run_dir == bench.root / cell.strategy_set / cell.sequence / f"s{cell.seed}"
        assert (cfg.run_dir, cfg.seed) == (str(cell.run_dir), cell.seed)
        assert (cfg.strategy_set, cfg.exp_name) == (cell.strategy_set, cell.sequence)
        assert cfg.sequence.switch_every == {"short": 512, "long": 2048}[cell.sequence]
        assert cfg.sequence.cycles == {"short": 1, "long": 2}[cell.sequence]
        assert cfg.ppo.update_epochs == 1 and cfg.torch_threads == 1
    by_set = {c.strategy_set: c.cfg.plasticity for c in bench.cells}
    assert strategy_set_name(by_set["none"]) == "none"  # the base's l2 is switched off
    assert strategy_set_name(by_set["er_l2"]) == "effective_rank+l2"
    assert by_set["er_l2"]["l2"]["coef"] == 1e-3
    assert strategy_set_name(by_set[REFERENCE]) == "reset"
    assert dict(by_set[REFERENCE]["reset"]) == REFERENCE_PLASTICITY["reset"]


def test_reference_false_leaves_the_reference_out_and_the_sequence_is_the_base_name(tmp_path):
    path = write_bench(tmp_path, file_name="small", seeds=[3], reference=False,
                       strategies=[{"name": "none"}])

    bench = load_bench(path, tmp_path)

    assert [(c.label, c.cfg.exp_name) for c in bench.cells] == [("none/tiny/s3", "tiny")]
    assert bench.name == "small"


@pytest.mark.parametrize("path", sorted(BENCH_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_each_shipped_benchmark_expands_and_names_real_strategies_and_envs(path, tmp_path):
    bench = load_bench(path, tmp_path / "out")
    check_cells(bench.cells)

    assert {c.strategy_set for c in bench.cells} >= {"none", REFERENCE}
    assert len({c.run_dir for c in bench.cells}) == len(bench.cells)
    assert not (tmp_path / "out").exists()


def test_the_shipped_benchmarks_are_the_documented_ones():
    assert {p.stem for p in BENCH_DIR.glob("*.yaml")} == {
        "tiny", "plasticity_loss", "atari_plasticity", "slippery_ant"}
    assert len(load_bench("tiny").cells) == 4  # none and the reference, two seeds
    ant = load_bench("slippery_ant").cells
    assert {c.strategy_set for c in ant} == {"none", "l2", "er_l2", "cbp", "shrink_perturb",
                                             REFERENCE} and len(ant) == 30


BAD_BENCHES = [
    ({"seeds": []}, "seeds must be a non-empty list"),
    ({"seeds": [1, 1]}, "distinct integers"),
    ({"strategies": []}, "strategies is empty"),
    ({"strategies": [{"name": "a"}, {"name": "a"}]}, "strategies: names must be distinct"),
    ({"strategies": [{"name": "a/b"}]}, "name 'a/b' must be letters"),
    ({"strategies": [{"name": REFERENCE}]}, "automatic fresh-agent reference"),
    ({"overrides": ["seed=3"]}, "'seed=3' sets 'seed', which the grid sets"),
    ({"overrides": ["plasticity.l2={}"]}, "sets 'plasticity'"),
    ({"overrides": ["ppo.nope=1"]}, "unknown config key 'ppo.nope'"),
    ({"sequences": {"s": {"swich_every": 5}}}, "unknown config key 'sequence.swich_every'"),
    ({"seed": 3}, "unknown config key 'seed' (allowed: base, name, seeds"),
    ({"base": "nope.yaml"}, "config file not found: nope.yaml"),
    ({"cpus_per_run": 0}, "cpus_per_run must be > 0"),
]


@pytest.mark.parametrize("changes,message", BAD_BENCHES)
def test_bad_bench_config_is_a_config_error(tmp_path, changes, message):
    path = write_bench(tmp_path, **{"strategies": [{"name": "none"}], **changes})
    with pytest.raises(ConfigError, match=None) as caught:
        load_bench(path, tmp_path / "out")
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_cli_bad_bench_is_one_line_exit_2_and_writes_nothing(tmp_path):
    path = write_bench(tmp_path, strategies=[{"name": "x", "plasticity": {"nope": {}}}])
    result = subprocess.run([sys.executable, "-c", "import sys, train; sys.exit(train.cli())",
                             "bench", str(path), "--out", str(tmp_path / "out")], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: strategy set 'x': ")
    assert "unknown strategy 'nope'" in lines[0]
    assert not (tmp_path / "out").exists()


def test_dry_run_lists_the_cells_and_writes_nothing(tmp_path, capsys):
    assert main(["tiny", "--dry-run", "--out", str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("bench tiny: 4 runs in")
    assert sorted(line.split()[1] for line in lines[1:]) == [
        "none/tiny/s1", "none/tiny/s2", f"{REFERENCE}/tiny/s1", f"{REFERENCE}/tiny/s2"]
    assert not (tmp_path / "out").exists()


class CrashAfterFirstUpdate(Observer):
    def after_iteration(self, run):
        raise RuntimeError("boom")


def test_a_crash_is_recorded_the_others_finish_and_a_rerun_resumes(tmp_path, monkeypatch):
    path = write_bench(tmp_path, seeds=[1, 2], strategies=[{"name": "none"}], reference=False,
                       overrides=["sequence.switch_every=256"])
    bench = load_bench(path, tmp_path / "out")
    train = bench_module.run_training
    crash = {2}  # seeds that crash, on the first attempt only
    monkeypatch.setattr(bench_module, "run_training", lambda cfg, stream: train(
        cfg, observers=[CrashAfterFirstUpdate()] if cfg.seed in crash else [], stream=stream))
    out = io.StringIO()

    results = {r.label: r for r in run_bench(bench, SerialExecutor(), out)}

    s1, s2 = (bench.root / "none" / "tiny" / f"s{seed}" for seed in (1, 2))
    assert results["none/tiny/s1"].status == "finished"
    assert results["none/tiny/s2"].status == "failed"
    status = json.loads((s2 / "status.json").read_text())
    assert status["status"] == "failed" and status["step"] > 0
    assert "Traceback" in status["error"] and "RuntimeError: boom" in status["error"]
    log = (s2 / "stdout.log").read_text()
    assert f"run directory: {s2}" in log and "RuntimeError: boom" in log
    assert "step" in (s1 / "stdout.log").read_text()  # progress lines went to the log
    assert summarize(bench, list(results.values()), out) == 1
    assert "failed: none/tiny/s2: RuntimeError: boom" in out.getvalue()
    events_before = {p.name: p.stat().st_mtime_ns for p in s1.iterdir()}

    crash.clear()
    rerun = {r.label: r.status for r in run_bench(bench, SerialExecutor(), out)}

    assert rerun == {"none/tiny/s1": "skipped", "none/tiny/s2": "finished"}
    assert {p.name: p.stat().st_mtime_ns for p in s1.iterdir()} == events_before
    moved = s2.with_name("s2.failed-1")
    assert json.loads((moved / "status.json").read_text())["status"] == "failed"
    assert json.loads((s2 / "status.json").read_text())["status"] == "finished"
    assert [action for _, action in plan(bench.cells)] == ["skip", "skip"]


def test_a_cell_failing_before_its_run_directory_exists_is_still_recorded(tmp_path):
    # An env that does not exist: loading the bench does not build envs (check_cells does).
    path = write_bench(tmp_path, seeds=[1], reference=False, strategies=[{"name": "none"}],
                       sequences={"bad": {"tasks": [{"env_id": "MiniGrid-Nope-v0"}]}})
    cell = load_bench(path, tmp_path / "out").cells[0]

    result = run_cell(cell)

    message = "unknown MiniGrid env 'MiniGrid-Nope-v0'"
    assert result.status == "failed" and message in result.error
    status = json.loads((cell.run_dir / "status.json").read_text())
    assert status["status"] == "failed" and message in status["error"]
    assert message in (cell.run_dir / "stdout.log").read_text()


def test_run_log_holds_text_back_until_the_run_directory_exists(tmp_path):
    log = RunLog(tmp_path / "run" / "stdout.log")
    log.write("before\n")
    assert not (tmp_path / "run").exists()
    (tmp_path / "run").mkdir()
    log.write("after\n")
    assert (tmp_path / "run" / "stdout.log").read_text() == "before\nafter\n"
    log.close()


class WorkerDied:
    """An executor whose runs all die before they can report (a killed Ray worker, say)."""

    def map_unordered(self, fn, items):
        for item in items:
            yield item, RuntimeError("worker died")


def test_a_run_the_executor_lost_is_recorded_as_failed(tmp_path):
    path = write_bench(tmp_path, seeds=[1], reference=False, strategies=[{"name": "none"}])
    bench = load_bench(path, tmp_path / "out")
    out = io.StringIO()

    [result] = run_bench(bench, WorkerDied(), out)

    assert result.status == "failed" and "RuntimeError: worker died" in result.error
    status = json.loads((bench.cells[0].run_dir / "status.json").read_text())
    assert status["status"] == "failed" and "worker died" in status["error"]
    assert "failed      none/tiny/s1" in out.getvalue()


def test_the_eta_is_the_pace_of_the_cells_that_ended_times_those_left():
    assert eta_text(600, 2, 3) == "ETA 15:00"  # 300 s a cell, wall clock
    assert eta_text(3600, 1, 2) == "ETA 2:00:00"
    assert eta_text(5, 0, 4) == "ETA ?"  # none ended yet: no pace
    assert eta_text(600, 2, 0) == "ETA 00:00"
    bar = tqdm(total=10, initial=4, file=io.StringIO())  # 4 skipped: they took no time
    bar.start_t -= 600
    bar.update(2)
    assert eta_postfix(bar) == "ETA 20:00"  # 2 ended in 600 s, 4 left
    bar.close()


class Instant:
    """An executor whose runs finish at once, without training."""

    def map_unordered(self, fn, items):
        for item in items:
            yield item, CellResult(item.label, "finished", 1.0)


def test_the_bench_bar_shows_an_eta_from_the_cells_that_ended(tmp_path, capsys):
    path = write_bench(tmp_path, seeds=[1, 2, 3], reference=False, strategies=[{"name": "none"}])
    bench = load_bench(path, tmp_path / "out")
    bench.cells[0].run_dir.mkdir(parents=True)
    write_status(bench.cells[0].run_dir, "finished")  # skipped: never part of the pace

    run_bench(bench, Instant(), io.StringIO())

    err = capsys.readouterr().err
    assert "1/3 [00:00, ETA ?]" in err and "2/3 [00:00, ETA 00:00]" in err
    assert "3/3 [00:00, ETA 00:00]" in err


TRAINING_ENDS = [  # exit code, and the status.json train_in writes before returning it
    (0, {"status": "finished", "step": 512}, "finished", ""),
    (130, {"status": "interrupted", "step": 384, "checkpoint": None}, "interrupted", ""),
    (143, {"status": "interrupted", "step": 384, "checkpoint": "c.pt"}, "interrupted", ""),
    (1, {"status": "failed", "reason": "diverged", "step": 384,
         "error": "training diverged at 384"}, "failed", "training diverged at 384"),
    (1, None, "failed", "run exited with status 1"),  # died before writing status.json
    (1, {"status": "running", "step": 0}, "failed", "run exited with status 1"),
]


@pytest.mark.parametrize("code,written,expected,error", TRAINING_ENDS)
def test_run_cell_takes_the_status_training_wrote(tmp_path, monkeypatch, code, written,
                                                  expected, error):
    path = write_bench(tmp_path, seeds=[1], reference=False, strategies=[{"name": "none"}])
    cell = load_bench(path, tmp_path / "out").cells[0]

    def fake_training(cfg, stream):
        cell.run_dir.mkdir(parents=True)
        if written:
            write_status(cell.run_dir, **written)
        return code

    monkeypatch.setattr(bench_module, "run_training", fake_training)
    result = run_cell(cell)
    assert result.status == expected
    assert result.error == error
