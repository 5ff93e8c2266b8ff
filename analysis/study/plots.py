"""The report's figures, from the tidy table and the statistics of `analysis.study.aggregate`.

Each function draws one figure, saves it as PNG and PDF next to each other and returns the PNG's
path. One axes per sequence (a bench usually has one); strategy sets keep their colour across
figures; the fresh-agent reference is dashed.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.study.aggregate import RETURN_METRIC  # noqa: E402

BINS_PER_TASK = 10


def save(fig, stem: Path) -> Path:
    stem.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(stem.with_suffix(".pdf"))
    fig.savefig(stem.with_suffix(".png"), dpi=110)
    plt.close(fig)
    return stem.with_suffix(".png")


def set_styles(strategy_sets, reference: str) -> dict[str, dict]:
    """A fixed colour per strategy set (in sorted order) and a dashed line for the reference."""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {name: {"color": "black" if name == reference else cycle[i % len(cycle)],
                   "linestyle": "--" if name == reference else "-"}
            for i, name in enumerate(sorted(strategy_sets))}


def _sequence_axes(sequences, height: float = 3.2):
    fig, axes = plt.subplots(len(sequences), 1, figsize=(9, height * len(sequences)),
                             squeeze=False)
    return fig, dict(zip(sequences, axes[:, 0]))


def _task_labels(frame: pd.DataFrame) -> dict[int, str]:
    """Task name per position; positions whose task differs between runs (shuffled) stay bare."""
    names = frame.groupby("task_index")["task"].unique()
    return {index: str(tasks[0]) if len(tasks) == 1 else f"task {index}"
            for index, tasks in names.items()}


def learning_curves(table: pd.DataFrame, stem: Path, reference: str) -> Path:
    """Episodic return against env steps: mean over seeds (± standard error) per strategy set,
    each run first averaged in bins of a tenth of a task; dotted lines at the switches."""
    returns = table[table["metric"] == RETURN_METRIC]
    styles = set_styles(table["strategy_set"].unique(), reference)
    fig, axes = _sequence_axes(sorted(returns["sequence"].unique()))
    for sequence, ax in axes.items():
        frame = returns[returns["sequence"] == sequence]
        switch_every = int(frame["switch_every"].iloc[0])
        width = max(1, switch_every // BINS_PER_TASK)
        per_run = (frame.assign(bin=frame["step"] // width)
                   .groupby(["strategy_set", "run", "bin"])["value"].mean().reset_index())
        for name, runs in per_run.groupby("strategy_set"):
            curve = runs.groupby("bin")["value"].agg(["mean", "sem", "count"])
            x = (curve.index.to_numpy() + 0.5) * width
            ax.plot(x, curve["mean"], label=name, **styles[name])
            band = curve["sem"].fillna(0).to_numpy()
            ax.fill_between(x, curve["mean"] - band, curve["mean"] + band, alpha=0.15,
                            color=styles[name]["color"])
        labels = _task_labels(frame)
        for index, label in labels.items():
            if index:
                ax.axvline(index * switch_every, color="grey", linestyle=":", linewidth=1)
            ax.text((index + 0.02) * switch_every, 1.01, label, transform=ax.get_xaxis_transform(),
                    fontsize=7, va="bottom")
        ax.set(xlabel="env steps", ylabel="episodic return")
        ax.set_title(sequence, pad=14, fontsize=10)
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return save(fig, stem)


def ratio_per_task(ratios: pd.DataFrame, stem: Path, reference: str) -> Path:
    """Plasticity ratio of every task position: mean over seeds ± standard error per set."""
    styles = set_styles(ratios["strategy_set"].unique(), reference)
    fig, axes = _sequence_axes(sorted(ratios["sequence"].unique()))
    for sequence, ax in axes.items():
        frame = ratios[ratios["sequence"] == sequence]
        names = sorted(frame["strategy_set"].unique())
        for offset, name in zip(np.linspace(-0.2, 0.2, len(names)), names):
            points = (frame[frame["strategy_set"] == name]
                      .groupby("task_index")["plasticity_ratio"].agg(["mean", "sem"]))
            ax.errorbar(points.index + offset, points["mean"], yerr=points["sem"].fillna(0),
                        marker="o", markersize=4, capsize=2, label=name, **styles[name])
        labels = _task_labels(frame)
        ax.set_xticks(list(labels), [f"{i}\n{label}" for i, label in labels.items()], fontsize=7)
        ax.axhline(1.0, color="grey", linewidth=1)
        ax.set(xlabel="task position", ylabel="plasticity ratio (AUC)")
        ax.set_title(sequence, fontsize=10)
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return save(fig, stem)


def performance_profiles(profiles: pd.DataFrame, stem: Path, reference: str) -> Path:
    """Agarwal et al.'s performance profiles (`aggregate.performance_profiles`): per strategy
    set, the fraction of scores above τ with its bootstrap band; a panel per agent and sequence."""
    styles = set_styles(profiles["strategy_set"].unique(), reference)
    fig, axes = _sequence_axes(sorted(profiles.groupby(["agent", "sequence"]).groups))
    for (agent, sequence), ax in axes.items():
        frame = profiles[(profiles["agent"] == agent) & (profiles["sequence"] == sequence)]
        for name, curve in frame.groupby("strategy_set", sort=True):
            ax.plot(curve["tau"], curve["fraction"], label=name, **styles[name])
            ax.fill_between(curve["tau"], curve["ci_low"], curve["ci_high"], alpha=0.15,
                            color=styles[name]["color"])
        ax.axvline(1.0, color="grey", linestyle=":", linewidth=1)  # a fresh network's ratio
        ax.set(xlabel="plasticity ratio τ", ylabel="fraction of runs × tasks > τ",
               ylim=(-0.02, 1.02))
        ax.set_title(f"{agent}: {sequence}", fontsize=10)
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return save(fig, stem)


DENSITY_LINTHRESH = 1e-2  # the symlog x-axis is linear within ±this: He et al.'s smallest ε


def switch_densities(densities: dict[str, dict[int, list]], stem: Path,
                     eps: float | None = None) -> Path:
    """`switch_density_figure`, saved."""
    return save(switch_density_figure(densities, eps=eps), stem)


def switch_density_figure(densities: dict[str, dict[int, list]], eps: float | None = None,
                   linthresh: float = DENSITY_LINTHRESH, num_points: int = 1500):
    """Hessian eigenvalue density after successive switches, one panel per strategy set, every
    panel on one symlog x-axis (linear within ±`linthresh`) and one log y-axis, so that mass
    piling up at 0 (spectral collapse) compares by eye across sets, as in He et al.'s Fig. 1.

    `densities`: strategy set -> switch -> [(nodes, weights) of each seed]. The seeds' densities
    are averaged (their nodes pooled, weights shared out), then broadened with one Gaussian
    kernel in the axis' own coordinate (symlog(λ) / linthresh, about one unit a decade), so the
    curve is the mass per unit of the drawn axis: equal areas are equal mass, near 0 and far
    out alike. Later switches are drawn in lighter colours; dotted lines mark ±`eps`.
    """
    from matplotlib.scale import SymmetricalLogTransform

    from analysis.spectral.hessian import gaussian_density

    transform = SymmetricalLogTransform(10, linthresh, 1.0)

    def axis_coordinate(values):
        return transform.transform(np.asarray(values, dtype=float)) / linthresh

    names = sorted(densities)
    every_node = np.concatenate([n for switches in densities.values()
                                 for runs in switches.values() for n, _ in runs])
    low, high = axis_coordinate([min(every_node.min(), -linthresh),
                                 max(every_node.max(), linthresh)])
    span = high - low
    grid = np.linspace(low - 0.04 * span, high + 0.04 * span, num_points)
    sigma = span / 100  # SLQ gives tens of nodes a seed: wide enough to join them
    x = transform.inverted().transform(grid * linthresh)
    columns = min(3, len(names))
    rows = -(-len(names) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False,
                             sharex=True, sharey=True)
    peak = 0.0
    for ax, name in zip(axes.flat, names):
        switches = densities[name]
        colours = plt.cm.viridis(np.linspace(0, 0.9, len(switches)))
        for colour, (switch, runs) in zip(colours, sorted(switches.items())):
            nodes = np.concatenate([n for n, _ in runs])
            weights = np.concatenate([w / len(runs) for _, w in runs])
            _, density = gaussian_density(axis_coordinate(nodes), weights, grid, sigma=sigma)
            peak = max(peak, density.max())
            label = f"switch {switch}" if switch else "start"  # the monitor measures at 0 too
            ax.plot(x, density, color=colour, label=label)
        if eps is not None:
            for edge in (-eps, eps):
                ax.axvline(edge, color="grey", linestyle=":", linewidth=1)
        ax.set(title=name, xlabel="eigenvalue (symlog)", ylabel="density per axis unit")
        ax.legend(fontsize=7)
    ticks = _symlog_ticks(x[0], x[-1], linthresh)
    for ax in axes.flat:
        ax.set_xscale("symlog", linthresh=linthresh)
        ax.set_yscale("log")
        ax.set_xlim(x[0], x[-1])
        ax.set_ylim(peak * 1e-6, peak * 2)  # the outliers' mass is small but what matters
        ax.set_xticks(ticks)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())  # slow and crowded
        ax.tick_params(labelbottom=True, labelsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def _symlog_ticks(low: float, high: float, linthresh: float, per_side: int = 4) -> list[float]:
    """0 and ±linthresh·10^j, every so many decades that each side has at most `per_side`."""
    ticks = [0.0]
    for sign, end in ((-1, -low), (1, high)):
        decades = int(np.floor(np.log10(end / linthresh))) if end >= linthresh else -1
        step = max(1, -(-(decades + 1) // per_side))
        ticks += [sign * linthresh * 10.0 ** j for j in range(0, decades + 1, step)]
    return sorted(ticks)


def collapse_scatter(points: pd.DataFrame, prediction: pd.DataFrame, stem: Path,
                     metrics: dict[str, str], strategy_sets, reference: str,
                     pooled: str = "all") -> Path:
    """`collapse_figure`, saved."""
    return save(collapse_figure(points, prediction, metrics, strategy_sets, reference, pooled),
                stem)


def collapse_figure(points: pd.DataFrame, prediction: pd.DataFrame, metrics: dict[str, str],
                    strategy_sets, reference: str, pooled: str = "all"):
    """He et al.'s Fig. 5: a spectral number at a new task's start (x) against the plasticity
    ratio of that task (y), one point per run and switch, coloured per strategy set, one panel
    per metric (`metrics`: metric -> axis label). R² per set in the legend; pooled R² and its
    least-squares line in the title and as a grey line (`prediction`: spectral_correlation rows
    with a strategy_set column, `pooled` the pooled fit's)."""
    styles = set_styles(strategy_sets, reference)
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    fits = prediction.set_index(["metric", "strategy_set"])
    for ax, (metric, label) in zip(axes[0], metrics.items()):
        frame = points[points["metric"] == metric]
        for name, group in frame.groupby("strategy_set", sort=True):
            r_squared = fits["r_squared"].get((metric, name), np.nan)
            shown = "–" if np.isnan(r_squared) else f"{r_squared:.2f}"
            ax.scatter(group["value"], group["plasticity_ratio"], s=16, alpha=0.8,
                       color=styles.get(name, {}).get("color", "grey"),
                       label=f"{name} (R² {shown})")
        title = metric
        if (metric, pooled) in fits.index and not np.isnan(fits.loc[(metric, pooled),
                                                                    "r_squared"]):
            fit = fits.loc[(metric, pooled)]
            xs = np.linspace(frame["value"].min(), frame["value"].max(), 2)
            ax.plot(xs, fit["intercept"] + fit["slope"] * xs, color="grey", linewidth=1)
            title = f"{metric}: R² {fit['r_squared']:.2f} (n {int(fit['n'])})"
        ax.set(xlabel=label, ylabel="plasticity ratio of the task", title=title)
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig
