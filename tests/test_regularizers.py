"""Loss penalties, proven on the gradients they add in the shared update path."""

import copy

import pytest
import torch
from omegaconf import OmegaConf
from strategy_helpers import make_learner, optimize, step_context, value_loss

from agents.errors import ConfigError
from agents.plasticity import build_strategies
from agents.plasticity.regularizers import (
    as_matrix,
    differentiable_effective_rank,
    weight_layer_params,
)
from analysis.spectral.features import effective_rank


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


def make_low_rank(learner):
    fc1 = learner.network.blocks["fc1"].layer
    with torch.no_grad():  # fc1's features are nearly rank one
        fc1.weight.copy_(torch.outer(torch.rand(16) + 0.5, torch.randn(6)))
        fc1.weight.add_(1e-3 * torch.randn_like(fc1.weight))
        fc1.bias.zero_()

    def fc1_rank():
        with torch.no_grad():
            return effective_rank(learner.network(learner.obs, True)[1]["fc1"])
    return fc1_rank


def test_effective_rank_penalty_raises_the_rank_of_low_rank_features():
    learner = make_learner({"effective_rank": {"mode": "penalty", "coef": 1.0}}, lr=1e-2)
    fc1_rank = make_low_rank(learner)
    start = fc1_rank()
    optimize(learner, steps=20)
    assert start < 1.5 and fc1_rank() > start + 1.0
    strategy = learner.strategies.strategies[0]
    assert set(strategy.metrics()) == {"erank/fc1", "erank/fc2"}


def test_effective_rank_penalty_is_minus_coef_times_the_mean_layer_rank():
    learner = make_learner({"effective_rank": {"mode": "penalty", "coef": 0.3}}, arch="cnn")
    step = step_context(learner)
    penalty = learner.strategies.loss_penalty(step)["effective_rank"]
    ranks = [differentiable_effective_rank(f) for f in step.features.values()]
    torch.testing.assert_close(penalty, -0.3 * sum(ranks) / len(ranks))
    assert len(ranks) == len(learner.network.blocks) > 1


def mean_rank(network, obs):
    _, features = network(obs, return_features=True)
    return torch.stack([differentiable_effective_rank(f) for f in features.values()]).mean()


def test_effective_rank_step_is_a_plain_ascent_step_outside_adam():
    """After every 3rd gradient step, θ += er_lr·∇ER on the sampled observations, and nothing
    else: Adam's moments and .grad are those of a twin without the strategy."""
    er_lr = 0.05
    learner = make_learner({"effective_rank": {"er_batch": 3, "er_lr": er_lr}}, arch="cnn")
    twin = make_learner({}, arch="cnn")
    drawn = []
    sample = learner.ctx.sample_obs
    learner.ctx.sample_obs = lambda n, g: (drawn.append((learner.ctx.update_count, n)),
                                           sample(n, g))[1]
    params, twin_params = list(learner.network.parameters()), list(twin.network.parameters())
    for _ in range(2):  # steps 1, 2: no ER step, the two runs stay bitwise equal
        optimize(learner, loss_fn=value_loss)
        optimize(twin, loss_fn=value_loss)
        assert all(torch.equal(a, b) for a, b in zip(params, twin_params))
    optimize(learner, loss_fn=value_loss)  # step 3: Adam's step, then the ER step
    optimize(twin, loss_fn=value_loss)
    assert drawn == [(3, 96)]  # er_batch × minibatch (under max_obs); the helper gives 32
    reference = copy.deepcopy(twin.network)
    grads = torch.autograd.grad(mean_rank(reference, learner.obs), list(reference.parameters()),
                                allow_unused=True)
    moved = 0.0
    for p, q, g in zip(params, twin_params, grads):
        expected = q.detach() if g is None else q.detach() + er_lr * g
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-8)
        moved = max(moved, (p - q).abs().max().item())
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0)  # no .grad written
        for key in ("exp_avg", "exp_avg_sq"):  # bitwise untouched
            assert torch.equal(learner.optimizer.state[p][key], twin.optimizer.state[q][key])
    assert moved > 1e-4
    heads = {id(p) for h in reference.heads.values() for p in h.parameters()}
    assert all((g is None) == (id(p) in heads) for p, g in zip(reference.parameters(), grads))
    optimize(learner, steps=5, loss_fn=value_loss)  # steps 4..8: the next one at step 6 only
    assert [count for count, _ in drawn] == [3, 6]
    assert set(learner.strategies.metrics()) == {f"effective_rank/erank/{n}"
                                                 for n in learner.network.blocks}


def test_effective_rank_step_raises_the_rank_of_low_rank_features():
    learner = make_learner({"effective_rank": {"er_batch": 1, "er_lr": 0.2}})
    fc1_rank = make_low_rank(learner)
    start = fc1_rank()
    optimize(learner, steps=20)  # a zero loss: Adam does not move, only the ER steps do
    assert start < 1.5 and fc1_rank() > start + 1.0


def test_effective_rank_step_caps_its_observations_at_max_obs():
    learner = make_learner({"effective_rank": {"er_batch": 2, "er_step": 2, "max_obs": 20}})
    asked = []
    learner.ctx.sample_obs = lambda n, g: (asked.append(n), learner.obs[:n])[1]
    forwards = []  # rows of every forward pass: the steps' 32, the ER steps' 20
    learner.network.register_forward_hook(lambda m, args, out: forwards.append(len(args[0])))
    optimize(learner, steps=4)
    assert asked == [20, 20]  # one draw per ER step time, er_step steps on it
    assert forwards.count(20) == 4 and forwards.count(32) == 4


@pytest.mark.parametrize("settings,message", [
    ({"effective_rank": {"coef": 0.1}}, "plasticity.effective_rank.coef: applies to mode penalty "
     "only (mode is step; its settings: er_lr, er_batch, er_step, max_obs)"),
    ({"effective_rank": {"mode": "penalty", "er_batch": 4}},
     "plasticity.effective_rank.er_batch: applies to mode step only"),
    ({"er_l2": {"effective_rank": {"batch_size": 8}}},
     "plasticity.er_l2.effective_rank.batch_size: applies to mode penalty only"),
    ({"effective_rank": {"mode": "both"}},
     "plasticity.effective_rank.mode: 'both' is not one of step, penalty"),
    ({"effective_rank": {"er_batch": 0}}, "plasticity.effective_rank.er_batch must be a positive"),
    ({"weight_decay": {"coef": -1.0}}, "plasticity.weight_decay.coef must be >= 0"),
    ({"er_l2": {"weight_decay": {"coef": -1.0}}},
     "plasticity.er_l2.weight_decay.coef must be >= 0"),
    ({"er_l2": {"betas": [0.9, 1.0]}}, "plasticity.er_l2.betas must be two numbers, each in "
     "[0, 1)"),
])
def test_mode_settings_are_checked(settings, message):
    with pytest.raises(ConfigError) as error:
        build_strategies(OmegaConf.create(settings))
    assert message in str(error.value)


def clipped_grads(network, obs, max_norm):
    outputs = network(obs)
    network.zero_grad()
    value_loss(outputs).backward()
    torch.nn.utils.clip_grad_norm_(network.parameters(), max_norm)


def test_weight_decay_is_adams_coupled_weight_decay_on_the_clipped_gradient():
    learner = make_learner({"weight_decay": {"coef": 0.5}}, arch="cnn")
    plain = make_learner({}, arch="cnn")
    for each in (learner, plain):
        each.max_grad_norm = 0.01  # clipping acts, so decay after it differs from a loss term
    reference = copy.deepcopy(learner.network)
    adam = torch.optim.Adam(reference.parameters(), lr=1e-3, eps=1e-8, weight_decay=0.5)
    assert learner.optimizer.param_groups[0]["weight_decay"] == 0.5
    for _ in range(3):
        clipped_grads(reference, learner.obs, 0.01)
        adam.step()
        optimize(learner, loss_fn=value_loss)
        optimize(plain, loss_fn=value_loss)
    for p, q in zip(learner.network.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
    gap = max((p - q).abs().max().item() for p, q in
              zip(learner.network.parameters(), plain.network.parameters()))
    assert gap > 1e-4  # and decay changed the steps
    norm = torch.cat([p.detach().flatten() for p in learner.network.parameters()]).norm()
    torch.testing.assert_close(learner.strategies.metrics()["weight_decay/weight_norm"], norm)


def test_l2_is_a_loss_term_not_weight_decay():
    learner = make_learner({"l2": {"coef": 0.5}})
    assert learner.optimizer.param_groups[0]["weight_decay"] == 0


def test_er_l2_preset_is_the_seeds_recipe_with_nested_settings():
    preset = make_learner({"er_l2": {"weight_decay": {"coef": 0.2}, "betas": [0.99, 0.99],
                                     "effective_rank": {"er_batch": 2}}})
    group = preset.optimizer.param_groups[0]
    assert (group["weight_decay"], group["betas"]) == (0.2, (0.99, 0.99))
    er = preset.strategies.strategies[0].parts.strategies[1]
    assert (er.settings.mode, er.settings.er_lr, er.settings.er_batch) == ("step", 1e-6, 2)
    default = build_strategies(OmegaConf.create({"er_l2": {}})).strategies[0].settings
    assert (default.effective_rank.mode, default.effective_rank.er_lr,
            default.effective_rank.er_batch, default.weight_decay.coef, default.betas) == (
        "step", 1e-6, 128, 1e-3, None)  # betas: the agent's (the seed's cost first-task AUC)
    assert preset.strategies.loss_penalty(step_context(preset)) == {}  # step mode: no loss term
    optimize(preset, steps=2)
    assert set(preset.strategies.metrics()) == {"er_l2/effective_rank/erank/fc1",
                                                "er_l2/effective_rank/erank/fc2",
                                                "er_l2/weight_decay/weight_norm"}
    keeps = make_learner({"er_l2": {}, "weight_decay": {"coef": 0.1}})
    group = keeps.optimizer.param_groups[0]
    assert group["betas"] == (0.9, 0.999)
    assert group["weight_decay"] == pytest.approx(0.1 + 1e-3)  # the two decays add up


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


def test_c_chain_defaults_follow_the_heads_not_the_agents_name():
    """No policy head (DQN's Q-network): the paper's DQN target and every head; a policy head
    (PPO's, or any policy-gradient agent's): its PPO target and the policy alone."""
    value_net = make_learner({"c_chain": {}}, agent="dqn", heads={"q": 4, "v": 1})
    chain = value_net.strategies.strategies[0]
    assert (chain.target, chain.heads) == (0.01, ["q", "v"])
    chain = make_learner({"c_chain": {}}, agent="toy_pg").strategies.strategies[0]
    assert (chain.target, chain.heads) == (0.05, ["policy"])
