"""Env families (MiniGrid, Atari, gymnasium's own envs, ...): each checks and builds its tasks'
envs and says how their observations are laid out. A task's family is the one registered with
the longest prefix of its env id, else the one registered with no prefix (gymnasium's registry).

A new family is one module: a subclass of EnvFamily under `@register_env_family(name, prefixes)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import gymnasium as gym

from agents.errors import ConfigError, positive
from envs.info import ObservationLayout
from envs.processes import ProcessVectorEnv


class EnvFamily:
    """One kind of env. The factory makes one instance per family of a sequence, holding that
    family's tasks of the sequence (for sequence-wide settings) and the run's `env:` config.
    Tasks are envs.tasks.TaskSpec (not imported here: envs.tasks looks families up)."""

    name: ClassVar[str] = ""  # both set by register_env_family
    prefixes: ClassVar[tuple[str, ...]] = ()
    observation_layout: ClassVar[ObservationLayout | None] = None  # one for every space
    physics_keys: ClassVar[tuple[str, ...]] = ()  # the task.physics it can set (MuJoCo's)
    # its ids are gymnasium's own envs (MuJoCo's): "or a gymnasium id" names them already
    gymnasium_ids: ClassVar[bool] = False
    # its env steps cost enough (an emulator's ~0.5 ms) that env.workers=null steps them in
    # worker processes; cheap ones (MiniGrid's, MuJoCo's) would lose more to the round trips
    steps_in_workers: ClassVar[bool] = False

    def __init__(self, env_cfg, tasks: list):
        self.env_cfg = env_cfg
        self.tasks = list(tasks)

    def check(self, task) -> None:
        """Raises ConfigError (one line) for a task the family cannot build: an unknown id, bad
        kwargs or a mode the env lacks. Runs before any env is made."""

    def make_single(self, task) -> gym.Env:
        """One env of the task, distribution shifts applied (envs.wrappers.apply_shifts)."""
        raise NotImplementedError

    def make_vector(self, task, num_envs: int) -> gym.vector.VectorEnv:
        """`num_envs` envs of the task, each reset in the step it ends (SAME_STEP autoreset)."""
        return vector_env(lambda: self.make_single(task), num_envs, self.workers(num_envs))

    def workers(self, num_envs: int) -> int:
        """The processes that step `num_envs` envs, this one included: env.workers, else, for a
        family that `steps_in_workers`, one per 4 envs and at most one per core the run's torch
        uses."""
        if self.env_cfg.workers is not None:
            return min(self.env_cfg.workers, num_envs)
        if not self.steps_in_workers:
            return 1
        import torch  # loaded by the trainer already; importing envs need not load it

        return max(1, min(torch.get_num_threads(), num_envs // ENVS_PER_WORKER))

    @classmethod
    def layout(cls, observation_space: gym.spaces.Space) -> ObservationLayout:
        """How the family's observations (of this space) are laid out: `observation_layout`,
        unless the family overrides this (gymnasium's: a vector or an image by its shape)."""
        if cls.observation_layout is None:
            raise NotImplementedError(f"env family '{cls.name}' declares no observation layout")
        return cls.observation_layout

    def reward_transform(self) -> Callable | None:
        """What the learner applies to rewards (logged returns stay raw); None: nothing."""
        return None

    def frames_per_stack(self, task) -> int:
        """Frames stacked in one observation of `task`, consecutive observations sharing all but
        one, so that a replay buffer may store each frame once; 1: observations are no stacks."""
        return 1

    @classmethod
    def short_name(cls, env_id: str) -> str:
        """The env id without the family's prefix: how a task's default name starts."""
        prefix = max((p for p in cls.prefixes if env_id.startswith(p)), key=len, default="")
        return env_id.removeprefix(prefix)


_FAMILIES: dict[str, type[EnvFamily]] = {}  # the built-in ones: registered by envs/__init__.py


def register_env_family(name: str, prefixes: tuple[str, ...] = ()):
    """Class decorator: registers an EnvFamily for env ids starting with any of `prefixes` (none:
    the fallback family, for every id no other family claims)."""
    def register(cls: type[EnvFamily]) -> type[EnvFamily]:
        taken = [f for f in _FAMILIES.values() if set(f.prefixes) & set(prefixes)
                 or not (f.prefixes or prefixes)]
        if name in _FAMILIES or taken:
            raise ValueError(f"env family '{name}' {tuple(prefixes)}: already registered as "
                             f"{[(f.name, f.prefixes) for f in taken] or name}")
        cls.name, cls.prefixes = name, tuple(prefixes)
        _FAMILIES[name] = cls
        return cls
    return register


def unregister_env_family(name: str) -> None:
    """Removes a family registered by register_env_family (tests' own families)."""
    del _FAMILIES[name]


def family_for(env_id: str) -> type[EnvFamily]:
    """The family of an env id: the one with the longest matching prefix, else the fallback."""
    matches = [(len(p), cls) for cls in _FAMILIES.values() for p in cls.prefixes
               if env_id.startswith(p)]
    if matches:
        return max(matches, key=lambda match: match[0])[1]
    return _fallback()


def _fallback() -> type[EnvFamily]:
    return next(cls for cls in _FAMILIES.values() if not cls.prefixes)


def known_id_patterns() -> list[str]:
    """`PREFIX*` for every family's prefixes, in registration order: what unknown-env errors
    suggest besides gymnasium's own ids."""
    return [f"{prefix}*" for cls in _FAMILIES.values() if not cls.gymnasium_ids
            for prefix in cls.prefixes]


def check_physics(task, family: type[EnvFamily]) -> None:
    """A task's physics: keys its family can set, each value > 0 (ConfigError, one line)."""
    unknown = sorted(set(task.physics) - set(family.physics_keys))
    if unknown:
        can = (f"sets only {', '.join(family.physics_keys)}" if family.physics_keys
               else "has no physics model to set (MuJoCo tasks have)")
        raise ConfigError(f"task '{task.name}': unknown physics {unknown}: the {family.name} "
                          f"family {can}")
    valid = positive()["range"]
    for key, value in task.physics.items():
        if not valid.contains(value):
            raise ConfigError(f"task '{task.name}': physics.{key} must {valid.describe()}, "
                              f"got {value}")


def plain_layout(observation_space: gym.spaces.Space) -> ObservationLayout:
    """The layout of a bare space with no family named (tests, benchmarks): the fallback
    family's, gymnasium's own rule (a vector; an image stored HWC). A run passes its families'
    layout (EnvFactory.info); nothing guesses a family from a shape."""
    return _fallback().layout(observation_space)


ENVS_PER_WORKER = 4  # fewer, and a worker's round trip outweighs its share of the stepping


def vector_env(make_env: Callable[[], gym.Env], num_envs: int,
               workers: int = 1) -> gym.vector.VectorEnv:
    """`num_envs` envs of `make_env`, stepped by `workers` processes (1: this one alone; more:
    this one and worker processes), the same steps either way, bit for bit."""
    if workers <= 1:
        return sync_vector_env(make_env, num_envs)
    return ProcessVectorEnv(make_env, num_envs, processes=workers)


def sync_vector_env(make_env: Callable[[], gym.Env], num_envs: int) -> gym.vector.VectorEnv:
    """`num_envs` envs stepped in this process, each reset in the step it ends (SAME_STEP: the
    real last observation is in info["final_obs"], what the agents bootstrap from)."""
    return gym.vector.SyncVectorEnv([make_env for _ in range(num_envs)],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


def make_registered(task) -> gym.Env:
    """gym.make of a task's id and kwargs; kwargs the env doesn't take are a ConfigError."""
    try:
        return gym.make(task.env_id, **task.kwargs)
    except TypeError as exc:
        raise ConfigError(f"task '{task.name}': bad kwargs for {task.env_id}: {exc}") from None
