"""End to end: tiny training runs, determinism, resume (TRPO and Adam), divergence, train -> evaluate."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import metarl.trainer as trainer
from metarl.checkpoint import load_checkpoint
from metarl.cli import main
from metarl.config import Config, load_config
from metarl.errors import CheckpointError, TrainingDiverged
from metarl.policy import GaussianMLPPolicy
from metarl.reporting import timing_summary

TINY = [
    "maml.meta_batch_size=3",
    "maml.episodes_per_task=4",
    "env.horizon=15",
    "policy.hidden_sizes=[16]",
    "train.checkpoint_every=2",
    "train.num_threads=1",  # same seed and same thread count => bitwise identical parameters
]


@pytest.fixture(autouse=True)
def restore_torch_threads() -> Iterator[None]:
    """Training sets torch's thread count for the process; give the other tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def tiny_config(*extra: str, iterations: int = 3) -> Config:
    return load_config(None, [*TINY, f"train.iterations={iterations}", *extra])


def cli_flags(*extra: str) -> list[str]:
    return [f"--set={s}" for s in [*TINY, *extra]] + ["--no-progress"]


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def flat(policy: GaussianMLPPolicy) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in policy.parameters()])


def same_parameters(a: GaussianMLPPolicy, b: GaussianMLPPolicy) -> bool:
    """Bitwise equality of every parameter, dtype included."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    "extra", [[], ["maml.first_order=true"], ["outer.optimizer=adam"], ["maml.num_inner_steps=2"]], ids=str
)
def test_tiny_training_run_writes_logs_and_checkpoints(tmp_path: Path, extra: list[str]) -> None:
    result = trainer.train(tiny_config(*extra), tmp_path, progress=False)
    assert (tmp_path / "config.yaml").is_file() and load_config(tmp_path / "config.yaml") == tiny_config(*extra)
    assert list(tmp_path.glob("events.out.tfevents.*"))
    # after the first iteration, every checkpoint_every (2), and at the end
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["checkpoint_000001.pt", "checkpoint_000002.pt", "checkpoint_000003.pt", "latest.pt"]
    assert load_checkpoint(tmp_path).iteration == 3 and result.iteration == 3
    rows = metrics(tmp_path)
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert all("meta/return_post" in r and "perf/env_steps_per_s" in r for r in rows)
    # the split: sampler time, advantages + inner steps between samplings, meta-update
    assert all(
        r["perf/time_sampling_s"] > 0 and r["perf/time_adapt_s"] > 0 and r["perf/time_learning_s"] > 0 for r in rows
    )
    assert result.checkpoint == tmp_path / "checkpoints" / "checkpoint_000003.pt"
    assert same_parameters(load_checkpoint(result.checkpoint).policy, result.policy)
    assert not (tmp_path / ".lock").exists()  # released at the end


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


def test_same_seed_and_threads_give_identical_parameters(tmp_path: Path) -> None:
    a = trainer.train(tiny_config(), tmp_path / "a", progress=False)
    b = trainer.train(tiny_config(), tmp_path / "b", progress=False)
    c = trainer.train(tiny_config("train.seed=1"), tmp_path / "c", progress=False)
    assert same_parameters(a.policy, b.policy)
    assert not torch.equal(flat(a.policy), flat(c.policy))
    assert not torch.equal(flat(a.policy), flat(trainer.make_algorithm(tiny_config()).policy))  # it did learn


@pytest.mark.parametrize("optimizer", ["trpo", "adam"])
def test_resume_is_identical_to_an_uninterrupted_run(tmp_path: Path, optimizer: str) -> None:
    """Resume restores the parameters and (Adam) the optimiser state: the curve continues exactly."""
    extra = f"outer.optimizer={optimizer}"
    full = trainer.train(tiny_config(extra, iterations=4), tmp_path / "full", progress=False)
    trainer.train(tiny_config(extra, iterations=2), tmp_path / "part", progress=False)
    with open(tmp_path / "part" / "metrics.jsonl", "a") as f:  # a kill after logging iteration 2, before its checkpoint
        f.write(json.dumps({"iteration": 2, "meta/return_post": 123.0}) + "\n")
    resumed = trainer.train(tiny_config(extra, iterations=4), tmp_path / "part", resume=True, progress=False)
    assert same_parameters(full.policy, resumed.policy)
    assert [r["iteration"] for r in metrics(tmp_path / "part")] == [0, 1, 2, 3]  # the stale row 2 was dropped

    def drop_timing(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]

    assert drop_timing(metrics(tmp_path / "full")) == drop_timing(metrics(tmp_path / "part"))
    if optimizer == "adam":
        full_state = load_checkpoint(tmp_path / "full").optimizer
        resumed_state = load_checkpoint(tmp_path / "part").optimizer
        assert full_state is not None and resumed_state is not None
        for key, state in full_state["state"].items():
            assert torch.equal(state["exp_avg_sq"], resumed_state["state"][key]["exp_avg_sq"])
            assert torch.equal(torch.as_tensor(state["step"]), torch.as_tensor(resumed_state["state"][key]["step"]))


def test_adam_resume_without_optimiser_state_is_refused(tmp_path: Path) -> None:
    """A TRPO checkpoint has no Adam moments: resuming it with Adam would silently restart them."""
    trainer.train(tiny_config(iterations=1), tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="has no optimiser state, which maml-adam needs to resume"):
        trainer.train(tiny_config("outer.optimizer=adam", iterations=2), tmp_path, resume=True, progress=False)


def test_nan_stops_with_clear_message_and_keeps_last_checkpoint(tmp_path: Path, monkeypatch) -> None:
    real_step = trainer.trpo_step
    calls = {"n": 0}

    def poisoned_step(policy, *args):
        calls["n"] += 1
        if calls["n"] == 3:  # iteration 2, after the checkpoint of iteration 2
            with torch.no_grad():
                policy.layers[0].weight.fill_(float("nan"))
        return real_step(policy, *args)

    monkeypatch.setattr(trainer, "trpo_step", poisoned_step)
    with pytest.raises(
        TrainingDiverged,
        match=r"iteration 2: .*not finite.*; stopped, the last good checkpoint is .*checkpoint_000002\.pt",
    ):
        trainer.train(tiny_config(iterations=4), tmp_path, progress=False)
    loaded = load_checkpoint(tmp_path)
    assert loaded.iteration == 2
    assert all(torch.isfinite(v).all() for v in loaded.policy.state_dict().values())
    assert TrainingDiverged.exit_code == 3


def test_exploding_parameters_are_a_divergence(tmp_path: Path) -> None:
    """A finite but useless step (Adam lr 1e30 gave parameters ~1e30) is rejected like a NaN."""
    with pytest.raises(TrainingDiverged, match=r"iteration 0: .*L2 norm .*outer.max_param_norm.*no checkpoint"):
        trainer.train(tiny_config("outer.optimizer=adam", "outer.lr=1e30", iterations=2), tmp_path, progress=False)
    assert not list(tmp_path.glob("checkpoints/*.pt"))


def test_float64_trains_and_evaluates_through_the_command_line(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--iterations", "2", *cli_flags("train.dtype=float64")]) == 0
    out = capsys.readouterr()
    assert f"done: 2 iterations; checkpoint {run / 'checkpoints' / 'checkpoint_000002.pt'}" in out.out
    assert f"run directory: {run}" in out.err and "tensorboard --logdir" in out.err
    loaded = load_checkpoint(run)
    assert all(v.dtype == torch.float64 for v in loaded.policy.state_dict().values())
    args = ["evaluate", "--run-dir", str(run), "--num-tasks", "4", "--num-steps", "2", "--episodes", "3"]
    assert main(args) == 0
    result = json.loads((run / "evaluation.json").read_text())
    assert [s["step"] for s in result["steps"]] == [0, 1, 2]
    assert all({"step", "mean_return", "ci95"} <= set(s) for s in result["steps"])
    assert result["iteration"] == 2
    out = capsys.readouterr()
    assert "| maml |" in out.out and "error" not in out.err
    assert result["command"] == "metarl " + " ".join(args) and result["commit"] and result["date"]
    report = (run / "evaluation.md").read_text()
    assert "| maml |" in report and f"Command: `metarl {' '.join(args)}`" in report
    assert main([*args, "--results", str(tmp_path / "r"), "--name", "nav_eval"]) == 0
    again = json.loads((tmp_path / "r" / "nav_eval.json").read_text())
    assert again["steps"] == result["steps"]  # same tasks and seeds: the same numbers
    assert (tmp_path / "r" / "nav_eval.md").is_file()


def test_resume_through_the_command_line_is_identical(tmp_path: Path, capsys) -> None:
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["train", "--run-dir", str(full), "--iterations", "4", *cli_flags()]) == 0
    assert main(["train", "--run-dir", str(part), "--iterations", "2", *cli_flags()]) == 0
    capsys.readouterr()
    # --resume reads the run's config.yaml; --iterations raises the total
    assert main(["train", "--run-dir", str(part), "--resume", "--iterations", "4", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"resuming from {part / 'checkpoints' / 'latest.pt'} (iteration 2)" in err
    assert same_parameters(load_checkpoint(full).policy, load_checkpoint(part).policy)
    assert load_config(part / "config.yaml").train.iterations == 4


def test_third_party_env_trains_through_the_generic_vector_path(tmp_path: Path) -> None:
    """An env registered elsewhere, named as 'module:id' (gymnasium imports the module), trains via SyncVectorEnv."""
    config = tiny_config("env.id=tests.third_party_env:thirdparty/GoalPoint1D-v0", "env.horizon=10", iterations=2)
    result = trainer.train(config, tmp_path, progress=False)
    rows = metrics(tmp_path)
    assert len(rows) == 2 and all(r["meta/return_pre"] < 0 for r in rows)
    assert result.policy.obs_dim == 1


def test_episode_lengths_and_policy_std_are_logged_and_evaluated(tmp_path: Path) -> None:
    """Every iteration logs the mean episode length, the share of early terminations and the action std
    before and after adaptation; evaluation reports the episode lengths per step."""
    from metarl.evaluation import evaluate_adaptation

    config = load_config(
        None,
        [
            "maml.meta_batch_size=2",
            "maml.episodes_per_task=3",
            "env.horizon=100",
            "train.iterations=1",
            "maml.inner_lr=0.5",
        ],
    )
    result = trainer.train(config, tmp_path / "run", progress=False)
    (row,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert 0 < row["episodes/length_pre"] <= 100 and 0 <= row["episodes/terminated_early_pre"] <= 1
    assert row["policy/std_pre"] == pytest.approx(1.0)  # the initial std
    assert row["policy/std_post"] != row["policy/std_pre"]  # the inner step moves the log-std
    evaluation = evaluate_adaptation(result.policy, config, num_tasks=2, num_steps=1, episodes_per_step=2)
    assert all(0 < s["mean_length"] <= 100 and 0 <= s["terminated_early"] <= 1 for s in evaluation["steps"])


def test_success_is_logged_per_iteration_and_evaluated_through_the_command_line(tmp_path: Path, capsys) -> None:
    """An env reporting ``info["success"]`` (as Meta-World does): training logs the success rate before and
    after adaptation, ``metarl evaluate`` prints and writes it per step, and its ``--set`` changes env keys
    only (the checkpoint fixes the rest: one error line)."""
    from tests.helpers import assert_one_error_line

    run = tmp_path / "run"
    env = ["env.id=tests.ray_envs:metarl_test/Navigation-v0", "env.kwargs.success_radius=0.35", "env.horizon=20"]
    assert main(["train", "--run-dir", str(run), "--iterations", "2", *cli_flags(*env)]) == 0
    rows = metrics(run)
    assert all(0 <= r["episodes/success_pre"] <= 1 and 0 <= r["episodes/success_post"] <= 1 for r in rows)
    assert any(0 < r["episodes/success_pre"] for r in rows)
    capsys.readouterr()
    args = ["evaluate", "--run-dir", str(run), "--num-tasks", "4", "--num-steps", "1", "--episodes", "3"]
    assert main([*args, "--set", "env.kwargs.success_radius=10.0", "--results", str(tmp_path / "wide")]) == 0
    out = capsys.readouterr().out
    assert "Success rate (any step of the episode)" in out and "| maml | 1.00 ± 0.00 | 1.00 ± 0.00 |" in out
    assert main(args) == 0
    result = json.loads((run / "evaluation.json").read_text())
    assert all(0 <= s["success_rate"] <= 1 for s in result["steps"]) and len(result["per_task_success"]) == 2
    capsys.readouterr()
    code = main([*args, "--set", "policy.hidden_sizes=[4]"])
    assert_one_error_line(code, capsys.readouterr().err, "policy.hidden_sizes", "env.*")
