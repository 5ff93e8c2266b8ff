"""Every strategy that acts on layers reaches both networks of a separate actor and critic.

The actor's and the critic's parameters share no gradient (the value loss reads only the critic,
the policy loss only the actor) and clipping is off, so a strategy that skipped one network would
leave that network's parameters bitwise equal to a run without the strategy. Each case runs one
PPO iteration (or one task switch) with and without the strategy, from the same seed, and checks
that both networks moved."""

import pytest
import torch

from agents.runtime.trainer import Trainer

STEP = "tiny_continuous.yaml"
BASE = ("ppo.max_grad_norm=null", "sequence.switch_every=256", "ppo.num_steps=32",
        "ppo.update_epochs=1")

# strategy -> settings that make it act within one iteration
PER_STEP = {
    "redo": "{threshold: 2.0, every_steps: 1}",   # every unit scores below 2: all recycled
    "cbp": "{replacement_rate: 0.5, maturity: 0}",
    "l2": "{}", "l2_init": "{}", "weight_decay": "{}", "parseval": "{}", "spectral_reg": "{}",
    "effective_rank": "{mode: penalty}", "er_l2": "{effective_rank: {er_batch: 1}}",
    "isometry": "{}", "adamo": "{}", "normalize_project": "{}", "trac": "{}",
    "weight_clipping": "{kappa: 0.5}",  # a box narrower than the initial weights: clips at once
    "hare_tortoise": "{reset_every: 1}",  # every step ends at the average, not the Adam step
    # any unit silent on a whole minibatch is reset: η tiny, no history needed past 1 sample
    "self_normalized_resets": "{percentile: 1.0e-6, max_silence: 1}",
}
AT_SWITCH = {"reset": "{layers: [all]}", "shrink_perturb": "{}"}


def trained(tiny_cfg, *overrides, switch: bool = False) -> dict[str, torch.Tensor]:
    trainer = Trainer(tiny_cfg(*BASE, *overrides, path=STEP))
    segment = trainer.sequence.segment(0)
    envs = trainer.make_envs(segment)
    trainer.agent.begin_task(envs, seed=0)
    trainer.agent.train_iteration(envs, segment.end, trainer.generator)
    if switch:
        trainer.strategies.on_task_switch(trainer.ctx, segment, trainer.sequence.segment(1))
    envs.close()
    return {k: v.clone() for k, v in trainer.agent.network.state_dict().items()}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    from agents.runtime.config import load_config

    root = tmp_path_factory.mktemp("runs")
    cfg = lambda *o, path: load_config(path, [f"runs_root={root}", *o])  # noqa: E731
    return {"step": trained(cfg), "switch": trained(cfg, switch=True)}


def moved(params, baseline, network: str) -> list[str]:
    return [k for k in params if k.startswith(f"blocks.{network}_")
            and k in baseline and not torch.equal(params[k], baseline[k])]


@pytest.mark.parametrize("name", sorted(PER_STEP) + sorted(AT_SWITCH))
def test_the_strategy_acts_on_the_actor_and_the_critic(name, tiny_cfg, baseline):
    switch = name in AT_SWITCH
    settings = AT_SWITCH[name] if switch else PER_STEP[name]
    params = trained(tiny_cfg, f"plasticity.{name}={settings}", switch=switch)
    reference = baseline["switch" if switch else "step"]
    for network in ("actor", "critic"):
        assert moved(params, reference, network), f"{name} left the {network} untouched"


def test_the_baseline_networks_really_are_independent(tiny_cfg, baseline):
    """The premise: touching only the actor leaves the critic bitwise as it was."""
    params = trained(tiny_cfg, "plasticity.reset={layers: [actor_fc1]}", switch=True)
    assert moved(params, baseline["switch"], "actor") == ["blocks.actor_fc1.layer.weight",
                                                          "blocks.actor_fc1.layer.bias"]
    assert moved(params, baseline["switch"], "critic") == []


@pytest.mark.parametrize("name,module", [("crelu", None), ("fourier_features", None),
                                         ("layer_norm", "norm")])
def test_architecture_strategies_change_both_networks(name, module, tiny_cfg):
    trainer = Trainer(tiny_cfg(*BASE, f"plasticity.{name}={{}}", path=STEP))
    network = trainer.agent.network
    doubled = name in ("crelu", "fourier_features")
    for tower in ("actor", "critic"):
        if doubled:  # the second layer reads both halves of the first's 32 units
            assert network.blocks[f"{tower}_fc2"].layer.in_features == 64
            assert network.blocks[f"{tower}_fc1"].out_multiplier == 2
        else:
            assert isinstance(network.blocks[f"{tower}_fc1"].norm, torch.nn.LayerNorm)
    assert network.heads["value"].in_features == network.heads["policy"].in_features == (
        64 if doubled else 32)
