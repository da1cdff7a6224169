"""A third-party task env, as in the README's 'Add your own task env' section (no native vector form)."""

from __future__ import annotations

import gymnasium
import numpy as np
from gymnasium import spaces


class GoalPoint1D(gymnasium.Env):
    """A point on a line moving toward a goal ~ U[-1, 1]; reward = -|x - goal|."""

    def __init__(self) -> None:
        self.observation_space = spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.action_space = spaces.Box(-1, 1, (1,), np.float32)
        self.task = {"goal": 0.0}
        self.x = 0.0

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[dict[str, float]]:
        return [{"goal": float(g)} for g in rng.uniform(-1, 1, n)]

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = 0.0
        return np.array([self.x], np.float32), {}

    def step(self, action):
        self.x += float(np.clip(action[0], -0.1, 0.1))
        return np.array([self.x], np.float32), -abs(self.x - self.task["goal"]), False, False, {}


if "thirdparty/GoalPoint1D-v0" not in gymnasium.registry:
    gymnasium.register("thirdparty/GoalPoint1D-v0", entry_point=GoalPoint1D, max_episode_steps=50)
