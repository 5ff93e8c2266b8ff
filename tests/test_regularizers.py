"""Loss penalties, proven on the gradients they add in the shared update path."""

import copy

import pytest
import torch
from strategy_helpers import make_learner, optimize, step_context, value_loss

from agents.plasticity.regularizers import (
    as_matrix,
    differentiable_effective_rank,
    weight_layer_params,
)
from analysis.features import effective_rank


def test_l2_adds_exactly_two_coef_theta_to_the_gradient():
    learner = make_learner({"l2": {"coef": 0.3}, "layer_norm": {}}, arch="cnn")
    params = weight_layer_params(learner.network)
    before = [p.detach().clone() for p in params]
    optimize(learner)  # a zero loss: the gradient is the penalty's alone
    for p, theta in zip(params, before):
        torch.testing.assert_close(p.grad, 2 * 0.3 * theta, rtol=1e-6, atol=1e-7)
    norms = [b.norm for b in learner.network.blocks.values()]
    assert all(not p.grad.any() for norm in norms for p in norm.parameters())  # not penalised


def test_l2_init_pulls_toward_the_initial_weights():
    learner = make_learner({"l2_init": {"coef": 0.5}})
    params = weight_layer_params(learner.network)
    initial = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p))
    moved = [p.detach().clone() for p in params]
    optimize(learner)
    for p, theta, theta0 in zip(params, moved, initial):
        torch.testing.assert_close(p.grad, 2 * 0.5 * (theta - theta0), rtol=1e-5, atol=1e-6)
    distance = sum((p - p0).pow(2).sum() for p, p0 in zip(params, initial))
    assert distance < sum((m - p0).pow(2).sum() for m, p0 in zip(moved, initial))


def test_differentiable_effective_rank_matches_the_metric():
    features = torch.randn(40, 3, 5, 2) @ torch.diag(torch.tensor([5.0, 1.0]))
    assert differentiable_effective_rank(features).item() == pytest.approx(
        effective_rank(features), rel=1e-5)
    equal_spectrum = torch.linalg.qr(torch.randn(30, 6)).Q  # six equal singular values
    assert differentiable_effective_rank(equal_spectrum).item() == pytest.approx(6.0, rel=1e-5)


def test_effective_rank_penalty_raises_the_rank_of_low_rank_features():
    learner = make_learner({"effective_rank": {"coef": 1.0}}, lr=1e-2)
    fc1 = learner.network.blocks["fc1"].layer
    with torch.no_grad():  # fc1's features are nearly rank one
        fc1.weight.copy_(torch.outer(torch.rand(16) + 0.5, torch.randn(6)))
        fc1.weight.add_(1e-3 * torch.randn_like(fc1.weight))
        fc1.bias.zero_()

    def fc1_rank():
        with torch.no_grad():
            return effective_rank(learner.network(learner.obs, True)[1]["fc1"])

    start = fc1_rank()
    optimize(learner, steps=20)
    assert start < 1.5 and fc1_rank() > start + 1.0
    strategy = learner.strategies.strategies[0]
    assert set(strategy.metrics()) == {"erank/fc1", "erank/fc2"}


def test_er_l2_preset_is_effective_rank_plus_l2_with_nested_settings():
    preset = make_learner({"er_l2": {"l2": {"coef": 0.2}}})
    parts = make_learner({"effective_rank": {}, "l2": {"coef": 0.2}})
    step_a, step_b = step_context(preset), step_context(parts)
    total = preset.strategies.loss_penalty(step_a)["er_l2"]
    separate = parts.strategies.loss_penalty(step_b)
    torch.testing.assert_close(total, separate["effective_rank"] + separate["l2"])
    assert set(preset.strategies.metrics()) == {"er_l2/effective_rank/erank/fc1",
                                                "er_l2/effective_rank/erank/fc2"}


def test_parseval_gradient_is_four_lambda_gram_deviation_times_w():
    learner = make_learner({"parseval": {"coef": 0.01, "scale": 1.5}}, arch="cnn")
    hidden = learner.network.hidden_layers()
    before = {n: layer.weight.detach().clone() for n, layer in hidden.items()}
    optimize(learner)
    for name, layer in hidden.items():
        w = as_matrix(before[name]).double()
        expected = 0.01 * 4 * (w @ w.T - 1.5 * torch.eye(len(w), dtype=w.dtype)) @ w
        torch.testing.assert_close(as_matrix(layer.weight.grad).double(), expected,
                                   rtol=1e-4, atol=1e-6)
    heads = learner.network.heads.values()
    assert all(not h.weight.grad.any() for h in heads)  # the last layers are left alone


def test_spectral_reg_power_iteration_finds_sigma_max_and_pulls_it_to_target():
    learner = make_learner({"spectral_reg": {"coef": 1.0, "target": 1.0}}, arch="cnn", lr=1e-2)
    strategy = learner.strategies.strategies[0]
    fc1 = learner.network.hidden_layers()["fc1"]
    with torch.no_grad():  # a distinct top singular value of 3 over a flat spectrum of 1
        u, _, vh = torch.linalg.svd(torch.randn_like(fc1.weight), full_matrices=False)
        fc1.weight.copy_(u @ torch.diag(torch.tensor([3.0] + [1.0] * (len(vh) - 1))) @ vh)
    for name, layer in learner.network.hidden_layers().items():
        exact = torch.linalg.matrix_norm(as_matrix(layer.weight.detach()).double(), ord=2)
        estimate = strategy.sigma_max(name, iterations=200)
        assert estimate.item() == pytest.approx(exact.item(), rel=1e-4)
    optimize(learner, steps=40)
    sigma = torch.linalg.matrix_norm(fc1.weight.detach(), ord=2).item()
    assert sigma < 2.0
    assert strategy.metrics()["sigma_max/fc1"].item() == pytest.approx(sigma, rel=0.05)


def test_c_chain_scales_its_coefficient_to_target_times_loss_over_churn():
    learner = make_learner({"c_chain": {"window": 2}}, lr=1e-2)  # PPO: target 0.05, policy head
    chain = learner.strategies.strategies[0]
    assert (chain.target, chain.heads) == (0.05, ["policy"])
    snapshots, losses, churns = [], [], []
    for step in range(3):
        snapshots.append(copy.deepcopy(learner.network))
        with torch.no_grad():
            losses.append(value_loss(learner.network(learner.obs)).abs().item())
            if step:  # churn against the network before the previous step, on the reference
                before = snapshots[-2](learner.obs)["policy"]
                now = learner.network(learner.obs)["policy"]
                churns.append((now - before).pow(2).sum(-1).mean().item())
        stats = learner.optimize(step_context(learner, loss_fn=value_loss))
        if step == 0:
            assert "plasticity/c_chain/penalty" not in stats  # nothing to compare with yet
    coef = 0.05 * (losses[1] + losses[2]) / (churns[0] + churns[1])
    assert chain.metrics()["coef"].item() == pytest.approx(coef, rel=1e-4)
    assert chain.metrics()["churn"].item() == pytest.approx(churns[1], rel=1e-4)
    assert stats["plasticity/c_chain/penalty"].item() == pytest.approx(coef * churns[1], rel=1e-4)


def test_c_chain_defaults_for_dqn():
    chain = make_learner({"c_chain": {}}, agent="dqn").strategies.strategies[0]
    assert (chain.target, chain.heads) == (0.01, ["policy", "value"])  # every head of the net
