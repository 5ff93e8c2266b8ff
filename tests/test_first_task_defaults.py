"""The mechanisms behind the defaults bench/first_task_defaults.py checks: C-CHAIN's λ rule, TRAC's
scale S from its default s_init, and what the bench counts as acting only at switches."""

import copy
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import erfi
from strategy_helpers import make_learner, step_context
from training import run

from agents.context import StepContext
from agents.plasticity.base import STRATEGIES, Strategy
from agents.plasticity.optimizers import TracTuner

ROOT = Path(__file__).resolve().parent.parent
PAPER_BETAS = (0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999)


# -- C-CHAIN -------------------------------------------------------------------------------------
def churn_of(learner, before):
    with torch.no_grad():
        return (learner.network(learner.obs)["policy"] - before(learner.obs)["policy"]) \
            .pow(2).sum(-1).mean().item()


def test_c_chain_scales_lambda_by_the_policy_loss_the_agent_names_not_the_total():
    """The authors' λ = target·mean|policy loss| / mean(churn): PPO's total loss also holds
    −ent_coef·H (≈ −0.0195 at MiniGrid's start, where the surrogate is ~1e-3), which must not
    set the scale; a constant added to the total leaves λ unchanged."""
    learner = make_learner({"c_chain": {"window": 2}}, lr=1e-2)
    chain = learner.strategies.strategies[0]
    policy_losses, churns, previous = [0.002, -0.004, 0.003], [], None
    for policy_loss in policy_losses:
        snapshot = copy.deepcopy(learner.network)
        if previous is not None:
            churns.append(churn_of(learner, previous))
        step = step_context(learner, loss_fn=lambda o: (o["value"] - 1).pow(2).mean()
                            + o["policy"].pow(2).mean() + 5.0)  # a large constant part
        step.extras["policy_loss"] = torch.tensor(policy_loss)
        stats = learner.optimize(step)
        previous = snapshot
    expected = 0.05 * (0.004 + 0.003) / (churns[0] + churns[1])
    assert chain.metrics()["coef"].item() == pytest.approx(expected, rel=1e-4)
    assert stats["plasticity/c_chain/penalty"].item() == pytest.approx(expected * churns[1],
                                                                       rel=1e-4)


def test_c_chain_without_a_named_policy_loss_scales_by_the_whole_loss():
    """DQN names no parts: its loss is the TD loss, the authors' denominator there."""
    learner = make_learner({"c_chain": {"window": 5}}, agent="dqn")
    chain = learner.strategies.strategies[0]
    for _ in range(2):
        step = step_context(learner, loss_fn=lambda o: (o["value"] - 1).pow(2).mean() + 3.0)
        learner.optimize(step)
    assert float(chain.losses[-1]) == pytest.approx(float(step.loss.detach().abs()), rel=1e-6)


class ExtrasRecorder(Strategy):
    def setup(self, ctx):
        self.seen = []

    def loss_penalty(self, step: StepContext):
        self.seen.append((step.extras.get("policy_loss"), step.loss.detach()))


@pytest.mark.parametrize("coefs,equal", [(("ppo.ent_coef=0", "ppo.vf_coef=0"), True), ((), False)])
def test_ppo_names_its_clipped_surrogate_as_the_policy_loss(coefs, equal, tmp_path, monkeypatch):
    from agents.runtime.config import load_config
    monkeypatch.setitem(STRATEGIES, "extras_recorder", ExtrasRecorder)
    cfg = load_config("tiny.yaml", ["plasticity.extras_recorder={}", "ppo.num_steps=8",
                                    "ppo.update_epochs=1", "sequence.switch_every=64",
                                    f"runs_root={tmp_path}", "print_every=1000", *coefs])
    recorder = run(cfg, tmp_path / "log").strategies.strategies[0]
    assert recorder.seen and all(p is not None and not p.requires_grad for p, _ in recorder.seen)
    same = [torch.allclose(p, loss, atol=1e-7) for p, loss in recorder.seen]
    assert all(same) if equal else not any(same)  # with no value or entropy term it is the loss


# -- TRAC ----------------------------------------------------------------------------------------
def noisy_least_squares(s_init, steps=80, lr=1e-2, noise=5.0):
    """Adam (+ TRAC) on a least-squares problem with noisy gradients; returns (losses, scale)."""
    torch.manual_seed(0)
    x, w_true = torch.randn(64, 10), torch.randn(10)
    y = x @ w_true
    w = torch.nn.Parameter(torch.full((10,), 0.1))
    optimizer = torch.optim.Adam([w], lr=lr)
    tuner = TracTuner(optimizer, PAPER_BETAS, s_init, 1e-8) if s_init else None
    losses = []
    for _ in range(steps):
        loss = (x @ w - y).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        w.grad += noise * torch.randn(10)
        optimizer.step()
        losses.append(loss.item())
    return losses, tuner.scale if tuner else 1.0


def test_trac_default_s_init_and_its_first_scale():
    learner = make_learner({"trac": {}}, lr=1e-3)
    trac = learner.strategies.strategies[0]
    assert (trac.settings.s_init, tuple(trac.settings.betas)) == (1e-2, PAPER_BETAS)
    learner.optimize(step_context(learner))  # h = 0 on the first step
    first = sum(1e-2 * erfi(b) / erfi(1 / math.sqrt(2)) for b in PAPER_BETAS)
    assert trac.tuner.scale == pytest.approx(first, rel=1e-6)  # ≈ 0.1: a tenth of Adam's step


def test_trac_scale_grows_to_follow_adam_within_tens_of_noisy_steps_from_the_default():
    """S multiplies Adam's accumulated steps. From the paper's s_init = 1e-8 it needs ~40
    consistent steps to reach 1 (erfi grows like exp(x²)), and with noisy gradients, as in
    PPO, it stays below 1e-3 for 80 steps: the weights barely leave their initial values.
    From 1e-2 it passes 1 and the loss falls as fast as plain Adam's."""
    adam, _ = noisy_least_squares(None)
    paper, paper_scale = noisy_least_squares(1e-8)
    default, default_scale = noisy_least_squares(1e-2)
    assert paper_scale < 1e-3 and paper[-1] > 0.99 * paper[0]
    assert default_scale > 1 and default[-1] < adam[-1]


# -- the bench's bookkeeping -----------------------------------------------------------------------
def bench_module():
    spec = importlib.util.spec_from_file_location("first_task_defaults",
                                                  ROOT / "bench" / "first_task_defaults.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_bench_marks_switch_only_settings_and_bootstraps_a_ratio_of_means(capsys):
    bench = bench_module()
    only = {text: bench.switch_only(bench.parse_arm(text), "ppo") for text in
            ("reset", "shrink_perturb", "shrink_perturb={when: step}",
             "reset={every_steps: 100}", "l2", "c_chain")}
    assert only == {"reset": True, "shrink_perturb": True, "shrink_perturb={when: step}": False,
                    "reset={every_steps: 100}": False, "l2": False, "c_chain": False}
    ratio, low, high = bench.ratio_ci(np.array([0.4, 0.5, 0.6]), np.array([1.0, 1.0, 1.0]))
    assert ratio == pytest.approx(0.5) and 0.4 <= low < 0.5 < high <= 0.6
    for text, message in (("nope", "unknown strategy 'nope'"),
                          ("redo={threshold: [", "settings are not YAML"),
                          ("redo=[1]", "settings must be a mapping")):
        with pytest.raises(SystemExit) as stopped:
            bench.parse_arm(text)
        assert stopped.value.code == 2 and message in capsys.readouterr().err
