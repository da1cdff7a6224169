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
from metarl.policy import GaussianMLPPolicy, Params, flatten, stack_params, unflatten
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


# --------------------------------------------------------------------------- learned step sizes, adapted subsets


def _regression_loss(policy: GaussianMLPPolicy, x: torch.Tensor, y: torch.Tensor):
    """Sum over tasks of each task's MSE of the policy mean (stacked params ``[n, ...]``, x ``[n, M, in]``)."""

    def loss(params: Params, step: int) -> torch.Tensor:
        mean, _ = policy(x, params)
        return (mean - y).pow(2).mean(dim=(1, 2)).sum() + 0.0 * params["log_std"].sum()

    return loss


def _regression_data(n: int = 3, m: int = 5, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(n, m, 2, generator=g, dtype=torch.float64) for _ in range(4))


def test_learned_per_parameter_step_sizes_meta_gradient_matches_finite_differences(
    tiny_policy: GaussianMLPPolicy,
) -> None:
    """Meta-SGD: d(query loss after 2 steps of theta - alpha * grad)/d(theta, alpha) against central differences."""
    sx, sy, qx, qy = _regression_data()
    theta = {k: v.detach().clone() for k, v in tiny_policy.params().items()}
    g = torch.Generator().manual_seed(3)
    alpha = {k: 0.05 + 0.1 * torch.rand(v.shape, generator=g, dtype=torch.float64) for k, v in theta.items()}

    def objective(flat_all: torch.Tensor) -> torch.Tensor:
        both = unflatten(
            flat_all, {**{f"t.{k}": v for k, v in theta.items()}, **{f"a.{k}": v for k, v in alpha.items()}}
        )
        t = {k: both[f"t.{k}"] for k in theta}
        a = {k: both[f"a.{k}"] for k in alpha}
        adapted = adapt(_regression_loss(tiny_policy, sx, sy), t, 3, [a, a], first_order=False)
        return _regression_loss(tiny_policy, qx, qy)(adapted, 0)

    point = torch.cat([flatten(theta), flatten(alpha)]).requires_grad_()
    (analytic,) = torch.autograd.grad(objective(point), point)
    eps = 1e-6
    numeric = torch.stack(
        [
            (objective(point.detach() + eps * e) - objective(point.detach() - eps * e)) / (2 * eps)
            for e in torch.eye(point.numel(), dtype=torch.float64)
        ]
    )
    torch.testing.assert_close(analytic, numeric, rtol=1e-6, atol=1e-8)
    assert analytic[flatten(theta).numel() :].abs().max() > 1e-4  # the step sizes do get a gradient


def test_per_step_layer_sizes_and_fixed_sizes_agree_when_equal(tiny_policy: GaussianMLPPolicy) -> None:
    """A per-parameter step size dict holding the same number everywhere is the fixed step size."""
    sx, sy, _, _ = _regression_data()
    theta = tiny_policy.params()
    loss = _regression_loss(tiny_policy, sx, sy)
    sizes = [{k: torch.tensor(lr, dtype=torch.float64) for k in theta} for lr in (0.1, 0.05)]
    by_dict = adapt(loss, theta, 3, sizes, first_order=False)
    by_float = adapt(loss, theta, 3, [0.1, 0.05], first_order=False)
    for k in theta:
        torch.testing.assert_close(by_dict[k], by_float[k], rtol=0, atol=0)


def test_adapting_a_subset_leaves_the_rest_and_matches_maml_with_the_body_frozen(
    tiny_policy: GaussianMLPPolicy,
) -> None:
    """ANIL: only the head adapts; the body's inner step is exactly zero, and the result is what MAML gives
    when the body's gradient is zeroed by hand."""
    sx, sy, qx, qy = _regression_data()
    theta = {k: v.detach().clone().requires_grad_() for k, v in tiny_policy.params().items()}
    head = {"layers.1.weight", "layers.1.bias"}
    loss = _regression_loss(tiny_policy, sx, sy)
    anil = adapt(loss, theta, 3, [0.3, 0.2], first_order=False, adapted=head)
    for name in theta.keys() - head:
        torch.testing.assert_close(anil[name], theta[name].unsqueeze(0).expand_as(anil[name]), rtol=0, atol=0)
    # by hand: the same steps with the body's gradient multiplied by zero
    stacked = {k: v.unsqueeze(0).expand(3, *v.shape) for k, v in theta.items()}
    for lr in (0.3, 0.2):
        grads = torch.autograd.grad(loss(stacked, 0), list(stacked.values()), create_graph=True)
        stacked = {k: v - lr * (gr if k in head else 0 * gr) for (k, v), gr in zip(stacked.items(), grads)}
    for name in theta:
        torch.testing.assert_close(anil[name], stacked[name])
    outer_anil = torch.autograd.grad(_regression_loss(tiny_policy, qx, qy)(anil, 0), list(theta.values()))
    outer_hand = torch.autograd.grad(_regression_loss(tiny_policy, qx, qy)(stacked, 0), list(theta.values()))
    for a, b in zip(outer_anil, outer_hand):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="subset"):
        adapt(loss, theta, 3, [0.1], first_order=False, adapted={"no.such"})
