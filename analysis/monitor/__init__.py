"""The spectral monitor: an observer of a run measuring the Hessian spectrum of the agent's own
loss at every task boundary (observer.py), what it computes (measure.py), where results go
(outputs.py), and its config section (config.py)."""
