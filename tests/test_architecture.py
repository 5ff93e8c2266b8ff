"""Strategies that change the network: CReLU, LayerNorm, normalise-and-project."""

import pytest
import torch
import torch.nn.functional as F
from strategy_helpers import make_learner, optimize, value_loss


def test_crelu_doubles_every_block_output_and_keeps_head_shapes():
    plain = make_learner({}, arch="cnn").network
    crelu = make_learner({"crelu": {}}, arch="cnn").network
    obs = torch.randint(0, 11, (5, 7, 7, 3), dtype=torch.uint8)
    out_plain, feats_plain = plain(obs, return_features=True)
    out_crelu, feats_crelu = crelu(obs, return_features=True)
    for name in plain.blocks:
        assert feats_crelu[name].shape[1] == 2 * feats_plain[name].shape[1]
    for name in list(plain.blocks)[1:]:  # the next layer reads twice as many inputs
        inputs = plain.blocks[name].layer.weight.shape[1]
        assert crelu.blocks[name].layer.weight.shape[1] == 2 * inputs
    assert {k: v.shape for k, v in out_crelu.items()} == {k: v.shape for k, v in out_plain.items()}
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
