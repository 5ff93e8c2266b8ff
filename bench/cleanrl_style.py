"""Baselines for bench/throughput.py: the loop structure of CleanRL's ppo_atari.py and
dqn_atari.py, restated minimally in our own words (their scripts are not vendored here, and
`bench/throughput.py --cleanrl DIR` times the real scripts).

What is kept is what costs time there:
- each env is gymnasium wrappers around one ALE emulator, stepped in turn by a SyncVectorEnv:
  RGB frames, max-pooled, resized, then made grey, as CleanRL's wrapper stack does;
- observations become float32 tensors (`torch.Tensor(obs)`) every step, and PPO's rollout storage
  is float32 (4 bytes a pixel); the network divides by 255 in its forward pass;
- one `.cpu().numpy()` round trip per step for the actions; PPO reads `.item()` of the clip
  fraction every minibatch;
- DQN: one env, one forward pass per env step, a replay ring of whole frame stacks (as SB3's
  buffer with optimize_memory_usage, which CleanRL uses) sampled with numpy and copied with
  `torch.tensor`; one update every 4 env steps on 32 transitions;
- torch's default thread settings, eager mode, default (NCHW) memory layout.
Not kept: TensorBoard logging and argument parsing (our side does log to TensorBoard).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from gymnasium.wrappers import (
    FrameStackObservation,
    GrayscaleObservation,
    MaxAndSkipObservation,
    RecordEpisodeStatistics,
    ResizeObservation,
    TransformReward,
)
from torch import nn
from torch.distributions import Categorical

import envs.atari  # noqa: F401  (registers the ALE ids, quiets ALE's banner)
from envs.wrappers import FireReset

SAME_STEP = gym.vector.AutoresetMode.SAME_STEP  # CleanRL's gymnasium 0.29 autoreset (final_obs)


def make_atari_env(env_id: str, kwargs: dict, sticky: float) -> gym.Env:
    """CleanRL's wrapper stack, gymnasium's wrappers standing in for SB3's: RGB frames, the max
    of the last two of every four, FIRE at reset, clipped rewards, resized, grey, stacked. Its
    no-op starts and episodic life are left out: they act at resets only."""
    env = gym.make(env_id, frameskip=1, repeat_action_probability=sticky, **kwargs)
    env = RecordEpisodeStatistics(env)
    env = MaxAndSkipObservation(env, skip=4)
    env = FireReset(env)
    env = TransformReward(env, lambda r: float(np.sign(r)))
    env = GrayscaleObservation(ResizeObservation(env, (84, 84)))
    return FrameStackObservation(env, 4)


def nature_torso(init) -> nn.Sequential:
    return nn.Sequential(
        init(nn.Conv2d(4, 32, 8, stride=4)), nn.ReLU(), init(nn.Conv2d(32, 64, 4, stride=2)),
        nn.ReLU(), init(nn.Conv2d(64, 64, 3, stride=1)), nn.ReLU(), nn.Flatten(),
        init(nn.Linear(64 * 7 * 7, 512)), nn.ReLU())


def orthogonal(layer: nn.Module, gain: float = np.sqrt(2)) -> nn.Module:
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class ActorCritic(nn.Module):
    def __init__(self, num_actions: int):
        super().__init__()
        self.torso = nature_torso(orthogonal)
        self.policy = orthogonal(nn.Linear(512, num_actions), 0.01)
        self.value = orthogonal(nn.Linear(512, 1), 1.0)

    def act(self, x, action=None):
        hidden = self.torso(x / 255.0)
        dist = Categorical(logits=self.policy(hidden))
        if action is None:
            action = dist.sample()
        return action, dist.log_prob(action), dist.entropy(), self.value(hidden)


class PPOBaseline:
    """CleanRL ppo_atari's hyperparameters: 8 envs x 128 steps, 4 epochs x 4 minibatches."""

    num_envs, num_steps, epochs, minibatches = 8, 128, 4, 4
    gamma, lam, clip, ent_coef, vf_coef, max_grad_norm = 0.99, 0.95, 0.1, 0.01, 0.5, 0.5

    def __init__(self, env_id: str, kwargs: dict, seed: int = 1, sticky: float = 0.25):
        self.envs = gym.vector.SyncVectorEnv(
            [lambda: make_atari_env(env_id, kwargs, sticky) for _ in range(self.num_envs)],
            autoreset_mode=SAME_STEP)
        self.agent = ActorCritic(int(self.envs.single_action_space.n))
        self.optimizer = torch.optim.Adam(self.agent.parameters(), lr=2.5e-4, eps=1e-5)
        shape = (self.num_steps, self.num_envs)
        self.obs = torch.zeros(shape + self.envs.single_observation_space.shape)  # float32
        self.actions, self.logprobs = torch.zeros(shape), torch.zeros(shape)
        self.rewards, self.dones, self.values = torch.zeros(shape), torch.zeros(shape), \
            torch.zeros(shape)
        obs, _ = self.envs.reset(seed=seed)
        self.next_obs, self.next_done = torch.Tensor(obs), torch.zeros(self.num_envs)

    def iteration(self) -> int:
        """One rollout and one update; returns env steps."""
        for step in range(self.num_steps):
            self.obs[step], self.dones[step] = self.next_obs, self.next_done
            with torch.no_grad():
                action, logprob, _, value = self.agent.act(self.next_obs)
            self.values[step] = value.flatten()
            self.actions[step], self.logprobs[step] = action, logprob
            obs, reward, terminated, truncated, _ = self.envs.step(action.cpu().numpy())
            self.rewards[step] = torch.tensor(reward).view(-1)
            self.next_obs = torch.Tensor(obs)
            self.next_done = torch.Tensor(np.logical_or(terminated, truncated))
        advantages, returns = self._gae()
        self._update(advantages, returns)
        return self.num_steps * self.num_envs

    def _gae(self):
        with torch.no_grad():
            next_value = self.agent.act(self.next_obs)[3].reshape(1, -1)
            advantages, last = torch.zeros_like(self.rewards), 0
            for t in reversed(range(self.num_steps)):
                if t == self.num_steps - 1:
                    nonterminal, following = 1.0 - self.next_done, next_value
                else:
                    nonterminal, following = 1.0 - self.dones[t + 1], self.values[t + 1]
                delta = self.rewards[t] + self.gamma * following * nonterminal - self.values[t]
                last = delta + self.gamma * self.lam * nonterminal * last
                advantages[t] = last
        return advantages, advantages + self.values

    def _update(self, advantages, returns) -> None:
        flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
        b_obs, b_actions, b_logprobs = flat(self.obs), flat(self.actions), flat(self.logprobs)
        b_adv, b_returns, b_values = flat(advantages), flat(returns), flat(self.values)
        batch = len(b_obs)
        indices, size, clipfracs = np.arange(batch), batch // self.minibatches, []
        for _ in range(self.epochs):
            np.random.shuffle(indices)
            for start in range(0, batch, size):
                mb = indices[start:start + size]
                _, newlogprob, entropy, newvalue = self.agent.act(b_obs[mb], b_actions.long()[mb])
                logratio = newlogprob - b_logprobs[mb]
                ratio = logratio.exp()
                with torch.no_grad():
                    clipfracs.append(((ratio - 1.0).abs() > self.clip).float().mean().item())
                adv = (b_adv[mb] - b_adv[mb].mean()) / (b_adv[mb].std() + 1e-8)
                pg_loss = torch.max(-adv * ratio,
                                    -adv * ratio.clamp(1 - self.clip, 1 + self.clip)).mean()
                newvalue = newvalue.view(-1)
                clipped = b_values[mb] + (newvalue - b_values[mb]).clamp(-self.clip, self.clip)
                v_loss = 0.5 * torch.max((newvalue - b_returns[mb]) ** 2,
                                         (clipped - b_returns[mb]) ** 2).mean()
                loss = pg_loss - self.ent_coef * entropy.mean() + self.vf_coef * v_loss
                self.optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(self.agent.parameters(), self.max_grad_norm)
                self.optimizer.step()
        y_pred, y_true = b_values.cpu().numpy(), b_returns.cpu().numpy()  # explained variance
        _ = 1 - np.var(y_true - y_pred) / max(np.var(y_true), 1e-8)


class QNetwork(nn.Module):
    def __init__(self, num_actions: int):
        super().__init__()
        self.torso = nature_torso(lambda layer: layer)  # torch's default init, as CleanRL's DQN
        self.head = nn.Linear(512, num_actions)

    def forward(self, x):
        return self.head(self.torso(x / 255.0))


class StackReplay:
    """Whole uint8 frame stacks per transition, next_obs in the following slot (SB3's
    optimize_memory_usage layout: 28 KB per Atari transition)."""

    def __init__(self, capacity: int, obs_shape):
        self.obs = np.zeros((capacity, *obs_shape), np.uint8)
        self.actions = np.zeros(capacity, np.int64)
        self.rewards = np.zeros(capacity, np.float32)
        self.dones = np.zeros(capacity, np.float32)
        self.capacity, self.pos, self.full = capacity, 0, False

    def add(self, obs, next_obs, action, reward, done) -> None:
        self.obs[self.pos], self.obs[(self.pos + 1) % self.capacity] = obs, next_obs
        self.actions[self.pos], self.rewards[self.pos], self.dones[self.pos] = action, reward, done
        self.pos = (self.pos + 1) % self.capacity
        self.full = self.full or self.pos == 0

    def sample(self, batch_size: int):
        if self.full:
            idx = (np.random.randint(1, self.capacity, batch_size) + self.pos) % self.capacity
        else:
            idx = np.random.randint(0, self.pos, batch_size)
        arrays = (self.obs[idx], self.obs[(idx + 1) % self.capacity], self.actions[idx, None],
                  self.rewards[idx], self.dones[idx])
        return tuple(torch.tensor(a) for a in arrays)


class DQNBaseline:
    """CleanRL dqn_atari's hyperparameters: one env, an update of batch 32 every 4 env steps,
    a target copy every 1000 steps; ε fixed (both sides of the bench act at the same ε)."""

    batch_size, train_frequency, target_frequency, gamma = 32, 4, 1000, 0.99

    def __init__(self, env_id: str, kwargs: dict, capacity: int, epsilon: float, seed: int = 1,
                 sticky: float = 0.25):
        self.envs = gym.vector.SyncVectorEnv([lambda: make_atari_env(env_id, kwargs, sticky)],
                                             autoreset_mode=SAME_STEP)
        num_actions = int(self.envs.single_action_space.n)
        self.q_network, self.target_network = QNetwork(num_actions), QNetwork(num_actions)
        self.target_network.load_state_dict(self.q_network.state_dict())
        self.optimizer = torch.optim.Adam(self.q_network.parameters(), lr=1e-4)
        self.replay = StackReplay(capacity, self.envs.single_observation_space.shape)
        self.epsilon, self.global_step = epsilon, 0
        self.obs, _ = self.envs.reset(seed=seed)

    def steps(self, count: int, learn: bool = True) -> int:
        """`count` env steps, with the updates and target copies due in them (if `learn`)."""
        for _ in range(count):
            self.global_step += 1
            if np.random.random() < self.epsilon:
                actions = np.array([self.envs.single_action_space.sample()])
            else:
                q_values = self.q_network(torch.Tensor(self.obs))
                actions = torch.argmax(q_values, dim=1).cpu().numpy()
            next_obs, rewards, terminated, truncated, infos = self.envs.step(actions)
            real_next = next_obs.copy()
            if truncated[0]:
                real_next[0] = infos["final_obs"][0]
            self.replay.add(self.obs[0], real_next[0], actions[0], rewards[0], terminated[0])
            self.obs = next_obs
            if learn and self.global_step % self.train_frequency == 0:
                self._update()
            if learn and self.global_step % self.target_frequency == 0:
                for target, online in zip(self.target_network.parameters(),
                                          self.q_network.parameters()):
                    target.data.copy_(online.data)
        return count

    def _update(self) -> None:
        obs, next_obs, actions, rewards, dones = self.replay.sample(self.batch_size)
        with torch.no_grad():
            target_max, _ = self.target_network(next_obs).max(dim=1)
            td_target = rewards + self.gamma * target_max * (1 - dones)
        old_val = self.q_network(obs).gather(1, actions).squeeze()
        loss = F.mse_loss(td_target, old_val)
        if self.global_step % 100 == 0:  # what CleanRL logs: two host reads every 100 steps
            loss.item(), old_val.mean().item()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
