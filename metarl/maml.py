"""The MAML core: loss-agnostic inner adaptation, the policy-gradient losses, and meta-batch sampling.

The inner update is a pure function of (params, grads, lr). Parameters are stacked per task
along a leading dimension, so the gradient of the *sum* of the per-task losses with respect
to the stacked copies is every task's own gradient in one backward pass: there is no Python
loop over tasks anywhere here.

The inner policy-gradient loss (:func:`reinforce_loss`) comes in three forms, the
``maml.inner_estimator``. All three have the same gradient, ``-mean_t[A_t g_t]`` with
``g_t = grad log pi(a_t|s_t)``, so they take the same inner step; second-order MAML
differentiates the inner step, so it sees their Hessians, which differ (per episode, ``A_t``
held fixed, ``H_t = grad^2 log pi_t``, ``G_t = g_0 + ... + g_t``, ``G_{-1} = 0``):

- ``log`` (the MAML paper's code): ``-mean_t[A_t H_t]``, the policy's curvature alone.
- ``lvc`` (ProMP's low-variance curvature): ``-mean_t[A_t (H_t + g_t g_t^T)]``, adding each
  step's own sampling term.
- ``dice`` (DiCE, Foerster et al. 2018, with the baseline in its loaded form, Farquhar et al.
  2019): ``-mean_t[A_t (H_t + G_t G_t^T - G_{t-1} G_{t-1}^T)]``, which also keeps the cross-time
  terms ``g_t G_{t-1}^T + G_{t-1} g_t^T``. With ``A_t`` the reward-to-go discounted from the
  episode's start, ``sum_{t' >= t} gamma^t' r_t'``, minus any baseline of the state, its
  expectation is minus the exact Hessian of the expected return (tests/test_dice.py enumerates
  a small MDP to check it); the log and lvc forms' expectations miss the cross-time terms, and
  the log form's even depends on the baseline.
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

InnerEstimator = Literal["log", "lvc", "dice"]
"""How the inner policy-gradient loss is written, which sets its second derivative (see :func:`reinforce_loss`)."""

INNER_ESTIMATORS: tuple[InnerEstimator, ...] = ("log", "lvc", "dice")


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


def dice_weights(log_probs: Tensor, mask: Tensor) -> Tensor:
    """The DiCE weights of every step, ``w_t = box(S_t) - box(S_{t-1})``: time-major ``[T, ...]``, like ``mask``.

    ``S_t = sum_{t' <= t} mask_t' log pi_t'`` is the episode's log-likelihood up to step ``t``
    (steps after the episode ended add nothing), ``box(x) = exp(x - stop_grad(x))`` is DiCE's
    magic box (value 1, derivatives those of ``exp(x - x_0)`` at ``x_0``) and ``box(S_{-1}) = 1``
    has no derivative. Every ``w_t`` is 0 in value; ``sum_t w_t A_t`` is the DiCE objective
    with the baseline in its loaded form (Farquhar et al. 2019): its derivatives of every order
    are, in expectation, those of the expected return when ``A_t`` is the reward-to-go discounted
    from the episode's start minus a baseline of the state. ``grad w_t = grad log pi_t`` and
    ``grad^2 w_t = grad^2 log pi_t + G_t G_t^T - G_{t-1} G_{t-1}^T`` with ``G_t = grad S_t``.
    After an episode ended ``S`` is constant, so ``w_t`` is identically 0 there.
    """
    cumulative = torch.cumsum(log_probs * mask, dim=0)
    box = torch.exp(cumulative - cumulative.detach())
    before = torch.cat([torch.ones_like(box[:1]), box[:-1]])
    return box - before


def reinforce_loss(
    policy: GaussianMLPPolicy,
    params: Params,
    episodes: Episodes,
    estimator: InnerEstimator = "log",
    *,
    sampling_log_probs: Tensor | None = None,
) -> Tensor:
    """REINFORCE with baseline, ``sum_i mean_t[-w * A]`` (per-task mean, summed over tasks).

    ``estimator="log"`` (the MAML paper's code): ``w = log pi(a|s)``. ``"lvc"`` (the
    low-variance curvature objective of Rothfuss et al. 2019, ProMP): ``w = pi / stop_grad(pi)``,
    which is 1 in value. Both have the same gradient, ``-mean_t[A grad log pi]``. They differ
    in the Hessian, which second-order MAML differentiates through. ``lvc`` adds
    ``-mean_t[A grad log pi grad log pi^T]``, the part of the expected objective's Hessian
    that comes from the sampling distribution. With it, the meta-gradient credits
    pre-adaptation actions for the inner step they lead to; the log form drops that term.
    ``"dice"`` (Foerster et al. 2018, loaded baseline): ``w_t = box(S_t) - box(S_{t-1})`` of the
    episode's cumulative log-likelihood (:func:`dice_weights`), 0 in value. Same gradient
    again; its Hessian adds ``-mean_t[A_t (G_t G_t^T - G_{t-1} G_{t-1}^T)]`` to the log form's,
    ``G_t`` the score of the episode's first ``t + 1`` actions: lvc's same-step term plus the
    cross-time terms ``g_t G_{t-1}^T + G_{t-1} g_t^T``, so that an action is also credited for
    the advantages of the steps after it. With advantages that are the reward-to-go discounted
    from the episode's start minus a state baseline, its expectation is minus the exact Hessian
    of the expected return (:mod:`metarl.advantages` discounts from each step instead: the usual
    discounted surrogate). Its derivatives are not in the closed form of :mod:`metarl.trpo`: use
    ``derivatives="autograd"`` there.

    ``sampling_log_probs`` (task-major ``[n, T*B]``, lvc only; ProMP's inner objective): the
    log-probabilities under the policy that sampled the episodes, so ``w = pi / stop_grad(pi_old)``,
    the importance-weighted LVC, whose value is not 1 once ``params`` moved away from the sampler.
    """
    if episodes.advantages is None:
        raise ValueError("episodes have no advantages: pass them through metarl.advantages.process first")
    if estimator not in INNER_ESTIMATORS:
        raise ValueError(f"estimator must be 'log', 'lvc' or 'dice', got {estimator!r}")
    logp, _, _ = log_probs(policy, params, episodes)
    if sampling_log_probs is not None and estimator != "lvc":
        raise ValueError(f"sampling_log_probs is for the lvc estimator, not {estimator!r}")
    if estimator == "dice":
        t, n, b = episodes.mask.shape
        weight = task_major(dice_weights(logp.reshape(n, t, b).transpose(0, 1), episodes.mask))
    elif estimator == "log":
        weight = logp
    else:
        reference = logp.detach() if sampling_log_probs is None else sampling_log_probs.detach()
        weight = torch.exp(logp - reference)
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
    step_sizes: tuple[StepSize, ...] | None = None
    """Learned step sizes, one entry per inner step, the last repeated beyond (Meta-SGD's α: live tensors,
    so the meta-gradient reaches them); ``None``: ``inner_lr`` at every step."""
    adapted: frozenset[str] | None = None
    """The parameters the inner loop adapts (ANIL: the head); ``None``: all."""

    @property
    def plain(self) -> bool:
        """Every parameter adapts with the fixed ``inner_lr``: the case the closed-form derivatives cover."""
        return self.step_sizes is None and self.adapted is None

    def lrs(self, num_steps: int, decay_after_first: bool = False) -> list[StepSize]:
        """The step size of each of ``num_steps`` inner steps: learned ones, or ``inner_lr`` (halved after the
        first with ``decay_after_first``, the evaluation protocol of fixed step sizes)."""
        if self.step_sizes is None:
            return list(inner_step_sizes(self.inner_lr, num_steps, decay_after_first))
        return [self.step_sizes[min(j, len(self.step_sizes) - 1)] for j in range(num_steps)]


def rl_inner_loss(policy: GaussianMLPPolicy, train: Sequence[Episodes], estimator: InnerEstimator = "log") -> InnerLoss:
    """The inner loss of step ``k`` is REINFORCE on the episodes sampled with the step-``k`` parameters."""
    return lambda params, step: reinforce_loss(policy, params, train[step], estimator)


def adapt_on_batch(
    policy: GaussianMLPPolicy, params: Params, batch: MetaBatch, settings: AdaptationSettings, first_order: bool
) -> Params:
    """Re-run the meta-batch's inner loop from ``params`` (differentiably unless ``first_order``; learned step
    sizes stay differentiable either way) with the settings' step sizes and adapted parameters."""
    loss = rl_inner_loss(policy, batch.train, settings.inner_estimator)
    return adapt(loss, params, len(batch.tasks), settings.lrs(len(batch.train)), first_order, settings.adapted)


def _describe_step(lr: StepSize) -> str:
    """``maml.inner_lr=0.1``, or ``learned step sizes`` for tensors (the error messages' wording)."""
    return f"maml.inner_lr={lr:g}" if isinstance(lr, float | int) else "learned step sizes"


def sample_meta_batch(
    sampler: Sampler,
    policy: GaussianMLPPolicy,
    params: Params,
    tasks: list[Task],
    settings: AdaptationSettings,
    rng: np.random.Generator,
    generator: torch.Generator,
    lrs: Sequence[StepSize] | None = None,
) -> tuple[MetaBatch, list[Params]]:
    """Sample pre-adaptation episodes, adapt, re-sample after every inner step (as the paper does).

    ``lrs`` (default: the settings' ``num_steps`` step sizes) sets the number and sizes of the
    inner steps; only the settings' ``adapted`` parameters take them. Returns the batch and the
    (detached) parameters used for each of the ``k + 1`` samplings. Fixed step sizes on every
    parameter take the closed-form first-order step (:func:`metarl.trpo.adapt_first_order`),
    the same values as the autograd step to float round-off and about 3x faster.
    """
    from metarl.trpo import adapt_first_order  # trpo builds on this module

    lrs = list(lrs) if lrs is not None else settings.lrs(settings.num_steps)
    current = detach_params(params)
    used: list[Params] = []
    sets: list[Episodes] = []
    for step in range(len(lrs) + 1):
        from metarl.sampler import collect_to_budget  # maml.samples_per_task: rllab's sample budget per task

        raw = collect_to_budget(sampler, policy, current, tasks, rng, generator)
        sets.append(process(raw, settings.gamma, settings.gae_lambda, settings.normalize_advantages))
        used.append(current)
        if step < len(lrs):
            lr = lrs[step]
            if settings.adapted is None and isinstance(lr, float | int):
                current = adapt_first_order(policy, current, [sets[-1]], [float(lr)])
            else:
                loss_fn = lambda p, _s, ep=sets[-1]: reinforce_loss(policy, p, ep)  # noqa: E731
                sizes = lr if isinstance(lr, float | int) else {k: v.detach() for k, v in lr.items()}
                adapted = adapt(loss_fn, current, len(tasks), [sizes], first_order=True, adapted=settings.adapted)
                current = detach_params(adapted)
            bad = [name for name, value in current.items() if not torch.isfinite(value).all()]
            if bad:
                raise FloatingPointError(
                    f"inner step {step + 1} made the adapted parameters non-finite ({', '.join(bad)}; "
                    f"{_describe_step(lrs[step])} too large?)"
                )
    return MetaBatch(list(tasks), sets[:-1], sets[-1]), used
