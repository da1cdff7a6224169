"""The MAML family (metarl.algorithms): meta-gradients in float64 against central finite differences of each
algorithm's own meta-objective, ANIL's frozen body, Reptile's step by hand, MAML++'s schedules and multi-step
loss, learned step sizes through checkpoint, evaluate and resume, and one-line errors for contradicting keys."""

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
from metarl.algorithms import (
    ALGORITHMS,
    InnerRule,
    LearnedStepSizes,
    MetaLearner,
    adapted_names,
    checkpoint_inner_rule,
    cosine_lr,
    first_order_at,
    linear_anneal,
    meta_loss,
    multi_step_loss_weights,
)
from metarl.checkpoint import load_checkpoint, save_checkpoint
from metarl.config import Config, load_config
from metarl.errors import CheckpointError, ConfigError, TrainingDiverged
from metarl.maml import InnerAdam
from metarl.policy import GaussianMLPPolicy, stack_params
from metarl.render import render_checkpoint
from metarl.trainer import train
from tests.helpers import assert_one_error_line, assert_train_refuses, run_cli

SUPERVISED_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sinusoid_supervised.yaml"
HEAD = {"layers.1.weight", "layers.1.bias"}


@pytest.fixture
def policy() -> GaussianMLPPolicy:
    """A 1-4-1 tanh regressor in float64 (smooth: central differences are exact to O(eps^2))."""
    model = GaussianMLPPolicy(1, 1, (4,), "tanh").double()
    model.reset_parameters(torch.Generator().manual_seed(0))
    return model


def config_for(algorithm: str, *extra: str, steps: int = 2) -> Config:
    return load_config(
        SUPERVISED_CONFIG,
        [
            "train.dtype=float64",
            f"maml.algorithm={algorithm}",
            f"maml.num_inner_steps={steps}",
            "maml.inner_lr=0.1",
            "train.iterations=100",
            *extra,
        ],
    )


def batch(n: int = 3, shots: int = 4, query: int = 6, seed: int = 0) -> supervised.RegressionBatch:
    env = SinusoidEnv()
    rng = np.random.default_rng(seed)
    return supervised.sample_regression_batch(env, env.sample_tasks(n, rng), shots, query, rng, torch.float64)


def losses(policy: GaussianMLPPolicy, b: supervised.RegressionBatch):
    return supervised.mse_inner_loss(policy, b.support_x, b.support_y), supervised.query_mse_loss(policy, b)


def learned(learner: MetaLearner) -> list[torch.nn.Parameter]:
    """Every tensor the learner's outer step updates: θ, then the learned step sizes."""
    extra = list(learner.step_sizes.parameters()) if learner.step_sizes is not None else []
    return [*learner.model.parameters(), *extra]


def objective(learner: MetaLearner, b: supervised.RegressionBatch, it: int) -> torch.Tensor:
    """The learner's own meta-objective at iteration ``it`` (the one its outer step differentiates)."""
    inner, query = losses(learner.model, b)  # type: ignore[arg-type]
    k = learner.config.maml.num_inner_steps
    return meta_loss(inner, query, learner.model.params(), b.num_tasks, learner.rule(it), k, learner.step_weights(it))


def central_differences(f, tensors: list[torch.Tensor], eps: float = 1e-6) -> torch.Tensor:
    """Central differences of ``f()`` with respect to every element of ``tensors`` (perturbed in place)."""
    out = []
    for t in tensors:
        flat = t.detach().view(-1)  # shares t's memory: writing it moves t
        for i in range(flat.numel()):
            keep = flat[i].item()
            flat[i] = keep + eps
            plus = f().item()
            flat[i] = keep - eps
            minus = f().item()
            flat[i] = keep
            out.append((plus - minus) / (2 * eps))
    return torch.tensor(out, dtype=torch.float64)


def autograd(value: torch.Tensor, tensors: list[torch.Tensor]) -> torch.Tensor:
    grads = torch.autograd.grad(value, tensors, allow_unused=True, materialize_grads=True)
    return torch.cat([g.reshape(-1) for g in grads])


@pytest.mark.parametrize(
    ("algorithm", "extra", "it"),
    [
        ("maml", [], 0),
        ("metasgd", [], 0),
        ("anil", [], 0),
        ("anil", ["maml.adapt_params=[layers.0.bias, layers.1]"], 0),
        # MAML++ in its second-order phase with the multi-step loss still annealing: every part differentiated
        ("mamlpp", ["mamlpp.first_order_iterations=5", "mamlpp.multi_step_loss_iterations=50"], 10),
    ],
    ids=str,
)
def test_second_order_meta_gradient_matches_central_differences(
    policy: GaussianMLPPolicy, algorithm: str, extra: list[str], it: int
) -> None:
    """d(meta-objective)/d(θ, learned step sizes) by autograd equals central differences of the same objective."""
    learner = MetaLearner(config_for(algorithm, *extra), policy)
    b = batch()
    assert not learner.rule(it).first_order
    if learner.step_sizes is not None:  # step sizes away from their common initial value: a generic point
        with torch.no_grad():
            for v in learner.step_sizes.values:
                v.mul_(torch.linspace(0.5, 1.5, v.numel(), dtype=torch.float64).view_as(v))
    tensors = learned(learner)
    analytic = autograd(objective(learner, b, it).objective, tensors)
    numeric = central_differences(lambda: objective(learner, b, it).objective, tensors)
    torch.testing.assert_close(analytic, numeric, rtol=1e-6, atol=1e-8)
    assert analytic.abs().max() > 1e-2
    if learner.step_sizes is not None:
        n_theta = sum(p.numel() for p in policy.parameters())
        assert analytic[n_theta:].abs().max() > 1e-3  # the learned step sizes do get a meta-gradient
    if algorithm == "mamlpp":
        weights = learner.step_weights(it)
        assert weights is not None and 0 < weights[0] < weights[-1] < 1  # the multi-step loss is in play


@pytest.mark.parametrize(
    ("algorithm", "extra", "it"),
    [("fomaml", [], 0), ("metasgd", ["maml.first_order=true"], 0), ("mamlpp", ["mamlpp.first_order_iterations=50"], 3)],
    ids=str,
)
def test_first_order_meta_gradient_is_the_gradient_with_the_inner_gradients_frozen(
    policy: GaussianMLPPolicy, algorithm: str, extra: list[str], it: int
) -> None:
    """First order: the meta-gradient equals central differences of the objective in which every inner gradient is
    frozen at its value on the unperturbed trajectory (φ_j = φ_{j-1} - α_j g_j, g_j constant)."""
    learner = MetaLearner(config_for(algorithm, *extra), policy)
    b = batch()
    rule = learner.rule(it)
    assert rule.first_order
    k = learner.config.maml.num_inner_steps
    inner, query = losses(policy, b)
    frozen: list[dict[str, torch.Tensor]] = []
    current = stack_params({n: p.detach() for n, p in policy.params().items()}, b.num_tasks)
    for j in range(k):  # the unperturbed trajectory's inner gradients
        leaf = {n: v.clone().requires_grad_() for n, v in current.items()}
        grads = dict(zip(leaf, torch.autograd.grad(inner(leaf, j), list(leaf.values()))))
        frozen.append(grads)
        size = rule.lrs(k)[j]
        current = {n: v - (size if isinstance(size, float) else size[n].detach()) * grads[n] for n, v in leaf.items()}
        current = {n: v.detach() for n, v in current.items()}
    weights = learner.step_weights(it) or [0.0] * (k - 1) + [1.0]

    def frozen_objective() -> torch.Tensor:
        params = stack_params(policy.params(), b.num_tasks)
        total = torch.zeros((), dtype=torch.float64)
        for j, size in enumerate(learner.rule(it).lrs(k)):
            params = {n: v - (size if isinstance(size, float) else size[n]) * frozen[j][n] for n, v in params.items()}
            total = total + weights[j] * query(params).mean()
        return total

    tensors = learned(learner)
    analytic = autograd(objective(learner, b, it).objective, tensors)
    torch.testing.assert_close(analytic, autograd(frozen_objective(), tensors), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(analytic, central_differences(frozen_objective, tensors), rtol=1e-6, atol=1e-8)
    n_theta = sum(p.numel() for p in policy.parameters())
    second = autograd(
        objective(MetaLearner(config_for("maml", steps=k), policy), b, 0).objective, list(policy.parameters())
    )
    assert (analytic[:n_theta] - second).abs().max() > 1e-4  # first order is not the second-order gradient


def test_anil_body_has_exactly_zero_inner_step_and_equals_maml_with_the_body_frozen(policy: GaussianMLPPolicy) -> None:
    learner = MetaLearner(config_for("anil"), policy)
    assert learner.adapted == frozenset(HEAD)
    b = batch()
    inner, query = losses(policy, b)
    theta = {n: p for n, p in policy.params().items()}
    steps = list(learner.rule(0).steps(inner, theta, b.num_tasks, 2))
    for adapted in steps:
        for name in theta.keys() - HEAD:  # the body: bitwise θ in every task, after every step
            assert torch.equal(adapted[name], theta[name].expand_as(adapted[name]))
        for name in HEAD:
            assert not torch.equal(adapted[name], theta[name].expand_as(adapted[name]))
    # MAML with the body's inner gradient multiplied by zero, by hand, second order
    stacked = stack_params(theta, b.num_tasks)
    for j in range(2):
        grads = torch.autograd.grad(inner(stacked, j), list(stacked.values()), create_graph=True)
        stacked = {n: v - 0.1 * (g if n in HEAD else 0 * g) for (n, v), g in zip(stacked.items(), grads)}
    by_hand = query(stacked).mean()
    anil = objective(learner, b, 0).objective
    torch.testing.assert_close(anil, by_hand, rtol=1e-12, atol=0)
    params = list(policy.parameters())
    meta_gradient = autograd(anil, params)
    torch.testing.assert_close(meta_gradient, autograd(by_hand, params), rtol=1e-10, atol=1e-12)
    assert meta_gradient[: policy.layers[0].weight.numel()].abs().max() > 1e-3  # the body is meta-learned (outer loop)


def test_adapt_params_choices() -> None:
    model = GaussianMLPPolicy(1, 1, (4, 4), "relu")
    names = lambda *extra: adapted_names(load_config(SUPERVISED_CONFIG, list(extra)), model)  # noqa: E731
    assert names() is None  # maml: all
    assert names("maml.algorithm=anil") == {"layers.2.weight", "layers.2.bias"}
    assert names("maml.adapt_params=head") == {"layers.2.weight", "layers.2.bias"}
    assert names("maml.adapt_params=[layers.1, layers.2.bias]") == {"layers.1.weight", "layers.1.bias", "layers.2.bias"}
    assert names("maml.adapt_params=all") is None
    with pytest.raises(ConfigError, match="'layers.9' names no parameter of the model .*layers.0.weight"):
        names("maml.adapt_params=[layers.9]")


def test_reptile_step_is_theta_plus_epsilon_times_mean_adapted_minus_theta(policy: GaussianMLPPolicy) -> None:
    """One batched Reptile meta-step equals θ + ε(mean_i φ_i − θ) with φ_i from a plain per-task loop (SGD and
    Adam inner steps), ε linearly annealed."""
    b = batch(n=3)
    for optimizer in ("sgd", "adam"):
        model = GaussianMLPPolicy(1, 1, (4,), "tanh").double()
        model.load_state_dict(policy.state_dict())
        extra = [f"reptile.inner_optimizer={optimizer}", "reptile.outer_step_size=0.8", "reptile.adam_beta1=0.5"]
        learner = MetaLearner(config_for("reptile", *extra, steps=3), model)
        it = 25
        epsilon = 0.8 * (1 - it / 100)
        theta = {n: p.detach().clone() for n, p in model.named_parameters()}
        phis = []
        for i in range(3):  # per task, by hand
            phi = {n: v.clone() for n, v in theta.items()}
            m = {n: torch.zeros_like(v) for n, v in phi.items()}
            v2 = {n: torch.zeros_like(v) for n, v in phi.items()}
            for j in range(3):
                leaf = {n: v.clone().requires_grad_() for n, v in phi.items()}
                loss = supervised.task_mse(model, leaf, b.support_x[i : i + 1], b.support_y[i : i + 1]).sum()
                loss = loss + 0.0 * leaf["log_std"].sum()
                grads = torch.autograd.grad(loss, list(leaf.values()))
                for (n, p), g in zip(phi.items(), grads):
                    if optimizer == "sgd":
                        phi[n] = p - 0.1 * g
                    else:
                        m[n] = 0.5 * m[n] + 0.5 * g
                        v2[n] = 0.999 * v2[n] + 0.001 * g * g
                        m_hat, v_hat = m[n] / (1 - 0.5 ** (j + 1)), v2[n] / (1 - 0.999 ** (j + 1))
                        phi[n] = p - 0.1 * m_hat / (v_hat.sqrt() + 1e-8)
            phis.append(phi)
        expected = {n: theta[n] + epsilon * (torch.stack([phi[n] for phi in phis]).mean(0) - theta[n]) for n in theta}
        inner, query = losses(model, b)
        stats = learner.step(it, inner, query, b.num_tasks)
        assert stats["reptile/outer_step_size"] == pytest.approx(epsilon)
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), expected[n], rtol=1e-10, atol=1e-12)
        assert (model.layers[0].weight - theta["layers.0.weight"]).abs().max() > 1e-4
        assert learner.optimizer is None and learner.extra_state() == {}


def test_multi_step_loss_weights_follow_the_papers_schedule() -> None:
    k, anneal = 5, 100
    assert multi_step_loss_weights(k, 0, anneal) == pytest.approx([0.2] * 5)
    mid = multi_step_loss_weights(k, 40, anneal)  # 1/K - 40/(K*100) = 0.12 for each early step
    assert mid == pytest.approx([0.12] * 4 + [0.2 + 40 * 4 / 500])
    late = multi_step_loss_weights(k, 99, anneal)  # early weights floored at 0.03/K
    assert late == pytest.approx([0.006] * 4 + [1 - 4 * 0.006])
    assert multi_step_loss_weights(k, 100, anneal) == [0.0] * 4 + [1.0]
    assert multi_step_loss_weights(k, 0, 0) == [0.0] * 4 + [1.0]
    series = [multi_step_loss_weights(k, it, anneal) for it in range(0, 100, 7)]
    assert all(sum(w) == pytest.approx(1.0) for w in series)
    assert all(a[-1] <= b[-1] and a[0] >= b[0] for a, b in zip(series, series[1:]))  # toward the last step
    with pytest.raises(ValueError):
        multi_step_loss_weights(0, 0, 10)


def test_mamlpp_multi_step_loss_is_the_weighted_sum_of_per_step_query_losses(policy: GaussianMLPPolicy) -> None:
    learner = MetaLearner(config_for("mamlpp", "mamlpp.multi_step_loss_iterations=40", steps=3), policy)
    b = batch()
    inner, query = losses(policy, b)
    it = 10
    weights = learner.step_weights(it)
    assert weights == pytest.approx(multi_step_loss_weights(3, 10, 40)) and weights[0] > 0
    result = objective(learner, b, it)
    sizes = learner.step_sizes.sizes()  # type: ignore[union-attr]
    by_hand = torch.zeros((), dtype=torch.float64)
    params = stack_params(policy.params(), b.num_tasks)
    for j in range(3):  # per step: one gradient step with step j's per-layer sizes, then the query loss
        grads = torch.autograd.grad(
            inner(params, j), list(params.values()), create_graph=not learner.rule(it).first_order
        )
        params = {n: v - sizes[j][n] * g for (n, v), g in zip(params.items(), grads)}
        by_hand = by_hand + weights[j] * query(params).mean()
    torch.testing.assert_close(result.objective, by_hand, rtol=1e-12, atol=0)
    assert len(result.per_step) == 3
    torch.testing.assert_close(result.post, result.per_step[-1])
    late = objective(learner, b, 40)  # after the annealing: the last step only
    assert learner.step_weights(40) == [0.0, 0.0, 1.0]
    torch.testing.assert_close(late.objective, late.post)


def test_mamlpp_anneals_the_derivative_order_and_the_outer_learning_rate(policy: GaussianMLPPolicy) -> None:
    config = config_for("mamlpp", "mamlpp.first_order_iterations=30", "outer.lr=0.01", "mamlpp.min_outer_lr=0.001")
    assert [first_order_at(config, it) for it in (0, 29, 30, 99)] == [True, True, False, False]
    assert first_order_at(config_for("mamlpp"), 32) and not first_order_at(config_for("mamlpp"), 33)  # default T/3
    assert cosine_lr(0.01, 0.001, 0, 100) == pytest.approx(0.01)
    assert cosine_lr(0.01, 0.001, 50, 100) == pytest.approx(0.0055)
    assert cosine_lr(0.01, 0.001, 100, 100) == pytest.approx(0.001)
    learner = MetaLearner(config, policy)
    b = batch()
    stats = learner.step(50, *losses(policy, b), b.num_tasks)
    assert stats["outer/lr"] == pytest.approx(0.0055) and stats["mamlpp/first_order"] == 0.0
    assert all(g["lr"] == pytest.approx(0.0055) for g in learner.optimizer.param_groups)  # type: ignore[union-attr]
    assert stats["mamlpp/first_order"] == 0 and learner.step(10, *losses(policy, b), 3)["mamlpp/first_order"] == 1
    assert linear_anneal(1.0, 0.0, 25, 100) == pytest.approx(0.75)


def test_learned_step_sizes_shapes_and_state_round_trip(policy: GaussianMLPPolicy) -> None:
    meta_sgd = MetaLearner(config_for("metasgd"), policy).step_sizes
    assert meta_sgd is not None and len(meta_sgd.sizes()) == 1
    for name, alpha in meta_sgd.sizes()[0].items():
        assert alpha.shape == policy.params()[name].shape and torch.all(alpha == 0.1)
    lslr = MetaLearner(config_for("mamlpp", steps=3), policy).step_sizes
    assert lslr is not None and len(lslr.sizes()) == 3 and all(v.shape == (3,) for v in lslr.values)
    rebuilt = LearnedStepSizes.from_state(lslr.state())
    assert rebuilt.names == lslr.names and all(torch.equal(a, b) for a, b in zip(rebuilt.values, lslr.values))
    with pytest.raises(CheckpointError, match="do not fit"):
        lslr.load_state(meta_sgd.state())


# --------------------------------------------------------------------------- checkpoint -> evaluate, render, resume


def metasgd_checkpoint(root: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A Meta-SGD checkpoint whose learned α differ from maml.inner_lr and between elements."""
    config = load_config(SUPERVISED_CONFIG, ["policy.hidden_sizes=[8]", "maml.algorithm=metasgd"])
    from metarl.build import build_policy

    model = build_policy(config, 1, 1)
    shapes = {n: tuple(p.shape) for n, p in model.params().items()}
    sizes = LearnedStepSizes("per_parameter", shapes, 1, 0.0)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for v in sizes.values:
            v.copy_(0.02 + 0.1 * torch.rand(v.shape, generator=g))
    save_checkpoint(root / "checkpoints", model, config, 7, None, {"step_sizes": sizes.state()})
    return root, sizes.sizes()[0]


def test_evaluate_adapts_with_the_checkpoints_learned_step_sizes(tmp_path: Path, capsys) -> None:
    run, alpha = metasgd_checkpoint(tmp_path / "run")
    code, out, err = run_cli(capsys, "evaluate", "--run-dir", str(run), "--num-tasks", "6", "--num-steps", "2")
    assert code == 0, err
    assert "learned per-parameter step sizes" in out
    result = json.loads((run / "evaluation.json").read_text())
    checkpoint = load_checkpoint(run)
    model, config = checkpoint.policy, checkpoint.config
    # by hand, task by task: two steps of θ - α ⊙ ∇ support MSE
    rng = np.random.default_rng(config.eval.seed)
    env = SinusoidEnv()
    b = supervised.sample_regression_batch(env, env.sample_tasks(6, rng), config.supervised.shots, 100, rng)
    for i in range(6):
        params = {n: p.detach().clone() for n, p in model.params().items()}
        for k in range(1, 3):
            leaf = {n: v.requires_grad_() for n, v in params.items()}
            loss = supervised.task_mse(model, leaf, b.support_x[i : i + 1], b.support_y[i : i + 1]).sum()
            grads = torch.autograd.grad(loss, [leaf[n] for n in leaf if n != "log_std"])
            params = {n: v.detach() for n, v in leaf.items()}
            for n, g in zip([n for n in leaf if n != "log_std"], grads):
                params[n] = params[n] - alpha[n] * g
            expected = supervised.task_mse(model, params, b.query_x[i : i + 1], b.query_y[i : i + 1]).item()
            assert result["per_task"][k][i] == pytest.approx(expected, rel=1e-4)
    plain = supervised.evaluate_regression(model, config, num_tasks=6, num_steps=2, lr=config.maml.inner_lr)
    assert abs(plain["steps"][1]["mse"] - result["steps"][1]["mse"]) > 1e-3  # not the plain inner_lr
    # the same rule reaches render
    rendered = render_checkpoint(run, tmp_path / "render", num_steps=2, num_tasks=2)
    assert rendered.step_sizes == pytest.approx(checkpoint_inner_rule(checkpoint).mean_step_sizes(2))
    assert rendered.step_sizes[0] != pytest.approx(config.maml.inner_lr)


def test_a_learned_step_size_algorithm_without_its_step_sizes_is_one_error_line(tmp_path: Path, capsys) -> None:
    config = load_config(SUPERVISED_CONFIG, ["policy.hidden_sizes=[8]", "maml.algorithm=mamlpp"])
    from metarl.build import build_policy

    save_checkpoint(tmp_path / "checkpoints", build_policy(config, 1, 1), config, 1)
    code, _, err = run_cli(capsys, "evaluate", "--run-dir", str(tmp_path), "--num-tasks", "3")
    assert_one_error_line(code, err, "learned step sizes", "mamlpp")


TINY = ["policy.hidden_sizes=[16]", "maml.meta_batch_size=4", "supervised.log_every=2", "train.checkpoint_every=3"]


@pytest.mark.parametrize("algorithm", ["metasgd", "mamlpp", "reptile"])
def test_training_resumes_identically_with_learned_state(tmp_path: Path, algorithm: str, monkeypatch) -> None:
    """A run stopped after its checkpoint at iteration 3 and resumed ends bitwise where the uninterrupted run does:
    step sizes and the outer optimiser's state are restored, and the schedules depend on the iteration only."""
    config = load_config(
        SUPERVISED_CONFIG, [*TINY, f"maml.algorithm={algorithm}", "maml.num_inner_steps=2", "train.iterations=6"]
    )
    whole = train(config, tmp_path / "whole", progress=False)
    real_step, calls = supervised.meta_step, {"n": 0}

    def stop_at_iteration_3(*args):
        calls["n"] += 1
        if calls["n"] == 4:
            raise FloatingPointError("stopped by the test")
        return real_step(*args)

    monkeypatch.setattr(supervised, "meta_step", stop_at_iteration_3)
    with pytest.raises(TrainingDiverged, match="stopped by the test"):
        train(config, tmp_path / "part", progress=False)
    monkeypatch.setattr(supervised, "meta_step", real_step)
    resumed = train(config, tmp_path / "part", resume=True, progress=False)
    for a, b in zip(whole.policy.parameters(), resumed.policy.parameters()):
        assert torch.equal(a, b)
    a, b = load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "part")
    if ALGORITHMS[algorithm].step_sizes != "fixed":
        values = a.extra["step_sizes"]["values"]
        for name, value in values.items():
            assert torch.equal(value, b.extra["step_sizes"]["values"][name])
        assert not torch.all(values["layers.0.weight"] == 0.01)  # they were learned (from maml.inner_lr)
    rows = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["meta/mse_post"]) for r in rows)


# --------------------------------------------------------------------------- bad combinations


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["maml.algorithm=mamlpp"], ["maml.algorithm", "'mamlpp' does not apply to maml.loss='pg'", "maml, fomaml"]),
        (["maml.algorithm=reptile"], ["'reptile' does not apply to maml.loss='pg'"]),
        (["maml.algorithm=fomaml", "maml.first_order=false"], ["maml.first_order", "contradicts", "first order"]),
        (["maml.algorithm=mamlpp", "maml.loss=supervised", "maml.first_order=true"], ["anneals the derivative order"]),
        (["maml.algorithm=reptile", "maml.loss=supervised", "maml.first_order=false"], ["contradicts"]),
        (["maml.algorithm=anil", "maml.loss=supervised", "maml.adapt_params=all"], ["maml.adapt_params", "anil"]),
        (["maml.algorithm=sgd"], ["maml.algorithm", "allowed: one of 'maml', 'fomaml'"]),
        (["maml.adapt_params=body"], ["maml.adapt_params", "'all', 'head', or a non-empty list of str"]),
    ],
    ids=str,
)
def test_contradicting_keys_are_one_error_line(
    capsys, tmp_path: Path, overrides: list[str], fragments: list[str]
) -> None:
    assert_train_refuses(capsys, tmp_path / "run", overrides, *fragments)


def test_unknown_adapt_param_is_one_error_line(capsys, tmp_path: Path) -> None:
    argv = ["train", "--config", str(SUPERVISED_CONFIG), "--run-dir", str(tmp_path), "--no-progress"]
    code, _, err = run_cli(capsys, *argv, "--set", "maml.adapt_params=[layers.7]")
    assert_one_error_line(code, err, "maml.adapt_params", "'layers.7' names no parameter")


def test_maml_with_first_order_true_is_first_order_maml(policy: GaussianMLPPolicy) -> None:
    """The existing key keeps its meaning: maml + first_order=true is fomaml (same rule, same run name)."""
    from metarl.trainer import algo_name

    legacy = config_for("maml", "maml.first_order=true")
    assert algo_name(legacy) == "fomaml-supervised" == algo_name(config_for("fomaml"))
    assert MetaLearner(legacy, policy).rule(0) == MetaLearner(config_for("fomaml"), policy).rule(0)
    assert InnerRule((0.1,)).lrs(3) == [0.1, 0.1, 0.1]
    assert InnerAdam().beta1 == 0.0
