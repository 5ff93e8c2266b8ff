"""OpenMP's idle-thread policy, set where a process that trains starts (train.py's entry points,
the bench scripts), before torch loads: libgomp reads it once, at load time."""

import os


def spin_briefly() -> None:
    """An idle OpenMP thread of torch's spins for 300k rounds (libgomp's default) before it
    sleeps, taking the core that the envs (ale-py's threads) or another process on a shared
    machine need; OMP_WAIT_POLICY=PASSIVE (no spinning) fixes that but slows small ops on a quiet
    machine. 1k rounds did best on both (bench/levers.py threads; docs/performance.md). A user's
    own setting wins. Call it before the first `import torch`."""
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")
