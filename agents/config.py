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
    channels_last: bool = True  # convolutions in NHWC memory layout: ~25% faster on CPU (oneDNN)


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
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # torch's defaults


@dataclass
class DQNConfig:
    # CleanRL dqn_atari defaults
    learning_rate: float = 1e-4
    buffer_size: int = 1_000_000  # transitions (frame slots: ~7 KB each on Atari)
    gamma: float = 0.99
    tau: float = 1.0  # target update: 1 copies the online network, < 1 is Polyak averaging
    target_network_frequency: int = 1000  # env steps between target updates
    batch_size: int = 32
    start_e: float = 1.0
    end_e: float = 0.01
    exploration_fraction: float = 0.1  # of the run's env steps (each task's, if restarted)
    learning_starts: int = 80_000  # transitions stored since the buffer was empty, before training
    train_frequency: int = 4  # env steps between train steps
    loss: str = "mse"  # mse (CleanRL) | huber (Nature DQN)
    max_grad_norm: Optional[float] = None  # CleanRL's DQN does not clip
    adam_eps: float = 1e-8
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # torch's defaults
    # plasticity-research options
    double_dqn: bool = False
    n_step: int = 1
    replay_ratio: float = 0.25  # gradient updates per env step (CleanRL: 1 per train_frequency)
    restart_epsilon_at_switch: bool = False
    flush_buffer_at_switch: bool = False
    sync_target_at_switch: bool = True
    log_every: int = 1000  # env steps per train_iteration (losses averaged, logged once)


@dataclass
class CheckpointConfig:
    """RUN_DIR/checkpoints/ (agents/checkpoint.py): what `--resume` continues from."""

    every: int = 100_000  # env steps between periodic checkpoints (0: only at switches and the end)
    keep_last: int = 2  # periodic checkpoints kept (switch and final ones are always kept)
    save_replay: bool = True  # DQN: include the replay buffer (needed for an exact resume)
    at_switch: bool = True  # a checkpoint at every task start (switch_###.pt: `pliable spectrum`)


@dataclass
class MonitorConfig:
    """The spectral monitor (analysis/monitor.py): Hessian spectrum of the agent's own loss at every
    task boundary, on a batch of the old task (`pre`, see `pre_batch`) and on a fresh batch of
    the new task before any update (`post`); feature metrics every `metrics_every` updates.
    Observes only. `preset` fills in a named set of these values (MONITOR_PRESETS) below the
    user's file and overrides."""

    enabled: bool = False
    preset: str = ""  # "" | he2025 (MONITOR_PRESETS: He et al. 2025's measurement settings)
    batch_size: int = 256  # samples per measured batch (a seeded subsample; a probe rollout)
    top_k: int = 20  # Hessian eigenvalues, algebraically largest first
    method: str = "lanczos"  # lanczos (fixed steps, full re-orthogonalisation) | eigsh (ARPACK)
    lanczos_steps: int = 80  # Hessian-vector products for the top-k (>= top_k; method=lanczos)
    eigsh_tol: float = 1e-3  # relative residual of each Ritz pair (method=eigsh)
    density_probes: int = 3  # spectral density by stochastic Lanczos quadrature:
    density_steps: int = 25  # density_probes x density_steps Hessian-vector products
    trace_probes: int = 10  # Hutchinson probes for the trace, off the top-k's Krylov space
    eps: float = 0.01  # the relative ε of eps_rank_rel: eigenvalues above eps·λmax
    tau: float = 0.01  # τ-trainability: share of the density above tau·λmax
    # He et al. 2025's ε-rank (eps_rank_he2025/<ε>: % of their density outside [-ε, ε]) at each
    he2025_eps: list[float] = field(
        default_factory=lambda: [0.01, 0.02, 0.04, 0.08, 0.1, 0.2, 0.5, 1.0])
    density_kernel: str = "relative"  # smoothed density plots: relative (σ 1% of the span) | he2025
    pre_batch: str = "fresh"  # pre: fresh (a rollout with the current parameters) | last (batch)
    ggn: bool = True  # Gauss-Newton top-k (same method as the Hessian's)
    ggn_steps: int = 40  # its Lanczos steps (>= top_k): its top 10 converge faster than H's
    kfac: bool = True  # KFAC factors of every layer: ranks, the λ(A)·μ(G) spectrum
    jacobians: bool = True  # plasticity/*: singular values of each block's input-output Jacobian
    ntk: bool = True  # plasticity/*: rank of the empirical NTK Gram matrix on ntk_samples obs
    ntk_samples: int = 32
    every_steps: int = 0  # also measure every N env steps (0: only at task boundaries)
    metrics_every: int = 500  # gradient updates between plasticity/* metrics (0: never)
    float64: bool = False  # Hessian products in double precision (~2x slower)
    threads: int = 1  # torch threads while measuring (0: the run's); see the README's cost note
    seed: int = 0  # the monitor's own RNG: subsamples, probe rollouts, Lanczos starts


@dataclass
class Config:
    agent: str = "ppo"  # ppo | dqn
    seed: int = 1
    device: str = "cpu"  # cpu | cuda | cuda:N
    torch_threads: int = 0  # 0: torch's default (one per core); 1 on a busy shared machine
    compile: bool = False  # torch.compile the gradient steps' forward/backward (little gain on CPU)
    exp_name: str = ""  # defaults to the config file's stem
    runs_root: str = "runs"
    run_dir: Optional[str] = None  # explicit run directory (must not exist)
    print_every: float = 5.0  # seconds between console progress lines
    env: EnvConfig = field(default_factory=EnvConfig)
    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    dqn: DQNConfig = field(default_factory=DQNConfig)
    plasticity: dict[str, Any] = field(default_factory=dict)  # strategy name -> settings
    strategy_set: str = ""  # label of `plasticity` in reports; "": its active names, "+"-joined
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


CHOICES = {
    "agent": ("ppo", "dqn"),
    "dqn.loss": ("mse", "huber"),
    "env.backend": ("auto", "gymnasium", "ale_vector"),
    "network.arch": ("auto", "nature_cnn", "minigrid_cnn", "mlp"),
    "monitor.method": ("lanczos", "eigsh"),
    "monitor.preset": ("", "he2025"),
    "monitor.density_kernel": ("relative", "he2025"),
    "monitor.pre_batch": ("fresh", "last"),
    "sequence.order": ("fixed", "shuffled"),
}
# monitor.preset: values between the schema's defaults and the user's file and overrides.
MONITOR_PRESETS = {
    # He et al. 2025's measurement (lop-jax ppo_nonstationary.hessian_computation): one probe,
    # Lanczos order 100, their density on 10,000 points, a fresh rollout with the current
    # parameters (1000 steps there; 1024 samples, a multiple of the usual num_envs, here).
    "he2025": {"density_probes": 1, "density_steps": 100, "lanczos_steps": 100,
               "density_kernel": "he2025", "batch_size": 1024, "pre_batch": "fresh"},
}
POSITIVE_INTS = (
    "env.num_envs", "sequence.switch_every", "sequence.cycles", "env.frame_skip",
    "env.frame_stack", "env.screen_size", "ppo.num_steps", "ppo.num_minibatches",
    "ppo.update_epochs", "dqn.buffer_size", "dqn.batch_size", "dqn.train_frequency",
    "dqn.target_network_frequency", "dqn.n_step", "dqn.log_every", "checkpoint.keep_last",
)


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
    cfg = _merge_file_and_overrides(OmegaConf.structured(Config), file_cfg, path, overrides)
    if cfg.monitor.preset:
        preset = cfg.monitor.preset
        if preset not in MONITOR_PRESETS:
            raise ConfigError(f"monitor.preset: '{preset}' is not one of \"\" (none), "
                              f"{', '.join(MONITOR_PRESETS)}")
        base = OmegaConf.merge(OmegaConf.structured(Config),
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
                 schema: type = Config) -> DictConfig:
    """OmegaConf's typed merge; its errors become one line naming the key (of `schema`)."""
    try:
        return OmegaConf.merge(base, update)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{_describe(exc, schema)} (in {source})") from None


def validate(cfg: DictConfig) -> None:
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            shown = ", ".join(a or '"" (none)' for a in allowed)
            raise ConfigError(f"{key}: '{value}' is not one of {shown}")
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
    _validate_dqn(cfg.dqn, cfg.env)
    for agent in ("ppo", "dqn"):
        check_adam_betas(f"{agent}.adam_betas", cfg[agent].adam_betas)
    _validate_monitor(cfg.monitor)
    # Strategy settings are checked by building the strategies (cheap: no network yet), so that
    # --print-config, training and `pliable bench` reject the same input.
    from agents.plasticity.base import build_strategies  # it imports this module

    build_strategies(cfg.plasticity, cfg.agent)
    if cfg.checkpoint.every < 0:
        raise ConfigError(f"checkpoint.every must be >= 0 (0: only at switches and the end), got "
                          f"{cfg.checkpoint.every}")


def check_adam_betas(key: str, betas) -> None:
    """Adam's (β1, β2): two numbers, each in [0, 1); anything else is a one-line ConfigError."""
    values = list(betas) if betas is not None else []
    if len(values) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool)
                                   and 0.0 <= b < 1.0 for b in values):
        raise ConfigError(f"{key} must be two numbers, each in [0, 1) (e.g. [0.9, 0.999]), "
                          f"got {values}")


def _validate_dqn(dqn, env) -> None:
    updates = dqn.replay_ratio * dqn.train_frequency
    if updates < 1 or abs(updates - round(updates)) > 1e-9:
        raise ConfigError(
            f"dqn.replay_ratio × dqn.train_frequency ({dqn.replay_ratio} × "
            f"{dqn.train_frequency}) must be a positive integer: the updates of one train step")
    first_sample = max(dqn.batch_size, env.num_envs * dqn.n_step)
    if dqn.learning_starts < first_sample:
        raise ConfigError(f"dqn.learning_starts ({dqn.learning_starts}) must be at least "
                          f"{first_sample} (dqn.batch_size and env.num_envs × dqn.n_step)")
    room = dqn.learning_starts + env.num_envs * env.frame_stack
    if dqn.buffer_size < room:
        raise ConfigError(f"dqn.buffer_size ({dqn.buffer_size}) must be at least {room} "
                          "(dqn.learning_starts plus env.num_envs × env.frame_stack)")
    for key, low, high in (("tau", 0.0, 1.0), ("exploration_fraction", 0.0, 1.0),
                           ("gamma", 0.0, 1.0)):
        if not low < dqn[key] <= high:
            raise ConfigError(f"dqn.{key} must lie in ({low:g}, {high:g}], got {dqn[key]}")
    if not 0.0 <= dqn.end_e <= dqn.start_e <= 1.0:
        raise ConfigError(f"dqn.end_e ({dqn.end_e}) and dqn.start_e ({dqn.start_e}) must "
                          "satisfy 0 <= end_e <= start_e <= 1")


def _validate_monitor(monitor) -> None:
    for key in ("batch_size", "top_k", "lanczos_steps", "ggn_steps", "density_probes",
                "density_steps", "trace_probes", "ntk_samples"):
        if monitor[key] <= 0:
            raise ConfigError(f"monitor.{key} must be a positive integer, got {monitor[key]}")
    for key in ("every_steps", "metrics_every", "threads"):
        if monitor[key] < 0:
            raise ConfigError(f"monitor.{key} must be >= 0, got {monitor[key]}")
    for key in ("eps", "tau", "eigsh_tol"):
        if not 0.0 < monitor[key] <= 1.0:
            raise ConfigError(f"monitor.{key} must lie in (0, 1], got {monitor[key]}")
    eps = list(monitor.he2025_eps)
    if not eps or min(eps) <= 0 or len({f"{e:g}" for e in eps}) < len(eps):
        raise ConfigError(f"monitor.he2025_eps must be a non-empty list of distinct positive "
                          f"numbers, got {eps}")
    for key in ("lanczos_steps", "ggn_steps"):
        if monitor[key] < monitor.top_k:
            raise ConfigError(f"monitor.{key} ({monitor[key]}) must be at least monitor.top_k "
                              f"({monitor.top_k})")


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
