"""Where the spectral monitor's measurements go: `.npz` files, TensorBoard scalars, histograms and
a density plot, and the one-line console summary per task boundary."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from analysis.monitor.measure import Measurement
from analysis.spectral.hessian import density_grid, gaussian_density

# What the console summary shows: (label, scalar name, format).
SUMMARY = (("λmax", "lambda_max", ".3g"), ("trace", "trace", ".3g"),
           ("ε-rank(rel)", "eps_rank_rel", ".0f"), ("eff-rank", "effective_rank", ".3g"),
           ("τ-train", "tau_trainability", ".2g"))
HISTOGRAMS = {"eigenvalues": "top_eigenvalues", "ggn_eigenvalues": "ggn_top_eigenvalues",
              "kfac_eigenvalues": "kfac_top_eigenvalues"}
DENSITY_BINS = 64
TOP_K_KEYS = ("eigenvalues", "ggn_eigenvalues", "kfac_eigenvalues")  # the figure's right panel


def save_npz(path: Path, measurement: Measurement, **meta) -> None:
    """Arrays (eigenvalues, density_nodes, density_weights, ...), every scalar under its name
    and the metadata (step, phase, task, ...) in one file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    values = {**measurement.arrays, **measurement.scalars, "seconds": measurement.seconds}
    # Written aside and renamed: a full disk leaves the old file or none, never half of one.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as file:
            np.savez(file, **{k: np.asarray(v) for k, v in {**values, **meta}.items()})
        os.replace(tmp, path)
    except OSError as exc:  # named after the file the run wanted, not the temporary one
        tmp.unlink(missing_ok=True)
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def log_measurement(writer, phase: str, measurement: Measurement, step: int) -> None:
    """`spectrum/<phase>/<scalar>`, top-k histograms and the SLQ density as a histogram."""
    prefix = f"spectrum/{phase}"
    for name, value in measurement.scalars.items():
        writer.add_scalar(f"{prefix}/{name}", value, step)
    writer.add_scalar(f"{prefix}/seconds", measurement.seconds, step)
    for key, tag in HISTOGRAMS.items():
        if key in measurement.arrays:
            writer.add_histogram(f"{prefix}/{tag}", measurement.arrays[key], step)
    _log_density_histogram(writer, f"{prefix}/density", measurement, step)


def _log_density_histogram(writer, tag: str, measurement: Measurement, step: int) -> None:
    """SLQ nodes binned with their weights scaled to eigenvalue counts (weight × #params)."""
    nodes = measurement.arrays["density_nodes"]
    counts = measurement.arrays["density_weights"] * float(measurement.arrays["num_params"])
    bucket_counts, edges = np.histogram(nodes, bins=DENSITY_BINS, weights=counts)
    writer.add_histogram_raw(
        tag, min=float(nodes.min()), max=float(nodes.max()), num=float(counts.sum()),
        sum=float(counts @ nodes), sum_squares=float(counts @ nodes**2),
        bucket_limits=edges[1:].tolist(), bucket_counts=bucket_counts.tolist(), global_step=step)


def density_figure(title: str, measurements: dict[str, Measurement], kernel: str = "relative"):
    """Left: the smoothed SLQ densities (log scale), smoothed by `density_grid`'s ``kernel``
    (`monitor.density_kernel`: ours, or He et al.'s on 10,000 points); right: top-k of the
    Hessian, Gauss-Newton and KFAC, one colour per phase."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    figure = Figure(figsize=(10, 3.6), dpi=80)
    # Fixed margins: a layout engine would take three quarters of the rendering time.
    density_axes, top_axes = figure.subplots(1, 2, gridspec_kw=dict(
        left=0.08, right=0.98, bottom=0.14, top=0.86, wspace=0.25))
    nodes = np.concatenate([m.arrays["density_nodes"] for m in measurements.values()])
    grid, sigma = density_grid(nodes, kernel=kernel)  # one grid and width for both phases
    peak = 0.0
    for (phase, m), colour in zip(measurements.items(), ("tab:blue", "tab:orange"), strict=False):
        _, density = gaussian_density(m.arrays["density_nodes"], m.arrays["density_weights"],
                                      grid, sigma=sigma)
        density_axes.plot(grid, density, color=colour, label=phase)
        peak = max(peak, float(density.max()))
        for key, style in zip(TOP_K_KEYS, ("-o", "--", ":"), strict=True):
            if key in m.arrays:
                label = f"{phase} {key.removesuffix('eigenvalues').rstrip('_') or 'hessian'}"
                top_axes.plot(np.arange(1, len(m.arrays[key]) + 1), m.arrays[key], style,
                              color=colour, markersize=3, label=label)
    density_axes.set(yscale="log", xlabel="eigenvalue",
                     ylabel=f"density (SLQ, {kernel} kernel)",
                     ylim=(1e-6 * peak, 2 * peak))
    top = [m.arrays[k] for m in measurements.values() for k in TOP_K_KEYS if k in m.arrays]
    positive = any((values > 0).any() for values in top)  # else a log axis has nothing to show
    top_axes.set(yscale="log" if positive else "linear", xlabel="index",
                 ylabel="eigenvalue (log: positive ones)" if positive else "eigenvalue",
                 title="top-k")
    for axes in (density_axes, top_axes):
        axes.legend(fontsize="small", loc="upper right")  # "best" costs a search
    figure.suptitle(title)
    return figure


def summary_line(step: int, label: str, measurements: dict[str, Measurement]) -> str:
    """E.g. `spectrum @ 200,000 Empty → DoorKey (pre → post) | λmax 3.2 → 10.9 | ... | 2.4 s`."""
    phases = " → ".join(measurements)
    parts = [f"spectrum @ {step:,} {label} ({phases})"]
    for text, name, fmt in SUMMARY:
        parts.append(f"{text} " + " → ".join(format(m.scalars[name], fmt)
                                            for m in measurements.values()))
    parts.append(f"{sum(m.seconds for m in measurements.values()):.1f} s")
    return " | ".join(parts)
