"""Plasticity strategies: one module per family, each registering its strategies on import."""

from __future__ import annotations

import dataclasses

from agents.plasticity import (  # noqa: F401
    architecture,
    churn,
    isometry,
    optimizers,
    regularizers,
    resets,
)
from agents.plasticity.base import STRATEGIES

USAGE = """\
Switch strategies on in a config's `plasticity:` mapping or on the command line:
  python train.py plasticity.redo={} plasticity.l2.coef=1e-4
"""


def settings_lines(settings_cls, prefix: str = "") -> list[str]:
    """`key: type = default` for every setting (nested settings as dotted keys)."""
    lines = []
    for f in dataclasses.fields(settings_cls):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            lines += settings_lines(type(default), f"{prefix}{f.name}.")
        else:
            kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", f.type)
            lines.append(f"{prefix}{f.name}: {kind} = {default!r}")
    return lines


def describe_strategies() -> str:
    """`pliable strategies`: every strategy, what it does, its settings and defaults, its paper."""
    blocks = []
    for name in sorted(STRATEGIES):
        cls = STRATEGIES[name]
        settings = [f"plasticity.{name}.{line}" for line in settings_lines(cls.Settings)]
        lines = [name, " ".join((cls.__doc__ or "").split()), *(settings or ["(no settings)"]),
                 f"paper: {cls.paper}"]
        blocks.append("\n    ".join(lines))
    return USAGE + "\n" + "\n\n".join(blocks) + "\n"
