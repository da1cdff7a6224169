"""Config -> objects: the episode length, the policy's dtype and seeding, the settings built from sections."""

from __future__ import annotations

import pytest
import torch

from metarl import build
from metarl.config import load_config
from metarl.errors import ConfigError


def test_horizon_defaults_to_the_registered_episode_length_and_reports_an_override() -> None:
    config = load_config(None)
    assert config.env.horizon is None
    assert build.horizon(config.env) == 100  # metarl/Navigation2D-v0 registers max_episode_steps=100
    assert build.horizon_notice(config.env) is None
    longer = load_config(None, ["env.horizon=150"])
    assert build.horizon(longer.env) == 150
    notice = build.horizon_notice(longer.env)
    assert notice is not None and "env.horizon=150" in notice and "max_episode_steps=100" in notice
    assert build.horizon_notice(load_config(None, ["env.horizon=100"]).env) is None


def test_unknown_env_id_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="env.id"):
        build.horizon(load_config(None, ["env.id=metarl/NoSuchEnv-v0"]).env)


def test_policy_dtype_and_seed_come_from_the_config() -> None:
    a = build.build_policy(load_config(None, ["train.dtype=float64", "train.seed=3"]), 2, 2)
    b = build.build_policy(load_config(None, ["train.dtype=float64", "train.seed=3"]), 2, 2)
    c = build.build_policy(load_config(None, ["train.seed=4"]), 2, 2)
    assert all(p.dtype == torch.float64 for p in a.parameters())
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert next(c.parameters()).dtype == torch.float32
    assert not torch.equal(a.layers[0].weight.float(), c.layers[0].weight)


def test_settings_are_built_from_their_sections() -> None:
    config = load_config(
        None, ["maml.inner_lr=0.3", "maml.inner_estimator=lvc", "outer.max_kl=0.02", "outer.curvature=fisher"]
    )
    adaptation = build.adaptation_settings(config.maml)
    assert (adaptation.inner_lr, adaptation.inner_estimator) == (0.3, "lvc")
    trpo = build.trpo_settings(config.outer)
    assert (trpo.max_kl, trpo.curvature) == (0.02, "fisher")


def test_iteration_rngs_depend_only_on_seed_and_iteration() -> None:
    a_np, a_t = build.iteration_rngs(0, 5)
    b_np, b_t = build.iteration_rngs(0, 5)
    c_np, _ = build.iteration_rngs(0, 6)
    assert a_np.integers(1 << 30) == b_np.integers(1 << 30)
    assert torch.equal(torch.rand(3, generator=a_t), torch.rand(3, generator=b_t))
    assert build.iteration_rngs(0, 5)[0].integers(1 << 30) != c_np.integers(1 << 30)
