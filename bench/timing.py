"""What the bench scripts share: timing variants against each other, and the networks' input
shapes and loss for a PPO-shaped gradient step.

No torch import here: scripts that must set thread variables before torch loads (scaling.py) can
import this module at any point.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

# name: (observation shape, observation high) of the two convolutional networks we ship
NETS = {"Nature CNN": ((4, 84, 84), 255), "MiniGrid CNN": ((7, 7, 3), 10)}


def net_layout(name: str):
    """The observation layout of a network of NETS: its env family's (imported here, late)."""
    from envs import atari, minigrid

    return {"Nature CNN": atari.LAYOUT, "MiniGrid CNN": minigrid.LAYOUT}[name]


def step_loss(outputs: dict):
    """A loss of both heads, shaped like PPO's, for timing a gradient step."""
    return (outputs["value"] - 1).pow(2).mean() - outputs["policy"].log_softmax(-1).mean()


def compare(variants: dict[str, Callable], rounds: int, calls: int = 1,
            per_unit: bool = False) -> dict[str, float]:
    """Median seconds per call of each variant; the variants alternate within every round, so load
    from other users falls on all alike. With `per_unit`, each call returns how much work it did
    (env steps, say) and the medians are seconds per unit of that work."""
    for fn in variants.values():
        fn()  # warm-up
    seconds = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            if per_unit:
                units = sum(fn() for _ in range(calls))
            else:
                units = calls
                for _ in range(calls):
                    fn()
            seconds[name].append((time.perf_counter() - start) / units)
    return {name: statistics.median(values) for name, values in seconds.items()}


def seconds_per_call(fn: Callable, calls: int) -> float:
    """Mean seconds of `calls` calls of one function, after a warm-up call."""
    return compare({"fn": fn}, 1, calls)["fn"]
