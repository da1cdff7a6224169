"""SB3 baselines and the benchmark: weight transfer, task-resampling and oracle envs (``module:env-id`` too),
the benchmark protocol and report, and ``metarl train/evaluate/benchmark`` end to end, failures included."""

from __future__ import annotations

import json
import sys
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
from metarl.benchmark import BenchmarkError, flat_result, parse_methods, report_markdown  # noqa: E402
from metarl.build import build_policy  # noqa: E402
from metarl.checkpoint import save_checkpoint  # noqa: E402
from metarl.cli import main  # noqa: E402
from metarl.config import PolicyConfig, load_config  # noqa: E402
from tests.third_party_env import GOAL_POINT, LABELLED_GOAL_POINT  # noqa: E402

NAV = "metarl/Navigation2D-v0"
ROOT = Path(__file__).resolve().parents[1]
TINY_TRAIN = [
    "--set",
    "maml.meta_batch_size=2",
    "--set",
    "maml.episodes_per_task=2",
    "--set",
    "env.horizon=10",
    "--set",
    "policy.hidden_sizes=[8]",
    "--iterations",
    "1",
    "--no-progress",
]
TINY_SB3 = ["--sb3-timesteps", "64", "--sb3-envs", "2", "--no-progress"]


def sb3_model(policy: PolicyConfig, env_id: str = NAV) -> PPO:
    env = DummyVecEnv([lambda: make_resampling_env(env_id, 10, {}, np.random.default_rng(0))])
    return PPO(
        "MlpPolicy", env, n_steps=16, batch_size=16, policy_kwargs=sb3_policy_kwargs(policy), seed=0, device="cpu"
    )


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``metarl ARGV`` in-process: exit status, stdout, stderr."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code: int, err: str, *fragments: str) -> None:
    """Exit status 2, a single ``error:`` line naming each fragment, no traceback."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), err
    assert sum(line.startswith("error:") for line in lines) == 1 and "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])


def untrained_run(root: Path, *overrides: str, obs_dim: int, act_dim: int, config_file: Path | None = None) -> Path:
    """A run directory with an untrained (seeded) checkpoint: enough for the failure paths."""
    config = load_config(config_file, ["policy.hidden_sizes=[8]", *overrides])
    save_checkpoint(root / "checkpoints", build_policy(config, obs_dim, act_dim), config, 0)
    return root


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


def test_flat_result_keeps_step_zero_only() -> None:
    result = {"steps": [{"step": 0, "mean_return": -3.0, "ci95": 1.0}], "per_task": [[-2.0, -4.0]], "tasks": [{}, {}]}
    flat = flat_result(result)
    assert flat["steps"] == result["steps"] and flat["per_task"] == [[-2.0, -4.0]] and flat["adapted"] is False


def test_read_cache_meta_of_a_missing_or_broken_file(tmp_path: Path) -> None:
    assert read_cache_meta(tmp_path / "missing.json") == {}
    (tmp_path / "broken.json").write_text("{not json")
    assert read_cache_meta(tmp_path / "broken.json") == {}


def test_report_markdown_shows_the_oracle_once_and_says_what_the_numbers_are() -> None:
    def method(values: list[float], adapted: bool = True) -> dict[str, Any]:
        steps = [{"step": k, "mean_return": v, "ci95": 0.5} for k, v in enumerate(values)]
        return {"steps": steps, "adapted": adapted}

    data = {
        "env_id": NAV,
        "horizon": 100,
        "checkpoint": "run/checkpoints/latest.pt",
        "protocol": {"num_tasks": 40, "seed": 7, "episodes_per_step": 20, "actions": "sampled", "step_sizes": [0.1]},
        "policy": {"hidden_sizes": [8], "activation": "tanh"},
        "sb3": {
            "settings": {
                "algo": "ppo",
                "total_timesteps": 64,
                "n_envs": 2,
                "learning_rate": 3e-4,
                "gae_lambda": 0.95,
                "seed": 0,
            },
            "rollout_steps_per_env": 32,
            "oracle": {"path": "cache/sb3_oracle_x.zip", "cached": True, "train_seconds": 2.0, "log_std": [0.0, 0.0]},
        },
        "methods": {"MAML": method([-40.0, -11.0]), "oracle": method([-5.0], adapted=False)},
        "paper_reference": {"MAML (paper)": [-39, -11]},
    }
    report = report_markdown(data, "fig.png")
    assert "| method (mean return ± 95% CI over tasks) | 0 steps | 1 step |" in report
    assert "| oracle | -5.00 ± 0.50 | – |" in report and report.count("-5.00") == 1
    assert "MAML (paper): -39 / -11" in report and "`sb3_oracle_x.zip` (loaded from cache" in report
    assert "Command:" not in report  # write_results adds the command, commit, machine and date once


# --------------------------------------------------------------------------- the command line, end to end


def test_array_task_env_trains_evaluates_and_benchmarks_through_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, results = tmp_path / "run", tmp_path / "results"
    code, out, err = run_cli(capsys, "train", "--run-dir", str(run), "--set", f"env.id={GOAL_POINT}", *TINY_TRAIN)
    assert code == 0, err
    assert "done: 1 iteration;" in out

    code, out, err = run_cli(
        capsys, "evaluate", "--run-dir", str(run), "--num-tasks", "3", "--num-steps", "1", "--episodes", "2"
    )
    assert code == 0, err
    assert "| 0 steps | 1 step |" in out and "'goal' is an array of shape (1,), not a scalar" in out
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert len(evaluation["tasks"]) == 3
    assert all(isinstance(t["goal"], list) and len(t["goal"]) == 1 for t in evaluation["tasks"])

    code, out, err = run_cli(
        capsys,
        "benchmark",
        "--run-dir",
        str(run),
        "--results",
        str(results),
        "--methods",
        "maml,random,oracle",
        "--num-tasks",
        "3",
        "--num-steps",
        "2",
        "--episodes",
        "2",
        *TINY_SB3,
    )
    assert code == 0, err
    assert "| oracle |" in out and "| – | – |" in out and "| 0 steps | 1 step | 2 steps |" in out
    data = json.loads((results / "benchmark_goalpoint1d.json").read_text())
    assert list(data["methods"]) == ["MAML", "random", "oracle"]
    assert data["methods"]["MAML"]["tasks"] == evaluation["tasks"]  # same seed: the evaluation's tasks
    for name, result in data["methods"].items():
        assert result["tasks"] == data["methods"]["MAML"]["tasks"], name
        assert all(np.isfinite(s["mean_return"]) for s in result["steps"]), name
    assert [s["step"] for s in data["methods"]["MAML"]["steps"]] == [0, 1, 2]
    assert [s["step"] for s in data["methods"]["oracle"]["steps"]] == [0]
    assert data["methods"]["oracle"]["adapted"] is False and data["sb3"]["oracle"]["cached"] is False
    assert data["env_id"] == GOAL_POINT and data["command"].startswith("metarl benchmark --run-dir")
    md = (results / "benchmark_goalpoint1d.md").read_text()
    assert md.count("Command:") == 1 and "| oracle | " in md
    assert (results / "benchmark_goalpoint1d.png").stat().st_size > 0
    assert len(list((run / "sb3_cache").glob("sb3_oracle_*.zip"))) == 1


def test_navigation_benchmark_with_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, results = tmp_path / "run", tmp_path / "results"
    assert run_cli(capsys, "train", "--run-dir", str(run), *TINY_TRAIN)[0] == 0
    argv = [
        "benchmark",
        "--run-dir",
        str(run),
        "--results",
        str(results),
        "--num-tasks",
        "3",
        "--num-steps",
        "2",
        "--episodes",
        "2",
        *TINY_SB3,
    ]
    code, _, err = run_cli(capsys, *argv)
    assert code == 0, err
    data = json.loads((results / "benchmark_navigation2d.json").read_text())
    assert list(data["methods"]) == ["MAML", "pretrained", "random", "oracle"]  # the default for navigation
    for name in ("MAML", "pretrained", "random"):
        assert [s["step"] for s in data["methods"][name]["steps"]] == [0, 1, 2], name
    assert data["protocol"]["step_sizes"] == [0.1, 0.05] and data["sb3"]["pretrained"]["cached"] is False
    assert data["paper_reference"] == {}  # the paper's numbers are for horizon 100, not 10
    cache = run / "sb3_cache"
    assert len(list(cache.glob("sb3_pretrained_*.zip"))) == 1 and len(list(cache.glob("sb3_oracle_*.zip"))) == 1

    # same settings: the SB3 models come from the cache and give the same numbers
    code, _, err = run_cli(capsys, *argv, "--methods", "pretrained,oracle", "--name", "again")
    assert code == 0, err
    again = json.loads((results / "again.json").read_text())
    assert again["sb3"]["pretrained"]["cached"] is True and again["sb3"]["oracle"]["cached"] is True
    assert again["methods"]["pretrained"]["steps"] == data["methods"]["pretrained"]["steps"]
    assert again["methods"]["oracle"]["steps"] == data["methods"]["oracle"]["steps"]


def test_benchmark_command_reports_bad_requests_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    nav = untrained_run(tmp_path / "nav", "env.horizon=5", obs_dim=2, act_dim=2)
    fast = ["--num-tasks", "2", "--num-steps", "1", "--episodes", "2", *TINY_SB3]
    assert_one_error_line(
        *run_cli(capsys, "benchmark", "--run-dir", str(tmp_path / "nothing"))[::2], "no checkpoint at"
    )
    assert_one_error_line(
        *run_cli(capsys, "benchmark", "--run-dir", str(nav), "--methods", "maml,bogus")[::2],
        "unknown method(s) ['bogus']",
        "allowed: maml, pretrained, random, oracle",
    )
    labelled = untrained_run(
        tmp_path / "labelled", f"env.id={LABELLED_GOAL_POINT}", "env.horizon=5", obs_dim=1, act_dim=1
    )
    code, out, err = run_cli(capsys, "benchmark", "--run-dir", str(labelled), "--methods", "maml,oracle", *fast)
    assert_one_error_line(code, err, "LabelledGoalPoint1D-v0 has no oracle baseline", "'label' is a string")
    assert "[maml]" not in err and not (labelled / "sb3_cache").exists()  # refused before any work
    sinusoid = untrained_run(
        tmp_path / "sin", obs_dim=1, act_dim=1, config_file=ROOT / "configs/sinusoid_supervised.yaml"
    )
    assert_one_error_line(
        *run_cli(capsys, "benchmark", "--run-dir", str(sinusoid))[::2],
        "the benchmark compares RL policies",
        "maml.loss='supervised'",
    )
    monkeypatch.setitem(sys.modules, "stable_baselines3", None)  # as if the baselines extra were not installed
    assert_one_error_line(
        *run_cli(capsys, "benchmark", "--run-dir", str(nav), "--methods", "maml,pretrained", *fast)[::2],
        "need Stable-Baselines3",
        "pip install",
    )
