"""Isometry penalty, AdamO (decoupled isometry step) and TRAC."""

import math

import pytest
import torch
from omegaconf import OmegaConf
from scipy.special import erfi
from strategy_helpers import make_learner, optimize, value_loss
from torch import nn

from agents.errors import ConfigError
from agents.plasticity import build_strategies
from agents.plasticity.isometry import gram_deviation, isometry_gap
from agents.plasticity.optimizers import AdamO, TracTuner
from agents.plasticity.regularizers import as_matrix
from agents.runtime.trainer import Trainer


def linear(out_features, in_features, gain=1.0):
    layer = nn.Linear(in_features, out_features)
    nn.init.orthogonal_(layer.weight, gain)
    return layer


@pytest.mark.parametrize("shape", [(8, 8), (12, 8), (8, 12)])  # square, expanding, shrinking
def test_isometry_gap_vanishes_for_orthogonal_layers(shape):
    generator = torch.Generator().manual_seed(0)
    gap = isometry_gap(linear(*shape), torch.randn(16, shape[1]), generator, probes=4)
    assert gap.item() < 1e-8


def test_isometry_gap_estimates_the_gram_deviation_and_trace_per_dimension():
    layer = linear(5, 5)
    with torch.no_grad():
        layer.weight.mul_(torch.linspace(0.5, 1.5, 5)[:, None])
    w = layer.weight.detach().double()
    deviation = w.T @ w - torch.eye(5, dtype=w.dtype)
    exact = (2 * deviation.pow(2).sum() + deviation.trace() ** 2) / 5  # per probe dimension
    generator = torch.Generator().manual_seed(1)
    estimate = isometry_gap(layer, torch.zeros(1, 5), generator, probes=40000)
    assert estimate.item() == pytest.approx(exact.item(), rel=0.05)


def test_isometry_penalty_gradient_moves_a_scaled_layer_toward_isometry():
    layer = linear(6, 6, gain=2.0)  # all singular values 2
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.SGD(layer.parameters(), lr=1e-3)
    for _ in range(50):
        optimizer.zero_grad()
        isometry_gap(layer, torch.randn(32, 6), generator).backward()
        optimizer.step()
    sigma = torch.linalg.svdvals(layer.weight.detach())
    assert (sigma - 1).abs().max() < 0.5


def test_isometry_strategy_penalises_every_hidden_block_at_the_minibatch():
    learner = make_learner({"isometry": {"coef": 0.5, "samples": 8}}, arch="cnn")
    optimize(learner)
    strategy = learner.strategies.strategies[0]
    assert set(strategy.metrics()) == {f"gap/{n}" for n in learner.network.blocks}
    assert all(layer.weight.grad.any() for layer in learner.network.hidden_layers().values())
    assert not any(h.weight.grad.any() for h in learner.network.heads.values())


def test_adamo_switched_off_is_adam_step_for_step():
    adamo = make_learner({"adamo": {"coef": 0.0}}, arch="cnn")
    adam = make_learner({}, arch="cnn")
    assert isinstance(adamo.optimizer, AdamO)
    assert adamo.optimizer.defaults["lr"] == adam.optimizer.defaults["lr"]
    for _ in range(5):
        optimize(adamo, loss_fn=value_loss)
        optimize(adam, loss_fn=value_loss)
        for a, b in zip(adamo.network.parameters(), adam.network.parameters()):
            assert torch.equal(a, b)


def test_adamo_isometry_step_is_decoupled_from_the_moments():
    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(4))]
    twins = [nn.Parameter(p.detach().clone()) for p in params]
    adamo = AdamO(params, isometry_coef=0.5, lr=0.1)
    adam = torch.optim.Adam(twins, lr=0.1)
    decoupled_total = [torch.zeros_like(p) for p in params]
    for _ in range(4):
        grads = [torch.randn_like(p) for p in params]  # the same loss gradients for both
        regularizer = [torch.randn_like(p) for p in params]
        for p, q, g in zip(params, twins, grads):
            p.grad, q.grad = g.clone(), g.clone()
        adamo.regularizer_grads = dict(zip(params, regularizer))
        adamo.step()
        adam.step()
        for total, r in zip(decoupled_total, regularizer):
            total.add_(r, alpha=-0.1 * 0.5)
    for p, q, total in zip(params, twins, decoupled_total):
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(adamo.state[p][key], adam.state[q][key])  # untouched by r
        torch.testing.assert_close(p.detach(), q.detach() + total)  # θ − lr·λ·Σr on top
    assert adamo.regularizer_grads == {}  # consumed by the step


def test_adamo_strategy_hands_the_isometry_gradient_to_the_optimizer():
    learner = make_learner({"adamo": {"coef": 1e-3}}, arch="cnn")
    seen = {}
    learner.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: seen.update(opt.regularizer_grads))
    optimize(learner, loss_fn=value_loss)
    hidden = {p for layer in learner.network.hidden_layers().values() for p in layer.parameters()}
    assert {p for p in seen} >= {layer.weight for layer in learner.network.hidden_layers().values()}
    assert set(seen) <= hidden | {p for b in learner.network.blocks.values()
                                  for p in b.parameters()}
    assert learner.strategies.metrics().keys() == {f"adamo/gap/{n}" for n in
                                                   learner.network.blocks}


def trac_by_hand(updates, grads, reference, betas, s_init=1e-8, eps=1e-8):
    """TRAC's recursion in plain Python floats, given the base optimizer's updates."""
    s, sigma, variance = [0.0] * len(betas), [1e-8] * len(betas), [0.0] * len(betas)
    delta = [0.0] * len(reference)
    for u, g in zip(updates, grads):
        h = sum(d * gi for d, gi in zip(delta, g))
        delta = [d + ui for d, ui in zip(delta, u)]
        variance = [b * b * v + h * h for b, v in zip(betas, variance)]
        sigma = [b * si - h for b, si in zip(betas, sigma)]
        s = [s_init / erfi(2 ** -0.5) * erfi(si / (2**0.5 * v**0.5 + eps))
             for si, v in zip(sigma, variance)]
    return [r + max(sum(s), 0.0) * d for r, d in zip(reference, delta)], sum(s)


def test_trac_matches_the_published_recursion_and_moves_weights_that_start_away_from_zero():
    torch.manual_seed(0)
    w = nn.Parameter(torch.full((4,), 0.5, dtype=torch.float64))
    base = nn.Parameter(w.detach().clone())  # plain Adam on the same gradients: its updates
    optimizer, plain = torch.optim.Adam([w], lr=0.05), torch.optim.Adam([base], lr=0.05)
    betas = (0.9, 0.99, 0.999)
    tuner = TracTuner(optimizer, betas, s_init=1e-8, eps=1e-8)
    grads, updates = [], []
    for t in range(60):
        g = torch.randn(4, dtype=torch.float64) + 1.0  # Adam's updates do not depend on θ
        w.grad, base.grad = g.clone(), g.clone()
        before = base.detach().clone()
        optimizer.step()
        plain.step()
        grads.append(g.tolist())
        updates.append((base.detach() - before).tolist())
        if t == 0:  # h = 0 on the first step, so s_i = s_init·erfi(β_i)/erfi(1/√2)
            expected = sum(1e-8 * erfi(b) / erfi(1 / math.sqrt(2)) for b in betas)
            assert tuner.scale == pytest.approx(expected, rel=1e-9)
    weights, scale = trac_by_hand(updates, grads, [0.5] * 4, betas)
    assert tuner.s.sum() == pytest.approx(scale, rel=1e-6)
    torch.testing.assert_close(w.detach(), torch.tensor(weights, dtype=torch.float64))
    assert (w.detach() - 0.5).abs().min() > 1e-2  # moved (the authors' package stays at 0.5)
    assert not torch.allclose(w.detach(), base.detach(), atol=1e-3)


def test_trac_keeps_edits_made_between_steps():
    w = nn.Parameter(torch.full((3,), 0.5))
    optimizer = torch.optim.Adam([w], lr=0.1)
    tuner = TracTuner(optimizer, (0.9, 0.99), s_init=1e-8, eps=1e-8)
    for _ in range(3):
        w.grad = torch.ones(3)
        optimizer.step()
    with torch.no_grad():
        w[0] = 7.0  # e.g. a reset
    w.grad = torch.zeros(3)
    optimizer.step()
    assert w[0].item() == pytest.approx(7.0 + tuner.scale * tuner.delta[0][0].item(), abs=1e-6)


def test_trac_strategy_wraps_the_agent_optimizer_and_reports_its_scale():
    with_trac = make_learner({"trac": {}}, arch="cnn", lr=1e-2)
    plain = make_learner({}, arch="cnn", lr=1e-2)
    optimize(with_trac, steps=3, loss_fn=value_loss)
    optimize(plain, steps=3, loss_fn=value_loss)
    assert type(with_trac.optimizer) is torch.optim.Adam  # hooks, not a new optimizer class
    moved = [(a - b).abs().max().item() for a, b in
             zip(with_trac.network.parameters(), plain.network.parameters())]
    assert max(moved) > 1e-4
    assert set(with_trac.strategies.metrics()) == {"trac/scale"}


@pytest.mark.parametrize("shape", [(12, 8), (8, 12)])  # widens: WᵀW; narrows: WWᵀ
def test_gram_estimator_is_the_gram_deviation_of_the_smaller_side(shape):
    torch.manual_seed(0)
    w = torch.randn(*shape, dtype=torch.float64)
    small = (w.T @ w if shape[0] >= shape[1] else w @ w.T).tolist()
    by_hand = sum((small[i][j] - float(i == j)) ** 2 for i in range(len(small))
                  for j in range(len(small)))
    assert len(small) == 8
    assert gram_deviation(w).item() == pytest.approx(by_hand, rel=1e-12)
    conv = torch.randn(4, 3, 2, 2, dtype=torch.float64)  # a conv kernel as (out, in·k·k)
    flat = conv.reshape(4, 12)
    expected = (flat @ flat.T - torch.eye(4, dtype=flat.dtype)).pow(2).sum()
    assert gram_deviation(conv).item() == pytest.approx(expected.item(), rel=1e-12)


@pytest.mark.parametrize("shape", [(8, 8), (12, 8), (8, 12)])
def test_gram_estimator_vanishes_for_orthogonal_layers(shape):
    assert gram_deviation(linear(*shape).weight).item() < 1e-10
    assert gram_deviation(linear(*shape, gain=2.0).weight).item() > 1.0


@pytest.mark.parametrize("name", ["isometry", "adamo"])
def test_gram_estimator_in_both_strategies_penalises_every_hidden_layer(name):
    learner = make_learner({name: {"coef": 0.5, "estimator": "gram"}}, arch="cnn")
    before = {n: layer.weight.detach().clone()
              for n, layer in learner.network.hidden_layers().items()}
    seen = {}
    if name == "adamo":
        learner.optimizer.register_step_pre_hook(
            lambda opt, args, kwargs: seen.update(opt.regularizer_grads))
    optimize(learner, loss_fn=value_loss)
    metrics = learner.strategies.strategies[0].metrics()
    assert set(metrics) == {f"gap/{n}" for n in learner.network.blocks}
    for block, weight in before.items():  # orthogonal init with gain √2: d·(2 − 1)², d the
        gap = gram_deviation(weight).item()  # smaller side
        assert metrics[f"gap/{block}"].item() == pytest.approx(gap, rel=1e-5)
        assert gap == pytest.approx(min(as_matrix(weight).shape), rel=1e-4)
    if name == "adamo":  # the decoupled step's r is ∇R of the weights before the step
        for block, layer in learner.network.hidden_layers().items():
            weight = before[block].clone().requires_grad_(True)
            (expected,) = torch.autograd.grad(gram_deviation(weight), weight)
            torch.testing.assert_close(seen[layer.weight], expected, rtol=1e-5, atol=1e-6)


def test_gram_estimator_refuses_jacobian_only_settings():
    with pytest.raises(ConfigError, match="plasticity.adamo.probes: applies to estimator "
                                          "jacobian only"):
        build_strategies(OmegaConf.create({"adamo": {"estimator": "gram", "probes": 4}}))
    with pytest.raises(ConfigError, match="plasticity.isometry.estimator: 'svd' is not one of"):
        build_strategies(OmegaConf.create({"isometry": {"estimator": "svd"}}))


def test_adamo_takes_weight_decay_and_er_l2_betas_and_trac_wraps_it():
    learner = make_learner({"adamo": {}, "weight_decay": {"coef": 0.01},
                            "er_l2": {"betas": [0.99, 0.99]}, "trac": {}}, arch="cnn")
    assert isinstance(learner.optimizer, AdamO)
    group = learner.optimizer.param_groups[0]
    assert group["weight_decay"] == pytest.approx(0.01 + 1e-3)
    assert group["betas"] == (0.99, 0.99)
    optimize(learner, steps=2, loss_fn=value_loss)
    assert "trac/scale" in learner.strategies.metrics()


@pytest.mark.parametrize("agent", ["ppo", "dqn"])
def test_agent_adam_betas_reach_the_optimizer(agent, tiny_cfg):
    path = "tiny_dqn.yaml" if agent == "dqn" else "tiny.yaml"
    cfg = tiny_cfg(f"{agent}.adam_betas=[0.99,0.95]", path=path)
    optimizer = Trainer(cfg).agent.learner.optimizer
    assert optimizer.param_groups[0]["betas"] == (0.99, 0.95)
    default = Trainer(tiny_cfg(path=path)).agent.learner.optimizer
    assert default.param_groups[0]["betas"] == (0.9, 0.999)
    preset = Trainer(tiny_cfg("plasticity.er_l2.betas=[0.99,0.99]", path=path)
                     ).agent.learner.optimizer
    assert preset.param_groups[0]["betas"] == (0.99, 0.99)
    kept = Trainer(tiny_cfg(f"{agent}.adam_betas=[0.5,0.6]", "plasticity.er_l2={}",
                            path=path)).agent.learner.optimizer  # betas null: the agent's
    assert kept.param_groups[0]["betas"] == (0.5, 0.6)


@pytest.mark.parametrize("value", ["[0.9,1.0]", "[0.9]", "[-0.1,0.9]", "[0.9,0.99,0.999]"])
def test_a_bad_adam_beta_is_one_config_error(value, tiny_cfg):
    with pytest.raises(ConfigError) as error:
        tiny_cfg(f"ppo.adam_betas={value}")
    assert str(error.value).startswith("ppo.adam_betas must be two numbers, each in [0, 1)")
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="dqn.adam_betas must be two numbers"):
        tiny_cfg(f"dqn.adam_betas={value}")
