"""The report's tables: the statistics of `analysis.study.report.analyse`, formatted for reading.

Numbers are rounded to 3 significant digits (`number`); a missing one shows as "–". The
unrounded values are in the report's tables/*.csv.
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.study.aggregate import GROUP_KEYS, SEGMENT_KEYS

# shown in the report's spectral tables when logged ("eps_rank": its name in older logs)
SPECTRAL_METRICS = ("eps_rank_rel", "eps_rank", "tau_trainability", "effective_rank",
                    "lambda_max", "trace")
FIT_LABELS = {"n": "n", "r_squared": "R²", "pearson_r": "Pearson r", "pearson_p": "p",
              "slope": "slope", "intercept": "intercept"}
LABELS = {"agent": "agent", "sequence": "sequence", "strategy_set": "strategy set"}


def number(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.3g}"


def with_ci(estimate, low, high) -> str:
    if isinstance(low, float) and math.isnan(low):
        return number(estimate)
    return f"{number(estimate)} [{number(low)}, {number(high)}]"


def summary_table(stats: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per strategy set (and agent, sequence): aggregates with CIs, trend, final
    return and forgetting."""
    aggregate = stats["aggregate"].set_index([*GROUP_KEYS, "value", "statistic"])
    trend = stats.get("ratio_trend", pd.DataFrame(columns=GROUP_KEYS)).set_index(GROUP_KEYS)
    columns = {("plasticity_ratio", "iqm"): "ratio (AUC) IQM [95% CI]",
               ("plasticity_ratio", "mean"): "ratio (AUC) mean [95% CI]",
               ("return_ratio", "iqm"): "ratio (mean return) IQM [95% CI]",
               ("auc", "iqm"): "AUC IQM [95% CI]"}
    rows = []
    for keys, group in stats["task_scores"].groupby(GROUP_KEYS, sort=True):
        row = {**{LABELS[k]: v for k, v in zip(GROUP_KEYS, keys)}, "runs": group["run"].nunique()}
        for (value, statistic), label in columns.items():
            key = (*keys, value, statistic)
            found = key in aggregate.index
            row[label] = with_ci(*aggregate.loc[key, ["estimate", "ci_low", "ci_high"]]) \
                if found else "–"
        row["ratio trend per task [95% CI]"] = (
            with_ci(*trend.loc[keys, ["slope", "ci_low", "ci_high"]]) if keys in trend.index
            else "–")
        row["final return"] = number(_in_group(stats["final_performance"], keys)
                                     .groupby("run")["final_performance"].mean().mean())
        row["forgetting"] = number(_in_group(stats["forgetting"], keys)["forgetting"].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def _in_group(frame: pd.DataFrame, keys: tuple) -> pd.DataFrame:
    mask = pd.Series(True, index=frame.index)
    for column, key in zip(GROUP_KEYS, keys):
        mask &= frame[column] == key
    return frame[mask]


def per_task_table(stats: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per strategy set and task position: means over seeds of the return, AUC and ratios."""
    frame = stats["task_scores"]
    values = ["mean_return", "auc"]
    if "plasticity_ratios" in stats:
        ratios = stats["plasticity_ratios"][[*SEGMENT_KEYS, "plasticity_ratio", "return_ratio"]]
        frame = frame.merge(ratios, on=SEGMENT_KEYS)
        values += ["plasticity_ratio", "return_ratio"]
    table = frame.groupby([*GROUP_KEYS, "task_index"], sort=True).agg(
        task=("task", lambda tasks: "/".join(dict.fromkeys(tasks))), runs=("run", "nunique"),
        **{value: (value, "mean") for value in values}).reset_index()
    for value in values:
        table[value] = table[value].map(number)
    return table.rename(columns={**LABELS, "task_index": "position", "mean_return": "mean return",
                                 "auc": "AUC", "plasticity_ratio": "ratio (AUC)",
                                 "return_ratio": "ratio (mean return)"})


def improvement_table(improvement: pd.DataFrame) -> pd.DataFrame:
    """P(X > Y) with its CI, per pair of strategy sets (and agent, sequence)."""
    table = improvement[["agent", "sequence", "x", "y"]].rename(
        columns={**LABELS, "x": "X", "y": "Y"})
    table["P(X > Y) [95% CI]"] = [with_ci(*row) for row in improvement[
        ["probability", "ci_low", "ci_high"]].itertuples(index=False)]
    return table.assign(**{"runs X": improvement["n_runs_x"], "runs Y": improvement["n_runs_y"],
                           "positions": improvement["n_tasks"]})


def spectral_tables(stats: dict[str, pd.DataFrame], extra: tuple[str, ...] = ()
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(mean of each spectral number per set and switch, its correlation with the ratio), for
    the `SPECTRAL_METRICS` and the `extra` ones logged (all, when none of them is)."""
    spectra = stats["switch_spectra"]
    if spectra.empty:
        return pd.DataFrame(), pd.DataFrame()
    metrics = [m for m in (*SPECTRAL_METRICS, *extra) if m in set(spectra["metric"])] or \
        sorted(spectra["metric"].unique())
    spectra = spectra[spectra["metric"].isin(metrics)]
    values = spectra.pivot_table(index=[*GROUP_KEYS, "task_index"], columns=["measured", "metric"],
                                 values="value", aggfunc="mean")
    values.columns = [f"{measured} {metric}" for measured, metric in values.columns]
    values = values.map(number).reset_index().rename(
        columns={**LABELS, "task_index": "switch to position"})
    correlation = stats.get("spectral_correlation", pd.DataFrame(columns=["metric"]))
    correlation = correlation[correlation["metric"].isin(metrics)]
    if not correlation.empty:
        correlation = correlation[["measured", "metric", "n", "pearson_r", "pearson_p",
                                   "spearman_rho", "spearman_p", "r_squared"]].copy()
        for column in ("pearson_r", "pearson_p", "spearman_rho", "spearman_p", "r_squared"):
            correlation[column] = correlation[column].map(number)
        correlation = correlation.rename(columns={"pearson_r": "Pearson r", "pearson_p": "p",
                                                  "spearman_rho": "Spearman ρ",
                                                  "spearman_p": "p ", "r_squared": "R²"})
    return values, correlation


def epsilon_table(eps_table: pd.DataFrame) -> pd.DataFrame:
    """He et al.'s ε-rank against the ratio, one row per ε, the chosen one marked."""
    table = pd.DataFrame({"ε": eps_table["eps"].map(lambda eps: f"{eps:g}"),
                          "chosen": eps_table["chosen"].map({True: "✓", False: ""})})
    return pd.concat([table, _fit_columns(eps_table)], axis=1)


def prediction_table(prediction: pd.DataFrame) -> pd.DataFrame:
    """The fit of each predictor of the ratio, pooled ("all") and per strategy set."""
    table = prediction[["metric", "strategy_set"]].rename(columns=LABELS)
    return pd.concat([table, _fit_columns(prediction)], axis=1)


def _fit_columns(frame: pd.DataFrame) -> pd.DataFrame:
    columns = {label: frame[column].map(number) for column, label in FIT_LABELS.items()}
    columns["n"] = frame["n"].map(str)
    return pd.DataFrame(columns, index=frame.index)
