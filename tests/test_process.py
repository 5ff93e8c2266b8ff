"""Process-wide settings (agents/runtime/process.py): glibc malloc keeps freed memory for the next
batch, in a training process and in a study's worker processes, unless the user set their own."""

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agents.runtime import process
from analysis.study.executors import LocalExecutor

ROOT = Path(__file__).resolve().parent.parent
GLIBC = hasattr(ctypes.CDLL(None), "mallinfo2")
needs_glibc = pytest.mark.skipif(not GLIBC, reason="glibc's mallinfo2 (2.33+) reads the heap")
BLOCK = 64 << 20  # above glibc's largest dynamic mmap threshold (32 MB), below ours


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def mmapped_by_one_block() -> int:
    """Bytes that glibc maps with mmap for one malloc of BLOCK (0: the block came from the
    heap)."""
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    before = libc.mallinfo2().hblkhd
    block = libc.malloc(BLOCK)
    after = libc.mallinfo2().hblkhd
    libc.free(block)
    return after - before


def in_fresh_python(code: str, env: dict[str, str]) -> str:
    clean = {k: v for k, v in os.environ.items()
             if k not in process.MALLOC_ENV and k != "GLIBC_TUNABLES"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=clean | env, check=True,
                          capture_output=True, text=True).stdout.strip()


PROBE = ("from tests.test_process import mmapped_by_one_block as m\n"
         "from agents.runtime import process\n"
         "{call}\nprint(m())")


@needs_glibc
def test_glibc_maps_a_large_block_by_default_and_from_the_heap_once_we_set_it():
    default = int(in_fresh_python(PROBE.format(call=""), {}))
    ours = int(in_fresh_python(PROBE.format(call="assert process.keep_freed_memory()"), {}))
    assert default >= BLOCK  # its own mapping, unmapped again on free
    assert ours == 0


@needs_glibc
def test_set_process_defaults_sets_the_spin_count_and_the_malloc_policy():
    out = in_fresh_python(PROBE.format(call="import os; os.environ.pop('GOMP_SPINCOUNT', None)\n"
                                            "process.set_process_defaults()\n"
                                            "print(os.environ['GOMP_SPINCOUNT'])"), {})
    assert out.split() == ["1000", "0"]


@needs_glibc
def test_the_environment_form_has_the_same_effect_in_a_process_started_with_it():
    assert int(in_fresh_python(PROBE.format(call=""), process.MALLOC_ENV)) == 0


@pytest.mark.parametrize("own", [{"MALLOC_TRIM_THRESHOLD_": "131072"},
                                 {"MALLOC_MMAP_THRESHOLD_": "1048576"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}])
def test_a_users_own_malloc_settings_win(monkeypatch, own):
    for key, value in own.items():
        monkeypatch.setenv(key, value)
    assert process.keep_freed_memory() is False


def test_worker_env_carries_both_settings_and_the_drivers_own_values(monkeypatch):
    for key in ("GOMP_SPINCOUNT", "GLIBC_TUNABLES", *process.MALLOC_ENV):
        monkeypatch.delenv(key, raising=False)
    assert process.worker_env() == {"GOMP_SPINCOUNT": "1000",
                                    "MALLOC_MMAP_THRESHOLD_": str(256 << 20),
                                    "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    monkeypatch.setenv("GOMP_SPINCOUNT", "5")
    assert process.worker_env()["MALLOC_TRIM_THRESHOLD_"] == "131072"
    assert process.worker_env()["GOMP_SPINCOUNT"] == "5"
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")  # travels on its own
    assert set(process.worker_env()) == {"GOMP_SPINCOUNT"}


def probe_in_worker(item):
    """A study run's process (module level: pickled into a fresh process)."""
    return mmapped_by_one_block()


@needs_glibc
def test_a_studys_local_worker_runs_with_the_policy(monkeypatch):
    for key in ("GLIBC_TUNABLES", *process.MALLOC_ENV):
        monkeypatch.delenv(key, raising=False)
    outcomes = dict(LocalExecutor(cpus=1, max_parallel=1, cpu_count=2)
                    .map_unordered(probe_in_worker, [0]))
    assert outcomes == {0: 0}
