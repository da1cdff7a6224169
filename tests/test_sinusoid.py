"""Sinusoid regression: the one-step env, supervised MAML through the core, and both training paths."""

from __future__ import annotations

import json
import math
from pathlib import Path

import gymnasium
import metarl.envs  # noqa: F401
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from metarl.envs.sinusoid import SinusoidEnv, SinusoidVectorEnv

import metarl.supervised as supervised
from metarl.checkpoint import load_checkpoint
from metarl.cli import main as cli
from metarl.config import load_config
from metarl.errors import ConfigError, TrainingDiverged
from metarl.evaluation import mean_ci95
from metarl.policy import GaussianMLPPolicy, Params, flatten, stack_params
from metarl.sampler import Sampler
from metarl.trainer import train
from tests.helpers import finite_difference_grad

ROOT = Path(__file__).resolve().parents[1]
RL_CONFIG = ROOT / "configs" / "sinusoid_rl.yaml"
SUPERVISED_CONFIG = ROOT / "configs" / "sinusoid_supervised.yaml"


# --------------------------------------------------------------------------- env


@pytest.mark.filterwarnings("ignore:.*symmetric and normalized space:UserWarning")
def test_check_env_passes() -> None:
    check_env(gymnasium.make("metarl/Sinusoid-v0").unwrapped, skip_render_check=True)


def test_tasks_come_from_the_given_rng_only() -> None:
    env = SinusoidEnv()
    a = env.sample_tasks(200, np.random.default_rng(3))
    assert a == env.sample_tasks(200, np.random.default_rng(3))
    amplitude = np.array([t["amplitude"] for t in a])
    phase = np.array([t["phase"] for t in a])
    assert 0.1 <= amplitude.min() and amplitude.max() <= 5.0 and amplitude.std() > 1.0
    assert 0.0 <= phase.min() and phase.max() <= math.pi and phase.std() > 0.5


def test_episode_is_one_step_scored_by_squared_error() -> None:
    env = gymnasium.make("metarl/Sinusoid-v0")
    env.unwrapped.task = {"amplitude": 2.0, "phase": 0.5}
    obs, _ = env.reset(seed=4)
    assert obs.shape == (1,) and obs.dtype == np.float32 and -5 <= obs[0] <= 5
    action = np.array([0.7], dtype=np.float32)
    _, reward, terminated, _, info = env.step(action)
    target = 2.0 * math.sin(float(obs[0]) + 0.5)
    assert terminated
    assert info["target"] == pytest.approx(target, rel=1e-12)
    assert reward == pytest.approx(-((0.7 - target) ** 2), rel=1e-6)  # the action is float32
    with pytest.raises(RuntimeError, match="call reset"):
        env.unwrapped.step(action)
    assert env.reset(seed=4)[0] == obs  # the seed fixes x


def test_bad_env_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="amplitude_low"):
        SinusoidEnv(amplitude_low=5.0, amplitude_high=1.0)
    with pytest.raises(ValueError, match="action_bound"):
        SinusoidEnv(action_bound=2.0)
    with pytest.raises(ValueError, match="'amplitude' and 'phase'"):
        SinusoidVectorEnv(2).set_attr("task", [{"goal": 1.0}] * 2)


def test_single_and_vector_forms_give_identical_transitions(rng: np.random.Generator) -> None:
    tasks = SinusoidEnv().sample_tasks(6, rng)
    vec = gymnasium.make_vec("metarl/Sinusoid-v0", num_envs=6, vectorization_mode="vector_entry_point")
    assert isinstance(vec, SinusoidVectorEnv)
    vec.set_attr("task", tasks)
    singles = [SinusoidEnv() for _ in tasks]
    for env, task in zip(singles, tasks):
        env.task = task
    seeds = rng.integers(0, 2**31 - 1, size=6).tolist()
    for episode in range(3):  # seeded resets, then resets continuing each episode's generator
        obs_v, _ = vec.reset(seed=seeds if episode == 0 else None)
        obs_s = np.stack([env.reset(seed=seeds[i] if episode == 0 else None)[0] for i, env in enumerate(singles)])
        np.testing.assert_array_equal(obs_v, obs_s)
        actions = rng.uniform(-12, 12, size=(6, 1))  # includes out-of-bound actions (scored as given)
        _, rew_v, term_v, trunc_v, info_v = vec.step(actions)
        out = [env.step(a) for env, a in zip(singles, actions)]
        np.testing.assert_array_equal(rew_v, np.array([o[1] for o in out]))
        np.testing.assert_array_equal(info_v["target"], np.array([o[4]["target"] for o in out]))
        assert term_v.all() and not trunc_v.any()


def test_sampler_runs_k_one_step_episodes_per_task(rng: np.random.Generator) -> None:
    policy = GaussianMLPPolicy(1, 1, (8,), "relu", init_std=0.3)
    tasks = SinusoidEnv().sample_tasks(3, rng)
    blocks = []
    for vectorization in ("native", "sync"):
        sampler = Sampler("metarl/Sinusoid-v0", 3, 5, 1, vectorization=vectorization)
        reset_rng, generator = np.random.default_rng(1), torch.Generator().manual_seed(2)
        blocks.append(sampler.collect(policy, policy.params(), tasks, reset_rng, generator))
        sampler.close()
    assert blocks[0].observations.shape == (1, 3, 5, 1) and blocks[0].num_steps == 15
    for name in ("observations", "actions", "rewards", "mask"):
        torch.testing.assert_close(getattr(blocks[0], name), getattr(blocks[1], name))
    amplitude = torch.tensor([t["amplitude"] for t in tasks]).view(3, 1)
    phase = torch.tensor([t["phase"] for t in tasks]).view(3, 1)
    target = amplitude * torch.sin(blocks[0].observations[0, ..., 0].double() + phase)
    torch.testing.assert_close(
        blocks[0].rewards[0].double(), -((blocks[0].actions[0, ..., 0].double() - target) ** 2), rtol=1e-5, atol=1e-5
    )


# --------------------------------------------------------------------------- supervised MAML core


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


# --------------------------------------------------------------------------- training runs

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


def test_rl_config_trains_end_to_end_and_evaluates(tmp_path: Path) -> None:
    config = load_config(
        RL_CONFIG,
        [
            "maml.meta_batch_size=3",
            "maml.episodes_per_task=6",
            "policy.hidden_sizes=[8]",
            "train.iterations=2",
            "train.checkpoint_every=1",
        ],
    )
    train(config, tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1]
    assert all(r["meta/return_post"] < 0 for r in rows)
    assert cli(["evaluate", "--run-dir", str(tmp_path), "--num-tasks", "3", "--episodes", "4", "--num-steps", "1"]) == 0
    steps = json.loads((tmp_path / "evaluation.json").read_text())["steps"]
    assert [s["step"] for s in steps] == [0, 1]
