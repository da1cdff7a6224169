"""Returns, GAE and the linear feature baseline against hand-computed cases."""

from __future__ import annotations

import torch

from metarl.advantages import baseline_features, discounted_returns, gae, linear_feature_baseline, normalize_per_task


def test_discounted_returns_hand_case_with_mask() -> None:
    rewards = torch.tensor([[1.0, 1.0], [2.0, 5.0], [3.0, 0.0]], dtype=torch.float64)  # [T=3, 2]
    mask = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]], dtype=torch.float64)  # second episode ends after t=1
    g = 0.5
    expected = torch.tensor([[1 + g * 2 + g * g * 3, 1 + g * 5], [2 + g * 3, 5.0], [3.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(discounted_returns(rewards, mask, g), expected)


def test_gae_hand_case_with_mask() -> None:
    r = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
    v = torch.tensor([[0.5], [1.0], [9.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0], [1.0], [0.0]], dtype=torch.float64)  # episode ends after t=1
    gamma, lam = 0.9, 0.8
    d1 = 2.0 - 1.0  # terminal: next value 0
    d0 = 1.0 + gamma * 1.0 - 0.5
    expected = torch.tensor([[d0 + gamma * lam * d1], [d1], [0.0]], dtype=torch.float64)
    torch.testing.assert_close(gae(r, v, mask, gamma, lam), expected)


def test_gae_lambda_one_is_returns_minus_baseline() -> None:
    g = torch.Generator().manual_seed(0)
    r = torch.randn(6, 2, 3, generator=g, dtype=torch.float64)
    v = torch.randn(6, 2, 3, generator=g, dtype=torch.float64)
    mask = torch.ones(6, 2, 3, dtype=torch.float64)
    mask[4:, 0, 1] = 0
    r = r * mask
    expected = (discounted_returns(r, mask, 0.95) - v) * mask
    torch.testing.assert_close(gae(r, v, mask, 0.95, 1.0), expected)


def test_linear_baseline_recovers_linear_target_per_task() -> None:
    g = torch.Generator().manual_seed(1)
    obs = torch.randn(8, 2, 4, 3, generator=g, dtype=torch.float64)
    mask = torch.ones(8, 2, 4, dtype=torch.float64)
    mask[5:, 1, 0] = 0
    features = baseline_features(obs, mask)
    w = torch.randn(2, features.shape[-1], generator=g, dtype=torch.float64)  # a different target per task
    target = torch.einsum("tnbf,nf->tnb", features, w)
    fitted = linear_feature_baseline(obs, target, mask, reg_coeff=1e-12)
    torch.testing.assert_close(fitted, target * mask, rtol=1e-6, atol=1e-6)


def test_linear_baseline_rank_deficient_is_finite() -> None:
    obs = torch.zeros(5, 2, 3, 2, dtype=torch.float64)  # constant observations: duplicated zero features
    returns = torch.ones(5, 2, 3, dtype=torch.float64)
    mask = torch.ones(5, 2, 3, dtype=torch.float64)
    mask[:, 1] = 0  # a task with no valid step at all
    fitted = linear_feature_baseline(obs, returns, mask)
    assert torch.isfinite(fitted).all()
    torch.testing.assert_close(fitted[:, 0], torch.ones(5, 3, dtype=torch.float64), rtol=1e-3, atol=1e-3)
    assert (fitted[:, 1] == 0).all()


def test_linear_baseline_more_features_than_samples_does_not_crash() -> None:
    """Ant-sized observations (105) with 2 short episodes: the Gram matrix is singular in float64 at ridge 1e-5."""
    g = torch.Generator().manual_seed(3)
    obs = torch.randn(10, 2, 2, 105, generator=g, dtype=torch.float64) * 10
    obs[..., :50] = 10.0  # saturated (clipped) features: duplicated columns of a huge scale
    returns = torch.randn(10, 2, 2, generator=g, dtype=torch.float64)
    mask = torch.ones(10, 2, 2, dtype=torch.float64)
    fitted = linear_feature_baseline(obs, returns, mask)
    assert torch.isfinite(fitted).all()
    assert (fitted - returns).abs().max() < 1.0  # over-parameterised: close to interpolating


def test_normalize_per_task_statistics() -> None:
    g = torch.Generator().manual_seed(2)
    adv = torch.randn(7, 3, 2, generator=g, dtype=torch.float64) * 5 + 3
    mask = torch.ones_like(adv)
    mask[3:, 0, 0] = 0
    out = normalize_per_task(adv, mask)
    for i in range(3):
        valid = out[:, i][mask[:, i] > 0]
        assert abs(valid.mean().item()) < 1e-10
        assert abs(valid.std(unbiased=False).item() - 1) < 1e-6
    assert (out[mask == 0] == 0).all()
