"""Operations several strategies share: fresh parameters from a layer's initialiser, re-initialising
units (fresh incoming weights, zero outgoing weights, cleared optimizer moments) or whole layers.

A *unit* of a hidden block is one output channel of its Conv2d/Linear. With CReLU a unit emits two
output channels (relu(x) at index i, relu(-x) at index C + i), with deep Fourier features too
(sin(x) at i, cos(x) at C + i: `Block.out_multiplier`); a linear layer after a conv block
reads each channel at every spatial position (flattened channel-major). Both are resolved here so
that ReDo, continual backprop and resets never index layers by hand.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from analysis.spectral.units import unit_scores


def fresh_layer(network, module_name: str, layer: nn.Module,
                generator: torch.Generator) -> nn.Module:
    """A CPU copy of `layer` re-drawn from its initialiser (CPU, so any generator works)."""
    fresh = copy.deepcopy(layer).cpu()
    with torch.no_grad():
        network.init_layer_(module_name, fresh, generator)
    return fresh


def output_channels(block, units: torch.Tensor) -> torch.Tensor:
    """Output channels of `units` (both CReLU or sin/cos halves)."""
    return torch.cat([units + k * block.spec.out for k in range(block.out_multiplier)])


def by_input_channel(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """A consumer's weight (or any tensor of its shape) as a view (out, channels, positions)."""
    return weight.view(weight.shape[0], channels, -1)


def channel_count(block) -> int:
    return block.spec.out * block.out_multiplier


def per_unit(block, per_channel: torch.Tensor) -> torch.Tensor:
    """Sum a per-output-channel quantity over each unit's channels (CReLU, Fourier: two)."""
    return per_channel.view(block.out_multiplier, block.spec.out).sum(0)


def unit_activity_scores(block, features: torch.Tensor) -> torch.Tensor:
    """ReDo scores per unit, E|h_i| / mean_j E|h_j|; a two-channel unit's channels are averaged."""
    return per_unit(block, unit_scores(features)).float() / block.out_multiplier


def outgoing_weight_mass(network, block_name: str) -> torch.Tensor:
    """Per output channel of a block: the summed |w| of every weight that reads it."""
    channels = channel_count(network.blocks[block_name])
    return sum(by_input_channel(layer.weight.detach().abs(), channels).sum((0, 2))
               for layer in network.consumers(block_name))


def _state_tensors(optimizer, param: nn.Parameter) -> list[torch.Tensor]:
    """Per-element optimizer state of `param` (Adam's exp_avg, exp_avg_sq, ...); not `step`."""
    if optimizer is None:
        return []
    return [v for v in optimizer.state.get(param, {}).values()
            if torch.is_tensor(v) and v.shape == param.shape]


@torch.no_grad()
def reinit_units(network, optimizer, block_name: str, units: torch.Tensor,
                 generator: torch.Generator) -> None:
    """Fresh incoming weights and zero bias for `units` (rows of a fresh draw of the layer's own
    initialiser), their norm's affine reset, zero outgoing weights, so the network's function is
    unchanged where the units were silent, and their optimizer moments cleared (step counts stay;
    dopamine's ReDo recycler and Dohare et al.'s GnT clear them too)."""
    if len(units) == 0:
        return
    block = network.blocks[block_name]
    units = units.to(block.layer.weight.device)
    fresh = fresh_layer(network, f"blocks.{block_name}.layer", block.layer, generator)
    incoming = [(block.layer.weight, fresh.weight), (block.layer.bias, fresh.bias)]
    if isinstance(block.norm, (nn.LayerNorm, nn.GroupNorm)):
        incoming += [(block.norm.weight, torch.ones_like(block.norm.weight, device="cpu")),
                     (block.norm.bias, torch.zeros_like(block.norm.bias, device="cpu"))]
    for param, source in incoming:
        param[units] = source.to(param.device)[units]
        for state in _state_tensors(optimizer, param):
            state[units] = 0
    channels = output_channels(block, units)
    for layer in network.consumers(block_name):
        for tensor in [layer.weight, *_state_tensors(optimizer, layer.weight)]:
            by_input_channel(tensor, channel_count(block))[:, channels] = 0


def module_params(network, name: str) -> list[nn.Parameter]:
    """A hidden block (layer and norm) by its name, or a head by 'heads.<name>'."""
    module = network.blocks[name] if name in network.blocks else network.get_submodule(name)
    return list(module.parameters())


@torch.no_grad()
def reset_modules(network, optimizer, names: list[str], generator: torch.Generator) -> None:
    """Re-initialise hidden blocks (by block name) and heads ('heads.<name>') entirely, and drop
    their optimizer state, step counts included (a freshly initialised layer starts afresh)."""
    for name in names:
        if name in network.blocks:
            block = network.blocks[name]
            module_name, layer = f"blocks.{name}.layer", block.layer
            if not isinstance(block.norm, nn.Identity):
                block.norm.reset_parameters()
        else:
            module_name, layer = name, network.get_submodule(name)
        fresh = fresh_layer(network, module_name, layer, generator)
        for param, source in zip(layer.parameters(), fresh.parameters()):
            param.copy_(source.to(param.device))
        if optimizer is not None:
            for param in module_params(network, name):
                optimizer.state.pop(param, None)
