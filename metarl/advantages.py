"""Discounted returns, GAE and the linear feature baseline, batched over tasks and episodes."""

from __future__ import annotations

import torch
from torch import Tensor

from metarl.episodes import Episodes


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """``G_t = r_t + gamma * G_{t+1}`` over valid steps; ``[T, ...]`` in, ``[T, ...]`` out."""
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = (rewards[t] + gamma * running) * mask[t]
        returns[t] = running
    return returns


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> Tensor:
    """Generalised advantage estimation (Schulman et al. 2016) with masks.

    ``values[t]`` is the baseline at step ``t``; the value after the last valid step of an
    episode (termination or horizon) is taken as 0. All tensors are ``[T, ...]``.
    """
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    next_value = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        delta = rewards[t] + gamma * next_value - values[t]
        running = (delta + gamma * lam * running) * mask[t]
        advantages[t] = running
        next_value = values[t] * mask[t]
    return advantages


def baseline_features(observations: Tensor, mask: Tensor) -> Tensor:
    """Duan et al. (2016) features ``[o, o^2, t/100, (t/100)^2, (t/100)^3, 1]``, masked; ``[T, n, B, F]``."""
    horizon = observations.shape[0]
    obs = observations.clamp(-10.0, 10.0)
    t = (torch.arange(horizon, dtype=obs.dtype, device=obs.device) / 100.0).view(horizon, 1, 1, 1)
    t = t.expand(*obs.shape[:3], 1)
    ones = torch.ones_like(t)
    features = torch.cat([obs, obs.pow(2), t, t.pow(2), t.pow(3), ones], dim=-1)
    return features * mask.unsqueeze(-1)


BASELINE_CHUNK_BYTES = 1 << 21
"""Target size of one chunk of tasks' baseline features (float64): they stay in the CPU's cache."""


def _task_features(observations: Tensor, mask: Tensor, out: Tensor) -> Tensor:
    """:func:`baseline_features` of ``[T, c, B, ...]`` episodes, task-major, into ``out`` (``[c, T*B, F]``, float64)."""
    obs = observations.double().transpose(0, 1)  # [c, T, B, O]
    c, horizon, b = obs.shape[:3]
    obs = obs.clamp(-10.0, 10.0)
    t = (torch.arange(horizon, dtype=obs.dtype, device=obs.device) / 100.0).view(1, horizon, 1, 1)
    t = t.expand(c, horizon, b, 1)
    ones = torch.ones_like(t)
    features = out.view(c, horizon, b, -1)
    torch.cat([obs, obs.pow(2), t, t.pow(2), t.pow(3), ones], dim=-1, out=features)
    features.mul_(mask.double().transpose(0, 1).unsqueeze(-1))
    return out


def linear_feature_baseline(
    observations: Tensor, returns: Tensor, mask: Tensor, reg_coeff: float = 1e-5, max_tries: int = 5
) -> Tensor:
    """Fit one ridge regression of returns on :func:`baseline_features` per task; return the fitted values.

    All tasks are solved in one batched Cholesky solve in float64. The ridge term makes the
    normal equations positive definite even when features are rank deficient (e.g. constant
    observations); if the factorisation still fails numerically (not positive definite in
    floating point, or a non-finite solution), the ridge grows x10 (``max_tries`` times).
    The features and their Gram matrices are built a few tasks at a time, in the CPU's cache,
    straight into a task-major block; every number is the one the whole-batch computation gives.
    """
    horizon, n, b = returns.shape[:3]
    f = 2 * observations.shape[-1] + 4
    x = torch.empty(n, horizon * b, f, dtype=torch.float64, device=observations.device)
    size = max(1, min(n, BASELINE_CHUNK_BYTES // (horizon * b * f * 8)))
    grams = []
    for start in range(0, n, size):
        index = slice(start, min(n, start + size))
        chunk = _task_features(observations[:, index], mask[:, index], x[index])
        grams.append(torch.bmm(chunk.transpose(1, 2), chunk))  # bmm even for one task: the whole batch's kernel
    gram = torch.cat(grams)
    y = (returns.double() * mask.double()).transpose(0, 1).reshape(n, horizon * b, 1)
    rhs = x.transpose(1, 2) @ y
    eye = torch.eye(f, dtype=gram.dtype, device=gram.device)
    reg = reg_coeff
    for _ in range(max_tries):
        factor, info = torch.linalg.cholesky_ex(gram + reg * eye)  # symmetric positive definite
        weights = torch.cholesky_solve(rhs, factor)
        if not info.any() and torch.isfinite(weights).all():
            break
        reg *= 10.0
    else:
        raise FloatingPointError(
            "the linear feature baseline has no finite solution (returns or observations overflow: "
            f"largest |return| {returns.abs().max().item():.3g}); the policy diverged?"
        )
    values = (x @ weights).reshape(n, horizon, b).transpose(0, 1)
    return values.to(returns.dtype) * mask


def normalize_per_task(advantages: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """Standardise advantages to zero mean, unit std over the valid steps of each task (``[T, n, B]``)."""
    count = mask.sum((0, 2), keepdim=True).clamp_min(1.0)
    mean = (advantages * mask).sum((0, 2), keepdim=True) / count
    var = ((advantages - mean).pow(2) * mask).sum((0, 2), keepdim=True) / count
    return (advantages - mean) / (var.sqrt() + eps) * mask


def process(episodes: Episodes, gamma: float, gae_lambda: float, normalize: bool) -> Episodes:
    """Attach discounted returns and (optionally normalised) GAE advantages with a per-task linear baseline."""
    returns = discounted_returns(episodes.rewards, episodes.mask, gamma)
    _check_finite("discounted returns", returns)
    values = linear_feature_baseline(episodes.observations, returns, episodes.mask)
    advantages = gae(episodes.rewards, values, episodes.mask, gamma, gae_lambda)
    if normalize:
        advantages = normalize_per_task(advantages, episodes.mask)
    _check_finite("advantages", advantages)
    return episodes.with_advantages(returns, advantages)


def _check_finite(name: str, value: Tensor) -> None:
    """Raise :class:`FloatingPointError` naming ``name`` if ``value`` holds a NaN or inf."""
    if not torch.isfinite(value).all():
        raise FloatingPointError(f"{name} are not finite (rewards overflow?)")
