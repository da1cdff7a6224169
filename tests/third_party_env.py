"""Third-party task envs, as in the README's 'Add your own task env' section (no native vector form).

Named in configs as ``tests.third_party_env:thirdparty/GoalPoint1D-v0`` (module prefix: metarl
imports this module, which registers the envs). Their task values are numpy arrays, not
numbers, to check that every command copes with array-valued tasks.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

GOAL_POINT = "tests.third_party_env:thirdparty/GoalPoint1D-v0"
LABELLED_GOAL_POINT = "tests.third_party_env:thirdparty/LabelledGoalPoint1D-v0"


class GoalPoint1D(gymnasium.Env):
    """A point on a line moving toward a goal ~ U[-1, 1]; reward = -|x - goal|.

    The task is array-valued: ``{"goal": np.array([g])}``.
    """

    metadata = {"render_modes": []}

    def __init__(self) -> None:
        self.observation_space = spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.action_space = spaces.Box(-1, 1, (1,), np.float32)
        self.task: dict[str, Any] = {"goal": np.zeros(1)}
        self.x = 0.0

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
        """``n`` goals ~ U[-1, 1], each a one-element array."""
        return [{"goal": np.array([g])} for g in rng.uniform(-1, 1, n)]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Start at the origin."""
        super().reset(seed=seed)
        self.x = 0.0
        return np.array([self.x], np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Move by the action, clipped to [-0.1, 0.1]."""
        self.x += float(np.clip(action[0], -0.1, 0.1))
        goal = float(np.asarray(self.task["goal"]).reshape(-1)[0])
        return np.array([self.x], np.float32), -abs(self.x - goal), False, False, {}


class LabelledGoalPoint1D(GoalPoint1D):
    """:class:`GoalPoint1D` whose tasks also carry a string label: it trains, but has no oracle view."""

    def __init__(self) -> None:
        super().__init__()
        self.task = {"goal": np.zeros(1), "label": "near"}

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
        """Goals as :class:`GoalPoint1D`'s, labelled ``near`` (|goal| < 0.5) or ``far``."""
        return [{**t, "label": "near" if abs(t["goal"][0]) < 0.5 else "far"} for t in super().sample_tasks(n, rng)]


for _name in ("GoalPoint1D", "LabelledGoalPoint1D"):
    if f"thirdparty/{_name}-v0" not in gymnasium.registry:
        gymnasium.register(f"thirdparty/{_name}-v0", entry_point=f"{__name__}:{_name}", max_episode_steps=50)
