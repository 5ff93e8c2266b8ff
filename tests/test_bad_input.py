"""Bad input anywhere: one line naming the problem and the allowed values, exit status 2, and
nothing written or overwritten (run through the CLI entry point, in this process)."""

import pytest
import torch
from omegaconf import OmegaConf

from agents.runtime.checkpoints import FORMAT, VERSION

CONFIG_CASES = [
    (["env.num_envs=-4"], "env.num_envs must be a positive integer, got -4"),
    (["ppo.num_steps=0"], "ppo.num_steps must be a positive integer, got 0"),
    (["sequence.switch_every=0"], "sequence.switch_every must be a positive integer"),
    (["sequence.switch_every=1.5"], "sequence.switch_every: Value '1.5' of type 'float'"),
    (["sequence.switch_every=1001"], "must be a multiple of env.num_envs (4)"),
    (["sequence.cycles=-1"], "sequence.cycles must be a positive integer"),
    (["sequence.tasks=[]"], "sequence.tasks is empty"),
    (["seed=abc"], "seed: Value 'abc' of type 'str' could not be converted to Integer"),
    (["ppo.lr=1"], "unknown config key 'ppo.lr' (allowed: learning_rate, num_steps"),
    (["checkpoint.evry=5"], "unknown config key 'checkpoint.evry' (allowed: every, keep_last, "
                            "save_replay, at_switch)"),
    (["checkpoint.every=-1"], "checkpoint.every must be >= 0 (0: only at switches and the end)"),
    (["checkpoint.keep_last=0"], "checkpoint.keep_last must be a positive integer, got 0"),
    (["checkpoint.save_replay=maybe"], "checkpoint.save_replay: Value 'maybe'"),
    (["agent=sac"], "agent: 'sac' is not one of dqn, ppo"),
    (["plasticity.nope={}"], "plasticity.nope: unknown strategy 'nope' (known: adamo, c_chain"),
    (["plasticity.redo.treshold=0.1"], "plasticity.redo.treshold: unknown setting (settings: "
                                       "threshold, every_steps, batch_size)"),
    (["plasticity.l2.coef=abc"], "plasticity.l2.coef: Value 'abc' of type 'str' could not be "
                                 "converted to Float (settings: coef)"),
    (["sequence.tasks=[{env_id: Nope-v0}]"], "unknown env 'Nope-v0' (MiniGrid-*, ALE/* or"),
    (["sequence.tasks=[{env_id: MiniGrid-Nope-v0}]"], "unknown MiniGrid env 'MiniGrid-Nope-v0'"),
    (["sequence.tasks=[{env_id: ALE/Breakout-v5, kwargs: {mode: 3}}]"],
     "ALE/Breakout-v5 has no mode 3 (valid modes: 0, 4, 8"),
    (["sequence.tasks=[{env_id: ALE/Pong-v5, kwargs: {difficulty: 7}}]"],
     "ALE/Pong-v5 has no difficulty 7 (valid difficulties: 0, 1"),
    (["sequence.tasks=[{env_id: MiniGrid-Empty-5x5-v0}, {env_id: CartPole-v1}]"],
     "every task of a sequence needs the same"),
    (["sequence.tasks=[{env_id: MiniGrid-Empty-5x5-v0}, {env_id: MiniGrid-Empty-5x5-v0}]"],
     "sequence.tasks: task names must be unique, got ['Empty-5x5-v0', 'Empty-5x5-v0']: give "
     "repeated envs a name of their own"),
]


@pytest.mark.parametrize("overrides,message", CONFIG_CASES)
def test_bad_config(overrides, message, tmp_path, assert_one_line_exit_2):
    argv = ["train", "tiny", f"runs_root={tmp_path / 'runs'}", *overrides]
    assert_one_line_exit_2(argv, message, tmp_path)
    assert not (tmp_path / "runs").exists()


def test_missing_config_file(tmp_path, assert_one_line_exit_2):
    argv = ["train", "no_such_config.yaml", f"runs_root={tmp_path / 'runs'}"]
    assert_one_line_exit_2(argv, "config file not found: no_such_config.yaml", tmp_path)
    assert not (tmp_path / "runs").exists()


@pytest.fixture
def run_dirs(tmp_path):
    """Run directories in the states a resume can find them: no checkpoint, a corrupt one."""
    from agents.runtime.config import load_config

    config = OmegaConf.to_yaml(load_config("tiny.yaml"))
    dirs = {}
    for name in ("no_checkpoint", "corrupt", "foreign"):
        (tmp_path / name / "checkpoints").mkdir(parents=True)
        (tmp_path / name / "config.yaml").write_text(config)
        dirs[name] = tmp_path / name
    good = {"format": FORMAT, "version": VERSION, "x": torch.ones(100)}
    torch.save(good, dirs["corrupt"] / "checkpoints" / "switch_000.pt")
    newest = dirs["corrupt"] / "checkpoints" / "step_000000000512.pt"
    newest.write_bytes((dirs["corrupt"] / "checkpoints" / "switch_000.pt").read_bytes()[:900])
    torch.save({"model": torch.ones(2)}, dirs["foreign"] / "checkpoints" / "final.pt")
    (tmp_path / "empty").mkdir()
    return tmp_path


RESUME_CASES = [
    (["train", "--resume", "{root}/missing"], "--resume {root}/missing: not a run directory"),
    (["train", "--resume", "{root}/empty"], "--resume {root}/empty: not a run directory (it has "
                                           "no config.yaml)"),
    (["train", "--resume", "{root}/no_checkpoint"], "no checkpoint in {root}/no_checkpoint/"
                                                    "checkpoints (the run stopped before"),
    (["train", "--resume", "{root}/corrupt"], "step_000000000512.pt is truncated or corrupt"),
    (["train", "--resume", "{root}/foreign"], "final.pt is not a pliable checkpoint"),
    (["train", "--resume", "{root}/corrupt", "seed=3"],
     "--resume: 'seed=3' would change the run; on resume only print_every, checkpoint.every"),
    (["train", "--resume", "{root}/corrupt", "tiny.yaml"],
     "--resume uses the run's own config.yaml: drop 'tiny.yaml'"),
    (["spectrum", "{root}/nope.pt"], "checkpoint not found: {root}/nope.pt"),
    (["spectrum", "{root}/corrupt/checkpoints/step_000000000512.pt"], "truncated or corrupt"),
    (["spectrum", "{root}/corrupt/checkpoints/switch_000.pt", "seed=2"],
     "'seed=2': pliable spectrum takes monitor.* settings only"),
]


@pytest.mark.parametrize("argv,message", RESUME_CASES)
def test_bad_resume_or_checkpoint(argv, message, run_dirs, assert_one_line_exit_2):
    argv = [arg.format(root=run_dirs) for arg in argv]
    assert_one_line_exit_2(argv, message.format(root=run_dirs), run_dirs)


def test_resuming_a_run_that_another_process_trains_is_refused(run_dirs, assert_one_line_exit_2):
    from agents.runtime.run_dir import run_lock

    with run_lock(run_dirs / "corrupt"):  # as the live training process holds it
        assert_one_line_exit_2(["train", "--resume", str(run_dirs / "corrupt")],
                               "is being trained by another process", run_dirs)
