"""Supervised MAML (Finn et al. 2017, section 5.1) through the same core as MAML-RL.

The inner loss is the mean squared error between the model's output (the policy mean) and
the regression target on a task's K-shot *support* set; the outer loss is the MSE of the
adapted model on a fresh *query* set of the same task. :func:`metarl.maml.adapt` runs the
inner loop for the whole meta-batch at once with per-task stacked parameters, second order
(graph through the inner gradient) or first order (``maml.first_order``); Adam is the
meta-optimiser. No RL machinery is involved: tasks and points come straight from the task
env's vectorised ``sample_points``.

Also here: the few-shot evaluation (MSE on query points after 0..k plain SGD steps, with
95% confidence intervals over tasks) and the "pretrained on all tasks" baseline.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from metarl.build import build_policy, io_dims, iteration_rngs, task_env, torch_dtype
from metarl.config import Config
from metarl.envs.base import Task
from metarl.errors import ConfigError, TrainingDiverged
from metarl.evaluation import mean_ci95
from metarl.loop import Algorithm
from metarl.maml import InnerLoss, adapt, inner_step_sizes
from metarl.policy import GaussianMLPPolicy, Params, detach_params, stack_params


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
    policy: GaussianMLPPolicy, params: Params, batch: RegressionBatch, lrs: Sequence[float], first_order: bool
) -> tuple[Tensor, Tensor]:
    """``(outer loss, pre-adaptation MSE)``: mean over tasks of the adapted models' query MSE, and of the
    support MSE at ``params`` (detached; an unbiased estimate of the pre-adaptation MSE, taken from
    the first inner step's loss rather than an extra forward pass)."""
    if not lrs:
        raise ValueError("meta_objective needs at least one inner step")
    inner = mse_inner_loss(policy, batch.support_x, batch.support_y)
    first: list[Tensor] = []

    def recording_loss(stacked: Params, step: int) -> Tensor:
        loss = inner(stacked, step)
        if step == 0:
            first.append(loss.detach() / batch.num_tasks)
        return loss

    adapted = adapt(recording_loss, params, batch.num_tasks, lrs, first_order)
    return task_mse(policy, adapted, batch.query_x, batch.query_y).mean(), first[0]


def meta_step(
    policy: GaussianMLPPolicy,
    optimizer: torch.optim.Optimizer,
    batch: RegressionBatch,
    lrs: Sequence[float],
    first_order: bool,
) -> dict[str, float]:
    """One Adam step on the post-adaptation query MSE; returns the iteration's scalars.

    Raises :class:`FloatingPointError` if the loss or the meta-gradient is not finite (the
    parameters are then left untouched).
    """
    params = policy.params()
    post, pre = meta_objective(policy, params, batch, lrs, first_order)
    if not torch.isfinite(post):
        raise FloatingPointError(f"post-adaptation MSE is not finite ({post.item()})")
    optimizer.zero_grad(set_to_none=True)
    post.backward()
    grads = [p.grad for p in params.values() if p.grad is not None]  # the unused log-std gets no gradient
    grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    if not torch.isfinite(grad_norm):
        raise FloatingPointError(f"meta-gradient is not finite (norm {grad_norm.item()})")
    optimizer.step()
    return {"meta/mse_pre": pre.item(), "meta/mse_post": post.item(), "outer/grad_norm": grad_norm.item()}


class SupervisedMAML(Algorithm):
    """Supervised MAML as an :class:`~metarl.loop.Algorithm`: one Adam step on the query MSE per iteration.

    Every iteration draws ``maml.meta_batch_size`` tasks, a ``supervised.shots`` support set
    and a ``supervised.query_size`` query set per task from generators derived from
    ``(train.seed, iteration)`` (so a resumed run continues the same curve), adapts with
    ``maml.num_inner_steps`` steps of size ``maml.inner_lr`` and takes one Adam step
    (``outer.lr``) on the query MSE. Scalars (``meta/mse_pre``, ``meta/mse_post``, ...) are
    averaged over ``supervised.log_every`` iterations.
    """

    progress_keys = {"meta/mse_pre": "MSE before", "meta/mse_post": "after adaptation", "perf/iterations_per_s": "it/s"}

    def __init__(self, config: Config) -> None:
        if config.maml.loss != "supervised":
            raise ConfigError(f"config key 'maml.loss': supervised MAML needs 'supervised', got {config.maml.loss!r}")
        if config.outer.optimizer != "adam":
            raise ConfigError(
                f"config key 'outer.optimizer': bad value {config.outer.optimizer!r}; "
                "allowed with maml.loss=supervised: 'adam'"
            )
        self.config = config
        self.name = f"{'fo' if config.maml.first_order else ''}maml-supervised"
        self.dtype, self.env, self.policy, self.adam = _setup(config)
        self.optimizer = self.adam
        self.lrs = inner_step_sizes(config.maml.inner_lr, config.maml.num_inner_steps)
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
        stats = meta_step(self.policy, self.adam, batch, self.lrs, m.first_order)
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


def _setup(config: Config) -> tuple[torch.dtype, RegressionTaskEnv, GaussianMLPPolicy, torch.optim.Adam]:
    """Dtype, task env, freshly initialised model and its Adam optimiser for a regression run."""
    env = regression_env(config)
    policy = build_policy(config, *io_dims(task_env(config)))
    return torch_dtype(config.train.dtype), env, policy, adam(policy, config.outer.lr)


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
    dtype, env, policy, optimizer = _setup(config)
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


def evaluate_regression(
    policy: GaussianMLPPolicy,
    config: Config,
    num_tasks: int | None = None,
    shots: int | None = None,
    num_steps: int | None = None,
    query_size: int | None = None,
    seed: int | None = None,
    lr: float | None = None,
) -> dict[str, Any]:
    """Few-shot regression: on fresh tasks, ``shots``-shot support, MSE on query points after 0..k SGD steps.

    Every step is a plain gradient step of size ``lr`` (default ``maml.inner_lr``) on the
    support MSE, for all tasks at once. Returns ``{"steps": [{"step", "mse", "ci95"}, ...],
    "per_task": [[...] per step], ...}``; the confidence interval is over tasks. Arguments left
    as ``None`` come from ``config.eval`` (tasks, steps, seed) and ``config.supervised``
    (shots, ``eval_query_size``). Same seed => same tasks, support and query points, so
    methods evaluated with one seed are compared on identical data.
    """
    num_tasks = config.eval.num_tasks if num_tasks is None else num_tasks
    shots = config.supervised.shots if shots is None else shots
    num_steps = config.eval.num_steps if num_steps is None else num_steps
    query_size = config.supervised.eval_query_size if query_size is None else query_size
    seed = config.eval.seed if seed is None else seed
    lr = config.maml.inner_lr if lr is None else lr
    if num_tasks < 1 or shots < 1 or query_size < 1 or num_steps < 0:
        raise ValueError(
            f"need num_tasks, shots, query_size >= 1 and num_steps >= 0, got "
            f"{num_tasks}, {shots}, {query_size}, {num_steps}"
        )
    env = regression_env(config)
    dtype = next(policy.parameters()).dtype
    rng = np.random.default_rng(seed)
    batch = sample_regression_batch(env, env.sample_tasks(num_tasks, rng), shots, query_size, rng, dtype)
    per_task = [_query_mse(policy, policy.params(), batch)]
    current = stack_params(detach_params(policy.params()), num_tasks)
    for _ in range(num_steps):
        current = detach_params(adapt_regression(policy, current, batch.support_x, batch.support_y, [lr], True))
        per_task.append(_query_mse(policy, current, batch))
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
        "inner_lr": lr,
        "seed": seed,
    }


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
    lr: float,
) -> dict[int, np.ndarray]:
    """The model's predictions on ``grid [n, G, in_dim]`` after each of ``steps`` SGD steps on every task's support set.

    Returns ``{k: predictions [n, G, out_dim]}`` (for plots of adapted curves).
    """
    if not steps or min(steps) < 0:
        raise ValueError(f"steps must be non-negative step counts, got {list(steps)}")
    n = support_x.shape[0]
    current = stack_params(detach_params(policy.params()), n)
    out: dict[int, np.ndarray] = {}
    for k in range(max(steps) + 1):
        if k > 0:
            current = detach_params(adapt_regression(policy, current, support_x, support_y, [lr], True))
        if k in steps:
            with torch.no_grad():
                out[k] = policy(grid, current)[0].double().numpy()
    return out
