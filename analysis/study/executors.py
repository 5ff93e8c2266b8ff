"""Where bench cells run: processes of this machine, Ray tasks on a cluster, or this process.

All yield `(item, outcome)` as runs complete, the outcome being the function's return value or
the exception that kept it from returning (a crashed worker, say), so that one failure never
stops the others.

A local grid runs on `LocalExecutor`, which opens no port: Ray's own servers (GCS, raylet, each
worker's gRPC server) listen on every interface whatever `_node_ip_address` says, with no
setting that confines them, so Ray is only used to join a cluster (`--address`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import pickle
import signal
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import wait
from typing import Any

from agents.errors import ConfigError
from agents.runtime.process import worker_env


def resource_error(cpus: float, gpus: float, have_cpus: float, have_gpus: float) -> ConfigError:
    return ConfigError(f"a run needs {cpus:g} CPUs and {gpus:g} GPUs but this machine has "
                       f"{have_cpus:g} and {have_gpus:g}: lower cpus_per_run / gpus_per_run, or "
                       "join a cluster (--address)")


class SerialExecutor:
    """One item after another in this process: for tests and debugging."""

    def map_unordered(self, fn: Callable, items: Iterable) -> Iterator[tuple[Any, Any]]:
        for item in items:
            try:
                yield item, fn(item)
            except Exception as exc:
                yield item, exc

    def close(self) -> None:
        pass


class RayExecutor:
    """Each item is a Ray task holding `cpus` CPUs and `gpus` GPUs.

    Joins the cluster at `address` ("auto": the one this node belongs to), else starts a local
    instance sized to this machine, unless Ray is already initialised in this process (which is
    then left running). Tasks are never retried: a retry would find its run directory already
    written. At most `max_parallel` run at once (default: as many as the resources allow).
    """

    def __init__(self, cpus: float = 1.0, gpus: float = 0.0, address: str | None = None,
                 max_parallel: int | None = None):
        import ray

        self.ray = ray
        self.owns_ray = not ray.is_initialized()
        if self.owns_ray:
            # A local instance stays on loopback (Ray would pick the host's network address).
            local = {} if address else {"_node_ip_address": "127.0.0.1"}
            try:  # worker output goes to each run's log, not the console
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING, **local)
            except ConnectionError as exc:
                raise ConfigError(f"--address {address}: {str(exc).splitlines()[0]}") from None
        available = ray.cluster_resources()
        if address is None and (cpus > available.get("CPU", 0) or gpus > available.get("GPU", 0)):
            self.close()
            raise resource_error(cpus, gpus, available.get("CPU", 0), available.get("GPU", 0))
        # Workers start their own Python, torch included: OpenMP's spin policy must be in their
        # environment before that, on a cluster's nodes too.
        self.options = {"num_cpus": cpus, "num_gpus": gpus, "max_retries": 0,
                        "runtime_env": {"env_vars": worker_env()}}
        self.max_parallel = max_parallel

    def map_unordered(self, fn: Callable, items: Iterable) -> Iterator[tuple[Any, Any]]:
        remote = self.ray.remote(fn).options(**self.options)
        queue, pending = list(items), {}
        limit = self.max_parallel or len(queue)
        while queue or pending:
            while queue and len(pending) < limit:
                item = queue.pop(0)
                pending[remote.remote(item)] = item
            (ready, *_), _ = self.ray.wait(list(pending), num_returns=1)
            item = pending.pop(ready)
            try:
                yield item, self.ray.get(ready)
            except Exception as exc:  # the worker died, or Ray could not run the task
                yield item, exc

    def close(self) -> None:
        if self.owns_ray:
            self.ray.shutdown()


class RunProcessError(Exception):
    """A run's process raised, or died without a result; the message is its traceback (the last
    line naming the exception) or how the process ended."""


def machine_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def machine_gpus() -> list[str]:
    """The GPUs runs may use: CUDA_VISIBLE_DEVICES' entries when set, else every CUDA device."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [dev.strip() for dev in visible.split(",") if dev.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


class GpuPool:
    """Hands GPUs out per run as Ray would: a run needing at most one GPU gets a share of one
    (fractions add up to at most 1 per GPU), a run needing more gets that many whole GPUs."""

    def __init__(self, devices: list[str]):
        self.free = dict.fromkeys(devices, 1.0)

    def acquire(self, gpus: float) -> list[str] | None:
        """The devices of a run needing `gpus`, or None while they are taken."""
        if gpus <= 0:
            return []
        if gpus <= 1:
            for dev, free in self.free.items():
                if free >= gpus - 1e-9:
                    self.free[dev] = free - gpus
                    return [dev]
            return None
        whole = [dev for dev, free in self.free.items() if free >= 1 - 1e-9][:int(gpus)]
        if len(whole) < gpus:
            return None
        for dev in whole:
            self.free[dev] = 0.0
        return whole

    def release(self, devices: list[str], gpus: float) -> None:
        for dev in devices:
            self.free[dev] = min(1.0, self.free[dev] + (gpus if gpus <= 1 else 1.0))


def cloudpickle():
    """cloudpickle (gymnasium's dependency; Ray's copy otherwise): a cell's config is an instance
    of a dataclass made at run time, which plain pickle cannot find by name."""
    try:
        import cloudpickle
    except ImportError:
        from ray import cloudpickle
    return cloudpickle


def _detach(parent: int) -> None:
    """A run's process leaves the terminal's process group, so that a Ctrl-C reaches only the
    bench, which then stops each run once (`LocalExecutor.close`); and it gets SIGTERM (a
    graceful stop: checkpoint, status interrupted) if the bench dies without closing."""
    os.setpgrp()
    with contextlib.suppress(Exception):  # Linux only
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the bench died before that
        os.kill(os.getpid(), signal.SIGTERM)


def _run_in_process(conn, payload: bytes, parent: int) -> None:
    """A run process's body: send back (True, result) or (False, the traceback text)."""
    _detach(parent)
    dumps = cloudpickle().dumps
    try:
        fn, item = pickle.loads(payload)
        message = dumps((True, fn(item)))
    except BaseException:  # noqa: BLE001 - anything, KeyboardInterrupt included, is the outcome
        message = dumps((False, traceback.format_exc()))
    conn.send_bytes(message)
    conn.close()


@contextlib.contextmanager
def environ(values: dict[str, str]):
    """os.environ with `values` set, for a child process started inside; restored after."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class LocalExecutor:
    """Each item in a fresh process of this machine (spawned, so that one run's crash, memory or
    torch state never reaches another), holding `cpus` CPUs and `gpus` GPUs of it, as many at
    once as the CPUs (and GPUs) allow, or `max_parallel`. Opens no port.

    A run's GPUs are handed to it in CUDA_VISIBLE_DEVICES, OpenMP's spin policy in
    GOMP_SPINCOUNT, both set before its Python starts. `fn`, the items and the results travel
    by cloudpickle, as they would to Ray.
    """

    def __init__(self, cpus: float = 1.0, gpus: float = 0.0, max_parallel: int | None = None,
                 cpu_count: int | None = None, gpu_devices: list[str] | None = None):
        self.cpus, self.gpus = cpus, gpus
        have_cpus = machine_cpus() if cpu_count is None else cpu_count
        devices = (machine_gpus() if gpus > 0 else []) if gpu_devices is None else gpu_devices
        if cpus > have_cpus or gpus > len(devices):
            raise resource_error(cpus, gpus, have_cpus, len(devices))
        if gpus > 1 and gpus != int(gpus):
            raise ConfigError(f"gpus_per_run above 1 must be a whole number, got {gpus:g}")
        self.pool = GpuPool(devices)
        self.limit = max(1, math.floor(have_cpus / cpus + 1e-9))
        if max_parallel is not None:
            self.limit = min(self.limit, max_parallel)
        self.context = multiprocessing.get_context("spawn")
        self.running: dict[Any, tuple[Any, Any, list[str]]] = {}  # conn -> process, item, GPUs

    def _start(self, fn: Callable, item: Any, devices: list[str]) -> None:
        receive, send = self.context.Pipe(duplex=False)
        env = worker_env()
        if self.gpus > 0:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
        payload = cloudpickle().dumps((fn, item))
        # not daemonic: a run may start processes of its own (close() ends it, or its
        # parent-death signal)
        process = self.context.Process(target=_run_in_process, args=(send, payload, os.getpid()))
        with environ(env):
            process.start()
        send.close()  # the child's end: the parent's receive end sees EOF if the child dies
        self.running[receive] = (process, item, devices)

    def _finish(self, conn) -> tuple[Any, Any]:
        process, item, devices = self.running.pop(conn)
        try:
            ok, outcome = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            ok, outcome = False, None
        conn.close()
        process.join()
        self.pool.release(devices, self.gpus)
        if ok:
            return item, outcome
        if outcome is None:
            outcome = f"the run's process died without a result (exit code {process.exitcode})"
        return item, RunProcessError(outcome.rstrip())

    def map_unordered(self, fn: Callable, items: Iterable) -> Iterator[tuple[Any, Any]]:
        queue = list(items)
        try:
            while queue or self.running:
                while queue and len(self.running) < self.limit:
                    devices = self.pool.acquire(self.gpus)
                    if devices is None:
                        break
                    self._start(fn, queue.pop(0), devices)
                for conn in wait(list(self.running)):
                    yield self._finish(conn)
        finally:
            self.close()

    def close(self, grace: float = 60.0) -> None:
        """Stop the runs still going (an interrupted grid): SIGTERM once each (training finishes
        its update and writes a checkpoint), then SIGKILL what is left after `grace` seconds or
        at a second Ctrl-C."""
        processes = [process for process, _, _ in self.running.values()]
        for process in processes:
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + grace
        try:
            for process in processes:
                process.join(max(0.0, deadline - time.monotonic()))
        finally:
            for process in processes:
                if process.is_alive():
                    process.kill()
                process.join()
            for conn, (_, _, devices) in self.running.items():
                conn.close()
                self.pool.release(devices, self.gpus)
            self.running.clear()
