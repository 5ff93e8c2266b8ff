"""The `env:` section of a run's config: how every task's envs are built."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class EnvConfig:
    num_envs: int = 8
    backend: str = "auto"  # Atari: auto | gymnasium | ale_vector (C++ threads, default modes only)
    # Atari preprocessing (ALE v5 defaults, Machado et al. 2018)
    frame_skip: int = 4
    frame_stack: int = 4
    screen_size: int = 84
    sticky_actions: float = 0.25
    noop_max: int = 30
    fire_reset: bool = True
    episodic_life: bool = False
    clip_rewards: bool = True  # applied by the learner, so logged returns stay raw
    full_action_space: Optional[bool] = None  # None: full (18) only when the games differ
    max_episode_frames: int = 108_000
