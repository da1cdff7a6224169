"""Supervised MAML: meta-gradients in float64, the stacked inner step, evaluation, training runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import metarl.envs  # noqa: F401
import numpy as np
import pytest
import torch
from metarl.envs.sinusoid import SinusoidEnv

import metarl.supervised as supervised
from metarl.checkpoint import load_checkpoint
from metarl.cli import main as cli
from metarl.config import load_config
from metarl.errors import ConfigError, TrainingDiverged
from metarl.evaluation import mean_ci95
from metarl.policy import GaussianMLPPolicy, Params, flatten, stack_params
from metarl.trainer import train
from tests.helpers import finite_difference_grad

SUPERVISED_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sinusoid_supervised.yaml"


@pytest.fixture
def regression_policy() -> GaussianMLPPolicy:
    """A 1-4-1 tanh regressor in float64 (smooth, so finite differences are exact to O(eps^2))."""
    policy = GaussianMLPPolicy(1, 1, (4,), "tanh").double()
    policy.reset_parameters(torch.Generator().manual_seed(0))
    return policy


def regression_batch(n: int = 3, shots: int = 4, query: int = 6, seed: int = 0) -> supervised.RegressionBatch:
    env = SinusoidEnv()
    rng = np.random.default_rng(seed)
    return supervised.sample_regression_batch(env, env.sample_tasks(n, rng), shots, query, rng, torch.float64)


def meta_loss(policy: GaussianMLPPolicy, batch: supervised.RegressionBatch, k: int, first_order: bool):
    """``theta -> post-adaptation query MSE`` after ``k`` inner steps of size 0.05."""
    return lambda params: supervised.meta_objective(policy, params, batch, [0.05] * k, first_order)[0]


def leaf_params(policy: GaussianMLPPolicy) -> Params:
    return {n: p.detach().clone().requires_grad_() for n, p in policy.params().items()}


@pytest.mark.parametrize("k", [1, 2])
def test_second_order_meta_gradient_matches_finite_differences(regression_policy: GaussianMLPPolicy, k: int) -> None:
    batch = regression_batch()
    f = meta_loss(regression_policy, batch, k, first_order=False)
    theta = leaf_params(regression_policy)
    autograd = flatten(torch.autograd.grad(f(theta), list(theta.values()), allow_unused=True, materialize_grads=True))
    numeric = finite_difference_grad(f, theta)
    torch.testing.assert_close(autograd, numeric, rtol=1e-6, atol=1e-8)
    assert autograd.abs().max() > 1e-2


def test_first_order_is_outer_gradient_at_adapted_params_and_differs_from_second_order(
    regression_policy: GaussianMLPPolicy,
) -> None:
    batch = regression_batch()
    theta = leaf_params(regression_policy)
    grads = {}
    for first_order in (True, False):
        loss = meta_loss(regression_policy, batch, 1, first_order)(theta)
        grads[first_order] = flatten(
            torch.autograd.grad(loss, list(theta.values()), allow_unused=True, materialize_grads=True)
        )
    # Independent computation: the adapted parameters as leaves, the outer gradient there, summed over tasks.
    adapted = supervised.adapt_regression(regression_policy, theta, batch.support_x, batch.support_y, [0.05], True)
    adapted = {name: v.detach().requires_grad_() for name, v in adapted.items()}
    outer = supervised.task_mse(regression_policy, adapted, batch.query_x, batch.query_y).mean()
    expected = flatten(
        [
            g.sum(0)
            for g in torch.autograd.grad(outer, list(adapted.values()), allow_unused=True, materialize_grads=True)
        ]
    )
    torch.testing.assert_close(grads[True], expected, rtol=1e-10, atol=1e-12)
    assert (grads[True] - grads[False]).abs().max() > 1e-4  # the flag changes the gradient


def test_stacked_inner_step_is_each_tasks_own_gradient_step(regression_policy: GaussianMLPPolicy) -> None:
    batch = regression_batch(n=3)
    theta = regression_policy.params()
    adapted = supervised.adapt_regression(regression_policy, theta, batch.support_x, batch.support_y, [0.3], True)
    for i in range(3):
        x, y = batch.support_x[i : i + 1], batch.support_y[i : i + 1]
        loss = supervised.task_mse(regression_policy, theta, x, y).sum()
        names = [n for n in theta if n != "log_std"]
        grads = torch.autograd.grad(loss, [theta[n] for n in names])
        for name, g in zip(names, grads):
            torch.testing.assert_close(adapted[name][i], theta[name] - 0.3 * g)
        torch.testing.assert_close(adapted["log_std"][i], theta["log_std"])  # unused: zero gradient


def test_evaluation_matches_a_direct_computation(regression_policy: GaussianMLPPolicy) -> None:
    config = load_config(SUPERVISED_CONFIG, ["train.dtype=float64"])
    result = supervised.evaluate_regression(
        regression_policy, config, num_tasks=4, shots=3, num_steps=2, query_size=7, seed=5, lr=0.1
    )
    assert [s["step"] for s in result["steps"]] == [0, 1, 2]
    rng = np.random.default_rng(5)
    env = SinusoidEnv()
    batch = supervised.sample_regression_batch(env, env.sample_tasks(4, rng), 3, 7, rng, torch.float64)
    params = stack_params(regression_policy.params(), 4)
    for k in range(3):
        expected = supervised.task_mse(regression_policy, params, batch.query_x, batch.query_y).detach().numpy()
        np.testing.assert_allclose(result["per_task"][k], expected, rtol=1e-10)
        assert result["steps"][k]["mse"] == pytest.approx(expected.mean())
        params = supervised.adapt_regression(regression_policy, params, batch.support_x, batch.support_y, [0.1], True)
    assert result == supervised.evaluate_regression(
        regression_policy, config, num_tasks=4, shots=3, num_steps=2, query_size=7, seed=5, lr=0.1
    )


def test_supervised_loss_needs_a_regression_env() -> None:
    config = load_config(None, ["maml.loss=supervised", "outer.optimizer=adam"])
    with pytest.raises(ConfigError, match="sample_points"):
        train(config, Path("unused"), progress=False)
    with pytest.raises(ConfigError, match="maml.loss"):
        supervised.SupervisedMAML(load_config(SUPERVISED_CONFIG, ["maml.loss=pg"]))
    with pytest.raises(ConfigError, match="outer.optimizer"):
        supervised.SupervisedMAML(load_config(SUPERVISED_CONFIG, ["outer.optimizer=trpo"]))


TINY_SUPERVISED = [
    "policy.hidden_sizes=[16]",
    "maml.meta_batch_size=4",
    "supervised.log_every=2",
    "train.checkpoint_every=3",
]


def tiny_supervised(*extra: str, iterations: int = 6):
    return load_config(SUPERVISED_CONFIG, [*TINY_SUPERVISED, f"train.iterations={iterations}", *extra])


def flat(policy: GaussianMLPPolicy) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in policy.parameters()])


def test_supervised_meta_training_makes_adaptation_help(tmp_path: Path) -> None:
    config = load_config(
        SUPERVISED_CONFIG,
        ["train.iterations=400", "supervised.log_every=100", "train.checkpoint_every=400", "maml.inner_lr=0.05"],
    )
    result = train(config, tmp_path, progress=False)
    evaluation = supervised.evaluate_regression(result.policy, config, num_tasks=300, num_steps=1)
    gain, ci = mean_ci95(np.subtract(*evaluation["per_task"]))  # paired: same tasks before and after
    assert gain > 2 * ci > 0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [99, 199, 299, 399]
    assert rows[-1]["meta/mse_post"] < rows[-1]["meta/mse_pre"]
    assert list(tmp_path.glob("events.out.tfevents.*"))


def test_supervised_training_is_deterministic_and_resumable(tmp_path: Path) -> None:
    a = train(tiny_supervised(), tmp_path / "a", progress=False)
    b = train(tiny_supervised(), tmp_path / "b", progress=False)
    c = train(tiny_supervised("train.seed=1"), tmp_path / "c", progress=False)
    assert torch.equal(flat(a.policy), flat(b.policy))
    assert not torch.equal(flat(a.policy), flat(c.policy))
    train(tiny_supervised(iterations=3), tmp_path / "part", progress=False)
    resumed = train(tiny_supervised(), tmp_path / "part", resume=True, progress=False)
    assert torch.equal(flat(a.policy), flat(resumed.policy))  # Adam state restored, same data drawn
    checkpoint = load_checkpoint(tmp_path / "part")
    assert checkpoint.iteration == 6 and checkpoint.optimizer is not None and checkpoint.optimizer["state"]
    last = lambda d: json.loads((d / "metrics.jsonl").read_text().splitlines()[-1])  # noqa: E731
    assert last(tmp_path / "a")["meta/mse_post"] == last(tmp_path / "part")["meta/mse_post"]


def test_supervised_nan_stops_with_clear_message(tmp_path: Path, monkeypatch) -> None:
    real_step = supervised.meta_step
    calls = {"n": 0}

    def poisoned_step(policy, *args):
        calls["n"] += 1
        if calls["n"] == 4:  # after the checkpoint at iteration 3
            with torch.no_grad():
                policy.layers[0].weight.fill_(float("nan"))
        return real_step(policy, *args)

    monkeypatch.setattr(supervised, "meta_step", poisoned_step)
    with pytest.raises(TrainingDiverged, match=r"iteration 3: post-adaptation MSE is not finite.*checkpoint_000003.pt"):
        train(tiny_supervised(), tmp_path, progress=False)
    assert load_checkpoint(tmp_path).iteration == 3


def test_train_script_dispatches_the_supervised_config(tmp_path: Path) -> None:
    args = [
        "train",
        "--config",
        str(SUPERVISED_CONFIG),
        "--run-dir",
        str(tmp_path),
        "--iterations",
        "2",
        "--no-progress",
    ]
    assert cli([*args, *(a for s in TINY_SUPERVISED for a in ("--set", s))]) == 0
    assert load_checkpoint(tmp_path).iteration == 2
    assert cli(["evaluate", "--run-dir", str(tmp_path), "--num-tasks", "5", "--num-steps", "2"]) == 0
    steps = json.loads((tmp_path / "evaluation.json").read_text())["steps"]
    assert [s["step"] for s in steps] == [0, 1, 2]
    assert all(s["mse"] > 0 and math.isfinite(s["ci95"]) for s in steps)
