"""Meta-gradients in float64 against independent computations."""

from __future__ import annotations

import pytest
import torch

from metarl.episodes import Episodes
from metarl.maml import (
    MetaBatch,
    adapt,
    adapt_on_batch,
    inner_step_sizes,
    log_probs,
    old_policy,
    reinforce_loss,
    rl_inner_loss,
    surrogate_and_old_policy,
    surrogate_loss,
)
from metarl.policy import GaussianMLPPolicy, Params, flatten, stack_params
from tests.helpers import finite_difference_grad, random_episodes, settings


def make_batch(n: int, k: int, seed: int = 1) -> MetaBatch:
    """k inner-step episode sets and a post-adaptation set for n tasks."""
    train = [random_episodes(n, 3, 5, seed + i) for i in range(k)]
    return MetaBatch([{}] * n, train, random_episodes(n, 3, 5, seed + 100))


def meta_objective(policy: GaussianMLPPolicy, batch: MetaBatch, k: int, first_order: bool = False):
    """``theta -> outer loss`` with the old policy frozen at the initial parameters."""
    theta0 = {n: p.detach().clone().requires_grad_() for n, p in policy.params().items()}
    old = old_policy(policy, adapt_on_batch(policy, theta0, batch, settings(k), True), batch.valid)

    def f(params: Params) -> torch.Tensor:
        adapted = adapt_on_batch(policy, params, batch, settings(k, first_order), first_order)
        return surrogate_loss(policy, adapted, batch.valid, old)

    return theta0, f


def test_second_order_meta_gradient_matches_finite_differences(tiny_policy: GaussianMLPPolicy) -> None:
    for k in (1, 2):
        batch = make_batch(n=2, k=k)
        theta, f = meta_objective(tiny_policy, batch, k)
        autograd = flatten(torch.autograd.grad(f(theta), list(theta.values())))
        numeric = finite_difference_grad(f, theta)
        torch.testing.assert_close(autograd, numeric, rtol=1e-5, atol=1e-7)
        assert autograd.abs().max() > 1e-3  # a real, non-trivial gradient


def test_first_order_gradient_is_outer_gradient_at_adapted_params(tiny_policy: GaussianMLPPolicy) -> None:
    batch = make_batch(n=2, k=1)
    theta, f_first = meta_objective(tiny_policy, batch, 1, first_order=True)
    first = flatten(torch.autograd.grad(f_first(theta), list(theta.values())))
    # Independent computation: adapted parameters as leaves, gradient of the outer loss there, summed over tasks.
    adapted = {
        k: v.detach().requires_grad_() for k, v in adapt_on_batch(tiny_policy, theta, batch, settings(1), True).items()
    }
    _, f_second = meta_objective(tiny_policy, batch, 1)
    old = old_policy(tiny_policy, adapted, batch.valid)
    outer = torch.autograd.grad(surrogate_loss(tiny_policy, adapted, batch.valid, old), list(adapted.values()))
    expected = flatten([g.sum(0) for g in outer])
    torch.testing.assert_close(first, expected, rtol=1e-10, atol=1e-12)
    second = flatten(torch.autograd.grad(f_second(theta), list(theta.values())))
    assert (first - second).abs().max() > 1e-4  # the flag changes the gradient


def test_batch_meta_gradient_is_mean_of_per_task_meta_gradients(tiny_policy: GaussianMLPPolicy) -> None:
    n = 3
    batch = make_batch(n=n, k=1)
    theta, f = meta_objective(tiny_policy, batch, 1)
    joint = flatten(torch.autograd.grad(f(theta), list(theta.values())))

    def task_slice(ep: Episodes, i: int) -> Episodes:
        fields = ("observations", "actions", "rewards", "mask", "returns", "advantages")
        return Episodes(*(getattr(ep, name)[:, i : i + 1] for name in fields))

    per_task = []
    for i in range(n):
        single = MetaBatch([{}], [task_slice(batch.train[0], i)], task_slice(batch.valid, i))
        theta_i, f_i = meta_objective(tiny_policy, single, 1)
        per_task.append(flatten(torch.autograd.grad(f_i(theta_i), list(theta_i.values()))))
    torch.testing.assert_close(joint, torch.stack(per_task).mean(0), rtol=1e-10, atol=1e-12)


def test_stacked_inner_gradients_are_per_task_gradients(tiny_policy: GaussianMLPPolicy) -> None:
    episodes = random_episodes(3, 2, 4, seed=7)
    theta = tiny_policy.params()
    adapted = adapt(rl_inner_loss(tiny_policy, [episodes]), theta, 3, [0.3], first_order=True)
    for i in range(3):
        single = Episodes(
            *(
                getattr(episodes, f)[:, i : i + 1]
                for f in ("observations", "actions", "rewards", "mask", "returns", "advantages")
            )
        )
        loss = reinforce_loss(tiny_policy, stack_params(theta, 1), single)
        grads = torch.autograd.grad(loss, list(theta.values()))
        for (name, p), g in zip(theta.items(), grads):
            torch.testing.assert_close(adapted[name][i], p - 0.3 * g)


def test_evaluation_step_sizes_halve_after_first() -> None:
    assert inner_step_sizes(0.1, 3, decay_after_first=True) == [0.1, 0.05, 0.05]
    assert inner_step_sizes(0.1, 2) == [0.1, 0.1]


def test_one_forward_surrogate_equals_snapshot_then_surrogate(tiny_policy: GaussianMLPPolicy) -> None:
    """TRPO's single-forward surrogate (ratio 1) has the value, gradient and snapshot of the two-call form."""
    batch = make_batch(3, 1)
    params = {n: p.detach().clone().requires_grad_() for n, p in tiny_policy.params().items()}
    adapted = adapt_on_batch(tiny_policy, params, batch, settings(1), False)
    loss, old = surrogate_and_old_policy(tiny_policy, adapted, batch.valid)
    reference_old = old_policy(tiny_policy, adapted, batch.valid)
    reference = surrogate_loss(tiny_policy, adapted, batch.valid, reference_old)
    torch.testing.assert_close(loss, reference, rtol=1e-12, atol=1e-12)
    for a, b in zip(old.__dict__.values(), reference_old.__dict__.values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert not a.requires_grad
    g = torch.autograd.grad(loss, list(params.values()), retain_graph=True)
    g_ref = torch.autograd.grad(reference, list(params.values()))
    torch.testing.assert_close(flatten(dict(enumerate(g))), flatten(dict(enumerate(g_ref))), rtol=1e-10, atol=1e-12)
    assert flatten(dict(enumerate(g))).abs().max() > 1e-6


def test_lvc_inner_loss_same_gradient_hessian_adds_score_outer_products(tiny_policy: GaussianMLPPolicy) -> None:
    """ProMP's LVC form: the log form's gradient; Hessian + (-mean_t A_t g_t g_t^T), g_t = grad log pi_t (per task)."""
    n = 2
    episodes = random_episodes(n, 3, 4, seed=11)
    stacked = {k: v.detach().clone().requires_grad_() for k, v in stack_params(tiny_policy.params(), n).items()}
    inputs = list(stacked.values())
    v = [torch.randn(p.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64) for p in inputs]

    def grad_and_hvp(estimator: str) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.autograd.grad(reinforce_loss(tiny_policy, stacked, episodes, estimator), inputs, create_graph=True)
        hv = torch.autograd.grad(g, inputs, grad_outputs=v)
        return flatten(dict(zip(stacked, g))).detach(), flatten(dict(zip(stacked, hv)))

    g_log, hv_log = grad_and_hvp("log")
    g_lvc, hv_lvc = grad_and_hvp("lvc")
    torch.testing.assert_close(g_lvc, g_log, rtol=1e-12, atol=1e-12)
    # Independent computation of the extra term, one sample at a time.
    logp, _, _ = log_probs(tiny_policy, stacked, episodes)  # [n, T*B]
    adv = episodes.advantages.permute(1, 0, 2).reshape(n, -1)
    mask = episodes.mask.permute(1, 0, 2).reshape(n, -1)
    v_flat = flatten(dict(zip(stacked, v)))
    extra = torch.zeros_like(v_flat)
    for i in range(n):
        for m in torch.nonzero(mask[i]).flatten().tolist():
            score = flatten(dict(zip(stacked, torch.autograd.grad(logp[i, m], inputs, retain_graph=True))))
            extra -= adv[i, m] * score * (score @ v_flat) / mask[i].sum()
    assert extra.abs().max() > 1e-3  # the term is not negligible here
    torch.testing.assert_close(hv_lvc - hv_log, extra, rtol=1e-10, atol=1e-10)


def test_reinforce_loss_rejects_an_unknown_estimator(tiny_policy: GaussianMLPPolicy) -> None:
    episodes = random_episodes(1, 2, 3, seed=2)
    with pytest.raises(ValueError, match="estimator must be 'log' or 'lvc', got 'dice'"):
        reinforce_loss(tiny_policy, stack_params(tiny_policy.params(), 1), episodes, "dice")  # type: ignore[arg-type]
