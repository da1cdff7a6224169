"""Rendering adapted policies: MuJoCo video frames, navigation/sinusoid figures, task specs, ``metarl render``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
imageio = pytest.importorskip("imageio.v2", reason="the baselines extra (imageio, imageio-ffmpeg) is not installed")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from metarl.build import build_policy  # noqa: E402
from metarl.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from metarl.config import load_config  # noqa: E402
from metarl.render import (  # noqa: E402
    RenderError,
    adapt_tasks,
    format_task,
    parse_task,
    render_checkpoint,
    square_limits,
)
from tests.helpers import assert_one_error_line, run_cli  # noqa: E402
from tests.third_party_env import GOAL_POINT  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def make_checkpoint(root: Path, *overrides: str, obs_dim: int, act_dim: int, config_file: Path | None = None) -> Path:
    """An untrained (seeded) checkpoint of a small policy: rendering does not need a trained one."""
    config = load_config(config_file, ["policy.hidden_sizes=[8]", *overrides])
    save_checkpoint(root / "checkpoints", build_policy(config, obs_dim, act_dim), config, 0)
    return root


@pytest.fixture
def nav_run(tmp_path: Path) -> Path:
    return make_checkpoint(tmp_path / "nav", "env.horizon=12", obs_dim=2, act_dim=2)


def test_mujoco_video_has_one_frame_per_step_and_segment(tmp_path: Path) -> None:
    run = make_checkpoint(
        tmp_path / "cheetah", "env.id=metarl/HalfCheetahVel-v0", "env.horizon=10", obs_dim=17, act_dim=6
    )
    result = render_checkpoint(
        run, tmp_path / "out", '{"velocity": 1.5}', num_steps=1, episodes_per_task=2, gif=True, width=160, height=96
    )
    video, gif = tmp_path / "out" / "render_halfcheetahvel.mp4", tmp_path / "out" / "render_halfcheetahvel.gif"
    assert video.stat().st_size > 0 and gif.stat().st_size > 0
    expected = 2 * (10 + 1)  # (K + 1) episodes, each the reset frame + one per step
    assert result.num_frames == expected
    reader = imageio.get_reader(video)
    try:
        assert reader.count_frames() == expected
        assert reader.get_data(0).shape == (96, 160, 3)
    finally:
        reader.close()
    assert Image.open(gif).n_frames == expected // 2  # every 2nd frame
    assert result.tasks == [{"velocity": 1.5}] and len(result.values[0]) == 2 and result.metric == "return"
    summary = json.loads((tmp_path / "out" / "render_halfcheetahvel.json").read_text())
    assert summary["num_frames"] == expected and summary["step_sizes"] == [0.1]
    assert summary["metric"] == "return" and len(summary["returns"][0]) == 2


def test_navigation_png_before_and_after_adaptation(nav_run: Path, tmp_path: Path) -> None:
    result = render_checkpoint(nav_run, tmp_path / "out", num_steps=2, num_tasks=3, episodes_per_task=3, seed=1)
    png = tmp_path / "out" / "render_navigation2d.png"
    assert png.stat().st_size > 0 and Image.open(png).size[0] > 100
    assert len(result.tasks) == 3 and all(len(r) == 3 for r in result.values)
    assert result.step_sizes == [0.1, 0.05] and result.metric == "return"
    again = render_checkpoint(nav_run, tmp_path / "again", num_steps=2, num_tasks=3, episodes_per_task=3, seed=1)
    assert again.values == result.values  # same seed, same tasks, adaptation and rollouts
    summary = json.loads((tmp_path / "out" / "render_navigation2d.json").read_text())
    assert summary["returns"] == result.values and summary["tasks"] == result.tasks


def test_navigation_axes_are_labelled_and_grow_to_show_a_far_goal(
    nav_run: Path, tmp_path: Path, saved_figures: list[Figure]
) -> None:
    render_checkpoint(nav_run, tmp_path / "out", "goal_x=2.0,goal_y=-1.5", num_steps=1, episodes_per_task=2)
    (ax, *_) = saved_figures[0].axes
    assert ax.get_xlabel() == "x position" and ax.get_ylabel() == "y position"
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    assert x0 < -0.5 and x1 > 2.0 and y0 < -1.5 and y1 > 0.5  # the goal range [-0.5, 0.5] and the goal
    assert "return" in ax.get_legend().get_title().get_text()


def test_square_limits() -> None:
    assert square_limits(np.zeros((0, 2)), -0.5, 0.5, margin=0.0) == (-0.5, 0.5)
    assert square_limits(np.array([[3.0, -1.0], [np.nan, 9.0]]), -0.5, 0.5, margin=0.0) == (-1.0, 3.0)


def test_default_output_is_the_run_directory(nav_run: Path) -> None:
    render_checkpoint(nav_run, None, "goal_x=0.2,goal_y=-0.1", num_steps=1, episodes_per_task=2)
    assert (nav_run / "render" / "render_navigation2d.png").is_file()


def test_adapt_tasks_starts_from_the_checkpoint_and_moves(nav_run: Path) -> None:
    loaded = load_checkpoint(nav_run)
    policy, config = loaded.policy, loaded.config
    tasks = [{"goal_x": 0.3, "goal_y": 0.1}, {"goal_x": -0.2, "goal_y": 0.4}]
    trace = adapt_tasks(policy, config, tasks, num_steps=2, episodes_per_task=4, seed=0)
    assert len(trace.params) == 3 and trace.sampled_returns.shape == (3, 2)
    torch.testing.assert_close(trace.task_params(0, 1)["layers.0.weight"], policy.layers[0].weight.detach())
    assert not torch.equal(trace.task_params(1, 0)["layers.0.weight"], trace.task_params(1, 1)["layers.0.weight"])


@pytest.mark.parametrize("config_file", ["configs/sinusoid_supervised.yaml", "configs/sinusoid_rl.yaml"])
def test_sinusoid_png_reports_mse_not_return(tmp_path: Path, config_file: str, saved_figures: list[Figure]) -> None:
    run = make_checkpoint(tmp_path / "run", obs_dim=1, act_dim=1, config_file=ROOT / config_file)
    result = render_checkpoint(run, tmp_path / "out", num_steps=2, num_tasks=2, episodes_per_task=5)
    assert (tmp_path / "out" / "render_sinusoid.png").stat().st_size > 0
    assert result.metric == "MSE" and np.array(result.values).shape == (2, 3)
    assert (np.array(result.values) >= 0).all()
    summary = json.loads((tmp_path / "out" / "render_sinusoid.json").read_text())
    assert summary["metric"] == "MSE" and summary["mse"] == result.values and "returns" not in summary
    ax = saved_figures[0].axes[0]
    assert ax.get_xlabel() == "x" and ax.get_ylabel().startswith("y")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[1:4] == [
        f"{k} (MSE {result.values[0][i]:.2f})" for i, k in enumerate(["0 steps", "1 step", "2 steps"])
    ]
    assert not any("return" in text for text in labels)


def test_parse_task_numbers() -> None:
    template = {"goal_x": 0.0, "goal_y": 0.0}
    assert parse_task('{"goal_x": 0.3, "goal_y": -0.2}', template) == {"goal_x": 0.3, "goal_y": -0.2}
    assert parse_task("goal_y=-0.2, goal_x=0.3", template) == {"goal_x": 0.3, "goal_y": -0.2}
    for bad, message in [
        ("goal_x=0.3", "need exactly"),
        ("goal_x=a,goal_y=1", "not a number"),
        ("{bad json", "not valid JSON"),
        ("goal_x,goal_y", "not key=value"),
        ("goal_x=nan,goal_y=0", "not finite"),
        ("[1, 2]", "not key=value"),
        ("[1, 2", "not key=value"),
        ('{"goal_x": [1], "goal_y": 0}', "not a number"),
    ]:
        with pytest.raises(RenderError, match=message):
            parse_task(bad, template)


def test_parse_task_arrays_lists_and_strings() -> None:
    template = {"goal": np.zeros(2, dtype=np.float32), "offsets": [0.0, 0.0, 0.0], "terrain": "ice"}
    for spec in (
        '{"goal": [0.5, -1], "offsets": [1, 2, 3], "terrain": "sand"}',
        "goal=[0.5, -1], offsets=[1,2,3], terrain=sand",
    ):
        task = parse_task(spec, template)
        assert isinstance(task["goal"], np.ndarray) and task["goal"].dtype == np.float32
        np.testing.assert_array_equal(task["goal"], [0.5, -1.0])
        assert task["offsets"] == [1.0, 2.0, 3.0] and task["terrain"] == "sand"
    template = {"goal": np.zeros(2)}
    for bad, message in [
        ("goal=[1]", r"shape \(1,\); this env's goal has shape \(2,\)"),
        ("goal=0.5", r"shape \(\)"),
        ("goal=[1, x]", "not a JSON list"),
        ('{"goal": ["a", "b"]}', "not a list of numbers"),
        ("goal=[1, NaN]", "not finite"),
    ]:
        with pytest.raises(RenderError, match=message):
            parse_task(bad, template)


def test_format_task_of_any_value() -> None:
    assert format_task({"goal_x": 0.1, "goal_y": np.float32(-0.3)}) == "goal_x=0.10, goal_y=-0.30"
    assert format_task({"goal": np.array([0.1, -0.3])}) == "goal=[0.10, -0.30]"
    assert format_task({"offsets": [1, 2], "terrain": "ice"}, digits=1) == "offsets=[1.0, 2.0], terrain=ice"
    assert format_task({"grid": np.eye(2)}, digits=0) == "grid=[[1, 0], [0, 1]]"
    assert format_task({"zero_d": np.array(2.0), "flag": True}) == "zero_d=2.00, flag=1.00"


def test_render_command_prints_returns_and_writes_files(
    nav_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(
        capsys,
        "render",
        "--run-dir",
        str(nav_run),
        "--results",
        str(tmp_path / "r"),
        "--num-steps",
        "1",
        "--num-tasks",
        "2",
        "--episodes",
        "2",
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("task goal_x=") and ": return after 0..1 steps (policy mean actions): " in lines[0]
    assert f"wrote {tmp_path / 'r' / 'render_navigation2d.json'}" in lines
    summary = json.loads((tmp_path / "r" / "render_navigation2d.json").read_text())
    assert summary["metric"] == "return" and summary["command"].startswith("metarl render --run-dir")
    assert summary["iteration"] == load_checkpoint(nav_run).iteration and summary["commit"] and summary["date"]


def test_render_command_calls_regression_numbers_mse(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_checkpoint(tmp_path / "sin", obs_dim=1, act_dim=1, config_file=ROOT / "configs/sinusoid_supervised.yaml")
    code, out, err = run_cli(
        capsys,
        "render",
        "--run-dir",
        str(run),
        "--num-steps",
        "1",
        "--num-tasks",
        "1",
        "--task",
        "amplitude=2,phase=0.5",
    )
    assert code == 0, err
    assert "task amplitude=2.00, phase=0.50: MSE after 0..1 steps" in out and "return" not in out


def test_render_command_reports_bad_inputs_in_one_line(
    nav_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_one_error_line(*run_cli(capsys, "render", "--run-dir", str(tmp_path / "missing"))[::2], "no checkpoint at")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert_one_error_line(*run_cli(capsys, "render", "--run-dir", str(junk))[::2], "not a readable metarl checkpoint")
    assert_one_error_line(*run_cli(capsys, "render", "--run-dir", str(nav_run), "--task", "velocity=1")[::2], "goal_x")
    assert_one_error_line(
        *run_cli(capsys, "render", "--run-dir", str(nav_run), "--task", "goal_x=1,goal_y=2", "--num-tasks", "3")[::2],
        "--task gives one task",
    )
    cheetah = make_checkpoint(
        tmp_path / "dir", "env.id=metarl/HalfCheetahDir-v0", "env.horizon=5", obs_dim=17, act_dim=6
    )
    assert_one_error_line(
        *run_cli(capsys, "render", "--run-dir", str(cheetah), "--task", "direction=0.5")[::2], "must be +1 or -1"
    )
    assert_one_error_line(
        *run_cli(capsys, "render", "--run-dir", str(cheetah), "--num-tasks", "2")[::2], "a video shows one task"
    )
    third = make_checkpoint(tmp_path / "third", f"env.id={GOAL_POINT}", "env.horizon=5", obs_dim=1, act_dim=1)
    assert_one_error_line(*run_cli(capsys, "render", "--run-dir", str(third))[::2], "GoalPoint1D", "no renderer")
