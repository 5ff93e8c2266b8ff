"""A third agent is one module plus its registration (issue 13's acceptance): a minimal policy
gradient agent, registered here, trains on the tiny config through the real runtime with a
strategy and the spectral monitor on, and a run stopped at a checkpoint and resumed equals the
run never stopped, bitwise."""

import io
import signal
from dataclasses import dataclass, field
from typing import Optional

import pytest
import torch
from signals import Signals
from test_resume import MONITOR, assert_same_run, train

from agents.base import AGENTS, Agent, Iteration, finished_episodes, forked_rng, register_agent
from agents.context import StepContext
from agents.networks import make_spec
from agents.policies import log_prob_and_entropy, sample_categorical
from agents.runtime.checkpoints import load_checkpoint
from agents.runtime.resume import resume_training
from agents.runtime.run_dir import read_status


@dataclass
class ToyConfig:
    learning_rate: float = 1e-3
    num_steps: int = 16
    adam_eps: float = 1e-8
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    max_grad_norm: Optional[float] = 0.5


@dataclass
class ToyBatch:
    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor

    def __len__(self):
        return len(self.actions)

    def index(self, idx):
        return ToyBatch(self.obs[idx], self.actions[idx], self.rewards[idx])


class ToyPG(Agent):
    """One-step REINFORCE on immediate rewards, a batch-mean baseline: nothing but the seam."""

    def __init__(self, cfg, env, strategies, device):
        self.cfg, self.device = cfg.toy_pg, device
        spec = make_spec(cfg.network, env.observation_space,
                         heads={"policy": int(env.action_space.n)}, layout=env.layout)
        self.build_learner(cfg, spec, strategies, device)
        self.learner.setup()

    def begin_task(self, envs, seed):
        self.obs = torch.as_tensor(envs.reset(seed=seed)[0])
        self.last_batch = None

    def collect(self, envs, obs, steps, step0=0):
        stored, actions, rewards, episodes = [], [], [], []
        for t in range(steps):
            action = sample_categorical(self.network.act(obs)["policy"])
            next_obs, reward, _, _, info = envs.step(action.numpy())
            stored.append(obs), actions.append(action), rewards.append(torch.as_tensor(reward))
            episodes += finished_episodes(info, step0 + (t + 1) * envs.num_envs)
            obs = torch.as_tensor(next_obs)
        batch = ToyBatch(torch.cat(stored), torch.cat(actions), torch.cat(rewards).float())
        return batch, obs, episodes

    def train_iteration(self, envs, max_steps, generator):
        steps = min(self.cfg.num_steps, max_steps // envs.num_envs)
        batch, self.obs, episodes = self.collect(envs, self.obs, steps, self.ctx.global_step)
        self.ctx.global_step += steps * envs.num_envs
        self.last_batch = batch
        loss, stats, _, features = self.loss(batch, self.learner.train_forward)
        stats.update(self.learner.optimize(StepContext(self.ctx, batch.obs, loss, features)))
        self.learner.after_update()
        return Iteration(stats, episodes)

    def loss(self, batch, forward):
        outputs, features = forward(batch.obs)
        log_p, _ = log_prob_and_entropy(outputs["policy"], batch.actions)
        loss = -(log_p * (batch.rewards - batch.rewards.mean())).mean()
        return loss, {"losses/pg_loss": loss.detach()}, outputs, features

    def probe_batch(self, envs, num_steps, seed):
        with forked_rng(self.device):
            torch.manual_seed(seed)
            obs = torch.as_tensor(envs.reset(seed=seed)[0])
            return self.collect(envs, obs, num_steps)[0]

    def next_observation(self):
        return self.obs

    def state_dict(self):
        return {**self.learner.state_dict(), "obs": self.obs}

    def load_state_dict(self, state):
        self.learner.load_state_dict(state)
        self.obs = state["obs"]


@pytest.fixture
def toy_agent():
    register_agent("toy_pg", config=ToyConfig)(ToyPG)
    yield ToyPG
    del AGENTS["toy_pg"]


RUN = ("tiny.yaml", "agent=toy_pg", "sequence.switch_every=512", "torch_threads=1",
       "checkpoint.every=256", "plasticity.redo={every_steps: 2}", *MONITOR)


def test_a_registered_agent_trains_monitors_and_resumes_exactly(toy_agent, tiny_cfg, tmp_path):
    code, reference = train(tiny_cfg, RUN, tmp_path / "reference")
    assert code == 0 and read_status(reference)["status"] == "finished"
    final = load_checkpoint(reference / "checkpoints" / "final.pt")
    assert final["agent"]["counters"]["global_step"] == 1536
    assert final["agent"]["counters"]["update_count"] == 1536 // (16 * 4)
    assert len(list((reference / "spectra").glob("switch_*_post.npz"))) == 3
    assert "redo" in final["agent"]["strategies"]

    code, stopped = train(tiny_cfg, RUN, tmp_path / "stopped", [Signals(640, signal.SIGINT)])
    assert code == 130
    assert resume_training(stopped, stream=io.StringIO()) == 0
    assert_same_run(stopped, reference)


def test_the_config_offers_a_registered_agent_and_its_section(toy_agent, tiny_cfg):
    cfg = tiny_cfg("agent=toy_pg", "toy_pg.num_steps=8")
    assert cfg.toy_pg.num_steps == 8 and cfg.ppo.num_steps == 64  # every section stays


def test_an_unregistered_agent_is_one_clear_error(tiny_cfg):
    from agents.errors import ConfigError

    with pytest.raises(ConfigError, match="agent: 'toy_pg' is not one of dqn, ppo"):
        tiny_cfg("agent=toy_pg")
