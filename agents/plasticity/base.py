"""The strategy interface, its registry, and the stack that runs strategies in order.

Every hook is a no-op by default, so a strategy overrides only what its mechanism needs.
Each strategy declares a settings dataclass; OmegaConf validates user settings against it
(catalogue.py's `build_strategies`). This module imports no strategy family: they import it.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable
from typing import Any, Optional

import torch

from agents.context import StepContext, TrainContext
from agents.errors import ConfigError

OptimizerFactory = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]
Backward = Callable[[StepContext], dict[str, torch.Tensor]]  # the learner's, for `gradient`
STRATEGIES: dict[str, type[Strategy]] = {}


@dataclasses.dataclass
class NoSettings:
    pass


class Strategy:
    name: str = ""
    Settings: type = NoSettings
    paper: str = ""
    replaces_optimizer = False  # two strategies that both replace the optimizer cannot combine
    wraps_gradient = False  # nor two that both compute the gradient their own way (`gradient`)
    # name of a strategy this one cannot combine with -> why (one line): refused at build time
    incompatible: dict[str, str] = {}
    order = 50  # lower runs first in every hook

    def __init__(self, settings):
        self.settings = settings

    def make_generator(self, ctx: TrainContext) -> torch.Generator:
        """This strategy's own RNG (CPU), seeded from the run's seed and the strategy's name, so
        a run is reproducible whatever else is switched on."""
        return torch.Generator().manual_seed(zlib.crc32(f"{ctx.seed}/{self.name}".encode()))

    def configure_network(self, spec) -> None:
        """Edit the NetworkSpec before the network is built."""

    def configure_optimizer(self, factory: OptimizerFactory) -> OptimizerFactory:
        return factory

    def setup(self, ctx: TrainContext) -> None:
        """Once, after the network and optimizer exist."""

    def loss_penalty(self, step: StepContext) -> Optional[torch.Tensor]:
        return None

    def gradient(self, step: StepContext, backward: Backward) -> dict[str, torch.Tensor]:
        """Leave in .grad the gradient that clipping and the optimizer step with, and return
        the penalties to report; `backward(step)` writes ∇(step.loss + penalties) at the current
        parameters and returns the penalties. Only a `wraps_gradient` strategy overrides this,
        and it may call `backward` again (on `step.reevaluate()`) after moving the parameters,
        as long as it puts them back."""
        return backward(step)

    def after_optimizer_step(self, step: StepContext) -> None:
        pass

    def after_update(self, ctx: TrainContext) -> None:
        """After each agent iteration (PPO: rollout + epochs; DQN: one train step)."""

    def on_task_switch(self, ctx: TrainContext, prev, nxt) -> None:
        """Between the old task's end and the new task's start (prev/nxt are Segments)."""

    def metrics(self) -> dict[str, float]:
        return {}

    # Attributes a resumed run needs beyond the network and optimizer (counters, snapshots, what
    # `metrics` reports); the generator is saved too when the strategy made one.
    state_attributes: tuple[str, ...] = ()

    def state_dict(self) -> dict[str, Any]:
        """Tensors, numbers, strings and lists/dicts of them: checkpoints load weights_only."""
        state = {name: getattr(self, name) for name in self.state_attributes}
        if hasattr(self, "generator"):
            state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in self.state_attributes:
            setattr(self, name, state[name])
        if hasattr(self, "generator"):
            self.generator.set_state(state["generator"].cpu())  # loaded onto the run's device


def check_choice(strategy: str, key: str, value, allowed) -> None:
    """A setting restricted to a few values; anything else is a one-line ConfigError."""
    if value not in allowed:
        raise ConfigError(f"plasticity.{strategy}.{key}: {value!r} is not one of "
                          f"{', '.join(map(str, allowed))}")


def check_mode_settings(strategy: str, settings, switch: str,
                        groups: dict[str, tuple[str, ...]]) -> None:
    """`settings.<switch>` picks one of `groups` (mode -> the settings only it reads); a setting
    of another mode changed from its default is a one-line ConfigError naming it, so that no
    value the user set is silently ignored."""
    chosen = getattr(settings, switch)
    check_choice(strategy, switch, chosen, tuple(groups))
    defaults = type(settings)()
    for mode, names in groups.items():
        changed = [n for n in names if mode != chosen and n not in groups[chosen]
                   and getattr(settings, n) != getattr(defaults, n)]
        if changed:
            own = ", ".join(groups[chosen]) or "none"
            raise ConfigError(f"plasticity.{strategy}.{changed[0]}: applies to {switch} {mode} "
                              f"only ({switch} is {chosen}; its settings: {own})")


def combination_error(strategies) -> Optional[str]:
    """Why `strategies` (instances or classes) cannot run together, in one line, or None: two
    that replace the optimizer, two that wrap the gradient, or a pair one of them declares
    `incompatible`."""
    for flag, what in (("replaces_optimizer", "replace the optimizer"),
                       ("wraps_gradient", "compute the gradient their own way")):
        clashing = [s.name for s in strategies if getattr(s, flag)]
        if len(clashing) > 1:
            return f"strategies {', '.join(clashing)} both {what}: switch one of them off"
    names = {s.name for s in strategies}
    for s in strategies:
        for other, why in s.incompatible.items():
            if other in names:
                return f"strategies {s.name} and {other} cannot combine ({why}): switch one off"
    return None


def register_strategy(name: str):
    def decorate(cls):
        cls.name = name
        STRATEGIES[name] = cls
        return cls
    return decorate


class StrategyStack:
    """Strategies in a defined order; each hook calls all of them."""

    def __init__(self, strategies: list[Strategy]):
        self.strategies = sorted(strategies, key=lambda s: (s.order, s.name))
        refusal = combination_error(self.strategies)
        if refusal:
            raise ConfigError(refusal)
        self.wrapper = next((s for s in self.strategies if s.wraps_gradient), None)

    @property
    def names(self) -> list[str]:
        return sorted(s.name for s in self.strategies)

    def configure_network(self, spec) -> None:
        for s in self.strategies:
            s.configure_network(spec)

    def configure_optimizer(self, factory: OptimizerFactory) -> OptimizerFactory:
        for s in self.strategies:
            factory = s.configure_optimizer(factory)
        return factory

    def setup(self, ctx: TrainContext) -> None:
        for s in self.strategies:
            s.setup(ctx)

    def loss_penalty(self, step: StepContext) -> dict[str, torch.Tensor]:
        penalties = {}
        for s in self.strategies:
            penalty = s.loss_penalty(step)
            if penalty is not None:
                penalties[s.name] = penalty
        return penalties

    def gradient(self, step: StepContext, backward: Backward) -> dict[str, torch.Tensor]:
        """The gradient-wrapping strategy's `gradient` (at most one), else plain `backward`."""
        return self.wrapper.gradient(step, backward) if self.wrapper else backward(step)

    def after_optimizer_step(self, step: StepContext) -> None:
        for s in self.strategies:
            s.after_optimizer_step(step)

    def after_update(self, ctx: TrainContext) -> None:
        for s in self.strategies:
            s.after_update(ctx)

    def on_task_switch(self, ctx: TrainContext, prev, nxt) -> None:
        for s in self.strategies:
            s.on_task_switch(ctx, prev, nxt)

    def metrics(self) -> dict[str, float]:
        return {f"{s.name}/{k}": v for s in self.strategies for k, v in s.metrics().items()}

    def state_dict(self) -> dict[str, Any]:
        return {s.name: s.state_dict() for s in self.strategies}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for s in self.strategies:
            s.load_state_dict(state.get(s.name, {}))
