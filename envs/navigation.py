"""2D navigation (Finn et al. 2017, section 5.3): a point moves to a goal sampled per task.

Observation: the agent's position (2,). Action: a velocity, clipped to [-0.1, 0.1]^2; with
``normalized_actions=True`` the action lives in [-1, 1]^2 and the velocity is
``0.1 * clip(action, -1, 1)``, which is what the MAML paper's code ran (rllab's ``normalize``
wrapper around ``PointEnvRandGoal``): the policy's unit initial std is then 0.1 in velocity
units instead of ten times the largest velocity.
The episode starts at the origin; the reward is minus the Euclidean distance between the
new position and the goal. Goals ~ U[-0.5, 0.5]^2. As in the reference implementations
(rllab's ``PointEnvRandGoal`` used by the MAML paper, and pytorch-maml-rl), the episode
terminates when the agent is within ``goal_tolerance`` of the goal in both coordinates
(``goal_tolerance=0`` disables termination). The horizon (100 in the paper) is set by the
sampler / ``max_episode_steps``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces
from metarl.envs.base import Task, TaskVectorEnv


class Navigation2DEnv(gymnasium.Env):
    """Single-episode 2D navigation env implementing the task protocol."""

    metadata = {"render_modes": []}

    def __init__(
        self,
        goal_low: float = -0.5,
        goal_high: float = 0.5,
        max_action: float = 0.1,
        goal_tolerance: float = 0.01,
        normalized_actions: bool = False,
    ) -> None:
        if goal_tolerance < 0:
            raise ValueError(f"goal_tolerance must be >= 0, got {goal_tolerance}")
        if not goal_low < goal_high:
            raise ValueError(f"goal_low ({goal_low}) must be < goal_high ({goal_high})")
        if max_action <= 0:
            raise ValueError(f"max_action must be > 0, got {max_action}")
        self.goal_low = goal_low
        self.goal_high = goal_high
        self.max_action = max_action
        self.goal_tolerance = goal_tolerance
        self.normalized_actions = normalized_actions
        bound = 1.0 if normalized_actions else max_action
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Box(-bound, bound, shape=(2,), dtype=np.float32)
        self.task: Task = {"goal_x": 0.0, "goal_y": 0.0}
        self._position = np.zeros(2, dtype=np.float64)

    def velocity(self, action: np.ndarray) -> np.ndarray:
        """The velocity an action (or a ``[..., 2]`` batch of actions) moves the point by: clipped, scaled."""
        action = np.asarray(action, dtype=np.float64)
        if self.normalized_actions:
            return self.max_action * np.clip(action, -1.0, 1.0)
        return np.clip(action, -self.max_action, self.max_action)

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[Task]:
        """Goals uniformly in the square [goal_low, goal_high]^2."""
        goals = rng.uniform(self.goal_low, self.goal_high, size=(n, 2))
        return [{"goal_x": float(x), "goal_y": float(y)} for x, y in goals]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._position = np.zeros(2, dtype=np.float64)
        return self._position.astype(np.float32), {}

    def step(self, action):
        self._position = self._position + self.velocity(action)
        goal = np.array([self.task["goal_x"], self.task["goal_y"]])
        distance = float(np.linalg.norm(self._position - goal))
        terminated = bool(np.all(np.abs(self._position - goal) < self.goal_tolerance))
        return self._position.astype(np.float32), -distance, terminated, False, {"distance": distance}


class Navigation2DVectorEnv(TaskVectorEnv):
    """All episodes of a meta-batch stepped in one numpy call; same transitions as the single env."""

    def __init__(self, num_envs: int, max_episode_steps: int | None = None, **kwargs: Any) -> None:
        super().__init__(num_envs, Navigation2DEnv(**kwargs), max_episode_steps)
        self.goal_tolerance = self.single_env.goal_tolerance
        self._position = np.zeros((num_envs, 2), dtype=np.float64)

    def _apply_tasks(self, tasks: Sequence[Task]) -> None:
        self._goals = np.array([[t["goal_x"], t["goal_y"]] for t in tasks], dtype=np.float64)

    def reset(self, *, seed: int | Sequence[int] | None = None, options: dict[str, Any] | None = None):
        self._position = np.zeros((self.num_envs, 2), dtype=np.float64)
        return self._position.astype(np.float32), {}

    def step(self, actions):
        self._position = self._position + self.single_env.velocity(actions)
        distance = np.linalg.norm(self._position - self._goals, axis=-1)
        terminated = np.all(np.abs(self._position - self._goals) < self.goal_tolerance, axis=-1)
        truncated = np.zeros(self.num_envs, dtype=bool)
        return self._position.astype(np.float32), -distance, terminated, truncated, {"distance": distance}
