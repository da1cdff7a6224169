"""Results files: JSON of any task value, the provenance every results file records, metrics rows, paired A/B."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from metarl.reporting import env_slug, paired_difference, read_metrics, timing_summary, to_json, write_results


def test_json_writes_numpy_arrays_scalars_tensors_and_paths() -> None:
    data = {
        "tasks": [{"goal": np.array([0.5, -1.0]), "k": np.int64(3), "name": "a"}],
        "t": torch.tensor([1.0]),
        "p": Path("x/y"),
    }
    assert json.loads(to_json(data)) == {"tasks": [{"goal": [0.5, -1.0], "k": 3, "name": "a"}], "t": [1.0], "p": "x/y"}
    with pytest.raises(TypeError, match="object"):
        to_json({"bad": object()})


def test_results_files_record_command_commit_date_and_machine(tmp_path: Path) -> None:
    md, js = write_results(tmp_path, "demo", "| a |\n|---|\n| 1 |", {"value": np.float32(1.5)}, command="metarl x")
    text = md.read_text()
    assert "Command: `metarl x`" in text and "Commit:" in text and "Machine:" in text and "Date:" in text
    data = json.loads(js.read_text())
    assert data["value"] == 1.5 and data["command"] == "metarl x"
    assert {"commit", "machine", "date"} <= data.keys()


def test_env_slug() -> None:
    assert env_slug("metarl/HalfCheetahVel-v0") == "halfcheetahvel"
    assert env_slug("tests.third_party_env:thirdparty/GoalPoint1D-v0") == "goalpoint1d"


def test_metrics_timing_and_paired_difference(tmp_path: Path) -> None:
    rows = [
        {
            "iteration": i,
            "perf/time_sampling_s": 1.0,
            "perf/time_adapt_s": 0.5,
            "perf/time_learning_s": 2.5,
            "meta/return_post": float(i),
        }
        for i in range(4)
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"iteration": 4, "me')
    assert read_metrics(tmp_path) == rows  # the torn last line is dropped
    summary = timing_summary(rows)
    assert summary["median_s_per_iteration"] == 4.0 and summary["learner_fraction"] == pytest.approx(0.75)
    other = [{**r, "meta/return_post": r["meta/return_post"] + (1.0 if r["iteration"] % 2 else 3.0)} for r in rows]
    diff = paired_difference(rows, other, "meta/return_post")
    assert diff["mean"] == pytest.approx(2.0) and diff["se"] == pytest.approx(np.std([3, 1, 3, 1], ddof=1) / 2)
    with pytest.raises(ValueError, match="at least 2"):
        paired_difference(rows, other, "meta/return_post", first=3)
