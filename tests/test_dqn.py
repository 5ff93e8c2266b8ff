"""DQN: TD targets by hand, episode ends and switches in the buffer, schedules and syncs at their
steps, replay ratio, the monitor's pure loss, and a CLI smoke run (determinism: test_determinism;
strategy hooks: test_strategies)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gymnasium.wrappers.vector import RecordEpisodeStatistics
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.dqn import DQN, ReplayBatch
from agents.errors import ConfigError
from agents.plasticity.base import StrategyStack
from agents.runtime.config import load_config
from envs.families import sync_vector_env
from envs.info import EnvInfo, ObservationLayout

ROOT = Path(__file__).resolve().parent.parent
EPISODE_END = 4  # CounterEnv episodes end when t reaches 4


class CounterEnv(gym.Env):
    """obs = [t, episode]; the step from t earns scale·(t + 1); an episode ends at t = 4,
    terminated when its number is even, truncated when odd. The first reset starts at
    [start, first_episode], so a new task can continue the old task's obs chain exactly."""

    observation_space = gym.spaces.Box(0, 100, (2,), np.float32)
    action_space = gym.spaces.Discrete(3)

    def __init__(self, start=0, first_episode=0, scale=1.0):
        self.t, self.episode, self.scale = start, first_episode - 1, scale
        self.started = False

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if self.started:
            self.t = 0
        self.episode += 1
        self.started = True
        return self._obs(), {}

    def _obs(self):
        return np.array([self.t, self.episode], np.float32)

    def step(self, action):
        reward = self.scale * (self.t + 1)
        self.t += 1
        end = self.t == EPISODE_END
        return self._obs(), reward, end and self.episode % 2 == 0, end and self.episode % 2 == 1, {}


def counter_envs(num_envs, **kwargs):
    return RecordEpisodeStatistics(sync_vector_env(lambda: CounterEnv(**kwargs), num_envs))


class RecordingLogger:
    """What the runtime would log of each iteration: episode returns and stats, by step."""

    def __init__(self):
        self.logged, self.returns = [], []

    def record(self, iteration, step):
        self.returns += [(episode.step, episode.ret) for episode in iteration.episodes]
        self.logged.append((step, {k: float(v) for k, v in iteration.stats.items()}))


LIVE_ENVS = {}  # agent -> the envs its task runs on (the runtime's, in training)


def begin(agent, envs, seed):
    agent.begin_task(envs, seed)
    LIVE_ENVS[agent] = envs


def make_agent(tiny_cfg, *overrides, num_envs=2, reward_transform=None):
    cfg = tiny_cfg(f"env.num_envs={num_envs}", *overrides, path="tiny_dqn.yaml")
    torch.manual_seed(cfg.seed)
    envs = counter_envs(num_envs)
    info = EnvInfo(envs.single_observation_space, envs.single_action_space,
                   ObservationLayout(), reward_transform, replay_frame_stack=1)
    agent = DQN(cfg, info, StrategyStack([]), torch.device("cpu"))
    begin(agent, envs, seed=0)
    return agent


def run_steps(agent, env_steps, logger=None, generator=None):
    """One train_iteration per vector step, so every step can be inspected."""
    logger = logger or RecordingLogger()
    generator = generator or torch.Generator().manual_seed(0)
    for _ in range(env_steps // agent.num_envs):
        iteration = agent.train_iteration(LIVE_ENVS[agent], agent.num_envs, generator)
        logger.record(iteration, agent.ctx.global_step)
    return logger


def perturb(network, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in network.parameters():
            p.add_(torch.randn(p.shape, generator=generator))


def hand_target(agent, obs_row, gamma, n_step, double, switch_cut=None, scale=1.0):
    """The n-step TD target of the transition from obs [t, episode] of CounterEnv, from the
    env's rules alone; switch_cut: the t at which the task switched during that episode."""
    t, episode = int(obs_row[0]), int(obs_row[1])
    end = EPISODE_END if switch_cut is None else min(EPISODE_END, switch_cut)
    steps = min(n_step, end - t)
    ret = sum(gamma**j * scale * (t + j + 1) for j in range(steps))
    if t + steps == EPISODE_END and episode % 2 == 0:
        return ret  # terminated: no bootstrap
    bootstrap = torch.tensor([[t + steps, episode]], dtype=torch.float32)
    with torch.no_grad():
        chooser = agent.network if double else agent.target_network
        action = chooser(bootstrap)["q"].argmax(1)
        value = agent.target_network(bootstrap)["q"][0, action].item()
    return ret + gamma**steps * value


@pytest.mark.parametrize("n_step,double", [(1, False), (1, True), (3, False), (3, True)])
def test_td_targets_match_a_hand_computation(tiny_cfg, n_step, double):
    gamma = 0.5
    agent = make_agent(tiny_cfg, f"dqn.n_step={n_step}", f"dqn.double_dqn={double}",
                       f"dqn.gamma={gamma}", "dqn.learning_starts=1000")
    run_steps(agent, 2 * 11)  # two envs, 11 steps each: episodes end by termination and truncation
    assert agent.ctx.update_count == 0
    perturb(agent.network)  # online != target, so a target from the wrong network shows
    sample = agent.buffer.sample(200, np.random.default_rng(0))
    batch = agent.make_batch(sample)
    rows = {tuple(o.tolist()) for o in sample["obs"]}
    assert {(3.0, 0.0), (3.0, 1.0)} <= rows, "last steps of a terminated and a truncated episode"
    np.testing.assert_array_equal(sample["next_obs"] - sample["obs"],
                                  np.tile([1.0, 0.0], (200, 1)),
                                  err_msg="next obs is the final obs, never the reset obs")
    expected = [hand_target(agent, o, gamma, n_step, double) for o in sample["obs"]]
    torch.testing.assert_close(batch.targets, torch.tensor(expected), rtol=1e-5, atol=1e-5)
    if double:
        single = [hand_target(agent, o, gamma, n_step, False) for o in sample["obs"]]
        assert not np.allclose(single, expected), "double and single targets must differ here"


def test_task_switch_cuts_n_step_windows_and_resyncs_the_target(tiny_cfg):
    gamma = 0.5
    agent = make_agent(tiny_cfg, "dqn.n_step=3", f"dqn.gamma={gamma}",
                       "dqn.learning_starts=1000")
    run_steps(agent, 2 * 6)  # both envs now at [2, 1]: t = 2 of episode 1
    perturb(agent.network)
    # The new task continues the obs chain exactly ([2, 1]) with ten times the rewards: only the
    # switch itself may stop n-step windows there.
    begin(agent, counter_envs(2, start=2, first_episode=1, scale=10.0), seed=1)
    assert all(torch.equal(a, b) for a, b in zip(agent.network.parameters(),
                                                 agent.target_network.parameters()))
    run_steps(agent, 2 * 5)  # [2, 1], [3, 1] end episode 1; then [0, 2] .. [2, 2]
    sample = agent.buffer.sample(300, np.random.default_rng(0))
    targets = agent.make_batch(sample).targets
    seen = set()
    for obs, target in zip(sample["obs"], targets):
        t, episode = obs.tolist()
        seen.add((t, episode))
        if episode == 0:
            expected = hand_target(agent, obs, gamma, 3, False)
        elif episode == 1 and t < 2:  # the old task's last steps: cut at the switch
            expected = hand_target(agent, obs, gamma, 3, False, switch_cut=2)
        else:
            expected = hand_target(agent, obs, gamma, 3, False, scale=10.0)
        assert target.item() == pytest.approx(expected, rel=1e-5)
    assert {(0, 1), (1, 1), (2, 1), (3, 1), (0, 2)} <= seen
    returns = {tuple(o.tolist()): r.item() for o, r in zip(sample["obs"], sample["returns"])}
    assert returns[(0.0, 1.0)] == 1 + gamma * 2 and returns[(1.0, 1.0)] == 2.0


def test_flushing_the_buffer_restarts_learning_starts(tiny_cfg):
    agent = make_agent(tiny_cfg, "dqn.flush_buffer_at_switch=true", "dqn.learning_starts=32",
                       "dqn.sync_target_at_switch=false", num_envs=4)
    run_steps(agent, 48)
    assert agent.ctx.update_count == 5  # train steps at 32, 36, ..., 48
    target_before = [p.clone() for p in agent.target_network.parameters()]
    begin(agent, counter_envs(4), seed=1)
    assert agent.buffer.filled.sum() == 0
    assert all(torch.equal(a, b) for a, b in zip(target_before,
                                                 agent.target_network.parameters()))
    run_steps(agent, 28)
    assert agent.ctx.update_count == 5, "no update before 32 new transitions"
    run_steps(agent, 8)  # steps 77..84 reach 48 + 32 = 80 (and 84)
    assert agent.ctx.update_count == 7


@pytest.mark.parametrize("restart", [False, True])
def test_epsilon_follows_the_schedule(tiny_cfg, restart, monkeypatch):
    # total 3 × 64 steps; fraction 0.25: decays over 48 run steps, or 16 task steps if restarted
    agent = make_agent(tiny_cfg, "sequence.switch_every=64", "dqn.start_e=1.0", "dqn.end_e=0.2",
                       "dqn.exploration_fraction=0.25", "dqn.learning_starts=1000",
                       f"dqn.restart_epsilon_at_switch={restart}", num_envs=8)
    seen = []
    act = agent.act
    monkeypatch.setattr(agent, "act", lambda obs, eps, gen: seen.append(eps) or act(obs, eps, gen))
    run_steps(agent, 64)
    begin(agent, counter_envs(8), seed=1)
    run_steps(agent, 32)
    if restart:  # steps 0, 8, ...: 1 - 0.8·t/16 within each task
        expected = [1.0, 0.6, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 1.0, 0.6, 0.2, 0.2]
    else:
        expected = [1.0, 0.8667, 0.7333, 0.6, 0.4667, 0.3333, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2]
    assert seen == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("tau", [1.0, 0.25])
def test_target_updates_happen_at_the_configured_steps(tiny_cfg, tau):
    agent = make_agent(tiny_cfg, "dqn.learning_starts=32", "dqn.train_frequency=4",
                       "dqn.target_network_frequency=8", f"dqn.tau={tau}", num_envs=4)
    for end in range(4, 68, 4):  # one vector step (4 env steps, one train step at most) each
        target_before = [p.clone() for p in agent.target_network.parameters()]
        run_steps(agent, 4)
        assert agent.ctx.update_count == max(0, (end - 32) // 4 + 1)
        online = list(agent.network.parameters())
        target = list(agent.target_network.parameters())
        if end >= 32 and end % 8 == 0:  # after that step's update
            for t, old, o in zip(target, target_before, online):
                torch.testing.assert_close(t, tau * o + (1 - tau) * old)
        else:
            assert all(torch.equal(t, old) for t, old in zip(target, target_before))


@pytest.mark.parametrize("num_envs,replay_ratio", [(4, 0.25), (4, 1.0), (8, 2.5), (8, 0.5)])
def test_updates_per_env_step_match_the_replay_ratio(tiny_cfg, num_envs, replay_ratio):
    agent = make_agent(tiny_cfg, "dqn.learning_starts=32", "dqn.train_frequency=4",
                       f"dqn.replay_ratio={replay_ratio}", num_envs=num_envs)
    run_steps(agent, 32)
    first = agent.ctx.update_count
    assert first == replay_ratio * 4 and agent.ctx.iteration == 1  # the train step at 32
    run_steps(agent, 96)  # env steps 33..128: 24 train steps
    assert agent.ctx.iteration == 25
    assert (agent.ctx.update_count - first) / 96 == replay_ratio


def test_logs_raw_returns_at_their_step_and_losses_per_iteration(tiny_cfg):
    agent = make_agent(tiny_cfg, "dqn.learning_starts=32", reward_transform=np.sign)
    logger = run_steps(agent, 48)  # one iteration per vector step of 2 env steps
    # Both envs end an episode every 4 vector steps (8 env steps) with raw return 1+2+3+4.
    assert logger.returns == [(step, 10.0) for step in (8, 8, 16, 16, 24, 24, 32, 32, 40, 40,
                                                         48, 48)]
    assert agent.buffer.rewards.max() == 1.0, "the learner sees clipped rewards"
    for step, values in logger.logged:
        assert "charts/epsilon" in values and "charts/learning_rate" in values
        trained = step >= 32 and step % 4 == 0  # a train step falls in this iteration
        assert ("losses/td_loss" in values) == ("losses/q_values" in values) == trained


def test_probe_batch_leaves_training_untouched(tiny_cfg):
    agent = make_agent(tiny_cfg, "dqn.learning_starts=32", "dqn.n_step=3", num_envs=4)
    run_steps(agent, 48)
    counters = (agent.ctx.global_step, agent.ctx.update_count, agent.ctx.iteration)
    buffer_state = {k: v.clone() for k, v in agent.buffer.state_dict().items()}
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    probe_a = agent.probe_batch(counter_envs(3), num_steps=10, seed=5)
    probe_b = agent.probe_batch(counter_envs(3), num_steps=10, seed=5)
    assert isinstance(probe_a, ReplayBatch) and len(probe_a) == 30
    assert all(torch.equal(getattr(probe_a, f), getattr(probe_b, f)) for f in ("obs", "targets"))
    assert (agent.ctx.global_step, agent.ctx.update_count, agent.ctx.iteration) == counters
    assert all(torch.equal(v, buffer_state[k]) for k, v in agent.buffer.state_dict().items())
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)
    loss, stats, _, _ = agent.loss(probe_a, lambda o: agent.network(o, return_features=True))
    assert loss.requires_grad and set(stats) == {"losses/td_loss", "losses/q_values"}


@pytest.mark.parametrize("loss_name,reference", [("mse", F.mse_loss), ("huber", F.huber_loss)])
def test_loss_is_a_pure_function_of_the_online_params(tiny_cfg, loss_name, reference):
    """What the spectral monitor needs: functional_call gives the same loss and gradient as the
    module, and jvp(grad) (a Hessian-vector product) runs through it."""
    agent = make_agent(tiny_cfg, "dqn.double_dqn=true", f"dqn.loss={loss_name}",
                       "dqn.learning_starts=1000")
    run_steps(agent, 24)
    batch = agent.make_batch(agent.buffer.sample(16, np.random.default_rng(0)))
    batch.targets.mul_(10)  # errors beyond 1, so Huber's linear part counts too
    net = agent.network
    params = {k: v.detach() for k, v in net.named_parameters()}

    def loss_of(p):
        forward = lambda o: torch.func.functional_call(net, p, (o,), {"return_features": True})  # noqa: E731
        return agent.loss(batch, forward)[0]

    module_loss = agent.loss(batch, lambda o: net(o, return_features=True))[0]
    q = net(batch.obs)["q"].gather(1, batch.actions[:, None]).squeeze(1)
    torch.testing.assert_close(module_loss, reference(q, batch.targets))
    module_loss.backward()
    grads = torch.func.grad(loss_of)(params)
    for name, p in net.named_parameters():
        torch.testing.assert_close(grads[name], p.grad)
    tangent = {k: torch.ones_like(v) for k, v in params.items()}
    _, hvp = torch.func.jvp(torch.func.grad(loss_of), (params,), (tangent,))
    assert all(torch.isfinite(v).all() for v in hvp.values())


BAD_DQN = [
    ("dqn.replay_ratio=0.3", "dqn.replay_ratio × dqn.train_frequency"),
    ("dqn.learning_starts=8", "dqn.learning_starts (8) must be at least 32"),
    ("dqn.buffer_size=256", "dqn.buffer_size (256) must be at least 272"),
    ("dqn.loss=l1", "dqn.loss: 'l1' is not one of mse, huber"),
    ("dqn.tau=0", "dqn.tau must lie in (0, 1]"),
    ("dqn.end_e=0.5", "dqn.end_e (0.5) and dqn.start_e (0.4)"),
    ("dqn.n_step=0", "dqn.n_step must be a positive integer"),
]


@pytest.mark.parametrize("override,message", BAD_DQN)
def test_bad_dqn_settings_are_one_clear_error(tiny_cfg, override, message):
    extra = ["dqn.start_e=0.4"] if "end_e" in override else []
    with pytest.raises(ConfigError) as error:
        tiny_cfg(override, *extra, path="tiny_dqn.yaml")
    assert message in str(error.value)


def test_cli_smoke_run_writes_the_dqn_tags(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "configs/tiny_dqn.yaml",
                             f"runs_root={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "tiny_dqn").iterdir()
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    expected = {"charts/episodic_return", "charts/episodic_length", "charts/SPS",
                "charts/learning_rate", "charts/task_index", "charts/epsilon", "losses/td_loss",
                "losses/q_values", "task/Empty-5x5-v0/episodic_return"}
    assert expected <= tags, expected - tags
    assert [(e.step, e.value) for e in acc.Scalars("charts/task_index")] == [
        (0, 0.0), (1024, 1.0), (2048, 2.0)]
    epsilon = [e.value for e in acc.Scalars("charts/epsilon")]
    assert epsilon == sorted(epsilon, reverse=True) and epsilon[-1] == pytest.approx(0.01)
    assert load_config(run_dir / "config.yaml").agent == "dqn"
