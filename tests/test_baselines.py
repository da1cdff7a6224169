"""SB3 baselines and the benchmark: weight transfer, task-resampling and oracle envs (``module:env-id`` too),
the benchmark protocol and report, and ``metarl train/evaluate/benchmark`` end to end, failures included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3", reason="the baselines extra (pip install -e .[baselines]) is not installed")

import metarl.envs  # noqa: F401,E402  (registers the metarl/ envs)
from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv  # noqa: E402

from metarl.baselines import (  # noqa: E402
    BaselineError,
    SB3Settings,
    TaskObservationEnv,
    TaskResamplingWrapper,
    check_oracle,
    make_resampling_env,
    metarl_policy_from_sb3,
    oracle_config,
    read_cache_meta,
    register_oracle_env,
    sb3_policy_kwargs,
)
from metarl.benchmark import BenchmarkError, parse_methods  # noqa: E402
from metarl.config import PolicyConfig, load_config  # noqa: E402
from tests.third_party_env import GOAL_POINT, LABELLED_GOAL_POINT  # noqa: E402

NAV = "metarl/Navigation2D-v0"


def sb3_model(policy: PolicyConfig, env_id: str = NAV) -> PPO:
    env = DummyVecEnv([lambda: make_resampling_env(env_id, 10, {}, np.random.default_rng(0))])
    return PPO(
        "MlpPolicy", env, n_steps=16, batch_size=16, policy_kwargs=sb3_policy_kwargs(policy), seed=0, device="cpu"
    )


# --------------------------------------------------------------------------- SB3 <-> metarl


@pytest.mark.parametrize("activation,hidden", [("tanh", [16, 8]), ("relu", [12])])
def test_sb3_weights_give_identical_action_distributions(activation: str, hidden: list[int]) -> None:
    config = PolicyConfig(hidden_sizes=hidden, activation=activation, init_std=0.5)
    model = sb3_model(config)
    with torch.no_grad():  # make every parameter non-trivial, the log-std included
        g = torch.Generator().manual_seed(1)
        for p in model.policy.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    policy = metarl_policy_from_sb3(model.policy, config)
    obs = torch.randn(64, 2, generator=torch.Generator().manual_seed(2)) * 3
    with torch.no_grad():
        dist = model.policy.get_distribution(obs).distribution
        mean, log_std = policy(obs)
    torch.testing.assert_close(mean, dist.mean)
    torch.testing.assert_close(log_std.exp(), dist.stddev)
    torch.testing.assert_close(policy.log_std.detach(), model.policy.log_std.detach())


def test_sb3_initial_log_std_matches_the_config() -> None:
    config = PolicyConfig(hidden_sizes=[8], activation="tanh", init_std=0.3)
    policy = metarl_policy_from_sb3(sb3_model(config).policy, config)
    torch.testing.assert_close(policy.log_std.detach(), torch.full((2,), float(np.log(0.3))))


def test_transfer_rejects_a_mismatched_architecture() -> None:
    model = sb3_model(PolicyConfig(hidden_sizes=[8], activation="tanh"))
    with pytest.raises(BaselineError, match="activations"):
        metarl_policy_from_sb3(model.policy, PolicyConfig(hidden_sizes=[8], activation="relu"))
    with pytest.raises(BaselineError, match="does not match"):
        metarl_policy_from_sb3(model.policy, PolicyConfig(hidden_sizes=[9], activation="tanh"))


# --------------------------------------------------------------------------- environments


def test_resampling_wrapper_draws_a_new_task_each_reset_from_its_generator() -> None:
    def tasks(seed: int) -> list[dict]:
        env = TaskResamplingWrapper(gymnasium.make(NAV, max_episode_steps=5), np.random.default_rng(seed))
        drawn = []
        for _ in range(3):
            env.reset()
            drawn.append(dict(env.unwrapped.task))  # type: ignore[attr-defined]
        return drawn

    first = tasks(0)
    assert first == tasks(0) and first != tasks(1)
    assert len({tuple(t.values()) for t in first}) == 3
    expected = gymnasium.make(NAV).unwrapped.sample_tasks(1, np.random.default_rng(0))[0]  # type: ignore[attr-defined]
    assert first[0] == expected


def test_oracle_env_appends_the_task_and_samples_the_same_tasks() -> None:
    oracle_id = register_oracle_env(NAV)
    assert oracle_id == "metarl/Navigation2DOracle-v0" and register_oracle_env(NAV) == oracle_id
    env = gymnasium.make(oracle_id, max_episode_steps=5)
    inner: Any = gymnasium.make(NAV).unwrapped
    oracle: Any = env.unwrapped
    assert isinstance(oracle, TaskObservationEnv)
    assert oracle.sample_tasks(4, np.random.default_rng(3)) == inner.sample_tasks(4, np.random.default_rng(3))
    oracle.task = {"goal_x": 0.25, "goal_y": -0.5}
    obs, _ = env.reset(seed=0)
    np.testing.assert_allclose(obs, [0.0, 0.0, 0.25, -0.5])
    obs, reward, *_ = env.step(np.array([0.1, 0.0], dtype=np.float32))
    np.testing.assert_allclose(obs, [0.1, 0.0, 0.25, -0.5], rtol=1e-6)
    assert reward == pytest.approx(-np.hypot(0.15, 0.5), rel=1e-6)


def test_oracle_of_a_module_prefixed_env_with_array_tasks() -> None:
    oracle_id = register_oracle_env(GOAL_POINT)
    assert oracle_id == "thirdparty/GoalPoint1DOracle-v0" and gymnasium.spec(oracle_id).max_episode_steps == 50
    env = gymnasium.make(oracle_id, max_episode_steps=5)
    oracle: Any = env.unwrapped
    assert env.observation_space.shape == (2,)
    oracle.task = {"goal": np.array([0.25])}
    obs, _ = env.reset(seed=0)
    np.testing.assert_allclose(obs, [0.0, 0.25])
    obs, reward, *_ = env.step(np.array([0.05], dtype=np.float32))
    np.testing.assert_allclose(obs, [0.05, 0.25], rtol=1e-6)
    assert reward == pytest.approx(-0.2)
    drawn = oracle.sample_tasks(3, np.random.default_rng(0))
    assert [t["goal"].shape for t in drawn] == [(1,)] * 3
    config = load_config(None, [f"env.id={GOAL_POINT}", "env.horizon=10"])
    assert check_oracle(config) == oracle_id
    assert oracle_config(config).env.id == oracle_id and oracle_config(config).env.vectorization == "sync"


def test_an_env_with_string_task_values_has_no_oracle_and_says_why() -> None:
    config = load_config(None, [f"env.id={LABELLED_GOAL_POINT}", "env.horizon=10"])
    with pytest.raises(BaselineError, match=r"has no oracle baseline: its task value 'label' is a string \('near'\)"):
        check_oracle(config)
    with pytest.raises(BaselineError, match="cannot find environment"):
        register_oracle_env("thirdparty/NoSuchEnv-v0")


# --------------------------------------------------------------------------- protocol and report


def test_settings_and_method_validation() -> None:
    assert SB3Settings(total_timesteps=100, n_envs=4).rollout_steps() == 25
    assert SB3Settings().rollout_steps() == 256 and SB3Settings().minibatch_size() == 256
    assert SB3Settings(total_timesteps=100, n_envs=4).minibatch_size() == 100
    with pytest.raises(BaselineError, match="ppo"):
        SB3Settings(algo="sac")  # type: ignore[arg-type]
    assert parse_methods("MAML, oracle") == ("maml", "oracle")
    with pytest.raises(BenchmarkError, match="allowed"):
        parse_methods("maml,foo")
    with pytest.raises(BenchmarkError, match="allowed"):
        parse_methods(" , ")


def test_read_cache_meta_of_a_missing_or_broken_file(tmp_path: Path) -> None:
    assert read_cache_meta(tmp_path / "missing.json") == {}
    (tmp_path / "broken.json").write_text("{not json")
    assert read_cache_meta(tmp_path / "broken.json") == {}


# --------------------------------------------------------------------------- the command line, end to end
