"""Reading run directories (config.yaml + TensorBoard event files) into the tidy table."""

import numpy as np
import pytest
import yaml
from run_dirs import SWITCH_EVERY, make_config, write_run

from analysis.monitor.measure import Measurement
from analysis.monitor.outputs import save_npz
from analysis.study.results import (
    TIDY_COLUMNS,
    find_run_dirs,
    load_table,
    read_run,
    read_run_info,
    read_runs,
    read_runs_by_status,
    read_switch_densities,
    save_table,
)
from envs.tasks import TaskSequence, TaskSpec

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
    # a null entry switches a strategy off, as in training; unnamed tasks get TaskSpec's names
    config = make_config(plasticity={"l2": {}, "redo": None}, exp_name="atari_cycle")
    config["sequence"]["tasks"] = [
        {"env_id": "MiniGrid-Empty-5x5-v0", "name": None, "kwargs": {}},
        {"env_id": "ALE/Pong-v5", "kwargs": {"mode": 1}, "permute_obs": 7},
    ]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))

    info = read_run_info(run_dir)

    assert info.strategy_set == "l2"
    assert info.sequence == "atari_cycle"
    assert info.schedule == ("Empty-5x5-v0", "Pong-v5_mode1_pobs7") * 2
    assert info.status == "unknown"


def test_a_labelled_strategy_set_keeps_its_label(tmp_path):
    config = make_config(plasticity={"reset": {"at_switch": True}}, strategy_set="reference_fresh")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))

    assert read_run_info(run_dir).strategy_set == "reference_fresh"


def test_shuffled_order_is_the_trainers_seeded_schedule(tmp_path):
    config = make_config(seed=5)
    config["sequence"]["order"] = "shuffled"
    config["sequence"]["cycles"] = 4
    config["sequence"]["tasks"].append({"name": "C", "env_id": "EnvC-v0"})
    steps = [SWITCH_EVERY * k + 10 for k in range(12)] + [SWITCH_EVERY * 12]  # + the last log
    table = read_run(write_run(tmp_path / "run", {
        "charts/episodic_return": [(step, 1.0) for step in steps]}, config))

    expected = TaskSequence([TaskSpec("EnvA-v0", name="A"), TaskSpec("EnvB-v0", name="B"),
                             TaskSpec("EnvC-v0", name="C")], SWITCH_EVERY, 4, "shuffled", seed=5)
    schedule = [segment.task.name for segment in expected]
    assert sorted(schedule[:3]) == ["A", "B", "C"] and schedule[:3] != schedule[3:6]  # shuffled
    assert table["task"].tolist() == schedule + schedule[-1:]
    assert table["task_index"].tolist() == list(range(12)) + [11]
    assert table["cycle"].tolist() == [k // 3 for k in range(12)] + [3]


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
    table, left_out = read_runs_by_status(tmp_path, statuses=("finished",))
    assert table["run"].unique().tolist() == ["a"]
    assert left_out == {"b": "failed", "c": "unknown"}  # what a report lists as not finished


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


def save_switch(spectra, stem, nodes, weights):
    """A switch's file as the spectral monitor writes it (analysis.monitor.outputs.save_npz)."""
    measured = Measurement({"lambda_max": max(nodes)}, {
        "eigenvalues": np.array([max(nodes)]), "density_nodes": np.array(nodes),
        "density_weights": np.array(weights), "num_params": np.array(10)}, seconds=0.5)
    save_npz(spectra / f"{stem}.npz", measured, step=100, phase="post", task="B")


def test_switch_densities_are_read_in_switch_order_and_bad_files_skipped(tmp_path):
    spectra = tmp_path / "run" / "spectra"
    save_switch(spectra, "switch_002_post", [1.0, 2.0], [0.25, 0.75])
    save_switch(spectra, "switch_001_post", [0.0, 1.0, 2.0, 3.0], [0.25] * 4)
    save_switch(spectra, "switch_001_pre", [9.0], [1.0])  # before the switch: not plotted
    np.savez(spectra / "switch_003_post.npz", eigenvalues=[5.0])  # no density in it
    (spectra / "switch_004_post.npz").write_bytes(b"not a zip file")
    np.savez(spectra / "switch_005_post.npz", density_nodes=[[0.0, 1.0]],
             density_weights=[[0.5, 0.5]])  # not the monitor's 1-D arrays

    with pytest.warns(UserWarning) as caught:
        densities = read_switch_densities(tmp_path / "run")

    assert [switch for switch, _, _ in densities] == [1, 2]
    np.testing.assert_array_equal(densities[0][1], [0.0, 1.0, 2.0, 3.0])
    np.testing.assert_array_equal(densities[1][1], [1.0, 2.0])
    np.testing.assert_array_equal(densities[1][2], [0.25, 0.75])
    skipped = " ".join(str(warning.message) for warning in caught)
    assert all(f"switch_00{n}_post.npz" in skipped for n in (3, 4, 5))
    assert read_switch_densities(tmp_path / "no_such_run") == []
