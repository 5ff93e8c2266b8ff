"""Plasticity strategies: the interface and registry (base.py), one module per family, each
registering its strategies on import, the catalogue that imports them all and builds a config's
stack (catalogue.py), and `pliable strategies`' listing (listing.py)."""

from agents.plasticity.catalogue import STRATEGIES, build_strategies, strategy_set_name
from agents.plasticity.listing import (
    describe_strategies,
    strategies_markdown,
    with_table,
)

__all__ = ["STRATEGIES", "build_strategies", "describe_strategies", "strategies_markdown",
           "strategy_set_name", "with_table"]
