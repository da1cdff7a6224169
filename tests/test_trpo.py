"""Conjugate gradient, the Fisher-vector product and the KL-constrained line search."""

from __future__ import annotations

import pytest
import torch

from metarl.maml import MetaBatch, adapt_on_batch, mean_kl, old_policy
from metarl.policy import flatten, unflatten
from metarl.trpo import TRPOSettings, conjugate_gradient, kl_curvature, trpo_step
from tests.helpers import random_episodes, settings


def test_conjugate_gradient_matches_direct_solve() -> None:
    g = torch.Generator().manual_seed(0)
    m = torch.randn(12, 12, generator=g, dtype=torch.float64)
    a = m @ m.T + 0.5 * torch.eye(12, dtype=torch.float64)
    b = torch.randn(12, generator=g, dtype=torch.float64)
    x, ax = conjugate_gradient(lambda v: a @ v, b, iterations=40)
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(ax, a @ x, rtol=1e-8, atol=1e-8)
    x3, ax3 = conjugate_gradient(lambda v: a @ v, b, iterations=3)  # truncated, as TRPO runs it
    torch.testing.assert_close(ax3, a @ x3, rtol=1e-9, atol=1e-9)
    assert (x3 - x).norm() > 1e-3


@pytest.mark.parametrize(
    ("k", "first_order", "estimator"),
    [(1, False, "log"), (2, False, "log"), (1, True, "log"), (1, False, "lvc"), (2, False, "lvc")],
)
def test_kl_curvature_matches_explicit_hessian(tiny_policy, k: int, first_order: bool, estimator: str) -> None:
    """The factored J^T F J product equals the Hessian of the KL through the inner loop (finite graph, float64)."""
    batch = MetaBatch([{}] * 2, [random_episodes(2, 3, 4, 1 + j) for j in range(k)], random_episodes(2, 3, 4, 9))
    params = tiny_policy.params()
    old = old_policy(tiny_policy, adapt_on_batch(tiny_policy, params, batch, settings(k), True), batch.valid)

    def kl_of_flat(flat: torch.Tensor) -> torch.Tensor:
        adapted = adapt_on_batch(
            tiny_policy, unflatten(flat, params), batch, settings(k, first_order, estimator), first_order
        )
        return mean_kl(tiny_policy, adapted, batch.valid, old)

    flat = flatten(params).detach()
    hessian = torch.autograd.functional.hessian(kl_of_flat, flat)
    hvp = kl_curvature(tiny_policy, params, batch, settings(k, first_order, estimator))
    for seed in range(3):
        v = torch.randn(flat.numel(), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        torch.testing.assert_close(hvp(v), hessian @ v, rtol=1e-7, atol=1e-10)
    assert (hessian @ v).abs().max() > 1e-4
    if estimator == "lvc":  # the inner Jacobian, and so the curvature, differs from the log form's
        assert (hvp(v) - kl_curvature(tiny_policy, params, batch, settings(k, first_order))(v)).abs().max() > 1e-2


def test_kl_curvature_subsample_thins_only_the_fisher(tiny_policy) -> None:
    """``subsample`` = exact curvature of the batch whose post-adaptation set keeps its first trajectories:
    the inner-loop Jacobian still uses every pre-adaptation trajectory."""
    batch = MetaBatch([{}] * 2, [random_episodes(2, 4, 4, 1)], random_episodes(2, 4, 4, 2))
    params = tiny_policy.params()
    full = kl_curvature(tiny_policy, params, batch, settings(1), 1.0)
    half = kl_curvature(tiny_policy, params, batch, settings(1), 0.5)
    thinned_valid = kl_curvature(
        tiny_policy, params, MetaBatch([{}] * 2, batch.train, batch.valid.subsample(2)), settings(1), 1.0
    )
    thinned_both = kl_curvature(
        tiny_policy,
        params,
        MetaBatch([{}] * 2, [batch.train[0].subsample(2)], batch.valid.subsample(2)),
        settings(1),
        1.0,
    )
    v = torch.randn(flatten(params).numel(), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(half(v), thinned_valid(v), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(half(v), full(v))
    assert not torch.allclose(half(v), thinned_both(v))


def test_fisher_curvature_skips_the_inner_jacobian(tiny_policy) -> None:
    """``through_inner_loop=False`` is the adapted policies' Fisher: the first-order curvature, at the same point."""
    batch = MetaBatch([{}] * 2, [random_episodes(2, 3, 4, 3)], random_episodes(2, 3, 4, 4))
    params = tiny_policy.params()
    fisher = kl_curvature(tiny_policy, params, batch, settings(1, False), through_inner_loop=False)
    first_order = kl_curvature(tiny_policy, params, batch, settings(1, True))
    exact = kl_curvature(tiny_policy, params, batch, settings(1, False))
    v = torch.randn(flatten(params).numel(), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(fisher(v), first_order(v), rtol=1e-10, atol=1e-12)
    assert not torch.allclose(fisher(v), exact(v))


def test_trpo_step_respects_max_kl_and_improves(tiny_policy) -> None:
    for seed in range(3):
        batch = MetaBatch([{}] * 2, [random_episodes(2, 4, 6, 10 + seed)], random_episodes(2, 4, 6, 20 + seed))
        before = flatten(tiny_policy.params()).detach().clone()
        old = old_policy(
            tiny_policy, adapt_on_batch(tiny_policy, tiny_policy.params(), batch, settings(1), True), batch.valid
        )
        max_kl = 1e-3
        curvature = "exact" if seed < 2 else "fisher"
        stats = trpo_step(
            tiny_policy, batch, settings(1), TRPOSettings(max_kl=max_kl, cg_iters=20, curvature=curvature)
        )
        adapted = adapt_on_batch(tiny_policy, tiny_policy.params(), batch, settings(1), True)
        kl = mean_kl(tiny_policy, adapted, batch.valid, old).item()
        assert kl <= max_kl
        assert abs(kl - stats["kl"]) < 1e-12
        if stats["accepted"]:
            assert stats["loss_after"] < stats["loss_before"]
            assert (flatten(tiny_policy.params()) - before).abs().max() > 0
        else:
            torch.testing.assert_close(flatten(tiny_policy.params()).detach(), before)


def test_trpo_line_search_restores_parameters_when_no_step_improves(tiny_policy, monkeypatch) -> None:
    import metarl.trpo as trpo

    batch = MetaBatch([{}] * 2, [random_episodes(2, 3, 4, 1)], random_episodes(2, 3, 4, 2))
    before = flatten(tiny_policy.params()).detach().clone()
    tried: list[torch.Tensor] = []

    def worse_everywhere(policy, batch, adaptation, old):
        tried.append(flatten(policy.params()).detach().clone())
        return float("inf"), 0.0

    monkeypatch.setattr(trpo, "evaluate_outer", worse_everywhere)
    stats = trpo_step(tiny_policy, batch, settings(1), TRPOSettings(ls_max_steps=4, ls_backtrack=0.5))
    assert stats["accepted"] == 0.0 and stats["kl"] == 0.0 and len(tried) == 4
    # Each candidate halves the previous step; the parameters are restored afterwards.
    steps = [t - before for t in tried]
    for a, b in zip(steps[:-1], steps[1:]):
        torch.testing.assert_close(b, 0.5 * a)
    torch.testing.assert_close(flatten(tiny_policy.params()).detach(), before)


def test_line_search_jumps_inside_the_trust_region_when_the_step_overshoots(tiny_policy, monkeypatch) -> None:
    """With KL quadratic in the step length, one KL-scaled shrink lands inside max_kl (no geometric crawl)."""
    import metarl.trpo as trpo

    batch = MetaBatch([{}] * 2, [random_episodes(2, 3, 4, 1)], random_episodes(2, 3, 4, 2))
    before = flatten(tiny_policy.params()).detach().clone()
    scales: list[float] = []
    full: list[torch.Tensor] = []

    def quadratic_kl(policy, batch, adaptation, old):
        step = flatten(policy.params()).detach() - before
        if not full:
            full.append(step)
        scale = float(step.norm() / full[0].norm())
        scales.append(scale)
        return -scale, 0.09 * scale**2  # the full step overshoots max_kl = 0.01 ninefold

    monkeypatch.setattr(trpo, "evaluate_outer", quadratic_kl)
    stats = trpo_step(tiny_policy, batch, settings(1), TRPOSettings(max_kl=0.01, ls_backtrack=0.8))
    assert stats["accepted"] == 1.0 and stats["ls_steps"] == 1.0
    assert scales[1] == pytest.approx(0.9 / 3.0)  # margin * sqrt(0.01 / 0.09), not 0.8
    assert stats["kl"] == pytest.approx(0.01 * 0.81)


def test_next_shrink() -> None:
    from metarl.trpo import next_shrink

    assert next_shrink(0.005, 0.01, 0.8) == 0.8  # inside the region but no improvement: geometric
    assert next_shrink(0.0101, 0.01, 0.8) == 0.8  # barely over: the geometric step is already smaller
    assert next_shrink(0.04, 0.01, 0.8) == pytest.approx(0.45)
    assert next_shrink(float("nan"), 0.01, 0.8) == 0.8
