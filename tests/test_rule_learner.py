"""Meta-SGD and ANIL policies: the meta-gradient and curvature over θ and the learned step sizes (float64)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import Tensor

from metarl import rule_learner
from metarl.algorithms import LearnedStepSizes
from metarl.checkpoint import load_checkpoint
from metarl.maml import AdaptationSettings, MetaBatch, adapt_on_batch, log_probs, task_kls, task_surrogates
from metarl.policy import GaussianMLPPolicy, Params
from metarl.trpo import TRPOSettings
from tests.helpers import random_episodes, run_cli, settings

HEAD = frozenset({"layers.1.weight", "layers.1.bias"})  # the tiny policy's mean head


def _batch(k: int) -> MetaBatch:
    return MetaBatch([{}] * 2, [random_episodes(2, 3, 4, 1 + j) for j in range(k)], random_episodes(2, 3, 4, 9))


def _step_sizes(policy: GaussianMLPPolicy, names: list[str], k: int) -> LearnedStepSizes:
    """Meta-SGD step sizes around 0.5, made unequal so that a wrong element pairing shows."""
    shapes = {n: tuple(p.shape) for n, p in policy.params().items() if n in names}
    sizes = LearnedStepSizes("per_parameter", shapes, k, 0.5, torch.float64)
    with torch.no_grad():
        for i, v in enumerate(sizes.parameters()):
            v.add_(0.1 * torch.randn(v.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64))
    return sizes


def _objective_of(policy, batch, adaptation, meta, old):
    """(flat θ and α) -> the surrogate with the old policy fixed, and the mean KL from it: functions for autograd."""

    def unpack(flat: Tensor) -> tuple[Params, AdaptationSettings]:
        parts, start = [], 0
        for p in meta:
            parts.append(flat[start : start + p.numel()].view_as(p))
            start += p.numel()
        names = list(policy.params())
        theta = dict(zip(names, parts[: len(names)], strict=True))
        sizes = adaptation.step_sizes
        if sizes is not None:
            step_names = list(sizes[0])
            sizes = (dict(zip(step_names, parts[len(names) :], strict=True)),)
        return theta, dataclasses.replace(adaptation, step_sizes=sizes)

    def adapted(flat: Tensor) -> Params:
        theta, ad = unpack(flat)
        stacked = {k: v.unsqueeze(0).expand(2, *v.shape) for k, v in theta.items()}
        return adapt_on_batch(policy, stacked, batch, ad, ad.first_order)

    def surrogate(flat: Tensor) -> Tensor:
        logp, _, _ = log_probs(policy, adapted(flat), batch.valid)
        return task_surrogates(logp, old.log_probs, batch.valid).mean()

    def kl(flat: Tensor) -> Tensor:
        _, mean, log_std = log_probs(policy, adapted(flat), batch.valid)
        return task_kls(mean, log_std, old, batch.valid).mean()

    return surrogate, kl


def _case(tiny_policy: GaussianMLPPolicy, algorithm: str, k: int):
    batch = _batch(k)
    base = settings(k)
    if algorithm == "metasgd":
        sizes = _step_sizes(tiny_policy, list(tiny_policy.params()), k)
        adaptation = dataclasses.replace(base, step_sizes=sizes.sizes())
        extra = list(sizes.parameters())
    else:  # anil
        adaptation = dataclasses.replace(base, adapted=HEAD)
        extra = []
    meta = [*tiny_policy.parameters(), *extra]
    return batch, adaptation, meta, extra


@pytest.mark.parametrize(("algorithm", "k"), [("metasgd", 1), ("metasgd", 2), ("anil", 1), ("anil", 2)])
def test_meta_gradient_matches_finite_differences(tiny_policy, algorithm: str, k: int) -> None:
    batch, adaptation, meta, _ = _case(tiny_policy, algorithm, k)
    loss, _, old = rule_learner.meta_objective(tiny_policy, batch, adaptation)
    grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, meta)])
    surrogate, _ = _objective_of(tiny_policy, batch, adaptation, meta, old)
    flat = torch.cat([p.detach().reshape(-1) for p in meta])
    eps = 1e-6
    numeric = torch.stack(
        [
            (surrogate(flat + eps * e) - surrogate(flat - eps * e)) / (2 * eps)
            for e in torch.eye(flat.numel(), dtype=torch.float64)
        ]
    )
    torch.testing.assert_close(grad, numeric, rtol=1e-5, atol=1e-8)
    n_theta = sum(p.numel() for p in tiny_policy.parameters())
    if algorithm == "metasgd":
        assert grad[n_theta:].abs().max() > 1e-4  # the step sizes get a real gradient
    else:
        assert grad.abs().max() > 1e-4


def test_anil_adapts_only_the_head(tiny_policy) -> None:
    batch, adaptation, _, _ = _case(tiny_policy, "anil", 2)
    adapted = adapt_on_batch(tiny_policy, tiny_policy.params(), batch, adaptation, True)
    for name, p in tiny_policy.params().items():
        moved = (adapted[name] - p).abs().max().item()
        assert (moved > 1e-6) == (name in HEAD), name


@pytest.mark.parametrize(("algorithm", "k"), [("metasgd", 1), ("metasgd", 2), ("anil", 2)])
def test_exact_curvature_is_the_kl_hessian(tiny_policy, algorithm: str, k: int) -> None:
    """J^T F J through the second-order inner loop equals the Hessian of the mean KL in (θ, α) at the point."""
    batch, adaptation, meta, _ = _case(tiny_policy, algorithm, k)
    loss, adapted, old = rule_learner.meta_objective(tiny_policy, batch, adaptation)
    hvp = rule_learner.gauss_newton_curvature(tiny_policy, meta, adapted, batch)
    _, kl = _objective_of(tiny_policy, batch, adaptation, meta, old)
    flat = torch.cat([p.detach().reshape(-1) for p in meta])
    hessian = torch.autograd.functional.hessian(kl, flat)
    for seed in range(3):
        v = torch.randn(flat.numel(), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        torch.testing.assert_close(hvp(v), hessian @ v, rtol=1e-7, atol=1e-10)
    assert (hessian @ v).abs().max() > 1e-4


def test_fisher_curvature_keeps_the_step_size_direction(tiny_policy) -> None:
    """Through the first-order inner loop, ∂θ'/∂α = -∇L_inner: the α block of the curvature is not zero."""
    batch, adaptation, meta, extra = _case(tiny_policy, "metasgd", 1)
    first = dataclasses.replace(adaptation, first_order=True)
    _, adapted, _ = rule_learner.meta_objective(tiny_policy, batch, first)
    hvp = rule_learner.gauss_newton_curvature(tiny_policy, meta, adapted, batch)
    n_theta = sum(p.numel() for p in tiny_policy.parameters())
    v = torch.zeros(n_theta + sum(p.numel() for p in extra), dtype=torch.float64)
    v[n_theta:] = 1.0
    assert hvp(v)[n_theta:] @ v[n_theta:] > 1e-6  # positive curvature along the step sizes


def test_trpo_step_improves_within_the_trust_region(tiny_policy) -> None:
    batch, adaptation, meta, extra = _case(tiny_policy, "metasgd", 1)
    before = [p.detach().clone() for p in meta]
    stats = rule_learner.trpo_step(tiny_policy, extra, batch, adaptation, TRPOSettings(max_kl=0.01))
    assert stats["accepted"] == 1.0
    assert 0 < stats["kl"] <= 0.01
    assert stats["loss_after"] < stats["loss_before"]
    assert any((p - b).abs().max() > 0 for p, b in zip(extra, before[-len(extra) :]))  # the step sizes moved


def test_metasgd_and_anil_policies_train_resume_and_evaluate(tmp_path, capsys) -> None:
    small = ["--set", "maml.meta_batch_size=3", "--set", "maml.episodes_per_task=4", "--no-progress"]
    run = tmp_path / "msgd"
    args = ["train", "--config", "configs/navigation2d.yaml", "--run-dir", str(run), "--iterations", "2"]
    code, _, err = run_cli(capsys, *args, "--set", "maml.algorithm=metasgd", *small)
    assert code == 0, err
    first = load_checkpoint(run).extra["step_sizes"]["values"]
    code, _, err = run_cli(capsys, "train", "--run-dir", str(run), "--resume", "--iterations", "3", "--no-progress")
    assert code == 0, err
    resumed = load_checkpoint(run)
    assert any(not torch.equal(first[n], v) for n, v in resumed.extra["step_sizes"]["values"].items())
    code, out, err = run_cli(capsys, "evaluate", "--run-dir", str(run), "--num-tasks", "3", "--episodes", "2")
    assert code == 0, err
    assert "| metasgd |" in out
    anil = tmp_path / "anil"
    args = ["train", "--config", "configs/navigation2d.yaml", "--run-dir", str(anil), "--iterations", "2"]
    code, _, err = run_cli(capsys, *args, "--set", "maml.algorithm=anil", *small)
    assert code == 0, err
    code, out, err = run_cli(capsys, "evaluate", "--run-dir", str(anil), "--num-tasks", "3", "--episodes", "2")
    assert code == 0 and "| anil |" in out, err
