"""The sampler: native and generic vector paths, stacked parameters, thread scoping, failing envs named."""

from __future__ import annotations

import gymnasium
import metarl.envs  # noqa: F401
import numpy as np
import pytest
import torch
from metarl.envs.base import check_task_env
from metarl.envs.navigation import Navigation2DEnv

from metarl.errors import ConfigError, EnvError
from metarl.policy import GaussianMLPPolicy, stack_params
from metarl.sampler import Sampler, make_task_env


def test_native_and_generic_sampler_paths_agree(rng: np.random.Generator) -> None:
    policy = GaussianMLPPolicy(2, 2, (8,))
    tasks = Navigation2DEnv().sample_tasks(3, rng)
    blocks = []
    for vectorization in ("native", "sync"):
        sampler = Sampler("metarl/Navigation2D-v0", 3, 2, 10, vectorization=vectorization)
        blocks.append(
            sampler.collect(policy, policy.params(), tasks, np.random.default_rng(1), torch.Generator().manual_seed(2))
        )
        sampler.close()
    for name in ("observations", "actions", "rewards", "mask"):
        torch.testing.assert_close(getattr(blocks[0], name), getattr(blocks[1], name))


def test_sampler_policy_threads_are_scoped_to_collect(rng: np.random.Generator) -> None:
    """Forwards run on ``policy_threads``; the caller's torch thread count is restored, also on error."""
    policy = GaussianMLPPolicy(2, 2, (8,))
    tasks = Navigation2DEnv().sample_tasks(2, rng)
    sampler = Sampler("metarl/Navigation2D-v0", 2, 2, 5, policy_threads=1)
    seen = []
    real_forward = policy.forward

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real_forward(*args, **kwargs)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        policy.forward = spy
        sampler.collect(policy, policy.params(), tasks, np.random.default_rng(0), torch.Generator().manual_seed(0))
        assert seen == [1] * 5 and torch.get_num_threads() == 2
        with pytest.raises(ValueError):
            sampler.collect(policy, policy.params(), tasks[:1], np.random.default_rng(0), torch.Generator())
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
        sampler.close()
    with pytest.raises(ValueError, match="policy_threads"):
        Sampler("metarl/Navigation2D-v0", 2, 2, 5, policy_threads=0)


def test_stacked_params_sample_like_shared_params(rng: np.random.Generator) -> None:
    policy = GaussianMLPPolicy(2, 2, (8,))
    tasks = Navigation2DEnv().sample_tasks(3, rng)
    sampler = Sampler("metarl/Navigation2D-v0", 3, 4, 12)
    shared = sampler.collect(policy, policy.params(), tasks, np.random.default_rng(1), torch.Generator().manual_seed(2))
    stacked_params = {k: v.detach() for k, v in stack_params(policy.params(), 3).items()}
    stacked = sampler.collect(policy, stacked_params, tasks, np.random.default_rng(1), torch.Generator().manual_seed(2))
    torch.testing.assert_close(shared.observations, stacked.observations)
    assert shared.observations.shape == (12, 3, 4, 2)


def test_env_without_task_protocol_is_rejected() -> None:
    with pytest.raises(TypeError, match="task protocol"):
        check_task_env(gymnasium.make("CartPole-v1"))
    with pytest.raises(ConfigError, match="cannot make environment"):
        make_task_env("metarl/DoesNotExist-v0", 10)


def test_env_that_raises_or_returns_nan_is_named(rng: np.random.Generator) -> None:
    """A failing env stops sampling with one EnvError line naming the env id, the task and the step."""
    policy = GaussianMLPPolicy(2, 2, (4,), "tanh")
    policy.reset_parameters(torch.Generator().manual_seed(0))
    sampler = Sampler("metarl/Navigation2D-v0", 2, 2, 5, vectorization="sync")
    tasks = Navigation2DEnv().sample_tasks(2, rng)

    def raising_step(self, action):  # type: ignore[no-untyped-def]
        raise RuntimeError("simulator exploded")

    original = Navigation2DEnv.step
    Navigation2DEnv.step = raising_step  # type: ignore[method-assign]
    try:
        with pytest.raises(EnvError, match=r"metarl/Navigation2D-v0 raised in step .*task \{.*simulator exploded"):
            sampler.collect(policy, policy.params(), tasks, rng, torch.Generator().manual_seed(0))
    finally:
        Navigation2DEnv.step = original  # type: ignore[method-assign]

    def nan_step(self, action):  # type: ignore[no-untyped-def]
        obs, reward, terminated, truncated, info = original(self, action)
        return obs * np.nan, reward, terminated, truncated, info

    Navigation2DEnv.step = nan_step  # type: ignore[method-assign]
    try:
        with pytest.raises(EnvError, match=r"non-finite observation at episode step 1 \(task \{'goal_x'"):
            sampler.collect(policy, policy.params(), tasks, rng, torch.Generator().manual_seed(0))
    finally:
        Navigation2DEnv.step = original  # type: ignore[method-assign]
    sampler.close()
