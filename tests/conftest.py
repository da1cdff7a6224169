"""Shared fixtures: small float64 policies and synthetic episode blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metarl.advantages import process
from metarl.episodes import Episodes
from metarl.policy import GaussianMLPPolicy


@pytest.fixture
def tiny_policy() -> GaussianMLPPolicy:
    """A 2-3-2 tanh policy in float64, seeded."""
    policy = GaussianMLPPolicy(2, 2, (3,), "tanh", init_std=0.7).double()
    policy.reset_parameters(torch.Generator().manual_seed(0))
    return policy


def random_episodes(n: int, b: int, t: int, seed: int, obs_dim: int = 2, act_dim: int = 2) -> Episodes:
    """Random float64 episodes with ragged lengths (some episodes terminate early), advantages attached."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(t, n, b, obs_dim, generator=g, dtype=torch.float64)
    act = torch.randn(t, n, b, act_dim, generator=g, dtype=torch.float64)
    rew = torch.randn(t, n, b, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, t + 1, (n, b), generator=g)
    mask = (torch.arange(t).view(t, 1, 1) < lengths.unsqueeze(0)).double()
    return process(Episodes(obs, act, rew * mask, mask), gamma=0.9, gae_lambda=0.95, normalize=True)


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded numpy generator."""
    return np.random.default_rng(0)
