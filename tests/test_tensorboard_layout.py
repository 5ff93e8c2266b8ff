"""The Custom Scalars layout every run writes (agents/runtime/tb_layout.py): it parses back from
the event file, every tag regex it names matches a tag the run wrote (PPO and DQN, the monitor
on), and a resumed run keeps the one layout its first process wrote."""

import io
import re

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2, metadata
from tensorboard.util import tensor_util
from test_monitor import FAST_MONITOR, SHORT, TINY, train
from test_resume import CrashAt

from agents.runtime.launch import run_training
from agents.runtime.resume import resume_training


def layouts(run_dir) -> tuple[list[layout_pb2.Layout], set[str]]:
    """Every layout in the run's event files, and the scalar tags there."""
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    found = []
    for event in acc.Tensors(metadata.CONFIG_SUMMARY_TAG):
        layout = layout_pb2.Layout()
        layout.ParseFromString(tensor_util.make_ndarray(event.tensor_proto).item())
        found.append(layout)
    return found, set(acc.Tags()["scalars"])


def chart_regexes(layout) -> dict[str, list[str]]:
    return {f"{category.title}/{chart.title}": list(chart.multiline.tag)
            for category in layout.category for chart in category.chart}


@pytest.mark.parametrize("agent", sorted(TINY))
def test_every_chart_of_the_layout_shows_a_logged_tag(agent, tiny_cfg, tmp_path):
    run_dir, _, _ = train(tiny_cfg(*SHORT, *FAST_MONITOR, "torch_threads=1",
                                   f"runs_root={tmp_path / 'runs'}", path=TINY[agent]))
    (layout,), tags = layouts(run_dir)
    charts = chart_regexes(layout)
    assert {c.title for c in layout.category} == {
        "returns", "losses", "spectrum: pre vs post switch", "features per layer"}
    assert "spectrum: pre vs post switch/lambda_max" in charts
    for chart, regexes in charts.items():
        for regex in regexes:  # as TensorBoard matches them: from the tag's start
            assert any(re.match(regex, tag) for tag in tags), f"{chart}: {regex} matches nothing"
    pre_post = [t for t in tags if re.match(charts["spectrum: pre vs post switch/trace"][0], t)]
    assert sorted(pre_post) == ["spectrum/post/trace", "spectrum/pre/trace"]


def test_a_resumed_run_keeps_its_one_layout(tiny_cfg, tmp_path):
    """Without the monitor: no spectrum or feature charts, which would stay empty."""
    cfg = tiny_cfg(*SHORT, "torch_threads=1", "checkpoint.every=256",
                   f"run_dir={tmp_path / 'run'}")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(cfg, [CrashAt(640)], stream=io.StringIO())
    assert resume_training(tmp_path / "run", stream=io.StringIO()) == 0
    (layout,), tags = layouts(tmp_path / "run")
    assert [c.title for c in layout.category] == ["returns", "losses"]
    for chart, regexes in chart_regexes(layout).items():
        assert all(any(re.match(r, tag) for tag in tags) for r in regexes), chart
