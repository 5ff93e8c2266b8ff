"""The one update path: every gradient step of every agent goes through `Learner.optimize`.

penalties from strategies -> backward -> gradient clipping -> optimizer step -> post-step hooks.
PPO and DQN build a loss and call `optimize`; they never name a strategy. One strategy may wrap
the gradient computation (`Strategy.gradient`: SAM takes it at a perturbed point).

`precision: bf16` is mixed precision on this path alone: the gradient steps' forward runs under
autocast and hands back fp32 outputs and features, so the loss, every strategy penalty, the
gradients, Adam's state and the weights stay fp32. Acting, the spectral monitor and the
strategies' own probes call the network directly, in fp32.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import nn

from agents.adam import adam_factory
from agents.context import StepContext, TrainContext
from agents.networks import Network, NetworkSpec
from agents.plasticity.base import StrategyStack

COUNTERS = ("global_step", "update_count", "iteration", "task_index", "task_name")
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16}  # precision -> autocast dtype
PRECISIONS = tuple(AUTOCAST_DTYPES)


def as_fp32(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors cast to fp32 (differentiably), others as they are."""
    return {name: t.float() if t.is_floating_point() else t for name, t in tensors.items()}


def mixed_precision_forward(network: Network, obs: torch.Tensor, dtype: torch.dtype):
    """network(obs, return_features=True) under autocast to `dtype`; outputs and features handed
    back in fp32, so whatever the caller computes from them (loss, penalties) is fp32."""
    with torch.autocast(obs.device.type, dtype=dtype):
        outputs, features = network(obs, return_features=True)
    return as_fp32(outputs), as_fp32(features)


class Learner:
    def __init__(self, spec: NetworkSpec, strategies: StrategyStack, ctx_kwargs: dict,
                 learning_rate: float, adam_eps: float, max_grad_norm: Optional[float],
                 device: torch.device, compile: bool = False, adam_betas=(0.9, 0.999),
                 precision: str = "fp32"):
        self.strategies = strategies
        self.autocast_dtype = AUTOCAST_DTYPES[precision]
        strategies.configure_network(spec)
        self.network = Network(spec).to(device)
        # The forward pass (and so the backward) of every gradient step, torch.compile'd on
        # request; acting and the spectral monitor's double backward use the eager network.
        self.train_forward = torch.compile(self._forward) if compile else self._forward
        factory = strategies.configure_optimizer(
            adam_factory(learning_rate, adam_eps, adam_betas))
        self.optimizer = factory(list(self.network.parameters()))
        self.max_grad_norm = max_grad_norm
        self.ctx = TrainContext(network=self.network, optimizer=self.optimizer, device=device,
                                **ctx_kwargs)
        # Set by any step whose loss is NaN/Inf; a device flag, read once per iteration (a host
        # sync per gradient step would stall a GPU).
        self.nonfinite_loss = torch.zeros((), dtype=torch.bool, device=device)

    def _forward(self, obs: torch.Tensor):
        if self.autocast_dtype is None:
            return self.network(obs, return_features=True)
        return mixed_precision_forward(self.network, obs, self.autocast_dtype)

    def autocast(self):
        """The mixed-precision context of the gradient steps' forward passes (bf16), or none."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.ctx.device.type, dtype=self.autocast_dtype)

    def setup(self) -> None:
        """Call once the agent has filled in the rest of the context (targets, samplers)."""
        self.strategies.setup(self.ctx)

    def set_learning_rate(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def optimize(self, step: StepContext) -> dict[str, torch.Tensor]:
        """One gradient step on step.loss plus strategy penalties; returns detached stats."""
        penalties = self.strategies.gradient(step, self.backward)
        stats = {f"plasticity/{name}/penalty": p.detach() for name, p in penalties.items()}
        if self.max_grad_norm is not None:
            stats["losses/grad_norm"] = nn.utils.clip_grad_norm_(
                self.network.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.ctx.update_count += 1
        self.strategies.after_optimizer_step(step)
        return stats

    def backward(self, step: StepContext) -> dict[str, torch.Tensor]:
        """∇(step.loss + strategy penalties) at the current parameters into .grad; returns the
        penalties. Once per step, or again at the point a gradient-wrapping strategy moved to."""
        penalties = self.strategies.loss_penalty(step)
        total = step.loss + sum(penalties.values()) if penalties else step.loss
        self.nonfinite_loss |= ~torch.isfinite(total.detach())
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        return penalties

    def after_update(self) -> None:
        self.ctx.iteration += 1
        self.strategies.after_update(self.ctx)

    def state_dict(self) -> dict:
        """Network, optimizer, strategies and counters: the part every agent's checkpoint shares."""
        return {"network": self.network.state_dict(), "optimizer": self.optimizer.state_dict(),
                "strategies": self.strategies.state_dict(),
                "counters": {name: getattr(self.ctx, name) for name in COUNTERS}}

    def load_state_dict(self, state: dict) -> None:
        # Strategies first: one may restructure the fresh network (plasticity_injection's
        # injected heads) so that the saved weights fit it.
        self.strategies.load_state_dict(state["strategies"])
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        for name in COUNTERS:
            setattr(self.ctx, name, state["counters"][name])
