"""Helpers for tests that train a (tiny) agent in-process."""

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.logger import RunLogger
from agents.loop import Trainer


def run(cfg, log_dir, listeners=()):
    """Train cfg with logs in log_dir; returns the trainer, to inspect its agent and counters."""
    trainer = Trainer(cfg, listeners)
    logger = RunLogger(log_dir, trainer.sequence.total_steps, 1000)
    trainer.run(logger)
    logger.close()
    return trainer


def train_once(cfg, log_dir):
    """Train cfg with logs in log_dir; returns (final parameters, logged episodic returns)."""
    trainer = run(cfg, log_dir)
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    returns = [(e.step, e.value) for e in acc.Scalars("charts/episodic_return")]
    return {k: v.clone() for k, v in trainer.agent.network.state_dict().items()}, returns
