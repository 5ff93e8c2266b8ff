"""Gaussian-policy PPO on a MuJoCo task sequence, end to end: a tiny run writes the usual tags and
the monitor's spectra at the friction change, one seed gives one run, a stopped run resumes
bitwise (normalisation statistics included), and DQN refuses continuous actions in one line."""

import io
import signal

import numpy as np
import pytest
import torch
from signals import Signals

from agents.errors import ConfigError
from agents.run_view import Observer
from agents.runtime.config import load_config
from agents.runtime.launch import run_training
from agents.runtime.logger import RunLogger
from agents.runtime.resume import resume_training
from agents.runtime.trainer import Trainer
from analysis.study.compare import logged, run_differences

TINY = ("torch_threads=1", "checkpoint.every=256")
MONITOR = ("monitor.enabled=true", "monitor.batch_size=64", "monitor.top_k=4",
           "monitor.lanczos_steps=8", "monitor.ggn_steps=8", "monitor.density_probes=1",
           "monitor.density_steps=8", "monitor.trace_probes=2", "monitor.metrics_every=8",
           "monitor.ntk=false")


class Frictions(Observer):
    """The training envs' sliding friction after every iteration, read from their MuJoCo
    models."""

    def __init__(self, trainer_envs):
        self.trainer_envs, self.seen = trainer_envs, []

    def after_iteration(self, run):
        envs = self.trainer_envs()
        models = [env.unwrapped.model for env in envs.unwrapped.envs]
        self.seen.append((run.ctx.global_step, {float(m.geom_friction[:, 0].max())
                                                for m in models}))


def train(tiny_cfg, run_dir, *overrides, observers=()):
    cfg = tiny_cfg(*TINY, *overrides, f"run_dir={run_dir}", path="tiny_continuous.yaml")
    assert run_training(cfg, observers, stream=io.StringIO()) == 0
    return run_dir


def test_a_tiny_continuous_run_writes_the_usual_tags_and_spectra(tiny_cfg, tmp_path):
    run_dir = train(tiny_cfg, tmp_path / "run", *MONITOR)
    metrics = {metric for metric, _, _ in logged(run_dir)}
    for tag in ("charts/episodic_return", "charts/episodic_length", "charts/task_index",
                "losses/policy_loss", "losses/value_loss", "losses/entropy", "losses/approx_kl",
                "losses/explained_variance", "spectrum/post/lambda_max", "spectrum/pre/trace",
                "spectrum/post/ggn/lambda_max", "spectrum/post/kfac/critic_fc1/a_rank",
                "plasticity/erank/actor_fc1", "plasticity/erank/critic_fc2"):
        assert tag in metrics, tag
    assert sorted(p.name for p in (run_dir / "spectra").glob("switch_*.npz"))
    # Entropy of a 3-dimensional Gaussian of std 1 at the start: 3·(½ + ½·log 2π) ≈ 4.26.
    entropy = [float(value) for metric, _, value in logged(run_dir) if metric == "losses/entropy"]
    assert abs(entropy[0] - 3 * (0.5 + 0.5 * np.log(2 * np.pi))) < 0.05


def test_the_friction_changes_at_the_switch_step(tiny_cfg, tmp_path):
    cfg = load_config("tiny_continuous.yaml", [*TINY, f"runs_root={tmp_path}"])
    trainer = Trainer(cfg)
    seen = Frictions(lambda: trainer.envs)
    trainer.observers.append(seen)
    logger = RunLogger(tmp_path / "log", trainer.sequence.total_steps, 1e9, io.StringIO())
    trainer.run(logger, tmp_path)
    logger.close()
    switch = cfg.sequence.switch_every
    assert {step: f for step, f in seen.seen} == {
        step: ({1.0} if step <= switch else {0.1}) for step, _ in seen.seen}
    assert any(step == switch for step, _ in seen.seen)  # a rollout ends on the switch


def test_one_seed_one_run_and_another_seed_another(tiny_cfg, tmp_path):
    first = train(tiny_cfg, tmp_path / "a")
    again = train(tiny_cfg, tmp_path / "b")
    assert not run_differences(first, again)
    other = train(tiny_cfg, tmp_path / "c", "seed=2")
    assert run_differences(first, other)


def test_a_stopped_run_resumes_exactly_normalisation_included(tiny_cfg, tmp_path):
    reference = train(tiny_cfg, tmp_path / "reference", "plasticity.cbp={maturity: 4}")
    cfg = tiny_cfg(*TINY, "plasticity.cbp={maturity: 4}", f"run_dir={tmp_path / 'run'}",
                   path="tiny_continuous.yaml")
    assert cfg.env.normalize_obs and cfg.env.normalize_reward
    assert run_training(cfg, [Signals(384, signal.SIGINT)], stream=io.StringIO()) == 130
    assert resume_training(tmp_path / "run", stream=io.StringIO()) == 0
    assert not run_differences(tmp_path / "run", reference)
    final = torch.load(tmp_path / "run" / "checkpoints" / "final.pt", weights_only=False)
    assert final["step"] == 1024


def test_dqn_refuses_continuous_actions_in_one_line(assert_one_line_exit_2, tmp_path):
    assert_one_line_exit_2(["train", "tiny_continuous", "agent=dqn", f"runs_root={tmp_path}"],
                           "agent=dqn needs discrete actions", tmp_path)


def test_a_bad_schedule_is_refused_when_the_config_loads(tiny_cfg):
    """--print-config, training and `pliable bench` refuse the same `sequence.vary`."""
    with pytest.raises(ConfigError, match="list at least one value"):
        tiny_cfg("sequence.vary={friction: []}", path="tiny_continuous.yaml")
