"""What an agent may know of a sequence's envs: their spaces, how their observations are laid
out, and the per-family settings a learner applies (reward transform, replay frame stacks)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import gymnasium as gym
import numpy as np


@dataclass(frozen=True)
class ObservationLayout:
    """How an env family lays out its observations: what a network needs to read them."""

    image: bool = False  # an image (height, width, channels in some order), else a vector
    channels_last: bool = False  # an image stored HWC, else CHW
    arch: str = "mlp"  # what network.arch=auto builds: mlp | minigrid_cnn | nature_cnn
    input_scale: float = 1.0  # multiplies the raw values (uint8 frames: 1/255)


@dataclass(frozen=True)
class EnvInfo:
    """The envs of a sequence as an agent may know them (EnvFactory.info): every task shares
    these, whatever its family."""

    observation_space: gym.spaces.Space
    action_space: gym.spaces.Space  # Discrete, or Box (MuJoCo's: unbounded, the env clips)
    layout: ObservationLayout
    reward_transform: Optional[Callable[[np.ndarray], np.ndarray]]  # None: rewards as logged
    replay_frame_stack: int  # frames per observation a replay buffer may store once (1: none)
