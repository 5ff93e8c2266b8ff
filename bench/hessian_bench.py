"""Top-20 Hessian eigenvalues: our Lanczos (the spectral monitor's method) against PyHessian's
power iteration with deflation, on the same network, loss and batch; times, Hessian-vector
products and errors, each against the other and against an exact reference.

    .venv/bin/python bench/hessian_bench.py            # ~2 min on a 2-core CPU
    .venv/bin/python bench/hessian_bench.py --nature   # also the Nature CNN (PyHessian: ~7 min)

The loss is PPO's own (clipped objective, value and entropy terms) on a 256-observation batch of
the default config's first task, as the monitor measures it. Settings:
- small: the MiniGrid CNN at width 0.25 (~1.5k parameters), where the exact spectrum comes from
  the dense float64 Hessian;
- default: the MiniGrid CNN of `configs/minigrid_ppo.yaml` (19k parameters); reference: float64
  Lanczos with 400 steps (its top 20 agree with 300 steps to ~1e-7);
- nature (--nature): the Nature CNN on Breakout (1.69M parameters); reference: ours at 200 steps.
Both methods use double-backward Hessian-vector products (PyHessian its own), one thread each.
PyHessian (pip package `pyhessian`, in the dev extra) finds the eigenvalues of largest
*magnitude*, ours the algebraically largest; each is scored against the reference for its own
target, and the two against each other. Errors are relative to |lambda_1|, the largest: a small
eigenvalue's own relative error says little.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agents.runtime.config import load_config  # noqa: E402
from agents.runtime.trainer import Trainer, segment_seed  # noqa: E402
from analysis.monitor.measure import loss_closure  # noqa: E402
from analysis.spectral.hessian import HessianOperator, operator_top_eigenvalues  # noqa: E402

K = 20
SETTINGS = {  # name: (config, overrides, reference: "dense" or Lanczos steps in float64)
    "small": ("minigrid_ppo.yaml", ["network.width=0.25"], "dense"),
    "default": ("minigrid_ppo.yaml", [], 400),
    "nature": ("atari_modes_ppo.yaml", ["sequence.tasks=[{env_id: ALE/Breakout-v5}]"], 200),
}


def agent_and_batch(config: str, overrides: list[str]):
    trainer = Trainer(load_config(config, [*overrides, "torch_threads=1"]))
    agent = trainer.agent
    envs = trainer.env_factory.make_vector(trainer.sequence.tasks[0])
    batch = agent.probe_batch(envs, 256 // envs.num_envs, segment_seed(1, 0))
    envs.close()
    return agent, batch


class CountingOperator(HessianOperator):
    calls = 0

    def matvec(self, vector):
        self.calls += 1
        return super().matvec(vector)


def ours(agent, batch, steps: int, dtype=None) -> tuple[np.ndarray, float, int]:
    """The monitor's top-k: Lanczos with full re-orthogonalisation, `steps` HVPs."""
    start = time.perf_counter()
    operator = CountingOperator(loss_closure(agent, batch), dict(agent.network.named_parameters()),
                                dtype)
    values = operator_top_eigenvalues(operator, K, "lanczos", steps, seed=0)
    return values, time.perf_counter() - start, operator.calls


def exact(agent, batch) -> np.ndarray:
    """Every eigenvalue, from the dense float64 Hessian built column by column."""
    operator = HessianOperator(loss_closure(agent, batch), dict(agent.network.named_parameters()),
                               torch.float64)
    identity = torch.eye(operator.dim, dtype=torch.float64)
    dense = torch.stack([operator.matvec(column) for column in identity])
    return np.linalg.eigvalsh(((dense + dense.T) / 2).numpy())[::-1]


class AgentLoss(nn.Module):
    """PyHessian's model(inputs) -> outputs, criterion(outputs, targets) -> loss: here the model
    returns the agent's loss on the batch and the criterion passes it on."""

    def __init__(self, agent, batch):
        super().__init__()
        self.network = copy.deepcopy(agent.network)  # PyHessian writes .grad
        self.agent, self.batch = agent, batch

    def forward(self, _inputs):
        return self.agent.loss(self.batch, lambda obs: self.network(obs, return_features=True))[0]


def pyhessian_top(agent, batch) -> tuple[np.ndarray, float, int]:
    """PyHessian 0.1's eigenvalues(top_n=20) with its defaults (maxIter 100, tol 1e-3)."""
    from pyhessian import hessian  # the class; its module's HVP function is counted

    module = sys.modules["pyhessian.hessian"]
    product, calls = module.hessian_vector_product, [0]

    def counted(*args):
        calls[0] += 1
        return product(*args)

    module.hessian_vector_product = counted
    warnings.filterwarnings("ignore", "Using backward\\(\\) with create_graph=True")  # its way
    torch.manual_seed(0)  # PyHessian draws its starts from the global generator
    start = time.perf_counter()
    values, _ = hessian(AgentLoss(agent, batch), lambda loss, _: loss, data=(None, None),
                        cuda=False).eigenvalues(top_n=K)
    seconds = time.perf_counter() - start
    module.hessian_vector_product = product
    return np.sort(np.array(values))[::-1], seconds, calls[0]


def error(values: np.ndarray, reference: np.ndarray, scale: float) -> str:
    gap = np.abs(values - reference) / scale
    return f"max {gap.max():.1e}, median {np.median(gap):.1e}"


def bench(name: str, lanczos_steps: int) -> None:
    config, overrides, reference_kind = SETTINGS[name]
    agent, batch = agent_and_batch(config, overrides)
    params = sum(p.numel() for p in agent.network.parameters())
    if reference_kind == "dense":
        spectrum = exact(agent, batch)
        top_algebraic = spectrum[:K]
        top_magnitude = np.sort(spectrum[np.argsort(-np.abs(spectrum))[:K]])[::-1]
        label = "dense float64 Hessian"
    else:
        top_algebraic = ours(agent, batch, reference_kind, torch.float64)[0]
        top_magnitude, label = None, f"float64 Lanczos, {reference_kind} steps"
    ours_values, ours_seconds, ours_hvps = ours(agent, batch, lanczos_steps)
    theirs, theirs_seconds, theirs_hvps = pyhessian_top(agent, batch)
    scale = abs(top_algebraic[0])
    print(f"\n{name}: {params:,} parameters, batch {len(batch)}, reference: {label}")
    print(f"  ours      (Lanczos, {lanczos_steps} steps) {ours_seconds:7.1f} s, "
          f"{ours_hvps:5d} HVPs; error vs reference top-{K}: "
          f"{error(ours_values, top_algebraic, scale)}")
    theirs_target = top_magnitude if top_magnitude is not None else top_algebraic
    print(f"  PyHessian (power iteration)  {theirs_seconds:7.1f} s, {theirs_hvps:5d} HVPs; "
          f"error vs reference top-{K}"
          f"{' by magnitude' if top_magnitude is not None else ''}: "
          f"{error(theirs, theirs_target, scale)}")
    print(f"  ours vs PyHessian: {error(ours_values, theirs, scale)}; "
          f"speed-up {theirs_seconds / ours_seconds:.1f}x (target >= 3x)")
    print(f"  lambda_1..3: reference {np.array2string(top_algebraic[:3], precision=4)}, "
          f"ours {np.array2string(ours_values[:3], precision=4)}, "
          f"PyHessian {np.array2string(theirs[:3], precision=4)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nature", action="store_true", help="also the Nature CNN (minutes)")
    parser.add_argument("--lanczos-steps", type=int, default=80,
                        help="our Lanczos steps (default 80: the monitor's default)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in ["small", "default", *(["nature"] if args.nature else [])]:
        bench(name, args.lanczos_steps)


if __name__ == "__main__":
    main()
