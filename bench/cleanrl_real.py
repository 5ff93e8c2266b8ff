"""CleanRL's own `ppo_atari.py` and `dqn_atari.py`, copied out of a user's clone and patched to
run on gymnasium 1.x, for `bench/throughput.py --cleanrl DIR`.

The copy (not vendored here; this file holds only the old/new snippets below):

    git clone https://github.com/vwxyzjn/cleanrl && git -C cleanrl checkout fe8d8a0

DIR is that clone's root, the directory holding `cleanrl/` and `cleanrl_utils/` (at fe8d8a0 the
scripts take their Atari wrappers and replay buffer from `cleanrl_utils`, not stable-baselines3).
`patched_copy` copies both scripts and `cleanrl_utils/` into a temporary directory and applies
exact string replacements, each of which must match exactly once: at another commit the first
one that does not fails with one line naming it (PatchError). What is replaced, and why:

- `import ale_py` after `import gymnasium as gym`: gymnasium 1.x no longer loads ale-py as a
  plugin, so without the import no ALE id (`BreakoutNoFrameskip-v4`, `ALE/Breakout-v5`) exists;
- `gym.wrappers.GrayScaleObservation` -> `GrayscaleObservation` and `gym.wrappers.FrameStack(env,
  4)` -> `FrameStackObservation(env, 4)`: the 1.x names of the same wrappers (1.x's stack pads
  the first observation with copies of the reset frame, as 0.29's did; `ResizeObservation(env,
  (84, 84))` already passes the tuple 1.x requires and is left alone);
- `SyncVectorEnv(..., autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)`: 1.x's default resets
  a finished env on the *next* call to step; 0.29 reset it within the step and reported the last
  observation and info under `final_observation` / `final_info`, which the loops rely on;
- the episode logging loop `for info in infos["final_info"]:`: 0.29 gave a list of per-env dicts
  (None where an env had not finished), 1.x gives one dict of arrays with `_key` masks; the
  replacement builds the per-env `{"episode": {"r": ..., "l": ...}}` dicts of the envs whose
  `_episode` mask is set, so the loop body runs unchanged;
- DQN's `infos["final_observation"][idx]` -> `infos["final_obs"][idx]`: 1.x's name for it;
- `gym.make(env_id)` -> `gym.make(env_id, frameskip=1)` in `make_env` (the env the scripts train
  on; the video branch is left alone, video is off): the one replacement that is not about
  gymnasium 1.x, see below.

Hyperparameters, network, wrappers, loop and logging stay as published. They write TensorBoard
runs under `runs/` of their working directory, which the bench points at a temporary one; W&B
tracking, video and model saving are off by default and stay off.

Fidelity to our side. Pliable trains `ALE/Breakout-v5` (configs/atari_modes_*.yaml): ALE v5's
emulator settings (sticky actions 0.25 applied per frame, 108,000 frames at most per episode,
Breakout's default mode 0, the minimal action set), made with `frameskip=1`, and a frame skip
of 4 with max-pooling in its preprocessing. CleanRL's published runs use `BreakoutNoFrameskip-v4`
(no sticky actions, otherwise the same emulator settings) and do the skip of 4 in their own
`MaxAndSkipEnv`. The bench runs them with `--env-id ALE/Breakout-v5`, the same game and emulator
settings as ours, and the `frameskip=1` replacement keeps v5's internal skip of 4 from stacking
on top of the script's own (16 frames a step otherwise); on a NoFrameskip id it changes nothing.
So both sides emulate 4 frames per env step of the same env; what differs is each side's code
(CleanRL: RGB frames through gymnasium wrappers, no-op starts, episodic life; ours: ALE's grey
frames through AtariPreprocessing, or ale-py's C++ vector env). `--no-cuda` keeps the scripts
on the CPU as our side (device: cpu), and DQN's epsilon is pinned to 0.01 as on our side.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

COMMIT = "fe8d8a0"
CLONE = f"git clone https://github.com/vwxyzjn/cleanrl && git -C cleanrl checkout {COMMIT}"
SCRIPTS = {"ppo": "ppo_atari.py", "dqn": "dqn_atari.py"}
# module the scripts import -> the pip package that provides it (all but tyro are pliable's own)
DEPENDENCIES = {"tyro": "tyro", "tensorboard": "tensorboard", "cv2": "opencv-python-headless",
                "ale_py": "ale-py"}


class PatchError(Exception):
    """DIR is not a CleanRL clone at the commit these snippets were written for."""


@dataclass(frozen=True)
class Replacement:
    what: str  # a few words, for the error
    old: str
    new: str


SAME_STEP = "        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,\n"
FINAL_INFOS = ('[{"episode": {key: infos["final_info"]["episode"][key][i] for key in ("r", "l")}}'
               ' for i in np.flatnonzero(infos["final_info"].get("_episode", ()))]')
COMMON = [
    Replacement("ale-py's ids registered (gymnasium 1.x has no plugins)",
                "import gymnasium as gym\n",
                "import gymnasium as gym\n"
                "import ale_py  # noqa: F401  (gymnasium 1.x: registers the ALE ids)\n"),
    Replacement("the ALE's own frame skip off (the script skips frames itself)",
                "env = gym.make(env_id)\n", "env = gym.make(env_id, frameskip=1)\n"),
    Replacement("GrayScaleObservation -> GrayscaleObservation (gymnasium 1.x)",
                "gym.wrappers.GrayScaleObservation(env)", "gym.wrappers.GrayscaleObservation(env)"),
    Replacement("FrameStack -> FrameStackObservation (gymnasium 1.x)",
                "gym.wrappers.FrameStack(env, 4)", "gym.wrappers.FrameStackObservation(env, 4)"),
    Replacement("final_info as a dict of masked arrays (gymnasium 1.x)",
                'for info in infos["final_info"]:', f"for info in {FINAL_INFOS}:"),
]
PATCHES = {
    "ppo": [
        *COMMON,
        Replacement("SyncVectorEnv with autoreset_mode=SAME_STEP (gymnasium 1.x)",
                    "[make_env(args.env_id, i, args.capture_video, run_name) for i in "
                    "range(args.num_envs)],\n    )\n",
                    "[make_env(args.env_id, i, args.capture_video, run_name) for i in "
                    f"range(args.num_envs)],\n{SAME_STEP}    )\n"),
    ],
    "dqn": [
        *COMMON,
        Replacement("SyncVectorEnv with autoreset_mode=SAME_STEP (gymnasium 1.x)",
                    "[make_env(args.env_id, args.seed + i, i, args.capture_video, run_name) for i "
                    "in range(args.num_envs)]\n    )\n",
                    "[make_env(args.env_id, args.seed + i, i, args.capture_video, run_name) for i "
                    f"in range(args.num_envs)],\n{SAME_STEP}    )\n"),
        Replacement("final_observation -> final_obs (gymnasium 1.x)",
                    'infos["final_observation"][idx]', 'infos["final_obs"][idx]'),
    ],
}


def patch_text(text: str, replacements: list[Replacement], name: str) -> str:
    """`text` with every replacement applied; PatchError (one line) at the first whose old
    snippet is not in it exactly once."""
    for r in replacements:
        count = text.count(r.old)
        if count != 1:
            snippet = r.old.strip().splitlines()[0]
            raise PatchError(
                f"{name}: cannot patch '{r.what}': {snippet!r} is there {count} times, not once "
                f"(the patches are for CleanRL {COMMIT}: {CLONE})")
        text = text.replace(r.old, r.new)
    return text


def patched_copy(cleanrl_dir: str | Path, dest: str | Path) -> dict[str, Path]:
    """Copies the two scripts, patched, and `cleanrl_utils/` from a CleanRL clone into `dest`;
    returns {"ppo": path, "dqn": path}. PatchError if DIR is not such a clone (one line)."""
    source, dest = Path(cleanrl_dir).expanduser(), Path(dest)
    for needed in [*(f"cleanrl/{s}" for s in SCRIPTS.values()), "cleanrl_utils"]:
        if not (source / needed).exists():
            raise PatchError(f"{source} has no {needed}: --cleanrl takes the root of a CleanRL "
                             f"clone, the directory holding cleanrl/ and cleanrl_utils/ ({CLONE})")
    shutil.copytree(source / "cleanrl_utils", dest / "cleanrl_utils",
                    ignore=shutil.ignore_patterns("__pycache__"))
    paths = {}
    for kind, script in SCRIPTS.items():
        text = (source / "cleanrl" / script).read_text()
        paths[kind] = dest / script
        paths[kind].write_text(patch_text(text, PATCHES[kind], f"cleanrl/{script}"))
    return paths


def missing_dependencies() -> list[str]:
    """The pip packages of the scripts' imports that this interpreter lacks."""
    return [package for module, package in DEPENDENCIES.items()
            if importlib.util.find_spec(module) is None]


def script_args(kind: str, steps: int, learning_starts: int, buffer_size: int) -> list[str]:
    """The scripts' flags for our side's settings: ALE/Breakout-v5, CPU, DQN's epsilon 0.01."""
    args = ["--env-id", "ALE/Breakout-v5", "--total-timesteps", str(steps), "--no-cuda"]
    if kind == "dqn":
        args += ["--learning-starts", str(learning_starts), "--buffer-size", str(buffer_size),
                 "--start-e", "0.01", "--end-e", "0.01"]
    return args


def last_sps(output: str) -> float | None:
    """The last `SPS: N` line a script printed: global_step over the time since its start_time
    (set once its envs and network are built)."""
    rates = re.findall(r"^SPS:\s*(\d+)\s*$", output, flags=re.MULTILINE)
    return float(rates[-1]) if rates else None
