"""Weight clipping, proven on the weights: after every step each weight and bias lies in
[−κ·s, κ·s], s its layer's initialisation bound, and every entry already inside is untouched."""

import math

import pytest
import torch
from strategy_helpers import make_learner, optimize, value_loss


def clipping(learner):
    return learner.strategies.strategies[0]


def expected_bound(init: str, layer) -> float:
    fan_in = layer.weight[0].numel()
    return math.sqrt(3 / fan_in) if init == "lecun_uniform" else 1 / math.sqrt(fan_in)


def after_adam(learner) -> dict:
    """Filled at every step with each layer's (weight, bias) right after the optimizer's step,
    before any post-step hook: what the clip starts from."""
    taken, step = {}, learner.optimizer.step

    def stepped(*args, **kwargs):
        result = step(*args, **kwargs)
        taken.update({n: (m.weight.detach().clone(), m.bias.detach().clone())
                      for n, m in learner.network.weight_layers().items()})
        return result

    learner.optimizer.step = stepped
    return taken


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("init", ["orthogonal", "lecun_uniform"])
def test_after_each_step_weights_lie_in_the_box_and_those_inside_are_untouched(arch, init):
    kappa = 0.8  # narrower than the initial weights, so that the step really clips
    learner = make_learner({"weight_clipping": {"kappa": kappa}}, arch=arch, lr=5e-2)
    if init == "lecun_uniform":  # the same learner, initialised as Flax does
        learner.network.spec.init = init
        learner.network.reset_parameters()
        clipping(learner).setup(learner.ctx)
    stepped = after_adam(learner)
    for _ in range(3):
        optimize(learner, loss_fn=value_loss)
        clipped = entries = 0
        for name, layer in learner.network.weight_layers().items():
            bound = torch.tensor(kappa * expected_bound(init, layer), dtype=torch.float32)
            for param, before in zip((layer.weight, layer.bias), stepped[name]):
                inside = before.abs() <= bound
                assert (param.abs() <= bound).all()
                assert torch.equal(param[inside], before[inside])  # bitwise
                assert torch.equal(param[~inside], before[~inside].sign() * bound)  # on the edge
                clipped, entries = clipped + int((~inside).sum()), entries + param.numel()
        assert clipped > 0
        assert clipping(learner).metrics()["clipped_fraction"] == pytest.approx(clipped / entries)


def test_the_defaults_are_the_papers_ppo_kappa_3_with_heads_clipped_and_heads_can_be_spared():
    learner = make_learner({"weight_clipping": {}})
    strategy = clipping(learner)
    assert (strategy.settings.kappa, strategy.settings.clip_heads) == (3.0, True)
    fc1 = learner.network.blocks["fc1"].layer  # fan-in 6: 3/√6 for weight and bias alike
    bounds = {id(p): b for p, b in strategy.bounds}
    assert bounds[id(fc1.weight)] == bounds[id(fc1.bias)] == pytest.approx(3 / math.sqrt(6))
    assert len(strategy.bounds) == 2 * len(learner.network.weight_layers())
    with torch.no_grad():  # biases are clipped too, at their layer's bound (the authors' code)
        fc1.bias[0], fc1.bias[1] = 10.0, -10.0
    optimize(learner)
    assert fc1.bias[:2].tolist() == pytest.approx([3 / math.sqrt(6), -3 / math.sqrt(6)])

    spared = make_learner({"weight_clipping": {"kappa": 1e-3, "clip_heads": False}}, lr=1e-2)
    heads = {n: h.weight.detach().clone() for n, h in spared.network.heads.items()}
    optimize(spared, steps=2, loss_fn=value_loss)
    hidden = spared.network.hidden_layers()
    assert all(layer.weight.abs().max() <= 1e-3 / math.sqrt(layer.weight[0].numel()) + 1e-9
               for layer in hidden.values())
    moved = [n for n, h in spared.network.heads.items() if not torch.equal(h.weight, heads[n])]
    assert sorted(moved) == ["policy", "value"]  # trained, and not pinned inside 1e-3·s
    assert max(h.weight.abs().max() for h in spared.network.heads.values()) > 1e-3 / 4


def test_clipped_fraction_survives_a_state_dict_round_trip():
    learner = make_learner({"weight_clipping": {"kappa": 0.8}}, lr=5e-2)
    optimize(learner, steps=2, loss_fn=value_loss)
    fresh = make_learner({"weight_clipping": {"kappa": 0.8}}, seed=1)
    fresh.strategies.load_state_dict(learner.strategies.state_dict())
    assert clipping(fresh).metrics() == clipping(learner).metrics()
    assert clipping(fresh).metrics()["clipped_fraction"] > 0
