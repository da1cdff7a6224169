"""End-to-end: tiny training runs, determinism, resume, divergence handling, scripts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import metarl.trainer as trainer
from metarl.checkpoint import load_checkpoint
from metarl.config import load_config
from metarl.reporting import timing_summary
from metarl.trpo import NonFiniteError
from scripts import evaluate as evaluate_script
from scripts import train as train_script

TINY = [
    "maml.meta_batch_size=3", "maml.episodes_per_task=4", "env.horizon=15",
    "policy.hidden_sizes=[16]", "train.checkpoint_every=2",
]


def tiny_config(*extra: str, iterations: int = 3):
    return load_config(None, [*TINY, f"train.iterations={iterations}", *extra])


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def flat(policy) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in policy.parameters()])


@pytest.mark.parametrize("extra", [[], ["maml.first_order=true"], ["outer.optimizer=adam"], ["maml.num_inner_steps=2"]])
def test_tiny_training_run_writes_logs_and_checkpoints(tmp_path: Path, extra: list[str]) -> None:
    result = trainer.train(tiny_config(*extra), tmp_path, progress=False)
    assert (tmp_path / "config.yaml").is_file()
    assert list(tmp_path.glob("events.out.tfevents.*"))
    assert (tmp_path / "checkpoints" / "checkpoint_000002.pt").is_file()
    assert load_checkpoint(tmp_path)["iteration"] == 3
    rows = metrics(tmp_path)
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert all("meta/return_post" in r and "perf/env_steps_per_s" in r for r in rows)
    # the split: sampler time, advantages + inner steps between samplings, meta-update
    assert all(r["perf/time_sampling_s"] > 0 and r["perf/time_adapt_s"] > 0 and r["perf/time_learning_s"] > 0
               for r in rows)
    assert result.checkpoint.is_file()


def test_timing_summary_splits_sampling_and_learner() -> None:
    rows = [
        {"perf/time_sampling_s": 6.0, "perf/time_adapt_s": 1.0, "perf/time_learning_s": 3.0},
        {"perf/time_sampling_s": 8.0, "perf/time_adapt_s": 1.0, "perf/time_learning_s": 1.0},
        {"perf/time_sampling_s": 7.0, "perf/time_learning_s": 3.0},  # logged before the adapt key existed
    ]
    timing = timing_summary(rows)
    assert timing["total_iteration_s"] == pytest.approx(30.0)
    assert timing["median_s_per_iteration"] == pytest.approx(10.0)
    assert timing["median_adapt_s"] == pytest.approx(1.0)
    assert timing["learner_fraction"] == pytest.approx(0.3)  # median of 0.4, 0.2, 0.3


def test_same_seed_gives_identical_parameters(tmp_path: Path) -> None:
    a = trainer.train(tiny_config(), tmp_path / "a", progress=False)
    b = trainer.train(tiny_config(), tmp_path / "b", progress=False)
    c = trainer.train(tiny_config("train.seed=1"), tmp_path / "c", progress=False)
    assert torch.equal(flat(a.policy), flat(b.policy))
    assert not torch.equal(flat(a.policy), flat(c.policy))


def test_resume_continues_the_same_curve(tmp_path: Path) -> None:
    full = trainer.train(tiny_config(iterations=4), tmp_path / "full", progress=False)
    trainer.train(tiny_config(iterations=2), tmp_path / "part", progress=False)
    with open(tmp_path / "part" / "metrics.jsonl", "a") as f:  # a kill after logging iteration 2, before its checkpoint
        f.write(json.dumps({"iteration": 2, "meta/return_post": 123.0}) + "\n")
    resumed = trainer.train(tiny_config(iterations=4), tmp_path / "part", resume=True, progress=False)
    assert torch.equal(flat(full.policy), flat(resumed.policy))
    assert [r["iteration"] for r in metrics(tmp_path / "part")] == [0, 1, 2, 3]  # the stale row 2 was dropped
    assert metrics(tmp_path / "full")[2:] == [
        {**r, **{k: v for k, v in f.items() if k.startswith("perf/")}}
        for r, f in zip(metrics(tmp_path / "part")[2:], metrics(tmp_path / "full")[2:])
    ]


def test_nan_stops_with_clear_message_and_keeps_last_checkpoint(tmp_path: Path, monkeypatch) -> None:
    real_step = trainer.trpo_step
    calls = {"n": 0}

    def poisoned_step(policy, *args):
        calls["n"] += 1
        if calls["n"] == 3:  # after the checkpoint at iteration 2
            with torch.no_grad():
                policy.layers[0].weight.fill_(float("nan"))
        return real_step(policy, *args)

    monkeypatch.setattr(trainer, "trpo_step", poisoned_step)
    with pytest.raises(trainer.TrainingDiverged, match=r"iteration 2: surrogate loss is not finite .*; stopped, the last good checkpoint is .*checkpoint_000002.pt"):
        trainer.train(tiny_config(iterations=4), tmp_path, progress=False)
    payload = load_checkpoint(tmp_path)
    assert payload["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in payload["policy"].values())
    assert NonFiniteError  # the error type the trainer converts


def test_scripts_train_and_evaluate(tmp_path: Path, capsys) -> None:
    args = ["--iterations", "2", "--output-dir", str(tmp_path / "run"), "--no-progress"]
    assert train_script.main(args + [f"--set={s}" for s in TINY]) == 0
    assert evaluate_script.main(["--checkpoint", str(tmp_path / "run"), "--num-tasks", "4",
                                 "--num-steps", "2", "--episodes-per-step", "3"]) == 0
    result = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert [s["step"] for s in result["steps"]] == [0, 1, 2]
    assert all(set(s) == {"step", "mean_return", "ci95"} for s in result["steps"])
    assert "| MAML |" in capsys.readouterr().out


def test_train_script_reports_bad_config_in_one_line(tmp_path: Path, capsys) -> None:
    assert train_script.main(["--set", "maml.inner_lr=abc", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: config key 'maml.inner_lr': bad value 'abc'; allowed: float > 0"


def test_third_party_env_trains_through_the_generic_vector_path(tmp_path: Path) -> None:
    """An env registered elsewhere, named as 'module:id' (gymnasium imports the module), trains via SyncVectorEnv."""
    config = tiny_config("env.id=tests.third_party_env:thirdparty/GoalPoint1D-v0", "env.horizon=10", iterations=2)
    result = trainer.train(config, tmp_path, progress=False)
    rows = metrics(tmp_path)
    assert len(rows) == 2 and all(r["meta/return_pre"] < 0 for r in rows)
    assert result.policy.obs_dim == 1
