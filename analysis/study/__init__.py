"""Study tools on top of the runtime: benchmark grids (grid.py; where runs go: executors.py),
reading runs (results.py), robust statistics (aggregate.py), tables, figures and the report
(report.py), and `pliable spectrum` on saved checkpoints (spectrum.py)."""
