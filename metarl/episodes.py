"""The padded, masked block of episodes that every stage of a meta-iteration consumes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Episodes:
    """``B`` episodes for each of ``n`` tasks, padded to the horizon ``T``.

    Every tensor is time-major ``[T, n, B, ...]``. ``mask`` is 1 while an episode runs and 0
    after it terminated; padded steps carry finite values that every consumer multiplies by
    the mask. ``returns`` and ``advantages`` are filled in by :func:`metarl.advantages.process`.
    """

    observations: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor
    returns: Tensor | None = None
    advantages: Tensor | None = None

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

    def subsample(self, episodes_per_task: int) -> Episodes:
        """The first ``episodes_per_task`` episodes of every task (a view, no copy)."""
        cut = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return Episodes(**{k: None if v is None else v[:, :, :episodes_per_task] for k, v in cut.items()})  # type: ignore[arg-type]

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
