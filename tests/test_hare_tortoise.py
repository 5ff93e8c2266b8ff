"""Hare & Tortoise, proven on the weights: the tortoise is the EMA of the hare's parameters after
each step, the hare is set to it every reset_every steps, and a resumed run is exact."""

import io

import pytest
import torch
from strategy_helpers import make_learner, optimize, value_loss


def hare_tortoise(learner):
    return learner.strategies.strategies[0]


def after_adam(learner) -> list:
    """Each step's parameters right after the optimizer's step, before any post-step hook."""
    taken, step = [], learner.optimizer.step

    def stepped(*args, **kwargs):
        result = step(*args, **kwargs)
        taken.append({n: p.detach().clone() for n, p in learner.network.named_parameters()})
        return result

    learner.optimizer.step = stepped
    return taken


def checkpointed(state):
    """`state` through a checkpoint file, as a resume reads it (weights_only)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_the_tortoise_is_the_ema_of_the_hare_after_each_step():
    learner = make_learner({"hare_tortoise": {"ema": 0.9, "reset_every": 1000}}, arch="cnn",
                           lr=1e-2)
    slow = {n: p.detach().clone() for n, p in learner.network.named_parameters()}  # θ at setup
    stepped = after_adam(learner)
    optimize(learner, steps=5, loss_fn=value_loss)
    for hare in stepped:  # θ_slow ← τ·θ_slow + (1 − τ)·θ, by hand
        slow = {n: 0.9 * slow[n] + 0.1 * hare[n] for n in slow}
    tortoise = hare_tortoise(learner).tortoise
    assert set(tortoise) == set(slow)
    for name, value in slow.items():
        torch.testing.assert_close(tortoise[name], value)
    hare = dict(learner.network.named_parameters())  # no reset yet: the hare is Adam's alone
    assert all(torch.equal(hare[n], stepped[-1][n]) for n in hare)
    assert hare_tortoise(learner).metrics()["resets"] == 0
    assert hare_tortoise(learner).metrics()["distance"] > 0


def test_every_reset_every_steps_the_hare_becomes_the_tortoise_and_adam_keeps_its_state():
    learner = make_learner({"hare_tortoise": {"ema": 0.5, "reset_every": 3}}, lr=1e-2)
    strategy, net = hare_tortoise(learner), learner.network
    optimize(learner, steps=2, loss_fn=value_loss)
    assert not all(torch.equal(p, strategy.tortoise[n]) for n, p in net.named_parameters())
    moments = {n: learner.optimizer.state[p]["exp_avg"].clone() for n, p in net.named_parameters()}
    optimize(learner, loss_fn=value_loss)  # step 3: the EMA, then the reset
    assert all(torch.equal(p, strategy.tortoise[n]) for n, p in net.named_parameters())
    assert strategy.metrics() == {"resets": 1, "distance": 0.0}
    for name, param in net.named_parameters():  # the authors copy values, leave Adam alone
        state = learner.optimizer.state[param]
        assert int(state["step"]) == 3 and not torch.equal(state["exp_avg"], moments[name])
    optimize(learner, steps=3, loss_fn=value_loss)
    assert strategy.metrics()["resets"] == 2
    assert all(torch.equal(p, strategy.tortoise[n]) for n, p in net.named_parameters())


def test_the_defaults_are_the_authors():
    strategy = hare_tortoise(make_learner({"hare_tortoise": {}}))
    assert (strategy.settings.ema, strategy.settings.reset_every) == (0.999, 2000)


def test_a_resumed_run_continues_exactly():
    settings = {"hare_tortoise": {"ema": 0.8, "reset_every": 3}}
    learner = make_learner(settings, lr=1e-2)
    optimize(learner, steps=4, loss_fn=value_loss)
    resumed = make_learner(settings, seed=1, lr=1e-2)
    resumed.load_state_dict(checkpointed(learner.state_dict()))  # with the tortoise
    resumed.obs = learner.obs
    for run in (learner, resumed):
        optimize(run, steps=4, loss_fn=value_loss)  # crosses the reset at step 6
    assert hare_tortoise(learner).resets == hare_tortoise(resumed).resets == 2
    hare = dict(resumed.network.named_parameters())
    for name, param in learner.network.named_parameters():
        assert torch.equal(param, hare[name])
        assert torch.equal(hare_tortoise(learner).tortoise[name],
                           hare_tortoise(resumed).tortoise[name])


@pytest.mark.parametrize("ema", [1.0, -0.1])
def test_ema_must_lie_in_zero_one(ema):
    from agents.errors import ConfigError

    with pytest.raises(ConfigError, match=r"plasticity.hare_tortoise.ema must lie in \[0, 1\)"):
        make_learner({"hare_tortoise": {"ema": ema}})
