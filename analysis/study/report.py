"""`pliable report RUNS_DIR`: the tidy table, the statistics of a plasticity study, plots, and a
report (report.md and a self-contained report.html) that shows them.

    RUNS_DIR/report/results.csv        the tidy table (analysis.study.results), or results.parquet
    RUNS_DIR/report/tables/*.csv       every statistic below, one row per run/task/group
    RUNS_DIR/report/figures/*.png|pdf  learning curves, plasticity ratio per task, performance
                                       profiles, ε-rank vs ratio scatter (He et al.'s Fig. 5),
                                       densities
    RUNS_DIR/report/score_matrices/    AGENT__SEQUENCE.npz: strategy set -> (runs x task
                                       positions) ratios, the dict rliable's functions take
    RUNS_DIR/report/report.md|html     opening with the headline (analysis.study.headline)

Only finished runs enter the statistics; the others are listed. Warnings raised on the way (a
task whose reference learns nothing, a run missing a task, ...) end up in the report's notes.
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from agents.errors import ConfigError
from analysis.study import plots
from analysis.study.aggregate import (
    BASELINE,
    REFERENCE,
    SEGMENT_KEYS,
    SPECTRUM_PREFIX,
    aggregate_with_ci,
    epsilon_selection,
    final_performance,
    first_task_ratios,
    forgetting,
    improvement_probabilities,
    performance_profiles,
    plasticity_ratio,
    ratio_trend,
    score_matrices,
    spectral_correlation,
    spectral_pairs,
    switch_spectra,
    task_scores,
)
from analysis.study.document import Document
from analysis.study.headline import OUR_PREDICTORS, POOLED, baseline_comparison, headline
from analysis.study.progress import progress_bar
from analysis.study.report_tables import (
    epsilon_table,
    improvement_table,
    per_task_table,
    prediction_table,
    spectral_tables,
    summary_table,
)
from analysis.study.results import read_runs_by_status, read_switch_densities, save_table

# what the monitor measured at a switch on the new task's batch (post) and the old task's (pre)
SPECTRUM_PREFIXES = {"post": SPECTRUM_PREFIX, "pre": SPECTRUM_PREFIX.replace("/post/", "/pre/")}
# left out of every spectrum-ratio fit, as He et al. drop task 0: the untrained network's
# spectrum, and a ratio with no plasticity lost yet
SKIP_POSITIONS = (0,)


def analyse(table: pd.DataFrame, reference: str,
            baseline: str = BASELINE) -> dict[str, pd.DataFrame]:
    """Every statistic of the report as a tidy frame, by name; the plasticity ratios and what
    needs them only when `reference` has runs."""
    scores = task_scores(table)
    stats = {"task_scores": scores, "final_performance": final_performance(scores),
             "forgetting": forgetting(scores)}
    aggregates = [aggregate_with_ci(scores, "auc").assign(value="auc")]
    if reference in set(scores["strategy_set"]):
        ratios = plasticity_ratio(scores, reference, score="auc")
        by_return = plasticity_ratio(scores, reference, score="mean_return")
        ratios = ratios.merge(by_return[[*SEGMENT_KEYS, "plasticity_ratio"]].rename(
            columns={"plasticity_ratio": "return_ratio"}), on=SEGMENT_KEYS)
        stats["plasticity_ratios"] = ratios
        stats["ratio_trend"] = ratio_trend(ratios)
        aggregates = [aggregate_with_ci(ratios, value).assign(value=value)
                      for value in ("plasticity_ratio", "return_ratio")] + aggregates
        studied = ratios[ratios["strategy_set"] != reference]
        stats["spectral_correlation"] = pd.concat([
            spectral_correlation(table, studied, prefix=prefix, skip_positions=SKIP_POSITIONS)
            .assign(measured=kind) for kind, prefix in SPECTRUM_PREFIXES.items()],
            ignore_index=True)
        stats.update(_collapse(table, studied, stats["spectral_correlation"]))
        stats["first_task"] = first_task_ratios(ratios)
        matrices = score_matrices(ratios, "plasticity_ratio")  # rliable's score of a run and task
        stats["performance_profile"] = performance_profiles(matrices)
        stats["probability_of_improvement"] = improvement_probabilities(matrices, baseline)
    stats["aggregate"] = pd.concat(aggregates, ignore_index=True)
    if "plasticity_ratios" in stats:
        stats["baseline_comparison"] = baseline_comparison(stats["aggregate"], baseline,
                                                           reference)
    run_labels = table[["run", "agent", "sequence", "strategy_set"]].drop_duplicates()
    stats["switch_spectra"] = pd.concat([
        switch_spectra(table, prefix).assign(measured=kind)
        for kind, prefix in SPECTRUM_PREFIXES.items()], ignore_index=True).merge(run_labels)
    return stats


def _collapse(table: pd.DataFrame, studied: pd.DataFrame, correlation: pd.DataFrame
              ) -> dict[str, pd.DataFrame]:
    """He et al.'s test of spectral collapse: the ε of the best R² (`eps_selection`); the fit of
    that ε-rank and of ours, pooled (strategy set "all") and per set (`collapse_prediction`);
    the points behind them (`collapse_points`)."""
    pooled = correlation[correlation["measured"] == "post"].drop(columns="measured")
    eps_table = epsilon_selection(pooled)
    predictors = [*eps_table.loc[eps_table["chosen"], "metric"], *OUR_PREDICTORS]
    points = spectral_pairs(table, studied, ["strategy_set"], skip_positions=SKIP_POSITIONS)
    points = points[points["metric"].isin(predictors)].reset_index(drop=True)
    per_set = spectral_correlation(table, studied, by=["strategy_set"],
                                   skip_positions=SKIP_POSITIONS)
    both = pd.concat([pooled.assign(strategy_set=POOLED), per_set], ignore_index=True)
    prediction = pd.concat([both[both["metric"] == metric] for metric in predictors],
                           ignore_index=True)  # pooled first, then per set, for each metric
    columns = ["metric", "strategy_set", *(c for c in both if c not in ("metric",
                                                                         "strategy_set"))]
    return {"eps_selection": eps_table, "collapse_prediction": prediction.reindex(
        columns=columns), "collapse_points": points}


def collect_densities(root: Path, table: pd.DataFrame,
                      progress: bool = False) -> dict[str, dict[int, list]]:
    """strategy set -> switch -> [(nodes, weights) per run] from the runs' spectra/ files."""
    densities: dict[str, dict[int, list]] = {}
    runs = table[["run", "strategy_set"]].drop_duplicates()
    for run, strategy_set in progress_bar(runs.itertuples(index=False), total=len(runs),
                                          desc="reading spectra", unit="run",
                                          enabled=progress):
        for switch, nodes, weights in read_switch_densities(root / run):
            densities.setdefault(strategy_set, {}).setdefault(switch, []).append((nodes, weights))
    return densities


def save_score_matrices(matrices: dict[tuple, pd.DataFrame], directory: Path) -> list[Path]:
    """One AGENT__SEQUENCE.npz per comparison: strategy set -> its (runs x task positions) array,
    rows in run-name order: `dict(np.load(path))` is the dict rliable's functions take."""
    comparisons: dict[tuple, dict[str, np.ndarray]] = {}
    for (agent, sequence, strategy_set), matrix in matrices.items():
        comparisons.setdefault((agent, sequence), {})[strategy_set] = matrix.to_numpy()
    paths = []
    for (agent, sequence), arrays in sorted(comparisons.items()):
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / re.sub(r"[^\w.+=-]", "_", f"{agent}__{sequence}.npz")
        np.savez(path, **arrays)
        paths.append(path)
    return paths


def write_report(root: Path, out: Path, reference: str = REFERENCE,
                 table_format: str = "csv", explicit_reference: bool = False,
                 baseline: str = BASELINE, explicit_baseline: bool = False,
                 progress: bool = False) -> Path:
    """Read the finished runs under `root`, write everything into `out`; returns report.md.
    `progress`: bars on stderr while it reads and computes (when stderr is a terminal)."""
    if not root.is_dir():
        raise ConfigError(f"runs directory not found: {root}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # inside the recorded block, so that a skipped run's warning becomes one note
        table, left_out = read_runs_by_status(
            root, statuses=("finished",), progress=lambda run_dirs: progress_bar(
                run_dirs, desc="reading runs", unit="run", enabled=progress))
        if table.empty:
            raise ConfigError(f"no finished runs under {root} (a run directory holds "
                              "config.yaml, TensorBoard events and status.json)")
        sets = sorted(table["strategy_set"].unique())
        if explicit_reference and reference not in sets:
            raise ConfigError(f"--reference: no finished runs of strategy set '{reference}' "
                              f"(sets: {', '.join(sets)})")
        if explicit_baseline and baseline not in sets:
            raise ConfigError(f"--baseline: no finished runs of strategy set '{baseline}' "
                              f"(sets: {', '.join(sets)})")
        with progress_bar(desc="report: statistics and bootstrap CIs", bar_format="{desc}",
                          enabled=progress):  # says what the wait is for
            stats = analyse(table, reference, baseline)
        matrices = (score_matrices(stats["plasticity_ratios"], "plasticity_ratio")
                    if "plasticity_ratios" in stats else {})
        densities = collect_densities(root, table, progress)
    notes = list(dict.fromkeys(str(warning.message) for warning in caught))
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)

    out.mkdir(parents=True, exist_ok=True)
    save_table(table, out / f"results.{table_format}")
    (out / "tables").mkdir(exist_ok=True)
    for name, frame in stats.items():
        frame.to_csv(out / "tables" / f"{name}.csv", index=False)
    written = [out / f"results.{table_format}", *(out / "tables" / f"{name}.csv"
                                                  for name in stats),
               *save_score_matrices(matrices, out / "score_matrices")]
    figures = out / "figures"
    doc = Document(f"Plasticity benchmark: {root.name}")
    _headline(doc, stats, baseline, reference)
    _overview(doc, root, table, left_out, reference, stats)
    doc.heading("Summary")
    doc.table(summary_table(stats))
    doc.heading("Learning curves")
    doc.figure(plots.learning_curves(table, figures / "learning_curves", reference),
               "Episodic return (mean over seeds ± standard error); dotted lines: task switches")
    doc.heading("Per task")
    if "plasticity_ratios" in stats:
        doc.figure(plots.ratio_per_task(stats["plasticity_ratios"], figures / "plasticity_ratio",
                                        reference),
                   "Plasticity ratio of each task position (mean over seeds ± standard error); "
                   "1 = learns the task as well as a fresh network")
    doc.table(per_task_table(stats))
    if not stats.get("performance_profile", pd.DataFrame()).empty:
        _distribution_section(doc, stats, figures, reference, baseline)
    _spectral_section(doc, stats, densities, figures, sets, reference)
    written += [png.with_suffix(suffix) for png in doc.figures() for suffix in (".png", ".pdf")]
    doc.heading("Files")
    doc.bullets([f"`{path.relative_to(out).as_posix()}`" for path in written])
    if notes:
        doc.heading("Notes")
        doc.bullets(notes)
    (out / "report.md").write_text(doc.markdown(out))
    (out / "report.html").write_text(doc.html())
    return out / "report.md"


def _headline(doc: Document, stats, baseline: str, reference: str) -> None:
    answers = headline(stats, baseline, reference)
    if not answers:
        return  # the overview says why there are no ratios
    doc.heading("Headline")
    for question, lines in answers:
        doc.text(question)
        doc.bullets(lines)
    doc.heading("Runs and method")


def _overview(doc: Document, root: Path, table: pd.DataFrame, left_out: dict[str, str],
              reference: str, stats) -> None:
    runs = table[["run", "strategy_set"]].drop_duplicates()
    counts = runs.groupby("strategy_set")["run"].count()
    lines = [f"Runs directory: `{root}`",
             f"{len(runs)} finished runs: " + ", ".join(f"{name} ({n})"
                                                         for name, n in counts.items())]
    if left_out:
        lines.append("Left out, not finished: " + ", ".join(
            f"{run} ({status})" for run, status in left_out.items()))
    if "plasticity_ratios" in stats:
        lines.append(f"Plasticity ratio: a run's area under the learning curve on a task, over "
                     f"the mean of the `{reference}` runs on the same task (1 = learns it as "
                     "well as a freshly initialised network)")
    else:
        lines.append(f"No finished runs of the reference strategy set `{reference}`, so no "
                     "plasticity ratios: run the bench with `reference: true` or pass "
                     "`--reference NAME`")
    doc.bullets(lines)
    doc.text("AUC is the time-average of the learning curve over a task's segment. IQM and mean "
             "pool every seed and task position; their 95% confidence intervals come from a "
             "stratified bootstrap (runs resampled within each task position, 10,000 "
             "replicates; Agarwal et al. 2021). The trend is the least-squares slope of the ratio "
             "against the task position, per run, averaged over seeds (t-interval). Final "
             "return: the return in the last 10% of each task's last visit. Forgetting: the best "
             "earlier return on leaving a task minus the return on arriving at it again.")


def _distribution_section(doc: Document, stats, figures: Path, reference: str,
                          baseline: str) -> None:
    """rliable's other two views of the ratios: performance profiles and P(X > Y)."""
    doc.heading("Score distributions and probability of improvement")
    doc.figure(plots.performance_profiles(stats["performance_profile"],
                                          figures / "performance_profiles", reference),
               "Performance profiles (Agarwal et al. 2021): the fraction of all runs' task "
               "positions whose plasticity ratio exceeds τ, with 95% stratified bootstrap bands; "
               "a curve above another everywhere dominates it")
    improvement = stats["probability_of_improvement"]
    if not improvement.empty:
        pairs = (f"each strategy set against `{baseline}`"
                 if set(improvement["y"]) == {baseline} else "every pair of strategy sets")
        doc.text("Probability of improvement P(X > Y), as rliable's "
                 "`probability_of_improvement`: the chance that a run of X has a higher ratio "
                 "than a run of Y on the same task position (ties count ½), averaged over the "
                 f"positions; 0.5 = no difference. For {pairs}; 95% CIs from resampling each "
                 "set's runs within every position on its own.")
        doc.table(improvement_table(improvement))
    doc.text("For rliable: `score_matrices/AGENT__SEQUENCE.npz` holds each strategy set's "
             "(runs × task positions) ratios, runs in name order: `scores = dict(np.load(path))` "
             "is the dict `rliable.library.get_interval_estimates(scores, func)` and "
             "`create_performance_profile(scores, taus)` take.")


def _spectral_section(doc: Document, stats, densities, figures: Path, strategy_sets,
                      reference: str) -> None:
    doc.heading("Spectral monitor at switches")
    eps_table = stats.get("eps_selection", pd.DataFrame(columns=["metric", "eps", "chosen"]))
    chosen = eps_table[eps_table["chosen"].astype(bool)]
    values, correlation = spectral_tables(stats, extra=tuple(chosen["metric"]))
    if values.empty:
        doc.text("The logs hold no `spectrum/post/*` or `spectrum/pre/*` scalars: the spectral "
                 "monitor was off (`monitor.enabled`) or not available when these runs trained.")
    else:
        doc.text("Mean over seeds of what the monitor measured at each switch, on the new "
                 "task's batch (post) and on the old task's last batch (pre).")
        doc.table(values)
        if not correlation.empty:
            doc.text("Correlation of each number at a switch with the plasticity ratio of the "
                     "task that starts there, pooled over the runs under study (reference "
                     "excluded; the first task left out); R²: of the least-squares line:")
            doc.table(correlation)
    if "collapse_prediction" in stats and not values.empty:
        _collapse_section(doc, stats, eps_table, chosen, figures, strategy_sets, reference)
    if densities:
        eps = float(chosen["eps"].iloc[0]) if len(chosen) else None
        caption = ("Hessian eigenvalue density after successive switches (seeds averaged), on "
                   f"one x-axis for every strategy set: symlog, linear within "
                   f"±{plots.DENSITY_LINTHRESH:g}; the density is per unit of that axis, so "
                   "equal areas hold equal mass and collapse shows as mass piling up at 0")
        if eps is not None:
            caption += f"; dotted: ±ε = {eps:g}, the ε-rank's threshold"
        doc.figure(plots.switch_densities(densities, figures / "hessian_density", eps), caption)
    else:
        doc.text("No `spectra/switch_###_post.npz` files with density nodes and weights: no "
                 "densities to plot.")


def _collapse_section(doc: Document, stats, eps_table, chosen, figures: Path, strategy_sets,
                      reference: str) -> None:
    """He et al.'s test: ε chosen for the best R², then their Fig. 5 for it and for ours."""
    doc.heading("Does spectral collapse predict plasticity? (He et al. 2025)")
    if eps_table.empty:
        doc.text("The logs hold no `spectrum/post/eps_rank_he2025/<ε>` scalars (He et al.'s "
                 "ε-rank: the percentage of the density's mass where |λ| > ε), so no ε to "
                 "choose.")
    else:
        pick = (f"chosen: ε = {chosen['eps'].iloc[0]:g}" if len(chosen) else
                "no ε has a defined fit (fewer than 3 switches, or constant values)")
        doc.text("He et al.'s ε-rank (percentage of the Hessian density's mass where |λ| > ε) "
                 "measured at a new task's start, against the plasticity ratio of that task, "
                 "pooled over the runs under study and switches after the first task. As in "
                 f"their code, ε is the one of the best R² ({pick}); with "
                 f"{len(eps_table)} values tried, the chosen R² is optimistic.")
        doc.table(epsilon_table(eps_table))
    prediction = stats["collapse_prediction"]
    if prediction.empty:
        return
    doc.text(("The chosen ε-rank and our" if len(chosen) else "Our") + " predictors "
             "(`eps_rank_rel`: the number of eigenvalues above ε·λmax, `eps_rank` in older "
             "logs; `tau_trainability`) against the ratio, pooled (`all`) and per strategy set:")
    doc.table(prediction_table(prediction))
    metrics = {}
    if len(chosen):
        metrics[chosen["metric"].iloc[0]] = (f"ε-rank, ε = {chosen['eps'].iloc[0]:g} (% of "
                                             "mass), at the task's start")
    ours = [m for m in OUR_PREDICTORS  # our ε-rank (its old name in older logs), not τ
            if m.startswith("eps_rank") and (prediction["metric"] == m).any()]
    if ours:
        metrics[ours[0]] = f"{ours[0]} at the task's start"
    if metrics:
        doc.figure(plots.collapse_scatter(stats["collapse_points"], prediction,
                                          figures / "collapse_scatter", metrics, strategy_sets,
                                          reference, POOLED),
                   "Spectral number at a new task's start against that task's plasticity ratio "
                   "(one point per run and switch; grey: the pooled least-squares line; R² per "
                   "strategy set in the legend)")


def report_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pliable report", description="Tables, robust statistics, plots and a report "
        "(Markdown and HTML) from the TensorBoard logs of a runs directory.")
    parser.add_argument("runs_dir", help="directory holding run directories (e.g. runs/bench/X)")
    parser.add_argument("--out", help="output directory (default: RUNS_DIR/report)")
    parser.add_argument("--reference", help=f"strategy set the plasticity ratio divides by "
                        f"(default: {REFERENCE})")
    parser.add_argument("--baseline", help="strategy set the headline asks about and "
                        f"compares the others against (default: {BASELINE})")
    parser.add_argument("--format", choices=("csv", "parquet"), default="csv",
                        help="file format of the tidy table (default: csv)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars on stderr (drawn only on a terminal anyway)")
    return parser


def main(argv: list[str]) -> int:
    args = report_parser().parse_args(argv)
    root = Path(args.runs_dir)
    out = Path(args.out) if args.out else root / "report"
    report = write_report(root, out, args.reference or REFERENCE, args.format,
                          explicit_reference=args.reference is not None,
                          baseline=args.baseline or BASELINE,
                          explicit_baseline=args.baseline is not None,
                          progress=not args.no_progress)
    print(f"report: {report}\n        {report.with_suffix('.html')}")
    return 0
