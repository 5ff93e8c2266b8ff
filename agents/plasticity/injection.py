"""Plasticity injection: freeze the heads and learn a change to their predictions with fresh ones.

The injected part is every linear output layer (PPO's policy and value, DQN's q), as Juliani &
Ash 2024 inject PPO's policy and value layers; the torso keeps training under them, as the
paper's encoder does. The paper's own head on Atari is the fully connected part after the
convolutions (the reproduction timoklein/plasticity-injection-torch: the 512-unit layer and the
output): injecting a hidden block too would add a parallel tower that every per-block strategy
and metric would have to know about, and a nonlinear head could not fold repeated injections
into one frozen copy. A Gaussian policy's state-independent log-std is left out: its fresh draw
is zero, so injecting it would only drop its Adam moments.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from agents.errors import at_least
from agents.networks import InjectedHead
from agents.plasticity import ops
from agents.plasticity.base import Strategy, register_strategy


@register_strategy("plasticity_injection")
class PlasticityInjection(Strategy):
    """Freeze each linear head and add a fresh trainable one minus a frozen copy of it,
    out = old(x) + new(x) − new₀(x), so that the function is unchanged at the injection (bitwise
    the first time) and only `new` learns; at task switches and/or every every_steps gradient
    steps (0: never). Earlier injections fold into `old`, so a head costs three linear maps
    however often it was injected. The frozen parts are buffers: the trainable parameters stay
    the same tensors, as many as before (the paper's point), so the optimizer (the new head's
    Adam state starts afresh), TRAC and the spectral monitor (its Hessian is over them alone)
    need nothing new; DQN's target network is injected alike with the same draw, its outputs
    unchanged, and synced on its own schedule."""

    paper = "Nikishin et al. 2023, Deep reinforcement learning with plasticity injection " \
            "(NeurIPS 2023)"
    state_attributes = ("injections",)

    @dataclass
    class Settings:
        at_switch: bool = True
        # gradient steps between injections; 0: never
        every_steps: int = field(default=0, metadata=at_least(0))

    def __init__(self, settings):
        super().__init__(settings)
        self.injections = 0

    def setup(self, ctx):
        self.generator = self.make_generator(ctx)
        self.ctx = ctx
        self.heads = [name for name, head in ctx.network.heads.items()
                      if isinstance(head, nn.Linear)]

    def networks(self) -> list[nn.Module]:
        """The online network and, if the agent has one, its target (injected alike)."""
        return [n for n in (self.ctx.network, self.ctx.target_network) if n is not None]

    def wrap_heads(self) -> None:
        """The heads as InjectedHeads, once (their function unchanged)."""
        for network in self.networks():
            for name in self.heads:
                if not isinstance(network.heads[name], InjectedHead):
                    network.heads[name] = InjectedHead(network.heads[name])

    def inject(self) -> None:
        self.wrap_heads()
        network, optimizer = self.ctx.network, self.ctx.optimizer
        for name in self.heads:
            head = network.heads[name]
            fresh = ops.fresh_layer(network, f"heads.{name}", head, self.generator)
            for copy in self.networks():
                copy.heads[name].inject(fresh)
            for param in head.parameters():  # a fresh layer's optimizer state starts afresh
                optimizer.state.pop(param, None)
        self.injections += 1

    def after_optimizer_step(self, step):
        every = self.settings.every_steps
        if every and step.ctx.update_count % every == 0:
            self.inject()

    def on_task_switch(self, ctx, prev, nxt):
        if self.settings.at_switch:
            self.inject()

    def load_state_dict(self, state):
        """Before the network's weights load (Learner.load_state_dict): a resumed run's fresh
        network (and target) must first take the injected shape."""
        super().load_state_dict(state)
        if self.injections:
            self.wrap_heads()

    def metrics(self):
        return {"injections": self.injections}
