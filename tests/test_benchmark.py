"""The benchmark protocol: methods, reports, and MAML vs baselines end to end through the command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("stable_baselines3", reason="the baselines extra (pip install -e .[baselines]) is not installed")

import metarl.envs  # noqa: F401,E402  (registers the metarl/ envs)

from metarl.benchmark import flat_result, report_markdown  # noqa: E402
from tests.helpers import assert_one_error_line, run_cli, untrained_run  # noqa: E402
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


def test_flat_result_keeps_step_zero_only() -> None:
    result = {"steps": [{"step": 0, "mean_return": -3.0, "ci95": 1.0}], "per_task": [[-2.0, -4.0]], "tasks": [{}, {}]}
    flat = flat_result(result)
    assert flat["steps"] == result["steps"] and flat["per_task"] == [[-2.0, -4.0]] and flat["adapted"] is False


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
