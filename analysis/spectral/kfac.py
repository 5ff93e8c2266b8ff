"""Kronecker-factored curvature (KFAC / KFC) of Linear and Conv2d layers, and its spectrum.

For a layer computing ``s = W a`` (``[W | b]`` and ``[a; 1]`` when it has a bias), KFAC
approximates the layer's curvature block by ``A (x) G`` with

    A = (1 / (N T)) sum_{n,t} a_{n,t} a_{n,t}^T      inputs (with a ones entry for the bias)
    G = (1 / N)     sum_{n,t} g_{n,t} g_{n,t}^T      per-sample backpropagated curvature

over the ``N`` samples of the batch and the ``T`` positions of each (``T = 1`` for a Linear on
``N x d`` inputs; the ``H' x W'`` output positions of a Conv2d, whose ``a`` are unfolded input
patches, as in Grosse & Martens' KFC). For a row-major flattening of ``[W | b]`` (torch's own
``reshape(-1)``), the block is ``torch.kron(G, A)``; its eigenvalues are all products
``lambda_i(A) mu_j(G)``.

``loss_on_outputs`` must be the *mean* over the batch of per-sample losses. Two choices of ``g``:

fisher="ggn" (default): ``G = (1/N) sum_n B_n^T h_n B_n`` summed over positions, with ``B_n`` the
    Jacobian of the network outputs w.r.t. the layer outputs and ``h_n = N d^2 L / d out_n^2`` the
    per-sample Hessian of the loss on the outputs (exact, via its eigendecomposition; one backward
    pass per output). Then ``A (x) G`` is the exact Gauss-Newton block for a single sample, and
    KFAC's approximation of it otherwise. ``h_n`` keeps its sign, so ``G`` may be indefinite for a
    loss that is not convex in the outputs.
fisher="empirical": ``g_{n,t} = N dL/ds_{n,t}``, the per-sample gradient (empirical Fisher).

Computed with forward hooks and ``torch.autograd.grad`` on the captured layer outputs; no
``.grad`` is written, no parameter, buffer (BatchNorm statistics included) or train/eval mode of
the model changes. Factors and spectra are float64.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from analysis.spectral.hessian import grad_or_zeros

SUPPORTED_LAYERS = (nn.Linear, nn.Conv2d)


@dataclass
class KroneckerFactors:
    """One layer's KFAC block ``torch.kron(gradient_factor, activation_factor)`` and spectra.

    Eigenvalues and ``spectrum`` are in decreasing order; ranks count eigenvalues whose magnitude
    exceeds ``rtol`` times the largest magnitude.
    """

    activation_factor: torch.Tensor  # A
    gradient_factor: torch.Tensor  # G
    activation_eigenvalues: torch.Tensor
    gradient_eigenvalues: torch.Tensor
    activation_rank: int
    gradient_rank: int
    spectrum: torch.Tensor  # eigenvalues of kron(G, A), possibly only the top k


def _select_layers(model: nn.Module, names: Sequence[str] | None) -> dict[str, nn.Module]:
    modules = dict(model.named_modules())
    supported = {name: m for name, m in modules.items() if isinstance(m, SUPPORTED_LAYERS)}
    if names is None:
        names = list(supported)
    for name in names:
        if name not in supported:
            raise ValueError(
                f"no Linear or Conv2d layer named {name!r}; choose from {sorted(supported)}"
            )
        layer = supported[name]
        if isinstance(layer, nn.Conv2d) and (
            layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str)
        ):
            raise ValueError(
                f"{name!r}: KFAC supports Conv2d with groups=1 and numeric zero padding"
            )
    return {name: supported[name] for name in names}


def _layer_inputs(layer: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The ``a`` vectors, ``N x T x D`` (a trailing 1 for the bias), in float64."""
    batch = inputs.shape[0]
    if isinstance(layer, nn.Linear):
        a = inputs.reshape(batch, -1, layer.in_features)
    else:
        patches = F.unfold(inputs, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
        a = patches.transpose(1, 2)
    a = a.to(torch.float64)
    if layer.bias is not None:
        a = torch.cat([a, a.new_ones(*a.shape[:-1], 1)], dim=-1)
    return a


def _per_position(layer: nn.Module, output_like: torch.Tensor) -> torch.Tensor:
    """A tensor shaped like the layer's output as ``N x T x out_features``, in float64."""
    if isinstance(layer, nn.Linear):
        per_position = output_like.reshape(output_like.shape[0], -1, layer.out_features)
    else:
        per_position = output_like.flatten(2).transpose(1, 2)
    return per_position.to(torch.float64)


def _forward_capturing(model, inputs, layers):
    """Run ``model`` statelessly; return its outputs, each layer's inputs and output probes.

    A zero "probe" leaf is added to each hooked layer's output ``s``: the values are unchanged,
    the graph stays connected, and ``autograd.grad`` w.r.t. the probe is ``dL/ds`` even when the
    parameters do not require grad. The model runs on detached parameters and cloned buffers,
    leaving its state untouched.
    """
    layer_inputs, output_probes = {}, {}

    def hook_for(name):
        def hook(module, args, output):
            if name in output_probes:
                raise ValueError(f"layer {name!r} ran twice in one forward; not supported")
            layer_inputs[name] = args[0].detach()
            output_probes[name] = torch.zeros_like(output, requires_grad=True)
            return output + output_probes[name]

        return hook

    state = {name: p.detach() for name, p in model.named_parameters()}
    state.update({name: b.clone() for name, b in model.named_buffers()})
    handles = [layer.register_forward_hook(hook_for(name)) for name, layer in layers.items()]
    try:
        with torch.enable_grad():
            outputs = torch.func.functional_call(model, state, (inputs,))
    finally:
        for handle in handles:
            handle.remove()
    if missing := sorted(set(layers) - set(output_probes)):
        raise ValueError(f"layers {missing} did not run in the forward pass")
    return outputs, layer_inputs, output_probes


def _as_tuple(outputs) -> tuple[torch.Tensor, ...]:
    return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)


def _split_like(flat: torch.Tensor, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Split ``N x C`` per-sample vectors into pieces shaped like each output ``N x ...``."""
    sizes = [t[0].numel() for t in tensors]
    return [piece.reshape(t.shape) for piece, t in zip(flat.split(sizes, 1), tensors, strict=True)]


def _empirical_gradient_factors(outputs, loss_on_outputs, layers, output_probes, batch):
    leaves = tuple(output_probes[name] for name in layers)
    with torch.enable_grad():
        loss = loss_on_outputs(outputs)
    gradients = grad_or_zeros((loss,), leaves, (None,))
    factors = {}
    for (name, layer), gradient in zip(layers.items(), gradients, strict=True):
        g = batch * _per_position(layer, gradient)
        factors[name] = torch.einsum("ntc,ntd->cd", g, g) / batch
    return factors


def _output_hessian_blocks(outputs, loss_on_outputs) -> torch.Tensor:
    """Per-sample Hessians ``N x C x C`` of the loss w.r.t. the (flattened) outputs.

    Column ``c`` of every block comes from one Hessian-vector product with ``e_c`` set in every
    sample, which is exact because a mean of per-sample losses has a block-diagonal Hessian.
    """
    outs = _as_tuple(outputs)
    leaves = tuple(o.detach().requires_grad_(True) for o in outs)
    with torch.enable_grad():
        loss = loss_on_outputs(leaves if isinstance(outputs, (tuple, list)) else leaves[0])
        first = grad_or_zeros((loss,), leaves, (None,), create_graph=True)
        batch, width = outs[0].shape[0], sum(o[0].numel() for o in outs)
        columns = []
        for c in range(width):
            unit = outs[0].new_zeros(batch, width)
            unit[:, c] = 1
            column = grad_or_zeros(first, leaves, _split_like(unit, outs))
            columns.append(torch.cat([part.reshape(batch, -1) for part in column], dim=1))
    blocks = torch.stack(columns, dim=2).to(torch.float64)
    return (blocks + blocks.transpose(1, 2)) / 2


def _ggn_gradient_factors(outputs, loss_on_outputs, layers, output_probes):
    curvatures, directions = torch.linalg.eigh(_output_hessian_blocks(outputs, loss_on_outputs))
    outs, leaves = _as_tuple(outputs), tuple(output_probes[name] for name in layers)
    factors = {name: 0 for name in layers}
    for c in range(curvatures.shape[1]):
        cotangent = _split_like(directions[:, :, c].to(outs[0].dtype), outs)
        pulled_back = grad_or_zeros(outs, leaves, cotangent)
        for (name, layer), back in zip(layers.items(), pulled_back, strict=True):
            g = _per_position(layer, back)
            factors[name] = factors[name] + torch.einsum("n,ntc,ntd->cd", curvatures[:, c], g, g)
    return factors


def _decreasing_eigenvalues(matrix: torch.Tensor) -> torch.Tensor:
    return torch.linalg.eigvalsh(matrix).flip(0)


def _numerical_rank(eigenvalues: torch.Tensor, rtol: float) -> int:
    magnitudes = eigenvalues.abs()
    return int((magnitudes > rtol * magnitudes.max()).sum()) if magnitudes.max() > 0 else 0


def _kronecker_factors(a_factor, g_factor, top_k, rtol) -> KroneckerFactors:
    a_eigenvalues = _decreasing_eigenvalues(a_factor)
    g_eigenvalues = _decreasing_eigenvalues(g_factor)
    products = torch.outer(g_eigenvalues, a_eigenvalues).reshape(-1)
    spectrum = products.sort(descending=True).values[:top_k]
    return KroneckerFactors(
        activation_factor=a_factor,
        gradient_factor=g_factor,
        activation_eigenvalues=a_eigenvalues,
        gradient_eigenvalues=g_eigenvalues,
        activation_rank=_numerical_rank(a_eigenvalues, rtol),
        gradient_rank=_numerical_rank(g_eigenvalues, rtol),
        spectrum=spectrum,
    )


def kfac_factors(
    model: nn.Module,
    inputs: torch.Tensor,
    loss_on_outputs: Callable,
    layers: Sequence[str] | None = None,
    fisher: str = "ggn",
    top_k: int | None = None,
    rtol: float = 1e-6,
) -> dict[str, KroneckerFactors]:
    """KFAC factors ``A``, ``G``, their eigenvalues and ranks, and the KFAC spectrum per layer.

    ``model(inputs)`` returns a tensor or a tuple of tensors (e.g. policy logits and value), each
    with the batch first; ``loss_on_outputs`` takes exactly that and returns the batch-mean loss.
    ``layers`` names modules as in ``model.named_modules()`` (default: every Linear and Conv2d);
    each must run once per forward. ``fisher`` is ``"ggn"`` or ``"empirical"`` (see the module
    docstring). ``top_k`` keeps only the largest ``k`` products in ``spectrum``; ``rtol`` sets the
    ranks. Returns a dict from layer name to `KroneckerFactors`.
    """
    if fisher not in ("ggn", "empirical"):
        raise ValueError(f"fisher must be 'ggn' or 'empirical', got {fisher!r}")
    chosen = _select_layers(model, layers)
    outputs, layer_inputs, output_probes = _forward_capturing(model, inputs, chosen)
    batch = _as_tuple(outputs)[0].shape[0]
    if fisher == "ggn":
        g_factors = _ggn_gradient_factors(outputs, loss_on_outputs, chosen, output_probes)
    else:
        g_factors = _empirical_gradient_factors(
            outputs, loss_on_outputs, chosen, output_probes, batch
        )
    result = {}
    for name, layer in chosen.items():
        a = _layer_inputs(layer, layer_inputs[name])
        a_factor = torch.einsum("ntd,nte->de", a, a) / (a.shape[0] * a.shape[1])
        result[name] = _kronecker_factors(a_factor, g_factors[name], top_k, rtol)
    return result
