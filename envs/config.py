"""The `env:` section of a run's config: how every task's envs are built."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from agents.errors import at_least, positive, probability


@dataclass
class EnvConfig:
    num_envs: int = field(default=8, metadata=at_least(1))
    # processes that step the envs, the trainer's included (envs/processes.py): 1, the trainer
    # alone; None: the family's choice (Atari's gymnasium backend: one per 4 envs, at most one
    # per torch thread). ale_vector ignores it: its C++ threads step the envs
    workers: Optional[int] = field(default=None, metadata=at_least(1))
    backend: str = "auto"  # Atari: auto | gymnasium | ale_vector (C++ threads, default modes only)
    # Atari preprocessing (ALE v5 defaults, Machado et al. 2018)
    frame_skip: int = field(default=4, metadata=at_least(1))
    frame_stack: int = field(default=4, metadata=at_least(1))
    screen_size: int = field(default=84, metadata=at_least(1))
    sticky_actions: float = field(default=0.25, metadata=probability())
    noop_max: int = field(default=30, metadata=at_least(0))
    fire_reset: bool = True
    episodic_life: bool = False
    clip_rewards: bool = True  # Atari's sign(reward), applied by the learner: logged returns raw
    full_action_space: Optional[bool] = None  # None: full (18) only when the games differ
    max_episode_frames: int = field(default=108_000, metadata=at_least(0))
    # Running normalisation (as CleanRL's ppo_continuous_action; envs/normalize.py): one set of
    # statistics for the whole run, across task switches; logged returns stay raw
    normalize_obs: bool = False
    normalize_reward: bool = False  # scaled by the running std of a discounted return
    clip_obs: float = field(default=10.0, metadata=positive())  # |normalised obs| at most
    clip_reward: float = field(default=10.0, metadata=positive())  # |normalised reward| at most
    gamma_reward: float = field(default=0.99, metadata=probability())  # that return's discount
