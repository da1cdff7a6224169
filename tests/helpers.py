"""Helpers shared by several test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import torch

from metarl.advantages import process
from metarl.episodes import Episodes
from metarl.maml import AdaptationSettings
from metarl.policy import Params, flatten, unflatten


def random_episodes(n: int, b: int, t: int, seed: int, obs_dim: int = 2, act_dim: int = 2) -> Episodes:
    """Random float64 episodes with ragged lengths (some episodes terminate early), advantages attached."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(t, n, b, obs_dim, generator=g, dtype=torch.float64)
    act = torch.randn(t, n, b, act_dim, generator=g, dtype=torch.float64)
    rew = torch.randn(t, n, b, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, t + 1, (n, b), generator=g)
    mask = (torch.arange(t).view(t, 1, 1) < lengths.unsqueeze(0)).double()
    return process(Episodes(obs, act, rew * mask, mask), gamma=0.9, gae_lambda=0.95, normalize=True)


def settings(k: int, first_order: bool = False, estimator: str = "log") -> AdaptationSettings:
    """Inner-loop settings for the float64 gradient tests: lr 0.5, gamma 0.9, lambda 0.95, normalised."""
    return AdaptationSettings(0.5, k, first_order, 0.9, 0.95, True, estimator)


def finite_difference_grad(f, params: Params, eps: float = 1e-6) -> torch.Tensor:
    """Central finite differences of a scalar function of the flattened parameters."""
    flat = flatten(params).detach()
    grad = torch.zeros_like(flat)
    for i in range(flat.numel()):
        e = torch.zeros_like(flat)
        e[i] = eps
        plus = f({k: v.requires_grad_() for k, v in unflatten(flat + e, params).items()})
        minus = f({k: v.requires_grad_() for k, v in unflatten(flat - e, params).items()})
        grad[i] = (plus.item() - minus.item()) / (2 * eps)
    return grad
