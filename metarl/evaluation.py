"""Few-shot evaluation: return after 0..k inner steps on fresh tasks (the MAML paper's protocol), and its tables."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from numbers import Real
from typing import Any

import numpy as np
import torch

from metarl.algorithms import InnerRule, with_rule
from metarl.build import adaptation_settings, make_sampler, task_env
from metarl.config import Config
from metarl.maml import sample_meta_batch
from metarl.policy import GaussianMLPPolicy

METRIC_NAMES = {"mean_return": "return", "mse": "MSE", "accuracy": "accuracy", "success_rate": "success rate"}
"""How a result key is named in tables and figures."""

MISSING = "–"
"""The cell of a step a method was not evaluated at (an oracle is evaluated at step 0 only)."""


def mean_ci95(values: np.ndarray | Sequence[float]) -> tuple[float, float]:
    """Mean and 95% confidence half-width (normal approximation, 1.96 standard errors)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        return float(values.mean()), float("nan")
    return float(values.mean()), float(1.96 * values.std(ddof=1) / math.sqrt(values.size))


def steps_label(k: int) -> str:
    """``0 steps``, ``1 step``, ``2 steps``."""
    return f"{k} step" if k == 1 else f"{k} steps"


def metric_name(key: str) -> str:
    """The readable name of a result key: ``mean_return`` -> ``return``, ``mse`` -> ``MSE``."""
    return METRIC_NAMES.get(key, key)


def evaluate_adaptation(
    policy: GaussianMLPPolicy,
    config: Config,
    num_tasks: int | None = None,
    num_steps: int | None = None,
    episodes_per_step: int | None = None,
    seed: int | None = None,
    inner_lr: float | None = None,
    rule: InnerRule | None = None,
) -> dict[str, Any]:
    """Adapt ``policy`` on fresh seeded tasks with 0..k inner steps (alpha, then alpha/2) and measure returns.

    ``rule`` (a checkpoint's :func:`metarl.algorithms.checkpoint_inner_rule`) adapts only its
    parameters (ANIL) and with its learned step sizes at every step (Meta-SGD); ``None``: every
    parameter, with the protocol's alpha, alpha/2.

    Returns ``{"steps": [{"step": k, "mean_return": x, "ci95": h}, ...], "per_task": [[...], ...],
    "tasks": [...]}``, where the confidence interval is over tasks (each task's return averaged
    over its episodes) and ``per_task[k][i]`` is task ``tasks[i]``'s return after ``k`` steps.
    When the env reports ``info["success"]`` (Meta-World), each step also has ``success_rate``
    and ``success_ci95`` (an episode succeeds if any of its steps does; the rate is averaged
    over a task's episodes, the CI is over tasks) and ``per_task_success`` is set like ``per_task``.
    Steps ``k >= 1`` also carry the paired gain over no adaptation, ``return_gain`` ±
    ``return_gain_ci95`` (and ``success_gain`` ± ``success_gain_ci95``): the mean over tasks of
    each task's value after ``k`` steps minus its value before, with the CI of those differences.
    Task values are kept as the env gives them (numbers, numpy arrays, lists, strings); write
    the result with :func:`metarl.reporting.write_json`. Arguments left as ``None`` come from
    ``config.eval`` / ``config.maml``.
    """
    e = config.eval
    num_tasks = e.num_tasks if num_tasks is None else num_tasks
    num_steps = e.num_steps if num_steps is None else num_steps
    episodes = e.episodes_per_step if episodes_per_step is None else episodes_per_step
    seed = e.seed if seed is None else seed
    lr = config.maml.inner_lr if inner_lr is None else inner_lr
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    tasks = task_env(config).unwrapped.sample_tasks(num_tasks, rng)  # type: ignore[attr-defined]
    sampler = make_sampler(config, num_tasks, episodes)
    adaptation = dataclasses.replace(adaptation_settings(config.maml), inner_lr=lr)
    if rule is not None:
        adaptation = with_rule(adaptation, rule)
    try:
        batch, _ = sample_meta_batch(
            sampler,
            policy,
            policy.params(),
            tasks,
            adaptation,
            rng,
            generator,
            lrs=adaptation.lrs(num_steps, decay_after_first=True),
        )
    finally:
        sampler.close()
    sets = [*batch.train, batch.valid]
    per_task = [ep.episode_returns().mean(1).double().numpy() for ep in sets]
    successes = [ep.episode_success() for ep in sets]
    per_task_success = [None if s is None else s.double().mean(1).numpy() for s in successes]
    steps = []
    for k, (returns, success, step_set) in enumerate(zip(per_task, per_task_success, sets, strict=True)):
        mean, ci = mean_ci95(returns)
        lengths = step_set.mask.sum(0)
        early = (lengths < step_set.mask.shape[0]).double().mean().item()
        step: dict[str, Any] = {
            "step": k,
            "mean_return": mean,
            "ci95": ci,
            "mean_length": lengths.mean().item(),
            "terminated_early": early,
        }
        if k > 0:  # paired over tasks: each task's gain over its own return before adaptation
            step["return_gain"], step["return_gain_ci95"] = mean_ci95(returns - per_task[0])
        if success is not None:
            step["success_rate"], step["success_ci95"] = mean_ci95(success)
            before = per_task_success[0]
            if k > 0 and before is not None:
                step["success_gain"], step["success_gain_ci95"] = mean_ci95(success - before)
        steps.append(step)
    extra: dict[str, Any] = {}
    if all(s is not None for s in per_task_success):
        extra["per_task_success"] = [s.tolist() for s in per_task_success if s is not None]
    return {
        "steps": steps,
        "per_task": [r.tolist() for r in per_task],
        **extra,
        "tasks": [dict(t) for t in tasks],
        "num_tasks": num_tasks,
        "episodes_per_step": episodes,
        "inner_lr": lr,
        "seed": seed,
    }


def markdown_table(
    results: Mapping[str, Mapping[str, Any]], key: str = "mean_return", digits: int = 2, ci_key: str = "ci95"
) -> str:
    """Markdown table of ``key`` ± 95% CI (``ci_key``) over tasks after each inner step, one row per method.

    ``key`` is ``"mean_return"`` (RL), ``"success_rate"`` (with ``ci_key="success_ci95"``),
    ``"mse"`` or ``"accuracy"`` (supervised); the first
    header cell names it, e.g. ``method (mean MSE ± 95% CI over tasks)``. The columns are every
    step any method was evaluated at; a method evaluated at fewer steps (an oracle, evaluated
    without adaptation at step 0 only) shows ``–`` in the other columns instead of repeating
    its number.
    """
    if not results:
        raise ValueError("markdown_table needs at least one method")
    steps = sorted({int(s["step"]) for r in results.values() for s in r["steps"]})
    header = f"| method (mean {metric_name(key)} ± 95% CI over tasks) | " + " | ".join(map(steps_label, steps)) + " |"
    lines = [header, "|---" * (len(steps) + 1) + "|"]
    for name, result in results.items():
        by_step = {int(s["step"]): s for s in result["steps"]}
        cells = [
            f"{by_step[k][key]:.{digits}f} ± {by_step[k][ci_key]:.{digits}f}" if k in by_step else MISSING
            for k in steps
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gain_lines(result: Mapping[str, Any]) -> str:
    """One line per inner step ``k >= 1``: the paired gain over no adaptation (return, and success where
    reported), mean ± 95% CI over tasks of each task's own difference."""
    lines = ["Gain over no adaptation (mean ± 95% CI over tasks of each task's difference):", ""]
    for step in result["steps"][1:]:
        gain, ci = step["return_gain"], step["return_gain_ci95"]
        line = f"- after {steps_label(int(step['step']))}: return {gain:+.2f} ± {ci:.2f}"
        if "success_gain" in step:
            line += f"; success rate {step['success_gain']:+.3f} ± {step['success_gain_ci95']:.3f}"
        lines.append(line)
    return "\n".join(lines)


def is_scalar_value(value: Any) -> bool:
    """Whether a task value is one number or one string (a category): not an array, list or mapping."""
    if isinstance(value, (str, bytes)):
        return True
    if isinstance(value, np.ndarray):
        return value.ndim == 0
    if isinstance(value, np.generic):
        return not np.iscomplexobj(value)
    return isinstance(value, Real)


def describe_value(value: Any) -> str:
    """A short description of a task value's kind: ``an array of shape (2,)``, ``a list of 3 values``."""
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape}"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} values"
    return f"a {type(value).__name__}"


def returns_by_task_parameter(result: Mapping[str, Any], num_bins: int = 4) -> str | None:
    """Markdown table of the mean return after each step by the value of a one-parameter task.

    ``result`` is :func:`evaluate_adaptation`'s output. Shows where the average comes from
    (e.g. which goal velocities adapt well). A numeric parameter is split into ``num_bins``
    quantile bins, or one row per value when it takes at most ``num_bins`` values (a goal
    direction); a string parameter gets one row per value. When the parameter is not a scalar
    (a numpy array or list, e.g. a 2-D goal vector), returns a one-line note saying so instead
    of a table. ``None`` when there is no single parameter to tabulate (no tasks, or tasks with
    several parameters such as 2D navigation's ``goal_x``/``goal_y``).
    """
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    tasks = result.get("tasks", [])
    if not tasks or any(len(t) != 1 for t in tasks) or len({k for t in tasks for k in t}) != 1:
        return None
    key = next(iter(tasks[0]))
    raw = [t[key] for t in tasks]
    not_scalar = next((v for v in raw if not is_scalar_value(v)), None)
    if not_scalar is not None:
        return (
            f"(no table by task parameter: {key!r} is {describe_value(not_scalar)}, not a scalar; "
            "only scalar task parameters are tabulated)"
        )
    per_task = np.asarray(result["per_task"], dtype=np.float64)  # [steps, tasks]
    if any(isinstance(v, (str, bytes)) for v in raw):
        labels = [str(v) for v in raw]
        groups = [np.flatnonzero(np.array([lab == u for lab in labels])) for u in sorted(set(labels))]
        names = [labels[g[0]] for g in groups]
    else:
        values = np.array([float(v) for v in raw], dtype=np.float64)
        unique = np.unique(values)
        if unique.size <= num_bins:  # discrete parameter (goal direction): one row per value
            groups = [np.flatnonzero(values == u) for u in unique]
        else:
            groups = np.array_split(np.argsort(values, kind="stable"), min(num_bins, values.size))
        names = [f"{values[g].min():.2f} to {values[g].max():.2f}" for g in groups]
    num_steps = per_task.shape[0]
    header = f"| {key} | tasks | " + " | ".join(steps_label(k) for k in range(num_steps)) + " |"
    lines = [header, "|---" * (num_steps + 2) + "|"]
    for name, chunk in zip(names, groups):
        cells = " | ".join(f"{per_task[k, chunk].mean():.2f}" for k in range(num_steps))
        lines.append(f"| {name} | {chunk.size} | {cells} |")
    return "\n".join(lines)


def success_by_skill(result: Mapping[str, Any]) -> str | None:
    """Markdown table of the success rate and return after each step, one row per skill (Meta-World ML10).

    ``result`` is :func:`evaluate_adaptation`'s output. ``None`` unless the tasks name a
    ``skill``, at least two skills are present and the env reported success.
    """
    tasks = result.get("tasks", [])
    if "per_task_success" not in result or not tasks or any("skill" not in t for t in tasks):
        return None
    skills = [str(t["skill"]) for t in tasks]
    names = sorted(set(skills))
    if len(names) < 2:
        return None
    success = np.asarray(result["per_task_success"], dtype=np.float64)  # [steps, tasks]
    returns = np.asarray(result["per_task"], dtype=np.float64)
    num_steps = success.shape[0]
    header = (
        "| skill | tasks | "
        + " | ".join(f"success {steps_label(k)}" for k in range(num_steps))
        + " | "
        + " | ".join(f"return {steps_label(k)}" for k in range(num_steps))
        + " |"
    )
    lines = [header, "|---" * (2 * num_steps + 2) + "|"]
    for name in names:
        chunk = np.flatnonzero(np.array([s == name for s in skills]))
        cells = [f"{success[k, chunk].mean():.2f}" for k in range(num_steps)]
        cells += [f"{returns[k, chunk].mean():.1f}" for k in range(num_steps)]
        lines.append(f"| {name} | {chunk.size} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
