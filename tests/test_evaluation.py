"""Evaluation tables and figures: step labels, methods evaluated at step 0 only, metrics, any task value."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pytest

from metarl.build import build_policy
from metarl.config import load_config
from metarl.evaluation import (
    evaluate_adaptation,
    gain_lines,
    is_scalar_value,
    markdown_table,
    mean_ci95,
    returns_by_task_parameter,
    steps_label,
    success_by_skill,
)
from metarl.reporting import to_json, write_json
from tests.helpers import step_rows
from tests.third_party_env import GOAL_POINT

matplotlib.use("Agg")


def test_steps_label_is_singular_for_one_step() -> None:
    assert [steps_label(k) for k in range(3)] == ["0 steps", "1 step", "2 steps"]


def test_mean_ci95() -> None:
    mean, ci = mean_ci95([1.0, 3.0])
    assert mean == 2.0 and ci == pytest.approx(1.96 * np.sqrt(2) / np.sqrt(2))
    assert np.isnan(mean_ci95([5.0])[1])


def test_markdown_table_shows_a_step0_only_method_once() -> None:
    table = markdown_table({"MAML": {"steps": step_rows([-40.0, -11.0, -3.0])}, "oracle": {"steps": step_rows([-5.0])}})
    rows = table.splitlines()
    assert rows[0] == "| method (mean return ± 95% CI over tasks) | 0 steps | 1 step | 2 steps |"
    assert rows[2] == "| MAML | -40.00 ± 1.00 | -11.00 ± 1.00 | -3.00 ± 1.00 |"
    assert rows[3] == "| oracle | -5.00 ± 1.00 | – | – |"
    assert table.count("-5.00") == 1


def test_markdown_table_names_the_supervised_metric() -> None:
    table = markdown_table({"MAML": {"steps": step_rows([2.5, 0.5], key="mse", ci=0.1)}}, key="mse", digits=3)
    assert table.splitlines()[0] == "| method (mean MSE ± 95% CI over tasks) | 0 steps | 1 step |"
    assert "| MAML | 2.500 ± 0.100 | 0.500 ± 0.100 |" in table
    assert "return" not in table
    with pytest.raises(ValueError, match="at least one method"):
        markdown_table({})


def test_returns_by_task_parameter_bins_hand_computed() -> None:
    result = {
        "tasks": [{"velocity": v} for v in (1.5, 0.1, 0.9, 0.3)],
        "per_task": [[-30.0, -10.0, -20.0, -12.0], [-15.0, -5.0, -9.0, -7.0]],
    }
    rows = returns_by_task_parameter(result, num_bins=2).splitlines()  # type: ignore[union-attr]
    assert rows[0] == "| velocity | tasks | 0 steps | 1 step |"
    assert rows[2] == "| 0.10 to 0.30 | 2 | -11.00 | -6.00 |"  # tasks with goals 0.1 and 0.3
    assert rows[3] == "| 0.90 to 1.50 | 2 | -25.00 | -12.00 |"


def test_returns_by_task_parameter_numpy_scalars_and_strings() -> None:
    directions = {"tasks": [{"direction": np.float32(d)} for d in (1.0, -1.0, 1.0)], "per_task": [[1.0, 2.0, 3.0]]}
    assert returns_by_task_parameter(directions).splitlines()[2:] == [  # type: ignore[union-attr]
        "| -1.00 to -1.00 | 1 | 2.00 |",
        "| 1.00 to 1.00 | 2 | 2.00 |",
    ]
    zero_d = {"tasks": [{"g": np.array(v)} for v in (0.5, 0.25)], "per_task": [[1.0, 3.0]]}
    assert returns_by_task_parameter(zero_d).splitlines()[2:] == [  # type: ignore[union-attr]
        "| 0.25 to 0.25 | 1 | 3.00 |",
        "| 0.50 to 0.50 | 1 | 1.00 |",
    ]
    labels = {"tasks": [{"terrain": t} for t in ("ice", "sand", "ice")], "per_task": [[1.0, 2.0, 5.0]]}
    assert returns_by_task_parameter(labels).splitlines()[2:] == [  # type: ignore[union-attr]
        "| ice | 2 | 3.00 |",
        "| sand | 1 | 2.00 |",
    ]


@pytest.mark.parametrize(
    "value,kind", [(np.array([0.1, 0.2]), "an array of shape (2,)"), ([0.1, 0.2, 0.3], "a list of 3 values")]
)
def test_returns_by_task_parameter_says_when_a_parameter_is_not_scalar(value: Any, kind: str) -> None:
    result = {"tasks": [{"goal": value}] * 4, "per_task": [[0.0, 1.0, 2.0, 3.0]]}
    note = returns_by_task_parameter(result)
    assert note is not None and "\n" not in note and "|" not in note
    assert f"'goal' is {kind}, not a scalar" in note


def test_returns_by_task_parameter_none_without_a_single_parameter() -> None:
    goals_2d = {"tasks": [{"x": 0.0, "y": 1.0}] * 4, "per_task": [[0.0] * 4]}
    assert returns_by_task_parameter(goals_2d) is None
    assert returns_by_task_parameter({"tasks": [], "per_task": []}) is None
    with pytest.raises(ValueError, match="num_bins"):
        returns_by_task_parameter(goals_2d, num_bins=0)


def test_is_scalar_value() -> None:
    assert all(map(is_scalar_value, [1, 2.5, np.float64(1.0), np.int32(3), np.array(2.0), "left", True]))
    assert not any(map(is_scalar_value, [np.zeros(1), [1.0], (1.0, 2.0), {"a": 1}, None, 1j]))


def test_evaluation_of_an_array_valued_task_env_writes_json(tmp_path: Path) -> None:
    config = load_config(None, [f"env.id={GOAL_POINT}", "env.horizon=5", "policy.hidden_sizes=[4]"])
    result = evaluate_adaptation(build_policy(config, 1, 1), config, num_tasks=3, num_steps=1, episodes_per_step=2)
    assert all(isinstance(t["goal"], np.ndarray) for t in result["tasks"])
    with pytest.raises(TypeError):
        json.dumps(result)  # what a bare json.dumps would do; the writers use reporting.to_json
    written = json.loads(write_json(tmp_path / "evaluation.json", result).read_text())
    assert written["tasks"] == [{"goal": t["goal"].tolist()} for t in result["tasks"]]
    assert json.loads(to_json(result))["per_task"] == result["per_task"]
    assert [s["step"] for s in written["steps"]] == [0, 1]


SUCCESS_ENV = ["env.id=tests.ray_envs:metarl_test/Navigation-v0", "env.kwargs.success_radius=0.35"]
"""2D navigation that reports ``info["success"]`` (within 0.35 of the goal), as Meta-World does."""


def test_success_rate_per_step_is_the_mean_over_tasks_of_each_tasks_episode_rate() -> None:
    config = load_config(None, [*SUCCESS_ENV, "env.horizon=15", "policy.hidden_sizes=[4]"])
    result = evaluate_adaptation(build_policy(config, 2, 2), config, num_tasks=6, num_steps=1, episodes_per_step=4)
    per_task = np.asarray(result["per_task_success"])
    assert per_task.shape == (2, 6) and set(np.unique(per_task * 4)) <= {0, 1, 2, 3, 4}
    for k, step in enumerate(result["steps"]):
        mean, ci = mean_ci95(per_task[k])
        assert step["success_rate"] == pytest.approx(mean) and step["success_ci95"] == pytest.approx(ci)
    assert 0 < per_task.mean() < 1  # a random policy sometimes gets within 0.35: the check can fail
    table = markdown_table({"maml": result}, key="success_rate", ci_key="success_ci95")
    assert table.splitlines()[0].startswith("| method (mean success rate ± 95% CI over tasks) |")
    returns = np.asarray(result["per_task"])
    gain = result["steps"][1]
    # the gain is paired: hand-computed from each task's own difference, not the difference of the means' CIs
    diff = returns[1] - returns[0]
    sd = np.sqrt(((diff - diff.mean()) ** 2).sum() / (len(diff) - 1))
    assert gain["return_gain"] == pytest.approx(diff.mean()) and gain["return_gain_ci95"] == pytest.approx(
        1.96 * sd / np.sqrt(len(diff))
    )
    assert gain["success_gain"] == pytest.approx((per_task[1] - per_task[0]).mean())
    assert "return_gain" not in result["steps"][0]
    lines = gain_lines(result).splitlines()
    assert lines[-1] == (
        f"- after 1 step: return {diff.mean():+.2f} ± {gain['return_gain_ci95']:.2f}; "
        f"success rate {gain['success_gain']:+.3f} ± {gain['success_gain_ci95']:.3f}"
    )
    plain = load_config(None, ["env.horizon=5", "policy.hidden_sizes=[4]"])
    quiet = evaluate_adaptation(build_policy(plain, 2, 2), plain, num_tasks=2, num_steps=0, episodes_per_step=2)
    assert "per_task_success" not in quiet and "success_rate" not in quiet["steps"][0]


def test_success_by_skill_hand_computed() -> None:
    result = {
        "tasks": [{"skill": s, "index": i} for i, s in enumerate(["push-v3", "reach-v3", "push-v3"])],
        "per_task": [[-10.0, -20.0, -30.0], [-5.0, -6.0, -7.0]],
        "per_task_success": [[0.0, 0.5, 1.0], [0.5, 1.0, 1.0]],
    }
    table = success_by_skill(result)
    assert table is not None
    rows = table.splitlines()
    assert rows[0] == "| skill | tasks | success 0 steps | success 1 step | return 0 steps | return 1 step |"
    assert rows[2] == "| push-v3 | 2 | 0.50 | 0.75 | -20.0 | -6.0 |"
    assert rows[3] == "| reach-v3 | 1 | 0.50 | 1.00 | -20.0 | -6.0 |"
    one_skill = {**result, "tasks": [{"skill": "push-v3", "index": i} for i in range(3)]}
    assert success_by_skill(one_skill) is None  # ML1: one skill, nothing to split
    assert success_by_skill({k: v for k, v in result.items() if k != "per_task_success"}) is None
