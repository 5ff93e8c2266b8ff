"""The strategies pliable ships, registered by importing their family modules, and the stack a
config's `plasticity:` mapping builds from them. base.py holds the interface and the registry and
imports no family, so a family can import base.py without a cycle."""

from __future__ import annotations

import dataclasses

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from agents.errors import ConfigError, check_ranges
from agents.plasticity import (  # noqa: F401  (each registers its strategies)
    architecture,
    churn,
    clipping,
    hare_tortoise,
    injection,
    isometry,
    optimizers,
    regularizers,
    resets,
    sharpness,
)
from agents.plasticity.base import STRATEGIES, StrategyStack


def build_strategies(plasticity_cfg) -> StrategyStack:
    """From the config's `plasticity:` mapping (name -> settings; null switches one off)."""
    strategies = []
    items = plasticity_cfg.items() if plasticity_cfg is not None else []
    for name, settings in items:
        if settings is None:
            continue
        if name not in STRATEGIES:
            raise ConfigError(f"plasticity.{name}: unknown strategy '{name}' "
                              f"(known: {', '.join(sorted(STRATEGIES))})")
        cls = STRATEGIES[name]
        try:
            schema = OmegaConf.structured(cls.Settings)
            if isinstance(settings, (DictConfig, dict)):
                merged = OmegaConf.merge(schema, settings)
            else:
                raise ConfigError(f"plasticity.{name}: expected a mapping of settings or {{}}, "
                                  f"got {settings!r}")
        except OmegaConfBaseException as exc:
            fields = ", ".join(f.name for f in dataclasses.fields(cls.Settings)) or "none"
            key = f"plasticity.{name}" + (f".{exc.full_key}" if exc.full_key else "")
            detail = ("unknown setting" if isinstance(exc, ConfigKeyError)
                      else str(exc).splitlines()[0])
            raise ConfigError(f"{key}: {detail} (settings: {fields})") from None
        settings = OmegaConf.to_object(merged)
        check_ranges(settings, cls.Settings, f"plasticity.{name}")
        strategies.append(cls(settings))
    return StrategyStack(strategies)


def strategy_set_name(plasticity_cfg) -> str:
    """The sorted names of the active strategies, joined with '+' ('none' if empty)."""
    names = sorted(k for k, v in (plasticity_cfg or {}).items() if v is not None)
    return "+".join(names) if names else "none"
