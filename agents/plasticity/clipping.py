"""Weight clipping: after every gradient step, every weight back inside a box set by its layer's
initialisation scale (Elsayed, Lan, Lyle & Mahmood 2024)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from agents.errors import positive
from agents.plasticity.base import Strategy, register_strategy


def init_bound(network, layer) -> float:
    """s, the scale of a layer's initialisation: the bound of the uniform distribution it is
    drawn from. lecun_uniform draws U(±√(3/fan_in)): that bound. Orthogonal init has no bound;
    the paper's own PPO (orthogonal-initialised, CleanRL's) clips at 1/√fan_in, PyTorch's
    default U(±1/√fan_in): that, independent of the gain, which a bound scaled by it would pin
    the 0.01-gain policy head near its tiny initial values."""
    fan_in = layer.weight[0].numel()  # one output's inputs, as Network.init_layer_ counts it
    scale = 3.0 if network.spec.init == "lecun_uniform" else 1.0
    return math.sqrt(scale / fan_in)


@register_strategy("weight_clipping")
class WeightClipping(Strategy):
    """After every gradient step, clamp each weight and bias of every Conv2d/Linear layer to
    [−κ·s, κ·s], s the layer's initialisation bound: √(3/fan_in) under lecun_uniform (the bound
    of its uniform draw, the paper's s), 1/√fan_in under orthogonal init (what the authors' PPO,
    orthogonal-initialised like ours, clips at); a bias takes its layer's bound, as their code
    does. κ = 3 and heads clipped too (clip_heads) are their PPO script's defaults
    (mohmdelsayed/weight-clipping, rl_experiments/ppo_continuous_action_clipped.py). Weights
    inside the box are untouched; norm affines and constant heads (the Gaussian policy's log-std:
    no fan-in) are left free.
    Logs clipped_fraction: the share of entries the last step clipped."""

    paper = "Elsayed et al. 2024, Weight clipping for deep continual and reinforcement " \
            "learning (RLC 2024, arXiv 2407.01704)"
    order = 75  # after resets and perturbations, so every step ends inside the box
    state_attributes = ("clipped_fraction",)

    @dataclass
    class Settings:
        kappa: float = field(default=3.0, metadata=positive())  # κ: the box's half-width in s
        clip_heads: bool = True  # the output layers too (cf. their clip_last_layer)

    def setup(self, ctx):
        network = ctx.network
        layers = [(name, layer) for name, layer in network.weight_layers().items()
                  if self.settings.clip_heads or not name.startswith("heads.")]
        # (parameter, κ·s) for every clipped weight and bias; s fixed by the architecture, so a
        # resumed run recomputes it.
        self.bounds = [(param, self.settings.kappa * init_bound(network, layer))
                       for _, layer in layers for param in (layer.weight, layer.bias)]
        self.entries = sum(param.numel() for param, _ in self.bounds)
        self.clipped_fraction = torch.zeros((), device=ctx.device)

    @torch.no_grad()
    def after_optimizer_step(self, step):
        clipped = torch.zeros((), dtype=torch.long, device=self.clipped_fraction.device)
        for param, bound in self.bounds:
            clipped += (param.abs() > bound).sum()  # counted on the device: no host sync
            param.clamp_(-bound, bound)
        self.clipped_fraction = clipped / self.entries

    def metrics(self):
        return {"clipped_fraction": float(self.clipped_fraction)}
