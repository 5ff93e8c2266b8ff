"""Strategies that change the network itself: CReLU, deep Fourier features, LayerNorm,
normalise-and-project.

Each logs one cheap scalar per hidden block, `<key>/<block>`, reduced from the step's own features
(no extra forward pass), so that a run's TensorBoard shows it was on.
"""

from __future__ import annotations

import torch

from agents.plasticity.base import Strategy, register_strategy


class BlockScalars(Strategy):
    """Logs `key/<block>`: `reduce(features)` of each hidden block at the last gradient step."""

    key = ""
    last: dict = {}  # "<key>/<block>" -> 0-dim tensor; replaced each step, never mutated
    state_attributes = ("last",)  # a resumed run logs what the uninterrupted one would

    @staticmethod
    def reduce(features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def after_optimizer_step(self, step):
        # Left on the device: `metrics` reads them once per iteration, not once per step.
        self.last = {f"{self.key}/{name}": self.reduce(features.detach())
                     for name, features in step.features.items()}

    def metrics(self):
        return {key: float(value) for key, value in self.last.items()}

    def load_state_dict(self, state):
        # A checkpoint from before these scalars existed resumes too (nothing logged until the
        # first step).
        super().load_state_dict({"last": {}, **state})


@register_strategy("crelu")
class CReLU(BlockScalars):
    """Concatenated ReLU, [relu(x), relu(−x)], in every hidden block: each block's output doubles
    and the next layer reads twice as many inputs; head output sizes are unchanged. Logs
    positive_fraction: the share of the relu(x) half that is active, what a plain ReLU would
    keep (the relu(−x) half carries the rest)."""

    paper = "Abbas et al. 2023, Loss of plasticity in continual deep reinforcement learning " \
            "(CoLLAs 2023); Shang et al. 2016"
    key = "positive_fraction"

    def configure_network(self, spec):
        spec.activation = "crelu"

    @staticmethod
    def reduce(features):
        return (features[:, :features.shape[1] // 2] > 0).float().mean()


@register_strategy("fourier_features")
class FourierFeatures(BlockScalars):
    """Deep Fourier features: every hidden block's activation becomes [sin(z), cos(z)] of each
    unit's pre-activation z (after the norm, if any), concatenated like CReLU, so each block's
    output doubles and the next layer reads twice as many inputs; head output sizes are
    unchanged. The paper's activation (the concatenation of a sine and a cosine of the same
    linear output, in every layer), with no frequency scale and the network's own initialiser;
    the paper's best continual results add a regulariser (L2 or L2 Init: combine with l2_init).
    A unit's two outputs never vanish together (|sin z| + |cos z| ≥ 1, before any max-pool), so
    its ReDo score stays near or above 1/√2 and ReDo's or SNR's resets leave it alone. Logs
    cos_mean: near 1, the block's pre-activations are near 0, where the pair is near-linear
    (sin z ≈ z)."""

    paper = "Lewandowski et al. 2025, Plastic learning with deep Fourier features " \
            "(ICLR 2025, arXiv 2410.20634)"
    incompatible = {"crelu": "both replace every hidden block's activation"}
    key = "cos_mean"

    def configure_network(self, spec):
        spec.activation = "fourier"

    @staticmethod
    def reduce(features):
        return features[:, features.shape[1] // 2:].mean()  # channels out.. : the cosines


@register_strategy("layer_norm")
class LayerNorm(BlockScalars):
    """LayerNorm before every hidden non-linearity (GroupNorm with one group after a conv, i.e.
    LayerNorm over channels and positions, with a per-channel affine). Logs active_fraction: the
    share of each block's outputs above zero."""

    paper = "Lyle et al. 2024, Disentangling the causes of plasticity loss in neural networks " \
            "(arXiv 2402.18762)"
    key = "active_fraction"

    def configure_network(self, spec):
        spec.layer_norm = True

    @staticmethod
    def reduce(features):
        return (features > 0).float().mean()


@register_strategy("normalize_project")
class NormalizeProject(BlockScalars):
    """Normalise-and-project (NaP): LayerNorm before every hidden non-linearity, and after every
    gradient step each hidden layer's weight is rescaled to its initial norm. LayerNorm makes the
    block invariant to that scale, so the projection only stops the norm from growing, which would
    otherwise shrink the effective learning rate. Heads (not followed by a norm) are left free.
    Logs active_fraction (as layer_norm) and norm_drift: the largest |‖W‖/‖W₀‖ − 1| the step left
    before the projection undid it."""

    paper = "Lyle et al. 2024, Normalization and effective learning rates in reinforcement " \
            "learning (NeurIPS 2024)"
    order = 90  # after every other post-step edit, so the weights end each step on the sphere
    state_attributes = ("norms", "last")
    key = "active_fraction"
    reduce = staticmethod(LayerNorm.reduce)

    def configure_network(self, spec):
        spec.layer_norm = True

    def setup(self, ctx):
        self.layers = list(ctx.network.hidden_layers().values())
        self.norms = [layer.weight.detach().norm() for layer in self.layers]

    @torch.no_grad()
    def after_optimizer_step(self, step):
        drift = []
        for layer, norm in zip(self.layers, self.norms):
            current = layer.weight.norm()
            drift.append((current / norm - 1).abs())
            layer.weight.mul_(norm / current)
        super().after_optimizer_step(step)
        self.last = {**self.last, "norm_drift": torch.stack(drift).max()}
