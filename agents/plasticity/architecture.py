"""Strategies that change the network itself: CReLU, LayerNorm, normalise-and-project."""

from __future__ import annotations

import torch

from agents.plasticity.base import Strategy, register_strategy


@register_strategy("crelu")
class CReLU(Strategy):
    """Concatenated ReLU, [relu(x), relu(−x)], in every hidden block: each block's output doubles
    and the next layer reads twice as many inputs; head output sizes are unchanged."""

    paper = "Abbas et al. 2023, Loss of plasticity in continual deep reinforcement learning " \
            "(CoLLAs 2023); Shang et al. 2016"

    def configure_network(self, spec):
        spec.activation = "crelu"


@register_strategy("layer_norm")
class LayerNorm(Strategy):
    """LayerNorm before every hidden non-linearity (GroupNorm with one group after a conv, i.e.
    LayerNorm over channels and positions, with a per-channel affine)."""

    paper = "Lyle et al. 2024, Disentangling the causes of plasticity loss in neural networks " \
            "(arXiv 2402.18762)"

    def configure_network(self, spec):
        spec.layer_norm = True


@register_strategy("normalize_project")
class NormalizeProject(Strategy):
    """Normalise-and-project (NaP): LayerNorm before every hidden non-linearity, and after every
    gradient step each hidden layer's weight is rescaled to its initial norm. LayerNorm makes the
    block invariant to that scale, so the projection only stops the norm from growing, which would
    otherwise shrink the effective learning rate. Heads (not followed by a norm) are left free."""

    paper = "Lyle et al. 2024, Normalization and effective learning rates in reinforcement " \
            "learning (NeurIPS 2024)"
    order = 90  # after every other post-step edit, so the weights end each step on the sphere
    state_attributes = ("norms",)

    def configure_network(self, spec):
        spec.layer_norm = True

    def setup(self, ctx):
        self.layers = list(ctx.network.hidden_layers().values())
        self.norms = [layer.weight.detach().norm() for layer in self.layers]

    @torch.no_grad()
    def after_optimizer_step(self, step):
        for layer, norm in zip(self.layers, self.norms):
            layer.weight.mul_(norm / layer.weight.norm())
