"""Gaussian-policy PPO on MuJoCo Ant: training throughput against the env-only rate of the same
envs, and the cost of one gradient step at He et al.'s minibatch of 16, as ratios measured in one
run.

    .venv/bin/python bench/continuous.py                 # ~3 min on 2 cores
    .venv/bin/python bench/continuous.py --rounds 7      # steadier

Three measurements, each alternating its variants round after round (bench/timing.compare), so
that load from other users falls on all of them alike:
1. env steps/s: the config's first vector env alone (random actions, as training builds it)
   against pliable's PPO training on it (rollout and update; configs/slippery_ant_he2025.yaml:
   1 env, 2048 steps, 128 minibatches of 16, 10 epochs: 1280 gradient steps per 2048 env steps).
2. µs per gradient step at minibatch 16 through PPO's own update (`PPO.update`: minibatch
   indexing, loss, backward, Adam, statistics), with Adam fused (ours), foreach and per-tensor.
3. PPO.update against a bare loop of the same loss (forward, loss, backward, Adam: no strategy
   hooks, no statistics): what the shared update path costs at this size.
4. where a gradient step's time goes: the forward and loss, the backward, the Adam step.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agents.runtime.process import set_process_defaults  # noqa: E402

set_process_defaults()  # as in training: before torch loads

import numpy as np  # noqa: E402
import torch  # noqa: E402

from agents.runtime.config import load_config  # noqa: E402
from agents.runtime.trainer import Trainer, segment_seed  # noqa: E402
from bench.timing import compare  # noqa: E402

CONFIG = "slippery_ant_he2025.yaml"
OVERRIDES = ["monitor.enabled=false", "torch_threads=1"]


def build(overrides=()):
    cfg = load_config(CONFIG, [*OVERRIDES, *overrides])
    trainer = Trainer(cfg)
    segment = trainer.sequence.segment(0)
    envs = trainer.make_envs(segment)
    trainer.agent.begin_task(envs, segment_seed(cfg.seed, 0))
    return trainer, envs


def env_only(envs, steps: int = 2048):
    rng = np.random.default_rng(0)
    shape = (envs.num_envs, *envs.single_action_space.shape)
    envs.reset(seed=0)

    def chunk() -> int:
        for _ in range(steps // envs.num_envs):
            envs.step(rng.uniform(-1, 1, shape).astype(np.float32))
        return steps
    return chunk


def training(trainer, envs):
    agent = trainer.agent

    def chunk() -> int:
        before = agent.ctx.global_step
        agent.train_iteration(envs, 10**12, trainer.generator)
        return agent.ctx.global_step - before
    return chunk


def with_adam(agent, **kind):
    """The agent's optimizer rebuilt as Adam of the same settings with `kind` (fused/foreach)."""
    learner = agent.learner
    group = learner.optimizer.param_groups[0]
    learner.optimizer = torch.optim.Adam(
        list(agent.network.parameters()), lr=group["lr"], betas=group["betas"],
        eps=group["eps"], **kind)
    learner.ctx.optimizer = learner.optimizer


def gradient_steps(agent) -> int:
    return agent.cfg.update_epochs * agent.cfg.num_minibatches


def bare_loop(agent, batch, generator):
    """One epoch of minibatch steps on PPO's loss with nothing else around them."""
    size = len(batch) // agent.cfg.num_minibatches
    optimizer = agent.learner.optimizer

    def epoch():
        for idx in torch.randperm(len(batch), generator=generator).split(size):
            loss = agent.loss(batch.index(idx), agent.learner.train_forward)[0]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return epoch


def parts(agent, batch, generator, steps: int = 128):
    """Seconds per gradient step in the forward+loss, the backward and the optimizer step."""
    size = len(batch) // agent.cfg.num_minibatches
    optimizer = agent.learner.optimizer
    totals = {"forward + loss": 0.0, "backward": 0.0, "Adam step": 0.0}
    order = torch.randperm(len(batch), generator=generator)[: steps * size]
    for idx in order.split(size):
        mb = batch.index(idx)
        t0 = time.perf_counter()
        loss = agent.loss(mb, agent.learner.train_forward)[0]
        t1 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        optimizer.step()
        t3 = time.perf_counter()
        for key, seconds in zip(totals, (t1 - t0, t2 - t1, t3 - t2)):
            totals[key] += seconds
    return {key: seconds / steps for key, seconds in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)

    trainer, envs = build()
    probe_trainer, probe_envs = build()
    rates = compare({"env only": env_only(probe_envs), "PPO training": training(trainer, envs)},
                    args.rounds, per_unit=True)
    env_sps, ppo_sps = 1 / rates["env only"], 1 / rates["PPO training"]
    print(f"Ant-v5, 1 env ({CONFIG}): env only {env_sps:,.0f} steps/s, PPO training "
          f"{ppo_sps:,.0f} steps/s: training runs at {ppo_sps / env_sps:.2f} of the env-only rate")

    agent = trainer.agent
    batch = agent.last_batch
    generator = torch.Generator().manual_seed(0)
    def update(kind):
        with_adam(agent, **kind)
        agent.update(batch, generator)  # PPO's own update: every epoch and minibatch

    variants = {name: functools.partial(update, kind) for name, kind in (
        ("fused (ours)", {"fused": True}), ("foreach", {"foreach": True}),
        ("per-tensor", {"foreach": False}))}
    seconds = compare(variants, args.rounds)
    base, steps = seconds["fused (ours)"], gradient_steps(agent)
    print(f"gradient step at minibatch {len(batch) // agent.cfg.num_minibatches} "
          f"(PPO.update, {steps} steps a call), Adam:")
    for name, value in seconds.items():
        print(f"  {name:<13} {value / steps * 1e6:7.0f} µs/step  ({value / base:.2f}x ours)")
    with_adam(agent, fused=True)
    epochs = agent.cfg.update_epochs
    loops = compare({"PPO.update": lambda: agent.update(batch, generator),
                     "bare loop": lambda: [bare_loop(agent, batch, generator)()
                                           for _ in range(epochs)]}, args.rounds)
    print(f"PPO.update costs {loops['PPO.update'] / loops['bare loop']:.2f}x a bare loop of the "
          f"same loss ({loops['bare loop'] / steps * 1e6:.0f} µs/step)")
    split = parts(agent, batch, generator)
    total = sum(split.values())
    print("where a fused step's time goes: " + ", ".join(
        f"{key} {value * 1e6:.0f} µs ({value / total:.0%})" for key, value in split.items()))
    envs.close()
    probe_envs.close()


if __name__ == "__main__":
    main()
