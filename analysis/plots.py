"""The report's figures, from the tidy table and the statistics of `analysis.aggregate`.

Each function draws one figure, saves it as PNG and PDF next to each other and returns the PNG's
path. One axes per sequence (a bench usually has one); strategy sets keep their colour across
figures; the fresh-agent reference is dashed.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.aggregate import RETURN_METRIC  # noqa: E402

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


def switch_densities(densities: dict[str, dict[int, list]], stem: Path) -> Path:
    """Hessian eigenvalue density after successive switches, one panel per strategy set.

    `densities`: strategy set -> switch -> [(nodes, weights) of each seed]. The seeds' densities
    are averaged (their nodes pooled, weights shared out) and broadened with a Gaussian kernel;
    later switches are drawn in lighter colours.
    """
    from analysis.hessian import density_grid, gaussian_density

    names = sorted(densities)
    columns = min(3, len(names))
    rows = -(-len(names) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        switches = densities[name]
        every_node = np.concatenate([n for runs in switches.values() for n, _ in runs])
        grid, sigma = density_grid(every_node, 600)  # one grid and width for every switch
        colours = plt.cm.viridis(np.linspace(0, 0.9, len(switches)))
        peak = 0.0
        for colour, (switch, runs) in zip(colours, sorted(switches.items())):
            nodes = np.concatenate([n for n, _ in runs])
            weights = np.concatenate([w / len(runs) for _, w in runs])
            _, density = gaussian_density(nodes, weights, grid, sigma=sigma)
            peak = max(peak, density.max())
            label = f"switch {switch}" if switch else "start"  # the monitor measures at 0 too
            ax.semilogy(grid, density, color=colour, label=label)
        ax.set_ylim(peak * 1e-6, peak * 2)  # the outliers' mass is small but what matters
        ax.set(title=name, xlabel="eigenvalue", ylabel="density")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.tight_layout()
    return save(fig, stem)
