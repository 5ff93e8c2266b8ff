"""Environments: task sequences, the env families that check and build their envs, and the
factory that builds a sequence's. Importing the package registers the built-in families."""

# In this order: the order unknown-env errors list the families' prefixes in.
# isort: off
from envs import minigrid  # noqa: F401
from envs import atari  # noqa: F401
from envs import mujoco  # noqa: F401
from envs import gymnasium_envs  # noqa: F401
# isort: on
