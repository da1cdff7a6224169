"""Conjugate gradient, the Fisher-vector product and the KL-constrained line search."""

from __future__ import annotations

import pytest
import torch

from metarl.maml import MetaBatch, adapt_on_batch, mean_kl, old_policy, surrogate_and_old_policy, surrogate_loss
from metarl.policy import GaussianMLPPolicy, flatten, unflatten
from metarl.trpo import (
    PartTimer,
    TRPOSettings,
    conjugate_gradient,
    evaluate_outer,
    kl_curvature,
    meta_gradient,
    task_chunk_size,
    task_slices,
    trpo_step,
)
from tests.helpers import finite_difference_grad, random_episodes, settings


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


# --------------------------------------------------------------------------- the fast meta-update


def _meta_batch(n: int, k: int, seed: int = 1) -> MetaBatch:
    return MetaBatch(
        [{}] * n, [random_episodes(n, 3, 5, seed + j) for j in range(k)], random_episodes(n, 3, 5, seed + 50)
    )


def _autograd_meta_gradient(policy, batch: MetaBatch, adaptation) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole-batch autograd meta-gradient (the computation trpo_step made before chunks and closed forms)."""
    params = policy.params()
    adapted = adapt_on_batch(policy, params, batch, adaptation, adaptation.first_order)
    loss, _ = surrogate_and_old_policy(policy, adapted, batch.valid)
    return loss.detach(), flatten(list(torch.autograd.grad(loss, list(params.values()))))


@pytest.mark.parametrize(
    ("k", "first_order", "estimator"),
    [(1, False, "log"), (2, False, "log"), (1, True, "log"), (2, True, "lvc"), (1, False, "lvc"), (2, False, "lvc")],
)
@pytest.mark.parametrize("derivatives", ["closed_form", "autograd"])
def test_meta_gradient_matches_the_whole_batch_autograd_gradient(
    tiny_policy, k: int, first_order: bool, estimator: str, derivatives: str
) -> None:
    """Chunked (one task per chunk and all at once), closed form or autograd: the same loss and meta-gradient,
    itself checked against finite differences in tests/test_maml.py (float64)."""
    batch = _meta_batch(3, k)
    adaptation = settings(k, first_order, estimator)
    loss, expected = _autograd_meta_gradient(tiny_policy, batch, adaptation)
    assert expected.abs().max() > 1e-3
    for chunk in (1, 2, 3):
        meta = meta_gradient(tiny_policy, batch, adaptation, task_chunk=chunk, derivatives=derivatives)
        torch.testing.assert_close(meta.grad, expected, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(meta.loss, loss, rtol=1e-10, atol=1e-14)
        adapted = adapt_on_batch(tiny_policy, tiny_policy.params(), batch, adaptation, True)
        for name, value in adapted.items():
            torch.testing.assert_close(meta.adapted[name], value.detach(), rtol=1e-12, atol=1e-14)
        reference = old_policy(tiny_policy, adapted, batch.valid)
        for field in ("log_probs", "mean", "log_std"):
            torch.testing.assert_close(getattr(meta.old, field), getattr(reference, field), rtol=1e-12, atol=1e-14)


def test_meta_gradient_second_order_against_finite_differences(tiny_policy) -> None:
    """The closed-form chain of inner Hessian-vector products is the derivative of the surrogate through two
    inner steps (float64 central differences; the log estimator: lvc's second-order term is an estimator's
    choice, not the derivative of the inner step as a function)."""
    batch = _meta_batch(2, 2, seed=1)  # (some draws make two lr-0.5 steps explode)
    adaptation = settings(2, False, "log")
    theta = tiny_policy.params()
    old = old_policy(tiny_policy, adapt_on_batch(tiny_policy, theta, batch, adaptation, True), batch.valid)

    def f(params):
        return surrogate_loss(
            tiny_policy, adapt_on_batch(tiny_policy, params, batch, adaptation, False), batch.valid, old
        )

    numeric = finite_difference_grad(f, {k: v.detach().clone() for k, v in theta.items()})
    meta = meta_gradient(tiny_policy, batch, adaptation, task_chunk=1)
    torch.testing.assert_close(meta.grad, numeric, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("derivatives", ["closed_form", "autograd"])
def test_evaluate_outer_is_the_surrogate_and_kl_after_the_inner_loop(tiny_policy, derivatives: str) -> None:
    batch = _meta_batch(3, 2, seed=7)
    adaptation = settings(2, False, "lvc")
    old = meta_gradient(tiny_policy, batch, adaptation).old
    with torch.no_grad():
        for p in tiny_policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3), dtype=p.dtype))
    adapted = adapt_on_batch(tiny_policy, tiny_policy.params(), batch, adaptation, True)
    loss = surrogate_loss(tiny_policy, adapted, batch.valid, old).item()
    kl = mean_kl(tiny_policy, adapted, batch.valid, old).item()
    assert kl > 1e-4 and abs(loss) > 1e-4
    for chunk in (1, 3):
        got = evaluate_outer(tiny_policy, batch, adaptation, old, task_chunk=chunk, derivatives=derivatives)
        assert got == pytest.approx((loss, kl), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("curvature", ["exact", "fisher"])
def test_trpo_step_closed_form_and_autograd_agree(tiny_policy, curvature: str) -> None:
    """The same TRPO step either way, and the curvature reuses the meta-gradient's inner loop (float64)."""
    import copy

    batch = _meta_batch(3, 1, seed=12)
    results = []
    for derivatives in ("closed_form", "autograd"):
        policy = copy.deepcopy(tiny_policy)
        timer = PartTimer()
        options = TRPOSettings(max_kl=1e-3, cg_iters=8, curvature=curvature, derivatives=derivatives, hvp_subsample=0.5)
        stats = trpo_step(policy, batch, settings(1, False, "lvc"), options, timer)
        results.append((stats, flatten(policy.params()).detach()))
        totals = timer.totals()
        assert totals["fvp"][1] == 8 and totals["line_search"][1] == stats["ls_steps"] + 1
        assert {"adapt", "meta_gradient", "curvature"} <= totals.keys()
    (closed, closed_params), (reference, reference_params) = results
    assert closed["accepted"] == 1.0
    torch.testing.assert_close(closed_params, reference_params, rtol=1e-9, atol=1e-11)
    for key in ("loss_before", "loss_after", "kl"):
        assert closed[key] == pytest.approx(reference[key], rel=1e-9, abs=1e-14)


def test_kl_curvature_reuses_the_meta_gradient(tiny_policy) -> None:
    """Given the meta-gradient (its adapted parameters and kept inner steps), the curvature is the same operator."""
    batch = _meta_batch(3, 2, seed=21)
    for estimator in ("log", "lvc"):
        adaptation = settings(2, False, estimator)
        params = tiny_policy.params()
        meta = meta_gradient(tiny_policy, batch, adaptation, task_chunk=2, keep_inner=True)
        v = torch.randn(meta.grad.numel(), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        for exact in (True, False):
            fresh = kl_curvature(tiny_policy, params, batch, adaptation, 0.5, exact)(v)
            reused = kl_curvature(tiny_policy, params, batch, adaptation, 0.5, exact, meta)(v)
            reference = kl_curvature(tiny_policy, params, batch, adaptation, 0.5, exact, derivatives="autograd")(v)
            torch.testing.assert_close(reused, fresh, rtol=1e-12, atol=1e-14)
            torch.testing.assert_close(fresh, reference, rtol=1e-10, atol=1e-12)


def test_task_chunk_size() -> None:
    policy = GaussianMLPPolicy(17, 6, (64, 64))
    batch = MetaBatch([{}] * 40, [random_episodes(40, 20, 200, 0)], random_episodes(40, 20, 200, 1))
    # float64: 200 * 20 * 64 * 8 bytes = 2 MB per task: one task per chunk
    assert task_chunk_size(policy, batch) == 1
    assert task_chunk_size(policy, batch, requested=8) == 8 and task_chunk_size(policy, batch, requested=99) == 40
    small = MetaBatch([{}] * 40, [random_episodes(40, 2, 10, 0)], random_episodes(40, 2, 10, 1))
    assert task_chunk_size(policy, small) == 40
    assert task_slices(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]


# --------------------------------------------------------------------------- train.device

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


def _on(batch: MetaBatch, device: str) -> MetaBatch:
    return MetaBatch(
        batch.tasks, [ep.to(torch.device(device)) for ep in batch.train], batch.valid.to(torch.device(device))
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("curvature", ["exact", "fisher"])
def test_meta_update_on_the_device(tiny_policy, device: str, curvature: str) -> None:
    """The meta-gradient, the curvature and a TRPO step on the device: the CPU's float64 numbers
    (on a GPU the whole batch is one chunk)."""
    import copy

    batch = _meta_batch(3, 2, seed=3)
    adaptation = settings(2, False, "lvc")
    exact = curvature == "exact"
    reference = meta_gradient(tiny_policy, batch, adaptation, task_chunk=1, keep_inner=exact)
    policy = copy.deepcopy(tiny_policy).to(device)
    moved = _on(batch, device)
    meta = meta_gradient(policy, moved, adaptation, keep_inner=exact)
    assert meta.grad.device.type == device
    torch.testing.assert_close(meta.grad.cpu(), reference.grad, rtol=1e-10, atol=1e-12)
    v = reference.grad / reference.grad.norm()
    expected = kl_curvature(tiny_policy, tiny_policy.params(), batch, adaptation, 0.5, exact, reference)(v)
    got = kl_curvature(policy, policy.params(), moved, adaptation, 0.5, exact, meta)(v.to(device))
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-10, atol=1e-12)
    options = TRPOSettings(max_kl=1e-3, cg_iters=5, curvature=curvature)
    cpu_policy = copy.deepcopy(tiny_policy)
    trpo_step(cpu_policy, batch, adaptation, options)
    trpo_step(policy, moved, adaptation, options)
    torch.testing.assert_close(flatten(policy.params()).detach().cpu(), flatten(cpu_policy.params()).detach())


TINY_NAV = [
    "maml.meta_batch_size=3",
    "maml.episodes_per_task=4",
    "policy.hidden_sizes=[8]",
    "env.horizon=12",
    "train.num_threads=1",
]


@pytest.mark.parametrize("optimizer", ["trpo", "adam"])
def test_learner_replica_trains_exactly_like_the_cpu_learner(optimizer: str) -> None:
    """The train.device bookkeeping (a learner replica synchronised with the policy around every meta-update;
    episodes moved once per sampling), forced on the CPU: the same parameters, bit for bit, and the policy the
    checkpoints save is the updated one."""
    import copy

    from metarl.config import load_config
    from metarl.episodes import OnDevice
    from metarl.trainer import PolicyGradientMAML

    config = load_config(None, [*TINY_NAV, f"outer.optimizer={optimizer}"])
    plain, replica = PolicyGradientMAML(config), PolicyGradientMAML(config)
    try:
        assert plain.learner is plain.policy and plain.device == torch.device("cpu")
        replica.learner = copy.deepcopy(replica.policy)
        replica.collector = OnDevice(replica.sampler, torch.device("cpu"), replica.policy)  # type: ignore[assignment]
        for it in range(3):
            a, b = plain.iteration(it), replica.iteration(it)
            assert a["meta/return_post"] == b["meta/return_post"]
        for p, q, r in zip(plain.policy.parameters(), replica.policy.parameters(), replica.learner.parameters()):
            assert torch.equal(p, q)
            if optimizer == "trpo":  # TRPO steps the replica, then the policy takes its parameters
                assert torch.equal(q, r)  # (Adam steps the policy; the replica takes them before the next update)
    finally:
        plain.close()
        replica.close()


@CUDA
def test_training_on_cuda_follows_the_cpu_run() -> None:  # pragma: no cover - needs a GPU
    from metarl.config import load_config
    from metarl.trainer import PolicyGradientMAML

    runs = {}
    for device in ("cpu", "cuda"):
        algorithm = PolicyGradientMAML(load_config(None, [*TINY_NAV, f"train.device={device}", "train.dtype=float64"]))
        try:
            metrics = [algorithm.iteration(it) for it in range(2)]
            assert all(p.device.type == "cpu" for p in algorithm.policy.parameters())  # checkpoints: CPU
            runs[device] = (flatten(algorithm.policy.params()).detach(), metrics)
        finally:
            algorithm.close()
    torch.testing.assert_close(runs["cuda"][0], runs["cpu"][0], rtol=1e-6, atol=1e-8)


def test_worker_threads_do_not_change_the_meta_update(tiny_policy) -> None:
    """Chunks on 1 or 3 worker threads (each op on one intra-op thread): the same step, bit for bit."""
    import copy

    batch = _meta_batch(5, 1, seed=30)
    results = []
    for workers in (1, 3):
        policy = copy.deepcopy(tiny_policy)
        options = TRPOSettings(max_kl=1e-3, cg_iters=6, curvature="exact", task_chunk=1, workers=workers)
        stats = trpo_step(policy, batch, settings(1, False, "lvc"), options)
        results.append((flatten(policy.params()).detach(), stats))
    assert torch.equal(results[0][0], results[1][0]) and results[0][1] == results[1][1]
    assert results[0][1]["accepted"] == 1.0


def test_adapt_first_order_is_the_inner_loops_value(tiny_policy) -> None:
    from metarl.maml import adapt, rl_inner_loss
    from metarl.trpo import adapt_first_order

    train = [random_episodes(4, 3, 5, seed) for seed in (40, 41)]
    expected = adapt(rl_inner_loss(tiny_policy, train), tiny_policy.params(), 4, [0.3, 0.2], first_order=True)
    for workers in (1, 2):
        got = adapt_first_order(tiny_policy, tiny_policy.params(), train, [0.3, 0.2], workers)
        for name, value in expected.items():
            torch.testing.assert_close(got[name], value.detach(), rtol=1e-12, atol=1e-14)
            assert not got[name].requires_grad


def test_trpo_step_spreads_its_chunks_over_torchs_thread_count(tiny_policy, monkeypatch) -> None:
    """With 2 torch threads every chunked pass of the meta-update runs on 2 workers (each op on one thread)."""
    import metarl.trpo as trpo

    seen: list[tuple[int, int]] = []
    original = trpo._map

    def spy(fn, items, workers):
        seen.append((workers, torch.get_num_threads()))
        return original(fn, items, workers)

    monkeypatch.setattr(trpo, "_map", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        trpo_step(tiny_policy, _meta_batch(4, 1, seed=50), settings(1), TRPOSettings(cg_iters=3, task_chunk=1))
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(before)
    assert seen and all(entry == (2, 1) for entry in seen)  # meta-gradient, curvature, products, line search
