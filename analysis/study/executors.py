"""Where bench cells run: Ray tasks (a local instance or a cluster), or this process in turn.

Both yield `(item, outcome)` as runs complete, the outcome being the function's return value or
the exception that kept it from returning (a crashed Ray worker, say), so that one failure never
stops the others.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from agents.errors import ConfigError


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
            raise ConfigError(f"a run needs {cpus:g} CPUs and {gpus:g} GPUs but this machine has "
                              f"{available.get('CPU', 0):g} and {available.get('GPU', 0):g}: "
                              "lower cpus_per_run / gpus_per_run, or join a cluster (--address)")
        # Workers start their own Python, torch included: OpenMP's spin policy must be in their
        # environment before that (agents/runtime/openmp.py), on a cluster's nodes too.
        spin = {"GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT", "1000")}
        self.options = {"num_cpus": cpus, "num_gpus": gpus, "max_retries": 0,
                        "runtime_env": {"env_vars": spin}}
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
