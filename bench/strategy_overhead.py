"""What each plasticity strategy adds to a PPO gradient step, as a ratio to the plain step.

    .venv/bin/python bench/strategy_overhead.py            # MiniGrid CNN and Nature CNN
    .venv/bin/python bench/strategy_overhead.py minigrid   # one network only

A Learner with the strategy switched on (its defaults, except schedule-driven ones that act on
every step so their cost shows: redo every step, shrink_perturb per step) takes `steps` gradient
steps of a PPO-sized minibatch (256 observations) through `Learner.optimize`. One torch thread.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents.context import StepContext  # noqa: E402
from agents.learner import Learner  # noqa: E402
from agents.networks import NetworkConfig, make_spec  # noqa: E402
from agents.plasticity import STRATEGIES, build_strategies  # noqa: E402
from bench.timing import NETS, net_layout, seconds_per_call, step_loss  # noqa: E402

NETWORKS = {  # name: (network in bench.timing.NETS, gradient steps to time)
    "minigrid": ("MiniGrid CNN", 20),
    "nature": ("Nature CNN", 3),
}
EVERY_STEP = {"redo": {"every_steps": 1}, "shrink_perturb": {"when": "step"}}


def seconds_per_step(name: str | None, net: str, steps: int) -> float:
    torch.manual_seed(0)
    shape, high = NETS[net]
    space = gym.spaces.Box(0, high, shape, np.uint8)
    spec = make_spec(OmegaConf.structured(NetworkConfig), space, {"policy": 7, "value": 1},
                     {"policy": 0.01, "value": 1.0}, layout=net_layout(net))
    plasticity = {name: EVERY_STEP.get(name, {})} if name else {}
    learner = Learner(spec, build_strategies(OmegaConf.create(plasticity)),
                      dict(agent="ppo", seed=0), 2.5e-4, 1e-5, 0.5, torch.device("cpu"))
    obs = torch.randint(0, high + 1, (256, *shape), dtype=torch.uint8)
    learner.ctx.sample_obs = lambda n, generator: obs[:n]
    learner.setup()

    def step():
        outputs, features = learner.network(obs, return_features=True)
        learner.optimize(StepContext(learner.ctx, obs, step_loss(outputs), features))

    # its warm-up call is also the step C-CHAIN needs before it has a previous network
    return seconds_per_call(step, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # no `choices`: Python 3.11's argparse rejects an empty nargs="*" list against them
    parser.add_argument("networks", nargs="*", metavar="network",
                        help=f"any of {', '.join(NETWORKS)} (default all)")
    args = parser.parse_args()
    unknown = set(args.networks) - set(NETWORKS)
    if unknown:
        parser.error(f"unknown network(s) {', '.join(sorted(unknown))}")
    torch.set_num_threads(1)

    for network in args.networks or list(NETWORKS):
        net, steps = NETWORKS[network]
        base = seconds_per_step(None, net, steps)
        print(f"\n{network}: plain PPO step {1000 * base:.1f} ms (batch 256, {steps} steps)")
        for name in sorted(STRATEGIES):
            seconds = seconds_per_step(name, net, steps)
            print(f"  {name:18s} {1000 * seconds:8.1f} ms  x{seconds / base:5.2f}", flush=True)


if __name__ == "__main__":
    main()
