"""Same config and seed -> identical parameters and logged returns (CPU), for each agent."""

import pytest
import torch
from training import train_once


@pytest.mark.parametrize("path,overrides", [
    ("tiny.yaml", ("sequence.switch_every=512", "ppo.num_steps=32")),
    ("tiny_dqn.yaml", ("sequence.switch_every=512", "dqn.n_step=2", "dqn.double_dqn=true")),
], ids=["ppo", "dqn"])
def test_same_seed_same_parameters_and_returns(tiny_cfg, tmp_path, path, overrides):
    params_a, returns_a = train_once(tiny_cfg(*overrides, path=path), tmp_path / "a")
    params_b, returns_b = train_once(tiny_cfg(*overrides, path=path), tmp_path / "b")
    params_c, _ = train_once(tiny_cfg(*overrides, "seed=2", path=path), tmp_path / "c")
    assert returns_a and returns_a == returns_b
    for name in params_a:
        assert torch.equal(params_a[name], params_b[name]), name
    assert any(not torch.equal(params_a[n], params_c[n]) for n in params_a)
