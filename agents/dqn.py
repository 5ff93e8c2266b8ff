"""DQN, faithful to CleanRL's dqn_atari: Nature CNN, Adam, MSE (or Huber) TD loss, a target network
with hard or Polyak updates, a linear ε-greedy schedule, learning_starts and train_frequency.

Options that plasticity research uses: Double DQN, n-step returns, the replay ratio, and what
happens at a task switch (ε restarted, buffer flushed, target re-synced).

Counting, in env steps summed over envs (`global_step`), as CleanRL counts with one env:
- a *train step* is due at every multiple of `train_frequency` and does
  `replay_ratio × train_frequency` gradient updates, so `replay_ratio` is exactly the number of
  gradient updates per env step (CleanRL: 0.25, one update every 4 steps); each train step ends
  with `learner.after_update()`;
- the target network is updated at every multiple of `target_network_frequency`;
- both only once `learning_starts` transitions have been stored since the buffer was last empty.
Differences on purpose: several envs step at once (the due steps are then run in order after the
vector step), ε-greedy draws per env, and every gradient step goes through `Learner.optimize`.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Optional

import gymnasium as gym
import numpy as np
import torch

from agents.adam import check_adam_betas
from agents.base import Agent, Iteration, finished_episodes, register_agent
from agents.context import StepContext
from agents.errors import (
    ConfigError,
    at_least,
    factor,
    non_negative,
    positive,
    probability,
)
from agents.networks import make_spec
from agents.replay import ReplayBuffer
from envs.tasks import TaskSequence


@dataclass
class DQNConfig:
    # CleanRL dqn_atari defaults
    learning_rate: float = field(default=1e-4, metadata=probability())
    # transitions (frame slots: ~7 KB each on Atari)
    buffer_size: int = field(default=1_000_000, metadata=at_least(1))
    gamma: float = field(default=0.99, metadata=factor())
    # target update: 1 copies the online network, < 1 is Polyak averaging
    tau: float = field(default=1.0, metadata=factor())
    # env steps between target updates
    target_network_frequency: int = field(default=1000, metadata=at_least(1))
    batch_size: int = field(default=32, metadata=at_least(1))
    start_e: float = field(default=1.0, metadata=probability())
    end_e: float = field(default=0.01, metadata=probability())
    # of the run's env steps (each task's, if restarted)
    exploration_fraction: float = field(default=0.1, metadata=factor())
    # transitions stored since the buffer was empty, before training
    learning_starts: int = field(default=80_000, metadata=at_least(0))
    train_frequency: int = field(default=4, metadata=at_least(1))  # env steps between train steps
    loss: str = "mse"  # mse (CleanRL) | huber (Nature DQN)
    # CleanRL's DQN does not clip
    max_grad_norm: Optional[float] = field(default=None, metadata=positive())
    adam_eps: float = field(default=1e-8, metadata=non_negative())
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # torch's defaults
    # plasticity-research options
    double_dqn: bool = False
    n_step: int = field(default=1, metadata=at_least(1))
    # gradient updates per env step (CleanRL: 1 per train_frequency)
    replay_ratio: float = field(default=0.25, metadata=positive())
    restart_epsilon_at_switch: bool = False
    flush_buffer_at_switch: bool = False
    sync_target_at_switch: bool = True
    # env steps per train_iteration (losses averaged, logged once)
    log_every: int = field(default=1000, metadata=at_least(1))


LOSSES = ("mse", "huber")


@dataclass
class ReplayBatch:
    """Transitions with their TD targets fixed, so the loss is a function of the online params."""

    obs: torch.Tensor
    actions: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return self.actions.shape[0]

    def index(self, idx) -> ReplayBatch:
        return ReplayBatch(self.obs[idx], self.actions[idx], self.targets[idx])


def linear_schedule(start: float, end: float, duration: float, t: int) -> float:
    """CleanRL's ε schedule: linear from start to end over `duration` steps, then end."""
    return start + (end - start) * min(1.0, t / duration)


@torch.no_grad()
def td_targets(returns, discounts, bootstrap_obs, target_network, online_network=None):
    """returns + discounts · Q_target(s', a*), a* = argmax Q_target (or argmax Q_online: Double
    DQN). The replay buffer's returns/discounts make this the n-step target for any n."""
    next_q = target_network(bootstrap_obs)["q"]
    chooser = next_q if online_network is None else online_network(bootstrap_obs)["q"]
    best = chooser.argmax(dim=1, keepdim=True)
    return returns + discounts * next_q.gather(1, best).squeeze(1)


def true_next_obs(next_obs: np.ndarray, info: dict, done: np.ndarray) -> np.ndarray:
    """With SAME_STEP autoreset a finished env returns its reset obs; the real last obs is in
    info["final_obs"] (an object array from gymnasium's SyncVectorEnv, a full array from
    ale-py's AtariVectorEnv, which sets no "_final_obs" mask)."""
    if not done.any():
        return next_obs
    real = next_obs.copy()
    for env in np.flatnonzero(done):
        real[env] = info["final_obs"][env]
    return real


@register_agent("dqn", config=DQNConfig)
class DQN(Agent):
    @classmethod
    def check_config(cls, cfg) -> None:
        dqn, env = cfg.dqn, cfg.env
        if dqn.loss not in LOSSES:
            raise ConfigError(f"dqn.loss: '{dqn.loss}' is not one of {', '.join(LOSSES)}")
        updates = dqn.replay_ratio * dqn.train_frequency
        if updates < 1 or abs(updates - round(updates)) > 1e-9:
            raise ConfigError(
                f"dqn.replay_ratio × dqn.train_frequency ({dqn.replay_ratio} × "
                f"{dqn.train_frequency}) must be a positive integer: the updates of one train step")
        first_sample = max(dqn.batch_size, env.num_envs * dqn.n_step)
        if dqn.learning_starts < first_sample:
            raise ConfigError(f"dqn.learning_starts ({dqn.learning_starts}) must be at least "
                              f"{first_sample} (dqn.batch_size and env.num_envs × dqn.n_step)")
        room = dqn.learning_starts + env.num_envs * env.frame_stack
        if dqn.buffer_size < room:
            raise ConfigError(f"dqn.buffer_size ({dqn.buffer_size}) must be at least {room} "
                              "(dqn.learning_starts plus env.num_envs × env.frame_stack)")
        if not 0.0 <= dqn.end_e <= dqn.start_e <= 1.0:
            raise ConfigError(f"dqn.end_e ({dqn.end_e}) and dqn.start_e ({dqn.start_e}) must "
                              "satisfy 0 <= end_e <= start_e <= 1")
        check_adam_betas("dqn.adam_betas", dqn.adam_betas)

    def __init__(self, cfg, env, strategies, device):
        self.cfg = cfg.dqn
        self.num_envs = cfg.env.num_envs
        self.device = device
        self.reward_transform = env.reward_transform
        if not isinstance(env.action_space, gym.spaces.Discrete):
            raise ConfigError(f"agent=dqn needs discrete actions (one Q-value each); these tasks "
                              f"act in {env.action_space}: use agent=ppo, whose Gaussian policy "
                              "acts on continuous actions")
        self.num_actions = int(env.action_space.n)
        self.obs_shape, self.obs_dtype = env.observation_space.shape, env.observation_space.dtype
        self.frame_stack = env.replay_frame_stack
        self.run_steps = TaskSequence.from_config(cfg.sequence, cfg.seed).total_steps
        self.task_steps = cfg.sequence.switch_every
        self.updates_per_train_step = round(self.cfg.replay_ratio * self.cfg.train_frequency)
        spec = make_spec(cfg.network, env.observation_space, heads={"q": self.num_actions},
                         layout=env.layout)
        self.build_learner(cfg, spec, strategies, device)
        self.target_network = copy.deepcopy(self.network).requires_grad_(False)
        self.ctx.target_network = self.target_network
        self.learner.setup()
        self._update_target(tau=1.0)  # in case a strategy's setup changed the online weights
        self.buffer = self._make_buffer(self.cfg.buffer_size, self.num_envs)
        self.replay_rng = np.random.default_rng(cfg.seed)
        self.started = False  # a task has begun (a switch follows it)
        self.buffer_start = 0  # global step at which the buffer was last empty
        self.task_start = 0
        self.last_batch: ReplayBatch | None = None

    def _make_buffer(self, capacity: int, num_envs: int) -> ReplayBuffer:
        return ReplayBuffer(capacity, self.obs_shape, num_envs=num_envs,
                            frame_stack=self.frame_stack, obs_dtype=self.obs_dtype,
                            n_step=self.cfg.n_step, gamma=self.cfg.gamma, device=self.device)

    # -- acting ------------------------------------------------------------------------------
    def epsilon(self) -> float:
        if self.cfg.restart_epsilon_at_switch:
            t, steps = self.ctx.global_step - self.task_start, self.task_steps
        else:
            t, steps = self.ctx.global_step, self.run_steps
        return linear_schedule(self.cfg.start_e, self.cfg.end_e,
                               self.cfg.exploration_fraction * steps, t)

    @torch.no_grad()
    def act(self, obs: np.ndarray, epsilon: float, generator: torch.Generator) -> np.ndarray:
        """ε-greedy actions, one draw per env from `generator` (on the CPU)."""
        explore = torch.rand(len(obs), generator=generator) < epsilon
        random_actions = torch.randint(self.num_actions, (len(obs),), generator=generator)
        if explore.all():  # no greedy action would be used (most steps while ε is high)
            return random_actions.numpy()
        q = self.network.act(torch.as_tensor(obs, device=self.device))["q"]
        return torch.where(explore, random_actions, q.argmax(1).cpu()).numpy()

    def _env_step(self, envs, obs, epsilon, generator, buffer: ReplayBuffer):
        """One vector step stored in `buffer` (the true final obs where an episode ended)."""
        actions = self.act(obs, epsilon, generator)
        next_obs, reward, terminated, truncated, info = envs.step(actions)
        if self.reward_transform is not None:
            reward = self.reward_transform(reward)
        done = np.logical_or(terminated, truncated)
        buffer.add(obs, true_next_obs(next_obs, info, done), actions, reward, terminated,
                   truncated)
        return next_obs, info

    def begin_task(self, envs, seed: int) -> None:
        switching, self.started = self.started, True
        self.obs, _ = envs.reset(seed=seed)
        self.task_start = self.ctx.global_step
        if not switching:
            return
        self.last_batch = None  # it was the old task's: the monitor must not measure it as new
        if self.cfg.flush_buffer_at_switch:
            self.buffer.clear()
            self.buffer_start = self.ctx.global_step
        else:
            self.buffer.on_task_switch()
        if self.cfg.sync_target_at_switch:
            self._update_target(tau=1.0)

    def probe_batch(self, envs, num_steps: int, seed: int) -> ReplayBatch:
        """num_steps fresh vector steps from `envs` with the current ε-greedy policy, seeded by
        `seed` alone, in a throwaway buffer (same n-step targets as training): no replay writes,
        no counters moved, the global RNG untouched. What the spectral monitor measures."""
        generator = torch.Generator().manual_seed(seed)
        obs, _ = envs.reset(seed=seed)
        n = obs.shape[0]
        # Every step may start an episode, which costs frame_stack extra slots.
        buffer = self._make_buffer(n * (num_steps * (1 + self.frame_stack) + self.cfg.n_step), n)
        epsilon = self.epsilon()
        for _ in range(num_steps):
            obs, _ = self._env_step(envs, obs, epsilon, generator, buffer)
        return self.make_batch(buffer.sample(num_steps * n, np.random.default_rng(seed)))

    def sample_recent_obs(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """From the replay buffer (this task's transitions, and older ones unless flushed)."""
        rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
        return self.buffer.sample_obs(n, rng)

    # -- checkpoints (agents/runtime/checkpoints.py; the runtime rebuilds the envs) ------------
    def side_files(self) -> dict:
        return {"replay": self.buffer}

    def without_side_file(self, name: str, step: int) -> str:
        self.buffer_start = step  # learning waits for a refilled buffer
        return ("note: the checkpoint holds no replay buffer (checkpoint.save_replay=false): "
                "the DQN refills it before learning again, so this is not an exact continuation")

    def next_observation(self) -> torch.Tensor:
        return torch.as_tensor(self.obs)

    def state_dict(self) -> dict:
        """All but the envs and the replay buffer (large: a side file, `side_files()`)."""
        batch = None if self.last_batch is None else vars(self.last_batch)
        return {**self.learner.state_dict(), "target_network": self.target_network.state_dict(),
                "obs": torch.tensor(self.obs), "last_batch": batch,
                "replay_rng": self.replay_rng.bit_generator.state,
                "buffer_start": self.buffer_start, "task_start": self.task_start}

    def load_state_dict(self, state: dict) -> None:
        self.learner.load_state_dict(state)
        self.started = True  # the checkpoint was taken inside a task or at its start
        self.target_network.load_state_dict(state["target_network"])
        self.obs = state["obs"].cpu().numpy()
        self.replay_rng.bit_generator.state = state["replay_rng"]
        self.buffer_start, self.task_start = state["buffer_start"], state["task_start"]
        batch = state["last_batch"]
        self.last_batch = None if batch is None else ReplayBatch(**batch)

    # -- learning ----------------------------------------------------------------------------
    def make_batch(self, sample: dict[str, torch.Tensor], training: bool = False) -> ReplayBatch:
        """A replay sample with its TD targets computed now, without a graph: in fp32, or with
        training=True in the gradient steps' precision (the target network as `Learner.frozen`
        gives it: under bf16 a copy cast once per target update, not at every pass)."""
        online = self.network if self.cfg.double_dqn else None
        target = self.learner.frozen(self.target_network) if training else self.target_network
        with self.learner.autocast() if training else contextlib.nullcontext():
            targets = td_targets(sample["returns"], sample["discounts"], sample["bootstrap_obs"],
                                 target, online)
        return ReplayBatch(sample["obs"], sample["actions"], targets)

    def loss(self, batch: ReplayBatch, forward):
        """TD loss of Q(obs, action) against the batch's fixed targets; forward(obs) ->
        (outputs, features). Written out by hand: torch.func's jvp through F.mse_loss fails."""
        outputs, features = forward(batch.obs)
        q = outputs["q"].gather(1, batch.actions[:, None]).squeeze(1)
        error = q - batch.targets
        if self.cfg.loss == "huber":
            per_sample = torch.where(error.abs() <= 1, 0.5 * error**2, error.abs() - 0.5)
        else:
            per_sample = error**2
        loss = per_sample.mean()
        stats = {"losses/td_loss": loss.detach(), "losses/q_values": q.detach().mean()}
        return loss, stats, outputs, features

    def train_step(self) -> dict[str, torch.Tensor]:
        """replay_ratio × train_frequency gradient updates, then the strategies' after_update.
        Returns each stat summed over the updates."""
        forward = self.learner.train_forward
        totals = Counter()  # update() sums values, tensors included
        for _ in range(self.updates_per_train_step):
            sample = self.buffer.sample(self.cfg.batch_size, self.replay_rng)
            batch = self.make_batch(sample, training=True)  # the target pass in bf16 too, if asked
            loss, stats, outputs, features = self.loss(batch, forward)
            stats.update(self.learner.optimize(
                StepContext(self.ctx, batch.obs, loss, features,
                            loss_fn=partial(self.loss, batch, forward))))
            totals.update(stats)
            self.last_batch = batch
        self.learner.after_update()
        return totals

    @torch.no_grad()
    def _update_target(self, tau: float) -> None:
        if tau == 1.0:
            self.target_network.load_state_dict(self.network.state_dict())
            return
        # Buffers too: an injected head's frozen parts (plasticity_injection) are buffers.
        for target, online in zip([*self.target_network.parameters(),
                                   *self.target_network.buffers()],
                                  [*self.network.parameters(), *self.network.buffers()],
                                  strict=True):
            target.lerp_(online, tau)  # tau·online + (1 − tau)·target

    def train_iteration(self, envs, max_steps: int, generator: torch.Generator) -> Iteration:
        """About log_every env steps (never past max_steps) with the train steps and target
        updates due in them, in order; their losses averaged into one set of stats."""
        vector_steps = min(math.ceil(self.cfg.log_every / self.num_envs),
                           max_steps // self.num_envs)
        totals, episodes = Counter(), []
        updates_before = self.ctx.update_count
        for _ in range(vector_steps):
            self.obs, info = self._env_step(envs, self.obs, self.epsilon(), generator,
                                            self.buffer)
            first = self.ctx.global_step + 1
            self.ctx.global_step += self.num_envs
            episodes.extend(finished_episodes(info, self.ctx.global_step))
            for step in range(first, self.ctx.global_step + 1):
                if step - self.buffer_start < self.cfg.learning_starts:
                    continue
                if step % self.cfg.train_frequency == 0:
                    totals.update(self.train_step())
                if step % self.cfg.target_network_frequency == 0:
                    self._update_target(self.cfg.tau)
        updates = self.ctx.update_count - updates_before
        stats = {key: value / updates for key, value in totals.items()}
        stats["charts/epsilon"] = self.epsilon()
        stats["charts/learning_rate"] = self.learner.optimizer.param_groups[0]["lr"]
        return Iteration(stats, episodes)
