"""Statistics on the tidy table, against numbers computed by hand."""

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from analysis.study.aggregate import (
    SEGMENT_KEYS,
    aggregate_with_ci,
    epsilon_selection,
    final_performance,
    first_task_ratios,
    forgetting,
    iqm,
    plasticity_ratio,
    ratio_trend,
    segment_auc,
    spectral_correlation,
    stratified_bootstrap_ci,
    task_scores,
)
from analysis.study.results import TIDY_COLUMNS


def tidy_rows(points, run="r1", strategy_set="l2", seed=1, tasks=("A", "B"), metric=None,
              switch_every=100):
    """Tidy-table rows of one run for (step, value) points, scheduled as analysis.study.results
    does."""
    rows = []
    for step, value in points:
        task_index = step // switch_every
        rows.append({
            "run": run, "agent": "ppo", "strategy_set": strategy_set, "seed": seed,
            "sequence": "seq", "switch_every": switch_every,
            "task": tasks[task_index % len(tasks)], "task_index": task_index,
            "cycle": task_index // len(tasks), "step": step,
            "metric": metric or "charts/episodic_return", "value": value,
        })
    return pd.DataFrame(rows, columns=list(TIDY_COLUMNS))


def score_rows(rows):
    """A scores frame from (run, strategy_set, seed, task, task_index, {column: value}) tuples."""
    return pd.DataFrame([
        {"run": run, "agent": "ppo", "strategy_set": strategy_set, "seed": seed,
         "sequence": "seq", "task": task, "task_index": index, "cycle": index // 2, **values}
        for run, strategy_set, seed, task, index, values in rows
    ])


def test_segment_auc_holds_the_curve_flat_outside_the_episodes():
    # grid 0, 20, 60, 100 with values 1, 1, 3, 3: areas 20*1 + 40*2 + 40*3 = 220
    assert segment_auc([20, 60], [1.0, 3.0], start=0, end=100) == pytest.approx(2.2)
    assert segment_auc([50], [4.0], start=0, end=100) == pytest.approx(4.0)


def test_task_scores_per_segment():
    table = pd.concat([
        tidy_rows([(105, 2.0), (120, 4.0), (195, 6.0)]),
        tidy_rows([(5, 9.0)], metric="losses/value_loss"),  # another tag is ignored
    ])

    scores = task_scores(table, window=0.1)

    assert len(scores) == 1
    row = scores.iloc[0]
    assert (row["task"], row["task_index"], row["cycle"], row["n_episodes"]) == ("B", 1, 0, 3)
    assert row["mean_return"] == pytest.approx(4.0)
    # grid 100, 105, 120, 195, 200 with values 2, 2, 4, 6, 6: 10 + 45 + 375 + 30 = 460 over 100
    assert row["auc"] == pytest.approx(4.6)
    assert row["initial_return"] == 2.0  # steps in [100, 110)
    assert row["final_return"] == 6.0  # steps in [190, 200]


def test_plasticity_ratio_against_the_mean_fresh_reference():
    scores = score_rows([
        ("ref1", "reference_fresh", 1, "A", 0, {"auc": 4.0}),
        ("ref2", "reference_fresh", 2, "A", 0, {"auc": 6.0}),
        ("ref1", "reference_fresh", 1, "B", 1, {"auc": -1.0}),
        ("ref2", "reference_fresh", 2, "B", 1, {"auc": -1.0}),
        ("l2", "l2", 1, "A", 0, {"auc": 2.5}),
        ("l2", "l2", 1, "B", 1, {"auc": 0.0}),
    ])

    with pytest.warns(UserWarning, match="does not beat the baseline.*B"):
        ratios = plasticity_ratio(scores, score="auc")
    by_run_task = ratios.set_index(["run", "task"])["plasticity_ratio"]
    assert by_run_task[("l2", "A")] == pytest.approx(2.5 / 5.0)
    assert by_run_task[("ref1", "A")] == pytest.approx(4.0 / 5.0)
    assert np.isnan(by_run_task[("l2", "B")])  # reference -1 <= baseline 0

    # a random-agent baseline of -3 on B gives the reference a positive scale: (0 + 3) / (-1 + 3)
    ratios = plasticity_ratio(scores, score="auc", baseline={"B": -3.0})
    by_run_task = ratios.set_index(["run", "task"])["plasticity_ratio"]
    assert by_run_task[("l2", "B")] == pytest.approx(1.5)
    assert by_run_task[("l2", "A")] == pytest.approx(0.5)
    assert list(ratios.columns) == [*SEGMENT_KEYS, "auc", "reference_score", "plasticity_ratio"]


def test_plasticity_ratio_needs_the_reference():
    scores = score_rows([("l2", "l2", 1, "A", 0, {"auc": 1.0})])
    with pytest.raises(ValueError, match="reference_fresh"):
        plasticity_ratio(scores)


def test_ratio_trend_slope_and_t_interval_over_seeds():
    rows = [("s1", "l2", 1, "A", i, {"plasticity_ratio": r}) for i, r in enumerate([1, .9, .8])]
    rows += [("s2", "l2", 2, "A", i, {"plasticity_ratio": r}) for i, r in enumerate([1, .7, .4])]
    rows += [("c1", "cbp", 1, "A", i, {"plasticity_ratio": r}) for i, r in enumerate([1, 1.1])]

    trend = ratio_trend(score_rows(rows)).set_index("strategy_set")

    # per-run slopes -0.1 and -0.3: mean -0.2, standard error 0.1, t(0.975, df=1) = 12.706
    half_width = scipy.stats.t.ppf(0.975, df=1) * 0.1
    assert trend.loc["l2", "slope"] == pytest.approx(-0.2)
    assert trend.loc["l2", "ci_low"] == pytest.approx(-0.2 - half_width)
    assert trend.loc["l2", "ci_high"] == pytest.approx(-0.2 + half_width)
    assert trend.loc["l2", "intercept"] == pytest.approx(1.0)
    assert trend.loc["l2", "n_runs"] == 2
    assert trend.loc["cbp", "slope"] == pytest.approx(0.1)
    assert np.isnan(trend.loc["cbp", "ci_low"])  # one seed: no spread to estimate


CYCLED = score_rows([  # tasks A, B, A, B, A of one run
    ("r", "l2", 1, "A", 0, {"initial_return": 0.0, "final_return": 10.0}),
    ("r", "l2", 1, "B", 1, {"initial_return": 0.0, "final_return": 5.0}),
    ("r", "l2", 1, "A", 2, {"initial_return": 4.0, "final_return": 8.0}),
    ("r", "l2", 1, "B", 3, {"initial_return": 5.0, "final_return": 7.0}),
    ("r", "l2", 1, "A", 4, {"initial_return": 9.0, "final_return": 12.0}),
])


def test_forgetting_compares_the_best_earlier_exit_with_the_return_on_arrival():
    result = forgetting(CYCLED)

    assert result["task_index"].tolist() == [2, 3, 4]
    assert result["best_earlier"].tolist() == [10.0, 5.0, 10.0]  # max(10, 8) for the 3rd A
    assert result["revisit_score"].tolist() == [4.0, 5.0, 9.0]
    assert result["forgetting"].tolist() == [6.0, 0.0, 1.0]


def test_final_performance_is_the_last_visit():
    result = final_performance(CYCLED)

    assert result[["task", "task_index", "final_performance"]].values.tolist() == [
        ["B", 3, 7.0], ["A", 4, 12.0]]


def test_iqm_by_hand():
    assert iqm(np.arange(1, 9)) == pytest.approx(4.5)  # mean of 3, 4, 5, 6
    assert iqm(np.arange(1, 9).reshape(2, 4)) == pytest.approx(4.5)  # over all runs and tasks
    # sorted -50 0 | 1 2 3 5 | 6 100: the outliers are trimmed away
    assert iqm(np.array([0, 1, 2, 3, 100, 5, 6, -50])) == pytest.approx(2.75)


def test_bootstrap_ci_is_reproducible_contains_the_estimate_and_shrinks_with_more_runs():
    rng = np.random.default_rng(0)
    few, many = rng.normal(size=(5, 4)), rng.normal(size=(80, 4))

    low, high = stratified_bootstrap_ci(few, iqm, reps=2000, seed=1)
    assert low <= iqm(few) <= high
    assert stratified_bootstrap_ci(few, iqm, reps=2000, seed=1) == (low, high)
    assert stratified_bootstrap_ci(few, iqm, reps=2000, seed=2) != (low, high)
    many_low, many_high = stratified_bootstrap_ci(many, iqm, reps=2000, seed=1)
    assert many_high - many_low < (high - low) / 2


def test_bootstrap_resamples_runs_within_each_task():
    # every task's runs agree, so each stratified replicate has the same mean (pooled would not)
    matrix = np.array([[0.0, 10.0], [0.0, 10.0], [0.0, 10.0]])
    assert stratified_bootstrap_ci(matrix, np.mean, reps=500) == (5.0, 5.0)


def test_aggregate_with_ci_per_strategy_set_drops_incomplete_runs():
    rows = [(f"l2_{seed}", "l2", seed, "A", index, {"plasticity_ratio": float(seed + index)})
            for seed in range(4) for index in range(2)]
    rows.append(("cbp_0", "cbp", 0, "A", 0, {"plasticity_ratio": 1.0}))
    rows.append(("cbp_0", "cbp", 0, "B", 1, {"plasticity_ratio": 3.0}))
    rows.append(("cbp_1", "cbp", 1, "A", 0, {"plasticity_ratio": 2.0}))  # lacks task_index 1

    with pytest.warns(UserWarning, match="cbp_1"):
        result = aggregate_with_ci(score_rows(rows), "plasticity_ratio", reps=500)

    result = result.set_index(["strategy_set", "statistic"])
    # l2 scores: 0..3 at index 0 and 1..4 at index 1 -> sorted 0 1 1 2 2 3 3 4
    assert result.loc[("l2", "iqm"), "estimate"] == pytest.approx(2.0)
    assert result.loc[("l2", "mean"), "estimate"] == pytest.approx(2.0)
    assert result.loc[("l2", "iqm"), ["n_runs", "n_tasks"]].tolist() == [4, 2]
    assert result.loc[("cbp", "mean"), "estimate"] == pytest.approx(2.0)
    assert result.loc[("cbp", "mean"), "n_runs"] == 1
    for _, row in result.iterrows():
        assert row["ci_low"] <= row["estimate"] <= row["ci_high"]


def test_spectral_correlation_pairs_each_switch_with_the_next_task_ratio():
    spectra = [(100 * k, float(k)) for k in range(1, 5)]
    table = pd.concat([
        tidy_rows(spectra, metric="spectrum/post/lambda_max"),
        tidy_rows([(150, 99.0)], metric="spectrum/post/lambda_max"),  # later in the segment
        tidy_rows([(100 * k, float(-k)) for k in range(1, 5)], metric="spectrum/pre/lambda_max"),
        tidy_rows([(100 * k, float(k**3)) for k in range(1, 5)], metric="spectrum/post/trace"),
    ])
    ratios = score_rows([("r1", "l2", 1, "A", k, {"plasticity_ratio": 1.0 - 0.1 * k})
                         for k in range(5)])

    result = spectral_correlation(table, ratios).set_index("metric")

    assert sorted(result.index) == ["lambda_max", "trace"]
    assert result.loc["lambda_max", "n"] == 4
    assert result.loc["lambda_max", "pearson_r"] == pytest.approx(-1.0)
    assert result.loc["lambda_max", "spearman_rho"] == pytest.approx(-1.0)
    assert result.loc["trace", "spearman_rho"] == pytest.approx(-1.0)
    assert -1.0 < result.loc["trace", "pearson_r"] < -0.9  # monotone, not linear
    expected_p = scipy.stats.pearsonr([1, 8, 27, 64], [0.9, 0.8, 0.7, 0.6]).pvalue
    assert result.loc["trace", "pearson_p"] == pytest.approx(expected_p)


def test_the_pipeline_composes_from_the_tidy_table():
    def run_rows(run, strategy_set, seed, level):
        """Constant return `level(task_index)` per segment and a spectrum at every switch."""
        returns = [(100 * k + offset, level(k)) for k in range(4) for offset in (10, 90)]
        spectrum = [(100 * k, float(k)) for k in range(1, 4)]
        return pd.concat([
            tidy_rows(returns, run, strategy_set, seed),
            tidy_rows(spectrum, run, strategy_set, seed, metric="spectrum/post/lambda_max"),
        ])

    table = pd.concat([
        run_rows("fresh1", "reference_fresh", 1, lambda k: 10.0),
        run_rows("fresh2", "reference_fresh", 2, lambda k: 10.0),
        run_rows("l2_1", "l2", 1, lambda k: 10.0 - k),
        run_rows("l2_2", "l2", 2, lambda k: 10.0 - 2 * k),
    ])

    ratios = plasticity_ratio(task_scores(table))
    l2 = ratios[ratios["strategy_set"] == "l2"]

    assert l2.loc[l2["run"] == "l2_2", "plasticity_ratio"].tolist() == pytest.approx(
        [1.0, 0.8, 0.6, 0.4])
    trend = ratio_trend(ratios).set_index("strategy_set")
    assert trend.loc["l2", "slope"] == pytest.approx(-0.15)
    assert trend.loc["reference_fresh", "slope"] == pytest.approx(0.0)
    summary = aggregate_with_ci(ratios, "plasticity_ratio", reps=200)
    assert set(summary["strategy_set"]) == {"l2", "reference_fresh"}
    correlation = spectral_correlation(table, l2)
    assert correlation.loc[0, "n"] == 6  # 2 runs x 3 switches
    assert correlation.loc[0, "spearman_rho"] < 0


def r_squared_by_hand(x, y):
    slope, intercept = np.polyfit(x, y, 1)
    residual = np.asarray(y) - (slope * np.asarray(x) + intercept)
    return 1 - (residual ** 2).sum() / ((np.asarray(y) - np.mean(y)) ** 2).sum()


def test_epsilon_is_chosen_for_the_best_r_squared_without_the_first_task():
    rng = np.random.default_rng(7)
    grid = (0.01, 0.02, 0.04, 0.08, 0.1, 0.2, 0.5, 1)
    rows, ratio_rows, xs, ys = [], [], [], []
    for seed in range(4):
        run = f"r{seed}"
        ratios = [1.0] + list(rng.uniform(0.3, 1.0, size=5))
        ratio_rows += [(run, "l2", seed, "AB"[k % 2], k, {"plasticity_ratio": ratios[k]})
                       for k in range(6)]
        for k in range(6):  # the monitor measures at step 0 too: position 0 must not count
            linear = 20 + 50 * ratios[k] + rng.normal(0, 2) if k else 99.0
            if k:
                xs.append(linear)
                ys.append(ratios[k])
            for eps in grid:
                value = linear if eps == 0.04 else rng.uniform(0, 100)
                rows.append(tidy_rows([(100 * k, value)], run, "l2", seed,
                                      metric=f"spectrum/post/eps_rank_he2025/{eps:g}"))
    table = pd.concat(rows)
    correlation = spectral_correlation(table, score_rows(ratio_rows), skip_positions=(0,))

    selection = epsilon_selection(correlation)

    assert selection["eps"].tolist() == list(grid)
    chosen = selection[selection["chosen"]]
    assert chosen["eps"].tolist() == [0.04]
    row = chosen.iloc[0]
    assert row["n"] == 20  # 4 runs x 5 switches after the first task
    assert row["r_squared"] == pytest.approx(r_squared_by_hand(xs, ys))
    assert row["r_squared"] == pytest.approx(scipy.stats.linregress(xs, ys).rvalue ** 2)
    assert row["pearson_p"] == pytest.approx(scipy.stats.pearsonr(xs, ys).pvalue)
    assert (row["slope"], row["intercept"]) == pytest.approx(tuple(np.polyfit(xs, ys, 1)))
    assert (selection.loc[~selection["chosen"], "r_squared"] < row["r_squared"] - 0.3).all()
    with_first = epsilon_selection(spectral_correlation(table, score_rows(ratio_rows)))
    assert with_first.set_index("eps").loc[0.04, "n"] == 24
    assert with_first.set_index("eps").loc[0.04, "r_squared"] < row["r_squared"] - 0.1


def test_epsilon_selection_without_a_defined_fit_chooses_nothing():
    table = pd.concat([tidy_rows([(100 * k, 5.0)], metric="spectrum/post/eps_rank_he2025/0.1")
                       for k in (1, 2, 3)])  # constant: no line to fit
    ratios = score_rows([("r1", "l2", 1, "A", k, {"plasticity_ratio": 0.1 * k})
                         for k in range(4)])

    selection = epsilon_selection(spectral_correlation(table, ratios))

    assert selection["eps"].tolist() == [0.1] and not selection["chosen"].any()
    assert np.isnan(selection.loc[0, "r_squared"])
    empty = epsilon_selection(spectral_correlation(tidy_rows(
        [(100, 1.0)], metric="spectrum/post/lambda_max"), ratios))
    assert empty.empty


def test_first_task_ratios_are_the_iqm_over_runs_of_position_zero():
    ratios = score_rows(
        [(f"r{i}", "slow", i, "A", 0, {"plasticity_ratio": value})
         for i, value in enumerate([0.1, 0.5, 0.6, 0.7, 2.0])]
        + [("r0", "slow", 0, "B", 1, {"plasticity_ratio": 9.0})])

    first = first_task_ratios(ratios).iloc[0]

    assert first["strategy_set"] == "slow" and first["n_runs"] == 5
    assert first["iqm"] == pytest.approx(scipy.stats.trim_mean([0.1, 0.5, 0.6, 0.7, 2.0], 0.25))
    assert first["mean"] == pytest.approx(0.78)
