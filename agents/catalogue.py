"""The agents pliable ships, registered by importing them; the runtime looks agents up here."""

from agents import dqn, ppo  # noqa: F401  (each registers itself)
from agents.base import AGENTS, Agent
from agents.errors import ConfigError


def agent_class(name: str) -> type[Agent]:
    if name not in AGENTS:
        raise ConfigError(f"agent: '{name}' is not one of {', '.join(sorted(AGENTS))}")
    return AGENTS[name]
