"""Run directories as the trainer leaves them, written by hand for the analysis tests; reading
the Markdown tables of their reports."""

import json

import yaml
from torch.utils.tensorboard import SummaryWriter

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


def markdown_table(text, column):
    """Rows (dicts) of the first Markdown table with a column named `column`."""
    def cells(line):
        return [cell.strip() for cell in line.strip().strip("|").split("|")]

    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines)
                 if line.startswith("|") and column in cells(line))
    header = cells(lines[start])
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, cells(line))))
    return rows
