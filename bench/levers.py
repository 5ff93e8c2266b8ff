"""Each speed lever on its own, against the plain way, as ratios measured in one run.

    .venv/bin/python bench/levers.py                 # all, ~4 min on a 2-core CPU
    .venv/bin/python bench/levers.py layout compile  # some sections
    .venv/bin/python bench/levers.py --rounds 9      # steadier medians

Sections: `layout` (NHWC vs NCHW convolutions), `compile` (torch.compile of the learner's
forward/backward), `adam` (Adam's per-tensor, foreach and fused kernels), `inference` (acting under
inference_mode vs no_grad), `acting` (PPO's per-step costs on MiniGrid: native convolutions for a
few tiny images, the categorical draw, GAE in numpy, log-probabilities without building a
distribution), `threads` (torch threads and libgomp's waiting for updates and for acting: each
setting in its own process, as libgomp reads it once), `allocator` (glibc malloc's default against
the freed-memory thresholds training sets, in child processes too), `envs` (ale-py's AtariVectorEnv
vs gymnasium wrappers in a SyncVectorEnv, over our screenless AtariEnv or the stock one, or stepped
by two processes as env.workers=2), `replay` (sampling a batch from the replay buffer vs the update
that uses it), `precision` (`precision: bf16`'s autocast forward against fp32, for a gradient step
(fused Adam, as training) and a graph-free pass, with every core's threads as Atari runs use them),
`targets` (DQN's TD-target passes for the two updates of a vector step: bf16 autocast over the fp32
weights vs the cached bf16 copy training uses, and one pass over both batches, not kept). Variants
alternate within a round, so load from other users falls on all alike; medians over rounds.
One torch thread unless a section says otherwise.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHELL_ENV = dict(os.environ)  # the shell's own (GOMP_SPINCOUNT as the user set it)
sys.path.insert(0, str(ROOT))

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from agents.networks import (  # noqa: E402
    Network,
    NetworkConfig,  # noqa: E402
    make_spec,
)
from agents.runtime.process import MALLOC_ENV, SPIN_COUNT  # noqa: E402
from bench.timing import NETS, compare, net_layout, step_loss  # noqa: E402
from envs.config import EnvConfig  # noqa: E402


def show(title: str, medians: dict[str, float], unit: str = "ms") -> None:
    first = next(iter(medians.values()))
    print(f"\n{title}")
    for name, value in medians.items():
        shown = f"{1e3 * value:9.2f} ms" if unit == "ms" else f"{value:9,.0f} {unit}"
        print(f"  {name:<46} {shown}   x{first / value if unit == 'ms' else value / first:.2f}")


def network(name: str, channels_last: bool = True) -> tuple[Network, torch.Tensor]:
    shape, high = NETS[name]
    net_cfg = OmegaConf.merge(OmegaConf.structured(NetworkConfig), {"channels_last": channels_last})
    space = gym.spaces.Box(0, high, shape, np.uint8)
    torch.manual_seed(0)
    net = Network(make_spec(net_cfg, space, {"policy": 7, "value": 1}, layout=net_layout(name)))
    return net, torch.randint(0, high + 1, (256, *shape), dtype=torch.uint8)


def update_step(net: Network, obs: torch.Tensor, forward=None, fused: bool = False):
    """A PPO-shaped gradient step: forward, a loss of both heads, backward, Adam (torch's CPU
    default, or fused as training runs it)."""
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-8, fused=fused)
    forward = forward or (lambda x: net(x, return_features=True))

    def step():
        outputs, _ = forward(obs)
        loss = step_loss(outputs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def layout(rounds: int) -> None:
    for name in NETS:
        for batch in (256, 32):
            variants = {}
            for label, flag in (("NCHW (default layout)", False), ("NHWC (channels_last)", True)):
                net, obs = network(name, flag)
                variants[label] = update_step(net, obs[:batch])
            show(f"conv layout, {name}, gradient step on {batch} observations",
                 compare(variants, rounds, 3))


def compile_section(rounds: int) -> None:
    for name in NETS:
        net, obs = network(name)
        compiled = torch.compile(lambda x, net=net: net(x, return_features=True))
        start = time.perf_counter()
        update_step(net, obs, compiled)()
        seconds = time.perf_counter() - start
        show(f"torch.compile, {name}, gradient step on 256 (first call compiles: {seconds:.0f} s)",
             compare({"eager": update_step(net, obs), "compiled forward/backward":
                      update_step(net, obs, compiled)}, rounds, 3))


def adam(rounds: int) -> None:
    for name in NETS:
        net, _ = network(name)
        for param in net.parameters():
            param.grad = torch.randn_like(param)
        variants = {}
        for label, kwargs in (("per-tensor loop (torch's CPU default)", {}),
                              ("foreach (bitwise the same)", {"foreach": True}),
                              ("fused (ours; round-off differences)", {"fused": True})):
            optimizer = torch.optim.Adam(net.parameters(), lr=1e-12, **kwargs)
            variants[label] = optimizer.step
        show(f"Adam step, {name} ({sum(p.numel() for p in net.parameters()):,} parameters)",
             compare(variants, rounds, 10))


def inference(rounds: int) -> None:
    from torch.distributions import Categorical

    for name in NETS:
        net, obs = network(name)
        obs = obs[:8]

        def act(context, net=net, obs=obs):
            def call():
                with context():
                    dist = Categorical(logits=net(obs)["policy"], validate_args=False)
                    dist.log_prob(dist.sample())
            return call
        show(f"acting on 8 observations, {name}",
             compare({"no_grad": act(torch.no_grad), "inference_mode": act(torch.inference_mode)},
                     rounds, 50))


def acting(rounds: int) -> None:
    """PPO's per-step acting costs on MiniGrid, where they add up against a fast env."""
    from torch.distributions import Categorical

    from agents.policies import log_prob_and_entropy, sample_categorical
    from agents.ppo import compute_gae

    for name, batch in (("MiniGrid CNN", 8), ("MiniGrid CNN", 32), ("Nature CNN", 8)):
        net, obs = network(name)
        plain = torch.no_grad()(lambda net=net, obs=obs[:batch]: net(obs))
        show(f"graph-free forward on {batch} observations, {name}",
             compare({"oneDNN convolutions (torch's choice)": plain,
                      "Network.act (native convs on <= 12 tiny images)":
                      lambda net=net, obs=obs[:batch]: net.act(obs)}, rounds, 50))

    logits = torch.randn(8, 7)

    def distribution():
        dist = Categorical(logits=logits, validate_args=False)
        dist.log_prob(dist.sample())
    show("one action per env and its log-probability, 8 envs", compare({
        "Categorical: sample + log_prob": distribution,
        "torch.multinomial(softmax)": lambda: torch.multinomial(logits.softmax(-1), 1, True),
        "sample_categorical (log-probs later, once)": lambda: sample_categorical(logits)},
        rounds, 200))

    rollout = [torch.randn(128, 8), torch.randn(128, 8), (torch.rand(128, 8) < 0.05).float(),
               torch.randn(8), torch.zeros(8)]  # rewards, values, dones, next value, next done
    arrays = [x.numpy() for x in rollout]
    show("GAE over a 128-step rollout of 8 envs", compare({
        "torch tensors (per-op dispatch)": lambda: compute_gae(*rollout, 0.99, 0.95),
        "numpy (ours)": lambda: compute_gae(*arrays, 0.99, 0.95)}, rounds, 20))

    leaf = torch.randn(256, 7, requires_grad=True)
    actions = torch.randint(0, 7, (256,))

    def by_distribution():
        dist = Categorical(logits=leaf)
        (dist.log_prob(actions).sum() + dist.entropy().mean()).backward()

    def by_log_softmax():
        log_prob, entropy = log_prob_and_entropy(leaf, actions)
        (log_prob.sum() + entropy.mean()).backward()
    show("PPO loss: log-probabilities and entropy of a 256 minibatch, forward and backward",
         compare({"Categorical (argument checks on)": by_distribution,
                  "log_prob_and_entropy (one log_softmax)": by_log_softmax}, rounds, 100))


def child_probe() -> None:
    """In a child process: seconds per Nature CNN step (256), DQN-sized step (32), MiniGrid step
    (256), Nature CNN acting (8) and a minibatch's input conversion (256 uint8 frames to scaled
    NHWC floats), with the process's torch threads, wait policy and malloc settings."""
    nature, obs = network("Nature CNN")
    minigrid, grid_obs = network("MiniGrid CNN")
    act = torch.no_grad()(lambda: nature(obs[:8]))
    variants = {"Nature step 256": update_step(nature, obs),
                "Nature step 32": update_step(nature, obs[:32]),
                "MiniGrid step 256": update_step(minigrid, grid_obs), "Nature act 8": act,
                "input conversion 256": lambda: nature._prepare(obs)}
    print(repr(compare(variants, 3, 3)))


def in_children(settings: dict[str, dict[str, str]], rounds: int, drop: tuple[str, ...]) -> None:
    """child_probe under each setting's environment (the shell's, less `drop`, plus the
    setting's), settings alternating round after round; one table per probed task."""
    results = {name: [] for name in settings}
    for _ in range(max(1, rounds // 3)):
        for name, extra in settings.items():
            env = {k: v for k, v in SHELL_ENV.items() if k not in drop} | extra
            out = subprocess.run([sys.executable, __file__, "--child-probe"], env=env,
                                 capture_output=True, text=True, check=True).stdout
            results[name].append(ast.literal_eval(out.strip().splitlines()[-1]))
    for task in next(iter(results.values()))[0]:
        show(f"{task}", {name: statistics.median(r[task] for r in runs)
                         for name, runs in results.items()})


def threads(rounds: int) -> None:
    settings = {"1 thread": {"OMP_NUM_THREADS": "1"},
                "2 threads, libgomp's default (spin 300k)": {"OMP_NUM_THREADS": "2"},
                "2 threads, OMP_WAIT_POLICY=PASSIVE": {"OMP_NUM_THREADS": "2",
                                                       "OMP_WAIT_POLICY": "PASSIVE"},
                "2 threads, GOMP_SPINCOUNT=1000 (ours)": {"OMP_NUM_THREADS": "2",
                                                          "GOMP_SPINCOUNT": SPIN_COUNT}}
    print("\nthreads: each setting in its own process")
    in_children(settings, rounds, drop=("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"))


def allocator(rounds: int) -> None:
    """glibc malloc's default against the thresholds training sets (agents/runtime/process.py),
    all cores' threads and our spin count, as an Atari run has them."""
    ours = {"GOMP_SPINCOUNT": SPIN_COUNT}
    settings = {"glibc malloc's default": ours, "ours (freed memory kept)": ours | MALLOC_ENV}
    print("\nallocator: each setting in its own process")
    in_children(settings, rounds, drop=("OMP_NUM_THREADS", "GLIBC_TUNABLES", *MALLOC_ENV))


def stock_atari_pipeline(task, env_cfg, obs_type: str):
    """The gymnasium backend's 8 envs with ale-py's stock AtariEnv under the wrappers, its
    observations of `obs_type`, instead of envs.atari.ScreenlessAtariEnv."""
    from ale_py.env import AtariEnv

    from envs import atari

    make = gym.make

    def stock_make(spec, **kwargs):
        stock = dataclasses.replace(spec, entry_point=AtariEnv)
        return make(stock, **kwargs | {"obs_type": obs_type})
    gym.make = stock_make
    try:
        env_cfg.backend = "gymnasium"
        vec = atari.make_vector(task, env_cfg, 8, False)
    finally:
        gym.make = make
    inner = vec.envs[0].unwrapped
    assert type(inner) is AtariEnv and inner._obs_type == obs_type, (
        "the patch of gym.make did not reach the ALE env: the variant would time ours twice")
    return vec


def envs(rounds: int) -> None:
    from envs import atari
    from envs.tasks import TaskSpec

    env_cfg = OmegaConf.structured(EnvConfig)
    task = TaskSpec("ALE/Breakout-v5")
    variants, rng = {}, np.random.default_rng(0)
    for backend, workers in (("gymnasium", 1), ("ale_vector", 1), ("gymnasium", 2)):
        env_cfg.backend = backend
        vec = atari.make_vector(task, env_cfg, 8, False, workers)
        vec.reset(seed=0)
        name = backend if workers == 1 else f"{backend}, env.workers={workers} (4 envs each)"
        variants[name] = (lambda vec=vec: vec.step(rng.integers(0, 4, 8)))
    # The gymnasium pipeline as it was: ale-py's own AtariEnv, whose observation (grey, or RGB
    # before that) is grabbed every frame and thrown away (AtariPreprocessing reads its screens
    # from the ALE itself).
    for obs_type in ("grayscale", "rgb"):
        vec = stock_atari_pipeline(task, env_cfg, obs_type)
        vec.reset(seed=0)
        variants[f"gymnasium, {obs_type} frames from the env"] = (
            lambda vec=vec: vec.step(rng.integers(0, 4, 8)))
    medians = compare(variants, rounds, 50)
    show("Atari env steps/s, Breakout, 8 envs (env only, random actions)",
         {name: 8 / seconds for name, seconds in medians.items()}, unit="env steps/s")


def replay(rounds: int) -> None:
    from agents.replay import ReplayBuffer

    buffer = ReplayBuffer(20_000, (4, 84, 84), num_envs=8, frame_stack=4)
    obs = np.random.default_rng(0).integers(0, 256, (8, 4, 84, 84), dtype=np.uint8)
    for _ in range(2_000):
        next_obs = np.concatenate([obs[:, 1:], obs[:, :1]], axis=1)
        buffer.add(obs, next_obs, np.zeros(8), np.zeros(8), np.zeros(8, bool), np.zeros(8, bool))
        obs = next_obs
    rng = np.random.default_rng(0)
    net, net_obs = network("Nature CNN")
    show("DQN: drawing a batch of 32 from the replay buffer vs the gradient step on it",
         compare({"update (Nature CNN, 32)": update_step(net, net_obs[:32]),
                  "replay sample (32, vectorised)": lambda: buffer.sample(32, rng)}, rounds, 5))


@contextlib.contextmanager
def all_cores():
    """Every core's torch threads, as Atari configs train (torch_threads: 0), then back."""
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count())
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def precision(rounds: int) -> None:
    from functools import partial

    from agents.learner import mixed_precision_forward

    def bf16(net):
        """The learner's forward under precision: bf16 (agents/learner.py)."""
        return partial(mixed_precision_forward, net, dtype=torch.bfloat16)

    with all_cores():
        for name in NETS:
            net, obs = network(name)
            for batch in (256, 32):
                show(f"precision, {name}, gradient step on {batch} observations "
                     f"({torch.get_num_threads()} threads)",
                     compare({"fp32": update_step(net, obs[:batch], fused=True),
                              "bf16 autocast": update_step(net, obs[:batch], bf16(net),
                                                           fused=True)},
                             rounds, 3))
            for batch in (32, 8):
                plain = torch.no_grad()(lambda net=net, x=obs[:batch]: net(x))
                cast = torch.no_grad()(lambda net=net, x=obs[:batch]: bf16(net)(x))
                show(f"precision, {name}, graph-free pass on {batch} (DQN's targets, acting)",
                     compare({"fp32": plain, "bf16 autocast": cast}, rounds, 20))


def targets(rounds: int) -> None:
    """DQN's TD-target passes for the two updates a vector step of 8 envs runs (train_frequency
    4), a pass per update as training does; under bf16, autocast over the fp32 weights against
    the cached bf16 copy (agents/learner.py's CastCopy, what training uses). One pass of 64 over
    both batches was tried and is not kept: ×0.75–0.96 of two passes of 32 (bigger activations
    than the caches hold)."""
    from agents.learner import CastCopy

    with all_cores():
        net, obs = network("Nature CNN")
        net.requires_grad_(False)
        halves, both = (obs[:32], obs[32:64]), obs[:64]
        cast_copy = CastCopy(torch.bfloat16)

        def passes(model, batches, dtype=None):
            def run():
                with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.bfloat16,
                                                     enabled=dtype is not None):
                    for batch in batches:
                        model()(batch)
            return run
        show(f"DQN targets, Nature CNN, 2 updates of 32 ({torch.get_num_threads()} threads)",
             compare({"fp32, a pass per update": passes(lambda: net, halves),
                      "fp32, one pass of 64": passes(lambda: net, [both]),
                      "bf16 autocast, a pass per update": passes(lambda: net, halves,
                                                                 torch.bfloat16),
                      "bf16 cast copy, a pass per update": passes(lambda: cast_copy(net), halves,
                                                                  torch.bfloat16),
                      "bf16 cast copy, one pass of 64": passes(lambda: cast_copy(net), [both],
                                                               torch.bfloat16)},
                     rounds, 20))


SECTIONS = {"layout": layout, "compile": compile_section, "adam": adam, "inference": inference,
            "acting": acting, "threads": threads, "allocator": allocator, "envs": envs,
            "replay": replay, "precision": precision, "targets": targets}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sections", nargs="*", help=f"any of {', '.join(SECTIONS)} (default all)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child-probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_probe:
        child_probe()
        return
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))} (sections: "
                     f"{', '.join(SECTIONS)})")
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}; medians of {args.rounds} rounds")
    for name in args.sections or SECTIONS:
        SECTIONS[name](args.rounds)


if __name__ == "__main__":
    main()
