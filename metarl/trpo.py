"""Meta-optimisers for the outer loop: TRPO (conjugate gradient + KL line search) and Adam."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from metarl.maml import (
    AdaptationSettings,
    MetaBatch,
    OldPolicy,
    adapt_on_batch,
    mean_kl,
    old_policy,
    surrogate_loss,
)
from metarl.policy import GaussianMLPPolicy, flatten


class NonFiniteError(FloatingPointError):
    """A loss, gradient or step became NaN or infinite."""


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor], b: Tensor, iterations: int, residual_tol: float = 1e-10
) -> Tensor:
    """Approximately solve ``A x = b`` for symmetric positive definite ``A`` given only ``x -> A x``."""
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
    return x


@dataclass(frozen=True)
class TRPOSettings:
    """Trust-region settings (Schulman et al. 2015), as used by MAML-TRPO."""

    max_kl: float = 0.01
    cg_iters: int = 10
    cg_damping: float = 1e-5
    ls_backtrack: float = 0.8
    ls_max_steps: int = 15
    hvp_subsample: float = 1.0


def _check_finite(name: str, value: Tensor) -> None:
    if not torch.isfinite(value).all():
        raise NonFiniteError(f"{name} is not finite ({value.flatten()[:4].tolist()} ...)")


def set_flat_params(policy: GaussianMLPPolicy, vector: Tensor) -> None:
    """Copy a flat vector into the policy's parameters in place."""
    torch.nn.utils.vector_to_parameters(vector, policy.parameters())


def trpo_step(
    policy: GaussianMLPPolicy, batch: MetaBatch, adaptation: AdaptationSettings, settings: TRPOSettings
) -> dict[str, float]:
    """One MAML-TRPO meta-update of ``policy`` in place; returns statistics for logging.

    The Hessian-vector products differentiate the mean KL between the adapted policies at
    sampling time and the adapted policies as functions of the meta-parameters, through the
    inner update (second order) or not (first order). With ``hvp_subsample < 1`` they use
    the first fraction of each task's post-adaptation episodes.
    """
    params = policy.params()
    names = list(params)
    adapted = adapt_on_batch(policy, params, batch, adaptation, adaptation.first_order)
    old = old_policy(policy, adapted, batch.valid)
    loss = surrogate_loss(policy, adapted, batch.valid, old)
    _check_finite("surrogate loss", loss)
    grad = flatten(torch.autograd.grad(loss, [params[k] for k in names], retain_graph=True))
    _check_finite("meta-gradient", grad)

    kl_episodes = batch.valid
    if settings.hvp_subsample < 1.0:
        kept = max(1, math.ceil(settings.hvp_subsample * batch.valid.episodes_per_task))
        kl_episodes = batch.valid.subsample(kept)
    kl = mean_kl(policy, adapted, kl_episodes, old_policy(policy, adapted, kl_episodes))
    kl_grad = flatten(torch.autograd.grad(kl, [params[k] for k in names], create_graph=True))

    def fisher_vector_product(v: Tensor) -> Tensor:
        hv = torch.autograd.grad(kl_grad @ v, [params[k] for k in names], retain_graph=True)
        return flatten(hv) + settings.cg_damping * v

    step_dir = conjugate_gradient(fisher_vector_product, -grad, settings.cg_iters)
    shs = 0.5 * (step_dir @ fisher_vector_product(step_dir))
    _check_finite("step curvature", shs)
    # Scale so that the quadratic model of the KL at the full step, 0.5 x^T H x, equals max_kl.
    full_step = step_dir * torch.sqrt(settings.max_kl / shs.clamp_min(1e-12))
    del kl_grad, adapted

    old_flat = flatten(params).detach().clone()
    old_loss = loss.item()
    stats = {"loss_before": old_loss, "ls_steps": float(settings.ls_max_steps), "accepted": 0.0}
    for j in range(settings.ls_max_steps):
        set_flat_params(policy, old_flat + settings.ls_backtrack**j * full_step)
        new_loss, new_kl = evaluate_outer(policy, batch, adaptation, old)
        if math.isfinite(new_loss) and new_loss < old_loss and new_kl <= settings.max_kl:
            stats.update(loss_after=new_loss, kl=new_kl, ls_steps=float(j), accepted=1.0)
            break
    else:
        set_flat_params(policy, old_flat)
        stats.update(loss_after=old_loss, kl=0.0)
    stats["improvement"] = stats["loss_before"] - stats["loss_after"]
    return stats


def evaluate_outer(
    policy: GaussianMLPPolicy, batch: MetaBatch, adaptation: AdaptationSettings, old: OldPolicy
) -> tuple[float, float]:
    """Surrogate loss and mean KL at the policy's current parameters (no graph kept)."""
    adapted = adapt_on_batch(policy, policy.params(), batch, adaptation, first_order=True)
    with torch.no_grad():
        adapted = {k: v.detach() for k, v in adapted.items()}
        return surrogate_loss(policy, adapted, batch.valid, old).item(), mean_kl(policy, adapted, batch.valid, old).item()


def adam_step(
    policy: GaussianMLPPolicy, optimizer: torch.optim.Optimizer, batch: MetaBatch, adaptation: AdaptationSettings
) -> dict[str, float]:
    """One Adam step on the post-adaptation surrogate (its gradient at ratio 1 is the meta policy gradient)."""
    adapted = adapt_on_batch(policy, policy.params(), batch, adaptation, adaptation.first_order)
    old = old_policy(policy, adapted, batch.valid)
    loss = surrogate_loss(policy, adapted, batch.valid, old)
    _check_finite("surrogate loss", loss)
    optimizer.zero_grad()
    loss.backward()
    for p in policy.parameters():
        _check_finite("meta-gradient", p.grad)
    optimizer.step()
    return {"loss_before": loss.item()}
