import hashlib
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
    from agents.runtime.config import load_config

    def make(*overrides, path="tiny.yaml"):
        return load_config(path, [f"runs_root={tmp_path / 'runs'}", "print_every=1000",
                                  *overrides])
    return make


def snapshot(directory):
    """Every file and folder under `directory`, files with a hash of their content."""
    if not directory.exists():
        return {}
    return {p.relative_to(directory): hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file()
            else "folder" for p in sorted(directory.rglob("*"))}


@pytest.fixture
def assert_one_line_exit_2(capsys):
    """Checks bad input to a `pliable` command, run in this process through the same guard as
    the console script (`python train.py` itself is covered once, in test_cli): exit status 2,
    one `error: ...` line on stderr containing `message`, nothing under `watched` written or
    changed. Returns that line, for tests that check it exactly."""
    import train

    def check(argv, message, watched):
        before = snapshot(watched)
        assert train.guarded(train.COMMANDS[argv[0]], argv[1:]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: "), err
        assert message in err, err
        assert snapshot(watched) == before, "bad input must not write anything"
        return err.rstrip("\n")
    return check
