import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def tiny_cfg(tmp_path):
    """The tiny config, writing into a temporary runs root."""
    from agents.config import load_config

    def make(*overrides, path="tiny.yaml"):
        return load_config(path, [f"runs_root={tmp_path / 'runs'}", "print_every=1000",
                                  *overrides])
    return make
