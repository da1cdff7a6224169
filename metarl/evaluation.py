"""Few-shot evaluation: return after 0..k inner steps on fresh tasks (the MAML paper's protocol)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from metarl.build import adaptation_settings, make_sampler, task_env
from metarl.config import Config
from metarl.maml import inner_step_sizes, sample_meta_batch
from metarl.policy import GaussianMLPPolicy

def mean_ci95(values: np.ndarray) -> tuple[float, float]:
    """Mean and 95% confidence half-width (normal approximation, 1.96 standard errors)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        return float(values.mean()), float("nan")
    return float(values.mean()), float(1.96 * values.std(ddof=1) / math.sqrt(values.size))


def evaluate_adaptation(
    policy: GaussianMLPPolicy,
    config: Config,
    num_tasks: int | None = None,
    num_steps: int | None = None,
    episodes_per_step: int | None = None,
    seed: int | None = None,
    inner_lr: float | None = None,
) -> dict[str, Any]:
    """Adapt ``policy`` on fresh seeded tasks with 0..k inner steps (alpha, then alpha/2) and measure returns.

    Returns ``{"steps": [{"step": k, "mean_return": x, "ci95": h}, ...], "per_task": [[...], ...],
    "tasks": [...]}``, where the confidence interval is over tasks (each task's return averaged
    over its episodes) and ``per_task[k][i]`` is task ``tasks[i]``'s return after ``k`` steps.
    Arguments left as ``None`` come from ``config.eval`` / ``config.maml``.
    """
    e = config.eval
    num_tasks = e.num_tasks if num_tasks is None else num_tasks
    num_steps = e.num_steps if num_steps is None else num_steps
    episodes = e.episodes_per_step if episodes_per_step is None else episodes_per_step
    seed = e.seed if seed is None else seed
    lr = config.maml.inner_lr if inner_lr is None else inner_lr
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    tasks = task_env(config).unwrapped.sample_tasks(num_tasks, rng)
    sampler = make_sampler(config, num_tasks, episodes)
    try:
        batch, _ = sample_meta_batch(
            sampler, policy, policy.params(), tasks, adaptation_settings(config.maml), rng, generator,
            lrs=inner_step_sizes(lr, num_steps, decay_after_first=True),
        )
    finally:
        sampler.close()
    per_task = [ep.episode_returns().mean(1).double().numpy() for ep in [*batch.train, batch.valid]]
    steps = []
    for k, returns in enumerate(per_task):
        mean, ci = mean_ci95(returns)
        steps.append({"step": k, "mean_return": mean, "ci95": ci})
    return {"steps": steps, "per_task": [r.tolist() for r in per_task], "tasks": [dict(t) for t in tasks],
            "num_tasks": num_tasks, "episodes_per_step": episodes, "inner_lr": lr, "seed": seed}


def markdown_table(results: dict[str, dict[str, Any]], key: str = "mean_return", digits: int = 2) -> str:
    """Markdown table of ``key`` (mean return, or ``"mse"`` for regression) ± 95% CI after each step, one row per method."""
    methods = list(results)
    steps = [s["step"] for s in results[methods[0]]["steps"]]
    lines = ["| method | " + " | ".join(f"{k} steps" for k in steps) + " |", "|---" * (len(steps) + 1) + "|"]
    for name in methods:
        cells = [f"{s[key]:.{digits}f} ± {s['ci95']:.{digits}f}" for s in results[name]["steps"]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def returns_by_task_parameter(result: dict[str, Any], num_bins: int = 4) -> str | None:
    """Markdown table of the mean return after each step by quantile bin of a scalar task parameter.

    ``result`` is :func:`evaluate_adaptation`'s output. Shows where the average comes from
    (e.g. which goal velocities adapt well). A parameter with at most ``num_bins`` distinct
    values (a goal direction) gets one row per value. ``None`` when the tasks are not
    described by a single scalar (2D navigation goals).
    """
    tasks = result.get("tasks", [])
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    if not tasks or any(len(t) != 1 for t in tasks) or len({k for t in tasks for k in t}) != 1:
        return None
    key = next(iter(tasks[0]))
    values = np.array([t[key] for t in tasks], dtype=np.float64)
    per_task = np.asarray(result["per_task"], dtype=np.float64)  # [steps, tasks]
    unique = np.unique(values)
    if unique.size <= num_bins:  # discrete parameter (goal direction): one row per value
        groups = [np.flatnonzero(values == u) for u in unique]
    else:
        groups = np.array_split(np.argsort(values, kind="stable"), min(num_bins, values.size))
    header = "| " + key + " | tasks | " + " | ".join(f"{k} steps" for k in range(per_task.shape[0])) + " |"
    lines = [header, "|---" * (per_task.shape[0] + 2) + "|"]
    for chunk in groups:
        cells = " | ".join(f"{per_task[k, chunk].mean():.2f}" for k in range(per_task.shape[0]))
        lines.append(f"| {values[chunk].min():.2f} to {values[chunk].max():.2f} | {chunk.size} | {cells} |")
    return "\n".join(lines)
