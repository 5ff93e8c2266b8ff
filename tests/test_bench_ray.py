"""A two-cell bench as Ray tasks (`--address`, here an instance this process started), then its
report checked against the event files."""

import math

import pandas as pd
import pytest
import yaml
from run_dirs import markdown_table
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.errors import ConfigError
from agents.plasticity.base import STRATEGIES
from analysis.study import grid as bench
from analysis.study import report
from analysis.study.aggregate import REFERENCE, segment_auc
from analysis.study.executors import RayExecutor
from analysis.study.report_tables import number

ray = pytest.importorskip("ray")
SWITCH_EVERY = 1024  # the tiny config's


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()


def logged_scores(run_dir, num_segments=3):
    """Mean return and AUC of each task segment, straight from the run's event file."""
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    events = accumulator.Scalars("charts/episodic_return")
    scores = []
    for k in range(num_segments):
        start, end = k * SWITCH_EVERY, (k + 1) * SWITCH_EVERY
        last = k == num_segments - 1  # the run's final step stays in the last segment
        points = [(e.step, e.value) for e in events if start <= e.step < end or last and
                  e.step == end]
        steps, values = zip(*points)  # with 4 envs, each task ends episodes by 1024 steps
        scores.append((sum(values) / len(values), segment_auc(steps, values, start, end)))
    return scores


@pytest.mark.skipif("reset" not in STRATEGIES, reason="the reference needs the reset strategy")
def test_two_cell_bench_on_ray_and_its_report_match_the_logs(tmp_path, local_ray, capsys):
    path = tmp_path / "pair.yaml"
    path.write_text(yaml.safe_dump({"base": "tiny.yaml", "seeds": [1],
                                    "strategies": [{"name": "none"}]}))

    # --address runs on Ray; Ray being initialised in this process, that instance is used
    assert bench.main([str(path), "--out", str(tmp_path), "--address", "auto"]) == 0
    console = capsys.readouterr().out
    assert "finished    none/tiny/s1" in console and f"finished    {REFERENCE}/tiny/s1" in console
    assert report.main([str(tmp_path / "pair")]) == 0

    out = tmp_path / "pair" / "report"
    ours = logged_scores(tmp_path / "pair" / "none" / "tiny" / "s1")
    fresh = logged_scores(tmp_path / "pair" / REFERENCE / "tiny" / "s1")
    ratios = pd.read_csv(out / "tables" / "plasticity_ratios.csv")
    ratios = ratios[ratios["strategy_set"] == "none"].set_index("task_index")["plasticity_ratio"]
    rows = [row for row in markdown_table((out / "report.md").read_text(), "position")
            if row["strategy set"] == "none"]
    assert [row["position"] for row in rows] == ["0", "1", "2"]
    for k, ((mean_return, auc), (_, fresh_auc)) in enumerate(zip(ours, fresh)):
        expected_ratio = auc / fresh_auc if fresh_auc > 0 else math.nan
        assert ratios[k] == pytest.approx(expected_ratio, nan_ok=True)
        assert rows[k]["mean return"] == number(mean_return)
        assert rows[k]["AUC"] == number(auc)
        assert rows[k]["ratio (AUC)"] == number(expected_ratio)
    assert (out / "report.html").read_text().count("data:image/png;base64,") >= 2


def test_ray_executor_limits_parallel_runs_and_hands_back_failures(local_ray):
    def work(item):
        import time

        start = time.monotonic()
        time.sleep(0.5)
        if item == 3:
            raise ValueError("item 3 broke")
        return start, time.monotonic()

    executor = RayExecutor(cpus=0.5, max_parallel=2)  # the CPUs would allow four at once
    outcomes = dict(executor.map_unordered(work, range(5)))
    executor.close()

    assert ray.is_initialized()  # an instance it did not start stays up
    assert isinstance(outcomes[3], Exception) and "item 3 broke" in str(outcomes[3])
    intervals = [outcomes[i] for i in (0, 1, 2, 4)]
    for start, _ in intervals:  # at no start are more than two running, itself included
        assert sum(s <= start < e for s, e in intervals) <= 2
    with pytest.raises(ConfigError, match="a run needs 3 CPUs and 0 GPUs but this machine has 2"):
        RayExecutor(cpus=3)


@pytest.mark.slow
def test_a_two_node_cluster_losing_a_node_records_its_runs_failed_and_reruns_them():
    """bench/ray_cluster.py: a head and a second node (`ray start`, loopback), the second killed
    mid-grid; its claims (finished runs kept, exactly the dead node's failed, the next
    invocation re-running exactly those) each print ok or FAILED. ~1 min on 2 cores."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "bench" / "ray_cluster.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "all claims hold" in done.stdout
