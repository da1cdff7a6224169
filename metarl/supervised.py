"""Supervised meta-learning for regression (Finn et al. 2017, section 5.1) through the same core as MAML-RL.

The inner loss is the mean squared error between the model's output (the policy mean) and
the regression target on a task's K-shot *support* set; the outer loss is the MSE of the
adapted model on a fresh *query* set of the same task. Every algorithm of the family
(``maml.algorithm``: MAML, first-order MAML, Reptile, Meta-SGD, ANIL, MAML++) runs through
:class:`metarl.algorithms.MetaLearner`, whose inner loop (:func:`metarl.maml.adapt_steps`)
adapts the whole meta-batch at once with per-task stacked parameters. No RL machinery is
involved: tasks and points come straight from the task env's vectorised ``sample_points``.

Also here: the few-shot evaluation (MSE on query points after 0..k inner steps of the run's
own inner rule, learned step sizes included, with 95% confidence intervals over tasks) and
the "pretrained on all tasks" baseline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from metarl.algorithms import (
    InnerRule,
    MetaLearner,
    adapted_names,
    algorithm_name,
    inner_rule,
    meta_loss,
    outer_optimizer,
)
from metarl.build import build_policy, io_dims, iteration_rngs, task_env, torch_dtype
from metarl.config import Config
from metarl.envs.base import Task
from metarl.errors import ConfigError, TrainingDiverged
from metarl.evaluation import mean_ci95
from metarl.loop import Algorithm
from metarl.maml import InnerLoss, adapt
from metarl.policy import GaussianMLPPolicy, Params, detach_params


@runtime_checkable
class RegressionTaskEnv(Protocol):
    """A task env that can draw whole regression sets for many tasks at once (e.g. ``metarl/Sinusoid-v0``)."""

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[Task]:
        """Draw ``n`` tasks using only ``rng``."""
        ...

    def sample_points(
        self, tasks: Sequence[Task], num_points: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Inputs ``[n, num_points, in_dim]`` and targets ``[n, num_points, out_dim]`` for every task."""
        ...


def regression_env(config: Config) -> RegressionTaskEnv:
    """The config's task env, checked to support supervised MAML."""
    env = task_env(config).unwrapped
    if not isinstance(env, RegressionTaskEnv):
        raise ConfigError(
            f"maml.loss=supervised needs an env with sample_tasks(n, rng) and sample_points(tasks, num_points, rng) "
            f"(e.g. metarl/Sinusoid-v0); env.id={config.env.id!r} ({type(env).__name__}) has no sample_points"
        )
    return env


@dataclass(frozen=True)
class RegressionBatch:
    """Support and query sets of ``n`` tasks: inputs ``[n, M, in_dim]`` and targets ``[n, M, out_dim]``."""

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor

    @property
    def num_tasks(self) -> int:
        """``n``, the number of tasks."""
        return self.support_x.shape[0]


def sample_regression_batch(
    env: RegressionTaskEnv,
    tasks: Sequence[Task],
    shots: int,
    query_size: int,
    rng: np.random.Generator,
    dtype: torch.dtype = torch.float32,
) -> RegressionBatch:
    """Draw a K-shot support set, then a fresh query set, for every task (vectorised, from ``rng`` only)."""
    support = env.sample_points(tasks, shots, rng)
    query = env.sample_points(tasks, query_size, rng)
    sx, sy, qx, qy = (torch.from_numpy(np.ascontiguousarray(a)).to(dtype) for a in (*support, *query))
    return RegressionBatch(sx, sy, qx, qy)


def task_mse(policy: GaussianMLPPolicy, params: Params, x: Tensor, y: Tensor) -> Tensor:
    """Mean squared error of the model's output (the policy mean) per task, ``[n]``.

    ``params`` may be shared or stacked per task; ``x`` is ``[n, M, in_dim]``.
    """
    prediction, _ = policy(x, params)
    return (prediction - y).pow(2).mean(dim=(1, 2))


def mse_inner_loss(policy: GaussianMLPPolicy, x: Tensor, y: Tensor) -> InnerLoss:
    """The supervised inner loss: sum over tasks of each task's MSE on its support set (every step).

    The regressor does not use the policy's log-std; it enters as ``0 * log_std`` so that
    :func:`metarl.maml.adapt` can differentiate with respect to every parameter (its
    gradient, inner and outer, is exactly zero).
    """

    def loss(params: Params, step: int) -> Tensor:
        return task_mse(policy, params, x, y).sum() + 0.0 * params["log_std"].sum()

    return loss


def adapt_regression(
    policy: GaussianMLPPolicy, params: Params, x: Tensor, y: Tensor, lrs: Sequence[float], first_order: bool
) -> Params:
    """``len(lrs)`` gradient steps on every task's support MSE at once; returns stacked per-task params."""
    return adapt(mse_inner_loss(policy, x, y), params, x.shape[0], lrs, first_order)


def meta_objective(
    policy: GaussianMLPPolicy,
    params: Params,
    batch: RegressionBatch,
    lrs: Sequence[float],
    first_order: bool,
    adapted: frozenset[str] | None = None,
) -> tuple[Tensor, Tensor]:
    """``(outer loss, pre-adaptation MSE)`` of MAML with step sizes ``lrs``: the mean over tasks of the adapted
    models' query MSE, and of the support MSE at ``params`` (detached; an unbiased estimate of the
    pre-adaptation MSE, taken from the first inner step's loss rather than an extra forward pass).

    (The general form, learned step sizes and multi-step losses included, is
    :func:`metarl.algorithms.meta_loss`.)
    """
    if not lrs:
        raise ValueError("meta_objective needs at least one inner step")
    rule = InnerRule(tuple(lrs), adapted, first_order)
    result = meta_loss(
        mse_inner_loss(policy, batch.support_x, batch.support_y),
        query_mse_loss(policy, batch),
        params,
        batch.num_tasks,
        rule,
        len(lrs),
        stacked=None,
    )
    return result.objective, result.pre


def query_mse_loss(policy: GaussianMLPPolicy, batch: RegressionBatch) -> Callable[[Params], Tensor]:
    """The outer loss: each task's MSE on its query set, ``[n]``, of stacked adapted parameters."""
    return lambda params: task_mse(policy, params, batch.query_x, batch.query_y)


def meta_step(policy: GaussianMLPPolicy, learner: MetaLearner, batch: RegressionBatch, it: int) -> dict[str, float]:
    """One meta-update of ``learner``'s algorithm on a regression meta-batch; returns the iteration's scalars.

    Raises :class:`FloatingPointError` if the loss or the meta-gradient is not finite (the
    parameters are then left untouched).
    """
    inner = mse_inner_loss(policy, batch.support_x, batch.support_y)
    stats = learner.step(it, inner, query_mse_loss(policy, batch), batch.num_tasks)
    return {"meta/mse_pre": stats.pop("loss_pre"), "meta/mse_post": stats.pop("loss_post"), **stats}


class SupervisedMAML(Algorithm):
    """Supervised meta-learning of a regressor as an :class:`~metarl.loop.Algorithm`, any ``maml.algorithm``.

    Every iteration draws ``maml.meta_batch_size`` tasks, a ``supervised.shots`` support set
    and a ``supervised.query_size`` query set per task from generators derived from
    ``(train.seed, iteration)`` (so a resumed run continues the same curve), adapts with
    ``maml.num_inner_steps`` inner steps and takes one meta-update
    (:class:`~metarl.algorithms.MetaLearner`: Adam on the query MSE, or Reptile's step).
    Learned step sizes are checkpointed with the model (:meth:`extra_state`). Scalars
    (``meta/mse_pre``, ``meta/mse_post``, ...) are averaged over ``supervised.log_every`` iterations.
    """

    progress_keys = {"meta/mse_pre": "MSE before", "meta/mse_post": "after adaptation", "perf/iterations_per_s": "it/s"}
    policy: GaussianMLPPolicy

    def __init__(self, config: Config) -> None:
        if config.maml.loss != "supervised":
            raise ConfigError(f"config key 'maml.loss': supervised MAML needs 'supervised', got {config.maml.loss!r}")
        if outer_optimizer(config) != "adam" and config.maml.algorithm != "reptile":
            raise ConfigError(
                f"config key 'outer.optimizer': bad value {config.outer.optimizer!r}; "
                "allowed with maml.loss=supervised: 'adam'"
            )
        self.config = config
        self.name = f"{algorithm_name(config.maml)}-supervised"
        self.dtype, self.env, self.policy = _setup(config)
        self.learner = MetaLearner(config, self.policy, loss_name="MSE")
        self.optimizer = self.learner.optimizer
        self.window: dict[str, float] = {}
        self.window_start: int | None = None
        self.window_time = time.perf_counter()

    def iteration(self, it: int) -> dict[str, float] | None:
        """One meta-step; returns the window's mean scalars every ``supervised.log_every`` iterations."""
        m, s = self.config.maml, self.config.supervised
        if self.window_start is None:
            self.window_start, self.window_time = it, time.perf_counter()
        rng, _ = iteration_rngs(self.config.train.seed, it)
        tasks = self.env.sample_tasks(m.meta_batch_size, rng)
        batch = sample_regression_batch(self.env, tasks, s.shots, s.query_size, rng, self.dtype)
        stats = meta_step(self.policy, self.learner, batch, it)
        for key, value in stats.items():
            self.window[key] = self.window.get(key, 0.0) + value
        done = it + 1
        if done % s.log_every and done != self.config.train.iterations:
            return None
        count = done - self.window_start
        now = time.perf_counter()
        metrics = {key: total / count for key, total in self.window.items()}
        metrics["perf/iterations_per_s"] = count / max(now - self.window_time, 1e-9)
        self.window, self.window_start = {}, None
        return metrics

    def extra_state(self) -> dict[str, Any]:
        """The learned step sizes (Meta-SGD, MAML++), which evaluation adapts with."""
        return self.learner.extra_state()

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore the learned step sizes on resume."""
        self.learner.load_extra_state(state)


def _setup(config: Config) -> tuple[torch.dtype, RegressionTaskEnv, GaussianMLPPolicy]:
    """Dtype, task env and freshly initialised model of a regression run."""
    env = regression_env(config)
    policy = build_policy(config, *io_dims(task_env(config)))
    return torch_dtype(config.train.dtype), env, policy


def adam(policy: GaussianMLPPolicy, lr: float) -> torch.optim.Adam:
    """The outer optimiser: Adam with the fused kernel (about 3x faster than ``foreach`` on these tiny tensors)."""
    return torch.optim.Adam(policy.parameters(), lr=lr, fused=True)


def train_pretrained(
    config: Config, iterations: int, points_per_task: int | None = None, progress: bool = True
) -> GaussianMLPPolicy:
    """The "pretrained on all tasks" baseline: one regressor fitted with Adam to samples from all tasks jointly.

    Each iteration draws ``maml.meta_batch_size`` tasks with ``points_per_task`` points each
    (default: shots + query size, the data a MAML iteration sees) and takes one Adam step
    (``outer.lr``) on the mean MSE. Same architecture, initialisation and seeding as MAML.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    dtype, env, policy = _setup(config)
    optimizer = adam(policy, config.outer.lr)
    points = points_per_task or config.supervised.shots + config.supervised.query_size
    bar = tqdm(range(iterations), desc="pretrain (all tasks)", disable=not progress, dynamic_ncols=True)
    for it in bar:
        rng, _ = iteration_rngs(config.train.seed, it)
        x, y = env.sample_points(env.sample_tasks(config.maml.meta_batch_size, rng), points, rng)
        loss = task_mse(policy, policy.params(), torch.from_numpy(x).to(dtype), torch.from_numpy(y).to(dtype)).mean()
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"pretraining iteration {it}: loss is not finite ({loss.item()})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (it + 1) % 500 == 0:
            bar.set_postfix(mse=f"{loss.item():.3f}")
    bar.close()
    return policy


def few_shot_protocol(
    config: Config,
    num_tasks: int | None,
    shots: int | None,
    num_steps: int | None,
    query_size: int | None,
    seed: int | None,
) -> tuple[int, int, int, int, int]:
    """A few-shot evaluation's tasks, shots, steps, query size and seed: the arguments given, else the config's
    (``eval``: tasks, steps, seed; ``supervised``: shots, ``eval_query_size``), checked."""
    num_tasks = config.eval.num_tasks if num_tasks is None else num_tasks
    shots = config.supervised.shots if shots is None else shots
    num_steps = config.eval.num_steps if num_steps is None else num_steps
    query_size = config.supervised.eval_query_size if query_size is None else query_size
    seed = config.eval.seed if seed is None else seed
    if num_tasks < 1 or shots < 1 or query_size < 1 or num_steps < 0:
        raise ValueError(
            f"need num_tasks, shots, query_size >= 1 and num_steps >= 0, got "
            f"{num_tasks}, {shots}, {query_size}, {num_steps}"
        )
    return num_tasks, shots, num_steps, query_size, seed


def evaluate_regression(
    policy: GaussianMLPPolicy,
    config: Config,
    num_tasks: int | None = None,
    shots: int | None = None,
    num_steps: int | None = None,
    query_size: int | None = None,
    seed: int | None = None,
    lr: float | None = None,
    rule: InnerRule | None = None,
) -> dict[str, Any]:
    """Few-shot regression: on fresh tasks, ``shots``-shot support, MSE on query points after 0..k inner steps.

    The steps follow ``rule``, the run's inner rule (:func:`metarl.algorithms.checkpoint_inner_rule`:
    learned step sizes, adapted subset, inner optimiser); by default the config's rule, which
    for an algorithm with learned step sizes needs them (pass the checkpoint's rule). ``lr``
    replaces the step sizes by one fixed size. All tasks adapt at once. Returns ``{"steps":
    [{"step", "mse", "ci95"}, ...], "per_task": [[...] per step], ...}``; the confidence
    interval is over tasks. Arguments left as ``None`` come from ``config.eval`` (tasks, steps,
    seed) and ``config.supervised`` (shots, ``eval_query_size``). Same seed => same tasks,
    support and query points, so methods evaluated with one seed are compared on identical data.
    """
    num_tasks, shots, num_steps, query_size, seed = few_shot_protocol(
        config, num_tasks, shots, num_steps, query_size, seed
    )
    rule = evaluation_rule(policy, config, rule, lr)
    env = regression_env(config)
    dtype = next(policy.parameters()).dtype
    rng = np.random.default_rng(seed)
    batch = sample_regression_batch(env, env.sample_tasks(num_tasks, rng), shots, query_size, rng, dtype)
    theta = detach_params(policy.params())
    per_task = [_query_mse(policy, theta, batch)]
    inner = mse_inner_loss(policy, batch.support_x, batch.support_y)
    for params in rule.steps(inner, theta, num_tasks, num_steps):
        per_task.append(_query_mse(policy, params, batch))
    steps = []
    for k, values in enumerate(per_task):
        mean, ci = mean_ci95(values)
        steps.append({"step": k, "mse": mean, "ci95": ci})
    return {
        "steps": steps,
        "per_task": [v.tolist() for v in per_task],
        "num_tasks": num_tasks,
        "shots": shots,
        "query_size": query_size,
        "inner_lr": config.maml.inner_lr if lr is None else lr,
        "inner_rule": rule.describe(),
        "step_sizes": rule.mean_step_sizes(num_steps),
        "seed": seed,
    }


def evaluation_rule(
    policy: GaussianMLPPolicy, config: Config, rule: InnerRule | None = None, lr: float | None = None
) -> InnerRule:
    """The inner rule an evaluation adapts with: ``rule`` (else the config's), first order, with no graph to
    learned sizes; ``lr`` replaces its step sizes by one fixed size (then no learned ones are needed)."""
    if lr is not None:
        base = rule if rule is not None else InnerRule((lr,), adapted_names(config, policy))
        return replace(base.detached(), step_sizes=(lr,))
    return (rule if rule is not None else inner_rule(config, policy)).detached()


def _query_mse(policy: GaussianMLPPolicy, params: Params, batch: RegressionBatch) -> np.ndarray:
    """Per-task query MSE as a float64 numpy array (no graph)."""
    with torch.no_grad():
        return task_mse(policy, params, batch.query_x, batch.query_y).double().numpy()


def predictions_after_steps(
    policy: GaussianMLPPolicy,
    support_x: Tensor,
    support_y: Tensor,
    grid: Tensor,
    steps: Sequence[int],
    rule: InnerRule | float,
) -> dict[int, np.ndarray]:
    """The model's predictions on ``grid [n, G, in_dim]`` after each of ``steps`` inner steps on every task's
    support set, adapting with ``rule`` (the run's inner rule, or a fixed SGD step size).

    Returns ``{k: predictions [n, G, out_dim]}`` (for plots of adapted curves).
    """
    if not steps or min(steps) < 0:
        raise ValueError(f"steps must be non-negative step counts, got {list(steps)}")
    rule = InnerRule((float(rule),)) if isinstance(rule, float | int) else rule.detached()
    n = support_x.shape[0]
    theta = detach_params(policy.params())
    out: dict[int, np.ndarray] = {}
    adapted = rule.steps(mse_inner_loss(policy, support_x, support_y), theta, n, max(steps))
    for k, params in enumerate([theta, *adapted]):
        if k in steps:
            with torch.no_grad():
                out[k] = policy(grid, params)[0].double().numpy()
    return out
