"""SB3 baselines: exact weight transfer, task-resampling and oracle envs, tiny end-to-end benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3", reason="the baselines extra (pip install -e .[baselines]) is not installed")

from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv  # noqa: E402

import metarl.envs  # noqa: F401,E402  (registers the metarl/ envs)
from metarl.baselines import (  # noqa: E402
    SB3Settings,
    TaskObservationEnv,
    TaskResamplingWrapper,
    make_resampling_env,
    metarl_policy_from_sb3,
    parse_methods,
    register_oracle_env,
    sb3_policy_kwargs,
)
from metarl.config import PolicyConfig, load_config  # noqa: E402
from metarl.trainer import train  # noqa: E402
from scripts import benchmark as benchmark_script  # noqa: E402

NAV = "metarl/Navigation2D-v0"


def sb3_model(policy: PolicyConfig, env_id: str = NAV) -> PPO:
    env = DummyVecEnv([lambda: make_resampling_env(env_id, 10, {}, np.random.default_rng(0))])
    return PPO("MlpPolicy", env, n_steps=16, batch_size=16, policy_kwargs=sb3_policy_kwargs(policy), seed=0,
               device="cpu")


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
    with pytest.raises(ValueError, match="activations"):
        metarl_policy_from_sb3(model.policy, PolicyConfig(hidden_sizes=[8], activation="relu"))
    with pytest.raises(ValueError, match="does not match"):
        metarl_policy_from_sb3(model.policy, PolicyConfig(hidden_sizes=[9], activation="tanh"))


def test_resampling_wrapper_draws_a_new_task_each_reset_from_its_generator() -> None:
    def tasks(seed: int) -> list[dict]:
        env = TaskResamplingWrapper(gymnasium.make(NAV, max_episode_steps=5), np.random.default_rng(seed))
        drawn = []
        for _ in range(3):
            env.reset()
            drawn.append(dict(env.unwrapped.task))
        return drawn

    first = tasks(0)
    assert first == tasks(0) and first != tasks(1)
    assert len({tuple(t.values()) for t in first}) == 3
    expected = gymnasium.make(NAV).unwrapped.sample_tasks(1, np.random.default_rng(0))[0]
    assert first[0] == expected


def test_oracle_env_appends_the_task_and_samples_the_same_tasks() -> None:
    oracle_id = register_oracle_env(NAV)
    assert oracle_id == "metarl/Navigation2DOracle-v0" and register_oracle_env(NAV) == oracle_id
    env = gymnasium.make(oracle_id, max_episode_steps=5)
    inner = gymnasium.make(NAV).unwrapped
    assert isinstance(env.unwrapped, TaskObservationEnv)
    assert env.unwrapped.sample_tasks(4, np.random.default_rng(3)) == inner.sample_tasks(4, np.random.default_rng(3))
    env.unwrapped.task = {"goal_x": 0.25, "goal_y": -0.5}
    obs, _ = env.reset(seed=0)
    np.testing.assert_allclose(obs, [0.0, 0.0, 0.25, -0.5])
    obs, reward, *_ = env.step(np.array([0.1, 0.0], dtype=np.float32))
    np.testing.assert_allclose(obs, [0.1, 0.0, 0.25, -0.5], rtol=1e-6)
    assert reward == pytest.approx(-np.hypot(0.15, 0.5), rel=1e-6)


def test_settings_and_method_validation() -> None:
    assert SB3Settings(total_timesteps=100, n_envs=4).rollout_steps() == 25
    assert SB3Settings().rollout_steps() == 256 and SB3Settings().minibatch_size() == 256
    assert SB3Settings(total_timesteps=100, n_envs=4).minibatch_size() == 100
    with pytest.raises(ValueError, match="ppo"):
        SB3Settings(algo="sac")  # type: ignore[arg-type]
    assert parse_methods("MAML, oracle") == ("maml", "oracle")
    with pytest.raises(ValueError, match="allowed"):
        parse_methods("maml,foo")


def test_benchmark_end_to_end_with_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = load_config(None, ["maml.meta_batch_size=2", "maml.episodes_per_task=2", "env.horizon=10",
                                "policy.hidden_sizes=[8]", "train.iterations=1"])
    train(config, tmp_path / "run", progress=False)
    argv = ["--checkpoint", str(tmp_path / "run"), "--results", str(tmp_path / "results"), "--sb3-timesteps", "160",
            "--sb3-envs", "2", "--num-tasks", "3", "--num-steps", "2", "--episodes-per-step", "2", "--no-progress"]
    assert benchmark_script.main(argv) == 0
    data = json.loads((tmp_path / "results" / "benchmark_navigation2d.json").read_text())
    assert list(data["methods"]) == ["MAML", "pretrained", "random", "oracle"]
    for name, result in data["methods"].items():
        assert [s["step"] for s in result["steps"]] == [0, 1, 2], name
        assert all(np.isfinite(s["mean_return"]) for s in result["steps"]), name
    assert data["methods"]["oracle"]["adapted"] is False
    assert len({s["mean_return"] for s in data["methods"]["oracle"]["steps"]}) == 1
    assert data["protocol"]["step_sizes"] == [0.1, 0.05]
    assert data["sb3"]["pretrained"]["cached"] is False
    assert (tmp_path / "results" / "benchmark_navigation2d.png").stat().st_size > 0
    assert "| MAML |" in (tmp_path / "results" / "benchmark_navigation2d.md").read_text()
    cache = tmp_path / "run" / "benchmark"
    assert len(list(cache.glob("sb3_pretrained_*.zip"))) == 1 and len(list(cache.glob("sb3_oracle_*.zip"))) == 1

    # same settings: the SB3 models come from the cache and give the same numbers
    assert benchmark_script.main([*argv, "--methods", "pretrained,oracle", "--name", "again"]) == 0
    again = json.loads((tmp_path / "results" / "again.json").read_text())
    assert again["sb3"]["pretrained"]["cached"] is True and again["sb3"]["oracle"]["cached"] is True
    assert again["methods"]["pretrained"]["steps"] == data["methods"]["pretrained"]["steps"]
    capsys.readouterr()

    assert benchmark_script.main(["--checkpoint", str(tmp_path / "nothing")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert benchmark_script.main([*argv, "--methods", "maml,bogus"]) == 2
    assert "allowed" in capsys.readouterr().err
