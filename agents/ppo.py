"""PPO, faithful to CleanRL's ppo_atari and ppo_continuous_action: GAE, clipped objective and value
loss, entropy bonus, advantage normalisation, gradient clipping, minibatches x epochs, optional LR
annealing; a categorical policy on discrete actions, a diagonal Gaussian with a state-independent
log-std on continuous ones (agents/policies.py), from a shared torso or separate actor and critic
networks (network.separate_heads).

Differences on purpose: rollouts may be shortened so a task switch lands on its exact step, and
every gradient step goes through the shared `Learner.optimize` (strategies hook in there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Optional

import numpy as np
import torch

from agents.adam import check_adam_betas
from agents.base import Agent, Iteration, finished_episodes, forked_rng, register_agent
from agents.context import StepContext
from agents.errors import ConfigError, at_least, non_negative, positive, probability
from agents.networks import make_spec
from agents.policies import policy_for
from envs.tasks import TaskSequence


@dataclass
class PPOConfig:
    # CleanRL ppo_atari defaults
    learning_rate: float = field(default=2.5e-4, metadata=probability())
    num_steps: int = field(default=128, metadata=at_least(1))
    anneal_lr: bool = False  # CleanRL anneals to 0; a continual run usually keeps it constant
    gamma: float = field(default=0.99, metadata=probability())
    gae_lambda: float = field(default=0.95, metadata=probability())
    num_minibatches: int = field(default=4, metadata=at_least(1))
    update_epochs: int = field(default=4, metadata=at_least(1))
    norm_adv: bool = True
    clip_coef: float = field(default=0.1, metadata=non_negative())
    clip_vloss: bool = True
    ent_coef: float = field(default=0.01, metadata=non_negative())
    vf_coef: float = field(default=0.5, metadata=non_negative())
    # null: no clipping (He et al.'s setting)
    max_grad_norm: Optional[float] = field(default=0.5, metadata=positive())
    target_kl: Optional[float] = field(default=None, metadata=positive())
    adam_eps: float = field(default=1e-5, metadata=non_negative())
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # torch's defaults


@dataclass
class RolloutBatch:
    """A flat batch of transitions with everything PPO's loss needs."""

    obs: torch.Tensor
    actions: torch.Tensor
    logprobs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor

    def __len__(self) -> int:
        return self.actions.shape[0]

    def index(self, idx) -> RolloutBatch:
        return RolloutBatch(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))


def compute_gae(rewards, values, dones, next_value, next_done, gamma: float, lam: float):
    """Generalised advantage estimates over (T, N) arrays, as CleanRL computes them.

    Numpy arrays or torch tensors alike; rollouts pass numpy, which runs the T-step recursion 6x
    faster than torch's per-op dispatch (bench/levers.py acting).
    dones[t] marks that obs[t] starts a new episode (the previous step ended one).
    """
    advantages = rewards * 0.0
    last = next_value * 0.0
    steps = rewards.shape[0]
    for t in reversed(range(steps)):
        if t == steps - 1:
            nonterminal, next_values = 1.0 - next_done, next_value
        else:
            nonterminal, next_values = 1.0 - dones[t + 1], values[t + 1]
        delta = rewards[t] + gamma * next_values * nonterminal - values[t]
        last = delta + gamma * lam * nonterminal * last
        advantages[t] = last
    return advantages, advantages + values


@register_agent("ppo", config=PPOConfig)
class PPO(Agent):
    @classmethod
    def check_config(cls, cfg) -> None:
        batch = cfg.env.num_envs * cfg.ppo.num_steps
        if batch % cfg.ppo.num_minibatches:
            raise ConfigError(
                f"ppo.num_minibatches ({cfg.ppo.num_minibatches}) must divide env.num_envs × "
                f"ppo.num_steps ({batch})"
            )
        check_adam_betas("ppo.adam_betas", cfg.ppo.adam_betas)

    def __init__(self, cfg, env, strategies, device):
        self.cfg = cfg.ppo
        self.num_envs = cfg.env.num_envs
        self.device = device
        self.total_steps = TaskSequence.from_config(cfg.sequence, cfg.seed).total_steps
        self.reward_transform = env.reward_transform
        self.policy = policy_for(env.action_space)
        spec = make_spec(cfg.network, env.observation_space,
                         heads={**self.policy.heads, "value": 1},
                         head_gains={"policy": 0.01, "value": 1.0}, layout=env.layout,
                         towers={"policy": "actor", "value": "critic"},
                         constant_heads=self.policy.constant_heads)
        self.build_learner(cfg, spec, strategies, device)
        self.learner.setup()
        self.last_batch: RolloutBatch | None = None

    # -- acting ------------------------------------------------------------------------------
    def begin_task(self, envs, seed: int) -> None:
        obs, _ = envs.reset(seed=seed)
        self.last_batch = None  # the old task's
        self.next_obs = torch.as_tensor(obs, device=self.device)
        self.next_done = torch.zeros(self.num_envs, device=self.device)

    @torch.no_grad()
    def rollout(self, envs, obs, done, num_steps: int, on_step=None):
        """Collect num_steps per env with the current policy; returns (batch, obs, done).

        Per step only what the next action needs (a forward pass, one draw); the log-probabilities
        of all steps come at the end in one pass over the stored policy outputs, and rewards and
        episode ends stay in numpy, where they arrive and where GAE runs."""
        n, policy = obs.shape[0], self.policy
        obs_store = torch.empty((num_steps, *obs.shape), dtype=obs.dtype, device=self.device)
        actions = torch.empty((num_steps, n, *policy.action_shape), dtype=policy.action_dtype,
                              device=self.device)
        values = torch.empty((num_steps, n), device=self.device)
        rewards = np.empty((num_steps, n), dtype=np.float32)
        dones = np.empty((num_steps, n), dtype=np.float32)
        kept = {name: [] for name in policy.outputs}
        done = done.cpu().numpy()
        for t in range(num_steps):
            obs_store[t], dones[t] = obs, done
            out = self.network.act(obs)
            for name, outputs in kept.items():
                outputs.append(out[name])
            action = policy.sample(out)
            actions[t], values[t] = action, out["value"].squeeze(-1)
            next_obs, reward, terminated, truncated, info = envs.step(action.cpu().numpy())
            if on_step is not None:
                on_step(t, info)
            rewards[t] = reward if self.reward_transform is None else self.reward_transform(reward)
            obs = torch.as_tensor(next_obs, device=self.device)
            done = np.logical_or(terminated, truncated)
        next_value = self.network.act(obs)["value"].squeeze(-1)
        logprobs = policy.log_prob_and_entropy(
            {name: torch.stack(outputs) for name, outputs in kept.items()}, actions)[0]
        advantages, returns = compute_gae(rewards, values.cpu().numpy(), dones,
                                          next_value.cpu().numpy(), done.astype(np.float32),
                                          self.cfg.gamma, self.cfg.gae_lambda)
        flat = lambda x: torch.as_tensor(x, device=self.device).flatten(0, 1)  # noqa: E731
        batch = RolloutBatch(flat(obs_store), flat(actions), flat(logprobs),
                             flat(values), flat(advantages), flat(returns))
        return batch, obs, torch.as_tensor(done, dtype=torch.float32, device=self.device)

    def probe_batch(self, envs, num_steps: int, seed: int) -> RolloutBatch:
        """A fresh batch from `envs` with the current policy, leaving training untouched
        (own seed, global RNG restored, no counters moved): what the spectral monitor measures."""
        with forked_rng(self.device):
            torch.manual_seed(seed)  # on a GPU the draws come from its generator
            obs, _ = envs.reset(seed=seed)
            obs = torch.as_tensor(obs, device=self.device)
            done = torch.zeros(obs.shape[0], device=self.device)
            batch, _, _ = self.rollout(envs, obs, done, num_steps)
        return batch

    # -- checkpoints (agents/runtime/checkpoints.py; the runtime rebuilds the envs) ------------
    def next_observation(self) -> torch.Tensor:
        return self.next_obs

    def state_dict(self) -> dict:
        return {**self.learner.state_dict(), "obs": self.next_obs, "next_done": self.next_done}

    def load_state_dict(self, state: dict) -> None:
        self.learner.load_state_dict(state)
        self.next_obs, self.next_done = state["obs"], state["next_done"]

    # -- learning ----------------------------------------------------------------------------
    def loss(self, batch: RolloutBatch, forward):
        """PPO's clipped objective; forward(obs) -> (outputs, features). Also returns stats."""
        outputs, features = forward(batch.obs)
        newlogprob, entropy = self.policy.log_prob_and_entropy(outputs, batch.actions)
        entropy = entropy.mean()
        logratio = newlogprob - batch.logprobs
        ratio = logratio.exp()
        advantages = batch.advantages
        if self.cfg.norm_adv and len(batch) > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        clip = self.cfg.clip_coef
        pg_loss = torch.max(-advantages * ratio,
                            -advantages * ratio.clamp(1 - clip, 1 + clip)).mean()
        value = outputs["value"].squeeze(-1)
        v_loss = (value - batch.returns) ** 2
        if self.cfg.clip_vloss:
            v_clipped = batch.values + (value - batch.values).clamp(-clip, clip)
            v_loss = torch.max(v_loss, (v_clipped - batch.returns) ** 2)
        v_loss = 0.5 * v_loss.mean()
        loss = pg_loss - self.cfg.ent_coef * entropy + self.cfg.vf_coef * v_loss
        with torch.no_grad():
            stats = {"losses/policy_loss": pg_loss, "losses/value_loss": v_loss,
                     "losses/entropy": entropy,
                     "losses/old_approx_kl": (-logratio).mean(),
                     "losses/approx_kl": ((ratio - 1) - logratio).mean(),
                     "losses/clipfrac": ((ratio - 1.0).abs() > clip).float().mean()}
        return loss, stats, outputs, features

    def update(self, batch: RolloutBatch, generator: torch.Generator) -> dict:
        forward = self.learner.train_forward
        num_mb = min(self.cfg.num_minibatches, len(batch))
        totals: dict[str, torch.Tensor] = {}
        count = 0
        for _ in range(self.cfg.update_epochs):
            order = torch.randperm(len(batch), generator=generator).to(self.device)
            for mb_idx in order.tensor_split(num_mb):
                mb = batch.index(mb_idx)
                loss, stats, outputs, features = self.loss(mb, forward)
                extras = {"policy_loss": stats["losses/policy_loss"].detach()}  # C-CHAIN: λ
                stats.update(self.learner.optimize(
                    StepContext(self.ctx, mb.obs, loss, features, extras,
                                loss_fn=partial(self.loss, mb, forward))))
                for k, v in stats.items():
                    totals[k] = totals.get(k, 0) + v.detach()
                count += 1
            if self.cfg.target_kl is not None and stats["losses/approx_kl"] > self.cfg.target_kl:
                break
        # CleanRL logs the last minibatch's numbers; the epoch means are less noisy.
        means = {k: v / count for k, v in totals.items()}
        values, returns = batch.values, batch.returns
        var_y = returns.var()
        means["losses/explained_variance"] = (
            1 - (returns - values).var() / var_y if var_y > 0 else torch.tensor(float("nan")))
        return means

    def train_iteration(self, envs, max_steps: int, generator: torch.Generator) -> Iteration:
        """One rollout (shortened to end at max_steps) and one PPO update."""
        num_steps = min(self.cfg.num_steps, max_steps // self.num_envs)
        if self.cfg.anneal_lr:
            frac = 1.0 - self.ctx.global_step / self.total_steps
            self.learner.set_learning_rate(frac * self.cfg.learning_rate)
        step0, episodes = self.ctx.global_step, []

        def on_step(t, info):
            episodes.extend(finished_episodes(info, step0 + (t + 1) * self.num_envs))

        batch, self.next_obs, self.next_done = self.rollout(
            envs, self.next_obs, self.next_done, num_steps, on_step)
        self.last_batch = batch
        self.ctx.global_step += num_steps * self.num_envs
        stats = self.update(batch, generator)
        stats["charts/learning_rate"] = self.learner.optimizer.param_groups[0]["lr"]
        self.learner.after_update()
        return Iteration(stats, episodes)
