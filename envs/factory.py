"""Builds the vector env of each task through its family and checks that a sequence's tasks are
compatible; `info` is what an agent may know of them."""

from __future__ import annotations

import gymnasium as gym
from gymnasium.wrappers.vector import RecordEpisodeStatistics

from agents.errors import ConfigError, library_message
from envs.families import EnvFamily, check_physics, family_for
from envs.info import EnvInfo, ObservationLayout
from envs.normalize import RunningStatistics
from envs.tasks import TaskSequence, TaskSpec


def agreed(values, default):
    """The value all give, or `default` where they differ."""
    distinct = set(values)
    return distinct.pop() if len(distinct) == 1 else default


class EnvFactory:
    """Makes envs for the tasks of one sequence, all with the same spaces."""

    def __init__(self, env_cfg, sequence: TaskSequence):
        self.env_cfg = env_cfg
        self.sequence = sequence
        by_family: dict[type[EnvFamily], list[TaskSpec]] = {}
        for task in sequence.tasks:
            by_family.setdefault(family_for(task.env_id), []).append(task)
        self.families = {cls: cls(env_cfg, tasks) for cls, tasks in by_family.items()}
        for task in sequence.tasks:
            check_physics(task, family_for(task.env_id))
            self.family(task).check(task)
        self.observation_space, self.action_space = self._common_spaces()
        # the run's normalisation statistics (None: off), shared by every training segment
        self.statistics = RunningStatistics.of(env_cfg, self.observation_space)
        self.info = EnvInfo(
            self.observation_space, self.action_space, self._common_layout(),
            reward_transform=agreed((f.reward_transform() for f in self.families.values()),
                                    default=None),
            replay_frame_stack=self._replay_frame_stack(),
        )

    def family(self, task: TaskSpec) -> EnvFamily:
        return self.families[family_for(task.env_id)]

    def make_single(self, task: TaskSpec) -> gym.Env:
        return self.family(task).make_single(task)

    def make_vector(self, task: TaskSpec, num_envs: int | None = None, *,
                    training: bool = False):
        """A vector env (SAME_STEP autoreset) recording raw episodic returns; reset it seeded.
        With normalisation on, `training` envs update the run's statistics; any others (probes)
        use a frozen copy of them."""
        envs = RecordEpisodeStatistics(
            self.family(task).make_vector(task, num_envs or self.env_cfg.num_envs))
        return envs if self.statistics is None else self.statistics.wrap(envs, training)

    def _common_spaces(self):
        spaces = []
        for task in self.sequence.tasks:
            env = self._first_env(task)
            spaces.append((task.name, env.observation_space, env.action_space))
            env.close()
        name0, obs0, act0 = spaces[0]
        for name, obs, act in spaces[1:]:
            if obs != obs0 or act != act0:
                raise ConfigError(
                    f"task '{name}' has observation space {obs} and action space {act}, but "
                    f"'{name0}' has {obs0} and {act0}: every task of a sequence needs the same"
                )
        return obs0, act0

    def _first_env(self, task: TaskSpec) -> gym.Env:
        """The task's first env: what its library raises building it (an env constructor
        rejecting its kwargs, an assertion on a size) is one line naming the task."""
        try:
            return self.make_single(task)
        except ConfigError:
            raise
        except Exception as exc:
            kwargs = f" with kwargs {dict(task.kwargs)}" if task.kwargs else ""
            raise ConfigError(f"task '{task.name}': {task.env_id}{kwargs} could not be built: "
                              f"{library_message(exc)}") from None

    def _common_layout(self) -> ObservationLayout:
        layouts = {cls.name: cls.layout(self.observation_space) for cls in self.families}
        if len(set(layouts.values())) > 1:
            raise ConfigError(f"the tasks' env families lay out their observations differently "
                              f"({layouts}): every task of a sequence needs the same")
        return next(iter(layouts.values()))

    def _replay_frame_stack(self) -> int:
        """Frames a replay buffer may store once: every task's stack, if they agree and the
        observations really are stacks of them (first axis)."""
        stack = agreed((self.family(t).frames_per_stack(t) for t in self.sequence.tasks),
                       default=1)
        return stack if stack > 1 and self.observation_space.shape[:1] == (stack,) else 1
