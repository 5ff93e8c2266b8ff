"""Strategies that re-draw weights: shrink-and-perturb, layer resets, ReDo, continual backprop,
self-normalised resets.

Resets touch only the online network: an agent with a target network (DQN) keeps syncing it on its
own schedule. All randomness comes from each strategy's own generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from agents.errors import ConfigError, at_least, between, factor, non_negative, probability
from agents.plasticity import ops
from agents.plasticity.base import Strategy, check_choice, register_strategy


@register_strategy("shrink_perturb")
class ShrinkPerturb(Strategy):
    """θ ← α·θ + σ·ε for every weight and bias, ε a fresh draw of the layer's initialiser;
    at task switches (α 0.5, σ 0.5) or after every gradient step (α 0.999999, σ 1e-6), the
    values of Juliani & Ash 2024 (awjuliani/deep-rl-plasticity: `sp-5-5` at each shift, `ssp-6`
    per step); alpha or sigma, when set, replaces that default. The switch setting used to be
    α 0.4, σ 0.1: that leaves the weights at ~0.41 of their initial scale, and a MiniGrid study's
    later tasks learned at 0.44 of a fresh agent (0.5/0.5: 1.29;
    docs/strategies.md)."""

    paper = "Ash & Adams 2020, On warm-starting neural network training (NeurIPS 2020); " \
            "defaults: Juliani & Ash 2024, A study of plasticity loss in on-policy deep RL"
    DEFAULTS = {"switch": (0.5, 0.5), "step": (0.999999, 1e-6)}
    state_attributes = ("applied",)

    @dataclass
    class Settings:
        when: str = "switch"  # switch | step
        # None: 0.5 at switches, 0.999999 per step
        alpha: Optional[float] = field(default=None, metadata=factor())
        # None: 0.5 at switches, 1e-6 per step
        sigma: Optional[float] = field(default=None, metadata=non_negative())

    def __init__(self, settings):
        super().__init__(settings)
        check_choice(self.name, "when", settings.when, tuple(self.DEFAULTS))
        alpha, sigma = self.DEFAULTS[settings.when]
        self.alpha = alpha if settings.alpha is None else settings.alpha
        self.sigma = sigma if settings.sigma is None else settings.sigma
        self.applied = 0

    def setup(self, ctx):
        self.generator = self.make_generator(ctx)

    @torch.no_grad()
    def shrink_perturb(self, network) -> None:
        for name, layer in network.weight_layers().items():
            fresh = ops.fresh_layer(network, name, layer, self.generator)
            for param, noise in ((layer.weight, fresh.weight), (layer.bias, fresh.bias)):
                param.mul_(self.alpha).add_(noise.to(param.device), alpha=self.sigma)
        self.applied += 1

    def after_optimizer_step(self, step):
        if self.settings.when == "step":
            self.shrink_perturb(step.ctx.network)

    def on_task_switch(self, ctx, prev, nxt):
        if self.settings.when == "switch":
            self.shrink_perturb(ctx.network)

    def metrics(self):
        return {"applied": self.applied}


@register_strategy("reset")
class Reset(Strategy):
    """Re-initialise chosen layers (hidden block names, "heads", or "all") at task switches and/or
    every every_steps gradient steps (0: never); their optimizer state is dropped too."""

    paper = "Nikishin et al. 2022, The primacy bias in deep reinforcement learning (ICML 2022)"
    state_attributes = ("resets",)

    @dataclass
    class Settings:
        layers: list[str] = field(default_factory=lambda: ["heads"])
        at_switch: bool = True
        # gradient steps between resets; 0: never
        every_steps: int = field(default=0, metadata=at_least(0))

    def __init__(self, settings):
        super().__init__(settings)
        self.resets = 0

    def configure_network(self, spec):
        allowed = [b.name for b in spec.blocks] + ["heads", "all"]
        for name in self.settings.layers:
            if name not in allowed:
                raise ConfigError(f"plasticity.reset.layers: unknown layer '{name}' "
                                  f"(allowed: {', '.join(allowed)})")

    def setup(self, ctx):
        self.generator = self.make_generator(ctx)
        heads = [f"heads.{name}" for name in ctx.network.heads]
        chosen = set(self.settings.layers)
        self.modules = [name for name in ctx.network.blocks if chosen & {name, "all"}]
        self.modules += heads if chosen & {"heads", "all"} else []

    def reset(self, ctx) -> None:
        ops.reset_modules(ctx.network, ctx.optimizer, self.modules, self.generator)
        self.resets += 1

    def after_optimizer_step(self, step):
        every = self.settings.every_steps
        if every and step.ctx.update_count % every == 0:
            self.reset(step.ctx)

    def on_task_switch(self, ctx, prev, nxt):
        if self.settings.at_switch:
            self.reset(ctx)

    def metrics(self):
        return {"resets": self.resets}


@register_strategy("redo")
class ReDo(Strategy):
    """Recycle dormant units: every every_steps gradient steps, score
    s_i = E|h_i| / mean_j E|h_j| on a batch of recent observations and re-initialise the units
    with s_i ≤ τ (fresh incoming weights, zero outgoing weights, Adam moments zeroed)."""

    paper = "Sokar et al. 2023, The dormant neuron phenomenon in deep reinforcement learning " \
            "(ICML 2023)"
    state_attributes = ("last", "total")

    @dataclass
    class Settings:
        threshold: float = field(default=0.025, metadata=non_negative())  # τ
        # gradient steps between checks
        every_steps: int = field(default=1000, metadata=at_least(1))
        batch_size: int = field(default=256, metadata=at_least(1))

    def setup(self, ctx):
        self.generator = self.make_generator(ctx)
        self.last = {"reset_units": 0, "dormant_fraction": 0.0}
        self.total = 0

    def after_optimizer_step(self, step):
        ctx = step.ctx
        if ctx.update_count % self.settings.every_steps == 0:
            self.recycle(ctx)

    @torch.no_grad()
    def recycle(self, ctx) -> None:
        network = ctx.network
        _, features = network(ctx.sample_obs(self.settings.batch_size, self.generator),
                              return_features=True)
        dormant_units = units = 0
        for name, block in network.blocks.items():
            scores = ops.unit_activity_scores(block, features[name])
            dormant = torch.nonzero(scores <= self.settings.threshold).flatten()
            ops.reinit_units(network, ctx.optimizer, name, dormant, self.generator)
            dormant_units, units = dormant_units + len(dormant), units + len(scores)
        self.last = {"reset_units": dormant_units, "dormant_fraction": dormant_units / units}
        self.total += dormant_units

    def metrics(self):
        return {**self.last, "total_reset_units": self.total}


@register_strategy("cbp")
class ContinualBackprop(Strategy):
    """Continual backprop (generate-and-test): per unit a running utility
    u ← η·u + (1−η)·|h|·Σ|w_out|; after every gradient step, replace the lowest-utility units
    older than the maturity threshold, replacement_rate × (number of mature units) per step on
    average (fractions accumulate)."""

    paper = "Dohare et al. 2024, Loss of plasticity in deep continual learning (Nature 632)"
    state_attributes = ("utility", "age", "pending", "replaced")

    @dataclass
    class Settings:
        replacement_rate: float = field(default=1e-4, metadata=probability())
        # gradient steps a unit must live before it can be replaced
        maturity: int = field(default=10000, metadata=at_least(0))
        # η of the utility's running average
        decay: float = field(default=0.99, metadata=probability())

    def setup(self, ctx):
        self.generator = self.make_generator(ctx)
        self.network = ctx.network
        device = ctx.device
        self.utility = {n: torch.zeros(b.spec.out, device=device) for n, b in
                        ctx.network.blocks.items()}
        # Step counters on the host: choosing the mature units every step must not wait on a GPU.
        self.age = {n: torch.zeros(b.spec.out, dtype=torch.long)
                    for n, b in ctx.network.blocks.items()}
        self.pending = dict.fromkeys(ctx.network.blocks, 0.0)
        self.replaced = 0

    @torch.no_grad()
    def after_optimizer_step(self, step):
        network, decay = self.network, self.settings.decay
        for name, block in network.blocks.items():
            features = step.features[name].detach()
            activity = features.abs().mean([d for d in range(features.dim()) if d != 1])
            contribution = ops.per_unit(block, activity * ops.outgoing_weight_mass(network, name))
            self.utility[name].mul_(decay).add_(contribution, alpha=1 - decay)
            self.age[name] += 1
            self.replace(step.ctx, name)

    def replace(self, ctx, name: str) -> None:
        mature = torch.nonzero(self.age[name] > self.settings.maturity).flatten()
        self.pending[name] += self.settings.replacement_rate * len(mature)
        count = int(self.pending[name])
        if count == 0:
            return
        self.pending[name] -= count
        utility = self.utility[name]
        lowest = mature[utility[mature.to(utility.device)].argsort()[:count].cpu()]
        ops.reinit_units(self.network, ctx.optimizer, name, lowest, self.generator)
        utility[lowest.to(utility.device)] = 0
        self.age[name][lowest] = 0
        self.replaced += len(lowest)

    def metrics(self):
        return {"replaced_units": self.replaced}


@register_strategy("self_normalized_resets")
class SelfNormalizedResets(Strategy):
    """Self-normalised resets (SNR): per hidden unit, a, the samples since it last fired (a
    nonzero output for some sample, at any position), and p, its firing rate up to then (samples
    it fired on / samples seen until its last firing); after every gradient step, reset each unit
    whose silence its own rate makes unlikely: the paper's hypothesis test rejects "it still
    fires at rate p" once a run of a silent samples has probability (1 − p)^a ≤ 1 − η, i.e.
    a ≥ log(1 − η) / log(1 − p), the η-percentile of the geometric inter-firing time. A unit that
    has not fired since its (re)initialisation, or whose percentile exceeds max_silence, is reset
    after max_silence silent samples. A reset is ops.reinit_units (fresh incoming weights, zero
    outgoing ones, Adam moments cleared) and starts the unit's counts afresh. η = 0.99 is the
    authors' code's default (ajozefiak/SelfNormalizedResets: threshold_percentile); max_silence
    = 1000 samples is the paper's Figure 1 rule for a dead neuron. Logs reset_units (in all) and
    silent_fraction: the share of units that fired on no sample of the last step's batch."""

    paper = "Farias & Jozefiak 2025, Self-normalized resets for plasticity in continual " \
            "learning (ICLR 2025, arXiv 2410.20098)"
    state_attributes = ("age", "fires", "span", "seen", "reset_units", "silent_fraction")

    @dataclass
    class Settings:
        # η, the rejection percentile of the test
        percentile: float = field(default=0.99, metadata=between(0, 1, low_open=True,
                                                                 high_open=True))
        # silent samples that reset a unit with no firing history (and cap every threshold)
        max_silence: int = field(default=1000, metadata=at_least(1))

    def setup(self, ctx):
        self.generator = self.make_generator(ctx)
        self.network = ctx.network
        counts = lambda: {name: torch.zeros(block.spec.out, dtype=torch.long,  # noqa: E731
                                            device=ctx.device)
                          for name, block in ctx.network.blocks.items()}
        # In samples, per unit: since the last firing, fired on, seen until the last firing, seen.
        self.age, self.fires, self.span, self.seen = counts(), counts(), counts(), counts()
        self.reset_units = 0
        self.silent_fraction = torch.zeros((), device=ctx.device)

    def thresholds(self, name: str) -> torch.Tensor:
        """Per unit, the silent samples that reject its firing rate: log(1 − η) / log(1 − p)."""
        fires, cap = self.fires[name], float(self.settings.max_silence)
        rate = fires / self.span[name].clamp(min=1)
        percentile = math.log1p(-self.settings.percentile) / torch.log1p(-rate)
        return torch.where(fires > 0, percentile, cap).clamp(max=cap)

    @torch.no_grad()
    def after_optimizer_step(self, step):
        masks, silent, units = {}, 0, 0
        for name, block in self.network.blocks.items():
            features = step.features[name].detach()
            batch = features.shape[0]
            fired = features.ne(0)
            if fired.dim() > 2:  # a conv unit fires on a sample if it fires at any position
                fired = fired.flatten(2).any(2)
            fired = fired.view(batch, block.out_multiplier, block.spec.out).any(1)  # both halves
            count = fired.sum(0)
            self.seen[name] += batch
            self.fires[name] += count
            self.span[name] = torch.where(count > 0, self.seen[name], self.span[name])
            self.age[name] = torch.where(count > 0, 0, self.age[name] + batch)
            masks[name] = (self.age[name] > 0) & (self.age[name] >= self.thresholds(name))
            silent, units = silent + (count == 0).sum(), units + len(count)
        self.silent_fraction = silent / units
        due = torch.stack([mask.sum() for mask in masks.values()]).tolist()  # one host sync
        for (name, mask), count in zip(masks.items(), due):
            if count:
                self.reset(step.ctx, name, torch.nonzero(mask).flatten())

    def reset(self, ctx, name: str, units: torch.Tensor) -> None:
        ops.reinit_units(self.network, ctx.optimizer, name, units.cpu(), self.generator)
        for counts in (self.age, self.fires, self.span, self.seen):
            counts[name][units] = 0
        self.reset_units += len(units)

    def metrics(self):
        return {"reset_units": self.reset_units, "silent_fraction": float(self.silent_fraction)}
