"""Meta-World (metaworld 3.x, v3 tasks) as metarl task envs: ML1 (one skill, goal positions as tasks) and ML10.

Meta-World is an optional extra (``pip install -e '.[metaworld]'`` and ``pip install --no-deps
metaworld==3.1.1``, see the README): this module imports ``metaworld`` only when an env is built.

**Tasks.** A benchmark (``metaworld.ML1(skill, seed)`` or ``metaworld.ML10(seed)``) fixes, for its
``benchmark_seed``, 50 goal configurations per skill for training and 50 for testing (ML1: the
same skill with other goals; ML10: 10 training skills and 5 held-out test skills).
:meth:`MetaWorldEnv.sample_tasks` draws from the train or test set (``split``) with the given
numpy Generator only. A task is ``{"skill": "reach-v3", "split": "train", "index": 17,
"goal": array([...])}``: the index into the benchmark's task list, with the goal vector
(Meta-World's ``rand_vec``) for tables and JSON (:func:`metarl.reporting.to_json`).

**MuJoCo 4.** metaworld 3.1.1 pins ``mujoco==3.3.0``; metarl runs on MuJoCo 4, whose weld
constraints have 12 numbers per ``eq_data`` row where 3.3 had 11. metaworld's
``reset_mocap_welds`` writes an 11-number row and fails while building any Sawyer env. Importing
this module's :func:`import_metaworld` replaces that one method with one that writes the same 11
numbers into the first 11 columns and leaves the 12th as MuJoCo compiled it
(:func:`patch_mocap_welds`). The patch checks that metaworld's method is the one it was written
for and stops with an error if metaworld changed it. ``tests/test_metaworld.py`` compares
transitions against ones recorded with the pinned set-up (mujoco 3.3.0): the goals and success
flags are identical and the observations agree to about 1e-3 over 150 random steps (MuJoCo 4's
solver, not the patch: padding with 0 or 1 gives identical transitions).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Literal

import gymnasium
import numpy as np
from gymnasium import spaces
from metarl.envs.base import Task

BENCHMARKS = ("ML1", "ML10")
"""The Meta-World benchmarks this module wraps."""

OBS_DIM, ACT_DIM = 39, 4
"""Every Sawyer v3 env: 39-dim observations (goal hidden in ML benchmarks), 4-dim actions in [-1, 1]."""

PATCHED_METHOD_SHA256 = "8239815454fd030b4b758e3c3c36485a16039512e023826720bbf08552ebe36c"
"""sha256 of metaworld 3.1.1's ``SawyerMocapBase.reset_mocap_welds`` source (set from the installed
package; :func:`patch_mocap_welds` refuses to patch anything else)."""

WELD_ROW = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 5.0)
"""The 11 weld numbers metaworld writes: anchor, relative position, relative quaternion, torque scale."""


class MetaWorldUnavailable(ImportError):
    """metaworld is not installed, or not a version this module can run on this MuJoCo."""


def source_digest(function: Any) -> str:
    """sha256 of a function's source text (to notice a changed upstream method)."""
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()


def patch_mocap_welds(base: Any) -> bool:
    """Make metaworld's ``reset_mocap_welds`` fit MuJoCo >= 4's 12-wide ``eq_data`` rows; True if patched.

    Does nothing on a MuJoCo whose rows are 11 wide (metaworld's pinned 3.3.0). Raises
    :class:`MetaWorldUnavailable` if the method is not the one this patch was written for.
    """
    import mujoco

    if getattr(base.reset_mocap_welds, "_metarl_patched", False):
        return True
    if mujoco.mjNEQDATA == len(WELD_ROW):
        return False
    digest = source_digest(base.reset_mocap_welds)
    if digest != PATCHED_METHOD_SHA256:
        raise MetaWorldUnavailable(
            f"metaworld's SawyerMocapBase.reset_mocap_welds changed (source sha256 {digest[:12]}..., expected "
            f"{PATCHED_METHOD_SHA256[:12]}... from metaworld 3.1.1): metarl's MuJoCo {mujoco.__version__} "
            "compatibility patch was written for 3.1.1; check the new method and update envs/metaworld.py"
        )

    def reset_mocap_welds(self: Any) -> None:
        """Reset the mocap welds used for actuation (metaworld's values in the first 11 columns)."""
        if self.model.nmocap > 0 and self.model.eq_data is not None:
            for i in range(self.model.eq_data.shape[0]):
                if self.model.eq_type[i] == mujoco.mjtEq.mjEQ_WELD:
                    self.model.eq_data[i, : len(WELD_ROW)] = WELD_ROW

    reset_mocap_welds._metarl_patched = True  # type: ignore[attr-defined]
    base.reset_mocap_welds = reset_mocap_welds
    return True


def import_metaworld() -> Any:
    """The ``metaworld`` module with the MuJoCo 4 patch applied; :class:`MetaWorldUnavailable` if not installed."""
    try:
        import metaworld
        from metaworld.sawyer_xyz_env import SawyerMocapBase
    except ImportError as exc:
        raise MetaWorldUnavailable(
            f"Meta-World is not installed ({exc}); install it with: pip install -e '.[metaworld]' && "
            "pip install --no-deps metaworld==3.1.1 (see docs/ray_and_metaworld.md)"
        ) from None
    patch_mocap_welds(SawyerMocapBase)
    return metaworld


@functools.lru_cache(maxsize=8)
def load_benchmark(benchmark: str, skill: str, seed: int) -> Any:
    """The Meta-World benchmark object, built once per process (ML10 takes about 8 s: 750 env resets).

    A cache of an immutable, seeded result: every env of the process with the same arguments
    shares the same fixed task lists. metaworld seeds and restores numpy's global generator
    while it builds them; metarl's own draws never use it.
    """
    metaworld = import_metaworld()
    if benchmark == "ML1":
        if skill not in metaworld.ML1.ENV_NAMES:
            raise ValueError(f"unknown Meta-World skill {skill!r}; ML1 skills: {', '.join(metaworld.ML1.ENV_NAMES)}")
        return metaworld.ML1(skill, seed=seed)
    if benchmark == "ML10":
        return metaworld.ML10(seed=seed)
    raise ValueError(f"unknown Meta-World benchmark {benchmark!r}; one of {', '.join(BENCHMARKS)}")


class MetaWorldEnv(gymnasium.Env):
    """One Meta-World episode at a time, for any task (skill and goal) of an ML1 or ML10 benchmark.

    ``split`` picks the task set :meth:`sample_tasks` draws from: ``train`` (meta-training) or
    ``test`` (held-out goals for ML1, held-out skills for ML10). A new ``task`` is used from the
    next ``reset``. One Sawyer env per skill is built on first use; at most ``max_skill_envs``
    are kept (about 23 MB and 75 ms each).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(
        self,
        benchmark: Literal["ML1", "ML10"] = "ML1",
        skill: str = "reach-v3",
        split: Literal["train", "test"] = "train",
        benchmark_seed: int = 0,
        max_skill_envs: int = 1,
        render_mode: str | None = None,
    ) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if max_skill_envs < 1:
            raise ValueError(f"max_skill_envs must be >= 1, got {max_skill_envs}")
        self.benchmark_name, self.split, self.benchmark_seed = benchmark, split, benchmark_seed
        self.bench = load_benchmark(benchmark, skill if benchmark == "ML1" else "", benchmark_seed)
        self.classes = self.bench.train_classes if split == "train" else self.bench.test_classes
        self.task_list = self.bench.train_tasks if split == "train" else self.bench.test_tasks
        self.skills = sorted(self.classes)
        self.max_skill_envs = max_skill_envs
        self.render_mode = render_mode
        self.observation_space = spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float64)
        self.action_space = spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32)
        self._envs: OrderedDict[str, Any] = OrderedDict()
        self._env: Any = None
        self._task: Task = self.task_of(0)
        self._pending = True

    def task_of(self, index: int) -> Task:
        """The task at ``index`` of this split's task list."""
        entry = self.task_list[index]
        goal = np.asarray(_task_data(entry)["rand_vec"], dtype=np.float64)
        return {"skill": entry.env_name, "split": self.split, "index": int(index), "goal": goal}

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[Task]:
        """``n`` tasks drawn uniformly (with replacement) from this split's task list, using only ``rng``."""
        return [self.task_of(int(i)) for i in rng.integers(0, len(self.task_list), size=n)]

    @property
    def task(self) -> Task:
        """The current task (a new one takes effect at the next ``reset``)."""
        return self._task

    @task.setter
    def task(self, task: Task) -> None:
        index = int(task["index"])
        if not 0 <= index < len(self.task_list) or self.task_list[index].env_name != task["skill"]:
            raise ValueError(
                f"task {dict(task)} is not in the {self.benchmark_name} {self.split} task list "
                f"(benchmark_seed={self.benchmark_seed}, skills {', '.join(self.skills)})"
            )
        self._task, self._pending = task, True

    def _skill_env(self, skill: str) -> Any:
        """The Sawyer env of ``skill``, built on first use (least recently used one dropped beyond the cap)."""
        if skill in self._envs:
            self._envs.move_to_end(skill)
            return self._envs[skill]
        while len(self._envs) >= self.max_skill_envs:
            _, old = self._envs.popitem(last=False)
            old.close()
        env = self.classes[skill](render_mode=self.render_mode)
        self._envs[skill] = env
        return env

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Start an episode of the current task (seeding Meta-World's own generator with ``seed``)."""
        super().reset(seed=seed)
        if self._pending or self._env is None:
            self._env = self._skill_env(str(self._task["skill"]))
            self._env.set_task(self.task_list[int(self._task["index"])])
            self._pending = False
        obs, info = self._env.reset(seed=seed)
        return np.asarray(obs, dtype=np.float64), dict(info)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        """One Meta-World step (actions are clipped to [-1, 1] by Meta-World); ``info["success"]`` is 0 or 1."""
        obs, reward, terminated, truncated, info = self._env.step(np.asarray(action, dtype=np.float64))
        return np.asarray(obs, dtype=np.float64), float(reward), bool(terminated), bool(truncated), dict(info)

    def render(self) -> Any:
        """An RGB frame of the current episode (``render_mode="rgb_array"``)."""
        return None if self._env is None else self._env.render()

    def close(self) -> None:
        """Close every Sawyer env built."""
        for env in self._envs.values():
            env.close()
        self._envs.clear()
        self._env = None


def _task_data(entry: Any) -> dict[str, Any]:
    """The unpickled data of a Meta-World ``Task`` (its goal vector, ``rand_vec``)."""
    import pickle

    return pickle.loads(entry.data)  # metaworld's own task records, built in this process


def split_tasks(benchmark: str, skill: str = "reach-v3", benchmark_seed: int = 0) -> dict[str, Sequence[str]]:
    """The skills of the train and test splits: ``{"train": [...], "test": [...]}``."""
    bench = load_benchmark(benchmark, skill if benchmark == "ML1" else "", benchmark_seed)
    return {"train": sorted(bench.train_classes), "test": sorted(bench.test_classes)}


ENV_IDS = {
    "metarl/ML1Reach-v0": {"benchmark": "ML1", "skill": "reach-v3"},
    "metarl/ML1Push-v0": {"benchmark": "ML1", "skill": "push-v3"},
    "metarl/ML1PickPlace-v0": {"benchmark": "ML1", "skill": "pick-place-v3"},
    "metarl/ML1-v0": {"benchmark": "ML1"},
    "metarl/ML10-v0": {"benchmark": "ML10"},
}
"""The registered Meta-World ids and their fixed kwargs (``metarl/ML1-v0`` takes any ``skill``)."""

HORIZON = 500
"""Meta-World's episode length (``max_path_length``)."""


def register() -> None:
    """Register the Meta-World ids (importing nothing from metaworld until an env is made)."""
    for env_id, kwargs in ENV_IDS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(
                id=env_id, entry_point="metarl.envs.metaworld:MetaWorldEnv", max_episode_steps=HORIZON, kwargs=kwargs
            )
