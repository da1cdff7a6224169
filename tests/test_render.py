"""Rendering adapted policies: MuJoCo video frame counts, navigation/sinusoid plots, task specs, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
imageio = pytest.importorskip("imageio.v2", reason="the baselines extra (imageio, imageio-ffmpeg) is not installed")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from metarl.checkpoint import save_checkpoint  # noqa: E402
from metarl.config import load_config  # noqa: E402
from metarl.render import (  # noqa: E402
    adapt_tasks,
    load_policy,
    parse_task,
    plot_adaptation_curves,
    render_checkpoint,
)
from metarl.trainer import build_policy  # noqa: E402
from scripts import render as render_script  # noqa: E402


def make_checkpoint(root: Path, *overrides: str, obs_dim: int, act_dim: int) -> Path:
    """An untrained (seeded) checkpoint of a small policy: rendering does not need a trained one."""
    config = load_config(None, ["policy.hidden_sizes=[8]", *overrides])
    save_checkpoint(root / "checkpoints", build_policy(config, obs_dim, act_dim), config, 0)
    return root


@pytest.fixture
def nav_run(tmp_path: Path) -> Path:
    return make_checkpoint(tmp_path / "nav", "env.horizon=12", obs_dim=2, act_dim=2)


def test_mujoco_video_has_one_frame_per_step_and_segment(tmp_path: Path) -> None:
    run = make_checkpoint(tmp_path / "cheetah", "env.id=metarl/HalfCheetahVel-v0", "env.horizon=10",
                          obs_dim=17, act_dim=6)
    result = render_checkpoint(run, tmp_path / "out", '{"velocity": 1.5}', num_steps=1, episodes_per_task=2,
                               gif=True, width=160, height=96)
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
    assert result.tasks == [{"velocity": 1.5}] and len(result.returns[0]) == 2
    summary = json.loads((tmp_path / "out" / "render_halfcheetahvel.json").read_text())
    assert summary["num_frames"] == expected and summary["step_sizes"] == [0.1]


def test_navigation_png_before_and_after_adaptation(nav_run: Path, tmp_path: Path) -> None:
    result = render_checkpoint(nav_run, tmp_path / "out", num_steps=2, num_tasks=3, episodes_per_task=3, seed=1)
    png = tmp_path / "out" / "render_navigation2d.png"
    assert png.stat().st_size > 0 and Image.open(png).size[0] > 100
    assert len(result.tasks) == 3 and all(len(r) == 3 for r in result.returns)
    assert result.step_sizes == [0.1, 0.05]
    again = render_checkpoint(nav_run, tmp_path / "again", num_steps=2, num_tasks=3, episodes_per_task=3, seed=1)
    assert again.returns == result.returns  # same seed, same tasks, adaptation and rollouts


def test_default_output_is_the_run_directory(nav_run: Path) -> None:
    render_checkpoint(nav_run, None, "goal_x=0.2,goal_y=-0.1", num_steps=1, episodes_per_task=2)
    assert (nav_run / "render" / "render_navigation2d.png").is_file()


def test_adapt_tasks_starts_from_the_checkpoint_and_moves(nav_run: Path) -> None:
    policy, config, _ = load_policy(nav_run)
    tasks = [{"goal_x": 0.3, "goal_y": 0.1}, {"goal_x": -0.2, "goal_y": 0.4}]
    trace = adapt_tasks(policy, config, tasks, num_steps=2, episodes_per_task=4, seed=0)
    assert len(trace.params) == 3 and trace.sampled_returns.shape == (3, 2)
    torch.testing.assert_close(trace.task_params(0, 1)["layers.0.weight"], policy.layers[0].weight.detach())
    assert not torch.equal(trace.task_params(1, 0)["layers.0.weight"], trace.task_params(1, 1)["layers.0.weight"])


@pytest.mark.parametrize("config_file", ["configs/sinusoid_supervised.yaml", "configs/sinusoid_rl.yaml"])
def test_sinusoid_png(tmp_path: Path, config_file: str) -> None:
    config = load_config(Path(__file__).resolve().parents[1] / config_file, ["policy.hidden_sizes=[8]"])
    save_checkpoint(tmp_path / "run" / "checkpoints", build_policy(config, 1, 1), config, 0)
    result = render_checkpoint(tmp_path / "run", tmp_path / "out", num_steps=2, num_tasks=2, episodes_per_task=5)
    assert (tmp_path / "out" / "render_sinusoid.png").stat().st_size > 0
    assert np.array(result.extra["mse"]).shape == (2, 3)


def test_parse_task() -> None:
    template = {"goal_x": 0.0, "goal_y": 0.0}
    assert parse_task('{"goal_x": 0.3, "goal_y": -0.2}', template) == {"goal_x": 0.3, "goal_y": -0.2}
    assert parse_task("goal_y=-0.2, goal_x=0.3", template) == {"goal_x": 0.3, "goal_y": -0.2}
    for bad, message in [("goal_x=0.3", "need exactly"), ("goal_x=a,goal_y=1", "not a number"),
                         ("{bad json", "not valid JSON"), ("goal_x,goal_y", "not key=value"),
                         ("goal_x=nan,goal_y=0", "not finite"), ("[1, 2]", "not key=value")]:
        with pytest.raises(ValueError, match=message):
            parse_task(bad, template)


def test_script_reports_bad_inputs(nav_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert render_script.main(["--checkpoint", str(tmp_path / "missing")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert render_script.main(["--checkpoint", str(junk)]) == 2
    assert "not a readable metarl checkpoint" in capsys.readouterr().err
    assert render_script.main(["--checkpoint", str(nav_run), "--task", "velocity=1"]) == 2
    assert "goal_x" in capsys.readouterr().err
    cheetah = make_checkpoint(tmp_path / "dir", "env.id=metarl/HalfCheetahDir-v0", "env.horizon=5",
                              obs_dim=17, act_dim=6)
    assert render_script.main(["--checkpoint", str(cheetah), "--task", "direction=0.5"]) == 2
    assert "must be +1 or -1" in capsys.readouterr().err


def test_plot_adaptation_curves(tmp_path: Path) -> None:
    steps = [{"step": k, "mean_return": -40.0 + 10 * k, "ci95": 2.0} for k in range(4)]
    flat = [{"step": k, "mean_return": -5.0, "ci95": 1.0} for k in range(4)]
    path = plot_adaptation_curves({"MAML": {"steps": steps}, "oracle": {"steps": flat}}, tmp_path / "f.png",
                                  "test", flat=["oracle"], reference={"MAML (paper)": [-39, -11, -3.3, -3.1]})
    assert path.stat().st_size > 0
