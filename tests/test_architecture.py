"""Strategies that change the network: CReLU, deep Fourier features, LayerNorm,
normalise-and-project."""

import pytest
import torch
import torch.nn.functional as F
from strategy_helpers import make_learner, optimize, step_context, value_loss

from agents.errors import ConfigError
from agents.plasticity import ops


def doubled_network(strategy: str):
    """A CNN with `strategy` (two outputs per unit) beside a plain one, on the same batch: every
    block's output doubles, the next layer reads twice as many inputs, the heads keep their
    shapes. Returns (network, obs, its features)."""
    plain = make_learner({}, arch="cnn").network
    net = make_learner({strategy: {}}, arch="cnn").network
    obs = torch.randint(0, 11, (5, 7, 7, 3), dtype=torch.uint8)
    out_plain, feats_plain = plain(obs, return_features=True)
    outputs, features = net(obs, return_features=True)
    for name in plain.blocks:
        assert features[name].shape[1] == 2 * feats_plain[name].shape[1]
    for name in list(plain.blocks)[1:]:
        inputs = plain.blocks[name].layer.weight.shape[1]
        assert net.blocks[name].layer.weight.shape[1] == 2 * inputs
    assert {k: v.shape for k, v in outputs.items()} == {k: v.shape for k, v in out_plain.items()}
    return net, obs, features


def test_crelu_doubles_every_block_output_and_keeps_head_shapes():
    crelu, _, feats_crelu = doubled_network("crelu")
    block = crelu.blocks["fc1"]
    x = feats_crelu["conv3"].flatten(1)
    pre = block.layer(x)
    torch.testing.assert_close(feats_crelu["fc1"], torch.cat([F.relu(pre), F.relu(-pre)], 1))


def test_layer_norm_sits_before_every_hidden_nonlinearity():
    net = make_learner({"layer_norm": {}}, arch="cnn").network
    obs = torch.randint(0, 11, (5, 7, 7, 3), dtype=torch.uint8)
    seen = {}
    for name, block in net.blocks.items():
        block.norm.register_forward_hook(lambda m, i, o, name=name: seen.setdefault(name, o))
        assert type(block.norm).__name__ in ("LayerNorm", "GroupNorm")
    _, features = net(obs, return_features=True)
    for name, block in net.blocks.items():
        normalised = seen[name].flatten(1)  # per sample: zero mean, unit variance (affine 1, 0)
        torch.testing.assert_close(normalised.mean(1), torch.zeros(5), atol=1e-5, rtol=0)
        torch.testing.assert_close(normalised.var(1, unbiased=False), torch.ones(5),
                                   atol=1e-3, rtol=0)
        activated = F.relu(seen[name])
        if block.pool:
            activated = F.max_pool2d(activated, block.pool)
        torch.testing.assert_close(features[name], activated)  # the ReLU reads the norm's output


def test_normalize_project_keeps_hidden_weight_norms_at_their_initial_values():
    learner = make_learner({"normalize_project": {}}, arch="cnn", lr=1e-2)
    net = learner.network
    assert all(type(b.norm).__name__ in ("LayerNorm", "GroupNorm") for b in net.blocks.values())
    hidden = net.hidden_layers()
    initial = {n: layer.weight.detach().norm().item() for n, layer in hidden.items()}
    heads_before = [h.weight.detach().clone() for h in net.heads.values()]
    optimize(learner, steps=5, loss_fn=value_loss)
    for name, layer in hidden.items():
        assert layer.weight.norm().item() == pytest.approx(initial[name], rel=1e-5)
    assert all(not torch.equal(h.weight, b) for h, b in zip(net.heads.values(), heads_before))
    plain = make_learner({"layer_norm": {}}, arch="cnn", lr=1e-2)
    plain_initial = {n: m.weight.detach().norm() for n, m in plain.network.hidden_layers().items()}
    optimize(plain, steps=5, loss_fn=value_loss)
    drift = [abs(m.weight.norm() - plain_initial[n]).item()
             for n, m in plain.network.hidden_layers().items()]
    assert max(drift) > 1e-3  # without the projection the norms move


# -- deep Fourier features -----------------------------------------------------------------------
def by_hand(block, x):
    """[sin(z), cos(z)] of the block's own pre-activation z, then its pool."""
    pre = block.layer(x.flatten(1) if block.spec.kind == "linear" else x)
    out = torch.cat([torch.sin(pre), torch.cos(pre)], 1)
    return F.max_pool2d(out, block.pool) if block.pool else out


def test_fourier_features_emit_sin_and_cos_of_each_units_pre_activation():
    net, obs, features = doubled_network("fourier_features")
    x = net._prepare(obs)
    for name, block in net.blocks.items():
        assert block.out_multiplier == 2
        torch.testing.assert_close(features[name], by_hand(block, x))
        x = features[name]
    mlp = make_learner({"fourier_features": {}}).network  # and on an MLP, for a unit by hand
    block, obs = mlp.blocks["fc1"], torch.randn(3, 6)
    z = obs @ block.layer.weight[4] + block.layer.bias[4]
    _, features = mlp(obs, return_features=True)
    torch.testing.assert_close(features["fc1"][:, 4], torch.sin(z))
    torch.testing.assert_close(features["fc1"][:, 16 + 4], torch.cos(z))


def test_fourier_features_refuse_crelu():
    with pytest.raises(ConfigError, match="fourier_features and crelu cannot combine"):
        make_learner({"crelu": {}, "fourier_features": {}})


@pytest.mark.parametrize("reset", [{"redo": {"threshold": 0.9, "every_steps": 1}},
                                   {"cbp": {"replacement_rate": 0.5, "maturity": 0}}])
def test_fourier_features_train_with_unit_resets_on_both_halves(reset, monkeypatch):
    """A reset unit's sin and cos channels both lose their outgoing weights (ops'
    output_channels), and the run stays finite."""
    learner = make_learner({"fourier_features": {}, **reset}, arch="cnn", lr=1e-2)
    net, strategy = learner.network, learner.strategies.strategies[-1]
    reinit, resets = ops.reinit_units, []

    def spy(network, optimizer, name, units, generator):
        resets.append((name, units.tolist()))
        reinit(network, optimizer, name, units, generator)

    monkeypatch.setattr(ops, "reinit_units", spy)
    optimize(learner, steps=3, loss_fn=value_loss)
    reset_units = [(n, u) for n, u in resets if u]
    assert reset_units  # the settings make it act
    name, units = reset_units[-1]
    block = net.blocks[name]
    weight = net.consumers(name)[0].weight
    channels = [u + k * block.spec.out for u in units for k in (0, 1)]  # sin at u, cos at C + u
    columns = weight.view(weight.shape[0], 2 * block.spec.out, -1)[:, channels]
    assert not columns.any()
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert isinstance(strategy.metrics(), dict)


# -- what the architecture strategies log ----------------------------------------------------------
@pytest.mark.parametrize("name,key,reduce", [
    ("crelu", "positive_fraction", lambda f: (f[:, :f.shape[1] // 2] > 0).float().mean()),
    ("fourier_features", "cos_mean", lambda f: f[:, f.shape[1] // 2:].mean()),
    ("layer_norm", "active_fraction", lambda f: (f > 0).float().mean()),
    ("normalize_project", "active_fraction", lambda f: (f > 0).float().mean()),
])
def test_architecture_strategies_log_a_scalar_per_block_from_the_steps_features(name, key,
                                                                                 reduce):
    learner = make_learner({name: {}}, arch="cnn")
    strategy = learner.strategies.strategies[0]
    assert strategy.metrics() == {}  # nothing before the first step
    step = step_context(learner, loss_fn=value_loss)
    learner.optimize(step)
    logged = strategy.metrics()
    for block, features in step.features.items():
        assert logged[f"{key}/{block}"] == pytest.approx(float(reduce(features.detach())))
    if name == "normalize_project":  # how far the step had moved the norms before projecting
        assert 0 < logged["norm_drift"] < 0.1
    if name == "fourier_features":
        assert all(-1 <= v <= 1 for v in logged.values())
    fresh = make_learner({name: {}}, arch="cnn", seed=1)
    fresh.strategies.load_state_dict(learner.strategies.state_dict())
    assert fresh.strategies.strategies[0].metrics() == logged  # a resumed run logs the same
    if name != "normalize_project":  # a checkpoint from before the scalars still loads
        fresh.strategies.load_state_dict({name: {}})
        assert fresh.strategies.strategies[0].metrics() == {}
