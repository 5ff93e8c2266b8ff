"""Every numeric setting declares its valid range on its dataclass field (agents/errors.py), and
a value outside it is one line naming the dotted key, the range and the value, exit status 2,
nothing written (issue 17). The cases are generated from the declared ranges: for every key of
every config section and every strategy setting, a value just below its range and, where it has
one, just above; plus the library errors met while building a run (device, envs), each one line
naming the key or the task and the library's own message."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import torch

from agents.errors import ConfigError, Range, check_ranges, declared_ranges
from agents.plasticity.base import STRATEGIES
from agents.runtime.config import config_schema

# Numeric fields with no declared range, each checked elsewhere (a shape as well as a range).
UNRANGED = {
    "ppo.adam_betas": "check_adam_betas: two numbers, each in [0, 1)",
    "dqn.adam_betas": "check_adam_betas",
    "plasticity.er_l2.betas": "check_adam_betas",
}


def outside(valid: Range) -> list:
    """A value just below the range, and just above it where it has a high end."""
    step = 1 if valid.integer else 0.5
    values = []
    if valid.low is not None:
        values.append(valid.low if valid.low_open else valid.low - step)
    if valid.high is not None:
        values.append(valid.high if valid.high_open else valid.high + step)
    return [int(v) if valid.integer else float(v) for v in values]


def override(key: str, value) -> str:
    """The dotted override setting `key` (a declared range's key) to `value`."""
    if key.startswith("sequence.tasks[0]."):
        name = key.rsplit(".", 1)[1]
        return f"sequence.tasks=[{{env_id: MiniGrid-Empty-5x5-v0, {name}: {value}}}]"
    return f"{key}={value}"


def range_cases(ranges: dict[str, Range]):
    for key, valid in ranges.items():
        for value in outside(valid):
            shown = f"[{value}]" if valid.each else value
            fragment = f"{key}{'[0]' if valid.each else ''} must {valid.describe()}, got "
            yield pytest.param([override(key, shown)], fragment, id=f"{key}={value}")


def config_ranges() -> dict[str, Range]:
    return declared_ranges(config_schema())


def strategy_ranges() -> dict[str, Range]:
    ranges = {}
    for name, cls in sorted(STRATEGIES.items()):
        if dataclasses.is_dataclass(cls.Settings):
            ranges.update(declared_ranges(cls.Settings, f"plasticity.{name}"))
    return ranges


def numeric_keys(schema: type, prefix: str = "") -> list[str]:
    """Every int/float (or list of them, or Optional) field of `schema`, nested, dotted."""
    keys, hints = [], typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        key = f"{prefix}.{f.name}" if prefix else f.name
        hint = hints[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        base = args[0] if typing.get_origin(hint) is typing.Union and len(args) == 1 else hint
        inner = typing.get_args(base)[0] if typing.get_origin(base) is list else base
        if inner in (int, float):
            keys.append(key)
        elif dataclasses.is_dataclass(inner):
            nested = f"{key}[0]" if typing.get_origin(base) is list else key
            keys += numeric_keys(inner, nested)
    return keys


def test_every_numeric_setting_declares_its_range():
    schemas = [(config_schema(), "")] + [
        (cls.Settings, f"plasticity.{name}") for name, cls in sorted(STRATEGIES.items())
        if dataclasses.is_dataclass(cls.Settings)]
    ranged = {**config_ranges(), **strategy_ranges()}
    missing = [key for schema, prefix in schemas for key in numeric_keys(schema, prefix)
               if key not in ranged and key not in UNRANGED]
    assert not missing, f"numeric settings without a declared range: {missing}"


def test_every_strategy_default_lies_in_its_ranges():
    from agents.plasticity import build_strategies

    for name, cls in STRATEGIES.items():
        if dataclasses.is_dataclass(cls.Settings):
            check_ranges(cls.Settings(), cls.Settings, f"plasticity.{name}")
        build_strategies({name: {}})
    shrink = STRATEGIES["shrink_perturb"]
    for alpha, sigma in shrink.DEFAULTS.values():  # what alpha/sigma None stand for
        check_ranges(shrink.Settings(alpha=alpha, sigma=sigma), shrink.Settings)


def test_a_range_names_the_key_the_bound_and_the_value():
    from agents.runtime.config import load_config

    with pytest.raises(ConfigError) as error:
        load_config("tiny.yaml", ["plasticity.cbp.replacement_rate=1.5"])
    assert str(error.value) == "plasticity.cbp.replacement_rate must lie in [0, 1], got 1.5"


@pytest.mark.parametrize("overrides,message", list(range_cases(config_ranges())))
def test_config_setting_out_of_range(overrides, message, tmp_path, assert_one_line_exit_2):
    argv = ["train", "tiny", f"runs_root={tmp_path / 'runs'}", *overrides]
    assert_one_line_exit_2(argv, message, tmp_path)


@pytest.mark.parametrize("overrides,message", list(range_cases(strategy_ranges())))
def test_strategy_setting_out_of_range(overrides, message, tmp_path, assert_one_line_exit_2):
    argv = ["train", "tiny", f"runs_root={tmp_path / 'runs'}", *overrides]
    assert_one_line_exit_2(argv, message, tmp_path)


ISSUE_CASES = [  # the issue's own examples, with their exact lines
    (["plasticity.redo.threshold=-0.1"], "plasticity.redo.threshold must be >= 0, got -0.1"),
    (["plasticity.shrink_perturb.alpha=1.5"],
     "plasticity.shrink_perturb.alpha must lie in (0, 1], got 1.5"),
    (["plasticity.cbp.replacement_rate=2"],
     "plasticity.cbp.replacement_rate must lie in [0, 1], got 2.0"),
    (["plasticity.er_l2.effective_rank.er_batch=0"],
     "plasticity.er_l2.effective_rank.er_batch must be a positive integer, got 0"),
    (["seed=-1"], "seed must lie in [0, 4294967295], got -1"),
    (["seed=4294967296"], "seed must lie in [0, 4294967295], got 4294967296"),
    (["ppo.learning_rate=-1"], "ppo.learning_rate must lie in [0, 1], got -1.0"),
    (["ppo.adam_eps=-1e-8"], "ppo.adam_eps must be >= 0, got -1e-08"),
    (["torch_threads=-1"], "torch_threads must be >= 0, got -1"),
    (["network.arch=mlp", "network.hidden_sizes=[64,0]"],
     "network.hidden_sizes[1] must be a positive integer, got 0 (in [64, 0])"),
    (["monitor.he2025_eps=[0.1,-1]"],
     "monitor.he2025_eps[1] must be > 0, got -1.0 (in [0.1, -1.0])"),
    (["checkpoint.every=-1"],
     "checkpoint.every must be >= 0 (0: only at switches and the end), got -1"),
]


@pytest.mark.parametrize("overrides,line", ISSUE_CASES)
def test_issue_examples(overrides, line, tmp_path, assert_one_line_exit_2):
    argv = ["train", "tiny", f"runs_root={tmp_path / 'runs'}", *overrides]
    assert assert_one_line_exit_2(argv, line, tmp_path) == f"error: {line}"


LIBRARY_CASES = [  # met while building the run (Trainer.__init__, EnvFactory), before any write
    (["device=foo"], "device: 'foo' cannot be used on this machine: RuntimeError: Expected one of"),
    (["device=cuda:97"], "device: 'cuda:97' cannot be used on this machine: "),
    (["device=meta"], "device: 'meta' cannot be used on this machine: NotImplementedError: "),
    (["sequence.tasks=[{env_id: MiniGrid-Empty-5x5-v0, kwargs: {size: -3}}]"],
     "task 'Empty-5x5-v0_size-3': MiniGrid-Empty-5x5-v0 with kwargs {'size': -3} could not be "
     "built: AssertionError"),
    (["sequence.tasks=[{env_id: MiniGrid-Empty-5x5-v0, kwargs: {bogus: 1}}]"],
     "task 'Empty-5x5-v0_bogus1': bad kwargs for MiniGrid-Empty-5x5-v0: "),
    (["sequence.tasks=[{env_id: CartPole-v1, kwargs: {bogus: 1}}]"],
     "task 'CartPole-v1_bogus1': bad kwargs for CartPole-v1: "),
    (["sequence.tasks=[{env_id: MiniGrid-DoorKey-5x5-v0, kwargs: {size: abc}}]"],
     "task 'DoorKey-5x5-v0_sizeabc': bad kwargs for MiniGrid-DoorKey-5x5-v0: "),
    (["sequence.tasks=[{env_id: ALE/Pong-v5, kwargs: {mode: abc}}]"],
     "ALE/Pong-v5 has no mode abc (valid modes: 0, 1)"),
]
if not torch.cuda.is_available():
    LIBRARY_CASES.append((["device=cuda"], "device: 'cuda' cannot be used on this machine: "
                                           "AssertionError: Torch not compiled with CUDA enabled"))


@pytest.mark.parametrize("overrides,message", LIBRARY_CASES)
def test_library_error_while_building_a_run(overrides, message, tmp_path, assert_one_line_exit_2):
    argv = ["train", "tiny", f"runs_root={tmp_path / 'runs'}", *overrides]
    assert_one_line_exit_2(argv, message, tmp_path)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("key", ["run_dir", "runs_root"])
def test_a_run_directory_that_cannot_be_made_is_one_line(key, tmp_path, assert_one_line_exit_2):
    """A file where a directory must go: the key, the path and the OS's message, exit 2."""
    (tmp_path / "afile").write_text("in the way")
    where = tmp_path / "afile" / "sub"
    argv = ["train", "tiny", f"{key}={where}"]
    err = assert_one_line_exit_2(argv, f"{key}: cannot create the run directory {where}: ",
                                 tmp_path)
    assert "NotADirectoryError" in err or "FileExistsError" in err
