"""bench/cleanrl_real.py's gymnasium-1.x patch of CleanRL's scripts, on small synthetic snippets
shaped like the lines of fe8d8a0's ppo_atari.py and dqn_atari.py (no CleanRL copy needed), and
bench/throughput.py --cleanrl's one-line exits."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import cleanrl_real, throughput
from bench.cleanrl_real import PATCHES, PatchError, patch_text, patched_copy

ROOT = Path(__file__).resolve().parent.parent

MAKE_ENV = '''import gymnasium as gym
import numpy as np


def make_env(env_id, idx, capture_video, run_name):
    def thunk():
        if capture_video and idx == 0:
            env = gym.make(env_id, render_mode="rgb_array")
        else:
            env = gym.make(env_id)
        env = gym.wrappers.ResizeObservation(env, (84, 84))
        env = gym.wrappers.GrayScaleObservation(env)
        env = gym.wrappers.FrameStack(env, 4)
        return env

    return thunk

'''
PPO = MAKE_ENV + '''
def main(args, run_name, writer):
    envs = gym.vector.SyncVectorEnv(
        [make_env(args.env_id, i, args.capture_video, run_name) for i in range(args.num_envs)],
    )
    next_obs, reward, terminations, truncations, infos = envs.step(None)
    if "final_info" in infos:
        for info in infos["final_info"]:
            if info and "episode" in info:
                writer.append((info["episode"]["r"], info["episode"]["l"]))
'''
DQN = MAKE_ENV.replace("(env_id, idx,", "(env_id, seed, idx,") + '''
def main(args, run_name, writer):
    envs = gym.vector.SyncVectorEnv(
        [make_env(args.env_id, args.seed + i, i, args.capture_video, run_name) for i in \
range(args.num_envs)]
    )
    next_obs, rewards, terminations, truncations, infos = envs.step(None)
    if "final_info" in infos:
        for info in infos["final_info"]:
            if info and "episode" in info:
                writer.append((info["episode"]["r"], info["episode"]["l"]))
    real_next_obs = next_obs.copy()
    for idx, trunc in enumerate(truncations):
        if trunc:
            real_next_obs[idx] = infos["final_observation"][idx]
    return real_next_obs
'''
SCRIPTS = {"ppo": PPO, "dqn": DQN}


@pytest.mark.parametrize("kind", ["ppo", "dqn"])
def test_every_replacement_applies_once_and_the_result_is_python(kind):
    patched = patch_text(SCRIPTS[kind], PATCHES[kind], kind)

    compile(patched, kind, "exec")
    assert "import ale_py" in patched
    assert "env = gym.make(env_id, frameskip=1)" in patched
    assert 'gym.make(env_id, render_mode="rgb_array")' in patched  # the video branch: as it was
    assert "gym.wrappers.GrayscaleObservation(env)" in patched
    assert "gym.wrappers.FrameStackObservation(env, 4)" in patched
    assert "gym.wrappers.ResizeObservation(env, (84, 84))" in patched
    assert "autoreset_mode=gym.vector.AutoresetMode.SAME_STEP" in patched
    for old in ("GrayScaleObservation", "FrameStack(", 'for info in infos["final_info"]:',
                "final_observation"):
        assert old not in patched
    assert ('infos["final_obs"][idx]' in patched) == (kind == "dqn")


class FakeVectorEnv:
    """Returns one step of gymnasium 1.x's SAME_STEP infos: env 0 lost a life (a final_info
    without an episode), env 1 ended its game, env 2 was truncated (its episode and last frame
    in the masked arrays), env 3 ran on."""

    def __init__(self, envs, autoreset_mode):
        assert autoreset_mode.name == "SAME_STEP"

    def step(self, actions):
        mask = np.array([False, True, True, False])
        episode = {"r": np.array([0.0, 3.0, 7.0, 0.0]), "_r": mask,
                   "l": np.array([0, 120, 400, 0]), "_l": mask}
        final_obs = np.array([np.full(2, 10.0), np.full(2, 11.0), np.full(2, 12.0), None],
                             dtype=object)
        infos = {"final_info": {"episode": episode, "_episode": mask,
                                "lives": np.array([4, 0, 2, 0]),
                                "_lives": np.array([True, True, True, False])},
                 "_final_info": np.array([True, True, True, False]),
                 "final_obs": final_obs, "_final_obs": np.array([True, True, True, False])}
        return (np.zeros((4, 2)), np.zeros(4), np.array([True, True, False, False]),
                np.array([False, False, True, False]), infos)


@pytest.mark.parametrize("kind", ["ppo", "dqn"])
def test_the_patched_loops_read_gymnasium_1x_infos_as_0_29s(kind):
    import gymnasium as gym

    namespace = {}
    exec(patch_text(SCRIPTS[kind], PATCHES[kind], kind), namespace)
    fake_gym = type("FakeGym", (), {"vector": type("V", (), {
        "SyncVectorEnv": FakeVectorEnv, "AutoresetMode": gym.vector.AutoresetMode})})
    namespace["gym"] = fake_gym
    args = type("Args", (), {"env_id": "ALE/Breakout-v5", "capture_video": False,
                             "num_envs": 4, "seed": 1})
    episodes = []

    real_next_obs = namespace["main"](args, "run", episodes)

    assert episodes == [(3.0, 120), (7.0, 400)]  # the games that ended, each once
    if kind == "dqn":  # the truncated env's true last frame; the others keep the reset one
        assert real_next_obs.tolist() == [[0, 0], [0, 0], [12, 12], [0, 0]]


def test_a_missing_snippet_is_one_line_naming_it():
    text = PPO.replace("        env = gym.wrappers.FrameStack(env, 4)\n", "")

    with pytest.raises(PatchError) as caught:
        patch_text(text, PATCHES["ppo"], "cleanrl/ppo_atari.py")

    message = str(caught.value)
    assert "\n" not in message
    assert "cleanrl/ppo_atari.py" in message and "gym.wrappers.FrameStack(env, 4)" in message
    assert "0 times" in message and "fe8d8a0" in message


def test_a_snippet_found_twice_is_refused():
    text = PPO.replace("        return env\n", "        env = gym.wrappers.FrameStack(env, 4)\n"
                       "        return env\n")

    with pytest.raises(PatchError, match="2 times, not once"):
        patch_text(text, PATCHES["ppo"], "ppo")


def test_patched_copy_copies_the_utils_and_patches_both_scripts(tmp_path):
    clone = tmp_path / "cleanrl"
    (clone / "cleanrl").mkdir(parents=True)
    (clone / "cleanrl_utils").mkdir()
    (clone / "cleanrl_utils" / "atari_wrappers.py").write_text("MaxAndSkipEnv = None\n")
    (clone / "cleanrl" / "ppo_atari.py").write_text(PPO)
    (clone / "cleanrl" / "dqn_atari.py").write_text(DQN)

    paths = patched_copy(clone, tmp_path / "out")

    assert paths == {"ppo": tmp_path / "out" / "ppo_atari.py",
                     "dqn": tmp_path / "out" / "dqn_atari.py"}
    assert (tmp_path / "out" / "cleanrl_utils" / "atari_wrappers.py").exists()
    assert "SAME_STEP" in paths["ppo"].read_text() and "final_obs" in paths["dqn"].read_text()
    assert (clone / "cleanrl" / "ppo_atari.py").read_text() == PPO  # the clone is untouched


def test_a_directory_that_is_not_a_clone_is_one_line(tmp_path):
    with pytest.raises(PatchError) as caught:
        patched_copy(tmp_path, tmp_path / "out")
    assert "\n" not in str(caught.value) and "cleanrl/ppo_atari.py" in str(caught.value)


def test_missing_dependencies_are_one_line_and_exit_2_not_a_traceback(tmp_path):
    """tyro made unimportable (sys.modules[...] = None), as in an env without it."""
    code = ("import runpy, sys; sys.modules['tyro'] = None; "
            f"sys.argv = ['bench/throughput.py', 'ppo', '--cleanrl', {str(tmp_path)!r}]; "
            "runpy.run_path('bench/throughput.py', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)

    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "tyro" in lines[0]
    assert ".venv/bin/pip install -c constraints.txt tyro" in lines[0]


def test_a_bad_clone_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cleanrl_real, "missing_dependencies", lambda: [])

    with pytest.raises(SystemExit) as caught:
        throughput.main(["dqn", "--cleanrl", str(tmp_path)])

    assert caught.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no cleanrl/" in err[0]


def test_the_sides_and_what_is_read_from_their_output():
    sides = throughput.SCRIPT_SIDES
    for group in throughput.SCRIPT_GROUPS.values():
        base, *ours = group["sides"]
        assert sides[base]["script"] in cleanrl_real.SCRIPTS
        for side in ours:
            assert side in sides and "config" in sides[side]
            if side.endswith("_bf16"):  # the fp32 side's overrides plus the precision
                assert sides[side]["overrides"] == [*sides[side[:-5]]["overrides"],
                                                    throughput.BF16]
    assert cleanrl_real.script_args("ppo", 2048, 1000, 50000)[:2] == ["--env-id",
                                                                      "ALE/Breakout-v5"]
    assert cleanrl_real.last_sps("SPS: 101\nglobal_step=9, episodic_return=1.0\nSPS: 99\n") == 99
    assert cleanrl_real.last_sps("no rate here") is None
    assert throughput.last_progress_sps(
        "step      1,024/2,048 ( 50%) | SPS    232 | task 1/1 x | return 0 (last 2 ep)\n"
        "step      2,048/2,048 (100%) | SPS  1,285 | task 1/1 x | return 1 (last 9 ep)\n") == 1285


@pytest.mark.parametrize("ratios,expected", [
    ([1.6, 1.52], "met"), ([1.4, 1.49], "MISSED"),
    ([1.7, 1.4], "undecided, the median met"), ([1.3, 1.4, 1.6], "undecided, the median missed")])
def test_a_target_is_met_or_missed_only_when_every_round_agrees(ratios, expected):
    assert throughput.verdict(ratios, 1.5) == expected


def test_rounds_run_the_sides_in_turn_forwards_then_backwards():
    sides = ["baseline", "ours", "ours_bf16"]
    assert [throughput.in_round_order(sides, r) for r in range(3)] == [
        sides, sides[::-1], sides]
