"""The benchmarks/ scripts: a tiny run of each (in-process through ``main(argv)``), their results files,
their one-line errors, and compare_runs' refusal of runs that do not pair."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import pytest
import yaml

from benchmarks import (
    bench_curvature,
    bench_learn2learn,
    bench_learning,
    bench_physics,
    bench_rl_algorithms,
    bench_sinusoid,
    bench_sinusoid_algorithms,
    bench_threads,
    compare_runs,
)
from benchmarks.common import ROOT
from metarl.config import load_config, to_dict
from metarl.reporting import paired_difference
from metarl.trainer import train

TINY_NAV = ["maml.meta_batch_size=2", "maml.episodes_per_task=3", "policy.hidden_sizes=[8]", "env.horizon=20"]
"""A 2D-navigation run small enough for a smoke test."""


def _sets(overrides: list[str]) -> list[str]:
    return [f"--set={s}" for s in overrides]


def _one_error_line(stderr: str, *needles: str) -> str:
    """Assert ``stderr`` holds exactly one ``error:`` line, no traceback, and the needles; return the line."""
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def _shipped(*names: str) -> dict[str, float | None]:
    """Modification times of the repository's shipped results files ``names`` (``None``: absent)."""
    paths = {name: ROOT / "results" / name for name in names}
    return {name: path.stat().st_mtime if path.exists() else None for name, path in paths.items()}


@pytest.fixture(scope="module")
def nav_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-iteration 2D-navigation run trained by bench_learning (results in the run's own folder)."""
    run = tmp_path_factory.mktemp("bench") / "run"
    args = [
        "--iterations",
        "2",
        "--precise-tasks",
        "0",
        "--run-dir",
        str(run),
        "--no-progress",
        "--num-tasks",
        "2",
        "--num-steps",
        "1",
        "--episodes",
        "2",
        *_sets(TINY_NAV),
    ]
    assert bench_learning.main(args) == 0
    return run


# --------------------------------------------------------------------------- smoke tests


def test_bench_learning_writes_into_its_run_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = _shipped("navigation2d.md", "navigation2d.json")
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    args = [
        "--iterations",
        "2",
        "--precise-tasks",
        "4",
        "--run-dir",
        str(run),
        "--no-progress",
        "--num-tasks",
        "3",
        "--num-steps",
        "2",
        "--episodes",
        "2",
        *_sets(TINY_NAV),
    ]
    assert bench_learning.main(args) == 0
    data = json.loads((run / "results" / "navigation2d.json").read_text())
    assert set(data["results"]) == set(data["results_precise"]) == {"MAML (metarl)", "random init"}
    assert data["results_precise"]["MAML (metarl)"]["num_tasks"] == 4
    assert data["results"]["MAML (metarl)"]["num_tasks"] == 3
    assert data["results"]["MAML (metarl)"]["episodes_per_step"] == 2
    assert [s["step"] for s in data["results"]["MAML (metarl)"]["steps"]] == [0, 1, 2]
    assert data["timing"]["iterations"] == 2 and data["timing"]["median_s_per_iteration"] > 0
    assert data["command"].startswith("python -m benchmarks.bench_learning --iterations 2")
    assert data["commit"] and data["machine"] and data["date"]
    md = (run / "results" / "navigation2d.md").read_text()
    assert "| MAML (metarl) |" in md and "Machine:" in md
    assert _shipped("navigation2d.md", "navigation2d.json") == shipped  # the repository's results/ untouched
    assert not (tmp_path / "results").exists()

    # a second invocation resumes the finished run and writes where --results says
    capsys.readouterr()
    out = tmp_path / "elsewhere"
    assert bench_learning.main([*args, "--skip-training", "--precise-tasks", "0", "--results", str(out)]) == 0
    again = json.loads((out / "navigation2d.json").read_text())
    assert again["iterations"] == 2 and again["wall_s"] is None and "results_precise" not in again
    assert again["results"]["MAML (metarl)"]["steps"] == data["results"]["MAML (metarl)"]["steps"]  # same seeds


def test_bench_curvature_tiny(nav_run: Path, tmp_path: Path) -> None:
    args = ["--run-dir", str(nav_run), "--batches", "2", "--threads", "1", "--subsamples", "1,0.5"]
    assert bench_curvature.main(args) == 0
    data = json.loads((nav_run / "results" / "curvature_navigation2d.json").read_text())  # default: the run's folder
    assert set(data["summary"]) == {f"{c}, hvp_subsample {s}" for c in ("exact", "fisher") for s in ("1", "0.5")}
    max_kl = load_config(nav_run / "config.yaml").outer.max_kl
    for stats in data["summary"].values():
        assert stats["seconds"] > 0 and 0 <= stats["kl"] <= max_kl and stats["improvement"] >= 0
        assert math.isfinite(stats["held_out_gain"]) and stats["held_out_kl"] >= 0  # the step, on the other batch
    assert all(len(runs) == 2 for runs in data["per_batch"].values())
    assert data["iteration"] == 2
    # a checkpoint file works too, with --results
    checkpoint = nav_run / "checkpoints" / "latest.pt"
    args = [
        "--run-dir",
        str(checkpoint),
        "--batches",
        "1",
        "--subsamples",
        "1",
        "--results",
        str(tmp_path),
        "--name",
        "c",
    ]
    assert bench_curvature.main(args) == 0
    assert "held-out" not in (tmp_path / "c.md").read_text()  # one batch: nothing held out
    assert set(json.loads((tmp_path / "c.json").read_text())["summary"]) == {
        "exact, hvp_subsample 1",
        "fisher, hvp_subsample 1",
    }


def test_bench_physics_tiny_follows_config_and_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The config's env kwargs (and ``--set env.kwargs.*``) reach every method; default results outside results/."""
    monkeypatch.chdir(tmp_path)
    tiny = ["--num-tasks", "2", "--episodes", "2", "--horizon", "5", "--threads", "1"]
    assert bench_physics.main(tiny) == 0  # default config: configs/halfcheetah_vel.yaml
    data = json.loads((tmp_path / "runs" / "bench_physics" / "physics_HalfCheetahVel-v0.json").read_text())
    assert data["env_id"] == "metarl/HalfCheetahVel-v0" and data["env_kwargs"]["frame_skip"] == 1
    assert data["horizon"] == 5 and data["num_tasks"] == 2 and data["episodes"] == 2
    assert set(data["env_steps_per_s"]) == {
        bench_physics.SYNC,
        "(b) metarl batched env",
        bench_physics.CEILING,
        bench_physics.SAMPLER_SYNC,
        bench_physics.SAMPLER_BATCHED,
    }
    assert all(rate > 0 for rate in data["env_steps_per_s"].values())
    assert bench_physics.main([*tiny, "--set", "env.kwargs.frame_skip=5", "--results", "out", "--name", "fs5"]) == 0
    assert json.loads((tmp_path / "out" / "fs5.json").read_text())["env_kwargs"]["frame_skip"] == 5
    assert "'frame_skip': 5" in (tmp_path / "out" / "fs5.md").read_text()
    # the ceiling holds each action for the configured env's frame_skip physics steps
    space: Any = gymnasium.make("metarl/HalfCheetahVel-v0").action_space
    actions = bench_physics.random_actions(space, 3, 2, 0)
    for frame_skip in (1, 5):
        _, _, control = bench_physics.ceiling_inputs("metarl/HalfCheetahVel-v0", actions, 0, {"frame_skip": frame_skip})
        assert control.shape == (2, 3 * frame_skip, actions.shape[2])
        np.testing.assert_array_equal(control[:, ::frame_skip], actions.transpose(1, 0, 2))


def test_bench_sinusoid_tiny(tmp_path: Path) -> None:
    args = [
        "--iterations",
        "2",
        "--pretrain-iterations",
        "2",
        "--num-tasks",
        "4",
        "--seeds",
        "0,1",
        "--run-dir",
        str(tmp_path / "runs"),
        "--no-progress",
        "--set",
        "supervised.log_every=1",
    ]
    assert bench_sinusoid.main(args) == 0
    out = tmp_path / "runs" / "results"
    data = json.loads((out / "sinusoid.json").read_text())
    names = [
        "MAML (K=5)",
        "first-order MAML (K=5)",
        "pretrained (K=5)",
        "random init (K=5)",
        "MAML (K=10)",
        "pretrained (K=10)",
    ]
    assert [(row["name"], row["seed"]) for row in data["runs"]] == [(n, s) for s in (0, 1) for n in names]
    for row in data["runs"]:
        assert sorted(int(k) for k in row["steps"]) == list(range(11))
        assert all(s["mse"] > 0 for s in row["steps"].values()) and row["evaluation"]["num_tasks"] == 4
        assert row["resumed"] is False
    maml = [row for row in data["runs"] if row["name"] == "MAML (K=5)"]
    assert maml[0]["steps"]["1"]["mse"] != maml[1]["steps"]["1"]["mse"]  # the seeds are different runs
    mean = (maml[0]["steps"]["1"]["mse"] + maml[1]["steps"]["1"]["mse"]) / 2
    table = (out / "sinusoid.md").read_text()
    summary_row = next(line for line in table.splitlines() if line.startswith("| MAML (K=5) | 5 |"))
    assert summary_row.split(" | ")[4].startswith(f"{mean:.3f} ± ")  # the 1-step cell is the mean over seeds
    assert next(r for r in data["runs"] if r["name"] == "MAML (K=10)")["evaluation"]["shots"] == 10
    assert (out / "sinusoid_adaptation.png").stat().st_size > 0
    assert "| paper: MAML (K=5) |" in table and "## Per seed" in table
    for seed in (0, 1):
        for name in ("maml_k5", "first-order_maml_k5", "maml_k10"):
            assert (tmp_path / "runs" / f"seed{seed}" / name / "checkpoints" / "latest.pt").is_file()


def test_bench_threads_tiny(tmp_path: Path) -> None:
    args = [
        "--iterations",
        "2",
        "--warmup",
        "1",
        "--repeats",
        "1",
        "--settings",
        "1:1,2:1",
        "--conditions",
        "busy",
        "--run-dir",
        str(tmp_path),
        *_sets(TINY_NAV),
    ]
    assert bench_threads.main(args) == 0
    data = json.loads((tmp_path / "results" / "threads.json").read_text())
    assert set(data["results"]) == {"busy 1:1", "busy 2:1"}
    for entry in data["results"].values():
        assert entry["timing"]["iterations"] == 2 and entry["timing"]["median_s_per_iteration"] > 0  # warm-up dropped
    same, across = data["determinism"]["same_setting"], data["determinism"]["across_settings"]
    assert set(same) == {"1:1", "2:1"} and set(across) == {"1:1 vs 2:1"}
    assert isinstance(across["1:1 vs 2:1"]["identical"], bool)
    assert data["fastest"]["busy"] in {"1:1", "2:1"}
    assert "shared and noisy" in (tmp_path / "results" / "threads.md").read_text()
    # the measurement runs belong to this benchmark: a second one into the same folder refuses
    assert bench_threads.main(args) == 2


def test_bench_threads_same_setting_gives_identical_parameters(tmp_path: Path) -> None:
    """The determinism promise the report checks: same seed and thread count => identical parameters."""
    args = [
        "--iterations",
        "2",
        "--warmup",
        "0",
        "--repeats",
        "2",
        "--settings",
        "1:1",
        "--conditions",
        "quiet",
        "--run-dir",
        str(tmp_path),
        *_sets(TINY_NAV),
    ]
    assert bench_threads.main(args) == 0
    same = json.loads((tmp_path / "results" / "threads.json").read_text())["determinism"]["same_setting"]
    assert same == {"1:1": {"runs": 2, "identical": True, "max_abs_difference": 0.0}}


# --------------------------------------------------------------------------- compare_runs


def _fake_run(run: Path, overrides: list[str], returns: list[float], first: int = 0) -> Path:
    """A run directory with a config.yaml and a metrics.jsonl (no training)."""
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(to_dict(load_config(None, overrides))))
    timing = {"perf/time_sampling_s": 1.0, "perf/time_adapt_s": 0.0, "perf/time_learning_s": 1.0}
    rows = [{"iteration": first + i, "ret": r, **timing} for i, r in enumerate(returns)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_paired_difference_hand_computed_and_compare_runs(tmp_path: Path) -> None:
    timing = {"perf/time_sampling_s": 1.0, "perf/time_adapt_s": 0.0, "perf/time_learning_s": 1.0}
    a = [{"iteration": i, "ret": r, **timing} for i, r in enumerate([-10.0, -8.0, -9.0, -7.0])]
    b = [{"iteration": i, "ret": r, **timing} for i, r in [(1, -7.0), (2, -6.0), (3, -6.0), (4, 0.0)]]
    d = paired_difference(a, b, "ret")  # iterations 1..3: differences 1, 3, 1
    assert (d["iterations"], d["first"], d["last"]) == (3, 1, 3)
    assert d["mean"] == pytest.approx(5 / 3) and d["se"] == pytest.approx((4 / 3) ** 0.5 / 3**0.5)
    assert paired_difference(a, b, "ret", first=2)["mean"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="share 1"):
        paired_difference(a, b, "ret", first=3)
    run_a = _fake_run(tmp_path / "a", [], [-10.0, -8.0, -9.0, -7.0])
    run_b = _fake_run(tmp_path / "b", ["maml.inner_lr=0.05"], [-7.0, -6.0, -6.0, 0.0], first=1)
    assert compare_runs.main([str(run_a), str(run_b), "--keys", "ret"]) == 0
    data = json.loads((run_b / "results" / "compare_a.json").read_text())  # default: B's own results folder
    assert data["differences"]["ret"]["mean"] == pytest.approx(5 / 3) and data["seconds_a"] == 2.0
    assert data["paired"] is True and data["problems"] == []
    assert "WARNING" not in (run_b / "results" / "compare_a.md").read_text()


@pytest.mark.parametrize(
    ("overrides_b", "needle"),
    [
        (["train.seed=1"], "train.seed differs (A 0, B 1)"),
        (["maml.meta_batch_size=7"], "maml.meta_batch_size differs"),
        (["env.kwargs.goal_high=1.0"], "the task draws differ"),
    ],
)
def test_compare_runs_refuses_runs_that_do_not_pair(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], overrides_b: list[str], needle: str
) -> None:
    run_a = _fake_run(tmp_path / "a", [], [-10.0, -8.0, -9.0])
    run_b = _fake_run(tmp_path / "b", overrides_b, [-9.0, -8.0, -7.0])
    capsys.readouterr()
    assert compare_runs.main([str(run_a), str(run_b), "--keys", "ret"]) == 2
    _one_error_line(capsys.readouterr().err, needle, "--allow-different-seeds")
    assert not (run_b / "results").exists()  # nothing written

    assert compare_runs.main([str(run_a), str(run_b), "--keys", "ret", "--allow-different-seeds"]) == 0
    md = (run_b / "results" / "compare_a.md").read_text()
    assert "WARNING: NOT A PAIRED COMPARISON" in md and needle in md
    data = json.loads((run_b / "results" / "compare_a.json").read_text())
    assert data["paired"] is False and any(needle in p for p in data["problems"])
    assert data["differences"]["ret"]["mean"] == pytest.approx(1.0)


def test_compare_runs_accepts_a_setting_that_leaves_the_task_draws_alone(tmp_path: Path) -> None:
    """An env kwarg that does not change the task distribution (goal_tolerance) still pairs."""
    run_a = _fake_run(tmp_path / "a", [], [-10.0, -8.0, -9.0])
    run_b = _fake_run(tmp_path / "b", ["env.kwargs.goal_tolerance=0.0"], [-9.0, -8.0, -7.0])
    assert compare_runs.main([str(run_a), str(run_b), "--keys", "ret", "--results", str(tmp_path / "r")]) == 0
    assert json.loads((tmp_path / "r" / "compare_a.json").read_text())["paired"] is True


# --------------------------------------------------------------------------- one error line for bad input

BAD_INPUT: list[tuple[Any, list[str], str]] = [
    (bench_learning, ["--episodes", "0"], "--episodes"),
    (bench_learning, ["--output-dir", "x"], "--output-dir"),  # the old flag is gone
    (bench_learning, ["--set", "maml.inner_lr=abc", "--run-dir", "{tmp}/r"], "maml.inner_lr"),
    (bench_learning, ["--config", "{tmp}/missing.yaml"], "missing.yaml"),
    (bench_learning, ["--skip-training", "--run-dir", "{tmp}/none"], "no checkpoint"),
    (bench_physics, ["--num-tasks", "x"], "--num-tasks"),
    (bench_physics, ["--env-kwargs", "frame_skip=1"], "--env-kwargs"),
    (bench_physics, ["--set", "env.kwargs.no_such_kwarg=1", "--results", "{tmp}"], "no_such_kwarg"),
    (bench_physics, ["--config", "configs/navigation2d.yaml", "--results", "{tmp}"], "MuJoCo"),
    (bench_sinusoid, ["--iterations", "0"], "--iterations"),
    (bench_sinusoid, ["--seeds", "-1"], "--seeds"),
    (bench_sinusoid, ["--output-dir", "x"], "--output-dir"),
    (bench_sinusoid, ["--set", "supervised.shots=0", "--run-dir", "{tmp}"], "supervised.shots"),
    (bench_curvature, ["--run-dir", "{tmp}/missing"], "no checkpoint"),
    (bench_curvature, ["--run-dir", "{tmp}", "--checkpoint", "x"], "--checkpoint"),
    (bench_curvature, ["--run-dir", "{tmp}", "--subsamples", "2"], "--subsamples"),
    (compare_runs, ["{tmp}/a", "{tmp}/b"], "config.yaml"),
    (compare_runs, ["{tmp}/a", "{tmp}/b", "--first", "-1"], "--first"),
    (bench_threads, ["--settings", "0:1", "--run-dir", "{tmp}"], "--settings"),
    (bench_threads, ["--conditions", "noisy", "--run-dir", "{tmp}"], "--conditions"),
    (bench_threads, ["--episodes-per-task", "3"], "--episodes-per-task"),
    (bench_sinusoid_algorithms, ["--algorithms", "maml,sgd", "--run-dir", "{tmp}"], "--algorithms"),
    (bench_sinusoid_algorithms, ["--shots", "x"], "--shots"),
    (bench_sinusoid_algorithms, ["--set", "maml.adapt_params=[nope]", "--run-dir", "{tmp}"], "nope"),
    (bench_learn2learn, ["--methods", "l2l-anil", "--results", "{tmp}"], "--methods"),
    (bench_rl_algorithms, ["--variants", "maml-trpo,sac", "--run-dir", "{tmp}"], "--variants"),
    (bench_rl_algorithms, ["--iterations", "10", "--eval-every", "3", "--run-dir", "{tmp}"], "--eval-every"),
]


@pytest.mark.parametrize(("module", "argv", "needle"), BAD_INPUT, ids=lambda v: getattr(v, "MODULE", None))
def test_bad_input_is_one_error_line(
    module: Any, argv: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    capsys.readouterr()
    assert module.main(argv) == 2
    _one_error_line(capsys.readouterr().err, needle)


def test_a_supervised_run_is_refused_by_the_rl_benchmarks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """bench_learning and bench_curvature measure meta-RL runs; a regression run gives one error line."""
    config = load_config(
        ROOT / "configs" / "sinusoid_supervised.yaml", ["train.iterations=1", "maml.meta_batch_size=2"]
    )
    train(config, tmp_path / "run", progress=False, log=lambda _: None)
    argv = ["--config", "configs/sinusoid_supervised.yaml", "--run-dir", str(tmp_path / "run"), "--skip-training"]
    capsys.readouterr()
    assert bench_learning.main(argv) == 2
    _one_error_line(capsys.readouterr().err, "maml.loss: supervised")
    assert bench_curvature.main(["--run-dir", str(tmp_path / "run"), "--results", str(tmp_path / "r")]) == 2
    _one_error_line(capsys.readouterr().err, "maml.loss=pg")
    assert not (tmp_path / "r").exists()


def test_debug_shows_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_curvature.main(["--run-dir", str(tmp_path / "missing"), "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: no checkpoint")


def test_bad_input_through_the_real_command_line() -> None:
    """``python -m benchmarks.<script>`` from the repository root: one error line, exit 2, no traceback."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_learning", "--episodes", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert _one_error_line(done.stderr, "--episodes") == "error: argument --episodes: must be >= 1, got 0"
    assert done.stdout == ""


def test_bench_learning_seeds_reports_each_seed_and_the_mean_with_a_ci_across_seeds(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [
        "--iterations",
        "1",
        "--precise-tasks",
        "0",
        "--run-dir",
        str(run),
        "--no-progress",
        "--num-tasks",
        "2",
        "--num-steps",
        "1",
        "--episodes",
        "2",
        "--seeds",
        "3",
        "--seed",
        "5",
        *_sets(TINY_NAV),
    ]
    assert bench_learning.main(args) == 0
    data = json.loads((run / "results" / "navigation2d.json").read_text())
    assert [r["seed"] for r in data["runs"]] == [5, 6, 7]
    assert all((run / f"seed_{s}" / "checkpoints" / "latest.pt").is_file() for s in (5, 6, 7))
    per_seed = [r["results"]["MAML (metarl)"]["steps"][1]["mean_return"] for r in data["runs"]]
    assert len(set(per_seed)) == 3  # different seeds, different runs
    mean, ci = bench_learning.seed_ci95(per_seed)
    md = (run / "results" / "navigation2d.md").read_text()
    assert f"**{mean:.2f} ± {ci:.2f}**" in md and "mean over 3 seeds" in md


def test_seed_ci95_uses_student_t() -> None:
    mean, ci = bench_learning.seed_ci95([1.0, 2.0, 3.0])
    assert mean == 2.0 and ci == pytest.approx(4.303 * 1.0 / 3**0.5)
    assert np.isnan(bench_learning.seed_ci95([1.0])[1])


def test_bench_sinusoid_algorithms_tiny(tmp_path: Path) -> None:
    """Every algorithm trains and is evaluated through its checkpoint's inner rule; the second invocation only
    evaluates (its runs are finished), so shards of seeds can run apart and be tabulated together."""
    bench = bench_sinusoid_algorithms
    args = ["--iterations", "3", "--num-tasks", "5", "--shots", "5", "--seeds", "0", "--run-dir", str(tmp_path)]
    args += ["--no-progress", "--set", "supervised.log_every=1"]
    assert bench.main(args) == 0
    data = json.loads((tmp_path / "results" / "sinusoid_algorithms.json").read_text())
    assert [(r["algorithm"], r["shots"]) for r in data["runs"]] == [
        (a, 5) for a in ("maml", "fomaml", "reptile", "metasgd", "anil", "mamlpp")
    ]
    rules = {r["algorithm"]: r["inner_rule"] for r in data["runs"]}
    assert "learned per-parameter" in rules["metasgd"] and "per-layer" in rules["mamlpp"]
    assert "adapts layers.2.bias, layers.2.weight" in rules["anil"]
    assert all(len(r["steps"]) == 11 and r["iterations"] == 3 for r in data["runs"])
    md = (tmp_path / "results" / "sinusoid_algorithms.md").read_text()
    assert "| paper: Meta-SGD (Meta-SGD paper) | 1 | - | - | 0.48 |" in md and "**Target**" in md
    assert (tmp_path / "results" / "sinusoid_algorithms.png").stat().st_size > 0
    assert bench.main([*args, "--algorithms", "metasgd", "--shots", "5"]) == 0
    again = json.loads((tmp_path / "results" / "sinusoid_algorithms.json").read_text())["runs"]
    assert again[0]["resumed"] and again[0]["steps"] == data["runs"][3]["steps"]  # evaluated, not retrained


def test_bench_learn2learn_tiny_trains_the_same_models(tmp_path: Path) -> None:
    """metarl's batched MAML / Meta-SGD and the per-task loop (learn2learn's too, when installed) learn the same
    model from the same meta-batches: equal MSE, task by task."""
    args = ["--iterations", "4", "--chunk", "2", "--num-tasks", "6", "--results", str(tmp_path)]
    assert bench_learn2learn.main(args) == 0
    data = json.loads((tmp_path / "learn2learn_sinusoid.json").read_text())
    methods = data["methods"]
    assert {"metarl-maml", "loop-maml", "metarl-metasgd", "loop-metasgd"} <= methods.keys()
    for algorithm in ("maml", "metasgd"):
        ours = methods[f"metarl-{algorithm}"]["evaluation"]["steps"]
        for name in (f"loop-{algorithm}", f"l2l-{algorithm}"):
            if name in methods:
                theirs = methods[name]["evaluation"]["steps"]
                assert [s["mse"] for s in theirs] == pytest.approx([s["mse"] for s in ours], rel=1e-4)
    assert all(row["s_per_iteration"] > 0 for row in methods.values())
    assert "metarl faster by" in (tmp_path / "learn2learn_sinusoid.md").read_text()


def test_bench_sinusoid_algorithms_reports_a_diverged_training_run(tmp_path: Path, monkeypatch) -> None:
    """A run whose training diverges is a result (a row saying so), not the end of the benchmark."""
    from metarl.errors import TrainingDiverged

    real_train = bench_sinusoid_algorithms.train

    def train(config, *args, **kwargs):
        if config.maml.algorithm == "metasgd":
            raise TrainingDiverged("iteration 1: post-adaptation MSE is not finite (inf); stopped")
        return real_train(config, *args, **kwargs)

    monkeypatch.setattr(bench_sinusoid_algorithms, "train", train)
    args = ["--iterations", "2", "--num-tasks", "3", "--shots", "5", "--seeds", "0", "--algorithms", "maml,metasgd"]
    assert bench_sinusoid_algorithms.main([*args, "--run-dir", str(tmp_path), "--no-progress"]) == 0
    md = (tmp_path / "results" / "sinusoid_algorithms.md").read_text()
    assert "| metasgd | 1 | - | nan | training diverged (1/1 seeds) |" in md
    assert "training diverged: iteration 1: post-adaptation MSE is not finite (inf)" in md
    assert "| maml | 1 | - |" in md and "**Target**" not in md


def test_bench_rl_algorithms_tiny_curves_and_resume(tmp_path: Path) -> None:
    """Each variant trains in segments evaluated on the same tasks; a second invocation reuses the points."""
    args = ["--variants", "maml-trpo,metasgd-trpo,anil-trpo", "--seeds", "0,1", "--iterations", "2"]
    args += ["--eval-every", "1", "--num-tasks", "3", "--episodes", "2", "--run-dir", str(tmp_path), "--no-progress"]
    args += ["--set", "maml.meta_batch_size=2", "--set", "maml.episodes_per_task=2", "--set", "env.horizon=10"]
    assert bench_rl_algorithms.main(args) == 0
    data = json.loads((tmp_path / "results" / "rl_algorithms.json").read_text())
    assert [(r["variant"], r["seed"]) for r in data["runs"]] == [
        (v, s) for v in ("maml-trpo", "metasgd-trpo", "anil-trpo") for s in (0, 1)
    ]
    for r in data["runs"]:
        assert [p["iteration"] for p in r["curve"]] == [1, 2]
        assert r["env_steps_per_iteration"] == 2 * 2 * 2 * 10 and r["train_seconds"] > 0
    md = (tmp_path / "results" / "rl_algorithms.md").read_text()
    assert "| metasgd-trpo |" in md and "env steps to reach maml-trpo's final" in md
    assert (tmp_path / "results" / "rl_algorithms.png").stat().st_size > 0
    assert bench_rl_algorithms.main(args) == 0  # nothing left to train: the curves are read back
    again = json.loads((tmp_path / "results" / "rl_algorithms.json").read_text())
    assert [r["curve"] for r in again["runs"]] == [r["curve"] for r in data["runs"]]
