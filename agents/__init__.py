import os

# An idle OpenMP thread of torch's spins for 300k rounds (libgomp's default) before it sleeps,
# taking the core that the envs (ale-py's threads) or another process on a shared machine need;
# OMP_WAIT_POLICY=PASSIVE (no spinning) fixes that but slows small ops on a quiet machine. 1k
# rounds did best on both (bench/levers.py threads; README, Performance). libgomp reads it when
# torch loads, so it is set on importing `agents`, before torch; a user's own setting wins.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")
