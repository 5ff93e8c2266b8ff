"""The `monitor:` section of a run's config: what the spectral monitor measures, and when; named
presets of its values (`monitor.preset`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from agents.errors import ConfigError, at_least, factor, positive, seed_range


@dataclass
class MonitorConfig:
    """The spectral monitor (analysis/monitor/observer.py): Hessian spectrum of the agent's own
    loss at every task boundary, on a batch of the old task (`pre`, see `pre_batch`) and on a
    fresh batch of the new task before any update (`post`); feature metrics every
    `metrics_every` updates. Observes only. `preset` fills in a named set of these values
    (MONITOR_PRESETS) below the user's file and overrides."""

    enabled: bool = False
    preset: str = ""  # "" | he2025 (MONITOR_PRESETS: He et al. 2025's measurement settings)
    # samples per measured batch (a seeded subsample; a probe rollout)
    batch_size: int = field(default=256, metadata=at_least(1))
    # Hessian eigenvalues, algebraically largest first
    top_k: int = field(default=20, metadata=at_least(1))
    method: str = "lanczos"  # lanczos (fixed steps, full re-orthogonalisation) | eigsh (ARPACK)
    # Hessian-vector products for the top-k (>= top_k; method=lanczos)
    lanczos_steps: int = field(default=80, metadata=at_least(1))
    # relative residual of each Ritz pair (method=eigsh)
    eigsh_tol: float = field(default=1e-3, metadata=factor())
    # spectral density by stochastic Lanczos quadrature:
    density_probes: int = field(default=3, metadata=at_least(1))
    # density_probes x density_steps Hessian-vector products
    density_steps: int = field(default=25, metadata=at_least(1))
    # Hutchinson probes for the trace, off the top-k's Krylov space
    trace_probes: int = field(default=10, metadata=at_least(1))
    # the relative ε of eps_rank_rel: eigenvalues above eps·λmax
    eps: float = field(default=0.01, metadata=factor())
    # τ-trainability: share of the density above tau·λmax
    tau: float = field(default=0.01, metadata=factor())
    # He et al. 2025's ε-rank (eps_rank_he2025/<ε>: % of their density outside [-ε, ε]) at each
    he2025_eps: list[float] = field(
        default_factory=lambda: [0.01, 0.02, 0.04, 0.08, 0.1, 0.2, 0.5, 1.0],
        metadata=positive(each=True))
    density_kernel: str = "relative"  # smoothed density plots: relative (σ 1% of the span) | he2025
    pre_batch: str = "fresh"  # pre: fresh (a rollout with the current parameters) | last (batch)
    ggn: bool = True  # Gauss-Newton top-k (same method as the Hessian's)
    # its Lanczos steps (>= top_k): its top 10 converge faster than H's
    ggn_steps: int = field(default=40, metadata=at_least(1))
    kfac: bool = True  # KFAC factors of every layer: ranks, the λ(A)·μ(G) spectrum
    jacobians: bool = True  # plasticity/*: singular values of each block's input-output Jacobian
    ntk: bool = True  # plasticity/*: rank of the empirical NTK Gram matrix on ntk_samples obs
    ntk_samples: int = field(default=32, metadata=at_least(1))
    # also measure every N env steps (0: only at task boundaries)
    every_steps: int = field(default=0, metadata=at_least(0))
    # gradient updates between plasticity/* metrics (0: never)
    metrics_every: int = field(default=500, metadata=at_least(0))
    float64: bool = False  # Hessian products in double precision (~2x slower)
    # torch threads while measuring (0: the run's); see docs/monitor.md's cost note
    threads: int = field(default=1, metadata=at_least(0))
    # the monitor's own RNG: subsamples, probe rollouts, Lanczos starts
    seed: int = field(default=0, metadata=seed_range())


# monitor.preset: values between the schema's defaults and the user's file and overrides.
MONITOR_PRESETS = {
    # He et al. 2025's measurement (lop-jax ppo_nonstationary.hessian_computation): one probe,
    # Lanczos order 100, their density on 10,000 points, a fresh rollout with the current
    # parameters (1000 steps there; 1024 samples, a multiple of the usual num_envs, here).
    "he2025": {"density_probes": 1, "density_steps": 100, "lanczos_steps": 100,
               "density_kernel": "he2025", "batch_size": 1024, "pre_batch": "fresh"},
}

CHOICES = {
    "method": ("lanczos", "eigsh"),
    "preset": ("", *MONITOR_PRESETS),
    "density_kernel": ("relative", "he2025"),
    "pre_batch": ("fresh", "last"),
}


def check_monitor_config(monitor) -> None:
    """The checks beyond each field's declared range (agents.errors.check_ranges, run by the run
    config's validate): he2025_eps's values distinct, the Lanczos steps at least top_k."""
    eps = list(monitor.he2025_eps)
    if not eps or min(eps) <= 0 or len({f"{e:g}" for e in eps}) < len(eps):
        raise ConfigError(f"monitor.he2025_eps must be a non-empty list of distinct positive "
                          f"numbers, got {eps}")
    for key in ("lanczos_steps", "ggn_steps"):
        if monitor[key] < monitor.top_k:
            raise ConfigError(f"monitor.{key} ({monitor[key]}) must be at least monitor.top_k "
                              f"({monitor.top_k})")
