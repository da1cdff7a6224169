"""Meta-optimisers for the outer loop: TRPO (conjugate gradient + KL line search) and Adam.

How the meta-update is computed (docs/design.md, "The meta-update"):

- **In chunks of tasks.** Tasks are independent until their per-task gradients are summed, so
  every per-task quantity is computed on a few tasks at a time (:func:`task_chunk_size`),
  where the activations of the policy's hidden layers stay in the CPU's cache.
- **Closed-form derivatives** (``derivatives="closed_form"``, the default). The inner step,
  the meta-gradient through it (a chain of Hessian-vector products), the Fisher-vector
  products and the line search's inner steps are computed by hand from the mean network's
  forward, backward, tangent and second-order passes (:mod:`metarl.policy`), without
  autograd graphs, for the ``log`` and ``lvc`` inner estimators. ``derivatives="autograd"``
  computes the same quantities with autograd (double backward through the inner step), chunk
  by chunk, and gives the whole-batch autograd computation's results value for value
  (tests/test_trpo.py); it is the one for the ``dice`` estimator.
- **Nothing computed twice.** The meta-gradient's pass yields the adapted parameters (where
  the Fisher is taken), the old policy for the line search and, for ``curvature: exact``, the
  inner steps' caches that the curvature's Jacobian products reuse; one forward gives each
  line-search candidate's surrogate and KL.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import torch
from torch import Tensor

from metarl.episodes import Episodes, task_major
from metarl.maml import (
    AdaptationSettings,
    MetaBatch,
    OldPolicy,
    adapt,
    adapt_on_batch,
    inner_step_sizes,
    log_probs,
    reinforce_loss,
    rl_inner_loss,
    task_kls,
    task_surrogates,
    task_surrogates_and_kls,
)
from metarl.policy import (
    GaussianMLPPolicy,
    MLPBackward,
    MLPCache,
    Params,
    detach_params,
    flatten,
    kl_divergence,
    mlp_backward,
    mlp_forward,
    mlp_hvp,
    mlp_jvp,
    mlp_mean,
    stack_params,
    unflatten,
)

_T = TypeVar("_T")
_R = TypeVar("_R")

Derivatives = Literal["closed_form", "autograd"]
"""How the meta-update differentiates: by hand (fast) or with autograd (the reference)."""


class NonFiniteError(FloatingPointError):
    """A loss, gradient or step became NaN or infinite."""


CHUNK_BYTES = 1 << 20
"""Target size of one hidden-layer activation tensor of a task chunk (about half the L2 cache of a core)."""

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


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
    """Trust-region settings (Schulman et al. 2015), as used by MAML-TRPO; the last three only set how it is computed.

    ``task_chunk``: tasks per chunk of the meta-update (0: :func:`task_chunk_size` decides);
    speed only. ``derivatives``: the closed-form or the autograd computation of the same
    quantities (they agree to float round-off; autograd gives the whole-batch autograd numbers
    of earlier versions bit for bit at one thread). ``workers``: threads over the chunks, each
    op on one intra-op thread (0: torch's thread count; one on a GPU); the closed-form result
    does not depend on it.
    """

    max_kl: float = 0.01
    cg_iters: int = 10
    cg_damping: float = 1e-5
    ls_backtrack: float = 0.8
    ls_max_steps: int = 15
    hvp_subsample: float = 1.0
    curvature: Literal["exact", "fisher"] = "exact"
    task_chunk: int = 0
    derivatives: Derivatives = "closed_form"
    workers: int = 0


# --------------------------------------------------------------------------- timing


@dataclass
class PartTimer:
    """Wall time of the parts of meta-updates, in the order they ran (the learner benchmark's breakdown).

    Parts: ``layout`` (the meta-batch copied task by task), ``adapt`` (the inner loop re-run,
    keeping what the meta-gradient needs), ``meta_gradient`` (post-adaptation forward,
    surrogate, its gradient and the backward through the inner loop), ``curvature`` (set-up
    of the KL-Hessian operator), ``fvp`` (one curvature-vector product), ``line_search`` (one
    candidate step's surrogate and KL). A part inside the chunk loop is summed over the chunks.
    """

    records: list[tuple[str, float]] = field(default_factory=list)
    clock: Callable[[], float] = time.perf_counter
    """Wall time by default; ``time.process_time`` gives the CPU time of every thread of the process."""

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        """Time the block as one occurrence of ``name``."""
        start = self.clock()
        try:
            yield
        finally:
            self.records.append((name, self.clock() - start))

    def totals(self) -> dict[str, tuple[float, int]]:
        """``part -> (seconds, occurrences)`` over every record."""
        out: dict[str, list[float]] = defaultdict(list)
        for name, seconds in self.records:
            out[name].append(seconds)
        return {name: (sum(values), len(values)) for name, values in out.items()}


class _Accumulate:
    """Sums the time of several blocks (one per chunk) into one :class:`PartTimer` record."""

    def __init__(self, timer: PartTimer | None, name: str) -> None:
        self.timer, self.name, self.seconds = timer, name, 0.0
        self.clock = timer.clock if timer is not None else time.perf_counter

    @contextmanager
    def part(self) -> Iterator[None]:
        start = self.clock()
        try:
            yield
        finally:
            self.seconds += self.clock() - start

    def close(self) -> None:
        if self.timer is not None:
            self.timer.records.append((self.name, self.seconds))


@contextmanager
def _timed(timer: PartTimer | None, name: str) -> Iterator[None]:
    if timer is None:
        yield
    else:
        with timer.part(name):
            yield


def _check_finite(name: str, value: Tensor) -> None:
    if not torch.isfinite(value).all():
        raise NonFiniteError(f"{name} is not finite ({value.flatten()[:4].tolist()} ...)")


def set_flat_params(policy: GaussianMLPPolicy, vector: Tensor) -> None:
    """Copy a flat vector into the policy's parameters in place."""
    torch.nn.utils.vector_to_parameters(vector, policy.parameters())


def _leaf(params: Params) -> Params:
    """Detached copies that require grad (roots of a fresh graph)."""
    return {k: v.detach().clone().requires_grad_() for k, v in params.items()}


# --------------------------------------------------------------------------- task chunks


def task_chunk_size(policy: GaussianMLPPolicy, batch: MetaBatch, requested: int = 0) -> int:
    """Tasks per chunk: ``requested`` if positive, else as many as keep one chunk's widest activation near
    :data:`CHUNK_BYTES` (at least one task); on a GPU, all of them."""
    n = len(batch.tasks)
    if requested > 0:
        return min(requested, n)
    if batch.valid.observations.device.type != "cpu":  # an accelerator wants the whole batch at once
        return n
    samples = batch.valid.horizon * batch.valid.episodes_per_task
    return _fitting_tasks(policy, samples, batch.valid.observations.element_size(), n)


def _fitting_tasks(policy: GaussianMLPPolicy, samples: int, element_size: int, n: int) -> int:
    """How many tasks of ``samples`` samples each keep the widest activation near :data:`CHUNK_BYTES`."""
    width = max(p.shape[-2] for name, p in policy.named_parameters() if name.endswith("weight"))
    return max(1, min(n, CHUNK_BYTES // max(1, samples * width * element_size)))


def task_slices(n: int, size: int) -> list[slice]:
    """Consecutive slices of ``size`` tasks (the last may be shorter) covering ``range(n)``."""
    return [slice(start, min(n, start + size)) for start in range(0, n, size)]


def batch_tasks(batch: MetaBatch, index: slice) -> MetaBatch:
    """The meta-batch of the tasks ``index`` selects (views, no copies)."""
    return MetaBatch(batch.tasks[index], [ep.tasks(index) for ep in batch.train], batch.valid.tasks(index))


def task_major_batch(batch: MetaBatch) -> MetaBatch:
    """The same meta-batch stored task by task (:meth:`~metarl.episodes.Episodes.task_major_storage`)."""
    return MetaBatch(batch.tasks, [ep.task_major_storage() for ep in batch.train], batch.valid.task_major_storage())


def _old_tasks(old: OldPolicy, index: slice) -> OldPolicy:
    return OldPolicy(old.log_probs[index], old.mean[index], old.log_std[index])


def _cat_old(olds: list[OldPolicy]) -> OldPolicy:
    return OldPolicy(*(torch.cat([getattr(o, f) for o in olds]) for f in ("log_probs", "mean", "log_std")))


def _cat_tasks(parts: list[Tensor]) -> Tensor:
    """Concatenate per-task tensors ``[c, ...]`` along the task dim, in the memory layout of the first part.

    A gradient that autograd returns transposed (a weight's, from a batched matmul) stays
    transposed, so that a reduction over the tasks runs over memory in the order it does on the
    whole-batch gradient, and rounds the same way.
    """
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    strides = first.stride()
    order = sorted(range(first.dim()), key=lambda d: (-strides[d] if first.shape[d] > 1 else 0, d))
    if order[0] != 0:
        order = [0, *(d for d in order if d != 0)]
    inverse = sorted(range(len(order)), key=order.__getitem__)
    return torch.cat([p.permute(order) for p in parts]).permute(inverse)


def _sum_task_copies(parts: list[list[Tensor]]) -> list[Tensor]:
    """Per-task tensors of every chunk (``parts[chunk][param]``, ``[c, ...]``) -> the sum over all tasks per param."""
    return [_cat_tasks([chunk[i] for chunk in parts]).sum(0) for i in range(len(parts[0]))]


# --------------------------------------------------------------------------- closed-form pieces


@dataclass(frozen=True)
class _Samples:
    """One chunk's episodes, task-major: what the closed-form derivatives read."""

    observations: Tensor
    """``[c, M, obs_dim]``."""
    actions: Tensor
    """``[c, M, act_dim]``."""
    weights: Tensor
    """``[c, M]``: the mask over the task's number of valid steps (a masked mean is a weighted sum)."""
    advantages: Tensor | None
    """``[c, M]``: ``weights * advantages``, or ``None`` when the episodes carry none."""

    @staticmethod
    def of(episodes: Episodes) -> _Samples:
        mask = task_major(episodes.mask)
        weights = mask / mask.sum(1, keepdim=True).clamp_min(1.0)
        adv = None if episodes.advantages is None else weights * task_major(episodes.advantages)
        return _Samples(task_major(episodes.observations), task_major(episodes.actions), weights, adv)

    def require_advantages(self) -> Tensor:
        if self.advantages is None:
            raise ValueError("episodes have no advantages: run metarl.advantages.process first")
        return self.advantages


@dataclass(frozen=True)
class _Chunk:
    """The samples of one chunk of tasks: every inner step's and the post-adaptation set."""

    index: slice
    train: list[_Samples]
    valid: _Samples


def _chunks(batch: MetaBatch, slices: list[slice]) -> list[_Chunk]:
    return [
        _Chunk(index, [_Samples.of(ep.tasks(index)) for ep in batch.train], _Samples.of(batch.valid.tasks(index)))
        for index in slices
    ]


@dataclass(frozen=True)
class _Gaussian:
    """The diagonal Gaussian's terms at the episodes' actions, for the losses' derivatives."""

    inv_std: Tensor
    """``exp(-log_std)``, ``[c, 1, act_dim]``."""
    z: Tensor
    """``(a - mean) / std``, ``[c, M, act_dim]``."""
    score_mean: Tensor
    """``d log pi / d mean = z / std``."""
    score_log_std: Tensor
    """``d log pi / d log_std = z^2 - 1``."""
    log_probs: Tensor
    """``log pi(a|s)``, ``[c, M]`` (the formula of :func:`metarl.policy.log_prob`)."""


def _gaussian(mean: Tensor, log_std: Tensor, actions: Tensor) -> _Gaussian:
    """Terms of ``N(mean, exp(log_std)^2)`` at ``actions``; ``log_std`` is stacked ``[c, act_dim]``."""
    log_std = log_std.unsqueeze(1)
    inv_std = torch.exp(-log_std)
    z = (actions - mean).mul_(inv_std)
    z2 = z.square()
    log_probs = (z2 * -0.5 - log_std - LOG_SQRT_2PI).sum(-1)
    return _Gaussian(inv_std, z, z * inv_std, z2.sub_(1.0), log_probs)


def _score_gradients(gauss: _Gaussian, coef: Tensor) -> tuple[Tensor, Tensor]:
    """For a loss with ``d loss / d log pi_t = coef_t`` (``[c, M]``): its gradients w.r.t. the mean and log-std."""
    c = coef.unsqueeze(-1)
    return gauss.score_mean * c, (gauss.score_log_std * c).sum(1)


@dataclass
class _InnerStep:
    """One inner step of one chunk, kept for Hessian-vector products of its loss."""

    params: Params
    cache: MLPCache
    backward: MLPBackward
    gauss: _Gaussian
    coef: Tensor
    lr: float


def _inner_step(
    policy: GaussianMLPPolicy, params: Params, samples: _Samples, lr: float, keep: bool
) -> tuple[Params, _InnerStep | None]:
    """``params - lr * grad`` of the REINFORCE inner loss ``-sum_t weight_t A_t log pi_t`` (per task, stacked).

    Every inner estimator (``log``, ``lvc``, ``dice``) has this gradient. ``keep`` also returns what
    :func:`_inner_hvp` needs.
    """
    cache = mlp_forward(policy, params, samples.observations)
    gauss = _gaussian(cache.mean, params["log_std"], samples.actions)
    coef = -samples.require_advantages()
    grad_mean, grad_log_std = _score_gradients(gauss, coef)
    back = mlp_backward(policy, params, cache, grad_mean, keep=keep)
    grads = {**back.grads, "log_std": grad_log_std}
    new = {name: p - lr * grads[name] for name, p in params.items()}
    return new, (_InnerStep(params, cache, back, gauss, coef, lr) if keep else None)


_CLOSED_FORM_ESTIMATORS = ("log", "lvc")
"""The inner estimators whose Hessians the closed form implements (:func:`_inner_hvp`)."""


def _check_closed_form(estimator: str) -> None:
    """A ``ValueError`` unless the closed form implements ``estimator``'s Hessian (dice's is autograd's alone)."""
    if estimator not in _CLOSED_FORM_ESTIMATORS:
        raise ValueError(
            f"the closed-form derivatives implement the log and lvc inner estimators, not {estimator!r}: "
            "dice needs outer.derivatives: autograd (derivatives='autograd')"
        )


def _inner_hvp(policy: GaussianMLPPolicy, step: _InnerStep, v: Params, estimator: str) -> Params:
    """The inner loss's Hessian (w.r.t. the stacked parameters) times ``v``, per task.

    ``log pi = sum_d -z_d^2 / 2 - log_std_d + const``, ``z = (a - mean) exp(-log_std)``: the
    tangents of its scores along ``(J_mean v, v_log_std)`` are pushed back through the network
    with :func:`mlp_hvp`. ``lvc`` adds ``coef_t (score_t . v) score_t`` (its weight
    ``pi / stop_grad(pi)`` has second derivative 1 in ``log pi``). ``dice``'s cross-time terms are
    not implemented: a ``ValueError``.
    """
    _check_closed_form(estimator)
    g = step.gauss
    r_mean, hidden = mlp_jvp(policy, step.params, step.cache, v)
    r_log_std = v["log_std"].unsqueeze(1)
    c = step.coef.unsqueeze(-1)
    # tangents of d log pi / d mean = z / std and d log pi / d log_std = z^2 - 1
    r_score_mean = (r_mean * g.inv_std).add_(g.z * r_log_std, alpha=2.0).mul_(g.inv_std).neg_()
    r_score_log_std = (g.score_mean * r_mean).add_(g.z.square() * r_log_std).mul_(-2.0)
    if estimator == "lvc":
        r_logp = ((g.score_mean * r_mean).add_(g.score_log_std * r_log_std)).sum(-1, keepdim=True)
        r_score_mean.addcmul_(r_logp, g.score_mean)
        r_score_log_std.addcmul_(r_logp, g.score_log_std)
    out = mlp_hvp(policy, step.params, v, step.cache, step.backward, hidden, r_score_mean.mul_(c))
    out["log_std"] = (r_score_log_std * c).sum(1)
    return out


def _through_inner_steps(policy: GaussianMLPPolicy, steps: list[_InnerStep], v: Params, estimator: str) -> Params:
    """``J^T v`` for the inner loop's Jacobian ``J = prod_j (I - alpha_j H_j)`` (each factor symmetric)."""
    _check_closed_form(estimator)
    for step in reversed(steps):
        hv = _inner_hvp(policy, step, v, estimator)
        v = {name: value - step.lr * hv[name] for name, value in v.items()}
    return v


def _forward_through_inner_steps(
    policy: GaussianMLPPolicy, steps: list[_InnerStep], v: Params, estimator: str
) -> Params:
    """``J v``, the factors in the order the inner steps ran."""
    _check_closed_form(estimator)
    for step in steps:
        hv = _inner_hvp(policy, step, v, estimator)
        v = {name: value - step.lr * hv[name] for name, value in v.items()}
    return v


def _ordered(params: Params, values: Params) -> list[Tensor]:
    return [values[name] for name in params]


def _surrogate_terms(gauss: _Gaussian, old_log_probs: Tensor, samples: _Samples) -> tuple[Tensor, Tensor]:
    """Each task's surrogate loss ``-sum_t weight_t ratio_t A_t``, ``[c]``, and ``d loss / d log pi``, ``[c, M]``."""
    weighted = torch.exp(gauss.log_probs - old_log_probs).mul_(samples.require_advantages())
    return -weighted.sum(1), weighted.neg_()


_POOLS: dict[int, ThreadPoolExecutor] = {}


def _map(fn: Callable[[_T], _R], items: list[_T], workers: int) -> list[_R]:
    """``[fn(item) for item in items]``, on ``workers`` threads when more than one (results in order)."""
    if workers <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    pool = _POOLS.get(workers)
    if pool is None:
        pool = _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="metarl-learner")
    return list(pool.map(fn, items))


@contextmanager
def _one_op_thread(workers: int) -> Iterator[None]:
    """With several workers, every torch op runs on one intra-op thread (the workers are the parallelism)."""
    if workers <= 1:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    token = _ACTIVE_WORKERS.set(workers)
    try:
        yield
    finally:
        _ACTIVE_WORKERS.reset(token)
        torch.set_num_threads(before)


_ACTIVE_WORKERS: ContextVar[int | None] = ContextVar("metarl_learner_workers", default=None)
"""The worker count a running meta-update resolved (its ops then run on one intra-op thread, so torch's thread
count no longer tells it)."""


def resolve_workers(requested: int, batch: MetaBatch | None = None) -> int:
    """Worker threads over task chunks: ``requested`` if positive, else the running meta-update's count, else
    torch's intra-op thread count (one for a batch on a GPU, whose kernels are queued in order anyway)."""
    if requested > 0:
        return requested
    if batch is not None and batch.valid.observations.device.type != "cpu":
        return 1
    active = _ACTIVE_WORKERS.get()
    return active if active is not None else torch.get_num_threads()


def _record_split(timer: PartTimer | None, wall: float, parts: dict[str, float]) -> None:
    """Record a phase's wall time split over its parts in proportion to their summed per-chunk times."""
    if timer is None:
        return
    total = sum(parts.values()) or 1.0
    for name, seconds in parts.items():
        timer.records.append((name, wall * seconds / total))


def _closed_meta_gradient(
    policy: GaussianMLPPolicy,
    batch: MetaBatch,
    adaptation: AdaptationSettings,
    slices: list[slice],
    keep_inner: bool,
    timer: PartTimer | None,
    workers: int,
) -> MetaGradient:
    _check_closed_form(adaptation.inner_estimator)  # first order too: the closed form is for log and lvc
    params = detach_params(policy.params())
    n = len(batch.tasks)
    lrs = inner_step_sizes(adaptation.inner_lr, len(batch.train))
    second_order = not adaptation.first_order

    def one(chunk: _Chunk) -> tuple[list[Tensor], Tensor, Params, OldPolicy, list[_InnerStep], float, float]:
        start = time.perf_counter()
        point = stack_params(params, chunk.index.stop - chunk.index.start)
        steps: list[_InnerStep] = []
        for samples, lr in zip(chunk.train, lrs):
            point, step = _inner_step(policy, point, samples, lr, keep=second_order)
            if step is not None:
                steps.append(step)
        middle = time.perf_counter()
        cache = mlp_forward(policy, point, chunk.valid.observations)
        gauss = _gaussian(cache.mean, point["log_std"], chunk.valid.actions)
        task_losses, coef = _surrogate_terms(gauss, gauss.log_probs, chunk.valid)
        grad_mean, grad_log_std = _score_gradients(gauss, coef.div_(n))
        v = {**mlp_backward(policy, point, cache, grad_mean).grads, "log_std": grad_log_std}
        if second_order:
            v = _through_inner_steps(policy, steps, v, adaptation.inner_estimator)
        old = OldPolicy(gauss.log_probs, cache.mean, point["log_std"].unsqueeze(1))
        kept = steps if keep_inner else []
        return _ordered(params, v), task_losses, point, old, kept, middle - start, time.perf_counter() - middle

    clock = timer.clock if timer is not None else time.perf_counter
    start = clock()
    with _one_op_thread(workers):
        results = _map(one, _chunks(batch, slices), workers)
    grads = [r[0] for r in results]
    grad = flatten([torch.cat([g[i] for g in grads]).sum(0) for i in range(len(params))])
    adapted = {name: torch.cat([r[2][name] for r in results]) for name in params}
    old = _cat_old([r[3] for r in results])
    old = OldPolicy(old.log_probs, old.mean, old.log_std.expand_as(old.mean))
    seconds = {"adapt": sum(r[5] for r in results), "meta_gradient": sum(r[6] for r in results)}
    _record_split(timer, clock() - start, seconds)
    loss = torch.cat([r[1] for r in results]).mean()
    return MetaGradient(loss, grad, adapted, old, slices, [r[4] for r in results] if keep_inner else None)


def _closed_kl_curvature(
    policy: GaussianMLPPolicy,
    params: Params,
    batch: MetaBatch,
    adaptation: AdaptationSettings,
    subsample: float,
    exact: bool,
    slices: list[slice],
    adapted: Params | None,
    inner: list[list[_InnerStep]] | None,
    workers: int,
) -> Callable[[Tensor], Tensor]:
    _check_closed_form(adaptation.inner_estimator)
    n = len(batch.tasks)
    lrs = inner_step_sizes(adaptation.inner_lr, len(batch.train))
    shared = detach_params(params)
    keep = max(1, math.ceil(subsample * batch.valid.episodes_per_task)) if subsample < 1.0 else None
    estimator = adaptation.inner_estimator
    if not exact and keep is not None:  # the Fisher alone: chunks sized for its (fewer) samples
        samples = batch.valid.horizon * keep
        slices = task_slices(n, _fitting_tasks(policy, samples, batch.valid.observations.element_size(), n))
        inner = None

    def build(item: tuple[int, _Chunk]) -> tuple[int, list[_InnerStep], Params, MLPCache, Tensor, Tensor]:
        j, chunk = item
        c = chunk.index.stop - chunk.index.start
        steps = inner[j] if exact and inner is not None else []
        point = {k: v[chunk.index] for k, v in adapted.items()} if adapted is not None else None
        if point is None or (exact and not steps):  # re-run the inner loop for what is missing
            reached = stack_params(shared, c)
            steps = []
            for samples, lr in zip(chunk.train, lrs):
                reached, step = _inner_step(policy, reached, samples, lr, keep=exact)
                if step is not None:
                    steps.append(step)
            point = reached if point is None else point
        valid = chunk.valid if keep is None else _Samples.of(batch.valid.tasks(chunk.index).subsample(keep))
        cache = mlp_forward(policy, point, valid.observations)
        inv_var = torch.exp(-2.0 * point["log_std"]).unsqueeze(1)
        weights = (valid.weights / n).unsqueeze(-1) * inv_var  # [c, M, act]: the Fisher of the mean
        log_std_fisher = (2.0 / n) * valid.weights.sum(1, keepdim=True)  # [c, 1]
        return c, steps, point, cache, weights, log_std_fisher

    with _one_op_thread(workers):
        operators = _map(build, list(enumerate(_chunks(batch, slices))), workers)

    def apply(item: tuple[Params, tuple[int, list[_InnerStep], Params, MLPCache, Tensor, Tensor]]) -> list[Tensor]:
        tangent, (c, steps, point, cache, weights, log_std_fisher) = item
        u = stack_params(tangent, c)
        u = _forward_through_inner_steps(policy, steps, u, estimator)  # J v
        r_mean, _ = mlp_jvp(policy, point, cache, u)
        w = mlp_backward(policy, point, cache, r_mean.mul_(weights)).grads
        w["log_std"] = log_std_fisher * u["log_std"]
        w = _through_inner_steps(policy, steps, w, estimator)  # J^T w
        return _ordered(shared, w)

    def hvp(v: Tensor) -> Tensor:
        tangent = unflatten(v, shared)
        with _one_op_thread(workers):
            parts = _map(apply, [(tangent, op) for op in operators], workers)
        return flatten([torch.cat([p[i] for p in parts]).sum(0) for i in range(len(shared))])

    return hvp


def _closed_evaluate(
    policy: GaussianMLPPolicy,
    batch: MetaBatch,
    adaptation: AdaptationSettings,
    old: OldPolicy,
    slices: list[slice],
    workers: int,
) -> tuple[float, float]:
    shared = detach_params(policy.params())
    lrs = inner_step_sizes(adaptation.inner_lr, len(batch.train))

    def one(chunk: _Chunk) -> tuple[Tensor, Tensor]:
        point = stack_params(shared, chunk.index.stop - chunk.index.start)
        for samples, lr in zip(chunk.train, lrs):
            point, _ = _inner_step(policy, point, samples, lr, keep=False)
        mean = mlp_mean(policy, point, chunk.valid.observations)
        gauss = _gaussian(mean, point["log_std"], chunk.valid.actions)
        ref = _old_tasks(old, chunk.index)
        loss, _ = _surrogate_terms(gauss, ref.log_probs, chunk.valid)
        kl = kl_divergence(ref.mean, ref.log_std, mean, point["log_std"].unsqueeze(1).expand_as(mean))
        return loss, (kl * chunk.valid.weights).sum(1)

    with _one_op_thread(workers):
        results = _map(one, _chunks(batch, slices), workers)
    return torch.cat([r[0] for r in results]).mean().item(), torch.cat([r[1] for r in results]).mean().item()


def adapt_first_order(
    policy: GaussianMLPPolicy, params: Params, train: list[Episodes], lrs: list[float], workers: int = 0
) -> Params:
    """The inner loop's values alone: ``len(lrs)`` REINFORCE steps from ``params`` (shared or stacked) on the
    episode sets ``train``, for every task, in closed form and chunks of tasks; detached, stacked parameters.

    What ``maml.adapt(rl_inner_loss(...), params, n, lrs, first_order=True)`` computes (to float round-off),
    about 3x faster at HalfCheetahVel's size: the step a sampler needs between samplings.
    """
    n = train[0].num_tasks
    sets = [ep.task_major_storage() for ep in train]
    batch = MetaBatch([{}] * n, sets, sets[-1])
    stacked = params if params["log_std"].dim() == 2 else stack_params(detach_params(params), n)
    slices = task_slices(n, task_chunk_size(policy, batch))
    resolved = resolve_workers(workers, batch)

    def one(chunk: _Chunk) -> Params:
        point = {k: v.detach()[chunk.index] for k, v in stacked.items()}
        for samples, lr in zip(chunk.train, lrs):
            point, _ = _inner_step(policy, point, samples, lr, keep=False)
        return point

    with _one_op_thread(resolved):
        parts = _map(one, _chunks(batch, slices), resolved)
    return {name: torch.cat([part[name] for part in parts]) for name in stacked}


# --------------------------------------------------------------------------- meta-gradient


@dataclass(frozen=True)
class MetaGradient:
    """The post-adaptation surrogate at the current parameters and its gradient through the inner loop."""

    loss: Tensor
    """Mean over tasks of the surrogate loss (ratio 1), detached."""
    grad: Tensor
    """Flat meta-gradient (:func:`~metarl.policy.flatten` order of the policy's parameters)."""
    adapted: Params
    """The adapted parameters, stacked over all tasks, detached: where the KL curvature is taken."""
    old: OldPolicy
    """The adapted policies on the post-adaptation episodes: the line search's reference."""
    slices: list[slice] = field(default_factory=list)
    """The chunks of tasks it was computed in."""
    inner: list[list[_InnerStep]] | None = None
    """Closed form, when asked for: each chunk's inner steps, for the exact curvature's Jacobian products."""


def meta_gradient(
    policy: GaussianMLPPolicy,
    batch: MetaBatch,
    adaptation: AdaptationSettings,
    task_chunk: int = 0,
    timer: PartTimer | None = None,
    derivatives: Derivatives = "closed_form",
    keep_inner: bool = False,
    workers: int = 0,
) -> MetaGradient:
    """Re-run the inner loop from the policy's parameters, take the post-adaptation surrogate and its
    gradient w.r.t. the parameters through the inner loop (second order) or not, one chunk of tasks at a time.

    The gradient of ``surrogate_loss(adapt_on_batch(policy.params(), batch))``. With
    ``derivatives="autograd"`` it is that computation value for value: each task's gradient
    is taken w.r.t. its own copy of the parameters, and the copies' gradients are summed in
    task order, as the backward of the whole-batch expansion sums them. ``keep_inner`` keeps
    the inner steps for :func:`kl_curvature` (closed form, exact curvature). The closed form
    implements the ``log`` and ``lvc`` inner estimators (a ``ValueError`` for ``dice``, first order
    too); autograd differentiates :func:`~metarl.maml.reinforce_loss`, so any estimator.
    """
    slices = task_slices(len(batch.tasks), task_chunk_size(policy, batch, task_chunk))
    if derivatives == "closed_form":
        return _closed_meta_gradient(
            policy, batch, adaptation, slices, keep_inner, timer, resolve_workers(workers, batch)
        )
    params = policy.params()
    n = len(batch.tasks)
    adapt_time, grad_time = _Accumulate(timer, "adapt"), _Accumulate(timer, "meta_gradient")
    losses: list[Tensor] = []
    grads: list[list[Tensor]] = []
    adapted_parts: list[list[Tensor]] = []
    olds: list[OldPolicy] = []
    for index in slices:
        part = batch_tasks(batch, index)
        stacked = stack_params(params, len(part.tasks))
        with adapt_time.part():
            adapted = adapt_on_batch(policy, stacked, part, adaptation, adaptation.first_order)
        with grad_time.part():
            logp, mean, log_std = log_probs(policy, adapted, part.valid)
            old = OldPolicy(logp.detach(), mean.detach(), log_std.detach())
            task_losses = task_surrogates(logp, old.log_probs, part.valid)
            grads.append(list(torch.autograd.grad(task_losses.sum() / n, list(stacked.values()))))
            losses.append(task_losses.detach())
            adapted_parts.append([v.detach() for v in adapted.values()])
            olds.append(old)
    adapt_time.close()
    with _timed(timer, "meta_gradient"):
        grad = flatten(_sum_task_copies(grads))
        adapted_all = {name: torch.cat([p[i] for p in adapted_parts]) for i, name in enumerate(params)}
        old_all = _cat_old(olds)
    grad_time.close()
    return MetaGradient(torch.cat(losses).mean(), grad, adapted_all, old_all, slices)


# --------------------------------------------------------------------------- curvature


def _hessian_operator(loss: Tensor, leaf: Params) -> tuple[Callable[[list[Tensor]], list[Tensor]], list[Tensor]]:
    """``u -> (d^2 loss / d leaf^2) u`` by double backward through a gradient graph built once; and the gradient."""
    inputs = list(leaf.values())
    grads = torch.autograd.grad(loss, inputs, create_graph=True)
    return lambda u: list(torch.autograd.grad(grads, inputs, grad_outputs=u, retain_graph=True)), list(grads)


def kl_curvature(
    policy: GaussianMLPPolicy,
    params: Params,
    batch: MetaBatch,
    adaptation: AdaptationSettings,
    subsample: float = 1.0,
    through_inner_loop: bool = True,
    meta: MetaGradient | None = None,
    task_chunk: int = 0,
    derivatives: Derivatives = "closed_form",
    workers: int = 0,
) -> Callable[[Tensor], Tensor]:
    """The Hessian of the mean post-adaptation KL w.r.t. the meta-parameters, as ``v -> H v`` (flat).

    At the current parameters every task's KL and its gradient are zero, so the Hessian is
    exactly ``H = sum_i J_i^T F_i J_i``: ``F_i`` is the KL Hessian w.r.t. task ``i``'s adapted
    parameters (the Fisher) and ``J_i = prod_j (I - alpha_j d^2 L_inner,ij)`` is the Jacobian of
    the inner loop (``I`` for first-order MAML, or with ``through_inner_loop=False``: the
    adapted policies' Fisher alone, an approximation the line search's exact KL check keeps
    safe). ``F_i`` is applied in its Gauss-Newton form, ``J_mean^T diag(exp(-2 log_std)) J_mean``
    averaged over states, plus ``2 I`` on the log-std: at the current parameters it is the
    KL's Hessian exactly (the KL's first derivatives in the mean and log-std vanish there).
    The closed form applies every factor by hand (:mod:`metarl.policy`), for the ``log`` and ``lvc``
    inner estimators (a ``ValueError`` for ``dice``); ``derivatives="autograd"`` by double backward
    through small graphs built once at detached parameters, for any estimator.

    With ``subsample < 1`` the Fisher uses the first fraction of each task's post-adaptation
    trajectories (an average over states: subsampling it barely changes the step). The inner
    Jacobian always uses every trajectory: it is the derivative of the adaptation that actually
    ran, and a subsample's differs from it (measured on HalfCheetahVel: with the inner Hessians
    on 20% of the trajectories the accepted TRPO step's surrogate gain fell by 2.6x).

    ``meta`` (the :func:`meta_gradient` at ``params``) saves re-running the inner loop: its
    adapted parameters are where the Fisher is taken, and (closed form, ``keep_inner``) its
    inner steps give the Jacobian's factors. The products are taken one chunk of
    ``task_chunk`` tasks at a time (0: automatic; ``meta``'s chunks when given).
    """
    n = len(batch.tasks)
    exact = through_inner_loop and not adaptation.first_order
    slices = meta.slices if meta is not None else task_slices(n, task_chunk_size(policy, batch, task_chunk))
    adapted = meta.adapted if meta is not None else None
    if derivatives == "closed_form":
        inner = meta.inner if meta is not None else None
        return _closed_kl_curvature(
            policy, params, batch, adaptation, subsample, exact, slices, adapted, inner, resolve_workers(workers, batch)
        )
    lrs = inner_step_sizes(adaptation.inner_lr, len(batch.train))
    operators = []
    for index in slices:
        part = batch_tasks(batch, index)
        c = len(part.tasks)
        point = stack_params(detach_params(params), c)
        inner_hessians = []
        for step, episodes in enumerate(part.train):
            if not exact and adapted is not None:
                break
            leaf = _leaf(point)
            if exact:
                loss = reinforce_loss(policy, leaf, episodes, adaptation.inner_estimator)
                hessian, grads = _hessian_operator(loss, leaf)
                inner_hessians.append(hessian)
                point = {k: v.detach() - lrs[step] * g.detach() for (k, v), g in zip(leaf.items(), grads)}
            else:
                point = detach_params(adapt(rl_inner_loss(policy, [episodes]), leaf, c, [lrs[step]], first_order=True))
        if adapted is not None:
            point = {k: v[index] for k, v in adapted.items()}
        leaf = _leaf(point)
        valid = part.valid
        if subsample < 1.0:
            valid = valid.subsample(max(1, math.ceil(subsample * valid.episodes_per_task)))
        logp, mean, log_std = log_probs(policy, leaf, valid)
        old = OldPolicy(logp.detach(), mean.detach(), log_std.detach())
        fisher, _ = _hessian_operator(task_kls(mean, log_std, old, valid).sum() / n, leaf)
        operators.append((c, inner_hessians, fisher))

    def hvp(v: Tensor) -> Tensor:
        shared = unflatten(v, params)
        parts = []
        for c, inner_hessians, fisher in operators:
            u = list(stack_params(shared, c).values())
            for hessian, lr in zip(inner_hessians, lrs):  # J v
                u = [a - lr * b for a, b in zip(u, hessian(u))]
            w = fisher(u)
            for hessian, lr in reversed(list(zip(inner_hessians, lrs))):  # J^T w
                w = [a - lr * b for a, b in zip(w, hessian(w))]
            parts.append(w)
        return flatten(_sum_task_copies(parts))  # shared meta-parameters: sum over the task copies

    return hvp


# --------------------------------------------------------------------------- TRPO and Adam


def trpo_step(
    policy: GaussianMLPPolicy,
    batch: MetaBatch,
    adaptation: AdaptationSettings,
    settings: TRPOSettings,
    timer: PartTimer | None = None,
) -> dict[str, float]:
    """One MAML-TRPO meta-update of ``policy`` in place; returns statistics for logging.

    The meta-gradient differentiates the post-adaptation surrogate through the inner loop
    (second order) or not (first order); the search direction solves ``(H + damping) x = -g``
    by conjugate gradient with :func:`kl_curvature`; the backtracking line search accepts
    the first step that improves the surrogate with mean KL <= ``max_kl``, else restores.
    ``timer`` records the time of each part.

    In closed form with several worker threads, every op runs on one intra-op thread (the
    conjugate gradient's vector products too), so the result does not depend on the thread count.
    """
    workers = resolve_workers(settings.workers, batch) if settings.derivatives == "closed_form" else 1
    with _one_op_thread(workers):
        return _trpo_step(policy, batch, adaptation, settings, timer)


def _trpo_step(
    policy: GaussianMLPPolicy,
    batch: MetaBatch,
    adaptation: AdaptationSettings,
    settings: TRPOSettings,
    timer: PartTimer | None,
) -> dict[str, float]:
    with _timed(timer, "layout"):
        batch = task_major_batch(batch)
    chunk = task_chunk_size(policy, batch, settings.task_chunk)
    exact = settings.curvature == "exact"
    params = policy.params()
    meta = meta_gradient(policy, batch, adaptation, chunk, timer, settings.derivatives, exact, settings.workers)
    _check_finite("surrogate loss", meta.loss)
    _check_finite("meta-gradient", meta.grad)
    grad = meta.grad

    with _timed(timer, "curvature"):
        curvature = kl_curvature(
            policy,
            params,
            batch,
            adaptation,
            settings.hvp_subsample,
            exact,
            meta,
            derivatives=settings.derivatives,
            workers=settings.workers,
        )

    operators = [curvature]

    def damped(v: Tensor) -> Tensor:
        with _timed(timer, "fvp"):
            return operators[0](v) + settings.cg_damping * v

    step_dir, curvature_step = conjugate_gradient(damped, -grad, settings.cg_iters)
    operators.clear()  # the curvature's caches (large for the exact curvature) are not needed any more
    del curvature
    if meta.inner is not None:
        meta.inner.clear()
    shs = 0.5 * (step_dir @ curvature_step)
    _check_finite("step curvature", shs)
    # Scale so that the quadratic model of the KL at the full step, 0.5 x^T H x, equals max_kl.
    full_step = step_dir * torch.sqrt(settings.max_kl / shs.clamp_min(1e-12))

    old_flat = flatten(params).detach().clone()

    def measure() -> tuple[float, float]:
        with _timed(timer, "line_search"):
            if (settings.task_chunk, settings.derivatives, settings.workers) == (0, "closed_form", 0):
                return evaluate_outer(policy, batch, adaptation, meta.old)
            return evaluate_outer(
                policy, batch, adaptation, meta.old, settings.task_chunk, settings.derivatives, settings.workers
            )

    return line_search(
        full_step, meta.loss.item(), lambda step: set_flat_params(policy, old_flat + step), measure, settings
    )


def line_search(
    full_step: Tensor,
    old_loss: float,
    move: Callable[[Tensor], None],
    measure: Callable[[], tuple[float, float]],
    settings: TRPOSettings,
) -> dict[str, float]:
    """TRPO's backtracking line search: accept the first ``scale * full_step`` that improves the surrogate
    with mean KL <= ``max_kl``, else go back to the start.

    ``move(step)`` puts the meta-parameters at their starting point plus ``step``; ``measure()``
    returns the surrogate loss and mean KL there. Returns the statistics every TRPO step logs.
    """
    stats = {"loss_before": old_loss, "ls_steps": float(settings.ls_max_steps), "accepted": 0.0}
    scale = 1.0
    for j in range(settings.ls_max_steps):
        move(scale * full_step)
        new_loss, new_kl = measure()
        if math.isfinite(new_loss) and new_loss < old_loss and new_kl <= settings.max_kl:
            stats.update(loss_after=new_loss, kl=new_kl, ls_steps=float(j), accepted=1.0)
            break
        scale *= next_shrink(new_kl, settings.max_kl, settings.ls_backtrack)
    else:
        move(torch.zeros_like(full_step))
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
    policy: GaussianMLPPolicy,
    batch: MetaBatch,
    adaptation: AdaptationSettings,
    old: OldPolicy,
    task_chunk: int = 0,
    derivatives: Derivatives = "closed_form",
    workers: int = 0,
) -> tuple[float, float]:
    """Surrogate loss and mean KL at the policy's current parameters (no graph kept).

    The inner loop runs first order (its value is all that is needed, the same for every inner
    estimator, so the closed form serves dice too), then one forward of the adapted policies
    gives both the surrogate and the KL, one chunk of tasks at a time.
    """
    slices = task_slices(len(batch.tasks), task_chunk_size(policy, batch, task_chunk))
    if derivatives == "closed_form":
        return _closed_evaluate(policy, batch, adaptation, old, slices, resolve_workers(workers, batch))
    params = policy.params()
    losses, kls = [], []
    for index in slices:
        part = batch_tasks(batch, index)
        adapted = detach_params(adapt_on_batch(policy, params, part, adaptation, first_order=True))
        with torch.no_grad():
            loss, kl = task_surrogates_and_kls(policy, adapted, part.valid, _old_tasks(old, index))
        losses.append(loss)
        kls.append(kl)
    return torch.cat(losses).mean().item(), torch.cat(kls).mean().item()


def adam_step(
    policy: GaussianMLPPolicy,
    optimizer: torch.optim.Optimizer,
    batch: MetaBatch,
    adaptation: AdaptationSettings,
    derivatives: Derivatives = "closed_form",
    learner: GaussianMLPPolicy | None = None,
) -> dict[str, float]:
    """One Adam step on the post-adaptation surrogate (its gradient at ratio 1 is the meta policy gradient).

    ``learner``, a copy of ``policy`` with the same parameters on the batch's device, computes
    the meta-gradient there; the step (and the optimiser's state) stays with ``policy``.
    """
    workers = resolve_workers(0, batch) if derivatives == "closed_form" else 1
    with _one_op_thread(workers):
        meta = meta_gradient(learner or policy, task_major_batch(batch), adaptation, derivatives=derivatives)
    _check_finite("surrogate loss", meta.loss)
    _check_finite("meta-gradient", meta.grad)
    optimizer.zero_grad()
    for p, g in zip(policy.parameters(), unflatten(meta.grad, policy.params()).values()):
        p.grad = g.to(p.device, copy=True)
    optimizer.step()
    return {"loss_before": meta.loss.item()}
