"""Benchmark scripts run end to end on a tiny budget and write their tables."""

from __future__ import annotations

import json
from pathlib import Path

from scripts import bench_curvature, bench_learning


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
    args = ["--checkpoint", str(run), "--batches", "1", "--threads", "1", "--subsamples", "1,0.5",
            "--results", str(tmp_path / "results")]
    assert bench_curvature.main(args) == 0
    data = json.loads((tmp_path / "results" / "curvature_navigation2d.json").read_text())
    assert set(data["summary"]) == {f"{c}, hvp_subsample {s}" for c in ("exact", "fisher") for s in ("1", "0.5")}
    for stats in data["summary"].values():
        assert stats["seconds"] > 0 and 0 <= stats["kl"] <= 0.01 and stats["improvement"] >= 0
