"""The `logging:` section of a run's config: an optional Weights & Biases mirror of the run.

wandb's TensorBoard sync reads the run's own event file (as CleanRL's `--track` does), so W&B
gets exactly the TensorBoard tags, plus the resolved config. wandb is an optional extra
(`pip install 'pliable[wandb]'`); turning the mirror on without it is one ConfigError line.
The W&B run's id is saved in the run's config.yaml (`logging.wandb.id`): `--resume` continues
that W&B run (resume="allow"); what the stopped process logged after its last checkpoint stays
there too (TensorBoard hides it, W&B cannot). wandb's own files go to $WANDB_DIR or ./wandb: not
inside a run directory, whose every file it would copy, its own included.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import os
import secrets
from dataclasses import dataclass, field

from omegaconf import OmegaConf

from agents.errors import ConfigError, library_message
from agents.plasticity import strategy_set_name

INSTALL_HINT = "pip install 'pliable[wandb]'"
BAD_NAME_CHARS = "/\\#?%:"  # not allowed by W&B in project names and run ids
MAX_TAG = 64  # W&B's limit on a tag's length


@dataclass
class WandbConfig:
    enabled: bool = False  # mirror the run to W&B (off: wandb is not even imported)
    project: str = "pliable"
    entity: str = ""  # "": your default entity
    group: str = ""  # pliable bench: the bench's name, if unset
    job_type: str = ""  # pliable bench: the strategy set, if unset
    tags: list[str] = field(default_factory=list)  # pliable bench adds the strategy set
    name: str = ""  # "": <exp_name>__<strategy set>__s<seed>
    # "" ($WANDB_MODE, else online) | online | offline (upload later: wandb sync) | disabled
    mode: str = ""
    id: str = ""  # "": a new one when the run starts, saved in config.yaml (what --resume uses)


@dataclass
class LoggingConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)


CHOICES = {"wandb.mode": ("", "online", "offline", "disabled")}


class WandbFailed(Exception):
    """wandb.init failed (not logged in, W&B unreachable in online mode): the run stops before
    training, as a failed run (launch.py), resumable once W&B is reachable."""


def check_logging_config(logging) -> None:
    """What the schema cannot express, checked only when the mirror is on."""
    settings = logging.wandb
    if not settings.enabled:
        return
    try:
        importlib.import_module("wandb")
    except ImportError:
        raise ConfigError("logging.wandb.enabled: the wandb package is not installed "
                          f"({INSTALL_HINT})") from None
    if not settings.project:
        raise ConfigError("logging.wandb.project: must not be empty")
    for key in ("project", "id"):
        if any(char in settings[key] for char in BAD_NAME_CHARS):
            raise ConfigError(f"logging.wandb.{key}: '{settings[key]}' must not contain any of "
                              f"{BAD_NAME_CHARS}")
    for tag in settings.tags:
        if not 1 <= len(tag) <= MAX_TAG:
            raise ConfigError(f"logging.wandb.tags: '{tag}' must be 1 to {MAX_TAG} characters")


def with_run_id(cfg):
    """`cfg`, or when the mirror is on without an id, a copy with a new one: saved in
    config.yaml, it is the W&B run that `--resume` continues."""
    if not cfg.logging.wandb.enabled or cfg.logging.wandb.id:
        return cfg
    cfg = copy.deepcopy(cfg)
    cfg.logging.wandb.id = secrets.token_hex(8)  # as unique as wandb's own ids
    return cfg


class WandbRun:
    """A started W&B run that mirrors one run directory's event file."""

    def __init__(self, cfg):
        """wandb.init, or WandbFailed with its message."""
        import wandb

        self.wandb = wandb
        settings = cfg.logging.wandb
        name = settings.name or (f"{cfg.exp_name}__"
                                 f"{cfg.strategy_set or strategy_set_name(cfg.plasticity)}"
                                 f"__s{cfg.seed}")
        try:
            self.run = wandb.init(
                project=settings.project, entity=settings.entity or None,
                group=settings.group or None, job_type=settings.job_type or None,
                tags=list(settings.tags) or None, name=name, id=settings.id or None,
                resume="allow", mode=settings.mode or None,
                config=OmegaConf.to_container(cfg, resolve=True))
        except Exception as exc:
            raise WandbFailed(f"logging.wandb: wandb.init failed: {library_message(exc)} "
                              "(logging.wandb.mode=offline needs no account)") from None

    @contextlib.contextmanager
    def mirroring(self, run_dir):
        """Around making the run's SummaryWriter: wandb then syncs that writer's event file, and
        only it (on --resume, not the earlier process's files)."""
        # The trailing separator makes tags relative to the run directory itself: unprefixed.
        self.wandb.tensorboard.patch(root_logdir=os.path.join(os.path.abspath(run_dir), ""))
        try:
            yield
        finally:  # the patch is process-wide: the next run (a test, a bench cell) makes its own
            self.wandb.tensorboard.unpatch()

    def finish(self, exit_code: int) -> None:
        """After the event file is closed (wandb reads it to its end). Never raises: the run's
        own outcome is what to report."""
        with contextlib.suppress(Exception):
            self.run.finish(exit_code=exit_code)
