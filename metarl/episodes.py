"""The padded, masked block of episodes that every stage of a meta-iteration consumes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class Episodes:
    """``B`` episodes for each of ``n`` tasks, padded to the horizon ``T``.

    Every tensor is time-major ``[T, n, B, ...]``. ``mask`` is 1 while an episode runs and 0
    after it terminated; padded steps carry finite values that every consumer multiplies by
    the mask. ``returns`` and ``advantages`` are filled in by :func:`metarl.advantages.process`.
    ``success`` is the env's ``info["success"]`` at each step (1 or 0; 0 on padded steps) when
    the env reports one (Meta-World), else ``None``.
    """

    observations: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor
    returns: Tensor | None = None
    advantages: Tensor | None = None
    success: Tensor | None = None

    @property
    def horizon(self) -> int:
        """``T``, the padded episode length."""
        return self.rewards.shape[0]

    @property
    def num_tasks(self) -> int:
        """``n``, the number of tasks."""
        return self.rewards.shape[1]

    @property
    def episodes_per_task(self) -> int:
        """``B``, the number of episodes per task."""
        return self.rewards.shape[2]

    @property
    def num_steps(self) -> int:
        """Number of valid (unmasked) environment steps."""
        return int(self.mask.sum().item())

    def episode_returns(self) -> Tensor:
        """Undiscounted return of every episode, ``[n, B]``."""
        return (self.rewards * self.mask).sum(0)

    def episode_success(self) -> Tensor | None:
        """Whether each episode succeeded at any of its steps (Meta-World's definition), ``[n, B]`` of 0/1;
        ``None`` when the env reports no success."""
        if self.success is None:
            return None
        return (self.success * self.mask).amax(0)

    def subsample(self, episodes_per_task: int) -> Episodes:
        """The first ``episodes_per_task`` episodes of every task (a view, no copy)."""
        cut = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return Episodes(**{k: None if v is None else v[:, :, :episodes_per_task] for k, v in cut.items()})  # type: ignore[arg-type]

    def tasks(self, index: slice) -> Episodes:
        """The episodes of the tasks ``index`` selects (a view along the task dimension, no copy)."""
        cut = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return Episodes(**{k: None if v is None else v[:, index] for k, v in cut.items()})  # type: ignore[arg-type]

    def task_major_storage(self) -> Episodes:
        """The same episodes (same shapes and values) stored task by task in memory.

        Every tensor is still indexed ``[T, n, B, ...]``, but is a transposed view of a
        contiguous ``[n, T, B, ...]`` block, so :func:`task_major` (and so every per-task
        forward) is a view instead of a copy, and a slice of tasks (:meth:`tasks`) is one
        contiguous block. Values are untouched: every computation gives the same result.
        """
        cut = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return Episodes(
            **{k: None if v is None else v.transpose(0, 1).contiguous().transpose(0, 1) for k, v in cut.items()}  # type: ignore[arg-type]
        )

    def to(self, device: torch.device) -> Episodes:
        """The episodes on ``device`` (themselves if already there); to CUDA through pinned memory, asynchronously."""
        cut = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if all(v is None or v.device == device for v in cut.values()):
            return self
        cuda = device.type == "cuda"
        return Episodes(
            **{
                k: None
                if v is None
                else (v.pin_memory() if cuda and v.device.type == "cpu" else v).to(device, non_blocking=cuda)
                for k, v in cut.items()
            }  # type: ignore[arg-type]
        )

    def require_advantages(self) -> Tensor:
        """The advantages; an error if :func:`metarl.advantages.process` has not attached them."""
        if self.advantages is None:
            raise ValueError("episodes have no advantages: run metarl.advantages.process first")
        return self.advantages

    def with_advantages(self, returns: Tensor, advantages: Tensor) -> Episodes:
        """A copy with discounted returns and advantages attached."""
        return dataclasses.replace(self, returns=returns, advantages=advantages)


def task_major(x: Tensor) -> Tensor:
    """``[T, n, B, ...] -> [n, T*B, ...]``: one row of samples per task, for stacked-parameter forwards."""
    t, n, b = x.shape[:3]
    return x.transpose(0, 1).reshape(n, t * b, *x.shape[3:])


def masked_task_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over the valid samples of each task; ``x`` and ``mask`` are ``[n, M]``."""
    return (x * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def stack_time(steps: list[Tensor]) -> Tensor:
    """Stack per-step tensors ``[n, B, ...]`` into ``[T, n, B, ...]``."""
    return torch.stack(steps, 0)


class OnDevice:
    """A sampler whose episodes arrive on the learner's device.

    Sampling stays on the CPU: the policy module and the parameters the sampler is given are
    replaced by the CPU policy and CPU copies of the parameters (a handful of tensors), and
    each sampling's episodes are moved to ``device`` once (:meth:`Episodes.to`). Everything
    else (``collect_seconds``, ``close``, ...) is the wrapped sampler's.
    """

    def __init__(self, sampler: Any, device: torch.device, cpu_policy: Any) -> None:
        self.sampler = sampler
        self.device = device
        self.cpu_policy = cpu_policy

    def collect(self, policy: Any, params: dict[str, Tensor], *args: Any, **kwargs: Any) -> Episodes:
        """Sample on the CPU with CPU copies of ``params``; return the episodes on the device."""
        cpu = {k: v.detach().to("cpu") for k, v in params.items()}
        episodes: Episodes = self.sampler.collect(self.cpu_policy, cpu, *args, **kwargs)
        return episodes.to(self.device)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sampler, name)
