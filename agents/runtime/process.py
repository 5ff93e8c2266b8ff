"""Process-wide settings that a process which trains makes where it starts (train.py's entry
points, the bench scripts; a study's workers get them in their environment, `worker_env()`):
OpenMP's idle-thread policy, which libgomp reads once when torch loads, and glibc malloc's
policy for freed memory. A user's own setting of either wins."""

import ctypes
import os

# glibc's mallopt parameters (malloc.h) and our values: blocks up to 256 MB come from the heap,
# and up to 2 GB of freed heap stays mapped for the next allocation.
SPIN_COUNT = "1000"  # libgomp's rounds of spinning before an idle thread sleeps
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD, TRIM_THRESHOLD = 256 << 20, 2**31 - 1
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
              "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}


def spin_briefly() -> None:
    """An idle OpenMP thread of torch's spins for 300k rounds (libgomp's default) before it
    sleeps, taking the core that the envs (ale-py's threads) or another process on a shared
    machine need; OMP_WAIT_POLICY=PASSIVE (no spinning) fixes that but slows small ops on a quiet
    machine. 1k rounds did best on both (bench/levers.py threads; docs/performance.md). Call it
    before the first `import torch`."""
    os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)


def keep_freed_memory() -> bool:
    """glibc serves each block above its mmap threshold (128 KB, rising to at most 32 MB as such
    blocks are freed) with a fresh mmap and unmaps it when freed, and hands a freed heap top
    back to the OS: every batch's tensors then fault in their pages anew, which on a virtual
    machine cost more than the copies themselves (a minibatch's 29 MB float frames: 13.9 vs
    6.9 ms to convert, bench/levers.py allocator). Raising both thresholds keeps freed memory
    for the next batch, as the caching allocators of jemalloc and CUDA do; the price is a
    resident size that stays at its peak. Works at any time (it applies to later allocations);
    False where this is not glibc (macOS, musl) or the user set glibc's malloc tunables."""
    if set(MALLOC_ENV) & set(os.environ) or "malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError, TypeError):  # no mallopt here (TypeError: Windows)
        return False
    return all(mallopt(param, value) == 1 for param, value in
               ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)))


def set_process_defaults() -> None:
    """Both settings; before the first `import torch`."""
    spin_briefly()
    keep_freed_memory()


def worker_env() -> dict[str, str]:
    """What a run's process needs in its environment before it starts (a study's workers): the
    same settings, the driver's own where it has them."""
    own_malloc = "malloc" in os.environ.get("GLIBC_TUNABLES", "")  # GLIBC_TUNABLES travels
    env = {"GOMP_SPINCOUNT": SPIN_COUNT, **({} if own_malloc else MALLOC_ENV)}
    return {key: os.environ.get(key, value) for key, value in env.items()}
