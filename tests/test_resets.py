"""Strategies that re-draw weights, proven on the weights and on Adam's moments."""

import copy
import io
import math

import pytest
import torch
from strategy_helpers import make_learner, optimize, step_context, value_loss

from agents.errors import ConfigError
from agents.plasticity import ops


def strategy(learner):
    return learner.strategies.strategies[-1]


def fill_adam_moments(learner, value=1.0):
    optimize(learner, loss_fn=value_loss)  # creates the state
    for state in learner.optimizer.state.values():
        state["exp_avg"].fill_(value)
        state["exp_avg_sq"].fill_(value)


def expected_fresh_draw(network, generator_state):
    """The layer initialiser's draws, in weight_layers() order, from a copy of the generator."""
    generator = torch.Generator()
    generator.set_state(generator_state)
    draws = {}
    for name, layer in network.weight_layers().items():
        fresh = copy.deepcopy(layer)
        network.init_layer_(name, fresh, generator)
        draws[name] = fresh
    return draws


# -- shrink and perturb --------------------------------------------------------------------------
def test_shrink_perturb_at_switch_is_exactly_alpha_theta_plus_sigma_fresh_init():
    learner = make_learner({"shrink_perturb": {}}, arch="cnn")
    optimize(learner, steps=2, loss_fn=value_loss)
    sp = strategy(learner)
    before = {n: (m.weight.detach().clone(), m.bias.detach().clone())
              for n, m in learner.network.weight_layers().items()}
    noise = expected_fresh_draw(learner.network, sp.generator.get_state())
    sp.on_task_switch(learner.ctx, None, None)
    assert (sp.alpha, sp.sigma) == (0.5, 0.5)  # Juliani & Ash 2024's sp-5-5
    for name, layer in learner.network.weight_layers().items():
        weight, bias = before[name]
        torch.testing.assert_close(layer.weight, 0.5 * weight + 0.5 * noise[name].weight)
        torch.testing.assert_close(layer.bias, 0.5 * bias)  # the initialiser's biases are zero
    assert sp.metrics() == {"applied": 1}


def test_shrink_perturb_per_step_uses_tiny_defaults_and_runs_every_step():
    learner = make_learner({"shrink_perturb": {"when": "step"}})
    optimize(learner, steps=3)
    sp = strategy(learner)
    assert (sp.alpha, sp.sigma, sp.applied) == (0.999999, 1e-6, 3)
    with pytest.raises(ConfigError, match=r"plasticity.shrink_perturb.when: 'often' is not one"):
        make_learner({"shrink_perturb": {"when": "often"}})


# -- resets --------------------------------------------------------------------------------------
def test_reset_all_at_switch_reinitialises_everything_and_drops_optimizer_state():
    learner = make_learner({"reset": {"layers": ["all"], "at_switch": True}, "layer_norm": {}},
                           arch="cnn")
    optimize(learner, steps=3, loss_fn=value_loss)
    net = learner.network
    reset = strategy(learner)
    expected = expected_fresh_draw(net, reset.generator.get_state())
    reset.on_task_switch(learner.ctx, None, None)
    for name, layer in net.weight_layers().items():
        torch.testing.assert_close(layer.weight, expected[name].weight)
        assert not layer.bias.any()
    assert all(torch.equal(b.norm.weight, torch.ones_like(b.norm.weight))
               for b in net.blocks.values())
    assert len(learner.optimizer.state) == 0  # Adam starts afresh, step counts included
    assert reset.metrics() == {"resets": 1}


def test_reset_heads_every_n_steps_leaves_the_torso_and_its_moments():
    learner = make_learner({"reset": {"layers": ["heads"], "at_switch": False,
                                      "every_steps": 3}})
    net = learner.network
    optimize(learner, steps=2, loss_fn=value_loss)
    torso = {n: p.detach().clone() for n, p in net.blocks.named_parameters()}
    optimize(learner, steps=1, loss_fn=value_loss)  # the third step resets the heads after it
    head_params = set(net.heads.parameters())
    assert all(p not in learner.optimizer.state for p in head_params)
    assert all(p in learner.optimizer.state for p in net.blocks.parameters())
    assert all(not (torso[n] == p).all() for n, p in net.blocks.named_parameters())  # trained
    policy = net.heads["policy"].weight
    torch.testing.assert_close(policy @ policy.T, 0.01**2 * torch.eye(4), atol=1e-7, rtol=0)
    optimize(learner, steps=4, loss_fn=value_loss)
    assert strategy(learner).metrics() == {"resets": 2}
    strategy(learner).on_task_switch(learner.ctx, None, None)  # at_switch=False
    assert strategy(learner).metrics() == {"resets": 2}


def test_reset_names_an_unknown_layer():
    with pytest.raises(ConfigError, match=r"plasticity.reset.layers: unknown layer 'fc9' "
                                          r"\(allowed: fc1, fc2, heads, all\)"):
        make_learner({"reset": {"layers": ["fc9"]}})


# -- ReDo ----------------------------------------------------------------------------------------
def independent_scores(features, units, multiplier):
    activity = features.abs().mean([d for d in range(features.dim()) if d != 1])
    activity = activity.view(multiplier, units).sum(0)
    return activity / activity.mean()


def consumer_columns(consumer_weight, units, channels_per_unit, out_channels):
    """Input columns of the next layer fed by `units` (CReLU halves, flattened positions)."""
    positions = consumer_weight.shape[1] // (out_channels * channels_per_unit)
    channels = [u + k * out_channels for u in units for k in range(channels_per_unit)]
    return sorted(c * positions + p for c in channels for p in range(positions))


@pytest.mark.parametrize("arch,extra", [("mlp", {}), ("cnn", {}), ("cnn", {"crelu": {}})])
def test_redo_resets_exactly_the_dormant_units_their_outgoing_weights_and_moments(arch, extra):
    learner = make_learner({"redo": {"threshold": 0.1, "every_steps": 1000}, **extra}, arch=arch)
    net = learner.network
    silenced = [1, 3]
    with torch.no_grad():
        for block in net.blocks.values():  # zero pre-activations: silent under ReLU and CReLU
            block.layer.weight[silenced] = 0
            block.layer.bias[silenced] = 0
    fill_adam_moments(learner)
    with torch.no_grad():
        _, features = net(learner.obs, return_features=True)
    names = list(net.blocks)
    expected = {}
    for name, block in net.blocks.items():
        scores = independent_scores(features[name], block.spec.out, block.out_multiplier)
        expected[name] = torch.nonzero(scores <= 0.1).flatten().tolist()
        assert set(silenced) <= set(expected[name])
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    strategy(learner).recycle(learner.ctx)

    # Every layer reading a block, and the units it loses its inputs from (rows that are
    # themselves reset are fresh draws, checked separately).
    readers = {f"blocks.{n}.layer.weight": (n, names[i - 1]) for i, n in enumerate(names) if i}
    readers[f"blocks.{names[0]}.layer.weight"] = (names[0], None)
    readers.update({f"heads.{h}.weight": (None, names[-1]) for h in net.heads})
    for key, (own, source) in readers.items():
        weight = dict(net.named_parameters())[key]
        moments = learner.optimizer.state[weight]
        rows_reset = expected[own] if own else []
        kept = [r for r in range(weight.shape[0]) if r not in rows_reset]
        cut = []
        if source:
            block = net.blocks[source]
            cut = consumer_columns(weight.flatten(1), expected[source], block.out_multiplier,
                                   block.spec.out)
        others = [c for c in range(weight.flatten(1).shape[1]) if c not in cut]
        flat, old = weight.flatten(1), before[key].flatten(1)
        assert torch.equal(flat[kept][:, others], old[kept][:, others])
        assert not flat[kept][:, cut].any()
        assert (flat[rows_reset].norm(dim=1) > 0).all()  # fresh: not silent any more
        if own:
            bias = dict(net.named_parameters())[f"blocks.{own}.layer.bias"]
            assert not bias[rows_reset].any()
            assert torch.equal(bias[kept], before[f"blocks.{own}.layer.bias"][kept])
        for state in (moments["exp_avg"].flatten(1), moments["exp_avg_sq"].flatten(1)):
            assert not state[rows_reset].any() and not state[kept][:, cut].any()
            assert (state[kept][:, others] == 1).all()
    total = sum(len(u) for u in expected.values())
    assert strategy(learner).metrics()["reset_units"] == total


def test_redo_checks_every_n_gradient_steps():
    learner = make_learner({"redo": {"threshold": 0.0, "every_steps": 2}})
    calls = []
    strategy(learner).recycle = lambda ctx: calls.append(ctx.update_count)
    optimize(learner, steps=5)
    assert calls == [2, 4]


# -- continual backprop --------------------------------------------------------------------------
def test_cbp_utility_is_a_running_average_of_activation_times_outgoing_weight():
    learner = make_learner({"cbp": {"decay": 0.5, "maturity": 10**6}})
    step = step_context(learner)
    strategy(learner).after_optimizer_step(step)
    h = step.features["fc1"].detach().abs().mean(0)
    w_out = learner.network.blocks["fc2"].layer.weight.detach().abs().sum(0)
    torch.testing.assert_close(strategy(learner).utility["fc1"], 0.5 * h * w_out)


def test_cbp_replaces_only_the_lowest_utility_mature_units():
    learner = make_learner({"cbp": {"decay": 1.0, "maturity": 5, "replacement_rate": 0.5}})
    cbp, net = strategy(learner), learner.network
    mature = {2: 0.5, 5: 0.1, 7: 0.9, 9: 0.2}
    cbp.utility["fc1"][:] = 0.05  # lower than any mature unit, but immature
    for unit, utility in mature.items():
        cbp.utility["fc1"][unit] = utility
        cbp.age["fc1"][unit] = 10
    fc1, fc2 = net.blocks["fc1"].layer.weight, net.blocks["fc2"].layer.weight
    before_in, before_out = fc1.detach().clone(), fc2.detach().clone()
    cbp.after_optimizer_step(step_context(learner))  # 4 mature × 0.5 -> replace 2
    replaced, kept = [5, 9], [u for u in range(16) if u not in (5, 9)]
    assert torch.equal(fc1[kept], before_in[kept]) and not torch.equal(fc1[replaced],
                                                                        before_in[replaced])
    assert not fc2[:, replaced].any() and torch.equal(fc2[:, kept], before_out[:, kept])
    assert cbp.utility["fc1"][replaced].tolist() == [0, 0]
    assert cbp.age["fc1"][replaced].tolist() == [0, 0] and cbp.age["fc1"][2].item() == 11
    assert cbp.metrics() == {"replaced_units": 2}


# -- self-normalised resets ----------------------------------------------------------------------
def snr(learner):
    return next(s for s in learner.strategies.strategies if s.name == "self_normalized_resets")


def record_resets(monkeypatch, learner) -> list:
    """(update_count, block, units) of every unit re-initialisation from now on."""
    calls, reinit = [], ops.reinit_units

    def spy(network, optimizer, name, units, generator):
        calls.append((learner.ctx.update_count, name, sorted(units.tolist())))
        reinit(network, optimizer, name, units, generator)

    monkeypatch.setattr(ops, "reinit_units", spy)
    return calls


def silence(block, unit: int) -> None:
    with torch.no_grad():  # no input reaches it and its bias keeps it below zero
        block.layer.weight[unit] = 0
        block.layer.bias[unit] = -100.0


def test_snr_counts_per_unit_the_samples_it_fired_on_and_its_silence():
    learner = make_learner({"self_normalized_resets": {}}, arch="cnn")
    step = step_context(learner)
    learner.optimize(step)
    state = snr(learner)
    for name, features in step.features.items():  # a conv unit fires where any position does
        fired = features.detach().flatten(2).ne(0).any(2) if features.dim() > 2 else (
            features.detach().ne(0))
        count = fired.sum(0)
        assert torch.equal(state.fires[name], count)
        assert torch.equal(state.age[name], torch.where(count > 0, 0, 32))
        assert torch.equal(state.span[name], torch.where(count > 0, 32, 0))
    assert state.metrics()["silent_fraction"] == pytest.approx(
        sum(int((state.fires[n] == 0).sum()) for n in state.fires)
        / sum(len(c) for c in state.fires.values()))


def test_snr_threshold_is_the_geometric_percentile_of_the_units_own_rate():
    learner = make_learner({"self_normalized_resets": {"max_silence": 1000}})
    state = snr(learner)
    state.fires["fc1"][:4] = torch.tensor([0, 1, 1, 5])
    state.span["fc1"][:4] = torch.tensor([0, 100, 10**7, 5])
    thresholds = state.thresholds("fc1")[:4].tolist()
    assert thresholds[0] == 1000  # no firing history: max_silence
    assert thresholds[1] == pytest.approx(math.log(0.01) / math.log(0.99))  # p = 0.01: 458.2
    assert thresholds[2] == 1000  # p = 1e-7: the percentile is past the cap
    assert thresholds[3] == 0  # fired on every sample: one silent batch is already too long
    assert (state.settings.percentile, state.settings.max_silence) == (0.99, 1000)


def test_snr_resets_a_silenced_unit_when_its_rate_predicts_and_never_an_active_one(monkeypatch):
    learner = make_learner({"self_normalized_resets": {}})
    net, state = learner.network, snr(learner)
    fill_adam_moments(learner)  # one step, then every moment 1: clearing them shows
    fc1, fc2 = net.blocks["fc1"], net.blocks["fc2"]
    silent = 3
    silence(fc1, silent)
    with torch.no_grad():
        firing = (net(learner.obs, return_features=True)[1]["fc1"] > 0).sum(0)
    active = int(firing.argmax())  # fires on the most samples of the (fixed) batch
    assert firing[active] > 16 and firing[silent] == 0
    # Its history: 1 firing in 100 samples, so p = 0.01 and the 99th percentile of a geometric
    # silence is log(0.01)/log(0.99) = 458.2 samples: the 15th batch of 32 crosses it.
    state.fires["fc1"][silent], state.span["fc1"][silent] = 1, 100
    state.seen["fc1"][silent], state.age["fc1"][silent] = 100, 0
    predicted = math.ceil(math.log(0.01) / math.log(0.99) / 32)
    assert predicted == 15
    calls = record_resets(monkeypatch, learner)
    start = learner.ctx.update_count
    optimize(learner, steps=predicted - 1)  # a zero loss: only Adam's momentum moves weights
    assert not any(silent in units for _, name, units in calls if name == "fc1")
    assert state.age["fc1"][silent] == 32 * (predicted - 1)
    assert fc1.layer.bias[silent] < -99
    moments = learner.optimizer.state
    optimize(learner)
    assert (start + predicted, "fc1", [silent]) in [(c, n, [u for u in units if u == silent])
                                                    for c, n, units in calls]
    assert fc1.layer.weight[silent].norm() > 0.5 and fc1.layer.bias[silent] == 0  # fresh
    assert not fc2.layer.weight[:, silent].any()  # no output: the function is unchanged
    for param, index in ((fc1.layer.weight, silent), (fc1.layer.bias, silent)):
        assert not moments[param]["exp_avg"][index].any()
        assert not moments[param]["exp_avg_sq"][index].any()
    assert not moments[fc2.layer.weight]["exp_avg"][:, silent].any()
    assert moments[fc2.layer.weight]["exp_avg"][:, active].all()  # other moments kept
    assert [int(c[silent]) for c in (state.age["fc1"], state.fires["fc1"], state.span["fc1"],
                                     state.seen["fc1"])] == [0, 0, 0, 0]
    optimize(learner, steps=20)
    assert not any(active in units for _, name, units in calls if name == "fc1")
    assert state.metrics()["reset_units"] == sum(len(units) for _, _, units in calls)


def test_snr_resets_a_unit_that_never_fired_after_max_silence(monkeypatch):
    learner = make_learner({"self_normalized_resets": {"max_silence": 64}})
    silence(learner.network.blocks["fc2"], 5)
    calls = record_resets(monkeypatch, learner)
    optimize(learner)  # 32 silent samples
    assert not any(5 in units for _, name, units in calls if name == "fc2")
    optimize(learner)  # 64
    assert any(count == 2 and name == "fc2" and 5 in units for count, name, units in calls)


def test_snr_state_survives_a_checkpoint_and_the_resumed_run_resets_the_same():
    settings = {"self_normalized_resets": {"max_silence": 96}}
    learner = make_learner(settings, arch="cnn")
    silence(learner.network.blocks["conv2"], 2)
    optimize(learner, steps=2, loss_fn=value_loss)
    buffer = io.BytesIO()
    torch.save(learner.state_dict(), buffer)
    buffer.seek(0)
    resumed = make_learner(settings, arch="cnn", seed=1)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    resumed.obs = learner.obs
    assert snr(resumed).state_dict().keys() == snr(learner).state_dict().keys()
    for run in (learner, resumed):
        optimize(run, steps=3, loss_fn=value_loss)  # conv2's unit 2 is reset at the third
    assert snr(learner).reset_units == snr(resumed).reset_units > 0
    for (name, a), b in zip(learner.network.state_dict().items(),
                            resumed.network.state_dict().values()):
        assert torch.equal(a, b), name
    for key in ("age", "fires", "span", "seen"):
        for name in learner.network.blocks:
            assert torch.equal(getattr(snr(learner), key)[name], getattr(snr(resumed), key)[name])
