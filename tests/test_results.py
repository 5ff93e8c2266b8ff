"""Reading run directories (config.yaml + TensorBoard event files) into the tidy table."""

import json

import pytest
import yaml
from torch.utils.tensorboard import SummaryWriter

from analysis.results import (
    TIDY_COLUMNS,
    find_run_dirs,
    load_table,
    read_run,
    read_run_info,
    read_runs,
    save_table,
)

SWITCH_EVERY = 100


def make_config(**changes):
    config = {
        "agent": "ppo",
        "seed": 3,
        "exp_name": "",
        "plasticity": {"redo": {"threshold": 0.1}, "l2": {"coef": 1e-4}},
        "sequence": {
            "switch_every": SWITCH_EVERY,
            "cycles": 2,
            "order": "fixed",
            "tasks": [{"name": "A", "env_id": "EnvA-v0", "kwargs": {}},
                      {"name": "B", "env_id": "EnvB-v0", "kwargs": {"mode": 2}}],
        },
    }
    config.update(changes)
    return config


def write_run(run_dir, scalars, config=None, status=None):
    """A run dir as the trainer leaves it: config.yaml, event files, optionally status.json."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config or make_config()))
    writer = SummaryWriter(str(run_dir))
    for tag, points in scalars.items():
        for step, value in points:
            writer.add_scalar(tag, value, step)
    writer.close()
    if status:
        (run_dir / "status.json").write_text(json.dumps({"status": status}))
    return run_dir


RETURNS = {"charts/episodic_return": [(s, s * 0.5) for s in (0, 50, 99, 100, 199, 200, 350, 400)]}


def test_read_run_derives_task_and_cycle_from_the_schedule(tmp_path):
    table = read_run(write_run(tmp_path / "run1", RETURNS))

    assert list(table.columns) == list(TIDY_COLUMNS)
    assert table["step"].tolist() == [0, 50, 99, 100, 199, 200, 350, 400]
    assert table["value"].tolist() == [0.0, 25.0, 49.5, 50.0, 99.5, 100.0, 175.0, 200.0]
    # the switch step starts the new task; the final step (400) stays in the last segment
    assert table["task_index"].tolist() == [0, 0, 0, 1, 1, 2, 3, 3]
    assert table["task"].tolist() == ["A", "A", "A", "B", "B", "A", "B", "B"]
    assert table["cycle"].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    row = table.iloc[0]
    assert (row["run"], row["agent"], row["strategy_set"], row["seed"]) == ("run1", "ppo",
                                                                            "l2+redo", 3)
    assert (row["sequence"], row["switch_every"]) == ("A+B", SWITCH_EVERY)


def test_read_run_keeps_every_tag_and_repeated_steps(tmp_path):
    scalars = {
        "charts/episodic_return": [(10, 1.0), (10, 2.0)],  # two envs ending episodes together
        "spectrum/post/lambda_max": [(100, 7.5)],
        "losses/value_loss": [(20, 0.25)],
    }
    table = read_run(write_run(tmp_path / "run", scalars))

    rows = table.sort_values(["metric", "value"])[["metric", "step", "value", "task"]]
    assert rows.values.tolist() == [
        ["charts/episodic_return", 10, 1.0, "A"],
        ["charts/episodic_return", 10, 2.0, "A"],
        ["losses/value_loss", 20, 0.25, "A"],
        ["spectrum/post/lambda_max", 100, 7.5, "B"],
    ]


def test_run_info_names_sequence_and_strategy_set_from_the_config(tmp_path):
    config = make_config(plasticity={}, exp_name="atari_cycle")
    config["sequence"]["tasks"] = [
        {"env_id": "MiniGrid-Empty-5x5-v0", "kwargs": {}},
        {"env_id": "ALE/Pong-v5", "kwargs": {"mode": 1}, "permute_obs": 7},
    ]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))

    info = read_run_info(run_dir)

    assert info.strategy_set == "none"
    assert info.sequence == "atari_cycle"
    assert info.tasks == ("MiniGrid-Empty-5x5-v0", "ALE/Pong-v5[mode=1,permute_obs=7]")
    assert info.status == "unknown"


def test_shuffled_order_takes_each_segment_task_from_the_task_tags(tmp_path):
    config = make_config()
    config["sequence"]["order"] = "shuffled"
    scalars = {
        # B's last episode is logged at the switch step: segment 1 still goes to A, the majority
        "task/B/episodic_return": [(10, 1.0), (60, 1.0), (100, 1.0)],
        "task/A/episodic_return": [(120, 1.0), (150, 1.0), (210, 1.0)],
        "charts/episodic_return": [(10, 1.0), (150, 1.0), (210, 1.0), (310, 1.0)],
    }
    table = read_run(write_run(tmp_path / "run", scalars, config))

    returns = table[table["metric"] == "charts/episodic_return"]
    assert returns["task"].iloc[:3].tolist() == ["B", "A", "A"]
    assert returns["task"].isna().iloc[3]  # segment 3 has no task tag
    assert returns["cycle"].tolist() == [0, 0, 1, 1]


def test_read_runs_reads_a_tree_and_skips_broken_runs_with_a_warning(tmp_path):
    write_run(tmp_path / "l2" / "seed1", RETURNS, status="finished")
    write_run(tmp_path / "l2" / "seed2", RETURNS, make_config(seed=4), status="failed")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text("sequence: [unclosed\n")
    no_events = tmp_path / "no_events"
    no_events.mkdir()
    (no_events / "config.yaml").write_text(yaml.safe_dump(make_config()))
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "config.yaml").write_text(yaml.safe_dump(make_config()))
    (garbage / "events.out.tfevents.0.host").write_bytes(b"not an event file")
    orphan = write_run(tmp_path / "orphan", RETURNS)
    (orphan / "config.yaml").unlink()

    with pytest.warns(UserWarning) as caught:
        table = read_runs(tmp_path)

    messages = " | ".join(str(warning.message) for warning in caught)
    for skipped in (broken, no_events, garbage, orphan):
        assert str(skipped) in messages
    assert sorted(table["run"].unique()) == ["l2/seed1", "l2/seed2"]
    assert sorted(table["seed"].unique()) == [3, 4]
    assert len(table) == 2 * len(RETURNS["charts/episodic_return"])


def test_read_runs_filters_by_status(tmp_path):
    write_run(tmp_path / "a", RETURNS, status="finished")
    write_run(tmp_path / "b", RETURNS, status="failed")
    write_run(tmp_path / "c", RETURNS)

    assert read_runs(tmp_path, statuses=("finished",))["run"].unique().tolist() == ["a"]
    assert sorted(read_runs(tmp_path)["run"].unique()) == ["a", "b", "c"]


def test_root_that_is_itself_a_run(tmp_path):
    run_dir = write_run(tmp_path / "only", RETURNS)
    assert find_run_dirs(run_dir) == [run_dir]
    assert read_runs(run_dir)["run"].unique().tolist() == ["only"]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_round_trips_through_a_file(tmp_path, suffix):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    table = read_run(write_run(tmp_path / "run", RETURNS))
    path = tmp_path / f"table{suffix}"

    save_table(table, path)
    loaded = load_table(path)

    assert list(loaded.columns) == list(TIDY_COLUMNS)
    assert loaded["task"].tolist() == table["task"].tolist()
    assert loaded["value"].tolist() == table["value"].tolist()
    assert loaded["step"].tolist() == table["step"].tolist()
