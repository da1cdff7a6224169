"""The policy-gradient meta-update for inner rules the closed form does not cover, by autograd.

Meta-SGD learns a step size per parameter (Li et al. 2017) and ANIL adapts the head only
(Raghu et al. 2020); for policies both change what the inner loop computes, so the
meta-parameters are the policy's parameters θ *and* the learned step sizes α. This module
differentiates the post-adaptation surrogate through the inner loop
(:func:`metarl.maml.adapt_on_batch`, which honours the rule) w.r.t. all of them, and takes
MAML-TRPO's step (:func:`trpo_step`) or an Adam step (:func:`adam_step`) on the joint vector.

The KL curvature is the Gauss-Newton form ``H = J^T F J`` (exact at the current parameters,
where the KL and its gradient vanish): ``F`` is the adapted policies' Fisher and ``J`` the
Jacobian of the adapted parameters w.r.t. ``(θ, α)``. ``outer.curvature: exact`` takes ``J``
through the second-order inner loop; ``fisher`` takes it through the first-order one, which
keeps ``∂θ'/∂α = -∇L_inner`` (so α still has curvature) and ``∂θ'/∂θ = I``. ``J v`` is the
double-backward of ``J^T``; everything is one autograd graph over all tasks.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from metarl.maml import (
    AdaptationSettings,
    MetaBatch,
    OldPolicy,
    adapt_on_batch,
    log_probs,
    task_kls,
    task_surrogates,
    task_surrogates_and_kls,
)
from metarl.policy import GaussianMLPPolicy, Params, detach_params, stack_params
from metarl.trpo import TRPOSettings, conjugate_gradient, line_search, task_major_batch

__all__ = ["adam_step", "gauss_newton_curvature", "meta_objective", "trpo_step"]


def _flat(tensors: Sequence[Tensor | None], like: Sequence[Tensor]) -> Tensor:
    """Concatenate, with zeros for ``None`` (a meta-parameter the objective does not reach)."""
    return torch.cat([(t if t is not None else torch.zeros_like(p)).reshape(-1) for t, p in zip(tensors, like)])


def _split(vector: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    out, start = [], 0
    for p in like:
        out.append(vector[start : start + p.numel()].view_as(p))
        start += p.numel()
    return out


def _adapted(policy: GaussianMLPPolicy, batch: MetaBatch, adaptation: AdaptationSettings, first_order: bool) -> Params:
    """Every task's adapted parameters, differentiable in θ (through per-task copies) and the step sizes."""
    stacked = stack_params(policy.params(), len(batch.tasks))
    return adapt_on_batch(policy, stacked, batch, adaptation, first_order)


def meta_objective(
    policy: GaussianMLPPolicy, batch: MetaBatch, adaptation: AdaptationSettings
) -> tuple[Tensor, Params, OldPolicy]:
    """The post-adaptation surrogate loss (mean over tasks, ratio 1), its adapted parameters (with their graph)
    and the snapshot of the adapted policies the line search measures the KL from."""
    adapted = _adapted(policy, batch, adaptation, adaptation.first_order)
    logp, mean, log_std = log_probs(policy, adapted, batch.valid)
    old = OldPolicy(logp.detach(), mean.detach(), log_std.detach())
    return task_surrogates(logp, old.log_probs, batch.valid).mean(), adapted, old


def _check(name: str, value: Tensor) -> None:
    if not torch.isfinite(value).all():
        raise FloatingPointError(f"{name} is not finite")


def gauss_newton_curvature(
    policy: GaussianMLPPolicy,
    meta: Sequence[Tensor],
    adapted: Params,
    batch: MetaBatch,
    subsample: float = 1.0,
) -> Callable[[Tensor], Tensor]:
    """``v -> J^T F J v`` (flat over ``meta``): the mean post-adaptation KL's Hessian w.r.t. the meta-parameters.

    ``adapted`` must carry the graph from ``meta`` (second order for the exact Jacobian, first
    order for the Fisher approximation); ``F`` is taken on the first ``subsample`` fraction of
    each task's post-adaptation trajectories.
    """
    n = len(batch.tasks)
    outs = list(adapted.values())
    leaf = {k: v.detach().requires_grad_() for k, v in adapted.items()}
    valid = batch.valid
    if subsample < 1.0:
        valid = valid.subsample(max(1, math.ceil(subsample * valid.episodes_per_task)))
    _, mean, log_std = log_probs(policy, leaf, valid)
    old = OldPolicy(torch.zeros(()), mean.detach(), log_std.detach())
    kl = task_kls(mean, log_std, old, valid).sum() / n
    kl_grads = torch.autograd.grad(kl, list(leaf.values()), create_graph=True)
    dummies = [torch.zeros_like(o, requires_grad=True) for o in outs]
    transposed = torch.autograd.grad(outs, list(meta), dummies, create_graph=True, allow_unused=True)
    reached = [(t, v) for t, v in zip(transposed, meta) if t is not None and t.requires_grad]

    def hvp(v: Tensor) -> Tensor:
        parts = _split(v, meta)
        tangent = {id(p): part for p, part in zip(meta, parts)}
        raw = torch.autograd.grad(
            [t for t, _ in reached], dummies, [tangent[id(p)] for _, p in reached], retain_graph=True, allow_unused=True
        )
        jv = [j if j is not None else torch.zeros_like(d) for j, d in zip(raw, dummies)]
        fjv = torch.autograd.grad(kl_grads, list(leaf.values()), jv, retain_graph=True)
        jtf = torch.autograd.grad(outs, list(meta), fjv, retain_graph=True, allow_unused=True)
        return _flat(jtf, meta)

    return hvp


def _evaluate(
    policy: GaussianMLPPolicy, batch: MetaBatch, adaptation: AdaptationSettings, old: OldPolicy
) -> tuple[float, float]:
    """Surrogate loss and mean KL from ``old`` at the current meta-parameters (first-order values, no graph kept)."""
    sizes = None
    if adaptation.step_sizes is not None:
        sizes = tuple(
            s if isinstance(s, float | int) else {k: t.detach() for k, t in s.items()} for s in adaptation.step_sizes
        )
    detached = dataclasses.replace(adaptation, step_sizes=sizes)
    adapted = detach_params(_adapted(policy, batch, detached, first_order=True))
    with torch.no_grad():
        loss, kl = task_surrogates_and_kls(policy, adapted, batch.valid, old)
    return loss.mean().item(), kl.mean().item()


def trpo_step(
    policy: GaussianMLPPolicy,
    extra: Sequence[torch.nn.Parameter],
    batch: MetaBatch,
    adaptation: AdaptationSettings,
    settings: TRPOSettings,
) -> dict[str, float]:
    """One MAML-TRPO meta-update of θ (``policy``) and the ``extra`` meta-parameters (learned step sizes) in place.

    As :func:`metarl.trpo.trpo_step`: the meta-gradient through the inner loop, the search
    direction by conjugate gradient with :func:`gauss_newton_curvature`, the backtracking line
    search on the surrogate with mean KL <= ``max_kl`` (else the parameters are restored).
    """
    batch = task_major_batch(batch)
    meta: list[Tensor] = [*policy.parameters(), *extra]
    loss, adapted, old = meta_objective(policy, batch, adaptation)
    _check("surrogate loss", loss)
    exact = settings.curvature == "exact" and not adaptation.first_order
    grad = _flat(torch.autograd.grad(loss, meta, retain_graph=exact, allow_unused=True), meta)
    _check("meta-gradient", grad)
    if not exact:
        adapted = _adapted(policy, batch, adaptation, first_order=True)
    curvature = gauss_newton_curvature(policy, meta, adapted, batch, settings.hvp_subsample)
    step_dir, curvature_step = conjugate_gradient(
        lambda v: curvature(v) + settings.cg_damping * v, -grad, settings.cg_iters
    )
    shs = 0.5 * (step_dir @ curvature_step)
    _check("step curvature", shs)
    full_step = step_dir * torch.sqrt(settings.max_kl / shs.clamp_min(1e-12))
    start = [p.detach().clone() for p in meta]

    def move(step: Tensor) -> None:
        with torch.no_grad():
            for p, p0, part in zip(meta, start, _split(step, meta)):
                p.copy_(p0 + part)

    return line_search(full_step, loss.item(), move, lambda: _evaluate(policy, batch, adaptation, old), settings)


def adam_step(
    policy: GaussianMLPPolicy, optimizer: torch.optim.Optimizer, batch: MetaBatch, adaptation: AdaptationSettings
) -> dict[str, float]:
    """One step of ``optimizer`` (over θ and any learned step sizes) on the post-adaptation surrogate."""
    loss, _, _ = meta_objective(policy, task_major_batch(batch), adaptation)
    _check("surrogate loss", loss)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None:
                _check("meta-gradient", p.grad)
    optimizer.step()
    return {"loss_before": loss.item()}
