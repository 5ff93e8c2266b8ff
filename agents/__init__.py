import os

# Idle OpenMP threads sleep instead of spinning: a spinning torch thread takes the core that the
# envs (ale-py's threads, or another process on a shared machine) need; measured up to 6x slower
# training without this (README, Performance). libgomp reads it when torch loads, so it is set on
# importing `agents`, before any torch import of ours; an explicit setting of the user's wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
