"""MuJoCo tasks (gymnasium's Ant-v5, HalfCheetah-v5, ...): float32 vector observations, actions
clipped to the env's bounds by the env (an agent's Gaussian samples stay unclipped, so their
log-probabilities are of what was sampled), and a task's `physics` set on the compiled model.

Physics (`task.physics`, each value > 0):
- friction: the sliding friction of EVERY geom, floor and body alike (model.geom_friction[:, 0]),
  as He et al.'s Brax wrapper (lop-jax NonstationaryFrictionBraxWrapper) and, through ant.xml's
  default geom class, Dohare et al.'s SlipperyAnt do. MuJoCo combines two geoms' friction by
  their maximum, so a floor alone set below the body's 1 would change no contact at all.
- mass_scale: every body's mass and inertia times the value.
- gravity_scale: gravity times the value.
"""

from __future__ import annotations

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium.wrappers import ClipAction

from agents.errors import ConfigError
from envs.families import EnvFamily, make_registered, register_env_family
from envs.info import ObservationLayout
from envs.tasks import TaskSpec
from envs.wrappers import apply_shifts

PREFIXES = ("Ant-", "HalfCheetah-", "Hopper-", "Walker2d-", "Humanoid-", "HumanoidStandup-",
            "Swimmer-", "InvertedPendulum-", "InvertedDoublePendulum-", "Reacher-", "Pusher-")
LAYOUT = ObservationLayout(image=False, arch="mlp", input_scale=1.0)


def buildable_ids() -> list[str]:
    """The family's registered ids that build: v2/v3 need mujoco-py, registered by gymnasium
    only to say so (their entry point is a function raising that error, not a class path)."""
    return sorted(k for k, spec in gym.registry.items()
                  if k.startswith(PREFIXES) and isinstance(spec.entry_point, str))


class SetPhysics(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Sets `physics` on the env's compiled MuJoCo model, once (a reset keeps the model). A
    wrapper, so that the env's spec re-creates it (gymnasium's env checker does)."""

    def __init__(self, env: gym.Env, **physics: float):
        gym.utils.RecordConstructorArgs.__init__(self, **physics)
        gym.Wrapper.__init__(self, env)
        model = env.unwrapped.model
        if "friction" in physics:
            model.geom_friction[:, 0] = physics["friction"]
        if "mass_scale" in physics:
            model.body_mass[:] *= physics["mass_scale"]
            model.body_inertia[:] *= physics["mass_scale"]
            mujoco.mj_setConst(model, env.unwrapped.data)  # subtree masses and the like
        if "gravity_scale" in physics:
            model.opt.gravity[:] *= physics["gravity_scale"]


class Float32Observation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """MuJoCo's float64 observations as float32, what networks read. (gymnasium's
    DtypeObservation does the same but warns, casting the space's float64 bounds.)"""

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.ObservationWrapper.__init__(self, env)
        space = env.observation_space
        self.observation_space = gym.spaces.Box(space.low.astype(np.float32),
                                                space.high.astype(np.float32), dtype=np.float32)

    def observation(self, observation):
        return observation.astype(np.float32)


@register_env_family("mujoco", prefixes=PREFIXES)
class MujocoFamily(EnvFamily):
    observation_layout = LAYOUT
    physics_keys = ("friction", "mass_scale", "gravity_scale")
    gymnasium_ids = True

    def check(self, task: TaskSpec) -> None:
        known = buildable_ids()
        if task.env_id not in known:
            raise ConfigError(f"unknown MuJoCo env '{task.env_id}' (known: {', '.join(known)})")

    def make_single(self, task: TaskSpec) -> gym.Env:
        env = SetPhysics(make_registered(task), **task.physics)
        env = Float32Observation(env)
        return apply_shifts(ClipAction(env), task)

    @classmethod
    def short_name(cls, env_id: str) -> str:
        return env_id  # the prefix is the robot: Ant-v5, not v5
