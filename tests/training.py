"""Helpers for tests that train a (tiny) agent in-process."""

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.runtime.logger import RunLogger
from agents.runtime.trainer import Trainer


def run(cfg, log_dir, observers=()):
    """Train cfg with logs in log_dir; returns the trainer, to inspect its agent and counters."""
    trainer = Trainer(cfg, observers)
    logger = RunLogger(log_dir, trainer.sequence.total_steps, 1000)
    trainer.run(logger, log_dir)
    logger.close()
    return trainer


def train_once(cfg, log_dir):
    """Train cfg with logs in log_dir; returns (final parameters, logged episodic returns)."""
    trainer = run(cfg, log_dir)
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    returns = [(e.step, e.value) for e in acc.Scalars("charts/episodic_return")]
    return {k: v.clone() for k, v in trainer.agent.network.state_dict().items()}, returns
