"""Few-shot classification: the classifiers' stacked forward, cross-entropy MAML's meta-gradient (float64),
batched against per-task loops, and train -> evaluate through the ``metarl`` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import metarl.classification as cls
from metarl.algorithms import InnerRule
from metarl.checkpoint import load_checkpoint
from metarl.classifier import ConvClassifier, MLPClassifier
from metarl.policy import Params, flatten
from tests.helpers import assert_one_error_line, finite_difference_grad, run_cli

GLYPH_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "glyphs_5way1shot.yaml"


def tiny_conv(norm: str = "batch", downsample: str = "stride") -> ConvClassifier:
    """A 2-block, 3-filter conv net on 1x8x8 images, 3 ways, float64."""
    model = ConvClassifier((1, 8, 8), 3, filters=3, blocks=2, downsample=downsample, norm=norm).double()  # type: ignore[arg-type]
    model.reset_parameters(torch.Generator().manual_seed(0))
    return model


def tiny_mlp(norm: str = "batch") -> MLPClassifier:
    """A 4-3-3 MLP on 1x2x2 images, float64 (33 parameters)."""
    model = MLPClassifier((1, 2, 2), 3, (3,), norm=norm).double()  # type: ignore[arg-type]
    model.reset_parameters(torch.Generator().manual_seed(0))
    return model


def random_batch(n: int, shape: tuple[int, int, int], ways: int = 3, shots: int = 2, queries: int = 2, seed: int = 0):
    """A classification batch of random float64 images with class-major labels."""
    g = torch.Generator().manual_seed(seed)
    support_x = torch.rand(n, ways * shots, *shape, generator=g, dtype=torch.float64)
    query_x = torch.rand(n, ways * queries, *shape, generator=g, dtype=torch.float64)
    labels = torch.arange(ways)
    return cls.ClassificationBatch(
        support_x,
        labels.repeat_interleave(shots).expand(n, -1).contiguous(),
        query_x,
        labels.repeat_interleave(queries).expand(n, -1).contiguous(),
    )


def leaf_params(model: torch.nn.Module) -> Params:
    return {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}


def per_task_params(model: torch.nn.Module, n: int, seed: int = 1) -> Params:
    """Different parameters for each of n tasks (stacked), near the model's own."""
    g = torch.Generator().manual_seed(seed)
    return {
        k: v.detach().unsqueeze(0) + 0.3 * torch.randn(n, *v.shape, generator=g, dtype=v.dtype)
        for k, v in model.named_parameters()
    }


# ------------------------------------------------------------------ the models


@pytest.mark.parametrize(("norm", "downsample"), [("batch", "stride"), ("none", "stride"), ("batch", "maxpool")])
def test_conv_stacked_forward_equals_a_per_task_loop(norm: str, downsample: str) -> None:
    model = tiny_conv(norm, downsample)
    x = torch.rand(4, 5, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    stacked = per_task_params(model, 4)
    batched = model(x, stacked)
    loop = torch.cat([model(x[i : i + 1], {k: v[i] for k, v in stacked.items()}) for i in range(4)])
    assert batched.shape == (4, 5, 3)
    torch.testing.assert_close(batched, loop, rtol=1e-12, atol=1e-12)
    shared = model(x)  # shared parameters: the same as every task holding them
    torch.testing.assert_close(shared, model(x, {k: v.expand(4, *v.shape) for k, v in model.params().items()}))
    assert not torch.allclose(batched, shared)


def test_conv_stacked_forward_equals_torch_func_vmap() -> None:
    model = tiny_conv()
    x = torch.rand(3, 4, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    stacked = per_task_params(model, 3)
    mapped = torch.func.vmap(lambda p, xi: model(xi.unsqueeze(0), p).squeeze(0))(stacked, x)
    torch.testing.assert_close(model(x, stacked), mapped, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("model_fn", [tiny_conv, tiny_mlp], ids=["conv", "mlp"])
def test_batch_statistics_do_not_leak_across_tasks(model_fn) -> None:
    model = model_fn()
    shape = model.input_shape
    x = torch.rand(3, 4, *shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    changed = x.clone()
    changed[1] = changed[1] * 5 + 1  # another task's images, very different statistics
    stacked = per_task_params(model, 3)
    before, after = model(x, stacked), model(changed, stacked)
    torch.testing.assert_close(before[[0, 2]], after[[0, 2]], rtol=0, atol=0)
    assert not torch.allclose(before[1], after[1])
    inside = x.clone()
    inside[0, 3] += 1.0  # within a task the statistics are shared (transductive, as in the MAML code)
    assert not torch.allclose(model(inside, stacked)[0, :3], before[0, :3])


def test_models_refuse_inputs_that_do_not_fit() -> None:
    model = tiny_conv()
    with pytest.raises(ValueError, match=r"input must be \[tasks, images, channels, height, width\]"):
        model(torch.zeros(5, 1, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="stacked parameters hold 2 tasks, the input 3"):
        model(torch.zeros(3, 2, 1, 8, 8, dtype=torch.float64), per_task_params(model, 2))
    with pytest.raises(ValueError, match="leave nothing of a 8x8 image"):
        ConvClassifier((1, 8, 8), 3, blocks=4, downsample="maxpool")


# ------------------------------------------------------------------ cross-entropy MAML


def objective(model: torch.nn.Module, batch: cls.ClassificationBatch, k: int, first_order: bool, lr: float = 0.5):
    """``theta -> post-adaptation query cross-entropy`` after ``k`` inner steps of size ``lr``."""
    return lambda params: cls.meta_objective(model, params, batch, [lr] * k, first_order)


@pytest.mark.parametrize("k", [1, 2])
def test_second_order_meta_gradient_matches_finite_differences(k: int) -> None:
    """Every coordinate of the MLP's meta-gradient (batch norm included) against central differences."""
    model = tiny_mlp()
    batch = random_batch(3, model.input_shape)
    f = objective(model, batch, k, first_order=False)
    theta = leaf_params(model)
    autograd = flatten(torch.autograd.grad(f(theta), list(theta.values())))
    numeric = finite_difference_grad(f, theta)
    torch.testing.assert_close(autograd, numeric, rtol=1e-6, atol=1e-8)
    assert autograd.abs().max() > 1e-2
    first = flatten(torch.autograd.grad(objective(model, batch, k, True)(theta), list(theta.values())))
    assert not torch.allclose(first, autograd, rtol=1e-3)  # second order differs from first order


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_conv_meta_gradient_matches_directional_finite_differences(norm: str) -> None:
    """The conv net's second-order meta-gradient (grouped convolutions, per-task batch norm, 2 inner steps)
    along random directions: ``g . v`` against ``(f(θ + εv) - f(θ - εv)) / 2ε``."""
    model = tiny_conv(norm)
    batch = random_batch(3, model.input_shape, seed=2)
    f = objective(model, batch, 2, first_order=False)
    theta = leaf_params(model)
    grad = flatten(torch.autograd.grad(f(theta), list(theta.values())))
    g = torch.Generator().manual_seed(7)
    eps = 1e-6
    for _ in range(4):
        v = {k: torch.randn(p.shape, generator=g, dtype=p.dtype) for k, p in theta.items()}
        plus = f({k: (p + eps * v[k]).detach() for k, p in theta.items()}).item()
        minus = f({k: (p - eps * v[k]).detach() for k, p in theta.items()}).item()
        numeric = (plus - minus) / (2 * eps)
        analytic = float(grad @ flatten(v))
        assert abs(analytic) > 1e-3
        assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("model_fn", [tiny_conv, tiny_mlp], ids=["conv", "mlp"])
@pytest.mark.parametrize("first_order", [False, True], ids=["second-order", "first-order"])
def test_batched_cross_entropy_maml_equals_the_per_task_loop(model_fn, first_order: bool) -> None:
    """The meta-batch at once (stacked parameters) gives the values and meta-gradients of one task at a time."""
    model = model_fn()
    batch = random_batch(4, model.input_shape, seed=3)
    theta = leaf_params(model)
    batched = objective(model, batch, 2, first_order)(theta)
    batched_grad = torch.autograd.grad(batched, list(theta.values()))
    losses = []
    for i in range(4):  # the reference: adapt each task alone, its own inner loop, shared parameters
        one = batch.tasks(i, i + 1)
        params = dict(theta)
        for _ in range(2):
            loss = cls.task_cross_entropy(model(one.support_x, params), one.support_y).sum()
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=not first_order)
            params = {name: p - 0.5 * g for (name, p), g in zip(params.items(), grads)}
        losses.append(cls.task_cross_entropy(model(one.query_x, params), one.query_y)[0])
    looped = torch.stack(losses).mean()
    looped_grad = torch.autograd.grad(looped, list(theta.values()))
    torch.testing.assert_close(batched, looped, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(flatten(list(batched_grad)), flatten(list(looped_grad)), rtol=1e-10, atol=1e-12)
    assert batched.item() < cls.task_cross_entropy(model(batch.query_x, theta), batch.query_y).mean().item() + 1.0


def test_first_order_meta_gradient_is_the_query_gradient_at_the_adapted_parameters() -> None:
    model = tiny_mlp()
    batch = random_batch(3, model.input_shape, seed=5)
    theta = leaf_params(model)
    grad = flatten(torch.autograd.grad(objective(model, batch, 1, True)(theta), list(theta.values())))
    rule = InnerRule((0.5,), None, True)
    adapted = next(rule.steps(cls.ce_inner_loss(model, batch.support_x, batch.support_y), theta, 3, 1))
    adapted = {k: v.detach().requires_grad_() for k, v in adapted.items()}
    query = cls.task_cross_entropy(model(batch.query_x, adapted), batch.query_y).mean()
    per_task = torch.autograd.grad(query, list(adapted.values()))
    torch.testing.assert_close(grad, flatten([g.sum(0) for g in per_task]), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ through the command line


def tiny_glyph_run(tmp_path: Path, *extra: str) -> list[str]:
    """``metarl train`` arguments for a seconds-long 5-way 1-shot glyph run (small conv net)."""
    return [
        "train",
        "--config",
        str(GLYPH_CONFIG),
        "--run-dir",
        str(tmp_path / "run"),
        "--no-progress",
        "--set",
        "env.kwargs.num_classes=80",
        "--set",
        "env.kwargs.num_train_classes=60",
        "--set",
        "classifier.filters=8",
        "--set",
        "maml.meta_batch_size=3",
        "--set",
        "supervised.log_every=2",
        "--set",
        "train.iterations=4",
        "--set",
        "eval.num_tasks=12",
        *extra,
    ]


def test_train_then_evaluate_prints_accuracy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, *tiny_glyph_run(tmp_path))
    assert code == 0, err
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 3] and 0 <= rows[-1]["meta/accuracy_post"] <= 1
    checkpoint = load_checkpoint(tmp_path / "run")
    assert isinstance(checkpoint.policy, ConvClassifier) and checkpoint.policy.filters == 8
    code, out, err = run_cli(capsys, "evaluate", "--run-dir", str(tmp_path / "run"), "--num-steps", "2")
    assert code == 0, err
    assert "| method (mean accuracy ± 95% CI over tasks) | 0 steps | 1 step | 2 steps |" in out
    assert "5-way 1-shot tasks of the held-out (test) classes of metarl/Glyphs-v0" in out
    result = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert result["num_tasks"] == 12 and result["split"] == "test" and len(result["per_task"]) == 3
    accuracies = [s["accuracy"] for s in result["steps"]]
    assert all(0 <= a <= 1 for a in accuracies) and accuracies[1] > accuracies[0]  # one step helps already
    row = next(line for line in out.splitlines() if line.startswith("| maml |"))
    assert f"{100 * accuracies[1]:.1f} ± " in row


def test_learned_step_sizes_apply_to_classification(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, *tiny_glyph_run(tmp_path, "--set", "maml.algorithm=metasgd"))
    assert code == 0, err
    checkpoint = load_checkpoint(tmp_path / "run")
    assert "step_sizes" in checkpoint.extra
    code, out, err = run_cli(capsys, "evaluate", "--run-dir", str(tmp_path / "run"), "--num-steps", "1")
    assert code == 0, err
    assert "| metasgd |" in out and "learned per-parameter step sizes" in out


def test_rendering_a_classifier_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, *tiny_glyph_run(tmp_path, "--set", "train.iterations=1"))
    assert code == 0, err
    code, _, err = run_cli(capsys, "render", "--run-dir", str(tmp_path / "run"), "--no-progress")
    assert_one_error_line(code, err, "holds a few-shot classifier", "metarl render")


def test_evaluation_draws_the_same_tasks_whatever_the_chunking(tmp_path: Path) -> None:
    from metarl.config import load_config

    config = load_config(
        GLYPH_CONFIG, ["env.kwargs.num_classes=50", "env.kwargs.num_train_classes=40", "classifier.filters=4"]
    )
    model = cls.build_classifier(config.classifier, (1, 28, 28), 5, 0, torch.float32)
    whole = cls.evaluate_classification(model, config, num_tasks=6, num_steps=1, query_size=2)
    config.classifier.eval_chunk = 4
    chunked = cls.evaluate_classification(model, config, num_tasks=6, num_steps=1, query_size=2)
    np.testing.assert_allclose(np.array(whole["per_task"]), np.array(chunked["per_task"]), atol=1e-12)
    other_seed = cls.evaluate_classification(model, config, num_tasks=6, num_steps=1, query_size=2, seed=5)
    assert other_seed["per_task"] != whole["per_task"]


@pytest.mark.slow
def test_maml_learns_5way_1shot_glyphs(tmp_path: Path) -> None:
    """150 iterations of the shipped 5-way 1-shot glyph config: held-out accuracy far above chance after one step."""
    from metarl.config import load_config
    from metarl.trainer import train

    config = load_config(GLYPH_CONFIG, ["train.iterations=150", "train.checkpoint_every=150"])
    result = train(config, tmp_path / "run", progress=False, log=lambda _: None)
    assert isinstance(result.policy, ConvClassifier)
    evaluation = cls.evaluate_classification(result.policy, config, num_tasks=200, num_steps=1)
    before, after = (s["accuracy"] for s in evaluation["steps"])
    assert before < 0.3 and after > 0.85, (before, after)
