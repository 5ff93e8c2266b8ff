"""Atari tasks: ALE game modes, difficulties and game cycles, with ALE v5 preprocessing.

Two backends give the same observation layout (frame_stack, 84, 84) uint8:
- `ale_vector`: ale-py's AtariVectorEnv (C++ threads, built-in preprocessing), ~2x faster here,
  but it cannot select a game mode or difficulty;
- `gymnasium`: AtariEnv + AtariPreprocessing + FrameStackObservation in a SyncVectorEnv, which
  serves every mode, difficulty and shift wrapper.
"""

from __future__ import annotations

import dataclasses
from functools import cache, cached_property

import ale_py
import gymnasium as gym
import numpy as np
from ale_py.env import AtariEnv
from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

from agents.errors import ConfigError
from envs.families import EnvFamily, register_env_family, vector_env
from envs.info import ObservationLayout
from envs.tasks import TaskSpec
from envs.wrappers import FireReset, apply_shifts

gym.register_envs(ale_py)
ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)  # no banner on stderr

FULL_ACTION_SPACE = 18
LAYOUT = ObservationLayout(image=True, channels_last=False, arch="nature_cnn",
                           input_scale=1 / 255)  # (frame_stack, 84, 84) uint8 frames


@cache
def game_info(env_id: str) -> tuple[str, tuple[int, ...], tuple[int, ...], tuple[str, ...]]:
    """(rom name, valid modes, valid difficulties, minimal action meanings) of an ALE game."""
    try:
        env = gym.make(env_id, frameskip=1)
    except gym.error.Error as exc:
        raise ConfigError(f"unknown Atari env '{env_id}': {exc}") from None
    ale = env.unwrapped.ale
    info = (env.spec.kwargs["game"], tuple(int(m) for m in ale.getAvailableModes()),
            tuple(int(d) for d in ale.getAvailableDifficulties()),
            tuple(env.unwrapped.get_action_meanings()))
    env.close()
    return info


def check_task(task: TaskSpec) -> None:
    """A mode or difficulty the game lacks is a clear error listing the valid ones."""
    _, modes, difficulties, _ = game_info(task.env_id)
    for key, plural, valid in (("mode", "modes", modes),
                               ("difficulty", "difficulties", difficulties)):
        value = task.kwargs.get(key)
        if value is not None and value not in valid:
            raise ConfigError(
                f"task '{task.name}': {task.env_id} has no {key} {value} "
                f"(valid {plural}: {', '.join(map(str, valid))})"
            )
    unknown = set(task.kwargs) - {"mode", "difficulty"}
    if unknown:
        raise ConfigError(f"task '{task.name}': unknown Atari kwargs {sorted(unknown)} "
                          "(allowed: mode, difficulty)")


def full_action_space_needed(tasks: list[TaskSpec], env_cfg) -> bool:
    if env_cfg.full_action_space is not None:
        return bool(env_cfg.full_action_space)
    return len({game_info(t.env_id)[0] for t in tasks}) > 1


class ScreenlessAtariEnv(AtariEnv):
    """AtariEnv whose own observation is a blank grey screen. Under AtariPreprocessing, which
    reads the two screens it max-pools from the ALE itself and drops the env's, AtariEnv would
    copy a screen out of the emulator at every emulated frame (4 per env step) for nothing:
    with it, an 8-env modes step took ×1.24–1.44 as long (bench/levers.py envs)."""

    def _get_obs(self) -> np.ndarray:
        return np.zeros(self.observation_space.shape, np.uint8)  # fresh: callers may keep it


def make_single(task: TaskSpec, env_cfg, full_action_space: bool) -> gym.Env:
    """One preprocessed Atari env (gymnasium backend); also what check_env inspects."""
    # The registered spec (its kwargs, wrappers, id) with the screenless env as entry point;
    # obs_type grayscale gives that env's blank screen AtariPreprocessing's buffer shape.
    spec = dataclasses.replace(gym.spec(task.env_id), entry_point=ScreenlessAtariEnv)
    env = gym.make(
        spec, frameskip=1, obs_type="grayscale",
        repeat_action_probability=env_cfg.sticky_actions,
        full_action_space=full_action_space,
        max_num_frames_per_episode=env_cfg.max_episode_frames, **task.kwargs,
    )
    # FIRE for one frame, below the frame skip, and zero-padded first stacks: as ale-py's
    # AtariVectorEnv does, so that both backends give the same frames (tests/test_fast_paths.py).
    if env_cfg.fire_reset and "FIRE" in env.unwrapped.get_action_meanings():
        env = FireReset(env)
    env = AtariPreprocessing(
        env, noop_max=env_cfg.noop_max, frame_skip=env_cfg.frame_skip,
        screen_size=env_cfg.screen_size, terminal_on_life_loss=env_cfg.episodic_life,
        grayscale_obs=True, scale_obs=False,
    )
    env = FrameStackObservation(env, env_cfg.frame_stack, padding_type="zero")
    return apply_shifts(env, task)


def uses_ale_vector(task: TaskSpec, env_cfg) -> bool:
    plain = not task.kwargs and task.permute_obs is None and task.permute_actions is None
    if env_cfg.backend == "ale_vector" and not plain:
        raise ConfigError(
            f"task '{task.name}': env.backend=ale_vector cannot set a mode, difficulty or "
            "permutation; use env.backend=auto or gymnasium"
        )
    # episodic_life on the C++ backend would end the recorded episode at every life loss.
    return env_cfg.backend == "ale_vector" or (
        env_cfg.backend == "auto" and plain and not env_cfg.episodic_life
    )


def make_vector(task: TaskSpec, env_cfg, num_envs: int, full_action_space: bool,
                workers: int = 1):
    if uses_ale_vector(task, env_cfg):
        rom = game_info(task.env_id)[0]
        return ale_py.vector_env.AtariVectorEnv(
            rom, num_envs, num_threads=0, repeat_action_probability=env_cfg.sticky_actions,
            full_action_space=full_action_space, autoreset_mode="SameStep",
            img_height=env_cfg.screen_size, img_width=env_cfg.screen_size,
            stack_num=env_cfg.frame_stack, frameskip=env_cfg.frame_skip,
            noop_max=env_cfg.noop_max, episodic_life=env_cfg.episodic_life,
            reward_clipping=False, use_fire_reset=env_cfg.fire_reset,
            max_num_frames_per_episode=env_cfg.max_episode_frames,
        )
    return vector_env(lambda: make_single(task, env_cfg, full_action_space), num_envs, workers)


@register_env_family("atari", prefixes=("ALE/",))
class AtariFamily(EnvFamily):
    """This module's functions, with the sequence's action space (benchmarks call them directly)."""

    observation_layout = LAYOUT
    steps_in_workers = True  # the gymnasium backend's emulators; ale_vector has its own threads

    @cached_property
    def full_action_space(self) -> bool:
        """Sequence-wide: the full 18 actions for every game when the sequence's games differ."""
        return full_action_space_needed(self.tasks, self.env_cfg)

    def check(self, task: TaskSpec) -> None:
        check_task(task)

    def make_single(self, task: TaskSpec) -> gym.Env:
        return make_single(task, self.env_cfg, self.full_action_space)

    def make_vector(self, task: TaskSpec, num_envs: int):
        return make_vector(task, self.env_cfg, num_envs, self.full_action_space,
                           self.workers(num_envs))

    def reward_transform(self):
        return np.sign if self.env_cfg.clip_rewards else None

    def frames_per_stack(self, task: TaskSpec) -> int:
        return self.env_cfg.frame_stack if task.permute_obs is None else 1  # permuted: no stack
