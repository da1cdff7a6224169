"""The task protocol shared by every metarl task environment.

A *task env* is a plain :class:`gymnasium.Env` with two extra members:

* ``sample_tasks(n, rng) -> list[Task]``: draw ``n`` tasks from the task distribution
  using only the given :class:`numpy.random.Generator`;
* a settable ``task`` attribute; the next ``reset`` starts an episode of that task.

A *task vector env* (:class:`TaskVectorEnv`) is the natively vectorised form: one
:class:`gymnasium.vector.VectorEnv` stepping ``num_envs`` episodes, each with its own task,
in vectorised numpy. It does not auto-reset: the sampler resets it once per batch of
episodes and masks everything after an episode's termination. Per-episode tasks are set
through the vector API as for any gymnasium vector env: ``set_attr("task", tasks)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import gymnasium
import numpy as np
from gymnasium.vector import AutoresetMode

Task = Mapping[str, Any]
"""A task is a small mapping of named parameters, e.g. ``{"goal_x": 0.1, "goal_y": -0.3}``."""


@runtime_checkable
class TaskEnv(Protocol):
    """What the sampler and trainer need from a single (non-vectorised) task env."""

    task: Task

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[Task]:
        """Draw ``n`` tasks using only ``rng``."""
        ...


def check_task_env(env: gymnasium.Env) -> TaskEnv:
    """Return ``env.unwrapped`` if it implements the task protocol, else raise ``TypeError``."""
    inner = env.unwrapped
    if not callable(getattr(inner, "sample_tasks", None)) or not hasattr(inner, "task"):
        raise TypeError(
            f"environment {type(inner).__name__} does not implement the metarl task protocol: "
            "it needs a `sample_tasks(n, rng) -> list[task]` method and a settable `task` attribute "
            "(see README, 'Add your own task env')"
        )
    return inner  # type: ignore[return-value]


def episode_seeds(seed: int | Sequence[int] | None, num_envs: int) -> list[int | None]:
    """Expand a vector-env ``reset`` seed into one seed per sub-episode (gymnasium's convention)."""
    if seed is None:
        return [None] * num_envs
    if isinstance(seed, (int, np.integer)):
        return [int(seed) + i for i in range(num_envs)]
    seeds: list[int | None] = [int(s) for s in seed]
    if len(seeds) != num_envs:
        raise ValueError(f"expected {num_envs} seeds, got {len(seeds)}")
    return seeds


class TaskVectorEnv(gymnasium.vector.VectorEnv):
    """Base class of the natively vectorised task envs.

    Subclasses set ``single_observation_space``/``single_action_space`` (the batched spaces
    are derived here), implement :meth:`_apply_tasks` to turn the list of per-episode tasks
    into arrays, and implement ``reset``/``step`` on ``[num_envs, ...]`` arrays.
    """

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.DISABLED}

    def __init__(self, num_envs: int, single_env: gymnasium.Env, max_episode_steps: int | None = None) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.num_envs = num_envs
        self.single_env = single_env
        self.max_episode_steps = max_episode_steps  # informational: the sampler owns the horizon
        self.single_observation_space = single_env.observation_space
        self.single_action_space = single_env.action_space
        self.observation_space = gymnasium.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gymnasium.vector.utils.batch_space(self.single_action_space, num_envs)
        self.tasks: list[Task] = [single_env.unwrapped.task] * num_envs  # type: ignore[attr-defined]
        self._apply_tasks(self.tasks)

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[Task]:
        """Draw tasks from the same distribution as the single env."""
        return self.single_env.unwrapped.sample_tasks(n, rng)  # type: ignore[attr-defined]

    def set_attr(self, name: str, values: Any) -> None:
        """Set ``task`` per sub-episode (a list of ``num_envs`` tasks, or one task for all)."""
        if name != "task":
            raise AttributeError(f"{type(self).__name__} only supports set_attr('task', ...), not {name!r}")
        tasks = list(values) if isinstance(values, (list, tuple)) else [values] * self.num_envs
        if len(tasks) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} tasks, got {len(tasks)}")
        self.tasks = tasks
        self._apply_tasks(tasks)

    def _apply_tasks(self, tasks: Sequence[Task]) -> None:
        """Store the per-episode task parameters as arrays (subclass hook)."""
        raise NotImplementedError

    def close_extras(self, **kwargs: Any) -> None:
        """Close the single env used for spaces and task sampling."""
        self.single_env.close()
