"""The manual stays true, mechanically: it builds with `mkdocs build --strict`, the README stays a
front door, and every config key in the schema, every registered strategy (its tables generated
from the registry) and every TensorBoard tag a run writes is documented."""

import dataclasses
import io
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents.plasticity import STRATEGIES, strategies_markdown
from agents.plasticity.listing import README_MARKERS
from agents.runtime.config import config_schema, load_config
from agents.runtime.launch import run_training

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
FAST_MONITOR = ("monitor.enabled=true", "monitor.batch_size=64", "monitor.top_k=4",
                "monitor.lanczos_steps=12", "monitor.ggn_steps=12", "monitor.density_probes=2",
                "monitor.density_steps=8", "monitor.trace_probes=4", "monitor.ntk_samples=8",
                "monitor.metrics_every=16", "monitor.ntk=true", "monitor.jacobians=true")


def manual() -> str:
    return "\n".join(p.read_text() for p in sorted(DOCS.glob("*.md")))


def test_the_manual_builds_strictly(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q",
                           "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "site" / "strategies" / "index.html").is_file()


def test_the_readme_is_a_front_door_whose_links_resolve():
    text = README.read_text()
    assert len(text.encode()) <= 15_000
    assert "bash .ci/setup && .venv/bin/python -m pytest" in text  # the test command, as CI runs
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert {f"docs/{p.name}" for p in DOCS.glob("*.md")} <= set(links)  # every page linked
    for link in links:
        assert (ROOT / link).exists(), link


@pytest.mark.parametrize("path,compact", [(README, True), (DOCS / "strategies.md", False)])
def test_the_strategy_tables_are_the_registry(path, compact):
    start, end = README_MARKERS
    assert start + strategies_markdown(compact) + end in path.read_text(), (
        f"{path.name}'s strategy table differs from the registry; regenerate both with: "
        ".venv/bin/pliable strategies --markdown --readme README.md --docs docs/strategies.md")


def schema_keys(cls, prefix: str = "") -> list[str]:
    """The dotted key of every leaf setting of a config dataclass (list items as `key[]`)."""
    keys, hints = [], typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        inner = getattr(kind, "__args__", (None,))[0]
        if dataclasses.is_dataclass(kind):
            keys += schema_keys(kind, f"{prefix}{f.name}.")
        elif dataclasses.is_dataclass(inner):  # list[TaskConfig]
            keys += schema_keys(inner, f"{prefix}{f.name}[].")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def test_every_config_key_is_documented():
    """Each leaf key, by its dotted name or as `name` in the manual (the configuration page's
    tables list a section's keys by their own names)."""
    text = manual()
    keys = schema_keys(config_schema())
    assert "ppo.learning_rate" in keys and "sequence.tasks[].physics" in keys
    missing = [k for k in keys if k.replace("[]", "") not in text
               and f"`{k.rsplit('.', 1)[-1]}`" not in text]
    assert not missing, f"config keys missing from docs/: {missing}"


def documented_tags() -> list[re.Pattern]:
    """The tag patterns of docs/tags.md: every `code` span with a '/' in a table's first column;
    a <placeholder> stands for one path component."""
    patterns = []
    for line in (DOCS / "tags.md").read_text().splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            first = line.split(" | ")[0]
            for token in re.findall(r"`([^`]+)`", first):
                if "/" in token or token == "hyperparameters":
                    parts = re.split(r"(<[^>]+>)", token)
                    regex = "".join("[^/]+" if p.startswith("<") else re.escape(p) for p in parts)
                    patterns.append(re.compile(regex + "$"))
    return patterns


def written_tags(run_dir: Path) -> set[str]:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0,
                                                        "images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    return {t for kind in ("scalars", "histograms", "images") for t in tags[kind]}


RUNS = {  # every agent, the monitor with every option on, strategies logging their metrics
    "ppo": ("tiny.yaml", *FAST_MONITOR, "sequence.switch_every=512", "ppo.num_steps=32",
            "plasticity.redo={every_steps: 4}", "plasticity.l2={}",
            "plasticity.effective_rank={mode: penalty}"),
    "dqn": ("tiny_dqn.yaml", *FAST_MONITOR, "sequence.switch_every=512",
            "dqn.learning_starts=200", "plasticity.cbp={maturity: 4}"),
    "continuous": ("tiny_continuous.yaml", *FAST_MONITOR, "sequence.switch_every=256"),
}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_every_tag_a_run_writes_is_documented(name, tmp_path):
    path, *overrides = RUNS[name]
    cfg = load_config(path, [*overrides, f"run_dir={tmp_path / 'run'}", "print_every=1000"])
    assert run_training(cfg, stream=io.StringIO()) == 0
    patterns = documented_tags()
    tags = written_tags(tmp_path / "run")
    assert len(tags) > 40
    missing = sorted(t for t in tags if not any(p.match(t) for p in patterns))
    assert not missing, f"tags written but missing from docs/tags.md: {missing}"


def test_every_strategy_metric_is_documented():
    """What `plasticity/<strategy>/<metric>` each strategy logs, after a few gradient steps on a
    small learner, is in docs/tags.md."""
    from strategy_helpers import make_learner, optimize, value_loss

    patterns = documented_tags()
    missing = []
    for name in sorted(STRATEGIES):
        learner = make_learner({name: {}})
        optimize(learner, steps=3, loss_fn=value_loss)
        for key in learner.strategies.metrics():
            tag = f"plasticity/{key}"
            if not any(p.match(tag) for p in patterns):
                missing.append(tag)
    assert not missing, f"strategy metrics missing from docs/tags.md: {missing}"
