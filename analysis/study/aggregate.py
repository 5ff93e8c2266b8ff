"""Statistics on the tidy table of `analysis.study.results`: pure functions, tidy DataFrames.

The pipeline, each step's output feeding the next:

    scores = task_scores(table)                    one row per run and task segment
    ratios = plasticity_ratio(scores)              score / fresh-agent reference score
    ratio_trend(ratios)                            slope of the ratio over successive tasks
    forgetting(scores), final_performance(scores)  on tasks revisited by cycling sequences
    aggregate_with_ci(ratios, "plasticity_ratio")  IQM and mean with stratified bootstrap CIs
    matrices = score_matrices(ratios, "plasticity_ratio")  (runs x tasks) per group, as rliable
    performance_profiles(matrices)                 fraction of scores above τ, bootstrap bands
    improvement_probabilities(matrices)            P(X > Y) between strategy sets, with CIs
    spectral_correlation(table, ratios)            spectrum at a switch vs the next task's ratio
    epsilon_selection(correlation)                 He et al.'s ε-rank: the ε of the best R²
    first_task_ratios(ratios)                      the ratio on task position 0, per group
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Collection, Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.stats

RUN_KEYS = ["run", "agent", "strategy_set", "seed", "sequence"]
SEGMENT_KEYS = [*RUN_KEYS, "task", "task_index", "cycle"]
GROUP_KEYS = ["agent", "sequence", "strategy_set"]  # what a comparison holds fixed
RETURN_METRIC = "charts/episodic_return"
REFERENCE = "reference_fresh"  # the bench's fresh-agent strategy set: every layer reset at switches
BASELINE = "none"  # the strategy set a study compares methods against: no strategy
SPECTRUM_PREFIX = "spectrum/post/"
HE2025_EPS_RANK = "eps_rank_he2025/"  # + ε formatted :g: He et al. 2025's ε-rank, in percent


def segment_auc(steps: np.ndarray, values: np.ndarray, start: float, end: float) -> float:
    """Area under the piecewise-linear curve through (steps, values) on [start, end],
    divided by (end - start).

    The curve is held flat before the first and after the last point, so the result is the
    time-average of the learning curve over the whole segment, in the units of `values`.
    """
    steps, values = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    grid = np.concatenate([[start], steps, [end]])
    return float(np.trapezoid(np.interp(grid, steps, values), grid) / (end - start))


def task_scores(table: pd.DataFrame, metric: str = RETURN_METRIC,
                window: float = 0.1) -> pd.DataFrame:
    """Per run and task segment (in schedule order): n_episodes, mean_return, auc,
    initial_return, final_return.

    `initial_return` / `final_return` average the episodes in the first / last `window` fraction
    of the segment's steps (NaN when none ended there): how well the task is played on arrival
    and on leaving it, which is what forgetting compares.
    """
    episodes = table[table["metric"] == metric].sort_values("step", kind="stable")
    rows = [
        {**dict(zip(SEGMENT_KEYS, keys)), **_segment_score(segment, window)}
        for keys, segment in episodes.groupby(SEGMENT_KEYS, sort=True)
    ]
    columns = [*SEGMENT_KEYS, "n_episodes", "mean_return", "auc", "initial_return", "final_return"]
    return pd.DataFrame(rows, columns=columns).sort_values(["run", "task_index"], ignore_index=True)


def _segment_score(segment: pd.DataFrame, window: float) -> dict[str, float]:
    length = segment["switch_every"].iloc[0]
    start = segment["task_index"].iloc[0] * length
    end = start + length
    steps, values = segment["step"].to_numpy(), segment["value"].to_numpy()
    initial = values[steps < start + window * length]
    final = values[steps >= end - window * length]
    return {
        "n_episodes": len(values),
        "mean_return": float(values.mean()),
        "auc": segment_auc(steps, values, start, end),
        "initial_return": float(initial.mean()) if initial.size else np.nan,
        "final_return": float(final.mean()) if final.size else np.nan,
    }


def plasticity_ratio(scores: pd.DataFrame, reference: str = REFERENCE,
                     score: str = "auc", match_on: Sequence[str] = ("agent", "sequence", "task"),
                     baseline: Mapping[str, float] | None = None) -> pd.DataFrame:
    """Each run's task score relative to a fresh agent's score on the same task.

    The reference score of a task is the mean of `score` over every run of the `reference`
    strategy set (all its seeds and visits) that shares the `match_on` columns; pass
    `("agent", "task")` when the reference ran on sequences of its own. With a per-task
    `baseline` (e.g. a random agent's return; 0 when absent) the ratio is
    `(score - baseline) / (reference - baseline)`: 1 means the task is learned as well as by a
    new network. When the reference does not beat the baseline (denominator <= 0) there is no
    scale to measure against, and a sign flip would invert the meaning, so the ratio is NaN
    and a warning names the tasks. Reference runs keep their rows (their ratio is ~1).
    """
    match_on = list(match_on)
    reference_score = (
        scores[scores["strategy_set"] == reference]
        .groupby(match_on)[score].mean().rename("reference_score").reset_index()
    )
    if reference_score.empty:
        raise ValueError(f"no runs of the reference strategy set '{reference}'")
    ratios = scores[[*SEGMENT_KEYS, score]].merge(reference_score, on=match_on, how="left")
    base = ratios["task"].map(baseline or {}).fillna(0.0).astype(float)
    scale = ratios["reference_score"] - base
    _warn_about(ratios.loc[ratios["reference_score"].isna(), "task"], "no reference score")
    _warn_about(ratios.loc[scale <= 0, "task"], "reference does not beat the baseline")
    ratios["plasticity_ratio"] = (ratios[score] - base) / scale.where(scale > 0)
    return ratios


def _warn_about(tasks: pd.Series, problem: str) -> None:
    if len(tasks):
        names = ", ".join(sorted(map(str, tasks.unique())))
        warnings.warn(f"plasticity ratio is NaN ({problem}) for tasks: {names}", stacklevel=3)


def ratio_trend(ratios: pd.DataFrame, value: str = "plasticity_ratio",
                by: Sequence[str] = GROUP_KEYS, confidence: float = 0.95) -> pd.DataFrame:
    """Least-squares slope of `value` against task_index: fitted per run, then averaged per group.

    The seed is the unit of replication, so the CI is a t-interval over the per-run slopes (the
    points of one run are not independent); it is NaN with fewer than two runs. `intercept`
    (mean per-run intercept) lets a plot draw the fitted line.
    """
    fits = []
    for keys, run in ratios.dropna(subset=[value]).groupby([*by, "run"], sort=True):
        if run["task_index"].nunique() >= 2:  # a line needs two task positions
            fit = scipy.stats.linregress(run["task_index"], run[value])
            fits.append((*keys, fit.slope, fit.intercept))
    per_run = pd.DataFrame(fits, columns=[*by, "run", "slope", "intercept"])
    rows = [
        {**dict(zip(by, keys)), **_mean_slope_with_t_interval(group["slope"], confidence),
         "intercept": group["intercept"].mean(), "n_runs": len(group)}
        for keys, group in per_run.groupby(list(by), sort=True)
    ]
    return pd.DataFrame(rows, columns=[*by, "slope", "ci_low", "ci_high", "intercept", "n_runs"])


def _mean_slope_with_t_interval(samples: pd.Series, confidence: float) -> dict[str, float]:
    mean = samples.mean()
    if len(samples) < 2:
        return {"slope": mean, "ci_low": np.nan, "ci_high": np.nan}
    half_width = scipy.stats.t.ppf((1 + confidence) / 2, df=len(samples) - 1) * samples.sem()
    return {"slope": mean, "ci_low": mean - half_width, "ci_high": mean + half_width}


def final_performance(scores: pd.DataFrame, score: str = "final_return") -> pd.DataFrame:
    """Per run and task: `score` on the task's last visit, as column `final_performance`."""
    last_visits = scores.sort_values("task_index").groupby(["run", "task"]).tail(1)
    return (
        last_visits[[*SEGMENT_KEYS, score]]
        .rename(columns={score: "final_performance"})
        .sort_values(["run", "task_index"], ignore_index=True)
    )


def forgetting(scores: pd.DataFrame, earlier: str = "final_return",
               revisit: str = "initial_return") -> pd.DataFrame:
    """Per revisit of a task: how much of its best earlier performance was lost meanwhile.

    forgetting = best `earlier` score over the run's previous visits of the task (by default how
    well it was played when left) - `revisit` score of this visit (by default how well it is
    played on arrival, before relearning). Positive means forgotten; only visits after the first
    have a row.
    """
    visits = scores.sort_values(["run", "task_index"], ignore_index=True)
    by_task = visits.groupby(["run", "task"])
    visits["best_earlier"] = by_task[earlier].transform(lambda s: s.shift().cummax())
    revisits = visits[by_task.cumcount() > 0].rename(columns={revisit: "revisit_score"})
    revisits = revisits[[*SEGMENT_KEYS, "best_earlier", "revisit_score"]]
    return revisits.assign(forgetting=revisits["best_earlier"] - revisits["revisit_score"])


def iqm(scores: np.ndarray, axis: int | None = None) -> np.ndarray:
    """Interquartile mean: the mean of the middle 50% (25% trimmed from each end), as rliable."""
    return scipy.stats.trim_mean(scores, proportiontocut=0.25, axis=axis)


STATISTICS: dict[str, Callable[..., np.ndarray]] = {"iqm": iqm, "mean": np.mean}


def stratified_bootstrap_ci(matrix: np.ndarray, statistic: Callable[..., np.ndarray],
                            reps: int = 10_000, confidence: float = 0.95,
                            seed: int = 0) -> tuple[float, float]:
    """Percentile CI of `statistic` over a (runs x tasks) score matrix, as rliable computes it.

    Each replicate resamples runs with replacement independently within every task (stratified
    by task), then applies `statistic(..., axis=-1)` to all its scores. Written here instead of
    calling rliable: rliable 1.2.0 caps arch below 8, arch 7.2 fails to import under pandas 3,
    and its StratifiedBootstrap draws from numpy's global RNG whatever `random_state` it gets.
    """
    low, high = bootstrap_interval(
        lambda resampled: statistic(resampled.reshape(len(resampled), -1), axis=-1),
        [matrix], reps, confidence, seed)
    return float(low), float(high)


def bootstrap_interval(statistic: Callable[..., np.ndarray], matrices: Sequence[np.ndarray],
                       reps: int = 10_000, confidence: float = 0.95,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile CI of `statistic(*replicates)`, each (runs x tasks) matrix resampled on its own
    (rliable's StratifiedIndependentBootstrap): runs drawn with replacement within every task.

    `statistic` gets a chunk of replicates per matrix, each (size, runs, tasks), and returns
    (size, ...) estimates; the interval has the shape of one estimate.
    """
    matrices = [np.asarray(matrix, dtype=float) for matrix in matrices]
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // sum(m.size for m in matrices))  # bound memory per chunk
    estimates = []
    for start in range(0, reps, chunk):
        size = min(chunk, reps - start)
        estimates.append(statistic(*(
            m[rng.integers(len(m), size=(size, *m.shape)), np.arange(m.shape[1])]
            for m in matrices)))
    tail = (1 - confidence) / 2
    low, high = np.quantile(np.concatenate(estimates), [tail, 1 - tail], axis=0)
    return low, high


def score_matrices(frame: pd.DataFrame, value: str, by: Sequence[str] = GROUP_KEYS,
                   task: str = "task_index") -> dict[tuple, pd.DataFrame]:
    """Per group, the (runs x tasks) matrix of `value` that rliable's functions take.

    The tasks are the distinct values of the `task` column (segment positions by default; "task"
    pools the visits of a task). Scores of one run and task are averaged first. A run lacking a
    task is dropped with a warning, since stratified resampling needs every run on every task;
    a group left without runs is left out.
    """
    matrices = {}
    for keys, group in frame.groupby(list(by), sort=True):
        matrix = group.pivot_table(index="run", columns=task, values=value, aggfunc="mean")
        complete = matrix.dropna()
        if len(complete) < len(matrix):
            dropped = ", ".join(map(str, matrix.index.difference(complete.index)))
            warnings.warn(f"{keys}: dropping runs missing a task's {value}: {dropped}",
                          stacklevel=2)
        if not complete.empty:
            matrices[keys] = complete
    return matrices


def aggregate_with_ci(frame: pd.DataFrame, value: str, by: Sequence[str] = GROUP_KEYS,
                      task: str = "task_index", statistics: Sequence[str] = ("iqm", "mean"),
                      reps: int = 10_000, confidence: float = 0.95,
                      seed: int = 0) -> pd.DataFrame:
    """IQM and mean of `value` across runs and tasks per group, with stratified bootstrap CIs,
    over the `score_matrices` (runs lacking a task dropped)."""
    rows = []
    for keys, matrix in score_matrices(frame, value, by, task).items():
        scores = matrix.to_numpy()
        for name in statistics:
            statistic = STATISTICS[name]
            low, high = stratified_bootstrap_ci(scores, statistic, reps, confidence, seed)
            rows.append({**dict(zip(by, keys)), "statistic": name,
                         "estimate": float(statistic(scores, axis=None)),
                         "ci_low": low, "ci_high": high,
                         "n_runs": scores.shape[0], "n_tasks": scores.shape[1]})
    columns = [*by, "statistic", "estimate", "ci_low", "ci_high", "n_runs", "n_tasks"]
    return pd.DataFrame(rows, columns=columns)


def fraction_above(scores: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """Fraction of the (..., runs, tasks) scores above each τ: shape (..., len(taus))."""
    rows = np.sort(scores.reshape(-1, scores.shape[-2] * scores.shape[-1]), axis=-1)
    at_most = np.stack([np.searchsorted(row, taus, side="right") for row in rows])  # <= τ
    return (1 - at_most / rows.shape[-1]).reshape(*scores.shape[:-2], len(taus))


def profile_taus(matrices: Mapping[tuple, pd.DataFrame], num: int = 101) -> np.ndarray:
    """One τ grid for every profile: from min(0, lowest score) to the highest score."""
    scores = np.concatenate([m.to_numpy().ravel() for m in matrices.values()])
    return np.linspace(min(0.0, scores.min()), scores.max(), num)


def performance_profiles(matrices: Mapping[tuple, pd.DataFrame], taus: np.ndarray | None = None,
                         by: Sequence[str] = GROUP_KEYS, reps: int = 10_000,
                         confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Agarwal et al.'s performance profile (rliable's `create_performance_profile` with its
    default score distribution) per group: the fraction of all runs' task scores above τ, with
    a stratified bootstrap band. Columns: `by`, tau, fraction, ci_low, ci_high, n_runs, n_tasks.
    """
    if not matrices:
        return pd.DataFrame(columns=[*by, "tau", "fraction", "ci_low", "ci_high", "n_runs",
                                     "n_tasks"])
    taus = profile_taus(matrices) if taus is None else np.asarray(taus, dtype=float)
    frames = []
    for keys, matrix in matrices.items():
        scores = matrix.to_numpy()
        low, high = bootstrap_interval(lambda r: fraction_above(r, taus), [scores], reps,
                                       confidence, seed)
        frames.append(pd.DataFrame({**dict(zip(by, keys)), "tau": taus,
                                    "fraction": fraction_above(scores, taus),
                                    "ci_low": low, "ci_high": high,
                                    "n_runs": scores.shape[0], "n_tasks": scores.shape[1]}))
    return pd.concat(frames, ignore_index=True)


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """rliable's P(X > Y): per task, the Mann-Whitney U statistic of X's runs over Y's divided
    by their number of pairs (P(x > y) + P(x = y) / 2), averaged over tasks. x (..., n, tasks)
    and y (..., m, tasks) with the same tasks; a leading batch of replicates is kept."""
    n, m = x.shape[-2], y.shape[-2]
    # U counts the pairs X wins, a tie as half; one run of X at a time bounds the memory
    u = sum((run > y).sum(axis=-2) + 0.5 * (run == y).sum(axis=-2)
            for run in np.split(x, n, axis=-2))
    return (u / (n * m)).mean(axis=-1)


def improvement_pairs(strategy_sets: Sequence[str], baseline: str,
                      all_pairs_up_to: int = 4) -> list[tuple[str, str]]:
    """(X, Y) pairs to compare: every pair among few sets, else each set against `baseline`
    (every pair when it has no runs). P(Y > X) = 1 - P(X > Y), so each pair comes once, with
    `baseline` as Y."""
    names = sorted(strategy_sets)
    if len(names) > all_pairs_up_to and baseline in names:
        return [(name, baseline) for name in names if name != baseline]
    pairs = [(x, y) for i, x in enumerate(names) for y in names[i + 1:]]
    return [(y, x) if x == baseline else (x, y) for x, y in pairs]


def improvement_probabilities(matrices: Mapping[tuple, pd.DataFrame], baseline: str = BASELINE,
                              all_pairs_up_to: int = 4, reps: int = 10_000,
                              confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """P(X > Y) (`probability_of_improvement`) between the strategy sets of each agent and
    sequence, on the task positions both have, with a CI from resampling each set's runs within
    every task on its own, as rliable. Keys of `matrices`: GROUP_KEYS (strategy set last)."""
    fixed = GROUP_KEYS[:-1]
    rows = []
    for comparison in sorted({keys[:-1] for keys in matrices}):
        sets = {keys[-1]: m for keys, m in matrices.items() if keys[:-1] == comparison}
        for x_name, y_name in improvement_pairs(list(sets), baseline, all_pairs_up_to):
            tasks = sets[x_name].columns.intersection(sets[y_name].columns)
            if tasks.empty:
                continue
            x, y = sets[x_name][tasks].to_numpy(), sets[y_name][tasks].to_numpy()
            low, high = bootstrap_interval(probability_of_improvement, [x, y], reps,
                                           confidence, seed)
            rows.append({**dict(zip(fixed, comparison)), "x": x_name, "y": y_name,
                         "probability": float(probability_of_improvement(x, y)),
                         "ci_low": float(low), "ci_high": float(high),
                         "n_runs_x": len(x), "n_runs_y": len(y), "n_tasks": len(tasks)})
    columns = [*fixed, "x", "y", "probability", "ci_low", "ci_high", "n_runs_x", "n_runs_y",
               "n_tasks"]
    return pd.DataFrame(rows, columns=columns)


def switch_spectra(table: pd.DataFrame, prefix: str = SPECTRUM_PREFIX) -> pd.DataFrame:
    """Spectral numbers measured at each switch: run, task_index, metric (prefix removed), value.

    The monitor logs at the switch step, which belongs to the new task's segment, so task_index
    is the task that starts there; the first value of a segment is the one taken.
    """
    spectra = table[table["metric"].str.startswith(prefix)].sort_values("step", kind="stable")
    firsts = spectra.groupby(["run", "task_index", "metric"], as_index=False)["value"].first()
    return firsts.assign(metric=firsts["metric"].str.removeprefix(prefix))


def spectral_correlation(table: pd.DataFrame, ratios: pd.DataFrame, by: Sequence[str] = (),
                         prefix: str = SPECTRUM_PREFIX, value: str = "plasticity_ratio",
                         skip_positions: Collection[int] = ()) -> pd.DataFrame:
    """Pearson and Spearman correlation (with p-values) of each spectral metric at a switch with
    the plasticity ratio of the task that starts there, pooled over runs (or per `by` group), and
    the least-squares line of the ratio on the metric (`slope`, `intercept`, `r_squared`).

    NaN statistics where fewer than 3 switches have both numbers or either side is constant.
    `skip_positions`: task positions left out, e.g. (0,) as He et al. do: the measurement at the
    first task is of the untrained network, and its ratio says nothing of lost plasticity.
    Reference runs count like any other; drop them from `ratios` to correlate only the runs
    under study.
    """
    pairs = spectral_pairs(table, ratios, [*by], prefix, value, skip_positions)
    rows = []
    for keys, group in pairs.groupby([*by, "metric"], sort=True):
        rows.append({**dict(zip([*by, "metric"], keys)), "n": len(group),
                     **_correlations(group["value"].to_numpy(), group[value].to_numpy())})
    return pd.DataFrame(rows, columns=[*by, "metric", "n", *CORRELATION_COLUMNS])


def spectral_pairs(table: pd.DataFrame, ratios: pd.DataFrame, columns: Sequence[str] = (),
                   prefix: str = SPECTRUM_PREFIX, value: str = "plasticity_ratio",
                   skip_positions: Collection[int] = ()) -> pd.DataFrame:
    """`switch_spectra` rows (run, task_index, metric, value) joined with the `value` of the
    task that starts at the switch, and the ratios' `columns`; `skip_positions` left out."""
    targets = ratios[[*columns, "run", "task_index", value]].dropna(subset=[value])
    pairs = switch_spectra(table, prefix).merge(targets, on=["run", "task_index"])
    return pairs[~pairs["task_index"].isin(list(skip_positions))].reset_index(drop=True)


CORRELATION_COLUMNS = ("pearson_r", "pearson_p", "spearman_rho", "spearman_p", "r_squared",
                       "slope", "intercept")


def _correlations(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:  # scipy would warn and give NaN
        return dict.fromkeys(CORRELATION_COLUMNS, np.nan)
    # linregress's r and two-sided p are Pearson's (the same t-test), so one fit gives both
    fit, spearman = scipy.stats.linregress(x, y), scipy.stats.spearmanr(x, y)
    return {"pearson_r": fit.rvalue, "pearson_p": fit.pvalue,
            "spearman_rho": spearman.statistic, "spearman_p": spearman.pvalue,
            "r_squared": fit.rvalue ** 2, "slope": fit.slope, "intercept": fit.intercept}


def epsilon_selection(correlation: pd.DataFrame,
                      family: str = HE2025_EPS_RANK) -> pd.DataFrame:
    """He et al.'s way to pick ε: among the `family` + ε metrics of `spectral_correlation`
    (pooled, one row per metric), the ε whose ε-rank best fits the ratio linearly (highest R²).
    The points are those of `correlation`, one per run and switch (as their incremental-CIFAR
    branch, per seed; on ImageNet and MNIST they fit seed means per method and task, which
    our per-run task orders make a mix of tasks).

    One row per ε found, in increasing ε: eps, metric, the correlation's columns, and `chosen`
    (True on exactly one row, the first of the best R²; on none when no R² is defined).
    """
    rows = correlation[correlation["metric"].str.startswith(family)].copy()
    rows.insert(0, "eps", pd.to_numeric(rows["metric"].str.removeprefix(family),
                                        errors="coerce"))
    rows = rows.dropna(subset=["eps"]).sort_values("eps", ignore_index=True)
    rows["chosen"] = False
    if rows["r_squared"].notna().any():
        rows.loc[rows["r_squared"].idxmax(), "chosen"] = True
    return rows


def first_task_ratios(ratios: pd.DataFrame, by: Sequence[str] = GROUP_KEYS,
                      value: str = "plasticity_ratio") -> pd.DataFrame:
    """Per group: the ratio on task position 0 (IQM and mean over runs, n_runs). Before any
    switch there is no plasticity to lose, so a low ratio there is the settings' own cost."""
    first = ratios[ratios["task_index"] == 0].dropna(subset=[value])
    per_run = first.groupby([*by, "run"], sort=True)[value].mean().reset_index()
    rows = [{**dict(zip(by, keys)), "iqm": float(iqm(group[value].to_numpy())),
             "mean": group[value].mean(), "n_runs": len(group)}
            for keys, group in per_run.groupby(list(by), sort=True)]
    return pd.DataFrame(rows, columns=[*by, "iqm", "mean", "n_runs"])
