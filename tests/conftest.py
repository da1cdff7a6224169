"""Shared fixtures (helpers that are not fixtures live in tests/helpers.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from metarl.policy import GaussianMLPPolicy


@pytest.fixture
def tiny_policy() -> GaussianMLPPolicy:
    """A 2-3-2 tanh policy in float64, seeded."""
    policy = GaussianMLPPolicy(2, 2, (3,), "tanh", init_std=0.7).double()
    policy.reset_parameters(torch.Generator().manual_seed(0))
    return policy


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded numpy generator."""
    return np.random.default_rng(0)


@pytest.fixture
def saved_figures(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """Every matplotlib figure saved during the test (still inspectable after it is closed)."""
    figures: list[Figure] = []
    original = Figure.savefig

    def record(self: Figure, *args: Any, **kwargs: Any) -> None:
        figures.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    return figures
