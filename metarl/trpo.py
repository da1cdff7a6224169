"""Meta-optimisers for the outer loop: TRPO (conjugate gradient + KL line search) and Adam."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from metarl.maml import (
    AdaptationSettings,
    MetaBatch,
    OldPolicy,
    adapt,
    adapt_on_batch,
    inner_step_sizes,
    mean_kl,
    old_policy,
    reinforce_loss,
    rl_inner_loss,
    surrogate_and_old_policy,
    surrogate_loss,
)
from metarl.policy import GaussianMLPPolicy, Params, detach_params, flatten, stack_params, unflatten


class NonFiniteError(FloatingPointError):
    """A loss, gradient or step became NaN or infinite."""


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor], b: Tensor, iterations: int, residual_tol: float = 1e-10
) -> tuple[Tensor, Tensor]:
    """Approximately solve ``A x = b`` for symmetric positive definite ``A`` given only ``x -> A x``.

    Returns ``x`` and ``A x``, the latter from the final residual (``b - r``), which saves
    the extra product TRPO would otherwise spend on the step's curvature ``x^T A x``.
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r @ r
    for _ in range(iterations):
        if rr <= residual_tol:
            break
        ap = matvec(p)
        alpha = rr / (p @ ap)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x, b - r


@dataclass(frozen=True)
class TRPOSettings:
    """Trust-region settings (Schulman et al. 2015), as used by MAML-TRPO."""

    max_kl: float = 0.01
    cg_iters: int = 10
    cg_damping: float = 1e-5
    ls_backtrack: float = 0.8
    ls_max_steps: int = 15
    hvp_subsample: float = 1.0
    curvature: Literal["exact", "fisher"] = "exact"


def _check_finite(name: str, value: Tensor) -> None:
    if not torch.isfinite(value).all():
        raise NonFiniteError(f"{name} is not finite ({value.flatten()[:4].tolist()} ...)")


def set_flat_params(policy: GaussianMLPPolicy, vector: Tensor) -> None:
    """Copy a flat vector into the policy's parameters in place."""
    torch.nn.utils.vector_to_parameters(vector, policy.parameters())


def _leaf(params: Params) -> Params:
    """Detached copies that require grad (roots of a fresh graph)."""
    return {k: v.detach().clone().requires_grad_() for k, v in params.items()}


def _hessian_operator(loss: Tensor, leaf: Params) -> Callable[[list[Tensor]], list[Tensor]]:
    """``u -> (d^2 loss / d leaf^2) u`` by double backward through a gradient graph built once."""
    inputs = list(leaf.values())
    grads = torch.autograd.grad(loss, inputs, create_graph=True)
    return lambda u: list(torch.autograd.grad(grads, inputs, grad_outputs=u, retain_graph=True))


def kl_curvature(
    policy: GaussianMLPPolicy,
    params: Params,
    batch: MetaBatch,
    adaptation: AdaptationSettings,
    subsample: float = 1.0,
    through_inner_loop: bool = True,
) -> Callable[[Tensor], Tensor]:
    """The Hessian of the mean post-adaptation KL w.r.t. the meta-parameters, as ``v -> H v`` (flat).

    At the current parameters every task's KL and its gradient are zero, so the Hessian is
    exactly ``H = sum_i J_i^T F_i J_i``: ``F_i`` is the KL Hessian w.r.t. task ``i``'s adapted
    parameters (the Fisher) and ``J_i = prod_j (I - alpha_j d^2 L_inner,ij)`` is the Jacobian of
    the inner loop (``I`` for first-order MAML, or with ``through_inner_loop=False``: the
    adapted policies' Fisher alone, an approximation the line search's exact KL check keeps
    safe). Each product is one double backward through a small graph built once at detached
    parameters, instead of a double backward through the whole second-order meta-objective.

    With ``subsample < 1`` the Fisher uses the first fraction of each task's post-adaptation
    trajectories (an average over states: subsampling it barely changes the step). The inner
    Jacobian always uses every trajectory: it is the derivative of the adaptation that actually
    ran, and a subsample's differs from it (measured on HalfCheetahVel: with the inner Hessians
    on 20% of the trajectories the accepted TRPO step's surrogate gain fell by 2.6x).
    """
    n = len(batch.tasks)
    lrs = inner_step_sizes(adaptation.inner_lr, len(batch.train))
    point = stack_params(detach_params(params), n)
    inner_hessians = []
    for step, episodes in enumerate(batch.train):
        leaf = _leaf(point)
        if through_inner_loop and not adaptation.first_order:
            inner_hessians.append(
                _hessian_operator(reinforce_loss(policy, leaf, episodes, adaptation.inner_estimator), leaf)
            )
        point = detach_params(adapt(rl_inner_loss(policy, [episodes]), leaf, n, [lrs[step]], first_order=True))
    leaf = _leaf(point)
    valid = batch.valid
    if subsample < 1.0:
        valid = valid.subsample(max(1, math.ceil(subsample * valid.episodes_per_task)))
    fisher = _hessian_operator(mean_kl(policy, leaf, valid, old_policy(policy, leaf, valid)), leaf)

    def hvp(v: Tensor) -> Tensor:
        u = list(stack_params(unflatten(v, params), n).values())
        for hessian, lr in zip(inner_hessians, lrs):  # J v
            u = [a - lr * b for a, b in zip(u, hessian(u))]
        w = fisher(u)
        for hessian, lr in reversed(list(zip(inner_hessians, lrs))):  # J^T w
            w = [a - lr * b for a, b in zip(w, hessian(w))]
        return flatten([x.sum(0) for x in w])  # shared meta-parameters: sum over the task copies

    return hvp


def trpo_step(
    policy: GaussianMLPPolicy, batch: MetaBatch, adaptation: AdaptationSettings, settings: TRPOSettings
) -> dict[str, float]:
    """One MAML-TRPO meta-update of ``policy`` in place; returns statistics for logging.

    The meta-gradient differentiates the post-adaptation surrogate through the inner loop
    (second order) or not (first order); the search direction solves ``(H + damping) x = -g``
    by conjugate gradient with :func:`kl_curvature`; the backtracking line search accepts
    the first step that improves the surrogate with mean KL <= ``max_kl``, else restores.
    """
    params = policy.params()
    adapted = adapt_on_batch(policy, params, batch, adaptation, adaptation.first_order)
    loss, old = surrogate_and_old_policy(policy, adapted, batch.valid)
    _check_finite("surrogate loss", loss)
    grad = flatten(list(torch.autograd.grad(loss, list(params.values()))))
    _check_finite("meta-gradient", grad)
    del adapted

    curvature = kl_curvature(policy, params, batch, adaptation, settings.hvp_subsample, settings.curvature == "exact")

    def damped(v: Tensor) -> Tensor:
        return curvature(v) + settings.cg_damping * v

    step_dir, curvature_step = conjugate_gradient(damped, -grad, settings.cg_iters)
    shs = 0.5 * (step_dir @ curvature_step)
    _check_finite("step curvature", shs)
    # Scale so that the quadratic model of the KL at the full step, 0.5 x^T H x, equals max_kl.
    full_step = step_dir * torch.sqrt(settings.max_kl / shs.clamp_min(1e-12))

    old_flat = flatten(params).detach().clone()
    old_loss = loss.item()
    stats = {"loss_before": old_loss, "ls_steps": float(settings.ls_max_steps), "accepted": 0.0}
    scale = 1.0
    for j in range(settings.ls_max_steps):
        set_flat_params(policy, old_flat + scale * full_step)
        new_loss, new_kl = evaluate_outer(policy, batch, adaptation, old)
        if math.isfinite(new_loss) and new_loss < old_loss and new_kl <= settings.max_kl:
            stats.update(loss_after=new_loss, kl=new_kl, ls_steps=float(j), accepted=1.0)
            break
        scale *= next_shrink(new_kl, settings.max_kl, settings.ls_backtrack)
    else:
        set_flat_params(policy, old_flat)
        stats.update(loss_after=old_loss, kl=0.0)
    stats["improvement"] = stats["loss_before"] - stats["loss_after"]
    return stats


def next_shrink(kl: float, max_kl: float, backtrack: float, margin: float = 0.9) -> float:
    """Factor for the next line-search step after a rejected one.

    ``backtrack`` (the classic geometric search), or smaller when the step overshot the trust
    region: the KL grows about quadratically with the step length, so ``margin *
    sqrt(max_kl / kl)`` lands just inside it in one try instead of several backtracks (with an
    approximate curvature such as ``outer.curvature: fisher`` the first step often overshoots).
    """
    if math.isfinite(kl) and kl > max_kl:
        return min(backtrack, margin * math.sqrt(max_kl / kl))
    return backtrack


def evaluate_outer(
    policy: GaussianMLPPolicy, batch: MetaBatch, adaptation: AdaptationSettings, old: OldPolicy
) -> tuple[float, float]:
    """Surrogate loss and mean KL at the policy's current parameters (no graph kept)."""
    adapted = adapt_on_batch(policy, policy.params(), batch, adaptation, first_order=True)
    with torch.no_grad():
        adapted = {k: v.detach() for k, v in adapted.items()}
        return surrogate_loss(policy, adapted, batch.valid, old).item(), mean_kl(
            policy, adapted, batch.valid, old
        ).item()


def adam_step(
    policy: GaussianMLPPolicy, optimizer: torch.optim.Optimizer, batch: MetaBatch, adaptation: AdaptationSettings
) -> dict[str, float]:
    """One Adam step on the post-adaptation surrogate (its gradient at ratio 1 is the meta policy gradient)."""
    adapted = adapt_on_batch(policy, policy.params(), batch, adaptation, adaptation.first_order)
    loss, _ = surrogate_and_old_policy(policy, adapted, batch.valid)
    _check_finite("surrogate loss", loss)
    optimizer.zero_grad()
    loss.backward()
    for p in policy.parameters():
        if p.grad is not None:
            _check_finite("meta-gradient", p.grad)
    optimizer.step()
    return {"loss_before": loss.item()}
