"""PPO's action distributions and the networks continuous control needs: the Gaussian's numbers
against torch.distributions, separate actor and critic towers, the constant log-std head, tanh
and lecun_uniform."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from agents.errors import ConfigError
from agents.networks import ConstantHead, Network, NetworkConfig, make_spec
from agents.policies import (
    CategoricalPolicy,
    GaussianPolicy,
    gaussian_log_prob_and_entropy,
    policy_for,
)

BOX = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
OBS = gym.spaces.Box(-np.inf, np.inf, (5,), np.float32)


def net_cfg(**changes):
    return OmegaConf.merge(OmegaConf.structured(NetworkConfig), {"arch": "mlp", **changes})


def actor_critic(**changes) -> Network:
    policy = GaussianPolicy(BOX)
    spec = make_spec(net_cfg(**{"separate_heads": True, "hidden_sizes": [8, 6], **changes}), OBS,
                     heads={**policy.heads, "value": 1}, head_gains={"policy": 0.01},
                     towers={"policy": "actor", "value": "critic"},
                     constant_heads=policy.constant_heads)
    return Network(spec)


def test_gaussian_log_prob_and_entropy_are_torch_normals():
    gen = torch.Generator().manual_seed(0)
    mean = torch.randn(64, 3, generator=gen, dtype=torch.float64)
    log_std = torch.randn(3, generator=gen, dtype=torch.float64).expand(64, 3)
    actions = 3 * torch.randn(64, 3, generator=gen, dtype=torch.float64)
    normal = torch.distributions.Normal(mean, log_std.exp())
    log_prob, entropy = gaussian_log_prob_and_entropy(mean, log_std, actions)
    torch.testing.assert_close(log_prob, normal.log_prob(actions).sum(-1), rtol=1e-12, atol=0)
    torch.testing.assert_close(entropy, normal.entropy().sum(-1), rtol=1e-12, atol=0)


def test_gaussian_sample_is_cleanrls_draw_and_unclipped():
    """Normal(mean, std).sample() from the same RNG state, and left outside the action bounds:
    the env clips (envs/mujoco.py), the log-prob scores what was sampled."""
    policy = GaussianPolicy(BOX)
    outputs = {"policy": torch.zeros(4096, 3), "log_std": torch.zeros(4096, 3)}
    torch.manual_seed(5)
    ours = policy.sample(outputs)
    torch.manual_seed(5)
    theirs = torch.distributions.Normal(outputs["policy"], outputs["log_std"].exp()).sample()
    assert torch.equal(ours, theirs)
    assert (ours.abs() > 1).float().mean() > 0.25  # std 1: about a third fall outside [-1, 1]


def test_policy_for_picks_by_action_space_and_refuses_the_rest():
    assert isinstance(policy_for(gym.spaces.Discrete(4)), CategoricalPolicy)
    assert isinstance(policy_for(BOX), GaussianPolicy)
    with pytest.raises(ConfigError, match="Discrete or Box"):
        policy_for(gym.spaces.MultiDiscrete([2, 3]))
    with pytest.raises(ConfigError, match="must be a vector"):
        policy_for(gym.spaces.Box(-1, 1, (2, 2)))


def test_separate_heads_build_an_actor_and_a_critic_that_share_nothing():
    network = actor_critic()
    assert list(network.blocks) == ["actor_fc1", "actor_fc2", "critic_fc1", "critic_fc2"]
    assert network.towers == {"actor": ["actor_fc1", "actor_fc2"],
                              "critic": ["critic_fc1", "critic_fc2"]}
    obs = torch.randn(7, 5)
    outputs, features = network(obs, return_features=True)
    assert outputs["policy"].shape == (7, 3) and outputs["value"].shape == (7, 1)
    assert torch.equal(outputs["log_std"], torch.zeros(7, 3))  # std 1 at init
    assert set(features) == set(network.blocks)
    params = dict(network.named_parameters())
    for head, own, other in (("policy", "actor", "critic"), ("value", "critic", "actor")):
        grads = torch.autograd.grad(network(obs)[head].sum(), list(params.values()),
                                    allow_unused=True)
        touched = {name for name, g in zip(params, grads) if g is not None and g.abs().sum() > 0}
        assert any(f"blocks.{own}_" in name for name in touched)
        assert not any(f"blocks.{other}_" in name for name in touched), (head, touched)
    # The critic's first block reads the observation; its last feeds the value head only.
    inputs = network.block_inputs(obs, features)
    assert torch.equal(inputs["critic_fc1"], obs) and inputs["critic_fc2"] is features[
        "critic_fc1"]
    assert network.consumers("critic_fc2") == [network.heads["value"]]
    assert network.consumers("actor_fc1") == [network.blocks["actor_fc2"].layer]
    # Constant heads are outputs but not weight layers (no initialiser, no L2 by layer).
    assert isinstance(network.heads["log_std"], ConstantHead)
    assert "heads.log_std" not in network.weight_layers()


def test_a_shared_torso_is_what_it_always_was():
    spec = make_spec(net_cfg(hidden_sizes=[8]), OBS, heads={"policy": 3, "value": 1})
    network = Network(spec)
    assert list(network.blocks) == ["fc1"] and network.towers == {"": ["fc1"]}
    assert network.consumers("fc1") == [network.heads["policy"], network.heads["value"]]


def test_tanh_and_lecun_uniform():
    network = actor_critic(activation="tanh", init="lecun_uniform")
    _, features = network(torch.randn(256, 5), return_features=True)
    assert all((f.abs() < 1).all() and (f < 0).any() for f in features.values())
    for name, layer in network.weight_layers().items():
        bound = math.sqrt(3 / layer.in_features)
        assert layer.weight.abs().max() <= bound, name
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
    big = actor_critic(init="lecun_uniform", hidden_sizes=[400, 400]).blocks["actor_fc2"].layer
    assert big.weight.var().item() == pytest.approx(1 / 400, rel=0.02)  # Var U(±b) = b²/3
    # The orthogonal default keeps CleanRL's gains: a near-zero policy head.
    assert actor_critic().heads["policy"].weight.norm() < 0.05


@pytest.mark.parametrize("key,value", [("activation", "gelu"), ("init", "xavier")])
def test_unknown_activation_or_init_is_one_line(key, value, tiny_cfg):
    with pytest.raises(ConfigError, match=f"network.{key}"):
        tiny_cfg(f"network.{key}={value}")
