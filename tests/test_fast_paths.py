"""Speed never changes results: every fast path against the plain one it replaces."""

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch
from ale_py.env import AtariEnv
from omegaconf import OmegaConf

from agents.adam import adam_factory
from agents.networks import Network, NetworkConfig, make_spec
from agents.policies import log_prob_and_entropy, sample_categorical
from agents.runtime.trainer import Trainer
from envs import atari, minigrid
from envs.config import EnvConfig
from envs.tasks import TaskSpec


@pytest.mark.parametrize("game, min_episodes", [("ALE/Breakout-v5", 1), ("ALE/Pong-v5", 0)])
def test_ale_vector_env_gives_the_gymnasium_pipelines_frames(game, min_episodes):
    """Without sticky actions and no-op starts both backends are deterministic: the same frames
    (zero-padded first stacks, FIRE pressed for one frame), rewards, ends and final frames."""
    env_cfg = OmegaConf.merge(OmegaConf.structured(EnvConfig),
                              {"sticky_actions": 0.0, "noop_max": 0})
    task, n = TaskSpec(game), 2
    fast = atari.make_vector(task, OmegaConf.merge(env_cfg, {"backend": "ale_vector"}), n, False)
    plain = atari.make_vector(task, OmegaConf.merge(env_cfg, {"backend": "gymnasium"}), n, False)
    assert type(fast).__name__ == "AtariVectorEnv" and type(plain).__name__ == "SyncVectorEnv"
    obs_fast, _ = fast.reset(seed=5)
    obs_plain, _ = plain.reset(seed=5)
    np.testing.assert_array_equal(obs_fast, obs_plain)
    assert not obs_plain[:, :-1].any() and obs_plain[:, -1].any()  # zero padding, a real frame
    rng, episodes = np.random.default_rng(0), 0
    for _ in range(400):
        actions = rng.integers(0, fast.single_action_space.n, n)
        step_fast, step_plain = fast.step(actions), plain.step(actions)
        for got, want in zip(step_fast[:4], step_plain[:4]):  # obs, reward, terminated, truncated
            np.testing.assert_array_equal(got, want)
        done = np.logical_or(step_plain[2], step_plain[3])
        for env in np.flatnonzero(done):
            np.testing.assert_array_equal(step_fast[4]["final_obs"][env],
                                          step_plain[4]["final_obs"][env])
        episodes += done.sum()
    assert episodes >= min_episodes  # Breakout: autoresets were compared too
    fast.close()
    plain.close()


def test_screenless_atari_env_gives_the_stock_envs_frames(monkeypatch):
    """The gymnasium pipeline over ScreenlessAtariEnv against the same wrappers over ale-py's
    AtariEnv, in a game mode, with sticky actions and no-op starts (seeded): the same frames,
    rewards and ends, while the inner env's own observation is blank."""
    env_cfg = OmegaConf.merge(OmegaConf.structured(EnvConfig), {"backend": "gymnasium"})
    task = TaskSpec("ALE/Breakout-v5", kwargs={"mode": 4})
    ours = atari.make_single(task, env_cfg, False)
    make = gym.make
    monkeypatch.setattr(gym, "make", lambda spec, **kwargs: make(
        dataclasses.replace(spec, entry_point=AtariEnv), **kwargs))
    stock = atari.make_single(task, env_cfg, False)
    assert type(ours.unwrapped) is atari.ScreenlessAtariEnv and type(stock.unwrapped) is AtariEnv
    assert ours.spec.id == stock.spec.id and ours.unwrapped._game_mode == 4
    np.testing.assert_array_equal(ours.reset(seed=3)[0], stock.reset(seed=3)[0])
    rng, ends, screens = np.random.default_rng(0), 0, set()
    for _ in range(600):
        action = int(rng.integers(0, ours.action_space.n))
        got, want = ours.step(action), stock.step(action)
        for a, b in zip(got[:4], want[:4]):
            np.testing.assert_array_equal(a, b)
        screens.add(got[0].tobytes())
        if got[2] or got[3]:
            ends += 1
            np.testing.assert_array_equal(ours.reset()[0], stock.reset()[0])
    assert ends >= 1 and len(screens) > 100  # episodes ended, and the frames moved
    assert not ours.unwrapped.step(0)[0].any() and stock.unwrapped.step(0)[0].any()


FRAMES = ((4, 84, 84), 255, atari.LAYOUT)  # shape, highest value, observation layout
GRID = ((7, 7, 3), 10, minigrid.LAYOUT)


def twin_networks(shape, high, layout):
    """The same initial weights in the NCHW and the NHWC (channels_last) memory layout."""
    space = gym.spaces.Box(0, high, shape, np.uint8)
    nets = []
    for channels_last in (False, True):
        cfg = OmegaConf.merge(OmegaConf.structured(NetworkConfig), {"channels_last": channels_last})
        torch.manual_seed(0)
        nets.append(Network(make_spec(cfg, space, {"policy": 6, "value": 1}, layout=layout)))
    obs = torch.randint(0, high + 1, (32, *shape), dtype=torch.uint8,
                        generator=torch.Generator().manual_seed(1))
    return nets, obs


@pytest.mark.parametrize("shape, high, layout", [FRAMES, GRID])
def test_channels_last_matches_the_default_layout(shape, high, layout):
    nets, obs = twin_networks(shape, high, layout)
    layouts, results = [], []
    for net in nets:  # SGD: Adam's first steps would magnify round-off in near-zero gradients
        optimizer = torch.optim.SGD(net.parameters(), lr=1e-2)
        for _ in range(3):
            outputs, features = net(obs, return_features=True)
            loss = outputs["value"].square().mean() - outputs["policy"].log_softmax(-1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        layouts.append(features["conv1"].is_contiguous(memory_format=torch.channels_last))
        results.append((outputs, [(p.detach().clone(), p.grad) for p in net.parameters()]))
    assert layouts == [False, True]  # the lever really switches the layout
    (out_a, params_a), (out_b, params_b) = results
    for key in out_a:
        torch.testing.assert_close(out_a[key], out_b[key], rtol=1e-4, atol=1e-5)
    for (param_a, grad_a), (param_b, grad_b) in zip(params_a, params_b):
        torch.testing.assert_close(grad_a, grad_b, rtol=1e-4, atol=1e-5 * grad_a.abs().max())
        torch.testing.assert_close(param_a, param_b, rtol=1e-4, atol=1e-6)


def test_learners_fused_adam_matches_the_per_tensor_adam():
    """The learner's fused Adam takes the steps of torch's per-tensor loop (its CPU default) to
    round-off, gradients of every scale included."""
    (net, twin), _ = twin_networks(*GRID)
    twin.load_state_dict(net.state_dict())
    initial = [p.detach().clone() for p in net.parameters()]
    fast = adam_factory(1e-3, 1e-5)(net.parameters())
    plain = torch.optim.Adam(twin.parameters(), lr=1e-3, eps=1e-5, foreach=False)
    assert fast.defaults["fused"]
    generator = torch.Generator().manual_seed(0)
    for step in range(20):
        for a, b in zip(net.parameters(), twin.parameters()):
            a.grad = torch.randn(a.shape, generator=generator) * 10.0 ** -(step % 7)
            b.grad = a.grad.clone()
        fast.step()
        plain.step()
    for a, b, start in zip(net.parameters(), twin.parameters(), initial):
        assert (a - start).abs().max() > 1e-3  # moved ~lr a step
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def runs_onednn_convolutions(net, obs, act: bool) -> bool:
    with torch.profiler.profile() as prof:
        net.act(obs) if act else net(obs)
    return any(event.key == "aten::mkldnn_convolution" for event in prof.key_averages())


@pytest.mark.parametrize("batch, native", [(8, True), (32, False)])
def test_acting_on_tiny_images_matches_the_onednn_forward(batch, native):
    """Network.act runs a few MiniGrid views through torch's native convolutions (oneDNN's
    fixed cost dominates there): the same outputs as the oneDNN forward, to round-off."""
    (_, net), obs = twin_networks(*GRID)
    obs = obs[:batch]
    with torch.no_grad():
        plain = net(obs)
    fast = net.act(obs)
    assert torch.backends.mkldnn.enabled  # restored
    for key in plain:
        torch.testing.assert_close(fast[key], plain[key], rtol=1e-5, atol=1e-6)
    assert runs_onednn_convolutions(net, obs, act=False)
    assert runs_onednn_convolutions(net, obs, act=True) is not native


def test_sample_categorical_draws_what_multinomial_draws():
    logits = torch.randn(4096, 7, generator=torch.Generator().manual_seed(0)) * 3
    torch.manual_seed(5)
    fast = sample_categorical(logits)
    torch.manual_seed(5)
    plain = torch.multinomial(logits.softmax(-1), 1, True).squeeze(-1)
    assert torch.equal(fast, plain)
    draws = sample_categorical(logits[:1].expand(20000, 7))
    counts = torch.bincount(draws, minlength=7) / 20000
    torch.testing.assert_close(counts, logits[0].softmax(-1), rtol=0, atol=0.015)


def test_log_prob_and_entropy_match_the_categorical_distribution():
    logits = (torch.randn(512, 7, generator=torch.Generator().manual_seed(0)) * 10)
    logits[0, 3] = -1e4  # a nearly impossible action: no NaN in the entropy
    actions = torch.randint(0, 7, (512,), generator=torch.Generator().manual_seed(1))
    grads = []
    for fast in (True, False):
        leaf = logits.clone().requires_grad_(True)
        if fast:
            log_prob, entropy = log_prob_and_entropy(leaf, actions)
        else:
            dist = torch.distributions.Categorical(logits=leaf)
            log_prob, entropy = dist.log_prob(actions), dist.entropy()
        (log_prob.sum() + entropy.sum()).backward()
        grads.append((log_prob.detach(), entropy.detach(), leaf.grad))
    for fast, plain in zip(*grads):
        torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)


def test_rollout_stores_the_policys_log_probabilities(tiny_cfg):
    """The rollout's log-probabilities, computed once from the stored logits, are those of
    Categorical(logits) at the taken actions under the network's plain forward pass."""
    trainer = Trainer(tiny_cfg())
    agent = trainer.agent
    envs = trainer.env_factory.make_vector(trainer.sequence.tasks[0])
    agent.begin_task(envs, seed=3)
    batch, _, _ = agent.rollout(envs, agent.next_obs, agent.next_done, 16)
    envs.close()
    with torch.no_grad():
        out = agent.network(batch.obs)
    dist = torch.distributions.Categorical(logits=out["policy"])
    torch.testing.assert_close(batch.logprobs, dist.log_prob(batch.actions), rtol=1e-5,
                               atol=1e-5)
    torch.testing.assert_close(batch.values, out["value"].squeeze(-1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("epsilon", [0.0, 0.5, 1.0])
def test_dqn_acting_equals_plain_epsilon_greedy(tiny_cfg, epsilon):
    """act() skips the forward pass when every env explores; the actions stay those of the plain
    rule torch.where(explore, random, greedy) with the same draws."""
    trainer = Trainer(tiny_cfg(path="tiny_dqn.yaml"))
    agent = trainer.agent
    obs = np.random.default_rng(0).integers(0, 11, (64, 7, 7, 3), dtype=np.uint8)
    actions = agent.act(obs, epsilon, torch.Generator().manual_seed(4))
    generator = torch.Generator().manual_seed(4)
    explore = torch.rand(64, generator=generator) < epsilon
    random_actions = torch.randint(agent.num_actions, (64,), generator=generator)
    with torch.no_grad():
        greedy = agent.network(torch.as_tensor(obs))["q"].argmax(1)
    np.testing.assert_array_equal(actions, torch.where(explore, random_actions, greedy).numpy())


@pytest.mark.slow  # compiling takes 15-30 s on 2 cores
def test_compiled_update_matches_eager(tiny_cfg):
    """compile=true: the gradient steps' torch.compile'd forward/backward gives the eager losses,
    gradients and, after a whole PPO update (8 Adam steps), parameters, to round-off."""
    def update(compile):
        torch._dynamo.reset()
        trainer = Trainer(tiny_cfg(f"compile={compile}"))
        agent = trainer.agent
        envs = trainer.env_factory.make_vector(trainer.sequence.tasks[0])
        agent.begin_task(envs, seed=3)
        torch.manual_seed(0)
        batch, _, _ = agent.rollout(envs, agent.next_obs, agent.next_done, 16)
        envs.close()
        loss = agent.loss(batch, agent.learner.train_forward)[0]
        grads = torch.autograd.grad(loss, list(agent.network.parameters()))
        stats = agent.update(batch, torch.Generator().manual_seed(0))
        assert bool(torch._dynamo.utils.counters["stats"]["unique_graphs"]) == compile
        return loss, grads, stats, [p.detach() for p in agent.network.parameters()]

    eager, compiled = update(False), update(True)
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=1e-6)
    for got, want in zip(compiled[1], eager[1]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * want.abs().max())
    for key in eager[2]:
        torch.testing.assert_close(compiled[2][key], eager[2][key], rtol=1e-4, atol=1e-5)
    for got, want in zip(compiled[3], eager[3]):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
