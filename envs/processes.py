"""A vector env whose envs step in a few processes at once, several envs to each, this one too.

gymnasium's AsyncVectorEnv gives every env its own process and waits while they step, so an
8-env Atari step costs 8 pipe round trips and 8 wake-ups; on 2 cores that overhead ate what the
parallel stepping won (docs/performance.md). Here the envs are split into contiguous shares:
this process steps the first while worker processes step the others, each share in turn exactly
as SyncVectorEnv would (SAME_STEP autoreset, the same seeds and infos), the workers writing their
observations into shared memory. A worker costs one round trip a step, and its wake-up overlaps
this process's own stepping. ale-py holds the GIL while it emulates, so threads would not run the
emulators side by side; processes do.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import signal
import sys
import traceback
import types
from collections.abc import Callable
from copy import deepcopy

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import (
    CloudpickleWrapper,
    batch_space,
    create_shared_memory,
    iterate,
    read_from_shared_memory,
)

# forkserver: the workers fork from a fresh server process, not from this one, whose threads
# (torch's, TensorBoard's writer, a Ray worker's gRPC) could hold locks that a plain fork copies
# held. The server imports these once, so that a worker starts as a fork of a warm process.
PRELOAD = ["envs"]


class WorkerError(RuntimeError):
    """An env in a worker process raised, or the worker died; the message says which and why."""


def shares(num_envs: int, processes: int) -> list[range]:
    """The envs each process steps: contiguous, their sizes differing by at most one."""
    bounds = [k * num_envs // processes for k in range(processes + 1)]
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


class EnvShare:
    """Some of a vector's envs, each stepped in turn and reset in the step it ends, as
    SyncVectorEnv steps its envs; observations go into `observations` (all the vector's)."""

    def __init__(self, envs: list[gym.Env], indices: range, observations: np.ndarray):
        self.envs, self.indices, self.observations = envs, indices, observations
        self.actions_space = batch_space(envs[0].action_space, len(envs))

    def answer(self, command: str, data):
        """What `command` gives for these envs: "reset" of (seeds, options), "step" of actions."""
        return self.reset(*data) if command == "reset" else self.step(data)

    def reset(self, seeds, options) -> list[dict]:
        infos = []
        for i, env, seed in zip(self.indices, self.envs, seeds):
            self.observations[i], info = env.reset(seed=seed, options=options)
            infos.append(info)
        return infos

    def step(self, actions) -> list[tuple]:
        """(reward, terminated, truncated, (final obs, final info) or None, info) per env."""
        results = []
        for i, env, action in zip(self.indices, self.envs, iterate(self.actions_space, actions)):
            obs, reward, terminated, truncated, info = env.step(action)
            final = None
            if terminated or truncated:
                final = (obs, info)
                obs, info = env.reset()
            self.observations[i] = obs
            results.append((reward, terminated, truncated, final, info))
        return results

    def close(self) -> None:
        for env in self.envs:
            env.close()


class ProcessVectorEnv(gym.vector.VectorEnv):
    """`num_envs` copies of `make_env()` stepped by `processes` processes: this one and
    `processes - 1` workers. Steps, resets and infos equal SyncVectorEnv's with SAME_STEP
    autoreset, bit for bit (tests/test_processes.py)."""

    def __init__(self, make_env: Callable[[], gym.Env], num_envs: int, processes: int):
        if not 2 <= processes <= num_envs:
            raise ValueError(f"processes must be in [2, num_envs={num_envs}], got {processes}")
        own, *others = shares(num_envs, processes)
        envs = [make_env() for _ in own]
        self.single_observation_space = envs[0].observation_space
        self.single_action_space = envs[0].action_space
        self.metadata = dict(envs[0].metadata, autoreset_mode=AutoresetMode.SAME_STEP)
        self.render_mode = envs[0].render_mode
        self.num_envs = num_envs
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)

        context = mp.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        memory = create_shared_memory(self.single_observation_space, num_envs, context)
        self._observations = read_from_shared_memory(self.single_observation_space, memory,
                                                     num_envs)
        self._own = EnvShare(envs, own, self._observations)
        self._workers = [Worker(context, make_env, share, num_envs, memory) for share in others]
        self._receive_all()  # each worker has built its envs, or says why not

    def reset(self, *, seed=None, options=None):
        if seed is None:
            seed = [None] * self.num_envs
        elif isinstance(seed, int):
            seed = [seed + i for i in range(self.num_envs)]
        if len(seed) != self.num_envs:
            raise ValueError(f"reset: {len(seed)} seeds for {self.num_envs} envs")
        if options and "reset_mask" in options:
            raise ValueError("reset: options['reset_mask'] is not supported with env.workers "
                             "above 1; reset every env")
        infos = {}
        for share, env_infos in self._everyone("reset", lambda share: (
                [seed[i] for i in share], options)):
            for i, info in zip(share, env_infos):
                infos = self._add_info(infos, info, i)
        return deepcopy(self._observations), infos

    def step(self, actions):
        actions = np.asarray(actions)
        answers = self._everyone("step", lambda share: actions[share.start:share.stop])
        rewards = np.zeros(self.num_envs, np.float64)
        terminations = np.zeros(self.num_envs, np.bool_)
        truncations = np.zeros(self.num_envs, np.bool_)
        infos = {}
        for share, results in answers:
            for i, (reward, terminated, truncated, final, info) in zip(share, results):
                rewards[i], terminations[i], truncations[i] = reward, terminated, truncated
                if final is not None:  # added before the reset's info, as SyncVectorEnv does
                    infos = self._add_info(infos, {"final_obs": final[0],
                                                   "final_info": final[1]}, i)
                infos = self._add_info(infos, info, i)
        return deepcopy(self._observations), rewards, terminations, truncations, infos

    def close_extras(self, **kwargs):
        for worker in self._workers:
            worker.stop()
        self._own.close()

    def __del__(self):  # an env dropped unclosed would keep its workers until the trainer exits
        if hasattr(self, "_workers"):
            self.close()

    def _everyone(self, command: str, data_for) -> list[tuple[range, object]]:
        """(envs, answer) of this process's share, then of every worker's in order, each sent
        `data_for(its envs)`; the workers work while this process does its own share. Any
        failure closes the vector env and raises here."""
        for worker in self._workers:
            worker.send(command, data_for(worker.share))
        try:
            own = self._own.answer(command, data_for(self._own.indices))
        except BaseException:
            self.close()
            raise
        return [(self._own.indices, own),
                *zip((w.share for w in self._workers), self._receive_all())]

    def _receive_all(self) -> list:
        """Every worker's answer; a worker's error (or death) closes them all and raises here,
        in the process that called."""
        answers, failure = [], None
        for worker in self._workers:
            ok, answer = worker.receive()
            failure = failure or (None if ok else answer)
            answers.append(answer)
        if failure is not None:
            self.close()
            raise WorkerError(failure)
        return answers


@contextlib.contextmanager
def main_module_left_out():
    """While a worker starts, __main__ reads as an empty module. A forkserver (or spawn) child
    imports its parent's __main__ again, so that pickled references into it resolve: a user's
    script that builds a run without an `if __name__ == "__main__":` guard would run again in
    every worker and fail there. A worker needs nothing from it: its env factory travels by
    value (cloudpickled) and its loop is this module's."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


class Worker:
    """One worker process and its end of the pipe."""

    def __init__(self, context, make_env, share: range, num_envs: int, memory):
        self.share = share
        self.pipe, child = context.Pipe()
        self.process = context.Process(
            target=work, daemon=True, name=f"pliable-envs-{share.start}-{share.stop - 1}",
            args=(CloudpickleWrapper(make_env), share, num_envs, memory, child))
        with main_module_left_out():
            self.process.start()
        child.close()

    def send(self, command: str, data) -> None:
        try:
            self.pipe.send((command, data))
        except (BrokenPipeError, OSError):
            pass  # it died: receive() says how

    def receive(self) -> tuple[bool, object]:
        try:
            return self.pipe.recv()
        except (EOFError, OSError):
            self.process.join(timeout=5)
            return False, (f"the env worker process {self.process.name} died (exit code "
                           f"{self.process.exitcode})")

    def stop(self) -> None:
        self.send("close", None)
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join()
        self.pipe.close()


def work(make_env: CloudpickleWrapper, share: range, num_envs: int, memory, pipe) -> None:
    """A worker's loop: build its envs, then answer reset and step until told to close."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle
    envs: EnvShare | None = None
    try:
        built = [make_env() for _ in share]
        envs = EnvShare(built, share, read_from_shared_memory(built[0].observation_space,
                                                              memory, num_envs))
        pipe.send((True, None))
        while True:
            try:
                command, data = pipe.recv()
            except EOFError:  # the trainer is gone
                break
            if command == "close":
                break
            pipe.send((True, envs.answer(command, data)))
    except Exception as exc:  # sent to the trainer, which raises it there
        pipe.send((False, f"{type(exc).__name__}: {exc} (in the env worker for envs "
                          f"{share.start}-{share.stop - 1})\n{traceback.format_exc()}"))
    finally:
        if envs is not None:
            envs.close()
        pipe.close()
