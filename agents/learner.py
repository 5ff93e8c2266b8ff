"""The one update path: every gradient step of every agent goes through `Learner.optimize`.

penalties from strategies -> backward -> gradient clipping -> optimizer step -> post-step hooks.
PPO and DQN build a loss and call `optimize`; they never name a strategy. One strategy may wrap
the gradient computation (`Strategy.gradient`: SAM takes it at a perturbed point).

`precision: bf16` is mixed precision on this path alone: the gradient steps' forward runs under
autocast and hands back fp32 outputs and features, so the loss, every strategy penalty, the
gradients, Adam's state and the weights stay fp32; a graph-free network the gradient steps read
(DQN's target network) passes through `frozen`, a bf16 copy cast once per change of its weights.
Acting, the spectral monitor and the strategies' own probes call the network directly, in fp32.
"""

from __future__ import annotations

import contextlib
import copy
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


class TensorsKey:
    """Which tensors a module holds and how often each was written. torch bumps a tensor's
    `_version` at every in-place write (copy_, lerp_, load_state_dict), and a replaced parameter
    or buffer (a strategy restructuring a head) is another object, so any change to the module's
    weights makes a new key unequal to an old one."""

    def __init__(self, module: nn.Module):
        self.tensors = [*module.parameters(), *module.buffers()]
        self.versions = [t._version for t in self.tensors]

    def __eq__(self, other) -> bool:
        return (isinstance(other, TensorsKey) and len(self.tensors) == len(other.tensors)
                and all(a is b for a, b in zip(self.tensors, other.tensors))
                and self.versions == other.versions)


class CastCopy:
    """A graph-free module's copy with its floating tensors in `dtype`, remade only when the
    module's tensors change (TensorsKey). Under autocast its passes give the module's own
    results bitwise (autocast rounds each weight to `dtype` the same way), without rounding
    every weight again at every pass: autocast caches its casts only for weights that require
    grad, and only within one autocast region. For DQN's target network, written once every
    target update and read by every gradient step in between."""

    def __init__(self, dtype: torch.dtype):
        self.dtype, self.key, self.copy = dtype, None, None

    def __call__(self, module: nn.Module) -> nn.Module:
        key = TensorsKey(module)
        if key != self.key:
            self.copy = copy.deepcopy(module).to(self.dtype).requires_grad_(False)
            self.key = key
        return self.copy


class Learner:
    def __init__(self, spec: NetworkSpec, strategies: StrategyStack, ctx_kwargs: dict,
                 learning_rate: float, adam_eps: float, max_grad_norm: Optional[float],
                 device: torch.device, compile: bool = False, adam_betas=(0.9, 0.999),
                 precision: str = "fp32"):
        self.strategies = strategies
        self.autocast_dtype = AUTOCAST_DTYPES[precision]
        self._cast_copy = CastCopy(self.autocast_dtype) if self.autocast_dtype else None
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

    def frozen(self, module: nn.Module) -> nn.Module:
        """A graph-free module (a target network) as the gradient steps should call it under
        `autocast()`: itself in fp32, its cached low-precision copy in bf16 (CastCopy). One
        cache: pass the same module every time (another one evicts it), and never the online
        network, whose weights change at every step (a fresh copy each call)."""
        return module if self._cast_copy is None else self._cast_copy(module)

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
