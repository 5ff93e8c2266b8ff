"""A run stopped anywhere and resumed equals the run never stopped: every tensor, counter and RNG
state of its final checkpoint bitwise, and every logged scalar at the same steps (PPO and DQN,
stateful strategies on, stopped mid-segment, at a switch, or crashed after a checkpoint)."""

import io
import signal

import pytest
from signals import Signals

from agents.run_view import Observer
from agents.runtime.checkpoints import atomic_save, load_checkpoint
from agents.runtime.launch import run_training
from agents.runtime.resume import resume_training
from agents.runtime.run_dir import read_status
from analysis.study.compare import logged, run_differences
from analysis.study.results import read_scalars

PPO = ("tiny.yaml", "sequence.switch_every=512", "ppo.num_steps=32", "torch_threads=1",
       "checkpoint.every=256", "plasticity.l2_init={}", "plasticity.c_chain={}",
       "plasticity.cbp={replacement_rate: 0.05, maturity: 4}", "plasticity.redo={every_steps: 3}",
       "plasticity.shrink_perturb={}")
DQN = ("tiny_dqn.yaml", "sequence.switch_every=512", "checkpoint.every=256",
       "checkpoint.save_replay=true", "plasticity.trac={}",
       "plasticity.shrink_perturb={when: step}",
       "plasticity.effective_rank={er_batch: 4, max_obs: 16}")
MONITOR = ("monitor.enabled=true", "monitor.batch_size=64", "monitor.top_k=4",
           "monitor.lanczos_steps=8", "monitor.ggn_steps=8", "monitor.density_probes=1",
           "monitor.density_steps=8", "monitor.trace_probes=2", "monitor.metrics_every=12",
           "monitor.every_steps=384", "monitor.ntk=false", "monitor.jacobians=false")


class CrashAt(Observer):
    """A crash with no checkpoint of its own, after the scalars of `step` are logged."""

    def __init__(self, step: int):
        self.step = step

    def after_iteration(self, run):
        if run.ctx.global_step >= self.step:
            raise RuntimeError("simulated crash")


def train(cfg_factory, name, tmp_path, observers=()):
    config, *overrides = name
    cfg = cfg_factory(*overrides, f"run_dir={tmp_path / 'run'}", path=config)
    code = run_training(cfg, observers, stream=io.StringIO())
    return code, tmp_path / "run"


def assert_same_run(resumed_dir, reference_dir):
    assert not run_differences(resumed_dir, reference_dir)
    expected = logged(reference_dir)
    assert sum(metric == "charts/episodic_return" for metric, _, _ in expected) >= 5
    assert read_status(resumed_dir)["status"] == "finished"


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """The uninterrupted runs, trained once for the module."""
    from agents.runtime.config import load_config

    root = tmp_path_factory.mktemp("reference")
    runs = {}
    for name, (config, *overrides) in {"ppo": PPO, "dqn": DQN,
                                       "monitor": PPO[:5] + MONITOR}.items():
        cfg = load_config(config, [*overrides, "print_every=1000", f"run_dir={root / name}"])
        assert run_training(cfg, stream=io.StringIO()) == 0
        runs[name] = root / name
    return runs


@pytest.mark.parametrize("agent,stop_step,checkpoint", [
    ("ppo", 640, "step_000000000640.pt"),  # mid-segment: 5 iterations of 128 steps
    ("ppo", 1024, "switch_002.pt"),  # at a segment's end: stops at the next start
    ("dqn", 768, "step_000000000768.pt"),
    ("dqn", 512, "switch_001.pt"),
])
def test_stopped_and_resumed_equals_uninterrupted(tiny_cfg, tmp_path, references, agent,
                                                 stop_step, checkpoint):
    code, run_dir = train(tiny_cfg, PPO if agent == "ppo" else DQN, tmp_path,
                          [Signals(stop_step, signal.SIGINT)])
    assert code == 130
    status = read_status(run_dir)
    assert status["status"] == "interrupted" and status["checkpoint"].endswith(checkpoint)
    if agent == "dqn":
        assert (run_dir / "checkpoints" / checkpoint.replace(".pt", ".replay.pt")).is_file()
    out = io.StringIO()
    assert resume_training(run_dir, stream=out) == 0
    assert f"from {checkpoint} at step" in out.getvalue()
    assert_same_run(run_dir, references[agent])


def test_the_spectral_monitor_continues_as_if_never_stopped(tiny_cfg, tmp_path, references):
    code, run_dir = train(tiny_cfg, PPO[:5] + MONITOR, tmp_path, [Signals(640, signal.SIGINT)])
    assert code == 130
    assert resume_training(run_dir, stream=io.StringIO()) == 0
    assert_same_run(run_dir, references["monitor"])
    assert sorted(p.name for p in (run_dir / "spectra").iterdir()) == sorted(
        p.name for p in (references["monitor"] / "spectra").iterdir())


def test_crash_after_a_checkpoint_resumes_without_duplicated_scalars(tiny_cfg, tmp_path,
                                                                    references):
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tiny_cfg, PPO, tmp_path, [CrashAt(896)])  # checkpoint at 768, scalars up to 896
    run_dir = tmp_path / "run"
    assert read_status(run_dir)["status"] == "failed"
    logged = read_scalars(run_dir)
    assert logged["step"].max() == 896  # logged past the checkpoint: must not be counted twice
    assert resume_training(run_dir, stream=io.StringIO()) == 0
    assert_same_run(run_dir, references["ppo"])


def test_a_dqn_resumed_without_its_replay_buffer_refills_it_first(tiny_cfg, tmp_path):
    code, run_dir = train(tiny_cfg, DQN[:3] + ("checkpoint.save_replay=false",), tmp_path,
                          [Signals(768, signal.SIGINT)])
    assert code == 130 and not list(run_dir.glob("checkpoints/*.replay.pt"))
    out = io.StringIO()
    assert resume_training(run_dir, stream=out) == 0
    assert "holds no replay buffer (checkpoint.save_replay=false)" in out.getvalue()
    # one update per 4 env steps once 256 transitions are stored: steps 256..768, then (after
    # the resume empties the buffer at 768) steps 1024..1536, 129 updates each
    counters = load_checkpoint(run_dir / "checkpoints" / "final.pt")["agent"]["counters"]
    assert counters["update_count"] == 129 + 129


def test_a_checkpoint_from_before_named_side_files_resumes_exactly(tiny_cfg, tmp_path,
                                                                  references):
    """Earlier checkpoints name a DQN's replay buffer `replay_file` (no `side_files`)."""
    code, run_dir = train(tiny_cfg, DQN, tmp_path, [Signals(768, signal.SIGINT)])
    assert code == 130
    path = run_dir / "checkpoints" / "step_000000000768.pt"
    state = load_checkpoint(path)
    state["replay_file"] = state.pop("side_files")["replay"]
    atomic_save(state, path)
    assert resume_training(run_dir, stream=io.StringIO()) == 0
    assert_same_run(run_dir, references["dqn"])


def test_resuming_a_finished_run_does_nothing(references):
    before = sorted(p.name for p in references["ppo"].iterdir())
    out = io.StringIO()
    assert resume_training(references["ppo"], stream=out) == 0
    assert "finished at step 1,536: nothing to resume" in out.getvalue()
    assert sorted(p.name for p in references["ppo"].iterdir()) == before


def test_keep_last_prunes_periodic_checkpoints_and_a_finished_run_keeps_no_replay(references):
    # periodic due at 256, 768, 1280 (512 and 1024 are switches), keep_last=2; replay buffers
    # only serve a resume, which a finished run does not need
    names = sorted(p.name for p in (references["dqn"] / "checkpoints").iterdir())
    assert names == ["final.pt", "step_000000000768.pt", "step_000000001280.pt",
                     "switch_000.pt", "switch_001.pt", "switch_002.pt"]
