"""The experiment schema: dataclasses typed by OmegaConf, filled from YAML and dotted overrides.

OmegaConf structured configs already reject unknown keys and wrong types; this module only turns
their exceptions into one line naming the key, and adds the checks a schema cannot express.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "minigrid_ppo.yaml"


class ConfigError(ValueError):
    """Bad user input; the CLI prints it as one line and exits with status 2."""


@dataclass
class TaskConfig:
    env_id: str = MISSING
    name: Optional[str] = None  # readable name for logs; derived from env_id and kwargs if unset
    kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {mode: 4, difficulty: 1}
    permute_obs: Optional[int] = None  # seed of a fixed permutation of observation elements
    permute_actions: Optional[int] = None  # seed of a fixed permutation of the discrete actions


@dataclass
class SequenceConfig:
    tasks: list[TaskConfig] = field(default_factory=list)
    switch_every: int = 100_000  # env steps (summed over envs) per task
    cycles: int = 1  # passes over the task list
    order: str = "fixed"  # fixed | shuffled (a new seeded order each cycle)


@dataclass
class EnvConfig:
    num_envs: int = 8
    backend: str = "auto"  # Atari: auto | gymnasium | ale_vector (C++ threads, default modes only)
    # Atari preprocessing (ALE v5 defaults, Machado et al. 2018)
    frame_skip: int = 4
    frame_stack: int = 4
    screen_size: int = 84
    sticky_actions: float = 0.25
    noop_max: int = 30
    fire_reset: bool = True
    episodic_life: bool = False
    clip_rewards: bool = True  # applied by the learner, so logged returns stay raw
    full_action_space: Optional[bool] = None  # None: full (18) only when the games differ
    max_episode_frames: int = 108_000


@dataclass
class NetworkConfig:
    arch: str = "auto"  # auto | nature_cnn | minigrid_cnn | mlp
    width: float = 1.0  # multiplies every hidden width
    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])  # mlp only


@dataclass
class PPOConfig:
    # CleanRL ppo_atari defaults
    learning_rate: float = 2.5e-4
    num_steps: int = 128
    anneal_lr: bool = False  # CleanRL anneals to 0; a continual run usually keeps it constant
    gamma: float = 0.99
    gae_lambda: float = 0.95
    num_minibatches: int = 4
    update_epochs: int = 4
    norm_adv: bool = True
    clip_coef: float = 0.1
    clip_vloss: bool = True
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    target_kl: Optional[float] = None
    adam_eps: float = 1e-5


@dataclass
class MonitorConfig:
    enabled: bool = False


@dataclass
class Config:
    agent: str = "ppo"  # ppo
    seed: int = 1
    device: str = "cpu"  # cpu | cuda | cuda:N
    torch_threads: int = 0  # 0: leave torch's default
    exp_name: str = ""  # defaults to the config file's stem
    runs_root: str = "runs"
    run_dir: Optional[str] = None  # explicit run directory (must not exist)
    print_every: float = 5.0  # seconds between console progress lines
    env: EnvConfig = field(default_factory=EnvConfig)
    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    plasticity: dict[str, Any] = field(default_factory=dict)  # strategy name -> settings
    monitor: MonitorConfig = field(default_factory=MonitorConfig)


CHOICES = {
    "agent": ("ppo",),
    "env.backend": ("auto", "gymnasium", "ale_vector"),
    "network.arch": ("auto", "nature_cnn", "minigrid_cnn", "mlp"),
    "sequence.order": ("fixed", "shuffled"),
}
POSITIVE_INTS = (
    "env.num_envs", "sequence.switch_every", "sequence.cycles", "env.frame_skip",
    "env.frame_stack", "env.screen_size", "ppo.num_steps", "ppo.num_minibatches",
    "ppo.update_epochs",
)


def resolve_config_path(path: str | Path) -> Path:
    """A config path as given, or else relative to the shipped configs/ directory."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    shipped = CONFIG_DIR / candidate
    for option in (shipped, shipped.with_suffix(".yaml")):
        if option.is_file():
            return option
    raise ConfigError(f"config file not found: {path}")


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> DictConfig:
    """Schema <- YAML file <- dotted overrides, validated; raises ConfigError on bad input."""
    path = resolve_config_path(path or DEFAULT_CONFIG)
    try:
        file_cfg = OmegaConf.load(path)
    except Exception as exc:  # YAML syntax errors and the like
        raise ConfigError(f"{path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(file_cfg, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    cfg = _merge(OmegaConf.structured(Config), file_cfg, str(path))
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override '{override}' is not of the form dotted.key=value")
        try:
            parsed = OmegaConf.from_dotlist([override])
        except Exception as exc:
            raise ConfigError(f"override '{override}': {str(exc).splitlines()[0]}") from None
        cfg = _merge(cfg, parsed, f"override '{override}'")
    if not cfg.exp_name:
        cfg.exp_name = path.stem
    validate(cfg)
    return cfg


def _merge(base: DictConfig, update: DictConfig, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, update)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{_describe(exc)} (in {source})") from None


def validate(cfg: DictConfig) -> None:
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}: '{value}' is not one of {', '.join(allowed)}")
    for key in POSITIVE_INTS:
        if OmegaConf.select(cfg, key) <= 0:
            raise ConfigError(f"{key} must be a positive integer, got {OmegaConf.select(cfg, key)}")
    if not cfg.sequence.tasks:
        raise ConfigError("sequence.tasks is empty: list at least one task (env_id and kwargs)")
    if cfg.sequence.switch_every % cfg.env.num_envs:
        raise ConfigError(
            f"sequence.switch_every ({cfg.sequence.switch_every}) must be a multiple of "
            f"env.num_envs ({cfg.env.num_envs}) so that tasks switch at exactly that step"
        )
    if not 0.0 <= cfg.env.sticky_actions <= 1.0:
        raise ConfigError(f"env.sticky_actions must lie in [0, 1], got {cfg.env.sticky_actions}")
    batch = cfg.env.num_envs * cfg.ppo.num_steps
    if batch % cfg.ppo.num_minibatches:
        raise ConfigError(
            f"ppo.num_minibatches ({cfg.ppo.num_minibatches}) must divide env.num_envs × "
            f"ppo.num_steps ({batch})"
        )
    if cfg.network.width <= 0:
        raise ConfigError(f"network.width must be positive, got {cfg.network.width}")


def _describe(exc: OmegaConfBaseException) -> str:
    key = getattr(exc, "full_key", None)
    message = str(exc).splitlines()[0]
    if "not in struct" in message or "Key '" in message and "not" in message:
        parent = key.rsplit(".", 1)[0] if key and "." in key else ""
        allowed = _keys_at(parent)
        return f"unknown config key '{key}'" + (f" (allowed: {allowed})" if allowed else "")
    if key:
        message = message.removeprefix("Merge error: ")
        return f"{key}: {message}"
    return message


def _keys_at(dotted: str) -> str:
    node = OmegaConf.structured(Config)
    if dotted:
        node = OmegaConf.select(node, dotted)
    if isinstance(node, DictConfig):
        return ", ".join(node.keys())
    return ""


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg)
