"""The experiment schema: dataclasses typed by OmegaConf, filled from YAML and dotted overrides.

OmegaConf structured configs already reject unknown keys and wrong types; this module only turns
their exceptions into one line naming the key, and adds the checks a schema cannot express.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from agents.base import AGENTS
from agents.catalogue import agent_class
from agents.errors import ConfigError, at_least, check_ranges, non_negative, seed_range
from agents.learner import PRECISIONS
from agents.networks import ACTIVATIONS, CNN_TORSOS, INITS, NetworkConfig
from agents.plasticity import build_strategies
from agents.runtime.wandb_sync import CHOICES as LOGGING_CHOICES
from agents.runtime.wandb_sync import LoggingConfig, check_logging_config
from analysis.monitor.config import CHOICES as MONITOR_CHOICES
from analysis.monitor.config import MONITOR_PRESETS, MonitorConfig, check_monitor_config
from envs.config import EnvConfig
from envs.tasks import TaskSequence

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "minigrid_ppo.yaml"


@dataclass
class TaskConfig:
    env_id: str = MISSING
    name: Optional[str] = None  # readable name for logs; derived from env_id and kwargs if unset
    kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {mode: 4, difficulty: 1}
    # seed of a fixed permutation of observation elements
    permute_obs: Optional[int] = field(default=None, metadata=at_least(0))
    # seed of a fixed permutation of the discrete actions
    permute_actions: Optional[int] = field(default=None, metadata=at_least(0))
    # MuJoCo tasks' physics (envs/mujoco.py), each > 0: friction (every geom's sliding
    # friction), mass_scale (every body's mass and inertia), gravity_scale
    physics: dict[str, float] = field(default_factory=dict)


@dataclass
class SequenceConfig:
    tasks: list[TaskConfig] = field(default_factory=list)
    # env steps (summed over envs) per task
    switch_every: int = field(default=100_000, metadata=at_least(1))
    cycles: int = field(default=1, metadata=at_least(1))  # passes over the task list
    order: str = "fixed"  # fixed | shuffled (a new seeded order each cycle)
    # one physics key over values, the one task of `tasks` as the base (envs/tasks.py):
    # {friction: [1.0, 0.5, 2.0]} or {friction: {log_uniform: [0.02, 2.0], count: 5, seed: null}}
    vary: dict[str, Any] = field(default_factory=dict)


@dataclass
class CheckpointConfig:
    """RUN_DIR/checkpoints/ (agents/runtime/checkpoints.py): what `--resume` continues from."""

    # env steps between periodic checkpoints (0: only at switches and the end)
    every: int = field(default=100_000,
                       metadata=at_least(0, note="0: only at switches and the end"))
    # periodic checkpoints kept (switch and final ones are always kept)
    keep_last: int = field(default=2, metadata=at_least(1))
    # the agent's side files beside each checkpoint (DQN: its replay buffer), for an exact resume
    save_replay: bool = True
    at_switch: bool = True  # a checkpoint at every task start (switch_###.pt: `pliable spectrum`)


def config_schema() -> type:
    """The run's config dataclass: the fixed sections, and one section per registered agent
    (`agents.base.AGENTS`: `dqn:`, `ppo:`, ...), named after it and typed by its `Config`, in
    name order."""
    return _schema(tuple((name, AGENTS[name].Config) for name in sorted(AGENTS)))


@functools.cache
def _schema(agent_sections) -> type:
    fields = [
        ("agent", str, field(default="ppo")),  # a registered agent: ppo | dqn | ...
        ("seed", int, field(default=1, metadata=seed_range())),
        ("device", str, field(default="cpu")),  # cpu | cuda | cuda:N
        # 0: torch's default (one per core); 1 on a busy shared machine
        ("torch_threads", int, field(default=0, metadata=at_least(0))),
        # torch.compile the gradient steps' forward/backward (little gain on CPU)
        ("compile", bool, field(default=False)),
        # fp32 | bf16: bf16 autocast around the gradient steps' forward passes; the loss,
        # penalties, gradients, Adam and the spectral monitor stay fp32 (agents/learner.py)
        ("precision", str, field(default="fp32")),
        ("exp_name", str, field(default="")),  # defaults to the config file's stem
        ("runs_root", str, field(default="runs")),
        ("run_dir", Optional[str], field(default=None)),  # explicit run directory (must not exist)
        # seconds between console progress lines
        ("print_every", float, field(default=5.0, metadata=non_negative())),
        ("env", EnvConfig, field(default_factory=EnvConfig)),
        ("sequence", SequenceConfig, field(default_factory=SequenceConfig)),
        ("network", NetworkConfig, field(default_factory=NetworkConfig)),
        *((name, section, field(default_factory=section)) for name, section in agent_sections),
        ("plasticity", dict[str, Any], field(default_factory=dict)),  # strategy name -> settings
        # label of `plasticity` in reports; "": its active names, "+"-joined
        ("strategy_set", str, field(default="")),
        ("monitor", MonitorConfig, field(default_factory=MonitorConfig)),
        ("checkpoint", CheckpointConfig, field(default_factory=CheckpointConfig)),
        # where the run is mirrored besides TensorBoard (Weights & Biases: wandb_sync.py)
        ("logging", LoggingConfig, field(default_factory=LoggingConfig)),
    ]
    return dataclasses.make_dataclass("Config", fields)


CHOICES = {
    "precision": PRECISIONS,
    "env.backend": ("auto", "gymnasium", "ale_vector"),
    "network.arch": ("auto", *CNN_TORSOS, "mlp"),
    "network.activation": ACTIVATIONS,
    "network.init": INITS,
    **{f"monitor.{key}": allowed for key, allowed in MONITOR_CHOICES.items()},
    "sequence.order": ("fixed", "shuffled"),
    **{f"logging.{key}": allowed for key, allowed in LOGGING_CHOICES.items()},
}


def resolve_config_path(path: str | Path, directory: Path = CONFIG_DIR) -> Path:
    """A config path as given, or else relative to `directory` (the shipped configs/)."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    shipped = directory / candidate
    for option in (shipped, shipped.with_suffix(".yaml")):
        if option.is_file():
            return option
    raise ConfigError(f"config file not found: {path}")


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> DictConfig:
    """Schema <- `monitor.preset`'s values <- YAML file <- dotted overrides, validated; raises
    ConfigError on bad input. The preset is read from a first merge without it, so a preset set
    in the file or an override applies below both (an explicit value always wins); a resolved
    config (a run's config.yaml) already holds every value, so re-applying its preset is a
    no-op."""
    path = resolve_config_path(path or DEFAULT_CONFIG)
    file_cfg = load_yaml_mapping(path)
    schema = config_schema()
    cfg = _merge_file_and_overrides(OmegaConf.structured(schema), file_cfg, path, overrides)
    if cfg.monitor.preset:
        preset = cfg.monitor.preset
        if preset not in MONITOR_PRESETS:
            raise ConfigError(f"monitor.preset: '{preset}' is not one of \"\" (none), "
                              f"{', '.join(MONITOR_PRESETS)}")
        base = OmegaConf.merge(OmegaConf.structured(schema),
                               {"monitor": MONITOR_PRESETS[preset]})
        cfg = _merge_file_and_overrides(base, file_cfg, path, overrides)
    if not cfg.exp_name:
        cfg.exp_name = path.stem
    validate(cfg)
    return cfg


def _merge_file_and_overrides(base: DictConfig, file_cfg: DictConfig, path: Path,
                              overrides) -> DictConfig:
    cfg = merge_config(base, file_cfg, str(path))
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override '{override}' is not of the form dotted.key=value")
        try:
            parsed = OmegaConf.from_dotlist([override])
        except Exception as exc:
            raise ConfigError(f"override '{override}': {str(exc).splitlines()[0]}") from None
        cfg = merge_config(cfg, parsed, f"override '{override}'")
    return cfg


def preset_overrides(overrides) -> list[str]:
    """`overrides` preceded by the values of every preset they name (`monitor.preset=NAME`) as
    dotted overrides: for a resolved config file (a run's config.yaml), whose explicit values
    would otherwise hide a preset asked for on the command line (`pliable spectrum`). The preset's
    values come first, so an explicit override wins wherever it stands on the line."""
    expanded = []
    for override in overrides:
        key, _, name = override.partition("=")
        if key.strip() == "monitor.preset" and name.strip() in MONITOR_PRESETS:
            expanded += [f"monitor.{k}={v}" for k, v in MONITOR_PRESETS[name.strip()].items()]
    return expanded + list(overrides)


def load_yaml_mapping(path: Path) -> DictConfig:
    """A YAML file whose top level is a mapping; ConfigError otherwise."""
    try:
        file_cfg = OmegaConf.load(path)
    except Exception as exc:  # YAML syntax errors and the like
        raise ConfigError(f"{path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(file_cfg, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return file_cfg


def merge_config(base: DictConfig, update: DictConfig, source: str,
                 schema: type | None = None) -> DictConfig:
    """OmegaConf's typed merge; its errors become one line naming the key (of `schema`, by
    default the run config's)."""
    try:
        return OmegaConf.merge(base, update)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{_describe(exc, schema or config_schema())} (in {source})") from None


def validate(cfg: DictConfig) -> None:
    """Each section's checks beyond its types: every field's declared range (`check_ranges`, one
    walk of the whole schema), then the checks across fields: the agents' own
    (`Agent.check_config`, every registered agent's section, as each is in every config), the
    monitor's, the strategies' (their settings' ranges checked as they are built)."""
    agent_class(cfg.agent)
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            shown = ", ".join(a or '"" (none)' for a in allowed)
            raise ConfigError(f"{key}: '{value}' is not one of {shown}")
    # every field's declared range (agents/errors.py), every section's, in one walk
    check_ranges(cfg, config_schema())
    if not cfg.sequence.tasks:
        raise ConfigError("sequence.tasks is empty: list at least one task (env_id and kwargs)")
    if cfg.sequence.switch_every % cfg.env.num_envs:
        raise ConfigError(
            f"sequence.switch_every ({cfg.sequence.switch_every}) must be a multiple of "
            f"env.num_envs ({cfg.env.num_envs}) so that tasks switch at exactly that step"
        )
    # the tasks as the run will see them (`sequence.vary` expanded, names unique): cheap, no env
    TaskSequence.from_config(cfg.sequence, cfg.seed)
    for agent in AGENTS.values():
        agent.check_config(cfg)
    check_monitor_config(cfg.monitor)
    check_logging_config(cfg.logging)
    # Strategy settings are checked by building the strategies (cheap: no network yet), so that
    # --print-config, training and `pliable bench` reject the same input.
    build_strategies(cfg.plasticity)


def _describe(exc: OmegaConfBaseException, schema: type) -> str:
    key = getattr(exc, "full_key", None)
    message = str(exc).splitlines()[0]
    if "not in struct" in message or "Key '" in message and "not" in message:
        parent = key.rsplit(".", 1)[0] if key and "." in key else ""
        allowed = _keys_at(parent, schema)
        return f"unknown config key '{key}'" + (f" (allowed: {allowed})" if allowed else "")
    if key:
        message = message.removeprefix("Merge error: ")
        return f"{key}: {message}"
    return message


def _keys_at(dotted: str, schema: type) -> str:
    node = OmegaConf.structured(schema)
    if dotted:
        node = OmegaConf.select(node, dotted)
    if isinstance(node, DictConfig):
        return ", ".join(node.keys())
    return ""


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg)
