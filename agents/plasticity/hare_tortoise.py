"""Hare & Tortoise: a slow exponential moving average of the network (the tortoise) that the
trained network (the hare) is periodically reset to (Lee et al. 2024)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from agents.errors import at_least, decay_rate
from agents.plasticity.base import Strategy, register_strategy


@register_strategy("hare_tortoise")
class HareTortoise(Strategy):
    """Hare & Tortoise: after every gradient step a slow copy of the parameters, the tortoise,
    moves θ_slow ← τ·θ_slow + (1−τ)·θ, and every reset_every gradient steps the network, the
    hare, is set to it. As in the authors' code (dojeon-ai/Hare-Tortoise,
    src/trainers/base.py): the hare trains (here it also acts), the tortoise starts as the
    initial network and is only averaged and reset to, and the optimizer's state is kept at a
    reset (they copy the values and leave Adam alone). τ = 0.999 is theirs (trainer.ema in every
    script); they reset every 10 epochs, about 2000 gradient steps on full CIFAR-10 at their
    batch 256 (196 per epoch): the default here. Only parameters are averaged (buffers, e.g.
    plasticity_injection's frozen heads, stay the hare's). Logs resets and distance:
    ‖θ − θ_slow‖ / ‖θ_slow‖."""

    paper = "Lee et al. 2024, Slow and steady wins the race: maintaining plasticity with Hare " \
            "and Tortoise networks (ICML 2024, arXiv 2406.02596)"
    order = 80  # after the other post-step edits, so the average sees each step's final weights
    state_attributes = ("tortoise", "resets")

    @dataclass
    class Settings:
        ema: float = field(default=0.999, metadata=decay_rate())  # τ, the tortoise's decay
        # gradient steps between resets of the hare to the tortoise
        reset_every: int = field(default=2000, metadata=at_least(1))

    def setup(self, ctx):
        self.params = dict(ctx.network.named_parameters())
        self.tortoise = {name: param.detach().clone() for name, param in self.params.items()}
        self.resets = 0

    @torch.no_grad()
    def after_optimizer_step(self, step):
        ema = self.settings.ema
        for name, param in self.params.items():
            self.tortoise[name].mul_(ema).add_(param, alpha=1 - ema)
        if step.ctx.update_count % self.settings.reset_every == 0:
            for name, param in self.params.items():
                param.copy_(self.tortoise[name])
            self.resets += 1

    @torch.no_grad()
    def metrics(self):
        gap = sum((param - self.tortoise[name]).pow(2).sum() for name, param in self.params.items())
        size = sum(slow.pow(2).sum() for slow in self.tortoise.values())
        return {"resets": self.resets, "distance": float((gap / size).sqrt())}
