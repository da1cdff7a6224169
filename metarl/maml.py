"""The MAML core: loss-agnostic inner adaptation, the policy-gradient losses, and meta-batch sampling.

The inner update is a pure function of (params, grads, lr). Parameters are stacked per task
along a leading dimension, so the gradient of the *sum* of the per-task losses with respect
to the stacked copies is every task's own gradient in one backward pass: there is no Python
loop over tasks anywhere here.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import Tensor

from metarl.advantages import process
from metarl.envs.base import Task
from metarl.episodes import Episodes, masked_task_mean, task_major

if TYPE_CHECKING:
    from metarl.sampler import Sampler
from metarl.policy import GaussianMLPPolicy, Params, detach_params, is_stacked, kl_divergence, log_prob, stack_params

InnerLoss = Callable[[Params, int], Tensor]
"""``(stacked params, inner step index) -> sum over tasks of each task's inner loss``."""

InnerEstimator = Literal["log", "lvc"]
"""How the inner policy-gradient loss is written, which sets its second derivative (see :func:`reinforce_loss`)."""


StepSize = float | dict[str, Tensor]
"""One inner step's step size: a number for every parameter, or a tensor per parameter name that
broadcasts against it (Meta-SGD's learned per-parameter sizes; MAML++'s per-layer sizes of this
step). Learned sizes carry their graph, so the meta-gradient reaches them."""


def inner_update(
    params: Params, grads: dict[str, Tensor], lr: StepSize, adapted: Collection[str] | None = None
) -> Params:
    """One gradient-descent step ``params - lr * grads`` on the ``adapted`` parameters (all if ``None``).

    Pure; keeps whatever graph the inputs carry. Parameters outside ``adapted`` are returned
    unchanged (ANIL's body). ``lr`` may be a number or a per-parameter tensor (see :data:`StepSize`).
    """
    out: Params = {}
    for name, p in params.items():
        if adapted is not None and name not in adapted:
            out[name] = p
        else:
            size = lr if isinstance(lr, float | int) else lr[name]
            out[name] = p - size * grads[name]
    return out


@dataclass(frozen=True)
class InnerAdam:
    """Adam as the inner optimiser (Reptile's choice), per task: each task's moments are its own.

    Applied by :func:`adapt_steps` to stacked parameters, so the moments are stacked too and the
    tasks never share state. Fresh moments at every adaptation (a new task). ``beta1 = 0`` is
    the Reptile paper's setting (Nichol et al. 2018, appendix).
    """

    beta1: float = 0.0
    beta2: float = 0.999
    eps: float = 1e-8

    def update(
        self,
        params: Params,
        grads: dict[str, Tensor],
        lr: StepSize,
        state: dict[str, tuple[Tensor, Tensor]],
        step: int,
        adapted: Collection[str] | None = None,
    ) -> tuple[Params, dict[str, tuple[Tensor, Tensor]]]:
        """Step ``step`` (0-based) of bias-corrected Adam on the ``adapted`` parameters; pure, returns new moments."""
        out: Params = {}
        moments: dict[str, tuple[Tensor, Tensor]] = {}
        for name, p in params.items():
            if adapted is not None and name not in adapted:
                out[name] = p
                continue
            g = grads[name]
            m0, v0 = state.get(name, (torch.zeros_like(g), torch.zeros_like(g)))
            m = self.beta1 * m0 + (1 - self.beta1) * g
            v = self.beta2 * v0 + (1 - self.beta2) * g * g
            m_hat = m / (1 - self.beta1 ** (step + 1))
            v_hat = v / (1 - self.beta2 ** (step + 1))
            size = lr if isinstance(lr, float | int) else lr[name]
            out[name] = p - size * m_hat / (v_hat.sqrt() + self.eps)
            moments[name] = (m, v)
        return out, moments


def adapt_steps(
    loss_fn: InnerLoss,
    params: Params,
    num_tasks: int,
    lrs: Sequence[StepSize],
    first_order: bool,
    adapted: Collection[str] | None = None,
    stacked: bool | None = None,
    optimizer: InnerAdam | None = None,
) -> Iterator[Params]:
    """The inner loop: run ``len(lrs)`` inner steps from ``params`` for all tasks at once, yielding the
    stacked per-task parameters after every step.

    The one inner loop of metarl; :func:`adapt` returns its last parameters, MAML++'s multi-step
    loss and the evaluations read every step's. ``params`` may be shared (they are expanded to
    ``num_tasks`` copies) or already stacked. Second order (``first_order=False``) keeps the
    graph of the inner gradients so that the result is differentiable in ``params`` through
    them; first order detaches the inner gradients, so ``d adapted / d params`` is the
    identity. Learned step sizes in ``lrs`` stay differentiable either way. Only the
    ``adapted`` parameters (default: all) take inner steps; the inner gradient is not even
    computed for the others. If ``params`` carry no graph at all (e.g. while sampling), leaf
    copies are made so the inner gradient can be taken. ``stacked`` says whether ``params``
    are already stacked per task; ``None`` decides by the policy's log-std
    (:func:`~metarl.policy.is_stacked`), so other models (classifiers) must say it. The step is
    gradient descent ``params - lr * grad`` (:func:`inner_update`), or Adam with per-task
    moments when ``optimizer`` is given.
    """
    if adapted is not None:
        unknown = set(adapted) - params.keys()
        if unknown or not adapted:
            raise ValueError(f"adapted parameters must be a non-empty subset of {list(params)}, got {sorted(adapted)}")
    names = [n for n in params if adapted is None or n in adapted]
    if not any(params[n].requires_grad for n in names):
        params = {k: (p.detach().requires_grad_() if k in names else p) for k, p in params.items()}
    if stacked is None:
        stacked = is_stacked(params)
    current = params if stacked else stack_params(params, num_tasks)
    moments: dict[str, tuple[Tensor, Tensor]] = {}
    for step, lr in enumerate(lrs):
        with torch.enable_grad():
            loss = loss_fn(current, step)
            raw = torch.autograd.grad(loss, [current[n] for n in names], create_graph=not first_order)
            grads = dict(zip(names, raw, strict=True))
        if optimizer is None:
            current = inner_update(current, grads, lr, adapted)
        else:
            current, moments = optimizer.update(current, grads, lr, moments, step, adapted)
        yield current


def adapt(
    loss_fn: InnerLoss,
    params: Params,
    num_tasks: int,
    lrs: Sequence[StepSize],
    first_order: bool,
    adapted: Collection[str] | None = None,
    stacked: bool | None = None,
    optimizer: InnerAdam | None = None,
) -> Params:
    """Run ``len(lrs)`` inner steps from ``params`` for all tasks at once; return the stacked params.

    The last parameters of :func:`adapt_steps` (which documents the arguments); with no step,
    ``params`` stacked per task.
    """
    current = params if (is_stacked(params) if stacked is None else stacked) else stack_params(params, num_tasks)
    for current in adapt_steps(loss_fn, params, num_tasks, lrs, first_order, adapted, stacked, optimizer):  # noqa: B007
        pass
    return current


def inner_step_sizes(inner_lr: float, num_steps: int, decay_after_first: bool = False) -> list[float]:
    """Step sizes for ``num_steps`` inner steps.

    ``inner_lr`` each, or (the evaluation protocol, ``decay_after_first``) ``inner_lr/2`` after the first.
    """
    return [inner_lr if (k == 0 or not decay_after_first) else inner_lr / 2 for k in range(num_steps)]


def log_probs(policy: GaussianMLPPolicy, params: Params, episodes: Episodes) -> tuple[Tensor, Tensor, Tensor]:
    """Task-major ``(log pi(a|s), mean, log_std)`` of the episodes' actions under stacked params; ``[n, T*B]``."""
    mean, log_std = policy(task_major(episodes.observations), params)
    return log_prob(mean, log_std, task_major(episodes.actions)), mean, log_std


def reinforce_loss(
    policy: GaussianMLPPolicy, params: Params, episodes: Episodes, estimator: InnerEstimator = "log"
) -> Tensor:
    """REINFORCE with baseline, ``sum_i mean_t[-w * A]`` (per-task mean, summed over tasks).

    ``estimator="log"`` (the MAML paper's code): ``w = log pi(a|s)``. ``"lvc"`` (the
    low-variance curvature objective of Rothfuss et al. 2019, ProMP): ``w = pi / stop_grad(pi)``,
    which is 1 in value. Both have the same gradient, ``-mean_t[A grad log pi]``. They differ
    in the Hessian, which second-order MAML differentiates through. ``lvc`` adds
    ``-mean_t[A grad log pi grad log pi^T]``, the part of the expected objective's Hessian
    that comes from the sampling distribution. With it, the meta-gradient credits
    pre-adaptation actions for the inner step they lead to; the log form drops that term.
    """
    if episodes.advantages is None:
        raise ValueError("episodes have no advantages: pass them through metarl.advantages.process first")
    if estimator not in ("log", "lvc"):
        raise ValueError(f"estimator must be 'log' or 'lvc', got {estimator!r}")
    logp, _, _ = log_probs(policy, params, episodes)
    weight = logp if estimator == "log" else torch.exp(logp - logp.detach())
    return masked_task_mean(-weight * task_major(episodes.advantages), task_major(episodes.mask)).sum()


@dataclass(frozen=True)
class OldPolicy:
    """The adapted policies' action distributions on the post-adaptation episodes when they were sampled."""

    log_probs: Tensor
    mean: Tensor
    log_std: Tensor


def old_policy(policy: GaussianMLPPolicy, adapted: Params, episodes: Episodes) -> OldPolicy:
    """Snapshot (no graph) of the adapted policies on ``episodes``."""
    with torch.no_grad():
        logp, mean, log_std = log_probs(policy, detach_params(adapted), episodes)
    return OldPolicy(logp, mean, log_std)


def surrogate_loss(policy: GaussianMLPPolicy, adapted: Params, episodes: Episodes, old: OldPolicy) -> Tensor:
    """Minus the importance-weighted post-adaptation objective, ``-mean_i mean_t[ratio * A]``."""
    logp, _, _ = log_probs(policy, adapted, episodes)
    return _surrogate(logp, old.log_probs, episodes)


def surrogate_and_old_policy(
    policy: GaussianMLPPolicy, adapted: Params, episodes: Episodes
) -> tuple[Tensor, OldPolicy]:
    """:func:`surrogate_loss` at the sampling parameters (ratio 1) and the :func:`old_policy` snapshot.

    One forward pass gives both.
    """
    logp, mean, log_std = log_probs(policy, adapted, episodes)
    old = OldPolicy(logp.detach(), mean.detach(), log_std.detach())
    return _surrogate(logp, old.log_probs, episodes), old


def _surrogate(logp: Tensor, old_logp: Tensor, episodes: Episodes) -> Tensor:
    return task_surrogates(logp, old_logp, episodes).mean()


def task_surrogates(logp: Tensor, old_logp: Tensor, episodes: Episodes) -> Tensor:
    """Each task's surrogate loss ``-mean_t[ratio * A]`` from task-major log-probabilities; ``[n]``."""
    ratio = torch.exp(logp - old_logp)
    return -masked_task_mean(ratio * task_major(episodes.require_advantages()), task_major(episodes.mask))


def mean_kl(policy: GaussianMLPPolicy, adapted: Params, episodes: Episodes, old: OldPolicy) -> Tensor:
    """Mean over tasks of the mean KL(old || current adapted policy) on the episodes' states."""
    _, mean, log_std = log_probs(policy, adapted, episodes)
    return task_kls(mean, log_std, old, episodes).mean()


def task_kls(mean: Tensor, log_std: Tensor, old: OldPolicy, episodes: Episodes) -> Tensor:
    """Each task's mean KL(old || the policy with this task-major ``mean``, ``log_std``) over its states; ``[n]``."""
    kl = kl_divergence(old.mean, old.log_std, mean, log_std)
    return masked_task_mean(kl, task_major(episodes.mask))


def task_surrogates_and_kls(
    policy: GaussianMLPPolicy, adapted: Params, episodes: Episodes, old: OldPolicy
) -> tuple[Tensor, Tensor]:
    """Each task's surrogate loss and mean KL from old, ``[n]`` each, from one forward pass.

    Their means over tasks are :func:`surrogate_loss` and :func:`mean_kl`, value for value:
    the line search needs both at every candidate step.
    """
    logp, mean, log_std = log_probs(policy, adapted, episodes)
    return task_surrogates(logp, old.log_probs, episodes), task_kls(mean, log_std, old, episodes)


@dataclass(frozen=True)
class MetaBatch:
    """Everything one meta-iteration learns from: ``k`` inner-step episode sets and the post-adaptation set."""

    tasks: list[Task]
    train: list[Episodes]
    valid: Episodes


@dataclass(frozen=True)
class AdaptationSettings:
    """How the inner loop adapts and how advantages are estimated."""

    inner_lr: float
    num_steps: int
    first_order: bool
    gamma: float
    gae_lambda: float
    normalize_advantages: bool
    inner_estimator: InnerEstimator = "log"


def rl_inner_loss(policy: GaussianMLPPolicy, train: Sequence[Episodes], estimator: InnerEstimator = "log") -> InnerLoss:
    """The inner loss of step ``k`` is REINFORCE on the episodes sampled with the step-``k`` parameters."""
    return lambda params, step: reinforce_loss(policy, params, train[step], estimator)


def adapt_on_batch(
    policy: GaussianMLPPolicy, params: Params, batch: MetaBatch, settings: AdaptationSettings, first_order: bool
) -> Params:
    """Re-run the meta-batch's inner loop from ``params`` (differentiably unless ``first_order``)."""
    lrs = inner_step_sizes(settings.inner_lr, len(batch.train))
    return adapt(
        rl_inner_loss(policy, batch.train, settings.inner_estimator), params, len(batch.tasks), lrs, first_order
    )


def sample_meta_batch(
    sampler: Sampler,
    policy: GaussianMLPPolicy,
    params: Params,
    tasks: list[Task],
    settings: AdaptationSettings,
    rng: np.random.Generator,
    generator: torch.Generator,
    lrs: Sequence[float] | None = None,
) -> tuple[MetaBatch, list[Params]]:
    """Sample pre-adaptation episodes, adapt, re-sample after every inner step (as the paper does).

    Returns the batch and the (detached) parameters used for each of the ``k + 1`` samplings.
    """
    lrs = list(lrs) if lrs is not None else inner_step_sizes(settings.inner_lr, settings.num_steps)
    current = detach_params(params)
    used: list[Params] = []
    sets: list[Episodes] = []
    for step in range(len(lrs) + 1):
        raw = sampler.collect(policy, current, tasks, rng, generator)
        sets.append(process(raw, settings.gamma, settings.gae_lambda, settings.normalize_advantages))
        used.append(current)
        if step < len(lrs):
            loss_fn = lambda p, _s, ep=sets[-1]: reinforce_loss(policy, p, ep)  # noqa: E731
            current = detach_params(adapt(loss_fn, current, len(tasks), [lrs[step]], first_order=True))
            bad = [name for name, value in current.items() if not torch.isfinite(value).all()]
            if bad:
                raise FloatingPointError(
                    f"inner step {step + 1} made the adapted parameters non-finite ({', '.join(bad)}; "
                    f"maml.inner_lr={lrs[step]:g} too large?)"
                )
    return MetaBatch(list(tasks), sets[:-1], sets[-1]), used
