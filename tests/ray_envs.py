"""Test envs for the Ray backend: 2D navigation that can be slowed down, mark its progress, or raise.

Registered as ``metarl_test/Navigation-v0`` without a native vector form, so the Ray actors
drive it through gymnasium's ``SyncVectorEnv``. Named ``tests.ray_envs:metarl_test/Navigation-v0``
in a config or sampler (actors import the module themselves). With default kwargs it is
2D navigation exactly.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
from metarl.envs.navigation import Navigation2DEnv

ENV_ID = "tests.ray_envs:metarl_test/Navigation-v0"


class FaultyNavigation(Navigation2DEnv):
    """2D navigation that sleeps ``step_delay`` s per step, writes ``marker_dir/<pid>`` at step ``mark_step``,
    and raises at step ``fail_step`` while the count in ``fail_file`` is below ``fail_times`` (then counts it).
    With ``success_radius`` it reports ``info["success"]`` (as Meta-World does): 1.0 while the point is
    within that distance of the goal (the reward is minus the distance), else 0.0."""

    def __init__(
        self,
        step_delay: float = 0.0,
        marker_dir: str | None = None,
        mark_step: int = 2,
        fail_file: str | None = None,
        fail_times: int = 0,
        fail_step: int = 3,
        success_radius: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.success_radius = success_radius
        self.step_delay, self.marker_dir, self.mark_step = step_delay, marker_dir, mark_step
        self.fail_file, self.fail_times, self.fail_step = fail_file, fail_times, fail_step
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        """Reset (and the step counter)."""
        self.t = 0
        return super().reset(seed=seed, options=options)

    def _count_failure(self) -> int | None:
        """Under an exclusive lock (actors step concurrently), add one to the count in ``fail_file``
        and return it if it is still within ``fail_times``; else return None."""
        assert self.fail_file is not None
        with open(self.fail_file, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.seek(0)
            text = handle.read()
            count = int(text) if text else 0
            if count >= self.fail_times:
                return None
            handle.seek(0)
            handle.truncate()
            handle.write(str(count + 1))
            return count + 1

    def step(self, action: np.ndarray) -> Any:
        """Step, with the configured delay, marker and injected failure."""
        self.t += 1
        if self.fail_file is not None and self.t == self.fail_step:
            count = self._count_failure()
            if count is not None:
                raise RuntimeError(f"injected failure {count}")
        if self.marker_dir is not None and self.t == self.mark_step:
            Path(self.marker_dir, str(os.getpid())).touch()
        if self.step_delay:
            time.sleep(self.step_delay)
        obs, reward, terminated, truncated, info = super().step(action)
        if self.success_radius is not None:
            info["success"] = float(info["distance"] < self.success_radius)
        return obs, reward, terminated, truncated, info


if "metarl_test/Navigation-v0" not in gymnasium.registry:
    gymnasium.register("metarl_test/Navigation-v0", entry_point=FaultyNavigation, max_episode_steps=100)
