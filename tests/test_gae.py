"""GAE against an independent computation: the definition as a discounted sum of TD errors."""

import numpy as np
import pytest
import torch

from agents.ppo import compute_gae


def gae_by_definition(rewards, values, starts, next_value, next_start, gamma, lam):
    """A_t = sum_l (gamma*lam)^l delta_{t+l} until the episode ends; per env, no recursion."""
    steps, envs = rewards.shape
    values_ext = np.vstack([values, next_value[None]])
    starts_ext = np.vstack([starts, next_start[None]])
    adv = np.zeros_like(rewards)
    for e in range(envs):
        for t in range(steps):
            total, weight = 0.0, 1.0
            for u in range(t, steps):
                alive = 1.0 - starts_ext[u + 1, e]  # does obs u+1 continue u's episode?
                delta = rewards[u, e] + gamma * values_ext[u + 1, e] * alive - values[u, e]
                total += weight * delta
                if not alive:
                    break
                weight *= gamma * lam
            adv[t, e] = total
    return adv


@pytest.mark.parametrize("as_array", [np.asarray, torch.as_tensor], ids=["numpy", "torch"])
def test_gae_matches_definition(as_array):
    rng = np.random.default_rng(0)
    steps, envs, gamma, lam = 9, 3, 0.97, 0.9
    rewards = rng.normal(size=(steps, envs)).astype(np.float32)
    values = rng.normal(size=(steps, envs)).astype(np.float32)
    starts = (rng.random((steps, envs)) < 0.25).astype(np.float32)
    next_value = rng.normal(size=envs).astype(np.float32)
    next_start = np.array([1.0, 0.0, 1.0], dtype=np.float32)
    adv, ret = compute_gae(*map(as_array, (rewards, values, starts, next_value, next_start)),
                           gamma, lam)
    adv, ret = np.asarray(adv), np.asarray(ret)
    expected = gae_by_definition(rewards, values, starts, next_value, next_start, gamma, lam)
    np.testing.assert_allclose(adv, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, expected + values, rtol=1e-5, atol=1e-5)


def test_gae_lambda_one_is_discounted_return_minus_value():
    rewards = np.array([[1.0], [2.0], [3.0]], dtype=np.float32)
    values = np.array([[0.5], [0.1], [0.2]], dtype=np.float32)
    starts = np.zeros((3, 1), dtype=np.float32)
    adv, ret = compute_gae(rewards, values, starts, np.array([10.0], dtype=np.float32),
                           np.array([0.0], dtype=np.float32),
                           gamma=0.5, lam=1.0)
    expected_returns = [1 + 0.5 * 2 + 0.25 * 3 + 0.125 * 10, 2 + 0.5 * 3 + 0.25 * 10, 3 + 5.0]
    np.testing.assert_allclose(ret[:, 0], expected_returns, rtol=1e-6)
