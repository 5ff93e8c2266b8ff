"""The shipped study (configs/benchmarks/plasticity_loss.yaml), shrunk to seconds, end to end:
every strategy set trains on its base config, and the report answers the study's questions."""

import io

import pandas as pd
import yaml

from agents.runtime.config import CONFIG_DIR
from analysis.study.executors import SerialExecutor
from analysis.study.grid import run_bench, summarize
from analysis.study.grid_config import BENCH_DIR, REFERENCE, load_bench
from analysis.study.report import write_report

STUDY = BENCH_DIR / "plasticity_loss.yaml"
BASE = CONFIG_DIR / "minigrid_permuted_actions.yaml"


def tiny_study(tmp_path):
    """The study's own strategy sets and base, with three short tasks and a small monitor."""
    study = yaml.safe_load(STUDY.read_text())
    tasks = yaml.safe_load(BASE.read_text())["sequence"]["tasks"][:3]
    flow = "[" + ", ".join(
        "{" + ", ".join(f"{k}: {v}" for k, v in task.items()) + "}" for task in tasks) + "]"
    study.update(base=str(BASE), seeds=[1, 2], overrides=[
        f"sequence.tasks={flow}", "sequence.switch_every=512", "ppo.num_steps=32",
        "monitor.batch_size=64", "monitor.top_k=4", "monitor.lanczos_steps=8",
        "monitor.density_steps=12", "monitor.metrics_every=0"])
    path = tmp_path / "plasticity_loss.yaml"
    path.write_text(yaml.safe_dump(study))
    return load_bench(path, tmp_path / "out")


def test_the_shipped_study_runs_end_to_end_and_its_report_answers_its_questions(tmp_path):
    bench = tiny_study(tmp_path)
    assert {c.strategy_set for c in bench.cells} == {
        "none", "er_l2", "reset_heads", "shrink_perturb", REFERENCE}
    er_l2 = next(c.cfg for c in bench.cells if c.strategy_set == "er_l2")
    assert list(er_l2.plasticity.er_l2.betas) == [0.99, 0.99]  # the seed's settings
    assert er_l2.monitor.preset == "he2025" and er_l2.monitor.density_kernel == "he2025"
    out = io.StringIO()

    results = run_bench(bench, SerialExecutor(), out)

    assert summarize(bench, results, out) == 0, out.getvalue()
    assert {r.status for r in results} == {"finished"}
    report = write_report(bench.root, bench.root / "report")
    text = report.read_text()
    headline = text.split("## Headline", 1)[1].split("\n## ", 1)[0]
    for question in ("(a) Does the baseline `none` lose plasticity?", "(b) Which strategy sets",
                     "(c) Does Hessian spectral collapse", "(d) First-task warnings"):
        assert question in headline
    tables = bench.root / "report" / "tables"
    selection = pd.read_csv(tables / "eps_selection.csv")
    assert len(selection) == len(er_l2.monitor.he2025_eps)  # every logged ε was scored
    assert selection["chosen"].sum() == 1
    points = pd.read_csv(tables / "collapse_points.csv")
    assert (points["task_index"] > 0).all() and len(points) > 0  # task-start Hessians only
    assert REFERENCE not in set(points["strategy_set"])  # the runs under study only
    for figure in ("collapse_scatter", "hessian_density"):
        assert (bench.root / "report" / "figures" / f"{figure}.png").is_file()
