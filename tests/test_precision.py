"""`precision: bf16`: mixed precision on the one update path. The gradient steps' forward runs in
bf16, everything after it (loss, penalties, gradients, Adam, weights) and the spectral monitor
in fp32; one bf16 update lands near the fp32 one on the same batch."""

import numpy as np
import pytest
import torch
from training import run

from agents.catalogue import AGENTS
from agents.context import StepContext
from agents.dqn import td_targets
from agents.errors import ConfigError
from agents.runtime.config import load_config
from agents.runtime.trainer import Trainer
from analysis.monitor.measure import measure_spectrum


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().flatten().double() for t in tensors])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def one_update(trainer, batch):
    """One gradient step on `batch` through Learner.optimize: (loss, gradient, update)."""
    agent, learner = trainer.agent, trainer.agent.learner
    before = flat(agent.network.parameters())
    loss, _, outputs, features = agent.loss(batch, learner.train_forward)
    assert all(t.dtype == torch.float32 for t in [*outputs.values(), *features.values()])
    learner.optimize(StepContext(agent.ctx, batch.obs, loss, features))
    gradient = flat(p.grad for p in agent.network.parameters())
    assert all(p.grad.dtype == torch.float32 for p in agent.network.parameters())
    assert all(v.dtype == torch.float32 for state in learner.optimizer.state.values()
               for v in state.values() if torch.is_tensor(v) and v.is_floating_point())
    return loss.item(), gradient, flat(agent.network.parameters()) - before


def batch_of(trainer, seed=3):
    envs = trainer.env_factory.make_vector(trainer.sequence.segment(0).task)
    try:
        return trainer.agent.probe_batch(envs, 16, seed=seed)
    finally:
        envs.close()


# Stated tolerances for one step of the tiny configs (MiniGrid CNN, 64 observations), about 5x
# what was measured (PPO / DQN: loss 7e-5 / 5e-4 relative, gradient cos 0.99999, Adam's step cos
# 0.999 / 0.998 and size 0.2% / 0.01%): bf16 keeps 8 mantissa bits (round-off 2^-9 an op), fp32
# accumulation keeps the sums' errors from adding up. Adam's first step (lr · g/|g| a weight)
# flips sign only where a weight's gradient is near zero.
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
@pytest.mark.parametrize("agent", sorted(AGENTS))
def test_one_bf16_update_lands_near_the_fp32_one(agent, device, tiny_cfg):
    path = {"ppo": "tiny.yaml", "dqn": "tiny_dqn.yaml"}[agent]
    fp32, bf16 = (Trainer(tiny_cfg(f"precision={p}", f"device={device}", path=path))
                  for p in ("fp32", "bf16"))
    assert torch.equal(flat(fp32.agent.network.parameters()),
                       flat(bf16.agent.network.parameters()))
    batch = batch_of(fp32)
    loss32, grad32, step32 = one_update(fp32, batch)
    loss16, grad16, step16 = one_update(bf16, batch)
    assert loss16 == pytest.approx(loss32, rel=2.5e-3)
    assert cosine(grad16, grad32) > 0.9999
    assert cosine(step16, step32) > 0.99
    assert step16.norm() == pytest.approx(float(step32.norm()), rel=0.01)
    assert not torch.equal(grad16, grad32)  # bf16 did act: the same batch, other round-off


def test_bf16_runs_the_forward_convolutions_and_linears_in_bf16(tiny_cfg):
    trainer = Trainer(tiny_cfg("precision=bf16"))
    seen = {}

    def record(module, inputs, output):
        seen[module] = output.dtype

    hooks = [module.register_forward_hook(record) for module in trainer.agent.network.modules()
             if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear))]
    batch = batch_of(trainer)
    assert set(seen.values()) == {torch.float32}  # acting: fp32
    seen.clear()
    trainer.agent.learner.train_forward(batch.obs)
    for hook in hooks:
        hook.remove()
    assert seen and set(seen.values()) == {torch.bfloat16}


def test_the_target_pass_in_bf16_uses_a_cast_copy_that_follows_the_target_network(tiny_cfg):
    """DQN's training targets under bf16 come from a bf16 copy of the target network, cast once
    per change of its weights: bitwise what autocast gives on the fp32 network itself."""
    trainer = Trainer(tiny_cfg("precision=bf16", "dqn.learning_starts=1000", path="tiny_dqn.yaml"))
    agent = trainer.agent
    envs = trainer.env_factory.make_vector(trainer.sequence.segment(0).task)
    agent.begin_task(envs, seed=0)
    agent.train_iteration(envs, 128, torch.Generator().manual_seed(0))  # fills, no update
    envs.close()
    samples = [agent.buffer.sample(32, np.random.default_rng(seed)) for seed in (1, 2)]

    def through_autocast(sample):
        with agent.learner.autocast():
            return td_targets(sample["returns"], sample["discounts"], sample["bootstrap_obs"],
                              agent.target_network)

    first = [agent.make_batch(sample, training=True) for sample in samples]
    copy = agent.learner.frozen(agent.target_network)
    assert {p.dtype for p in copy.parameters()} == {torch.bfloat16}
    for sample, batch in zip(samples, first):
        assert torch.equal(batch.targets, through_autocast(sample))
    assert agent.learner.frozen(agent.target_network) is copy  # unchanged: not cast again
    with torch.no_grad():
        for p in agent.network.parameters():
            p.add_(0.1)
    agent._update_target(tau=0.5)  # written in place: the copy must follow
    assert agent.learner.frozen(agent.target_network) is not copy
    second = [agent.make_batch(sample, training=True) for sample in samples]
    for sample, before, after in zip(samples, first, second):
        assert torch.equal(after.targets, through_autocast(sample))
        assert not torch.equal(after.targets, before.targets)
    assert {p.dtype for p in agent.target_network.parameters()} == {torch.float32}


@pytest.mark.parametrize("strategy", ["er_l2", "sam", "isometry", "c_chain", "redo"])
def test_strategies_under_bf16_get_fp32_features_and_penalties(strategy, tiny_cfg, tmp_path):
    settings = {"redo": {"every_steps": 2, "threshold": 0.5}}.get(strategy, {})
    cfg = tiny_cfg("precision=bf16", "sequence.switch_every=128", "ppo.num_steps=16")
    cfg.plasticity = {strategy: settings}
    trainer = run(cfg, tmp_path / "log")
    assert trainer.ctx.update_count > 0
    assert all(torch.isfinite(p).all() for p in trainer.agent.network.parameters())
    agent = trainer.agent
    batch = batch_of(trainer)
    loss, _, _, features = agent.loss(batch, agent.learner.train_forward)
    step = StepContext(agent.ctx, batch.obs, loss, features,
                       {"policy_loss": loss.detach()})
    penalties = agent.learner.strategies.loss_penalty(step)
    assert loss.dtype == torch.float32
    assert all(f.dtype == torch.float32 for f in features.values())
    assert all(p.dtype == torch.float32 and torch.isfinite(p) for p in penalties.values())


@pytest.mark.parametrize("agent", sorted(AGENTS))
def test_bf16_training_and_fp32_curvature(agent, tiny_cfg, tmp_path):
    """Trained in bf16 (its weights differ from the fp32 run's), measured in fp32: the monitor's
    spectrum of the bf16-trained network is the fp32 spectrum of those weights, bit for bit."""
    path = {"ppo": "tiny.yaml", "dqn": "tiny_dqn.yaml"}[agent]
    short = ("sequence.switch_every=128", "ppo.num_steps=16", "dqn.learning_starts=32",
             "monitor.top_k=4", "monitor.lanczos_steps=12", "monitor.batch_size=64")
    trained = {p: run(tiny_cfg(f"precision={p}", *short, path=path), tmp_path / p)
               for p in ("fp32", "bf16")}
    assert trained["bf16"].ctx.update_count == trained["fp32"].ctx.update_count > 0
    assert not torch.equal(flat(trained["bf16"].agent.network.parameters()),
                           flat(trained["fp32"].agent.network.parameters()))
    # The same weights in an fp32 agent: the spectrum must not depend on `precision`.
    fp32_twin = Trainer(tiny_cfg("precision=fp32", *short, path=path))
    fp32_twin.agent.network.load_state_dict(trained["bf16"].agent.network.state_dict())
    batch = batch_of(trained["bf16"])
    cfg = trained["bf16"].cfg.monitor
    ours = measure_spectrum(trained["bf16"].agent, batch, cfg, seed=0)
    twin = measure_spectrum(fp32_twin.agent, batch, cfg, seed=0)
    assert (ours.arrays["eigenvalues"] == twin.arrays["eigenvalues"]).all()
    assert ours.scalars["loss"] == twin.scalars["loss"]
    fp32_loss = trained["bf16"].agent.loss(
        batch, lambda o: trained["bf16"].agent.network(o, return_features=True))[0]
    assert ours.scalars["loss"] == pytest.approx(fp32_loss.item(), rel=1e-6)


def test_an_unknown_precision_is_a_config_error(tiny_cfg):
    with pytest.raises(ConfigError, match="precision: 'fp16' is not one of fp32, bf16"):
        tiny_cfg("precision=fp16")


def test_the_learning_bench_writes_both_precisions_and_judges_overlap(tmp_path, capsys):
    import argparse

    from bench import precision as bench

    args = argparse.Namespace(breakout_steps=4096, set=["seed=2"])
    for name in ("minigrid", "breakout"):
        for p in bench.PRECISIONS:
            cfg = load_config(bench.write_config(name, p, args, tmp_path))
            assert (cfg.precision, cfg.monitor.enabled, cfg.checkpoint.every, cfg.seed) == (
                p, False, 0, 2)
    assert [t.env_id for t in cfg.sequence.tasks] == ["ALE/Breakout-v5"]
    assert cfg.sequence.switch_every == 4096 and cfg.sequence.cycles == 1
    mean, low, high = bench.mean_ci(np.array([0.2, 0.4, 0.6]))
    assert mean == pytest.approx(0.4) and 0.2 <= low < 0.4 < high <= 0.6
    apart = {("a", "fp32"): {s: {"auc": 0.1 * s, "final_return": 1.0} for s in (1, 2, 3)},
             ("a", "bf16"): {s: {"auc": 5 + 0.1 * s, "final_return": 1.0} for s in (1, 2, 3)}}
    bench.report(["a"], apart, 60)
    out = capsys.readouterr().out
    assert "AUC: the CIs DO NOT overlap" in out and "final: the CIs overlap" in out
    assert "1/2 scores with overlapping CIs" in out


def test_bf16_on_a_gpu_without_it_is_a_config_error(monkeypatch):
    from agents.runtime import trainer

    cpu_zeros = torch.zeros
    monkeypatch.setattr(torch, "zeros", lambda *a, device=None, **k: cpu_zeros(*a, **k))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    assert trainer.usable_device("cuda", "fp32").type == "cuda"
    with pytest.raises(ConfigError, match="precision: bf16 needs a GPU that computes in bf16 "
                       r"\(Ampere or later\); Tesla V100 does not: use precision=fp32"):
        trainer.usable_device("cuda", "bf16")
