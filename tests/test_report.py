"""`pliable report` on hand-written runs whose statistics are known in closed form."""

import warnings

import numpy as np
import pandas as pd
import pytest
from run_dirs import SWITCH_EVERY, make_config, markdown_table, write_run
from scipy.stats import spearmanr

from analysis.report import main
from analysis.report_tables import number
from analysis.results import load_table

LEVELS = {  # return on task position k (tasks A, B, A, B): constant within a segment
    ("reference_fresh", 1): lambda k: 10.0, ("reference_fresh", 2): lambda k: 10.0,
    ("l2", 1): lambda k: 10.0 - k, ("l2", 2): lambda k: 10.0 - 2 * k,
}


def write_study(root, with_spectra=True):
    """Two seeds of `l2` and of the reference; l2's spectrum at each switch tracks its ratio."""
    for (name, seed), level in LEVELS.items():
        returns = [(SWITCH_EVERY * k + offset, level(k)) for k in range(4) for offset in (5, 95)]
        scalars = {"charts/episodic_return": returns}
        if with_spectra and name == "l2":
            ratio = [level(k) / 10.0 for k in range(4)]
            scalars["spectrum/post/lambda_max"] = [(SWITCH_EVERY * k, 10 * (1 - ratio[k]))
                                                   for k in (1, 2, 3)]
            scalars["spectrum/pre/trace"] = [(SWITCH_EVERY * k, float(k)) for k in (1, 2, 3)]
        config = make_config(seed=seed, plasticity={}, strategy_set=name, exp_name="AB")
        run_dir = write_run(root / name / f"s{seed}", scalars, config, status="finished")
        if with_spectra and name == "l2":
            (run_dir / "spectra").mkdir()
            for switch in (1, 2, 3):
                np.savez(run_dir / "spectra" / f"switch_{switch:03d}_post.npz",
                         density_nodes=[0.0, 1.0, 5.0 * switch], density_weights=[0.6, 0.3, 0.1])
    write_run(root / "l2" / "s3", {"charts/episodic_return": [(10, 99.0)]},
              make_config(seed=3, plasticity={}, strategy_set="l2", exp_name="AB"),
              status="running")


def test_report_numbers_match_the_closed_form(tmp_path):
    write_study(tmp_path / "runs")
    out = tmp_path / "report"

    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0

    ratios = pd.read_csv(out / "tables" / "plasticity_ratios.csv").set_index(
        ["run", "task_index"])["plasticity_ratio"]
    assert [ratios[("l2/s1", k)] for k in range(4)] == pytest.approx([1.0, 0.9, 0.8, 0.7])
    assert [ratios[("l2/s2", k)] for k in range(4)] == pytest.approx([1.0, 0.8, 0.6, 0.4])
    markdown = (out / "report.md").read_text()
    summary = {row["strategy set"]: row for row in markdown_table(markdown, "runs")}
    l2 = summary["l2"]
    assert l2["runs"] == "2"
    # pooled ratios .4 .6 .7 .8 .8 .9 1 1: IQM = mean(.7 .8 .8 .9) = 0.8, mean = 0.775
    assert l2["ratio (AUC) IQM [95% CI]"].startswith("0.8 [")
    assert l2["ratio (AUC) mean [95% CI]"].startswith("0.775 [")
    assert l2["ratio trend per task [95% CI]"].startswith("-0.15 [")  # slopes -0.1 and -0.2
    # last visits: (8, 7) and (6, 4); forgetting: A 10-8, B 9-7 and A 10-6, B 8-4
    assert (l2["final return"], l2["forgetting"]) == ("6.25", "3")
    assert summary["reference_fresh"]["ratio (AUC) IQM [95% CI]"].startswith("1 [")
    per_task = [row for row in markdown_table(markdown, "position")
                if row["strategy set"] == "l2"]
    assert [(row["task"], row["ratio (AUC)"]) for row in per_task] == [
        ("A", "1"), ("B", "0.85"), ("A", "0.7"), ("B", "0.55")]

    spectra = markdown_table(markdown, "switch to position")
    assert [(row["switch to position"], row["post lambda_max"], row["pre trace"])
            for row in spectra] == [("1", "1.5", "1"), ("2", "3", "2"), ("3", "4.5", "3")]
    correlation = {(row["measured"], row["metric"]): row
                   for row in markdown_table(markdown, "Spearman ρ")}
    assert correlation[("post", "lambda_max")]["n"] == "6"  # 2 runs x 3 switches
    assert correlation[("post", "lambda_max")]["Pearson r"] == "-1"
    # trace 1, 2, 3 in each run against its ratios .9 .8 .7 and .8 .6 .4
    rho = spearmanr([1, 2, 3, 1, 2, 3], [0.9, 0.8, 0.7, 0.8, 0.6, 0.4]).statistic
    assert correlation[("pre", "trace")]["Spearman ρ"] == number(rho)

    assert "l2/s3 (running)" in markdown  # listed, never scored
    assert set(load_table(out / "results.csv")["run"]) == {"l2/s1", "l2/s2", "reference_fresh/s1",
                                                            "reference_fresh/s2"}
    for figure in ("learning_curves", "plasticity_ratio", "hessian_density"):
        assert (out / "figures" / f"{figure}.png").stat().st_size > 1000
        assert (out / "figures" / f"{figure}.pdf").read_bytes().startswith(b"%PDF")
        assert f"](figures/{figure}.png)" in markdown
    html = (out / "report.html").read_text()
    assert html.count('<img src="data:image/png;base64,') == 3 and 'src="figures' not in html


def test_without_reference_or_spectra_the_report_says_so(tmp_path, capsys):
    write_study(tmp_path / "runs", with_spectra=False)
    for run_dir in (tmp_path / "runs" / "reference_fresh").iterdir():
        (run_dir / "status.json").write_text('{"status": "failed"}')

    assert main([str(tmp_path / "runs"), "--format", "parquet"]) == 0

    out = tmp_path / "runs" / "report"
    markdown = (out / "report.md").read_text()
    assert "No finished runs of the reference strategy set `reference_fresh`" in markdown
    assert "hold no `spectrum/post/*` or `spectrum/pre/*` scalars" in markdown
    assert "no densities to plot" in markdown
    assert not (out / "figures" / "plasticity_ratio.png").exists()
    assert set(load_table(out / "results.parquet")["strategy_set"]) == {"l2"}
    assert "reference_fresh/s1 (failed)" in markdown


def test_a_skipped_run_is_one_note_and_no_raw_warning(tmp_path, capsys):
    write_study(tmp_path / "runs", with_spectra=False)
    stray = write_run(tmp_path / "runs" / "stray", {"charts/episodic_return": [(5, 1.0)]})
    (stray / "config.yaml").unlink()  # event files but no config: cannot be placed in a schedule

    with warnings.catch_warnings(record=True) as raw:
        warnings.simplefilter("always")
        assert main([str(tmp_path / "runs")]) == 0

    note = f"skipping {stray}: event files but no config.yaml"
    assert [str(w.message) for w in raw if str(stray) in str(w.message)] == []
    assert capsys.readouterr().err.count(note) == 1
    markdown = (tmp_path / "runs" / "report" / "report.md").read_text()
    assert markdown.count(note) == 1 and "l2/s3 (running)" in markdown


BAD_REPORTS = [
    (["{root}/nowhere"], "runs directory not found"),
    (["{root}/empty"], "no finished runs under"),
    (["{root}/runs", "--reference", "fresh"], "--reference: no finished runs of strategy set "
                                              "'fresh' (sets: l2, reference_fresh)"),
]


@pytest.mark.parametrize("args,message", BAD_REPORTS)
def test_bad_report_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message,
                                                                assert_one_line_exit_2):
    write_study(tmp_path / "runs", with_spectra=False)
    (tmp_path / "empty").mkdir()
    argv = ["report", *(arg.format(root=tmp_path) for arg in args)]
    assert_one_line_exit_2(argv, message, tmp_path)
