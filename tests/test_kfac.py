"""KFAC factors against their definition, and against the exact GGN where KFAC is exact."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analysis.spectral.kfac import kfac_factors


def squared_error(targets):
    """Batch mean of per-sample summed squared errors: per-sample output Hessian is 2 I."""
    return lambda outputs: ((outputs - targets) ** 2).flatten(1).sum(1).mean()


def with_ones(x):
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)


def dense_ggn_block(model, layer_name, x, loss_on_outputs):
    """Exact GGN block J^T H_out J of one Linear layer for its row-major ``[W | b]``."""
    params = {name: p.detach() for name, p in model.named_parameters()}
    weight, bias = params[f"{layer_name}.weight"], params[f"{layer_name}.bias"]
    combined = torch.cat([weight, bias[:, None]], dim=1)

    def outputs_of(wb):
        swapped = {**params, f"{layer_name}.weight": wb[:, :-1], f"{layer_name}.bias": wb[:, -1]}
        return torch.func.functional_call(model, swapped, (x,))

    outputs = outputs_of(combined)
    jacobian = torch.func.jacrev(outputs_of)(combined).reshape(outputs.numel(), -1)
    output_hessian = torch.func.jacrev(torch.func.jacrev(loss_on_outputs))(outputs)
    output_hessian = output_hessian.reshape(outputs.numel(), outputs.numel())
    return jacobian.T @ output_hessian @ jacobian


@pytest.fixture
def linear_problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2)).double()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    return model, x, y


def test_linear_empirical_factors_match_definition(linear_problem):
    model, x, y = linear_problem
    factors = kfac_factors(model, x, squared_error(y), fisher="empirical")["0"]
    a = with_ones(x)
    g = 2 * (model(x).detach() - y)  # per-sample gradient of ||s - y||^2
    torch.testing.assert_close(factors.activation_factor, a.T @ a / 5)
    torch.testing.assert_close(factors.gradient_factor, g.T @ g / 5)


def test_linear_ggn_gradient_factor_by_hand(linear_problem):
    model, x, y = linear_problem
    factors = kfac_factors(model, x, squared_error(y))["0"]
    torch.testing.assert_close(factors.gradient_factor, 2 * torch.eye(2, dtype=torch.float64))

    labels = torch.tensor([0, 1, 1, 0, 1])
    factors = kfac_factors(model, x, lambda out: F.cross_entropy(out, labels))["0"]
    p = model(x).detach().softmax(dim=1)
    expected = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]).mean(0)
    torch.testing.assert_close(factors.gradient_factor, expected)


def test_single_sample_mse_kfac_block_equals_exact_ggn_block(linear_problem):
    model, x, y = linear_problem
    loss = squared_error(y[:1])
    factors = kfac_factors(model, x[:1], loss)["0"]
    kfac_block = torch.kron(factors.gradient_factor, factors.activation_factor)
    torch.testing.assert_close(kfac_block, dense_ggn_block(model, "0", x[:1], loss))


def test_single_sample_kfac_is_exact_for_every_layer_of_an_mlp():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, label = torch.randn(1, 4, dtype=torch.float64), torch.tensor([2])

    def loss(out):
        return F.cross_entropy(out, label)

    factors = kfac_factors(model, x, loss)
    assert set(factors) == {"0", "2"}
    for name, layer_factors in factors.items():
        kfac_block = torch.kron(layer_factors.gradient_factor, layer_factors.activation_factor)
        torch.testing.assert_close(kfac_block, dense_ggn_block(model, name, x, loss))


def test_conv_factors_use_unfolded_patches_and_sum_over_positions():
    torch.manual_seed(2)
    conv = nn.Conv2d(2, 3, kernel_size=2).double()
    model = nn.Sequential(conv)
    x = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    y = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    # Patches by hand, channel-major like the weight: T = 4 positions per sample.
    patches = torch.stack(
        [x[:, :, i : i + 2, j : j + 2].reshape(4, -1) for i in range(2) for j in range(2)], dim=1
    )
    a = torch.cat([patches, torch.ones(4, 4, 1, dtype=torch.float64)], dim=2).reshape(16, -1)

    ggn = kfac_factors(model, x, squared_error(y))["0"]
    torch.testing.assert_close(ggn.activation_factor, a.T @ a / 16)
    # h_n = 2 I on every output, backpropagated to each of the 4 positions: G = 2 T I.
    torch.testing.assert_close(ggn.gradient_factor, 8 * torch.eye(3, dtype=torch.float64))

    empirical = kfac_factors(model, x, squared_error(y), fisher="empirical")["0"]
    g = 2 * (conv(x).detach() - y).flatten(2).transpose(1, 2).reshape(16, 3)
    torch.testing.assert_close(empirical.gradient_factor, g.T @ g / 4)


def test_eigenvalues_ranks_and_spectrum(linear_problem):
    model, _, y = linear_problem
    x = torch.randn(5, 1, dtype=torch.float64) * torch.tensor([[1.0, -2.0, 0.5]])  # rank 1
    factors = kfac_factors(model, x, squared_error(y), fisher="empirical", top_k=4)["0"]
    assert factors.activation_rank == 2  # the inputs span one direction, the ones column another
    assert factors.gradient_rank == 2
    full = torch.linalg.eigvalsh(torch.kron(factors.gradient_factor, factors.activation_factor))
    torch.testing.assert_close(factors.spectrum, full.flip(0)[:4])
    expected_a = torch.linalg.eigvalsh(factors.activation_factor).flip(0)
    torch.testing.assert_close(factors.activation_eigenvalues, expected_a)


class ActorCritic(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU())
        self.policy = nn.Linear(8, 3)
        self.value = nn.Linear(8, 1)

    def forward(self, x):
        features = self.trunk(x)
        return self.policy(features), self.value(features)


def actor_critic_loss(outputs):
    logits, value = outputs
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long)) + (value**2).mean()


@pytest.mark.parametrize("fisher", ["ggn", "empirical"])
def test_tuple_outputs_named_layers_and_model_untouched(fisher):
    torch.manual_seed(3)
    model = ActorCritic().train()
    state = {name: t.clone() for name, t in model.state_dict().items()}
    x = torch.randn(6, 4)
    with torch.no_grad():
        factors = kfac_factors(model, x, actor_critic_loss, ["trunk.0", "value"], fisher=fisher)
    assert set(factors) == {"trunk.0", "value"}
    reordered = kfac_factors(model, x, actor_critic_loss, ["value", "trunk.0"], fisher=fisher)
    for name in factors:
        torch.testing.assert_close(reordered[name].gradient_factor, factors[name].gradient_factor)
    assert factors["value"].gradient_factor.shape == (1, 1)
    assert factors["trunk.0"].activation_factor.shape == (5, 5)
    assert model.training
    for name, tensor in model.state_dict().items():  # BatchNorm running stats included
        assert torch.equal(tensor, state[name]), name
    assert all(p.grad is None for p in model.parameters())


def test_unsupported_layers_are_clear_errors():
    model = ActorCritic()
    with pytest.raises(ValueError, match="trunk.1"):
        kfac_factors(model, torch.randn(2, 4), actor_critic_loss, ["trunk.1"])
    grouped = nn.Sequential(nn.Conv2d(2, 2, kernel_size=1, groups=2))
    with pytest.raises(ValueError, match="groups=1"):
        kfac_factors(grouped, torch.randn(2, 2, 3, 3), lambda out: out.mean())
