"""The report's headline: the three questions of a plasticity study answered in plain words from
the statistics of `analysis.study.report.analyse`, and the warnings that qualify the answers.

    (a) does the baseline lose plasticity?   its ratio trend per task, and whether the CI excludes 0
    (b) which strategy sets preserve it?     ratio IQM CI entirely above the baseline's
    (c) does spectral collapse predict it?   He et al.'s ε-rank at a task's start vs its ratio
    (d) first-task warnings                  a set already below 0.8 before any switch
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.study.aggregate import GROUP_KEYS
from analysis.study.report_tables import number, with_ci

FIRST_TASK_THRESHOLD = 0.8
POOLED = "all"  # the strategy set of a fit pooled over every set under study
SIGNIFICANCE = 0.05
# in (c) next to He et al.'s ε-rank; "eps_rank": eps_rank_rel's name in older logs
OUR_PREDICTORS = ("eps_rank_rel", "eps_rank", "tau_trainability")


def trend_verdict(slope: float, low: float, high: float) -> str:
    if math.isnan(slope):
        return "no trend (a task position is missing)"
    if math.isnan(low):
        return "cannot tell: one run, no CI"
    if high < 0:
        return "falls: CI entirely below 0"
    if low > 0:
        return "rises: CI entirely above 0, no evidence of loss"
    return "no evidence of loss: CI includes 0"


def _label(name: str, keys: tuple, many: bool) -> str:
    """`name`, with its agent and sequence when the study has several of them."""
    agent, sequence = keys
    return f"`{name}` ({agent}, {sequence})" if many else f"`{name}`"


def baseline_lines(stats: dict[str, pd.DataFrame], baseline: str) -> list[str]:
    trend = stats["ratio_trend"]
    rows = trend[trend["strategy_set"] == baseline]
    if rows.empty:
        return [f"no ratio trend of the baseline `{baseline}` (no finished runs of it, or one "
                "task position only): pass `--baseline NAME`"]
    many = trend[["agent", "sequence"]].drop_duplicates().shape[0] > 1
    return [f"{_label(baseline, (row.agent, row.sequence), many)}: ratio trend per task "
            f"{with_ci(row.slope, row.ci_low, row.ci_high)} ({row.n_runs} runs): "
            f"{trend_verdict(row.slope, row.ci_low, row.ci_high)}"
            for row in rows.itertuples(index=False)]


def baseline_comparison(aggregate: pd.DataFrame, baseline: str, reference: str,
                        value: str = "plasticity_ratio", statistic: str = "iqm"
                        ) -> pd.DataFrame:
    """Every strategy set but the baseline and the reference against the baseline of its agent
    and sequence: its `statistic` of `value` with CI, the baseline's, and `verdict` ("above":
    CI entirely above the baseline's, "below": entirely below, else "overlaps")."""
    rows = aggregate[(aggregate["value"] == value) & (aggregate["statistic"] == statistic)]
    base = rows[rows["strategy_set"] == baseline].set_index(["agent", "sequence"])
    out = []
    for row in rows[~rows["strategy_set"].isin([baseline, reference])].itertuples(index=False):
        if (row.agent, row.sequence) not in base.index:
            continue
        other = base.loc[(row.agent, row.sequence)]
        verdict = ("above" if row.ci_low > other["ci_high"] else
                   "below" if row.ci_high < other["ci_low"] else "overlaps")
        out.append({"agent": row.agent, "sequence": row.sequence,
                    "strategy_set": row.strategy_set, "estimate": row.estimate,
                    "ci_low": row.ci_low, "ci_high": row.ci_high,
                    "baseline": baseline, "baseline_estimate": other["estimate"],
                    "baseline_ci_low": other["ci_low"], "baseline_ci_high": other["ci_high"],
                    "verdict": verdict})
    return pd.DataFrame(out, columns=[*GROUP_KEYS, "estimate", "ci_low", "ci_high", "baseline",
                                      "baseline_estimate", "baseline_ci_low",
                                      "baseline_ci_high", "verdict"])


def better_sets_lines(comparison: pd.DataFrame, baseline: str) -> list[str]:
    if comparison.empty:
        return [f"nothing to compare: no other strategy set shares an agent and sequence with "
                f"`{baseline}`"]
    above = comparison[comparison["verdict"] == "above"]
    if above.empty:
        return [f"no strategy set: no ratio IQM CI lies entirely above `{baseline}`'s"]
    many = comparison[["agent", "sequence"]].drop_duplicates().shape[0] > 1
    return [f"{_label(row.strategy_set, (row.agent, row.sequence), many)}: ratio IQM "
            f"{with_ci(row.estimate, row.ci_low, row.ci_high)} vs `{baseline}` "
            f"{with_ci(row.baseline_estimate, row.baseline_ci_low, row.baseline_ci_high)}"
            for row in above.itertuples(index=False)]


def _fit(row) -> str:
    return (f"R² {number(row['r_squared'])}, Pearson r {number(row['pearson_r'])}, "
            f"p {number(row['pearson_p'])}, n {row['n']}")


def collapse_lines(eps_table: pd.DataFrame, correlation: pd.DataFrame) -> list[str]:
    """(c): the chosen ε's fit in words, then ours for comparison."""
    lines = []
    chosen = eps_table[eps_table["chosen"]] if not eps_table.empty else eps_table
    if chosen.empty:
        lines.append("no He et al. ε-rank to test: the logs hold no "
                     "`spectrum/post/eps_rank_he2025/<ε>` scalars with a defined fit "
                     "(fewer than 3 switches after the first task, or constant values)")
    else:
        row = chosen.iloc[0]
        r, p = row["pearson_r"], row["pearson_p"]
        verdict = ("no: no significant linear relation" if not p < SIGNIFICANCE else
                   "yes: a lower ε-rank at a task's start goes with a lower ratio on it"
                   if r > 0 else "related, but with the opposite sign to collapse (a lower "
                   "ε-rank goes with a higher ratio)")
        lines.append(f"ε-rank (He et al. 2025) at a new task's start, ε = {row['eps']:g} "
                     f"(best R² of {len(eps_table)} values): {_fit(row)}: {verdict}. ε was "
                     "picked for this fit, so its R² is optimistic")
    by_metric = correlation.set_index("metric") if not correlation.empty else pd.DataFrame()
    for metric in OUR_PREDICTORS:
        if metric in by_metric.index:
            lines.append(f"`{metric}` (ours, no choice made): {_fit(by_metric.loc[metric])}")
    return lines


def first_task_warnings(first_task: pd.DataFrame, reference: str,
                        threshold: float = FIRST_TASK_THRESHOLD) -> list[str]:
    """One line per strategy set whose ratio IQM on task position 0 is below `threshold`."""
    many = first_task[["agent", "sequence"]].drop_duplicates().shape[0] > 1
    return [f"{_label(row.strategy_set, (row.agent, row.sequence), many)}: ratio "
            f"{number(row.iqm)} on the first task: its settings hurt learning itself; later "
            "ratios mix both effects"
            for row in first_task.itertuples(index=False)
            if row.strategy_set != reference and row.iqm < threshold]


def headline(stats: dict[str, pd.DataFrame], baseline: str, reference: str
             ) -> list[tuple[str, list[str]]]:
    """The headline as (question, answer lines) pairs; empty without plasticity ratios."""
    if "plasticity_ratios" not in stats:
        return []
    warnings = first_task_warnings(stats["first_task"], reference)
    prediction = stats["collapse_prediction"]
    return [
        (f"(a) Does the baseline `{baseline}` lose plasticity?", baseline_lines(stats, baseline)),
        (f"(b) Which strategy sets beat `{baseline}`?",
         better_sets_lines(stats["baseline_comparison"], baseline)),
        ("(c) Does Hessian spectral collapse at a task's start predict its ratio?",
         collapse_lines(stats["eps_selection"], prediction[prediction["strategy_set"] == POOLED])),
        ("(d) First-task warnings", warnings or [
            f"no warning: every strategy set's ratio on the first task is at least "
            f"{FIRST_TASK_THRESHOLD:g}"]),
    ]
