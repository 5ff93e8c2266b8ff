"""Whether two runs are the same run: every tensor and value of their final checkpoints, and
every logged scalar at the same steps (wall-clock ones by step only). What an exact resume
promises, checked by tests/test_resume.py and bench/soak.py alike."""

from __future__ import annotations

from pathlib import Path

import torch

from agents.runtime.checkpoints import load_checkpoint
from analysis.study.results import read_scalars

# Wall-clock numbers: logged at the same steps, with values of their own.
TIMING_TAGS = {"charts/SPS", "spectrum/pre/seconds", "spectrum/post/seconds",
               "spectrum/periodic/seconds"}


def leaves(tree, prefix=""):
    """(dotted path, value) of every leaf of nested dicts and lists."""
    if isinstance(tree, dict):
        for key in sorted(tree, key=str):
            yield from leaves(tree[key], f"{prefix}.{key}")
    elif isinstance(tree, (list, tuple)):
        for index, item in enumerate(tree):
            yield from leaves(item, f"{prefix}[{index}]")
    else:
        yield prefix, tree


def logged(run_dir: Path) -> list[tuple]:
    """(tag, step, value) of every scalar as pliable report reads them (timings: no value)."""
    rows = read_scalars(run_dir)[["metric", "step", "value"]].itertuples(index=False)
    return sorted((tag, step, None if tag in TIMING_TAGS else repr(value))  # repr: nan == nan
                  for tag, step, value in rows)


def run_differences(run_dir: Path, reference: Path) -> list[str]:
    """What differs between the two runs (empty: the same run)."""
    found = []
    a = dict(leaves(load_checkpoint(Path(run_dir) / "checkpoints" / "final.pt")))
    b = dict(leaves(load_checkpoint(Path(reference) / "checkpoints" / "final.pt")))
    if a.keys() != b.keys():
        found.append(f"checkpoint keys differ: {sorted(a.keys() ^ b.keys())[:5]}")
    for key in sorted(a.keys() & b.keys()):
        same = torch.equal(a[key], b[key]) if isinstance(b[key], torch.Tensor) else a[key] == b[key]
        if not same:
            found.append(f"final.pt{key} differs")
    mine, theirs = logged(run_dir), logged(reference)
    if mine != theirs:
        extra, missing = set(mine) - set(theirs), set(theirs) - set(mine)
        found.append(f"logged scalars differ: {len(extra)} extra, {len(missing)} missing "
                     f"(e.g. {sorted(extra or missing)[:3]})")
    return found
