"""Feature metrics against hand-computed examples."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from analysis.spectral.features import (
    active_fraction,
    dormant_mask,
    dormant_ratio,
    effective_rank,
    feature_norm,
    feature_ranks,
    jacobian_singular_values,
    ntk_gram,
    ntk_rank,
    srank,
    stable_rank,
)
from analysis.spectral.ranks import entropy_effective_rank
from analysis.spectral.units import unit_scores


def orthonormal_columns(rows: int, cols: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=generator, dtype=torch.float64))
    return q


@pytest.fixture
def rank_two_features():
    """``3 u1 v1^T + 1 u2 v2^T``: singular values exactly (3, 1)."""
    u, v = orthonormal_columns(10, 2, seed=0), orthonormal_columns(6, 2, seed=1)
    return u @ torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64)) @ v.T


def test_ranks_of_a_rank_two_matrix(rank_two_features):
    assert srank(rank_two_features, delta=0.01) == 2
    assert srank(rank_two_features, delta=0.3) == 1  # 3 / 4 of the mass already >= 0.7
    assert stable_rank(rank_two_features) == pytest.approx((9 + 1) / 9)
    p = torch.tensor([0.75, 0.25], dtype=torch.float64)
    assert effective_rank(rank_two_features) == pytest.approx(math.exp(-(p * p.log()).sum()))


def test_effective_rank_of_equal_singular_values_is_the_rank():
    features = 2.5 * orthonormal_columns(12, 4, seed=2)
    assert effective_rank(features) == pytest.approx(4.0)
    assert stable_rank(features) == pytest.approx(4.0)


def test_zero_features_have_rank_zero():
    zeros = torch.zeros(5, 3)
    assert (effective_rank(zeros), srank(zeros), stable_rank(zeros)) == (0.0, 0, 0.0)


@pytest.mark.parametrize("make", [lambda: torch.randn(20, 7).relu(), lambda: torch.zeros(5, 3)])
def test_feature_ranks_equal_the_three_separate_ranks(make):
    features = make()
    ranks = feature_ranks(features, delta=0.05)
    assert (ranks.effective, ranks.srank, ranks.stable) == (
        effective_rank(features), srank(features, delta=0.05), stable_rank(features))


def test_feature_norm_is_the_mean_per_sample_norm():
    assert feature_norm(torch.tensor([[3.0, 4.0], [0.0, 0.0]])) == pytest.approx(2.5)


def test_dormant_units_by_redo_score():
    # Mean |h| per unit: 0, 0.5, 1.5, 2.0 -> layer mean 1.0, so the scores equal them.
    dense = torch.tensor([[0.0, 0.5, -1.0, 2.0], [0.0, -0.5, 2.0, 2.0]])
    torch.testing.assert_close(unit_scores(dense), torch.tensor([0.0, 0.5, 1.5, 2.0]).double())
    assert dormant_mask(dense, tau=0.0).tolist() == [True, False, False, False]
    # A conv layer: channel 1 is silent at every position of every sample.
    conv = torch.ones(3, 2, 4, 4)
    conv[:, 1] = 0.0
    ratios = dormant_ratio({"dense": dense, "conv": conv}, taus=(0.0, 0.5, 1.0))
    assert ratios.per_layer["dense"] == {0.0: 0.25, 0.5: 0.5, 1.0: 0.5}  # tau is inclusive
    assert ratios.per_layer["conv"] == {0.0: 0.5, 0.5: 0.5, 1.0: 0.5}
    # Pooled over the 6 units: (1 + 1) / 6 at tau = 0, (2 + 1) / 6 at 0.5 and 1.0.
    assert ratios.overall == pytest.approx({0.0: 2 / 6, 0.5: 3 / 6, 1.0: 3 / 6})


def test_all_zero_layer_is_entirely_dormant():
    assert dormant_ratio({"dead": torch.zeros(4, 3)}).overall == {0.0: 1.0, 0.025: 1.0, 0.1: 1.0}


def test_relu_of_symmetric_inputs_is_half_active():
    x = torch.randn(16, 8)
    assert active_fraction(torch.relu(torch.cat([x, -x]))) == 0.5


def orthogonal_linear(rows: int, cols: int, seed: int) -> nn.Linear:
    layer = nn.Linear(cols, rows, bias=False)
    with torch.no_grad():
        matrix = orthonormal_columns(max(rows, cols), min(rows, cols), seed)
        layer.weight.copy_(matrix if rows >= cols else matrix.T)
    return layer


@pytest.mark.parametrize("method", ["exact", "estimate"])
@pytest.mark.parametrize("shape", [(8, 8), (5, 9), (9, 5)])
def test_orthogonal_layer_is_an_isometry(method, shape):
    layer = orthogonal_linear(*shape, seed=3)
    stats = jacobian_singular_values(layer, torch.randn(4, shape[1]), method=method)
    assert stats == pytest.approx({"mean": 1.0, "min": 1.0, "max": 1.0, "share_in_band": 1.0})


@pytest.mark.parametrize("method", ["exact", "estimate"])
def test_relu_zeroes_the_singular_values_of_inactive_units(method):
    block = nn.Sequential(nn.Linear(4, 4, bias=False), nn.ReLU())
    with torch.no_grad():
        block[0].weight.copy_(torch.eye(4))
    inputs = torch.tensor([[1.0, -1.0, 2.0, -2.0], [-3.0, 1.0, -1.0, 0.5]])  # two units fire
    stats = jacobian_singular_values(block, inputs, method=method)
    # J = diag(relu'(x)): singular values (1, 1, 0, 0) for every sample.
    assert stats == pytest.approx({"mean": 0.5, "min": 0.0, "max": 1.0, "share_in_band": 0.5})


def test_conv_jacobian_estimate_finds_the_exact_extremes():
    torch.manual_seed(4)
    block = nn.Sequential(nn.Conv2d(1, 2, kernel_size=2), nn.Tanh())
    inputs = torch.randn(3, 1, 3, 3)
    exact = jacobian_singular_values(block, inputs)  # auto: small enough to be exact
    # With as many steps as the Gram dimension (8), the Ritz values are the eigenvalues.
    estimate = jacobian_singular_values(block, inputs, method="estimate", num_steps=8)
    assert estimate["max"] == pytest.approx(exact["max"], rel=1e-4)
    assert estimate["min"] == pytest.approx(exact["min"], rel=1e-3, abs=1e-5)


def linear_model_fn(params, x):
    return x @ params["weight"].T


def test_ntk_of_a_linear_model_is_the_input_gram():
    x = torch.randn(5, 2, dtype=torch.float64) @ torch.randn(2, 4, dtype=torch.float64)  # rank 2
    params = {"weight": torch.randn(3, 4, dtype=torch.float64)}
    # d sum_o (W x)_o / dW = 1 x^T, so K = 3 X X^T; per output K = I_3 (x) X X^T.
    torch.testing.assert_close(ntk_gram(linear_model_fn, params, x), 3 * x @ x.T)
    assert ntk_rank(linear_model_fn, params, x) == 2
    assert ntk_rank(linear_model_fn, params, x, per_output=True) == 6


def test_metrics_leave_the_model_untouched():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)).train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    x = torch.randn(7, 4)
    jacobian_singular_values(model[:2], x, method="exact")
    jacobian_singular_values(model[:2], x, method="estimate", num_steps=4)

    def model_fn(params, inputs):
        return torch.func.functional_call(model, params, (inputs,))

    ntk_rank(model_fn, dict(model.named_parameters()), x, per_output=True)
    assert model.training
    for name, p in model.named_parameters():
        assert p.grad is None and torch.equal(p, before[name])


def test_one_effective_rank_formula_for_tensors_arrays_and_losses():
    values = [3.0, 1.0, 0.0, 0.5]
    p = torch.tensor([3.0, 1.0, 0.5], dtype=torch.float64) / 4.5
    expected = math.exp(-(p * p.log()).sum())
    as_tensor = entropy_effective_rank(torch.tensor(values, dtype=torch.float64))
    as_array = entropy_effective_rank(np.array(values))
    assert isinstance(as_array, np.floating) and float(as_tensor) == pytest.approx(expected)
    assert float(as_array) == pytest.approx(expected)
    assert float(entropy_effective_rank(np.zeros(3))) == 0.0  # metrics: no mass, no rank
    zeros = torch.zeros(3, requires_grad=True)
    floored = entropy_effective_rank(zeros, floor=1e-12)  # a loss: finite, and a finite gradient
    (grad,) = torch.autograd.grad(floored, zeros)
    assert floored.item() == 1.0 and torch.isfinite(grad).all()
