"""Benchmark scripts run end to end on a tiny budget and write their tables."""

from __future__ import annotations

import json
import math
from pathlib import Path

import gymnasium
import numpy as np
import pytest

from metarl.reporting import paired_difference
from scripts import bench_curvature, bench_learning, bench_physics, compare_runs


def test_bench_learning_tiny(tmp_path: Path) -> None:
    tiny = ["maml.meta_batch_size=2", "maml.episodes_per_task=3", "env.horizon=100", "policy.hidden_sizes=[8]",
            "eval.num_tasks=3", "eval.episodes_per_step=2", "eval.num_steps=2"]
    args = ["--iterations", "2", "--precise-tasks", "4", "--output-dir", str(tmp_path / "run"), "--results", str(tmp_path / "results")]
    assert bench_learning.main(args + ["--no-progress"] + [f"--set={s}" for s in tiny]) == 0
    data = json.loads((tmp_path / "results" / "navigation2d.json").read_text())
    assert set(data["results"]) == set(data["results_precise"]) == {"MAML (metarl)", "random init"}
    assert data["results_precise"]["MAML (metarl)"]["num_tasks"] == 4
    assert [s["step"] for s in data["results"]["MAML (metarl)"]["steps"]] == [0, 1, 2]
    assert data["target_step1"] == -11.7 and data["paper"]["MAML (paper)"][1] == -11.0
    assert data["timing"]["iterations"] == 2 and data["timing"]["median_s_per_iteration"] > 0
    md = (tmp_path / "results" / "navigation2d.md").read_text()
    assert "| MAML (metarl) |" in md and "Machine:" in md


def test_bench_curvature_tiny(tmp_path: Path) -> None:
    tiny = ["maml.meta_batch_size=2", "maml.episodes_per_task=3", "env.horizon=20", "policy.hidden_sizes=[8]"]
    run = tmp_path / "run"
    assert bench_learning.main(["--iterations", "1", "--precise-tasks", "0", "--output-dir", str(run), "--no-progress",
                                "--results", str(tmp_path / "r0"), "--set=eval.num_tasks=2", "--set=eval.num_steps=1",
                                "--set=eval.episodes_per_step=2"] + [f"--set={s}" for s in tiny]) == 0
    args = ["--checkpoint", str(run), "--batches", "2", "--threads", "1", "--subsamples", "1,0.5",
            "--results", str(tmp_path / "results")]
    assert bench_curvature.main(args) == 0
    data = json.loads((tmp_path / "results" / "curvature_navigation2d.json").read_text())
    assert set(data["summary"]) == {f"{c}, hvp_subsample {s}" for c in ("exact", "fisher") for s in ("1", "0.5")}
    for stats in data["summary"].values():
        assert stats["seconds"] > 0 and 0 <= stats["kl"] <= 0.01 and stats["improvement"] >= 0
        assert math.isfinite(stats["held_out_gain"]) and stats["held_out_kl"] >= 0  # the step, on the other batch
    assert all(len(runs) == 2 for runs in data["per_batch"].values())
    assert "held-out gain" in (tmp_path / "results" / "curvature_navigation2d.md").read_text()


def _write_metrics(run: Path, rows: list[dict[str, float]]) -> None:
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_paired_difference_hand_computed_and_compare_runs(tmp_path: Path) -> None:
    timing = {"perf/time_sampling_s": 1.0, "perf/time_adapt_s": 0.0, "perf/time_learning_s": 1.0}
    a = [{"iteration": i, "ret": r, **timing} for i, r in enumerate([-10.0, -8.0, -9.0, -7.0])]
    b = [{"iteration": i, "ret": r, **timing} for i, r in [(1, -7.0), (2, -6.0), (3, -6.0), (4, 0.0)]]
    d = paired_difference(a, b, "ret")  # iterations 1..3: differences 1, 3, 1
    assert (d["iterations"], d["first"], d["last"]) == (3, 1, 3)
    assert d["mean"] == pytest.approx(5 / 3) and d["se"] == pytest.approx((4 / 3) ** 0.5 / 3 ** 0.5)
    assert paired_difference(a, b, "ret", first=2)["mean"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="share 1"):
        paired_difference(a, b, "ret", first=3)
    _write_metrics(tmp_path / "a", a)
    _write_metrics(tmp_path / "b", b)
    args = [str(tmp_path / "a"), str(tmp_path / "b"), "--keys", "ret", "--results", str(tmp_path / "r"), "--name", "ab"]
    assert compare_runs.main(args) == 0
    data = json.loads((tmp_path / "r" / "ab.json").read_text())
    assert data["differences"]["ret"]["mean"] == pytest.approx(5 / 3) and data["seconds_a"] == 2.0
    assert compare_runs.main([str(tmp_path / "a"), str(tmp_path / "missing")]) == 2


def test_bench_physics_tiny_follows_config_frame_skip(tmp_path: Path) -> None:
    """The config's env kwargs reach every method, the physics-only ceiling's frame_skip included."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "physics.md"
    bench_physics.main(["--config", str(root / "configs/halfcheetah_vel.yaml"), "--tasks", "2", "--episodes-per-task", "2",
                        "--steps", "5", "--threads", "1", "--out", str(out)])
    table = out.read_text()
    assert "metarl/HalfCheetahVel-v0" in table and "'frame_skip': 1" in table
    for label in (bench_physics.SYNC, bench_physics.CEILING, bench_physics.SAMPLER_BATCHED):
        assert f"| {label} |" in table
    # the ceiling holds each action for the configured env's frame_skip physics steps
    actions = bench_physics.random_actions(gymnasium.make("metarl/HalfCheetahVel-v0").action_space, 3, 2, 0)
    for frame_skip in (1, 5):
        _, _, control = bench_physics.ceiling_inputs("metarl/HalfCheetahVel-v0", actions, 0, {"frame_skip": frame_skip})
        assert control.shape == (2, 3 * frame_skip, actions.shape[2])
        np.testing.assert_array_equal(control[:, ::frame_skip], actions.transpose(1, 0, 2))
    with pytest.raises(SystemExit):
        bench_physics.parse_args(["--config", str(tmp_path / "missing.yaml")])
