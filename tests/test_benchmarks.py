"""Benchmark scripts run end to end on a tiny budget and write their tables."""

from __future__ import annotations

import json
from pathlib import Path

from scripts import bench_learning


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
