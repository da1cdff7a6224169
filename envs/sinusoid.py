"""Sinusoid regression (Finn et al. 2017, section 5.1) as one-step episodes.

A task is a sinusoid ``y = A sin(x + phi)`` with amplitude ``A ~ U[0.1, 5]`` and phase
``phi ~ U[0, pi]``. Each episode is ONE step: the observation is an input ``x ~ U[-5, 5]``
(shape ``(1,)``, drawn from the env's ``np_random`` at reset), the action is the prediction
(shape ``(1,)``), the reward is ``-(action - A sin(x + phi))^2`` and the episode terminates.
The target is reported in ``info["target"]``. ``K`` shots of a task are ``K`` one-step
episodes of it.

The action space is a Box of ``±action_bound`` (default 10, twice the largest amplitude) so
that gymnasium's checks and samplers have finite bounds; actions are *not* clipped: a
prediction is scored as given, so the reward is exactly minus the squared error.

The target is computed from the observation the agent sees (the float32 ``x``, promoted to
float64), so the reward is a function of ``(observation, action)``. For supervised MAML,
:meth:`SinusoidEnv.sample_points` draws whole support/query sets for many tasks at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from metarl.envs.base import Task, TaskVectorEnv, episode_seeds


def task_arrays(tasks: Sequence[Task]) -> tuple[np.ndarray, np.ndarray]:
    """Amplitudes and phases of ``tasks`` as float64 arrays ``[n]``."""
    try:
        amplitude = np.array([t["amplitude"] for t in tasks], dtype=np.float64)
        phase = np.array([t["phase"] for t in tasks], dtype=np.float64)
    except KeyError as exc:
        raise ValueError(f"a sinusoid task needs the keys 'amplitude' and 'phase', missing {exc}") from exc
    return amplitude, phase


def sinusoid(x: np.ndarray, amplitude: np.ndarray | float, phase: np.ndarray | float) -> np.ndarray:
    """``amplitude * sin(x + phase)`` in float64 (broadcasting)."""
    return np.asarray(amplitude, dtype=np.float64) * np.sin(np.asarray(x, dtype=np.float64) + phase)


class SinusoidEnv(gymnasium.Env):
    """One-step sinusoid regression episodes implementing the task protocol."""

    metadata = {"render_modes": []}

    def __init__(
        self,
        amplitude_low: float = 0.1,
        amplitude_high: float = 5.0,
        phase_low: float = 0.0,
        phase_high: float = math.pi,
        x_low: float = -5.0,
        x_high: float = 5.0,
        action_bound: float = 10.0,
    ) -> None:
        for name, low, high in (
            ("amplitude", amplitude_low, amplitude_high),
            ("phase", phase_low, phase_high),
            ("x", x_low, x_high),
        ):
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise ValueError(f"{name}_low ({low}) must be < {name}_high ({high}), both finite")
        if amplitude_low < 0:
            raise ValueError(f"amplitude_low must be >= 0, got {amplitude_low}")
        if not action_bound >= amplitude_high:
            raise ValueError(
                f"action_bound ({action_bound}) must be >= amplitude_high ({amplitude_high}) "
                "so that every target is a valid action"
            )
        self.amplitude_low, self.amplitude_high = float(amplitude_low), float(amplitude_high)
        self.phase_low, self.phase_high = float(phase_low), float(phase_high)
        self.x_low, self.x_high = float(x_low), float(x_high)
        self.action_bound = float(action_bound)
        self.observation_space = spaces.Box(self.x_low, self.x_high, shape=(1,), dtype=np.float32)
        self.action_space = spaces.Box(-self.action_bound, self.action_bound, shape=(1,), dtype=np.float32)
        self.task: Task = {"amplitude": 1.0, "phase": 0.0}
        self._x = np.zeros(1, dtype=np.float32)
        self._done = True

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[Task]:
        """Amplitudes ``U[amplitude_low, amplitude_high]``, then phases ``U[phase_low, phase_high]``."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        amplitudes = rng.uniform(self.amplitude_low, self.amplitude_high, size=n)
        phases = rng.uniform(self.phase_low, self.phase_high, size=n)
        return [{"amplitude": float(a), "phase": float(p)} for a, p in zip(amplitudes, phases)]

    def sample_inputs(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        """Inputs ``x ~ U[x_low, x_high]`` of the given shape, rounded to float32 as observations are (float64)."""
        return rng.uniform(self.x_low, self.x_high, size=shape).astype(np.float32).astype(np.float64)

    def sample_points(
        self, tasks: Sequence[Task], num_points: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """A regression set per task, vectorised: ``x [n, num_points, 1]`` and targets ``y`` (float64)."""
        if num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {num_points}")
        amplitude, phase = task_arrays(tasks)
        x = self.sample_inputs(rng, (len(tasks), num_points, 1))
        return x, sinusoid(x, amplitude[:, None, None], phase[:, None, None])

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._x = self.np_random.uniform(self.x_low, self.x_high, size=(1,)).astype(np.float32)
        self._done = False
        return self._x.copy(), {}

    def step(self, action):
        if self._done:
            raise RuntimeError("SinusoidEnv.step: the one-step episode is over (or never started); call reset()")
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (1,):
            raise ValueError(f"action must have one element, got shape {np.shape(action)}")
        target = sinusoid(self._x, self.task["amplitude"], self.task["phase"])
        reward = -float(np.square(action - target).sum())
        self._done = True
        return self._x.copy(), reward, True, False, {"target": float(target[0])}


class SinusoidVectorEnv(TaskVectorEnv):
    """All one-step episodes of a meta-batch in one numpy call; same transitions as the single env.

    With seeds ``[s_0, ...]`` at reset, episode ``i`` draws its ``x`` exactly as the single env's
    ``reset(seed=s_i)`` does; without seeds, each episode continues its own generator.
    """

    def __init__(self, num_envs: int, max_episode_steps: int | None = None, **kwargs: Any) -> None:
        super().__init__(num_envs, SinusoidEnv(**kwargs), max_episode_steps)
        self._rngs: list[np.random.Generator | None] = [None] * num_envs
        self._x = np.zeros((num_envs, 1), dtype=np.float32)
        self._needs_reset = True

    def _apply_tasks(self, tasks: Sequence[Task]) -> None:
        amplitude, phase = task_arrays(tasks)
        self._amplitude, self._phase = amplitude[:, None], phase[:, None]

    def reset(self, *, seed: int | Sequence[int] | None = None, options: dict[str, Any] | None = None):
        """Draw one ``x`` per episode (seeded per episode as the single env)."""
        if options:
            raise ValueError(f"{type(self).__name__}.reset takes no options (it resets all episodes), got {options!r}")
        env = self.single_env.unwrapped
        for i, episode_seed in enumerate(episode_seeds(seed, self.num_envs)):
            rng = self._rngs[i]
            if episode_seed is not None or rng is None:
                rng, _ = seeding.np_random(episode_seed)
                self._rngs[i] = rng
            self._x[i] = rng.uniform(env.x_low, env.x_high, size=(1,))
        self._needs_reset = False
        return self._x.copy(), {}

    def step(self, actions):
        """Score every prediction ``actions [num_envs, 1]``; every episode terminates.

        Stepping again before a reset scores against the same targets (the sampler masks those steps).
        """
        if self._needs_reset:
            raise RuntimeError(f"{type(self).__name__}.step called before reset")
        actions = np.asarray(actions, dtype=np.float64)
        if actions.shape != (self.num_envs, 1):
            raise ValueError(f"actions must have shape {(self.num_envs, 1)}, got {actions.shape}")
        target = sinusoid(self._x, self._amplitude, self._phase)
        reward = -np.square(actions - target).sum(-1)
        terminated = np.ones(self.num_envs, dtype=bool)
        return self._x.copy(), reward, terminated, np.zeros(self.num_envs, dtype=bool), {"target": target[:, 0]}
