"""Networks built from a spec of named hidden blocks, so strategies and metrics find layers by name.

A block is layer (Conv2d or Linear) -> optional norm -> activation -> optional max-pool. Blocks
form towers: one shared torso (tower ""), or one tower per head (`network.separate_heads`: PPO's
actor and critic MLPs, blocks `actor_fc1`, `critic_fc1`, ...); each head reads its tower's last
block. Strategies edit the spec before the network is built (`configure_network`: CReLU,
LayerNorm, ...), and find hidden layers afterwards through `hidden_layers()`; nothing ever indexes
layers by position.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from agents.errors import ConfigError, at_least, positive
from envs.families import plain_layout
from envs.info import ObservationLayout


@dataclass
class NetworkConfig:
    arch: str = "auto"  # auto | nature_cnn | minigrid_cnn | mlp
    width: float = field(default=1.0, metadata=positive())  # multiplies every hidden width
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64],  # mlp only
                                    metadata=at_least(1, each=True))
    activation: str = "relu"  # relu | tanh: every hidden block's (the crelu strategy replaces it)
    # orthogonal: CleanRL's layer_init (gain √2 hidden, the agent's per head) | lecun_uniform:
    # Flax's default, U(±√(3/fan_in)) on every layer, heads too (lop-jax's actor and critic)
    init: str = "orthogonal"
    # every head its own copy of the hidden layers (PPO: separate actor and critic MLPs, as both
    # Slippery-Ant papers use) instead of one shared torso
    separate_heads: bool = False
    channels_last: bool = True  # convolutions in NHWC memory layout: ~25% faster on CPU (oneDNN)


ACTIVATIONS = ("relu", "tanh")
INITS = ("orthogonal", "lecun_uniform")


@dataclass
class BlockSpec:
    name: str
    kind: str  # conv | linear
    out: int
    kernel: int = 0
    stride: int = 1
    pool: int = 0  # max-pool kernel after the activation (0: none)
    tower: str = ""  # "": the shared torso; else the tower of the heads that read it


@dataclass
class NetworkSpec:
    input_shape: tuple[int, ...]
    blocks: list[BlockSpec]
    heads: dict[str, int]  # head name -> output size
    head_gains: dict[str, float] = field(default_factory=dict)
    head_towers: dict[str, str] = field(default_factory=dict)  # head -> its tower (default "")
    # heads whose output ignores the input: a learned vector, zero at init, broadcast over the
    # batch (the Gaussian policy's state-independent log-std)
    constant_heads: dict[str, int] = field(default_factory=dict)
    input_scale: float = 1.0  # uint8 inputs are converted inside the network
    channels_last_input: bool = False  # images come as HWC (the env family's layout says)
    channels_last: bool = True  # image inputs, hence every conv, in NHWC memory layout
    activation: str = "relu"  # relu | tanh | crelu | fourier (the last two: strategies)
    layer_norm: bool = False
    hidden_gain: float = math.sqrt(2)
    init: str = "orthogonal"  # orthogonal | lecun_uniform


def nature_cnn(obs_shape, width: float = 1.0) -> list[BlockSpec]:
    w = lambda n: max(1, round(n * width))  # noqa: E731
    return [BlockSpec("conv1", "conv", w(32), 8, 4), BlockSpec("conv2", "conv", w(64), 4, 2),
            BlockSpec("conv3", "conv", w(64), 3, 1), BlockSpec("fc1", "linear", w(512))]


def minigrid_cnn(obs_shape, width: float = 1.0) -> list[BlockSpec]:
    w = lambda n: max(1, round(n * width))  # noqa: E731
    return [BlockSpec("conv1", "conv", w(16), 2, 1, pool=2), BlockSpec("conv2", "conv", w(32), 2),
            BlockSpec("conv3", "conv", w(64), 2), BlockSpec("fc1", "linear", w(128))]


def mlp(hidden_sizes, width: float = 1.0) -> list[BlockSpec]:
    return [BlockSpec(f"fc{i + 1}", "linear", max(1, round(n * width)))
            for i, n in enumerate(hidden_sizes)]


CNN_TORSOS = {"minigrid_cnn": minigrid_cnn, "nature_cnn": nature_cnn}


def make_spec(net_cfg, observation_space, heads: dict[str, int],
              head_gains: Optional[dict[str, float]] = None,
              layout: Optional[ObservationLayout] = None,
              towers: Optional[dict[str, str]] = None,
              constant_heads: Optional[dict[str, int]] = None) -> NetworkSpec:
    """The spec of a network reading `observation_space` laid out as `layout` says (HWC or CHW
    images, input scale, network.arch=auto's choice): the env family's, EnvFactory.info.layout;
    None: gymnasium's own rule for a bare space (envs.families.plain_layout). With
    network.separate_heads, head h gets its own blocks in tower `towers[h]` (default: h)."""
    spec = _torso_spec(net_cfg, observation_space, heads, head_gains, layout)
    spec.activation, spec.init = net_cfg.activation, net_cfg.init
    spec.constant_heads = dict(constant_heads or {})
    if net_cfg.separate_heads:
        names = {head: (towers or {}).get(head, head) for head in heads}
        spec.blocks = [dataclasses.replace(block, name=f"{tower}_{block.name}", tower=tower)
                       for tower in dict.fromkeys(names.values()) for block in spec.blocks]
        spec.head_towers = names
    return spec


def _torso_spec(net_cfg, observation_space, heads, head_gains, layout) -> NetworkSpec:
    layout = layout or plain_layout(observation_space)
    shape = tuple(observation_space.shape)
    arch = layout.arch if net_cfg.arch == "auto" else net_cfg.arch
    if arch == "mlp":
        # An MLP reads the observation flat, as stored: a vector scaled as its layout says, an
        # image (network.arch=mlp on MiniGrid, Atari) by its dtype alone, as it always was, so
        # that no MLP config's numbers change.
        scale = (1 / 255 if observation_space.dtype == "uint8" else 1.0) if layout.image \
            else layout.input_scale
        return NetworkSpec(shape, mlp(net_cfg.hidden_sizes, net_cfg.width), heads,
                           head_gains or {}, input_scale=scale,
                           channels_last=net_cfg.channels_last)
    if arch not in CNN_TORSOS:  # a family's layout naming a network pliable does not have
        raise ConfigError(f"network.arch={arch}: not one of mlp, {', '.join(CNN_TORSOS)}")
    if not (layout.image and len(shape) == 3):
        raise ConfigError(f"network.arch={arch} needs image observations, got shape {shape}")
    return NetworkSpec(shape, CNN_TORSOS[arch](shape, net_cfg.width), heads, head_gains or {},
                       input_scale=layout.input_scale, channels_last_input=layout.channels_last,
                       channels_last=net_cfg.channels_last)


NATIVE_CONV_MAX_BATCH, NATIVE_CONV_MAX_PIXELS = 12, 100  # see Network.act


def has_tiny_images(spec: NetworkSpec) -> bool:
    shape = spec.input_shape
    if len(shape) != 3:
        return False
    height, width = shape[:2] if spec.channels_last_input else shape[1:]
    return height * width <= NATIVE_CONV_MAX_PIXELS


class Block(nn.Module):
    def __init__(self, spec: BlockSpec, in_features: int, net: NetworkSpec):
        super().__init__()
        self.spec = spec
        if spec.kind == "conv":
            self.layer = nn.Conv2d(in_features, spec.out, spec.kernel, spec.stride)
            self.norm = nn.GroupNorm(1, spec.out) if net.layer_norm else nn.Identity()
        else:
            self.layer = nn.Linear(in_features, spec.out)
            self.norm = nn.LayerNorm(spec.out) if net.layer_norm else nn.Identity()
        self.crelu = net.activation == "crelu"
        self.fourier = net.activation == "fourier"  # deep Fourier features: [sin(x), cos(x)]
        self.activation = torch.tanh if net.activation == "tanh" else F.relu
        self.pool = spec.pool

    @property
    def out_multiplier(self) -> int:
        """Outputs per unit: CReLU emits relu(x) and relu(-x), Fourier features sin(x) and
        cos(x), doubling the next layer's input (unit i's outputs at channels i and out + i)."""
        return 2 if self.crelu or self.fourier else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.kind == "linear" and x.dim() > 2:
            x = x.flatten(1)
        # Follow the weights' dtype: float64 copies (the spectral monitor's) take float32 obs.
        x = self.norm(self.layer(x.to(self.layer.weight.dtype)))
        if self.crelu:
            x = torch.cat([F.relu(x), F.relu(-x)], dim=1)
        elif self.fourier:
            x = torch.cat([torch.sin(x), torch.cos(x)], dim=1)
        else:
            x = self.activation(x)
        if self.pool:
            x = F.max_pool2d(x, self.pool)
        return x


class ConstantHead(nn.Module):
    """A head whose output ignores the input: one learned vector (zero at init) per sample."""

    def __init__(self, size: int):
        super().__init__()
        self.out_features = size
        self.bias = nn.Parameter(torch.zeros(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(x.shape[0], -1)


class FrozenLinear(nn.Module):
    """A linear map held in buffers: saved with the network but outside `parameters()`, so no
    optimizer, strategy or Hessian ever sees or moves it."""

    def __init__(self, layer: nn.Linear):
        super().__init__()
        self.register_buffer("weight", layer.weight.detach().clone())
        self.register_buffer("bias", layer.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In the input's dtype: the monitor's float64 copies replace parameters, not buffers.
        return F.linear(x, self.weight.to(x.dtype), self.bias.to(x.dtype))


class InjectedHead(nn.Linear):
    """A linear head after plasticity injection (agents/plasticity/injection.py):
    out(x) = old(x) + (new(x) − new₀(x)), `new` this layer's own weight and bias (the head's
    parameters, the same tensors as before, so the optimizer and every strategy holding them keep
    working), `old` the head's function up to the last injection and `new₀` the draw `new`
    started from there, both frozen. Wrapping a head changes nothing: old = new₀ = new."""

    def __init__(self, head: nn.Linear):
        super().__init__(head.in_features, head.out_features, device="meta")  # no RNG drawn
        self.weight, self.bias = head.weight, head.bias
        self.old, self.fresh = FrozenLinear(head), FrozenLinear(head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # new − new₀ first: exactly zero right after an injection, the output then old's alone.
        return self.old(x) + (super().forward(x) - self.fresh(x))

    @torch.no_grad()
    def inject(self, fresh: nn.Linear) -> None:
        """old ← old + new − new₀ (the function so far, frozen; a linear head folds exactly up
        to round-off, and bitwise at the first injection, when new₀ = new), new and new₀ ←
        `fresh`'s weights."""
        for name in ("weight", "bias"):
            new, start = getattr(self, name), getattr(self.fresh, name)
            getattr(self.old, name).add_(new - start)
            new.copy_(getattr(fresh, name))
            start.copy_(getattr(fresh, name))

    def layers(self) -> list[nn.Module]:
        """Every part that reads the head's input (what `Network.consumers` lists)."""
        return [self, self.old, self.fresh]


class Network(nn.Module):
    """Towers of named blocks (one shared torso, or one per head), then one head per output."""

    def __init__(self, spec: NetworkSpec):
        super().__init__()
        self.spec = spec
        self.blocks = nn.ModuleDict()
        self.towers: dict[str, list[str]] = {}  # tower -> its blocks, in forward order
        widths = {}
        for block_spec in spec.blocks:
            self.towers.setdefault(block_spec.tower, [])
        for tower in self.towers or {"": []}:
            probe = self._prepare(torch.zeros((1, *spec.input_shape)))
            for block_spec in (b for b in spec.blocks if b.tower == tower):
                in_features = probe.shape[1] if not (block_spec.kind == "linear") else (
                    probe.flatten(1).shape[1])
                block = Block(block_spec, in_features, spec)
                self.blocks[block_spec.name] = block
                self.towers[tower].append(block_spec.name)
                probe = block(probe)
            widths[tower] = probe.flatten(1).shape[1]
        self._tiny_images = has_tiny_images(spec)
        self.head_towers = {name: spec.head_towers.get(name, "") for name in spec.heads}
        self.heads = nn.ModuleDict({name: nn.Linear(widths[self.head_towers[name]], size)
                                    for name, size in spec.heads.items()})
        self.heads.update({name: ConstantHead(size)
                           for name, size in spec.constant_heads.items()})
        self.reset_parameters()

    # -- initialisation ------------------------------------------------------------------------
    def init_gain(self, module_name: str) -> float:
        if module_name.startswith("heads."):
            return self.spec.head_gains.get(module_name.split(".")[1], 1.0)
        return self.spec.hidden_gain

    def init_layer_(self, module_name: str, layer: nn.Module,
                    generator: Optional[torch.Generator] = None) -> None:
        """Re-draw a layer's parameters from its initialiser (used by resets and perturbations):
        CleanRL's layer_init (orthogonal weights, zero biases) or Flax's lecun_uniform."""
        if isinstance(layer, ConstantHead):
            nn.init.zeros_(layer.bias)
            return
        if self.spec.init == "lecun_uniform":
            bound = math.sqrt(3 / layer.weight[0].numel())  # fan_in: one output's inputs
            nn.init.uniform_(layer.weight, -bound, bound, generator=generator)
        else:
            nn.init.orthogonal_(layer.weight, self.init_gain(module_name), generator=generator)
        nn.init.zeros_(layer.bias)

    def reset_parameters(self) -> None:
        for name, layer in self.weight_layers().items():
            self.init_layer_(name, layer)

    # -- structure, by name ----------------------------------------------------------------
    def hidden_layers(self) -> dict[str, nn.Module]:
        """Hidden block name -> its Conv2d/Linear, in forward order (tower by tower)."""
        return {name: block.layer for name, block in self.blocks.items()}

    def weight_layers(self) -> dict[str, nn.Module]:
        """Module path -> every Conv2d/Linear (hidden layers and heads; constant heads have no
        weight and are left out)."""
        layers = {f"blocks.{n}.layer": b.layer for n, b in self.blocks.items()}
        layers.update({f"heads.{n}": h for n, h in self.heads.items()
                       if not isinstance(h, ConstantHead)})
        return layers

    def consumers(self, block_name: str) -> list[nn.Module]:
        """The layers reading a hidden block's output: the next block of its tower, or, after
        its tower's last block, every head reading that tower (an injected head with its frozen
        parts: zeroing a unit's outgoing weights in all of them removes it from the output)."""
        tower = self.blocks[block_name].spec.tower
        names = self.towers[tower]
        position = names.index(block_name)
        if position + 1 < len(names):
            return [self.blocks[names[position + 1]].layer]
        return [layer for name, head in self.heads.items() if self.head_towers.get(name) == tower
                for layer in (head.layers() if isinstance(head, InjectedHead) else [head])]

    # -- forward -----------------------------------------------------------------------------
    def _prepare(self, obs: torch.Tensor) -> torch.Tensor:
        if self.spec.channels_last_input:
            obs = obs.permute(0, 3, 1, 2)  # HWC images: an NCHW view, NHWC in memory
        if obs.dim() == 4:  # set the convolutions' memory layout on the small uint8 input
            if self.spec.channels_last:  # NHWC by permutes: vmap (the NTK) can't clone into it
                obs = obs.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
            else:
                obs = obs.contiguous()
        return obs.float() * self.spec.input_scale

    def forward(self, obs: torch.Tensor, return_features: bool = False):
        """Head outputs (name -> tensor); with return_features also each block's activations."""
        inputs = self._prepare(obs)
        features, last = {}, {}
        for tower, names in self.towers.items():
            x = inputs
            for name in names:
                x = self.blocks[name](x)
                features[name] = x
            last[tower] = x.flatten(1)
        last = last or {"": inputs.flatten(1)}
        outputs = {name: head(last[self.head_towers[name]] if name in self.head_towers
                              else inputs) for name, head in self.heads.items()}
        return (outputs, features) if return_features else outputs

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Head outputs without a graph, for acting. On a few tiny images (MiniGrid's 7x7 views,
        8 envs) oneDNN's fixed cost per convolution dominates: torch's native convolutions do
        the pass in half the time there (150 vs 280 µs); they lose from batch 16 on, and on
        Atari frames at any batch above 1, so they serve only that case (bench/levers.py)."""
        if not (self._tiny_images and obs.dim() == 4 and obs.shape[0] <= NATIVE_CONV_MAX_BATCH):
            return self(obs)
        # torch offers no per-call choice of convolution backend: its own context manager turns
        # oneDNN off for this pass only and restores it, even on an error. None: the other
        # oneDNN switches (deterministic, TF32, precision) stay as the user set them.
        with torch.backends.mkldnn.flags(enabled=False, deterministic=None, allow_tf32=None,
                                         fp32_precision=None):
            return self(obs)

    def block_inputs(self, obs: torch.Tensor, features: dict[str, torch.Tensor]):
        """Each hidden block's input, from forward's features: what layer-wise Jacobians take."""
        inputs = self._prepare(obs)
        return {name: inputs if i == 0 else features[names[i - 1]]
                for names in self.towers.values() for i, name in enumerate(names)}
