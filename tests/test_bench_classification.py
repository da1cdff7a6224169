"""The classification benchmarks: tiny runs of bench_classification and bench_conv_forward, and their bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench_classification, bench_conv_forward

TINY = [
    "--set",
    "env.kwargs.num_classes=40",
    "--set",
    "env.kwargs.num_train_classes=30",
    "--set",
    "classifier.filters=4",
    "--set",
    "maml.meta_batch_size=2",
    "--set",
    "supervised.log_every=1",
    "--iterations",
    "2",
    "--num-tasks",
    "6",
    "--num-steps",
    "2",
    "--seeds",
    "0",
    "--no-progress",
]


def test_bench_classification_tiny_every_setting_and_algorithm(tmp_path: Path) -> None:
    args = [*TINY, "--algorithms", "maml,fomaml,metasgd", "--run-dir", str(tmp_path)]
    assert bench_classification.main(args) == 0
    data = json.loads((tmp_path / "results" / "classification_glyphs.json").read_text())
    assert [(r["setting"], r["algorithm"]) for r in data["runs"]] == [
        (s, a) for s in ("5-way 1-shot", "5-way 5-shot") for a in ("maml", "fomaml", "metasgd")
    ]
    assert all(len(r["steps"]) == 3 and r["iterations"] == 2 for r in data["runs"])
    assert all(r["evaluation"]["num_tasks"] == 6 and r["evaluation"]["split"] == "test" for r in data["runs"])
    assert "learned per-parameter" in data["runs"][2]["inner_rule"]
    md = (tmp_path / "results" / "classification_glyphs.md").read_text()
    assert "## 5-way 1-shot (glyphs_5way1shot.yaml, 2 iterations)" in md
    assert "| paper: MAML (Omniglot, 60,000 iterations of 32 tasks) | 1 | - | - | - | - | - | 98.7 ± 0.4 |" in md
    assert "| paper: first-order MAML (Omniglot, 60,000 iterations of 32 tasks) |" in md and "99.2 ± 0.2" in md
    # a second invocation only evaluates the finished runs: the same numbers
    assert bench_classification.main([*args, "--algorithms", "fomaml"]) == 0
    again = json.loads((tmp_path / "results" / "classification_glyphs.json").read_text())["runs"]
    assert again[0]["resumed"] and again[0]["steps"] == data["runs"][1]["steps"]


def test_bench_classification_two_jobs_give_the_same_numbers(tmp_path: Path) -> None:
    one = [*TINY, "--algorithms", "maml,reptile", "--configs", "configs/glyphs_5way1shot.yaml"]
    assert bench_classification.main([*one, "--run-dir", str(tmp_path / "a")]) == 0
    assert bench_classification.main([*one, "--run-dir", str(tmp_path / "b"), "--jobs", "2"]) == 0
    a = json.loads((tmp_path / "a" / "results" / "classification_glyphs.json").read_text())["runs"]
    b = json.loads((tmp_path / "b" / "results" / "classification_glyphs.json").read_text())["runs"]
    assert [r["steps"] for r in a] == [r["steps"] for r in b]
    assert a[0]["steps"] != a[1]["steps"]


def test_bench_conv_forward_tiny(tmp_path: Path) -> None:
    args = ["--tasks", "2", "--shots", "1", "--filters", "4", "--repeats", "1", "--results", str(tmp_path)]
    assert bench_conv_forward.main(args) == 0
    data = json.loads((tmp_path / "conv_forward.json").read_text())
    (row,) = data["rows"]
    assert set(row["median_s"]) == {"grouped", "vmap", "loop (reference)"}
    assert all(d < 1e-5 for d in row["max_abs_difference_to_loop"].values())
    assert "vmap time / grouped time" in (tmp_path / "conv_forward.md").read_text()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--algorithms", "maml,sgd"], "--algorithms: unknown ['sgd']"),
        (["--configs", "configs/sinusoid_supervised.yaml"], "is not a classification config"),
        (["--configs", "configs/omniglot_5way1shot.yaml", "--set", "env.kwargs.root={tmp}/none"], "no Omniglot data"),
        (["--seeds", "x"], "--seeds"),
        (["--set", "supervised.shots=0"], "supervised.shots"),
    ],
)
def test_bad_input_is_one_error_line(
    argv: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    capsys.readouterr()
    assert bench_classification.main([*argv, "--run-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ") and needle in err[-1] and sum(e.startswith("error") for e in err) == 1
