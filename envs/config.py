"""The `env:` section of a run's config: how every task's envs are built."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from agents.errors import at_least, probability


@dataclass
class EnvConfig:
    num_envs: int = field(default=8, metadata=at_least(1))
    backend: str = "auto"  # Atari: auto | gymnasium | ale_vector (C++ threads, default modes only)
    # Atari preprocessing (ALE v5 defaults, Machado et al. 2018)
    frame_skip: int = field(default=4, metadata=at_least(1))
    frame_stack: int = field(default=4, metadata=at_least(1))
    screen_size: int = field(default=84, metadata=at_least(1))
    sticky_actions: float = field(default=0.25, metadata=probability())
    noop_max: int = field(default=30, metadata=at_least(0))
    fire_reset: bool = True
    episodic_life: bool = False
    clip_rewards: bool = True  # applied by the learner, so logged returns stay raw
    full_action_space: Optional[bool] = None  # None: full (18) only when the games differ
    max_episode_frames: int = field(default=108_000, metadata=at_least(0))
