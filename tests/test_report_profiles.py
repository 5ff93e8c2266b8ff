"""rliable's views in `pliable report`: performance profiles, probability of improvement and the
score matrices, against hand computations; the report's progress bars on stderr."""

import io
import sys

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from run_dirs import SWITCH_EVERY, make_config, markdown_table, write_run

from analysis.study.aggregate import (
    fraction_above,
    improvement_pairs,
    improvement_probabilities,
    performance_profiles,
    probability_of_improvement,
)
from analysis.study.report import main

GROUP = ("ppo", "AB")


def matrix(scores):
    """A (runs x task positions) score matrix as `score_matrices` gives it."""
    scores = np.asarray(scores, dtype=float)
    return pd.DataFrame(scores, index=[f"r{i}" for i in range(len(scores))])


def test_performance_profile_by_hand():
    scores = matrix([[0.2, 0.8], [0.5, 1.0]])

    profile = performance_profiles({(*GROUP, "x"): scores}, taus=[0.1, 0.5, 0.9, 1.0],
                                   reps=500)

    # above 0.1: all four; above 0.5: 0.8 and 1.0 (0.5 itself is not above); above 0.9: 1.0
    assert profile["fraction"].tolist() == [1.0, 0.5, 0.25, 0.0]
    assert (profile["ci_low"] <= profile["fraction"]).all()
    assert (profile["fraction"] <= profile["ci_high"]).all()
    assert profile[["agent", "sequence", "strategy_set"]].drop_duplicates().values.tolist() == [
        [*GROUP, "x"]]
    replicates = np.stack([scores.to_numpy(), np.ones((2, 2))])  # a batch of two
    np.testing.assert_array_equal(fraction_above(replicates, np.array([0.5, 0.9])),
                                  [[0.5, 0.25], [1.0, 1.0]])


def test_probability_of_improvement_by_hand_ties_count_half():
    x, y = np.array([[1.0, 0.0], [3.0, 2.0]]), np.array([[2.0, 0.0], [0.0, 2.0]])
    # task 0: x 1, 3 against y 2, 0 wins 3 of the 4 pairs; task 1: 0, 2 against 0, 2 has one
    # win, one loss and two ties: (1 + 2 x 1/2) / 4
    assert probability_of_improvement(x, y) == pytest.approx((3 / 4 + 2 / 4) / 2)
    assert probability_of_improvement(x, y) + probability_of_improvement(y, x) == 1
    assert probability_of_improvement(np.array([[1.0], [2.0]]), np.ones((2, 1))) == 0.75
    # rliable's definition: Mann-Whitney's U of each task over the pairs, averaged over tasks
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 4, size=(5, 3)).astype(float), rng.integers(0, 4, size=(7, 3))
    u = [scipy.stats.mannwhitneyu(a[:, t], b[:, t]).statistic / 35 for t in range(3)]
    assert probability_of_improvement(a, b) == pytest.approx(np.mean(u))


def test_intervals_bracket_the_estimate_and_shrink_with_more_runs():
    rng = np.random.default_rng(1)

    def widths(runs):
        sets = {(*GROUP, "x"): matrix(rng.normal(0.5, 1, size=(runs, 4))),
                (*GROUP, "y"): matrix(rng.normal(0.0, 1, size=(runs, 4)))}
        [row] = improvement_probabilities(sets, baseline="y", reps=2000).itertuples()
        assert (row.x, row.y, row.n_runs_x, row.n_tasks) == ("x", "y", runs, 4)
        assert row.ci_low <= row.probability <= row.ci_high
        profile = performance_profiles(sets, taus=[0.0, 0.5], reps=2000)
        assert ((profile["ci_low"] <= profile["fraction"])
                & (profile["fraction"] <= profile["ci_high"])).all()
        return row.ci_high - row.ci_low, (profile["ci_high"] - profile["ci_low"]).mean()

    few, many = widths(5), widths(80)
    assert many[0] < few[0] / 2 and many[1] < few[1] / 2


def test_few_sets_compare_every_pair_many_only_against_the_baseline():
    assert improvement_pairs(["none", "l2", "cbp"], "none") == [
        ("cbp", "l2"), ("cbp", "none"), ("l2", "none")]
    assert improvement_pairs(["a", "b", "none", "c", "d"], "none") == [
        ("a", "none"), ("b", "none"), ("c", "none"), ("d", "none")]
    assert len(improvement_pairs(["a", "b", "c", "d", "e"], "none")) == 10  # no baseline runs


LEVELS = {  # return on task position k; the reference's 10 makes the ratio return / 10
    ("reference_fresh", 1): lambda k: 10.0, ("reference_fresh", 2): lambda k: 10.0,
    ("none", 1): lambda k: 10.0 - k, ("none", 2): lambda k: 10.0 - 2 * k,
    ("l2", 1): lambda k: 10.0 - 0.5 * k, ("l2", 2): lambda k: 10.0 - 0.25 * k,
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two seeds of none, l2 and the reference on A, B, A, B."""
    root = tmp_path_factory.mktemp("profiles") / "runs"
    for (name, seed), level in LEVELS.items():
        returns = [(SWITCH_EVERY * k + offset, level(k)) for k in range(4) for offset in (5, 95)]
        write_run(root / name / f"s{seed}", {"charts/episodic_return": returns},
                  make_config(seed=seed, plasticity={}, strategy_set=name, exp_name="AB"),
                  status="finished")
    return root


def test_the_report_shows_profiles_improvement_and_exports_the_matrices(runs, tmp_path,
                                                                        capsys):
    out = tmp_path / "report"

    assert main([str(runs), "--out", str(out)]) == 0

    assert "reading runs" not in capsys.readouterr().err  # not a terminal: no bars
    profile = pd.read_csv(out / "tables" / "performance_profile.csv")
    at = profile.set_index(["strategy_set", profile["tau"].round(6)])["fraction"]
    # none's ratios 1 .9 .8 .7 and 1 .8 .6 .4: 5 of 8 above 0.75; l2's 1 .95 .9 .85 and
    # 1 .975 .95 .925: 6 of 8 above 0.92 (the grid runs from 0 to the highest ratio, 1)
    assert at[("none", 0.75)] == 5 / 8 and at[("l2", 0.92)] == 6 / 8
    assert profile["tau"].min() == 0 and profile["tau"].max() == pytest.approx(1)
    markdown = (out / "report.md").read_text()
    improvement = {(row["X"], row["Y"]): row for row in markdown_table(markdown, "X")}
    # per position, l2 against none: a tie at 1 (1/2), then every pair won: (1/2 + 3) / 4
    assert set(improvement) == {("l2", "none"), ("l2", "reference_fresh"),
                                ("reference_fresh", "none")}
    assert improvement[("l2", "none")]["P(X > Y) [95% CI]"].startswith("0.875 [")
    assert improvement[("l2", "reference_fresh")]["P(X > Y) [95% CI]"].startswith("0.125 [")
    assert improvement[("l2", "none")]["positions"] == "4"
    assert "](figures/performance_profiles.png)" in markdown
    assert (out / "figures" / "performance_profiles.pdf").read_bytes().startswith(b"%PDF")
    assert "`scores = dict(np.load(path))`" in markdown

    path = out / "score_matrices" / "ppo__AB.npz"
    assert f"`score_matrices/{path.name}`" in markdown  # listed among the files
    scores = dict(np.load(path))
    ratios = pd.read_csv(out / "tables" / "plasticity_ratios.csv")
    assert set(scores) == {"none", "l2", "reference_fresh"}
    for name, array in scores.items():
        expected = ratios[ratios["strategy_set"] == name].pivot_table(
            index="run", columns="task_index", values="plasticity_ratio")
        assert array.shape == (2, 4)  # (runs, task positions), rliable's layout
        np.testing.assert_allclose(array, expected.to_numpy())
    np.testing.assert_allclose(scores["none"], [[1, 0.9, 0.8, 0.7], [1, 0.8, 0.6, 0.4]])


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("flags,shown", [([], True), (["--no-progress"], False)])
def test_the_report_shows_progress_on_a_terminal_unless_told_not_to(runs, tmp_path,
                                                                    monkeypatch, flags, shown):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)

    assert main([str(runs), "--out", str(tmp_path / "report"), *flags]) == 0

    err = terminal.getvalue()
    assert ("reading runs:   0%|" in err and "0/6 [" in err) is shown  # drawn at its start
    assert ("report: statistics and bootstrap CIs" in err) is shown
