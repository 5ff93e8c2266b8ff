"""SAM in the one update path: one step is the hand computation θ' = θ − lr·∇L(θ + ρ·g/‖g‖),
with the penalties at the perturbed point, from θ restored exactly; refused combinations are one
line; PPO and DQN train with it."""

import copy

import pytest
import torch
from omegaconf import OmegaConf
from strategy_helpers import make_learner, step_context, value_loss
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_strategies import tiny
from torch.func import functional_call
from training import run

from agents.adam import adam_factory
from agents.context import StepContext
from agents.errors import ConfigError
from agents.plasticity import build_strategies
from agents.plasticity.base import Strategy, StrategyStack

RHO = 0.05


def gradient_at(network, params: dict, obs, loss_of) -> dict:
    """∇ loss_of(outputs, params) at `params` (name -> tensor), the network left untouched."""
    params = {name: value.detach().requires_grad_() for name, value in params.items()}
    loss = loss_of(functional_call(network, params, (obs,)), params)
    return dict(zip(params, torch.autograd.grad(loss, list(params.values()))))


def hand_sam_gradient(network, obs, loss_of, rho=RHO) -> tuple[dict, dict]:
    """(θ, ∇L(θ + ρ·g/‖g‖)), g = ∇L(θ), ‖g‖ over all parameters."""
    theta = {name: p.detach().clone() for name, p in network.named_parameters()}
    g = gradient_at(network, theta, obs, loss_of)
    norm = torch.linalg.vector_norm(torch.stack([v.norm() for v in g.values()]))
    perturbed = {name: theta[name] + g[name] * (rho / (norm + 1e-12)) for name in theta}
    return theta, gradient_at(network, perturbed, obs, loss_of)


def agent_loss(outputs, params):
    return value_loss(outputs)


def agent_loss_and_l2(coef):
    """value_loss plus the l2 strategy's penalty coef·‖θ‖² on every Linear weight and bias."""
    def loss_of(outputs, params):
        return value_loss(outputs) + coef * sum(v.pow(2).sum() for v in params.values())
    return loss_of


def with_sgd(learner, lr):
    learner.optimizer = learner.ctx.optimizer = torch.optim.SGD(learner.network.parameters(), lr)
    return learner


@pytest.mark.parametrize("plasticity,loss_of", [
    ({"sam": {"rho": RHO}}, agent_loss),
    ({"sam": {"rho": RHO}, "l2": {"coef": 0.3}}, agent_loss_and_l2(0.3)),  # penalty at θ + ε
])
def test_one_sgd_step_is_theta_minus_lr_times_the_gradient_at_the_perturbed_point(plasticity,
                                                                                loss_of):
    learner = with_sgd(make_learner(plasticity), lr=0.1)
    theta, sam_grad = hand_sam_gradient(learner.network, learner.obs, loss_of)
    stats = learner.optimize(step_context(learner, loss_fn=value_loss))
    for name, p in learner.network.named_parameters():
        torch.testing.assert_close(p.detach(), theta[name] - 0.1 * sam_grad[name],
                                   rtol=0, atol=1e-7)
    if "l2" in plasticity:  # the penalty reported is the step's, at θ
        torch.testing.assert_close(stats["plasticity/l2/penalty"],
                                   0.3 * sum(v.pow(2).sum() for v in theta.values()))


def test_adam_steps_from_theta_with_the_gradient_at_the_perturbed_point():
    learner = make_learner({"sam": {"rho": RHO}, "l2": {"coef": 0.3}})
    reference = copy.deepcopy(learner.network)
    adam = adam_factory(1e-3, 1e-8)(list(reference.parameters()))
    at_step = []
    learner.optimizer.register_step_pre_hook(lambda *_: at_step.append(
        [p.detach().clone() for p in learner.network.parameters()]))
    for _ in range(3):  # Adam's moments carry over
        theta, sam_grad = hand_sam_gradient(reference, learner.obs, agent_loss_and_l2(0.3))
        learner.optimize(step_context(learner, loss_fn=value_loss))
        for (name, p), before in zip(reference.named_parameters(), at_step[-1]):
            assert torch.equal(before, theta[name])  # the perturbation is undone, bitwise
            p.grad = sam_grad[name]
        adam.step()
        for p, q in zip(learner.network.parameters(), reference.parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-7)


def test_logs_the_gradient_norm_and_the_sharpness():
    learner = make_learner({"sam": {"rho": RHO}})
    theta = {name: p.detach().clone() for name, p in learner.network.named_parameters()}
    g = gradient_at(learner.network, theta, learner.obs, agent_loss)
    learner.optimize(step_context(learner, loss_fn=value_loss))
    metrics = learner.strategies.metrics()
    norm = torch.linalg.vector_norm(torch.stack([v.norm() for v in g.values()]))
    torch.testing.assert_close(metrics["sam/grad_norm"], norm)
    # first order: L(θ + ε) − L(θ) ≈ ρ‖g‖
    assert metrics["sam/sharpness"].item() == pytest.approx(RHO * norm.item(), rel=0.2)


def test_an_agent_without_a_loss_fn_is_refused_in_one_line():
    learner = make_learner({"sam": {}})
    outputs, features = learner.network(learner.obs, return_features=True)
    step = StepContext(learner.ctx, learner.obs, value_loss(outputs), features)
    with pytest.raises(ConfigError, match="gives no loss_fn") as error:
        learner.optimize(step)
    assert "\n" not in str(error.value)


def test_sam_with_c_chain_is_refused_in_one_line(tmp_path, assert_one_line_exit_2):
    with pytest.raises(ConfigError, match="sam and c_chain cannot combine"):
        build_strategies(OmegaConf.create({"c_chain": {}, "sam": {}}))
    argv = ["train", "tiny", f"runs_root={tmp_path}", "plasticity.sam={}", "plasticity.c_chain={}"]
    assert_one_line_exit_2(argv, "strategies sam and c_chain cannot combine", tmp_path)


def test_two_gradient_wrappers_are_refused():
    class Wrapper(Strategy):
        wraps_gradient = True

    first, second = Wrapper(None), Wrapper(None)
    first.name, second.name = "sam", "other"
    with pytest.raises(ConfigError, match="other, sam both compute the gradient their own way"):
        StrategyStack([first, second])


@pytest.mark.parametrize("agent", ["ppo", "dqn"])
def test_trains_with_every_agent_and_changes_the_run(agent, tmp_path):
    final = {}
    for name, plasticity in (("plain", {}), ("sam", {"sam": {}})):
        cfg = tiny(tmp_path / name, agent)
        cfg.plasticity = plasticity
        trainer = run(cfg, tmp_path / name)
        final[name] = (trainer.ctx.update_count, list(trainer.agent.network.parameters()))
    (steps, plain), (sam_steps, sam) = final["plain"], final["sam"]
    assert sam_steps == steps > 0  # two passes per step, still one step
    assert all(torch.isfinite(p).all() for p in sam)
    assert any(not torch.equal(p, q) for p, q in zip(plain, sam))
    events = EventAccumulator(str(tmp_path / "sam"), size_guidance={"scalars": 0})
    events.Reload()
    assert {"plasticity/sam/grad_norm", "plasticity/sam/sharpness"} <= set(
        events.Tags()["scalars"])
