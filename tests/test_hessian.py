"""Hessian/GGN spectra against dense float64 matrices from torch.func on small nets."""

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from torch import nn

from analysis.spectral.hessian import (
    GGNOperator,
    HessianOperator,
    SymmetricOperator,
    density_grid,
    density_mass_above,
    eps_rank_he2025,
    epsilon_rank,
    flatten_params,
    gaussian_density,
    ggn_top_eigenvalues,
    he2025_density,
    hessian_trace,
    lanczos_top_and_trace,
    negative_curvature_fraction,
    operator_top_eigenvalues,
    operator_trace,
    spectral_density,
    spectral_effective_rank,
    tau_trainability,
    top_eigenvalues,
    unflatten_params,
)

BATCH, IN, HIDDEN, OUT = 32, 8, 16, 4  # 212 parameters: more than the 60 Lanczos steps


def _dtype_of(params):
    return next(iter(params.values())).dtype


def make_problem(loss_name: str, seed: int = 0):
    """A tanh MLP, its parameters and a loss closure that follows the parameters' dtype."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(IN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, OUT))
    x = torch.randn(BATCH, IN, generator=generator)
    labels = torch.randint(0, OUT, (BATCH,), generator=generator)
    targets = torch.randn(BATCH, OUT, generator=generator)
    losses = {
        "cross_entropy": lambda out, dt: F.cross_entropy(out, labels),
        "mse_builtin": lambda out, dt: F.mse_loss(out, targets.to(dt)),
        "mse_by_hand": lambda out, dt: ((out - targets.to(dt)) ** 2).mean(),
    }
    loss_on_outputs = losses[loss_name]

    def output_fn(params):
        return torch.func.functional_call(model, params, (x.to(_dtype_of(params)),))

    def loss_fn(params):
        return loss_on_outputs(output_fn(params), _dtype_of(params))

    return model, dict(model.named_parameters()), output_fn, loss_on_outputs, loss_fn


def dense_hessian_of(fn):
    """``torch.func.hessian`` as reverse-over-reverse: same matrix, without the seconds-long
    one-off load of forward-mode decompositions."""
    return torch.func.jacrev(torch.func.jacrev(fn))


def dense_hessian(loss_fn, params) -> torch.Tensor:
    like = {name: p.detach().double() for name, p in params.items()}
    flat = flatten_params(like)
    return dense_hessian_of(lambda v: loss_fn(unflatten_params(v, like)))(flat)


def dense_ggn(output_fn, loss_on_outputs, params) -> torch.Tensor:
    like = {name: p.detach().double() for name, p in params.items()}
    flat = flatten_params(like)
    outputs = output_fn(like)
    jacobian = torch.func.jacrev(lambda v: output_fn(unflatten_params(v, like)))(flat)
    jacobian = jacobian.reshape(outputs.numel(), -1)
    output_hessian = dense_hessian_of(lambda o: loss_on_outputs(o, torch.float64))(outputs)
    output_hessian = output_hessian.reshape(outputs.numel(), outputs.numel())
    return jacobian.T @ output_hessian @ jacobian


def descending_eigenvalues(matrix: torch.Tensor) -> np.ndarray:
    return torch.linalg.eigvalsh(matrix).flip(0).numpy()


LOSSES = ["cross_entropy", "mse_builtin", "mse_by_hand"]


@pytest.mark.parametrize("loss_name", LOSSES)
def test_hessian_vector_products_match_dense(loss_name):
    _, params, _, _, loss_fn = make_problem(loss_name)
    hessian = dense_hessian(loss_fn, params)
    operator = HessianOperator(loss_fn, params, dtype=torch.float64)
    v = torch.randn(operator.dim, dtype=torch.float64)
    torch.testing.assert_close(operator.matvec(v), hessian @ v, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["lanczos", "eigsh"])
@pytest.mark.parametrize("loss_name", LOSSES)
def test_top_eigenvalues_match_dense_float64(loss_name, method):
    _, params, _, _, loss_fn = make_problem(loss_name)
    expected = descending_eigenvalues(dense_hessian(loss_fn, params))[:5]
    found = top_eigenvalues(loss_fn, params, k=5, method=method, tol=1e-10, dtype=torch.float64)
    np.testing.assert_allclose(found, expected, rtol=1e-4)


def test_top_eigenvalues_float32_default_is_close():
    _, params, _, _, loss_fn = make_problem("cross_entropy")
    expected = descending_eigenvalues(dense_hessian(loss_fn, params))[:3]
    np.testing.assert_allclose(top_eigenvalues(loss_fn, params, k=3), expected, rtol=1e-3)


class DiagonalOperator(SymmetricOperator):
    def __init__(self, diagonal):
        self.diagonal = torch.as_tensor(diagonal, dtype=torch.float64)
        self.dim, self.dtype, self.device = len(diagonal), torch.float64, torch.device("cpu")

    def matvec(self, vector):
        return self.diagonal * vector


@pytest.mark.parametrize("method", ["lanczos", "eigsh"])
def test_repeated_eigenvalues_are_found_with_multiplicity(method):
    # One Krylov space sees a repeated eigenvalue once; Lanczos must restart to find the copies.
    diagonal = [5.0, 5.0, 5.0, 3.0, -7.0] + [0.0] * 40 + list(np.linspace(0.1, 1.0, 20))
    found = operator_top_eigenvalues(DiagonalOperator(diagonal), k=4, method=method, tol=1e-10)
    np.testing.assert_allclose(found, [5.0, 5.0, 5.0, 3.0], rtol=1e-8)


@pytest.mark.parametrize("loss_name", ["cross_entropy", "mse_builtin"])
def test_ggn_matches_dense_jacobian_product(loss_name):
    _, params, output_fn, loss_on_outputs, _ = make_problem(loss_name)
    ggn = dense_ggn(output_fn, loss_on_outputs, params)

    def loss_on(outputs):
        return loss_on_outputs(outputs, outputs.dtype)

    operator = GGNOperator(output_fn, loss_on, params, dtype=torch.float64)
    v = torch.randn(operator.dim, dtype=torch.float64)
    torch.testing.assert_close(operator.matvec(v), ggn @ v, rtol=1e-10, atol=1e-12)
    found = ggn_top_eigenvalues(output_fn, loss_on, params, k=5, dtype=torch.float64)
    np.testing.assert_allclose(found, descending_eigenvalues(ggn)[:5], rtol=1e-4)


def test_hessian_trace_is_unbiased_within_five_standard_errors():
    _, params, _, _, loss_fn = make_problem("cross_entropy")
    hessian = dense_hessian(loss_fn, params)
    # Rademacher Hutchinson: Var[z^T H z] = 2 (||H||_F^2 - sum_i H_ii^2).
    variance = 2 * ((hessian**2).sum() - (hessian.diagonal() ** 2).sum())
    num_probes = 200
    tolerance = 5 * float(variance.sqrt()) / np.sqrt(num_probes)
    estimate = hessian_trace(loss_fn, params, num_probes=num_probes, dtype=torch.float64)
    assert abs(estimate - float(hessian.trace())) < tolerance


class DenseOperator(SymmetricOperator):
    def __init__(self, matrix):
        self.matrix = matrix
        self.dim, self.dtype, self.device = len(matrix), matrix.dtype, matrix.device

    def matvec(self, vector):
        return self.matrix @ vector


def test_krylov_deflated_trace_is_exact_on_the_krylov_space_and_beats_hutchinson():
    generator = torch.Generator().manual_seed(0)
    rotation, _ = torch.linalg.qr(torch.randn(200, 200, generator=generator, dtype=torch.float64))
    spectrum = torch.cat([torch.tensor([500.0, 200.0], dtype=torch.float64),
                          torch.rand(198, generator=generator, dtype=torch.float64)])
    operator = DenseOperator(rotation @ torch.diag(spectrum) @ rotation.T)
    exact = float(spectrum.sum())
    top, trace = lanczos_top_and_trace(operator, k=5, num_steps=200, num_probes=3)
    assert trace == pytest.approx(exact, rel=1e-10)  # the Krylov space is everything
    np.testing.assert_array_equal(top, operator_top_eigenvalues(operator, k=5, num_steps=200))
    # 20 Lanczos steps capture the two outliers, which carry almost all of Hutchinson's variance.
    deflated = np.array([lanczos_top_and_trace(operator, 2, 20, 10, seed)[1] for seed in range(20)])
    plain = np.array([operator_trace(operator, 10, seed) for seed in range(20)])
    rms = lambda estimates: np.sqrt(np.mean((estimates - exact) ** 2))  # noqa: E731
    assert rms(deflated) < 0.05 * rms(plain)
    assert abs(deflated.mean() - exact) < 4 * deflated.std() / np.sqrt(20)


def test_hessian_trace_is_deterministic_given_the_seed():
    _, params, _, _, loss_fn = make_problem("mse_by_hand")
    first = hessian_trace(loss_fn, params, num_probes=5, seed=3)
    assert hessian_trace(loss_fn, params, num_probes=5, seed=3) == first
    assert hessian_trace(loss_fn, params, num_probes=5, seed=4) != first


def test_spectral_density_is_a_quadrature_of_the_dense_spectrum():
    _, params, _, _, loss_fn = make_problem("cross_entropy")
    hessian = dense_hessian(loss_fn, params)
    eigenvalues = descending_eigenvalues(hessian)
    dim = hessian.shape[0]
    nodes, weights = spectral_density(
        loss_fn, params, num_probes=8, num_steps=30, seed=1, dtype=torch.float64
    )
    assert weights.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.all(weights >= 0)
    slack = 1e-9 * abs(eigenvalues).max()
    assert nodes.min() >= eigenvalues[-1] - slack and nodes.max() <= eigenvalues[0] + slack
    # The first moment is Hutchinson's estimate on the same probes, divided by the dimension.
    same_probes = hessian_trace(loss_fn, params, num_probes=8, seed=1, dtype=torch.float64)
    assert np.sum(weights * nodes) * dim == pytest.approx(same_probes, rel=1e-9)
    # The largest Ritz value converges to lambda_max within 30 steps.
    assert nodes.max() == pytest.approx(eigenvalues[0], rel=1e-6)


def test_gaussian_density_integrates_to_one():
    nodes, weights = np.array([-1.0, 0.0, 2.0]), np.array([0.2, 0.5, 0.3])
    grid, density = gaussian_density(nodes, weights, num_points=4001)
    assert np.sum(density) * (grid[1] - grid[0]) == pytest.approx(1.0, abs=1e-3)


def test_density_grid_spans_three_sigma_beyond_the_nodes():
    grid, sigma = density_grid(np.array([-1.0, 0.0, 3.0]), num_points=11)
    assert sigma == pytest.approx(0.04)
    assert (len(grid), grid[0], grid[-1]) == (11, pytest.approx(-1.12), pytest.approx(3.12))
    # One node: no span, so the width falls back to 0.1% of its magnitude (at least 1e-3).
    assert density_grid(np.array([50.0, 50.0]), 5)[1] == pytest.approx(0.05)
    assert density_grid(np.array([0.0]), 5)[1] == pytest.approx(1e-3)


def he2025_reference(draws, eps_values, grid_len=10_000):
    """He et al.'s density and ε-rank (lop-jax eigv_to_density, calculate_epsilon_hessian_rank)
    written out plainly: ``draws`` is a list of (nodes, weights) per Lanczos draw, each draw's
    weights normalised to 1 as theirs are. Returns (grid, density, ε-ranks in percent)."""
    low = np.mean([nodes.min() for nodes, _ in draws]) - 0.01
    high = np.mean([nodes.max() for nodes, _ in draws]) + 0.01
    grid = np.linspace(low, high, grid_len)
    variance = 1e-5 * max(1.0, high - low)  # passed as `sigma`, used as the variance
    per_draw = np.zeros((len(draws), grid_len))
    for i, (nodes, weights) in enumerate(draws):
        weights = weights / weights.sum()
        for j, x in enumerate(grid):
            kernel = np.exp(-((x - nodes) ** 2) / (2 * variance)) / np.sqrt(2 * np.pi * variance)
            per_draw[i, j] = np.sum(kernel * weights)
    density = per_draw.mean(axis=0)
    density = density / (density.sum() * (grid[1] - grid[0]))

    def trapezoid(y, x):  # over consecutive kept points: bridges a gap in x with one trapezoid
        return sum((x[k + 1] - x[k]) * (y[k] + y[k + 1]) / 2 for k in range(len(x) - 1))

    ranks = []
    for eps in eps_values:
        keep = [k for k in range(grid_len) if abs(grid[k]) > eps]
        ranks.append(100 * trapezoid(density[keep], grid[keep]) / trapezoid(density, grid))
    return grid, density, ranks


EPSILONS = (1e-3, 1e-2, 4e-2, 0.1, 0.3)


def test_he2025_density_and_eps_rank_match_their_formula_on_slq_and_exact_spectra():
    """On a small net's loss: SLQ output (3 probes, blocks of 30) and the dense float64 Hessian's
    exact eigenvalues with weights 1/n, against the plain re-implementation above."""
    _, params, _, _, loss_fn = make_problem("cross_entropy")
    exact = descending_eigenvalues(dense_hessian(loss_fn, params))
    nodes, weights, sizes = spectral_density(loss_fn, params, num_probes=3, num_steps=30, seed=1,
                                             dtype=torch.float64, return_sizes=True)
    assert sizes == [30, 30, 30]
    draws = [(nodes[i * 30:(i + 1) * 30], weights[i * 30:(i + 1) * 30]) for i in range(3)]
    grid, density, ranks = he2025_reference(draws, EPSILONS)
    for kwargs in ({"num_draws": 3}, {"draw_sizes": sizes}):
        ours_grid, ours = he2025_density(nodes, weights, **kwargs)
        np.testing.assert_allclose(ours_grid, grid, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(ours, density, rtol=1e-9, atol=1e-12 * density.max())
        for eps, expected in zip(EPSILONS, ranks):
            assert eps_rank_he2025(nodes, weights, eps, **kwargs) == pytest.approx(expected,
                                                                                   rel=1e-9)
    # One draw is not three: the grid then spans the pooled extremes, not their mean.
    assert he2025_density(nodes, weights)[0][0] == pytest.approx(nodes.min() - 0.01)
    assert grid[0] > nodes.min() - 0.01

    uniform = np.full(len(exact), 1 / len(exact))
    grid, density, ranks = he2025_reference([(exact, uniform)], EPSILONS)
    ours_grid, ours = he2025_density(exact, uniform)
    np.testing.assert_allclose(ours_grid, grid, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(ours, density, rtol=1e-9, atol=1e-12 * density.max())
    for eps, expected in zip(EPSILONS, ranks):
        assert eps_rank_he2025(exact, uniform, eps) == pytest.approx(expected, rel=1e-9)
    # Two-sided: the spectrum mirrored scores the same (its many negative eigenvalues, down to
    # -0.3, count as curvature); the two tails integrated apart count the eigenvalues outside
    # [-ε, ε], and the paper's number is that plus the trapezoid bridging the gap (7 points).
    assert eps_rank_he2025(-exact, uniform, 0.1) == pytest.approx(
        eps_rank_he2025(exact, uniform, 0.1), rel=1e-9)
    below, above = ours_grid < -0.1, ours_grid > 0.1
    tails = 100 * sum(np.trapezoid(ours[side], ours_grid[side]) for side in (below, above))
    assert tails == pytest.approx(100 * np.mean(np.abs(exact) > 0.1), abs=1)
    assert eps_rank_he2025(exact, uniform, 0.1) - tails == pytest.approx(7.5, abs=1)
    assert np.mean(exact > 0.1) < 0.6 * np.mean(np.abs(exact) > 0.1)
    # Enough probes estimate the exact spectrum's ε-rank (deterministic: float64, seeded).
    many = spectral_density(loss_fn, params, num_probes=20, num_steps=60, seed=1,
                            dtype=torch.float64)
    for eps in (1e-2, 0.1):
        assert eps_rank_he2025(*many, eps, num_draws=20) == pytest.approx(
            eps_rank_he2025(exact, uniform, eps), abs=5)


def test_he2025_eps_rank_on_known_spectra():
    n = 100
    uniform = np.full(n, 1 / n)
    # All at 0: their grid is [-0.01, 0.01] and the kernel's standard deviation 1e-5 ** 0.5.
    zeros = np.zeros(n)
    grid, density = he2025_density(zeros, uniform)
    assert (grid[0], grid[-1], len(grid)) == (-0.01, 0.01, 10_000)
    assert eps_rank_he2025(zeros, uniform, 0.02) == 0.0  # ε beyond the grid: nothing outside
    # Inside the grid the masked trapezoid rule also integrates the one trapezoid bridging
    # [-ε, ε] (their code does): at ε = 0.009 (2.85 kernel widths) that one is almost all of it.
    low, high = np.flatnonzero(grid < -0.009)[-1], np.flatnonzero(grid > 0.009)[0]
    bridge = (grid[high] - grid[low]) * (density[low] + density[high]) / 2
    tails = np.trapezoid(density[:low + 1], grid[:low + 1]) * 2
    total = np.trapezoid(density, grid)
    assert eps_rank_he2025(zeros, uniform, 0.009) == pytest.approx(
        100 * (bridge + tails) / total, rel=1e-9)
    assert 0.5 < 100 * bridge / total < 5 and 100 * tails / total < 0.5
    # All far from 0 (either sign): 100%.
    far = np.linspace(5.0, 10.0, n)
    assert eps_rank_he2025(far, uniform, 1.0) == pytest.approx(100.0, abs=1e-9)
    assert eps_rank_he2025(-far, uniform, 1.0) == pytest.approx(100.0, abs=1e-9)
    # Half at 0, half out: 50%; on both sides of 0, still 50% (two-sided).
    half = np.r_[np.zeros(n // 2), np.full(n // 2, 0.5)]
    assert eps_rank_he2025(half, uniform, 0.1) == pytest.approx(50.0, abs=0.1)
    both = np.r_[np.full(n // 4, -0.4), np.zeros(n // 2), np.full(n // 4, 0.4)]
    assert eps_rank_he2025(both, uniform, 0.1) == pytest.approx(50.0, abs=0.1)
    assert eps_rank_he2025(both, uniform, 0.001) == pytest.approx(100.0, abs=0.5)
    # Their grid ends 0.01 beyond the extremes: once it spans more than 10, the kernel is wider
    # than that (here 0.01 at ±5), the extreme nodes lose part of their mass off the grid and
    # the normalisation gives it to the rest.
    wide = 12.5 * both
    assert eps_rank_he2025(wide, uniform, 1.0) == pytest.approx(45.7, abs=0.1)


def test_he2025_draws_of_unequal_length_are_told_apart(monkeypatch):
    """A probe whose Krylov space ran out yields fewer nodes: equal blocks would mix draws."""
    import analysis.spectral.hessian as hessian

    first, second = np.array([-1.0, 0.0, 2.0, 6.0]), np.array([0.5, 3.0])
    nodes = np.r_[first, second]
    weights = np.r_[np.full(4, 0.5 / 4), np.full(2, 0.5 / 2)]  # each draw's sum to 1/2, as SLQ's
    with pytest.raises(ValueError, match="draw_sizes"):
        he2025_density(nodes, weights, num_draws=2)
    with pytest.raises(ValueError, match="draw_sizes"):
        he2025_density(nodes, weights, num_draws=4)
    grid, density = he2025_density(nodes, weights, draw_sizes=[4, 2])
    assert grid[0] == pytest.approx((-1.0 + 0.5) / 2 - 0.01)
    assert grid[-1] == pytest.approx((6.0 + 3.0) / 2 + 0.01)
    reference = he2025_reference([(first, weights[:4]), (second, weights[4:])], (0.1,))
    np.testing.assert_allclose(density, reference[1], rtol=1e-9, atol=1e-12 * density.max())
    assert eps_rank_he2025(nodes, weights, 0.1, draw_sizes=[4, 2]) == pytest.approx(
        reference[2][0], rel=1e-9)
    # The kernel product in blocks (forced small here) gives the same density.
    monkeypatch.setattr(hessian, "_KERNEL_BLOCK", 7)
    np.testing.assert_allclose(he2025_density(nodes, weights, draw_sizes=[4, 2])[1], density,
                               rtol=1e-12)


def test_density_grid_with_the_he2025_kernel():
    nodes = np.array([-1.0, 0.0, 3.0])
    grid, sigma = density_grid(nodes, kernel="he2025")
    assert (len(grid), grid[0], grid[-1]) == (10_000, pytest.approx(-1.01), pytest.approx(3.01))
    assert sigma == pytest.approx((1e-5 * 4.02) ** 0.5)
    assert density_grid(np.array([0.0, 0.1]), kernel="he2025")[1] == pytest.approx(1e-5 ** 0.5)
    grid, density = gaussian_density(nodes, np.array([0.2, 0.5, 0.3]), kernel="he2025")
    # Their grid ends 0.01 (1.6 sigma) beyond the extreme nodes: those lose their outer tail.
    lost = (0.2 + 0.3) * scipy.stats.norm.sf(0.01 / sigma)
    assert np.trapezoid(density, grid) == pytest.approx(1.0 - lost, abs=1e-4)
    with pytest.raises(ValueError, match="kernel"):
        density_grid(nodes, kernel="wide")


def test_spectrum_summaries_on_known_spectra():
    assert epsilon_rank(np.array([10.0, 5.0, 0.05, -1.0]), eps=0.01) == 2
    assert spectral_effective_rank(np.array([2.0, -2.0, 2.0])) == pytest.approx(3.0)
    assert spectral_effective_rank(np.array([4.0, 0.0, 0.0])) == pytest.approx(1.0)
    nodes, weights = np.array([-0.5, 0.0, 0.01, 1.0, 10.0]), np.array([0.1, 0.4, 0.2, 0.2, 0.1])
    assert negative_curvature_fraction(nodes, weights) == pytest.approx(0.1)
    near_zero = np.array([-1e-6, 10.0])
    assert negative_curvature_fraction(near_zero, np.array([0.9, 0.1])) == 0.0
    assert negative_curvature_fraction(near_zero, np.array([0.9, 0.1]), rtol=0) == 0.9
    assert density_mass_above(nodes, weights, 0.5) == pytest.approx(0.3)
    assert tau_trainability(nodes, weights, tau=0.05) == pytest.approx(0.3)  # above 0.5
    assert tau_trainability(nodes, weights, tau=0.005, relative=False) == pytest.approx(0.5)
    assert tau_trainability(nodes, weights, tau=0.05, lambda_max=100.0) == pytest.approx(0.1)


@pytest.mark.parametrize("training", [True, False])
def test_monitor_calls_leave_model_untouched(training):
    model, params, output_fn, loss_on_outputs, loss_fn = make_problem("mse_builtin")
    model.train(training)
    before = {name: p.detach().clone() for name, p in params.items()}

    def loss_on(outputs):
        return loss_on_outputs(outputs, outputs.dtype)

    with torch.no_grad():  # the monitor may be called from inside no_grad
        top_eigenvalues(loss_fn, params, k=3, num_steps=10)
    top_eigenvalues(loss_fn, params, k=3, method="eigsh")
    hessian_trace(loss_fn, params, num_probes=2)
    spectral_density(loss_fn, params, num_probes=2, num_steps=5)
    ggn_top_eigenvalues(output_fn, loss_on, params, k=3, num_steps=10, dtype=torch.float64)
    assert model.training is training
    for name, p in model.named_parameters():
        assert p.grad is None
        assert p.dtype == torch.float32
        assert torch.equal(p, before[name])
