"""`pliable report` on hand-written runs whose statistics are known in closed form."""

import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from run_dirs import SWITCH_EVERY, make_config, markdown_table, write_run
from scipy.stats import linregress, spearmanr

from analysis.study.headline import (
    baseline_comparison,
    baseline_lines,
    first_task_warnings,
    trend_verdict,
)
from analysis.study.plots import switch_density_figure
from analysis.study.report import main
from analysis.study.report_tables import number
from analysis.study.results import load_table

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
    for figure in ("learning_curves", "plasticity_ratio", "performance_profiles",
                   "hessian_density"):
        assert (out / "figures" / f"{figure}.png").stat().st_size > 1000
        assert (out / "figures" / f"{figure}.pdf").read_bytes().startswith(b"%PDF")
        assert f"](figures/{figure}.png)" in markdown
    html = (out / "report.html").read_text()
    assert html.count('<img src="data:image/png;base64,') == 4 and 'src="figures' not in html


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
    (["{root}/runs", "--baseline", "bp"], "--baseline: no finished runs of strategy set 'bp' "
                                          "(sets: l2, reference_fresh)"),
]


@pytest.mark.parametrize("args,message", BAD_REPORTS)
def test_bad_report_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message,
                                                                assert_one_line_exit_2):
    write_study(tmp_path / "runs", with_spectra=False)
    (tmp_path / "empty").mkdir()
    argv = ["report", *(arg.format(root=tmp_path) for arg in args)]
    assert_one_line_exit_2(argv, message, tmp_path)


EPS_GRID = (0.01, 0.02, 0.04, 0.08, 0.1, 0.2, 0.5, 1)
STUDY = {  # return on task position k (reference: 10, so ratio = return / 10), per seed
    "reference_fresh": lambda seed, k: 10.0,
    "none": lambda seed, k: 10.0 - (1 + 0.5 * seed) * k,   # falls with every seed
    "l2": lambda seed, k: 10.0 - 0.2 * ((seed + k) % 2),   # flat near 1
    "slow": lambda seed, k: 5.0 + 0.2 * seed,             # flat, but half a fresh net's
}
CHOSEN = 0.08


def write_collapse_study(root):
    """Three seeds of three sets and the reference on A, B, A, B; at every switch (0 included,
    as the monitor does) He et al.'s ε-rank over EPS_GRID: at ε = CHOSEN 30 + 60 x the ratio
    plus noise, noise at the others; our eps_rank_rel and tau_trainability; densities."""
    rng = np.random.default_rng(3)
    points = []  # (ε-rank at CHOSEN, ratio) of every switch after the first, studied sets
    for name, level in STUDY.items():
        for seed in (1, 2, 3):
            scalars = {"charts/episodic_return": [(SWITCH_EVERY * k + offset, level(seed, k))
                                                  for k in range(4) for offset in (5, 95)]}
            for k in range(4):
                ratio = level(seed, k) / 10.0
                chosen = 30 + 60 * ratio + rng.normal(0, 3) if k else 0.0
                if k and name != "reference_fresh":
                    points.append((chosen, ratio))
                for eps in EPS_GRID:
                    value = chosen if eps == CHOSEN else rng.uniform(0, 100)
                    scalars.setdefault(f"spectrum/post/eps_rank_he2025/{eps:g}", []).append(
                        (SWITCH_EVERY * k, value))
                scalars.setdefault("spectrum/post/eps_rank_rel", []).append(
                    (SWITCH_EVERY * k, 5.0 + rng.uniform(0, 10)))
                scalars.setdefault("spectrum/post/tau_trainability", []).append(
                    (SWITCH_EVERY * k, ratio + rng.normal(0, 0.3)))
            config = make_config(seed=seed, plasticity={}, strategy_set=name, exp_name="AB")
            run_dir = write_run(root / name / f"s{seed}", scalars, config, status="finished")
            (run_dir / "spectra").mkdir()
            scale = {"none": 1e-3, "l2": 1.0, "slow": 300.0}.get(name, 10.0)
            for switch in range(4):
                np.savez(run_dir / "spectra" / f"switch_{switch:03d}_post.npz",
                         density_nodes=scale * np.array([-0.5, 0.0, 1.0, 40.0]),
                         density_weights=[0.1, 0.6, 0.2, 0.1])
    return points


def headline_block(markdown):
    return markdown.split("## Headline", 1)[1].split("## Runs and method", 1)[0]


def test_the_headline_answers_the_three_questions(tmp_path):
    points = write_collapse_study(tmp_path / "runs")
    out = tmp_path / "report"

    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0

    markdown = (out / "report.md").read_text()
    assert markdown.index("## Headline") < markdown.index("## Summary")
    head = headline_block(markdown)
    # (a) none's slopes -0.15, -0.2, -0.25: mean -0.2, t-interval below 0
    assert "- `none`: ratio trend per task -0.2 [" in head
    assert "falls: CI entirely below 0" in head
    # (b) l2's ratios ~0.99 sit above none's; slow's (0.54) below; the reference is no rival
    comparison = pd.read_csv(out / "tables" / "baseline_comparison.csv").set_index(
        "strategy_set")["verdict"]
    assert comparison.to_dict() == {"l2": "above", "slow": "below"}
    better = head.split("beat `none`?", 1)[1].split("(c)", 1)[0]
    assert "- `l2`: ratio IQM 0.99 [" in better and "vs `none` 0.708 [" in better
    assert "slow" not in better
    # (c) ε chosen the paper's way, its R² that of the hand-made points, position 0 left out
    selection = pd.read_csv(out / "tables" / "eps_selection.csv")
    assert selection["eps"].tolist() == list(EPS_GRID)
    assert selection.loc[selection["chosen"], "eps"].tolist() == [CHOSEN]
    chosen = selection[selection["chosen"]].iloc[0]
    fit = linregress(*zip(*points))
    assert chosen["n"] == len(points) == 27  # 3 studied sets x 3 seeds x 3 switches
    assert chosen["r_squared"] == pytest.approx(fit.rvalue ** 2)
    assert chosen["pearson_p"] == pytest.approx(fit.pvalue)
    assert (f"ε = {CHOSEN:g} (best R² of 8 values): R² {number(fit.rvalue ** 2)}, "
            f"Pearson r {number(fit.rvalue)}, p {number(fit.pvalue)}, n 27: yes") in head
    assert "`eps_rank_rel` (ours, no choice made): R² " in head
    assert "`tau_trainability` (ours, no choice made): R² " in head
    prediction = pd.read_csv(out / "tables" / "collapse_prediction.csv")
    assert set(prediction["metric"]) == {f"eps_rank_he2025/{CHOSEN:g}", "eps_rank_rel",
                                         "tau_trainability"}
    assert set(prediction["strategy_set"]) == {"all", "l2", "none", "slow"}
    # per set as pooled: the reference and position 0 left out (3 seeds x 3 switches each)
    assert (prediction.loc[prediction["strategy_set"] == "all", "n"] == 27).all()
    assert (prediction.loc[prediction["strategy_set"] != "all", "n"] == 9).all()
    collapse_points = pd.read_csv(out / "tables" / "collapse_points.csv")
    assert (collapse_points["task_index"] > 0).all()
    assert set(collapse_points["strategy_set"]) == {"l2", "none", "slow"}
    # (d) only slow's settings hurt the first task (0.54); none and l2 start at ~1
    warnings = head.split("(d) First-task warnings", 1)[1]
    assert warnings.strip().splitlines() == [
        "- `slow`: ratio 0.54 on the first task: its settings hurt learning itself; later "
        "ratios mix both effects"]
    assert "## Does spectral collapse predict plasticity? (He et al. 2025)" in markdown
    assert "chosen: ε = 0.08" in markdown
    for figure in ("collapse_scatter", "hessian_density"):
        assert (out / "figures" / f"{figure}.png").stat().st_size > 1000
        assert f"](figures/{figure}.png)" in markdown
    html = (out / "report.html").read_text()
    assert html.count('<img src="data:image/png;base64,') == 5
    assert "<h2>Headline</h2>" in html

    trend = {"ratio_trend": pd.read_csv(out / "tables" / "ratio_trend.csv")}
    [line] = baseline_lines(trend, "l2")  # what `--baseline l2` heads the report with
    assert line.startswith("`l2`: ratio trend per task 0.00133 [")  # slopes ±0.004: flat
    assert line.endswith("(3 runs): no evidence of loss: CI includes 0")
    assert "pass `--baseline NAME`" in baseline_lines(trend, "bp")[0]


@pytest.mark.parametrize("slope,low,high,verdict", [
    (-0.2, -0.3, -0.1, "falls: CI entirely below 0"),
    (-0.1, -0.3, 0.1, "no evidence of loss: CI includes 0"),
    (0.2, 0.1, 0.3, "rises: CI entirely above 0, no evidence of loss"),
    (-0.2, float("nan"), float("nan"), "cannot tell: one run, no CI"),
])
def test_trend_verdicts(slope, low, high, verdict):
    assert trend_verdict(slope, low, high) == verdict


def test_baseline_comparison_needs_the_whole_ci_above():
    def row(name, estimate, low, high, statistic="iqm", value="plasticity_ratio"):
        return {"agent": "ppo", "sequence": "AB", "strategy_set": name, "statistic": statistic,
                "value": value, "estimate": estimate, "ci_low": low, "ci_high": high}

    aggregate = pd.DataFrame([
        row("none", 0.6, 0.5, 0.7), row("reference_fresh", 1.0, 1.0, 1.0),
        row("above", 0.9, 0.71, 1.0), row("touching", 0.9, 0.7, 1.0),
        row("below", 0.3, 0.2, 0.45), row("mean_only", 0.9, 0.8, 1.0, statistic="mean"),
    ])

    verdicts = baseline_comparison(aggregate, "none", "reference_fresh").set_index(
        "strategy_set")["verdict"].to_dict()

    assert verdicts == {"above": "above", "touching": "overlaps", "below": "below"}


def test_first_task_warning_fires_below_0_8_and_stays_silent_otherwise():
    def first_task(**iqms):
        return pd.DataFrame([{"agent": "ppo", "sequence": "AB", "strategy_set": name,
                              "iqm": value, "mean": value, "n_runs": 3}
                             for name, value in iqms.items()])

    warnings = first_task_warnings(first_task(none=1.02, l2=0.79, cbp=0.8,
                                              reference_fresh=0.5), "reference_fresh")

    assert warnings == ["`l2`: ratio 0.79 on the first task: its settings hurt learning itself; "
                        "later ratios mix both effects"]
    assert first_task_warnings(first_task(none=0.95, l2=1.1, cbp=0.8), "reference_fresh") == []


def test_every_density_panel_shares_one_symlog_x_range():
    rng = np.random.default_rng(0)

    def seeds(scale):
        return [(scale * rng.normal(size=30), np.full(30, 1 / 30)) for _ in range(2)]

    densities = {"collapsed": {1: seeds(1e-4), 2: seeds(1e-5)}, "healthy": {1: seeds(50.0)},
                 "wide": {0: seeds(1.0), 3: seeds(3e3)}, "mid": {1: seeds(0.3)}}

    fig = switch_density_figure(densities, eps=0.04)

    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 4
    assert {ax.get_xscale() for ax in panels} == {"symlog"}
    assert len({ax.get_xlim() for ax in panels}) == 1 and len({ax.get_ylim() for ax in panels}) == 1
    low, high = panels[0].get_xlim()
    every = np.concatenate([n for s in densities.values() for runs in s.values() for n, _ in runs])
    assert low < every.min() and high > every.max()
    assert {ax.xaxis.get_transform().linthresh for ax in panels} == {0.01}
    for ax in panels:  # the ε lines, and a curve per switch
        assert [line.get_xdata()[0] for line in ax.lines[-2:]] == [-0.04, 0.04]
    assert len(panels[0].lines) == 2 + 2  # "collapsed": switches 1 and 2
    plt.close(fig)
