"""Fingerprints of a few tiny runs: every logged scalar and histogram, the final checkpoint's
content and the monitor's spectra, each hashed. tests/test_behaviour_unchanged.py compares them
with tests/golden/behaviour.json, recorded before the package redesign (issue 13): a refactor
that moves any number fails it.

Record anew only for a change that is *meant* to move numbers, and say so in the commit:
    .venv/bin/python -m tests.behaviour --write
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

# One OpenMP thread, as tests/conftest.py sets for the suite: with two, torch's reductions split
# differently and every strategy-heavy run's numbers move. Set before torch loads.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

GOLDEN = Path(__file__).resolve().parent / "golden" / "behaviour.json"
MONITOR = ["monitor.enabled=true", "monitor.batch_size=64", "monitor.top_k=4",
           "monitor.lanczos_steps=8", "monitor.ggn_steps=6", "monitor.density_steps=6",
           "monitor.density_probes=1", "monitor.trace_probes=2", "monitor.ntk_samples=8",
           "monitor.metrics_every=20", "monitor.every_steps=1536"]
RUNS = {
    "ppo": ["tiny.yaml"],
    "dqn": ["tiny_dqn.yaml"],
    "ppo_stateful_strategies": [
        "tiny.yaml", "plasticity.redo={every_steps: 512}", "plasticity.c_chain={}",
        "plasticity.er_l2={effective_rank: {er_batch: 4}}", "plasticity.shrink_perturb={}",
        "plasticity.normalize_project={}", "plasticity.cbp={}"],
    "ppo_replaced_optimizer": ["tiny.yaml", "plasticity.adamo={}", "plasticity.spectral_reg={}",
                               "plasticity.l2_init={}", "plasticity.crelu={}"],
    "dqn_strategies": ["tiny_dqn.yaml", "plasticity.reset={}", "plasticity.isometry={}",
                       "plasticity.layer_norm={}", "plasticity.trac={}"],
    "ppo_monitor": ["tiny.yaml", *MONITOR],
    "dqn_monitor": ["tiny_dqn.yaml", *MONITOR],
}
# Wall-clock numbers, and the run directory's path inside the logged config text.
UNTIMED = ("charts/SPS",)
CHECKPOINT_KEYS = ("step", "segment", "agent", "rng", "envs", "logger", "listeners")


def platform_key() -> str:
    """Float results are bitwise reproducible only on the same kernels: torch's version and the
    CPU instruction set its kernels dispatch to."""
    return f"torch {torch.__version__} / {torch.backends.cpu.get_cpu_capability()}"


def digest(value) -> str:
    """A hash of nested tensors, arrays, numbers, strings, lists and dicts (keys sorted)."""
    h = hashlib.sha256()

    def feed(item):
        if isinstance(item, dict):
            h.update(b"{")
            for key in sorted(item, key=str):
                h.update(repr(key).encode())
                feed(item[key])
            h.update(b"}")
        elif isinstance(item, (list, tuple)):
            h.update(b"[")
            for element in item:
                feed(element)
            h.update(b"]")
        elif isinstance(item, torch.Tensor):
            item = item.detach().cpu().contiguous()
            h.update(f"{item.dtype}{tuple(item.shape)}".encode())
            h.update(item.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(item, np.ndarray):
            h.update(f"{item.dtype}{item.shape}".encode())
            h.update(np.ascontiguousarray(item).tobytes())
        else:
            h.update(repr(item).encode())
    feed(value)
    return h.hexdigest()[:16]


def histogram(value) -> tuple:
    return tuple(getattr(value, name) for name in
                 ("min", "max", "num", "sum", "sum_squares", "bucket_limit", "bucket"))


def fingerprint(run_dir: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    tags = events.Tags()
    scalars = {tag: digest([(e.step, e.value) for e in events.Scalars(tag)])
               for tag in tags["scalars"]
               if tag not in UNTIMED and not tag.endswith("/seconds")}
    histograms = {tag: digest([(e.step, histogram(e.histogram_value))
                               for e in events.Histograms(tag)]) for tag in tags["histograms"]}
    state = torch.load(run_dir / "checkpoints" / "final.pt", weights_only=True)
    checkpoint = {key: digest(state[key]) for key in CHECKPOINT_KEYS}
    spectra = {}
    for path in sorted((run_dir / "spectra").glob("*.npz")):
        with np.load(path) as npz:
            spectra[path.name] = digest({k: npz[k] for k in npz.files if k != "seconds"})
    return {"scalars": scalars, "histograms": histograms, "checkpoint": checkpoint,
            "spectra": spectra}


def record(names=tuple(RUNS)) -> dict:
    """Each named run trained through the CLI in a temporary directory, fingerprinted."""
    import train

    prints = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            config, *overrides = RUNS[name]
            run_dir = Path(tmp) / name
            argv = ["train", config, *overrides, f"run_dir={run_dir}", "print_every=1000"]
            with contextlib.redirect_stdout(io.StringIO()):
                assert train.cli(argv) == 0, name
            prints[name] = fingerprint(run_dir)
    return prints


if __name__ == "__main__":
    if "--write" not in sys.argv:
        sys.exit("usage: python -m tests.behaviour --write  (records tests/golden/behaviour.json)")
    GOLDEN.parent.mkdir(exist_ok=True)
    payload = {"platform": platform_key(), "python": platform.python_version(), "runs": record()}
    GOLDEN.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN} ({payload['platform']})")
