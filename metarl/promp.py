"""ProMP: Proximal Meta-Policy Search (Rothfuss et al. 2019, ICLR), ``maml.algorithm: promp``.

ProMP meta-trains a policy like MAML (one or more policy-gradient inner steps, re-sampling
after each) but replaces MAML-TRPO's outer step by ``promp.num_steps`` Adam steps (``outer.lr``)
on every sampled meta-batch, each on a PPO-style objective that keeps the meta-policy close to
the policies that sampled the batch. At every step the inner loop is re-run from the current
parameters θ on the *same* pre-adaptation episodes, with the low-variance-curvature (LVC)
inner objective importance-weighted against the sampling policy,
``L_in(θ) = -mean_t[π_θ(a|s) / stop_grad(π_old(a|s)) · A]`` (at the first step, θ = θ_old,
this is :func:`metarl.maml.reinforce_loss`'s ``lvc``), and the meta-objective (minimised) is

``J(θ) = mean_i -mean_t[min(r A, clip(r, 1-ε, 1+ε) A)] + mean_k η_k mean_i KL(π_old,k || π_θ,k)``

with ``r = π_θ'(a|s) / π_old'(a|s)`` the post-adaptation likelihood ratio against the adapted
policy that sampled the post-adaptation episodes (ε: ``promp.clip_eps``), and for each inner
step ``k`` the mean KL, on that step's episodes, from the pre-update policy that sampled them
to the current pre-update policy. The coefficients η_k start at ``promp.init_kl_coeff``;
with ``promp.adaptive_kl`` each halves when its KL (after the meta-batch's steps) is below
``promp.target_kl / 1.5`` and doubles above ``1.5 * promp.target_kl`` (the authors' code,
``meta_policy_search/meta_algos/pro_mp.py``). The coefficients are checkpointed. Every task
is adapted at once on task-stacked parameters (:func:`metarl.maml.adapt_steps`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from metarl.episodes import Episodes, masked_task_mean, task_major
from metarl.errors import CheckpointError
from metarl.maml import (
    AdaptationSettings,
    InnerLoss,
    MetaBatch,
    OldPolicy,
    adapt_steps,
    log_probs,
    old_policy,
    reinforce_loss,
    task_kls,
)
from metarl.policy import GaussianMLPPolicy, Params, copy_parameters, is_stacked, stack_params

if TYPE_CHECKING:
    from metarl.config import Config, PrompConfig

__all__ = [
    "KL_BAND",
    "ProMP",
    "PrompLoss",
    "PrompSettings",
    "Sampling",
    "adapt_kl_coeff",
    "clipped_surrogate",
    "importance_weighted_inner_loss",
    "promp_loss",
    "promp_step",
    "sampling_policies",
]

KL_BAND = 1.5
"""The adaptive coefficient's band around ``promp.target_kl``: halve below ``target / 1.5``, double above
``1.5 target`` (the authors' ``_adapt_kl_coeff``)."""


@dataclass(frozen=True)
class PrompSettings:
    """ProMP's hyper-parameters; the defaults are the authors' run scripts' (``run_scripts/pro-mp_run_*.py``)."""

    clip_eps: float = 0.3
    num_steps: int = 5
    target_kl: float = 0.01
    adaptive_kl: bool = False

    @staticmethod
    def of(config: PrompConfig) -> PrompSettings:
        """The settings of a config's ``promp`` section."""
        return PrompSettings(config.clip_eps, config.num_steps, config.target_kl, config.adaptive_kl)


def adapt_kl_coeff(coeff: float, kl: float, target: float) -> float:
    """ProMP's adaptive KL coefficient: halved if ``kl < target / 1.5``, doubled if ``kl > 1.5 target``, else kept."""
    if kl < target / KL_BAND:
        return coeff / 2
    if kl > target * KL_BAND:
        return coeff * 2
    return coeff


def clipped_surrogate(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float
) -> tuple[Tensor, Tensor]:
    """PPO's clipped objective as a loss, per task: ``-mean_t[min(r A, clip(r, 1-ε, 1+ε) A)]``, ``[n]``.

    ``r = exp(logp - old_logp)``; all inputs task-major ``[n, M]``, ``mask`` marking the valid
    samples the per-task mean runs over. Also returns the fraction of valid samples whose
    ratio is outside ``[1-ε, 1+ε]`` (detached).
    """
    ratio = torch.exp(logp - old_logp)
    objective = torch.minimum(ratio * advantages, ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages)
    outside = ((ratio.detach() - 1).abs() > clip_eps).to(mask.dtype)
    fraction = (outside * mask).sum() / mask.sum().clamp_min(1.0)
    return -masked_task_mean(objective, mask), fraction


@dataclass(frozen=True)
class Sampling:
    """The policies that sampled a meta-batch, on their own episodes (no graph): ProMP's ``π_old``."""

    train: list[OldPolicy]
    """The pre-update policy of inner step ``k`` (θ_old for ``k = 0``) on ``batch.train[k]``."""
    valid: OldPolicy
    """The adapted policies on ``batch.valid``."""


def _stacked(params: Params, n: int) -> Params:
    return params if is_stacked(params) else stack_params(params, n)


def sampling_policies(policy: GaussianMLPPolicy, batch: MetaBatch, used: Sequence[Params]) -> Sampling:
    """Snapshot the sampling policies from the ``k + 1`` parameter sets :func:`metarl.maml.sample_meta_batch` used.

    Take it before the parameters change: ``used[0]`` may share storage with the live policy.
    """
    if len(used) != len(batch.train) + 1:
        raise ValueError(f"need {len(batch.train) + 1} sampling parameter sets, got {len(used)}")
    n = len(batch.tasks)
    train = [old_policy(policy, _stacked(p, n), ep) for p, ep in zip(used[:-1], batch.train, strict=True)]
    return Sampling(train, old_policy(policy, _stacked(used[-1], n), batch.valid))


def importance_weighted_inner_loss(
    policy: GaussianMLPPolicy, train: Sequence[Episodes], sampling: Sequence[OldPolicy]
) -> InnerLoss:
    """ProMP's inner loss of step ``k``: the LVC form importance-weighted against the step's sampling policy,
    ``sum_i -mean_t[π(a|s) / stop_grad(π_old,k(a|s)) A]`` on ``train[k]``."""
    return lambda params, step: reinforce_loss(
        policy, params, train[step], "lvc", sampling_log_probs=sampling[step].log_probs
    )


@dataclass(frozen=True)
class PrompLoss:
    """ProMP's meta-objective at some θ and its parts (means over tasks)."""

    objective: Tensor
    """``surrogate + mean_k η_k inner_kls[k]``: what the Adam steps minimise (with its graph)."""
    surrogate: Tensor
    """Minus the clipped post-adaptation objective (with its graph)."""
    inner_kls: Tensor
    """``[k]``: KL(sampling pre-update policy of step k || current one) on step k's episodes (with its graph)."""
    outer_kl: Tensor
    """KL(sampling adapted policies || current adapted ones) on the post-adaptation episodes (detached)."""
    clip_fraction: Tensor
    """Fraction of post-adaptation samples whose ratio lies outside ``[1-ε, 1+ε]`` (detached)."""


def promp_loss(
    policy: GaussianMLPPolicy,
    params: Params,
    batch: MetaBatch,
    sampling: Sampling,
    adaptation: AdaptationSettings,
    kl_coeffs: Sequence[float],
    clip_eps: float,
    first_order: bool | None = None,
) -> PrompLoss:
    """ProMP's meta-objective at ``params`` (shared or stacked): re-run the inner loop on the batch's episodes with
    :func:`importance_weighted_inner_loss`, then the clipped surrogate and the KL-penalised inner steps.

    Differentiable in ``params`` through the inner loop (second order unless ``first_order``, default the
    adaptation's); all tasks at once.
    """
    k = len(batch.train)
    if len(kl_coeffs) != k:
        raise ValueError(f"need one KL coefficient per inner step ({k}), got {len(kl_coeffs)}")
    n = len(batch.tasks)
    stacked = _stacked(params, n)
    inner = importance_weighted_inner_loss(policy, batch.train, sampling.train)
    order = adaptation.first_order if first_order is None else first_order
    pre = [stacked]
    for adapted in adapt_steps(inner, stacked, n, adaptation.lrs(k), order, adaptation.adapted, stacked=True):
        pre.append(adapted)
    post = pre.pop()
    kls = []
    for p, episodes, old in zip(pre, batch.train, sampling.train, strict=True):
        _, mean, log_std = log_probs(policy, p, episodes)
        kls.append(task_kls(mean, log_std, old, episodes).mean())
    inner_kls = torch.stack(kls)
    logp, mean, log_std = log_probs(policy, post, batch.valid)
    valid = batch.valid
    per_task, fraction = clipped_surrogate(
        logp,
        sampling.valid.log_probs,
        task_major(valid.require_advantages()),
        task_major(valid.mask),
        clip_eps,
    )
    surrogate = per_task.mean()
    coeffs = torch.tensor(list(kl_coeffs), dtype=inner_kls.dtype, device=inner_kls.device)
    objective = surrogate + (coeffs * inner_kls).mean()
    outer_kl = task_kls(mean.detach(), log_std.detach(), sampling.valid, valid).mean()
    return PrompLoss(objective, surrogate, inner_kls, outer_kl, fraction)


def promp_step(
    policy: GaussianMLPPolicy,
    optimizer: torch.optim.Optimizer,
    batch: MetaBatch,
    used: Sequence[Params],
    adaptation: AdaptationSettings,
    settings: PrompSettings,
    kl_coeffs: Sequence[float],
    learner: GaussianMLPPolicy | None = None,
) -> tuple[dict[str, float], list[float]]:
    """ProMP's meta-update on one sampled meta-batch: ``settings.num_steps`` steps of ``optimizer`` on
    :func:`promp_loss`, then the KL coefficients' adaptation (if ``settings.adaptive_kl``).

    ``used``: the parameters each sampling used (:func:`metarl.maml.sample_meta_batch`), before
    any update. ``learner``, a copy of ``policy`` on the batch's device, computes the objective;
    the steps (and the optimiser's state) stay with ``policy``, and the learner follows it.
    Returns the iteration's scalars and the coefficients for the next meta-batch. Raises
    :class:`FloatingPointError` if the objective or its gradient is not finite.
    """
    model = learner if learner is not None else policy
    with torch.no_grad():
        sampling = sampling_policies(model, batch, used)
    first: PrompLoss | None = None
    for step in range(settings.num_steps):
        if step > 0 and model is not policy:
            copy_parameters(policy, model)
        loss = promp_loss(model, model.params(), batch, sampling, adaptation, kl_coeffs, settings.clip_eps)
        if not torch.isfinite(loss.objective):
            raise FloatingPointError(f"ProMP objective is not finite at step {step + 1} ({loss.objective.item()})")
        grads = torch.autograd.grad(loss.objective, list(model.parameters()))
        if not all(torch.isfinite(g).all() for g in grads):
            raise FloatingPointError(f"ProMP meta-gradient is not finite at step {step + 1}")
        optimizer.zero_grad()
        for p, g in zip(policy.parameters(), grads, strict=True):
            p.grad = g.to(p.device, copy=True)
        optimizer.step()
        if first is None:
            first = loss
    assert first is not None
    if model is not policy:
        copy_parameters(policy, model)
    # the values after the steps: first order on leaf copies (each inner step needs its gradient, so no no_grad)
    leaves = {name: p.detach().requires_grad_() for name, p in model.params().items()}
    after = promp_loss(model, leaves, batch, sampling, adaptation, kl_coeffs, settings.clip_eps, first_order=True)
    inner_kls = [float(v) for v in after.inner_kls.detach().tolist()]
    coeffs = list(kl_coeffs)
    if settings.adaptive_kl:
        coeffs = [adapt_kl_coeff(c, kl, settings.target_kl) for c, kl in zip(coeffs, inner_kls, strict=True)]
    stats = {
        "loss_before": first.objective.item(),
        "promp/surrogate_before": first.surrogate.item(),
        "promp/surrogate_after": after.surrogate.item(),
        "promp/loss_after": after.objective.item(),
        "promp/kl_inner": sum(inner_kls) / len(inner_kls),
        "promp/kl_outer": after.outer_kl.item(),
        "promp/kl_coeff": sum(kl_coeffs) / len(kl_coeffs),
        "promp/clip_fraction": after.clip_fraction.item(),
    }
    if len(inner_kls) > 1:
        for j, (kl, c) in enumerate(zip(inner_kls, kl_coeffs, strict=True)):
            stats[f"promp/kl_inner_step{j + 1}"] = kl
            stats[f"promp/kl_coeff_step{j + 1}"] = float(c)
    return stats, coeffs


class ProMP:
    """ProMP's state across meta-iterations: its settings and the inner-KL coefficients η_k (checkpointed)."""

    def __init__(self, config: Config) -> None:
        self.settings = PrompSettings.of(config.promp)
        self.kl_coeffs = [float(config.promp.init_kl_coeff)] * config.maml.num_inner_steps

    def step(
        self,
        policy: GaussianMLPPolicy,
        optimizer: torch.optim.Optimizer,
        batch: MetaBatch,
        used: Sequence[Params],
        adaptation: AdaptationSettings,
        learner: GaussianMLPPolicy | None = None,
    ) -> dict[str, float]:
        """:func:`promp_step` with the current coefficients, which it then replaces by the adapted ones."""
        stats, self.kl_coeffs = promp_step(
            policy, optimizer, batch, used, adaptation, self.settings, self.kl_coeffs, learner
        )
        return stats

    def state(self) -> dict[str, Any]:
        """Plain data for a checkpoint's extra state."""
        return {"kl_coeffs": list(self.kl_coeffs)}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state`; :class:`CheckpointError` if it is missing or for another number of inner steps."""
        coeffs = state.get("kl_coeffs") if isinstance(state, Mapping) else None
        if not isinstance(coeffs, list) or len(coeffs) != len(self.kl_coeffs):
            raise CheckpointError(
                f"the checkpoint holds no ProMP KL coefficients for {len(self.kl_coeffs)} inner step(s), which "
                "maml.algorithm='promp' needs to resume; resume with the run's own config.yaml"
            )
        self.kl_coeffs = [float(c) for c in coeffs]
