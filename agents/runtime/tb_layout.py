"""The Custom Scalars layout written into every run: TensorBoard opens on the question (returns
per task, the monitor's pre vs post numbers, feature ranks and dormant units per layer, losses).

Charts name tags by regex (TensorBoard matches them from the tag's start), so one layout fits any
tasks, layers and agent. It is written once, when the run starts (a resume keeps it): the plugin
reads a run's first layout only.
"""

from __future__ import annotations

import re

from analysis.monitor.measure import DORMANT_TAUS
from analysis.monitor.outputs import SUMMARY

# The monitor's scalars charted pre vs post, beyond its console summary's.
SPECTRUM_EXTRA = ("loss", "lambda_min", "negative_fraction")
# The monitor's feature metrics per layer (`plasticity/<metric>/<layer>`): chart title, metric.
FEATURES = (("effective rank", "erank"), ("srank", "srank"), ("stable rank", "stable_rank"),
            ("active fraction", "active_fraction"))


def multiline(*regexes: str) -> list:
    return ["Multiline", list(regexes)]


def custom_scalars_layout(cfg) -> dict:
    """{category: {chart: ["Multiline", [tag regex, ...]]}}, as SummaryWriter.add_custom_scalars
    takes it; only charts that the run's settings fill."""
    layout = {
        "returns": {"episodic return per task": multiline(r"^charts/episodic_return$",
                                                          r"^task/.+/episodic_return$")},
        "losses": {"losses": multiline(r"^losses/.*loss$"),
                   "other training statistics": multiline(r"^losses/(?!.*loss$)")},
    }
    monitor = cfg.monitor
    if not monitor.enabled:
        return layout
    metrics = [*(name for _, name, _ in SUMMARY), *SPECTRUM_EXTRA]
    for name, on in (("ggn/lambda_max", monitor.ggn), ("kfac/lambda_max", monitor.kfac)):
        if on:
            metrics.append(name)
    spectrum = {name: multiline(rf"^spectrum/(pre|post)/{re.escape(name)}$") for name in metrics}
    if monitor.he2025_eps:
        spectrum["eps_rank_he2025 (each ε)"] = multiline(r"^spectrum/(pre|post)/eps_rank_he2025/")
    layout["spectrum: pre vs post switch"] = spectrum
    if monitor.metrics_every:
        features = {title: multiline(rf"^plasticity/{name}/") for title, name in FEATURES}
        for tau in DORMANT_TAUS:
            features[f"dormant fraction (τ={tau:g})"] = multiline(
                rf"^plasticity/{re.escape(f'dormant_ratio_{tau:g}')}/")
        layout["features per layer"] = features
    return layout
