"""Measurement and study: spectral math (spectral/, a leaf every layer may import), the live
spectral monitor (monitor/), and the study tools: benchmark grids, reports, plots (study/)."""
