"""Plasticity injection: the function is unchanged at an injection, only the fresh heads learn,
DQN's target follows, a run resumes exactly across injections and the monitor's Hessian is over
the trainable parameters alone."""

import io
import signal

import numpy as np
import pytest
import torch
from signals import Signals
from strategy_helpers import make_learner, optimize, value_loss
from test_monitor import CASES, dense_hessian_of_agent_loss

from agents.networks import FrozenLinear, InjectedHead
from agents.runtime.checkpoints import load_checkpoint
from agents.runtime.launch import run_training
from agents.runtime.resume import resume_training
from agents.runtime.run_dir import read_status
from agents.runtime.trainer import Trainer
from analysis.monitor.measure import measure_spectrum, plasticity_metrics
from analysis.study.compare import run_differences

INJECTION = "plasticity.plasticity_injection={}"


def strategy(learner_or_agent):
    learner = getattr(learner_or_agent, "learner", learner_or_agent)
    (found,) = [s for s in learner.strategies.strategies if s.name == "plasticity_injection"]
    return found


@torch.no_grad()
def perturb(network, seed: int) -> None:
    """Stand-in for training: every parameter moved, so that new ≠ new₀ and old ≠ the target's."""
    generator = torch.Generator().manual_seed(seed)
    for p in network.parameters():
        p.add_(0.1 * torch.randn(p.shape, generator=generator))


def observations(agent, n: int = 16) -> torch.Tensor:
    space = agent.network.spec.input_shape
    return torch.rand((n, *space), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("config", ["tiny.yaml", "tiny_continuous.yaml", "tiny_dqn.yaml"])
def test_an_injection_leaves_every_output_unchanged(tiny_cfg, config):
    """torch.equal at the first injection (old is the head's own weights and new − new₀ is
    exactly zero); within 1e-6 at the next, whose `old` folds old + new − new₀ into one weight
    (round-off of the float32 sum). DQN's target is injected too, with its own `old`."""
    agent = Trainer(tiny_cfg(INJECTION, path=config)).agent
    injection, network = strategy(agent), agent.network
    target = getattr(agent, "target_network", None)
    obs = observations(agent)
    for injected in (1, 2):
        perturb(network, seed=injected)  # the target lags behind the online network
        before = network(obs)
        target_before = target(obs) if target is not None else {}
        injection.inject()
        assert injection.injections == injected
        for outputs, now in ((before, network(obs)), (target_before, target and target(obs))):
            for name, output in outputs.items():
                assert (torch.equal(now[name], output) if injected == 1 else
                        torch.allclose(now[name], output, rtol=0, atol=1e-6)), name
    linear = [n for n, h in network.heads.items() if isinstance(h, torch.nn.Linear)]
    assert linear and all(isinstance(network.heads[n], InjectedHead) for n in linear)
    assert "log_std" not in linear  # a constant head is left as it is
    if target is not None:  # its new head is the online one's draw
        for name in linear:
            assert torch.equal(target.heads[name].weight, network.heads[name].fresh.weight)


def test_only_the_new_heads_learn_and_the_frozen_parts_stay_bitwise(tiny_cfg):
    """Training after an injection, with strategies that touch every weight (l2, shrink-perturb
    per step): the frozen parts never change, the new heads and the torso do, the parameters are
    the same tensors as before, and the heads' Adam state restarted."""
    learner = make_learner({"plasticity_injection": {}, "l2": {"coef": 1e-2},
                            "shrink_perturb": {"when": "step"}})
    net = learner.network
    params = list(net.parameters())
    optimize(learner, 3, value_loss)
    strategy(learner).inject()
    assert learner.strategies.metrics()["plasticity_injection/injections"] == 1
    assert list(net.parameters()) == params  # same tensors: the optimizer's groups stay valid
    assert all(learner.optimizer.state.get(p) is None for p in net.heads.parameters())
    frozen = {n: b.clone() for n, b in net.named_buffers()}
    assert sorted(frozen) == [f"heads.{h}.{part}.{w}" for h in ("policy", "value")
                              for part in ("fresh", "old") for w in ("bias", "weight")]
    start = {n: p.detach().clone() for n, p in net.named_parameters()}
    learner.optimizer.zero_grad(set_to_none=True)
    value_loss(net(learner.obs)).backward()
    assert all(not b.requires_grad and b.grad is None for b in net.buffers())
    optimize(learner, 5, value_loss)
    for name, buffer in net.named_buffers():
        assert torch.equal(buffer, frozen[name]), name
    for name, p in net.named_parameters():
        assert not torch.equal(p, start[name]), name
    assert int(learner.optimizer.state[net.heads["value"].weight]["step"]) == 5


def test_a_dqn_target_syncs_the_frozen_parts_too(tiny_cfg):
    agent = Trainer(tiny_cfg(INJECTION, "dqn.tau=0.5", path="tiny_dqn.yaml")).agent
    strategy(agent).inject()
    perturb(agent.network, seed=0)
    old = agent.target_network.heads["q"].old.weight.clone()
    with torch.no_grad():
        agent.network.heads["q"].old.weight.add_(1.0)  # as if the online head had other history
    agent._update_target(agent.cfg.tau)  # Polyak: buffers lerp like parameters
    torch.testing.assert_close(agent.target_network.heads["q"].old.weight,
                               old.lerp(agent.network.heads["q"].old.weight, 0.5))
    agent._update_target(1.0)
    obs = observations(agent)
    assert torch.equal(agent.target_network(obs)["q"], agent.network(obs)["q"])


def test_redo_after_an_injection_cuts_dormant_units_from_every_part_of_the_head():
    """A silent unit's outgoing weights go to zero in new, old and new₀ alike, so recycling it
    leaves the function as it was (ReDo's promise); continual backprop runs on it too."""
    learner = make_learner({"plasticity_injection": {}, "redo": {"threshold": 0.0},
                            "cbp": {"replacement_rate": 0.5, "maturity": 1}})
    net = learner.network
    strategy(learner).inject()
    perturb(net, seed=0)
    with torch.no_grad():  # units 1 and 3 of the last block silent
        net.blocks["fc2"].layer.weight[[1, 3]] = 0
        net.blocks["fc2"].layer.bias[[1, 3]] = 0
        before = net(learner.obs)
    redo = next(s for s in learner.strategies.strategies if s.name == "redo")
    redo.recycle(learner.ctx)
    with torch.no_grad():
        after = net(learner.obs)
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=1e-6)
    for head in ("policy", "value"):
        parts = net.heads[head].layers()
        assert len(parts) == 3 and isinstance(parts[1], FrozenLinear)
        assert all(not part.weight[:, [1, 3]].any() for part in parts)
    optimize(learner, 3, value_loss)  # cbp replaces units, zeroing their outgoing weights
    assert next(s for s in learner.strategies.strategies if s.name == "cbp").replaced > 0


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_monitors_hessian_is_over_the_trainable_parameters_only(tiny_cfg, case):
    """After an injection the Hessian is over the same parameters as before (the frozen parts
    are buffers), equal to the dense float64 Hessian over them; the extras run too."""
    path, overrides = CASES[case]
    cfg = tiny_cfg(*overrides, INJECTION, path=path)
    trainer = Trainer(cfg)
    agent = trainer.agent
    strategy(agent).inject()
    perturb(agent.network, seed=0)
    envs = trainer.env_factory.make_vector(trainer.sequence.segment(0).task)
    batch = agent.probe_batch(envs, 16, seed=3)
    envs.close()
    measured = measure_spectrum(agent, batch, cfg.monitor, seed=0)
    trainable = sum(p.numel() for p in agent.network.parameters() if p.requires_grad)
    frozen = sum(b.numel() for b in agent.network.buffers())
    assert measured.arrays["num_params"] == trainable and frozen > 0
    hessian, _, _ = dense_hessian_of_agent_loss(agent, batch)
    exact = torch.linalg.eigvalsh(hessian).flip(0).numpy()
    np.testing.assert_allclose(measured.arrays["eigenvalues"], exact[:5], rtol=1e-4,
                               atol=1e-10 * abs(exact).max())
    assert all(f"kfac/{head}_head/lambda_max" in measured.scalars
               for head, module in agent.network.heads.items() if isinstance(module, InjectedHead))
    start = {n: p.detach().clone() for n, p in agent.network.named_parameters()}
    metrics = plasticity_metrics(agent, batch, start, cfg.monitor, seed=0)
    assert metrics["grad_norm"] > 0 and metrics["weight_change/all"] == 0


RESUMED = {
    "ppo": ("tiny.yaml", "sequence.switch_every=512", "ppo.num_steps=32",
            "checkpoint.every=256", "torch_threads=1", INJECTION,
            "plasticity.redo={every_steps: 3}"),
    "dqn": ("tiny_dqn.yaml", "sequence.switch_every=512", "checkpoint.every=256",
            "checkpoint.save_replay=true", "dqn.tau=0.5", "dqn.target_network_frequency=64",
            "plasticity.plasticity_injection={every_steps: 40}", "plasticity.trac={}"),
}


@pytest.mark.parametrize("agent", sorted(RESUMED))
def test_a_run_resumes_exactly_across_injections(tiny_cfg, tmp_path, agent):
    """Stopped after the first switch's injection (DQN: after several periodic ones, its target
    Polyak-averaged), resumed from a fresh trainer: the same run, bitwise."""
    config, *overrides = RESUMED[agent]

    def train(name, observers=()):
        cfg = tiny_cfg(*overrides, f"run_dir={tmp_path / name}", path=config)
        return run_training(cfg, observers, stream=io.StringIO()), tmp_path / name

    assert train("reference")[0] == 0
    code, run_dir = train("stopped", [Signals(640, signal.SIGINT)])
    assert code == 130
    saved = load_checkpoint(read_status(run_dir)["checkpoint"])["agent"]
    assert saved["strategies"]["plasticity_injection"]["injections"] >= 1
    assert any(key.endswith(".old.weight") for key in saved["network"])
    assert resume_training(run_dir, stream=io.StringIO()) == 0
    assert not run_differences(run_dir, tmp_path / "reference")
    final = load_checkpoint(run_dir / "checkpoints" / "final.pt")
    injections = final["agent"]["strategies"]["plasticity_injection"]["injections"]
    assert injections == 2 if agent == "ppo" else injections > 2


@pytest.mark.parametrize("setting,message", [
    ("every_steps=-1", "plasticity.plasticity_injection.every_steps must be >= 0, got -1"),
    ("max_injections=3", "plasticity.plasticity_injection.max_injections: unknown setting "
                         "(settings: at_switch, every_steps)"),
])
def test_bad_settings_are_one_line(assert_one_line_exit_2, tmp_path, setting, message):
    assert_one_line_exit_2(["train", "tiny.yaml", f"runs_root={tmp_path}",
                            f"plasticity.plasticity_injection.{setting}"], message, tmp_path)
