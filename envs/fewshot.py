"""N-way K-shot few-shot classification tasks: the shared base of the image-class task envs.

A *task* is ``N`` classes drawn without replacement from one split of a class pool (the
``train`` classes for meta-training, the held-out ``test`` classes for evaluation); its
labels are the positions ``0..N-1`` of its classes, in the random order they were drawn.
An *episode* of ``n`` tasks is a support set of ``K`` images per class and a disjoint query
set of ``Q`` further images per class, for all ``n`` tasks in one vectorised call
(:meth:`FewShotEnv.sample_episode`) that draws only from the given numpy generator.

Subclasses (:mod:`metarl.envs.glyphs`, :mod:`metarl.envs.omniglot`) supply the class pool
(:meth:`FewShotEnv.class_ids`) and the images (:meth:`FewShotEnv.draw_images`: ``count``
*distinct* instances of each requested class).

The env is also a plain :class:`gymnasium.Env` so that it satisfies the task protocol
(``sample_tasks``, a settable ``task``) and gymnasium's checks: an episode is ONE step whose
observation is an image of one of the task's classes (uniformly chosen) and whose action is
the predicted label; the reward is 1 for the right label, else 0, and the episode ends.
Meta-training never steps it; it uses :meth:`FewShotEnv.sample_episode`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import gymnasium
import numpy as np
from gymnasium import spaces
from metarl.envs.base import Task

Split = Literal["train", "test"]
SPLITS: tuple[Split, ...] = ("train", "test")


@dataclass(frozen=True)
class FewShotEpisode:
    """Support and query sets of ``n`` N-way tasks (numpy, float32 images in ``[0, 1]``).

    ``support_x [n, N*K, C, H, W]`` with labels ``support_y [n, N*K]`` (int64, class-major:
    ``K`` images of label 0, then of label 1, ...), ``query_x [n, N*Q, C, H, W]`` and
    ``query_y [n, N*Q]`` likewise, and ``classes [n, N]``: the class id behind each label.
    """

    support_x: np.ndarray
    support_y: np.ndarray
    query_x: np.ndarray
    query_y: np.ndarray
    classes: np.ndarray

    @property
    def num_tasks(self) -> int:
        """``n``, the number of tasks."""
        return int(self.classes.shape[0])


def class_major_labels(n: int, ways: int, per_class: int) -> np.ndarray:
    """Labels ``[n, ways * per_class]``: ``per_class`` zeros, then ones, ... (int64)."""
    return np.broadcast_to(np.repeat(np.arange(ways, dtype=np.int64), per_class), (n, ways * per_class)).copy()


def choose_distinct(rng: np.random.Generator, pool_size: int, shape: tuple[int, ...], count: int) -> np.ndarray:
    """For every index of ``shape``: ``count`` distinct integers of ``[0, pool_size)`` in random order.

    Vectorised: ``[*shape, count]``. Random keys, the ``count`` smallest by ``argpartition``,
    then put in the order of their keys (so the order is uniformly random too).
    """
    if not 1 <= count <= pool_size:
        raise ValueError(f"cannot choose {count} distinct items out of {pool_size}")
    keys = rng.random((*shape, pool_size))
    chosen = np.argpartition(keys, count - 1, axis=-1)[..., :count]
    order = np.argsort(np.take_along_axis(keys, chosen, axis=-1), axis=-1)
    return np.take_along_axis(chosen, order, axis=-1)


class FewShotEnv(gymnasium.Env):
    """Base of the N-way few-shot classification task envs (see the module docstring)."""

    metadata = {"render_modes": []}
    image_shape: tuple[int, int, int] = (1, 28, 28)
    """``(channels, height, width)`` of every image."""

    def __init__(self, ways: int = 5) -> None:
        if isinstance(ways, bool) or not isinstance(ways, int) or ways < 2:
            raise ValueError(f"ways must be an integer >= 2, got {ways!r}")
        self.ways = ways
        self.observation_space = spaces.Box(0.0, 1.0, shape=self.image_shape, dtype=np.float32)
        self.action_space = spaces.Discrete(ways)
        self.task: Task = {"classes": np.arange(ways), "split": "train"}
        self._label = 0
        self._done = True

    # ------------------------------------------------------------------ what subclasses supply

    def class_ids(self, split: Split) -> np.ndarray:
        """The class ids of ``split`` (int64, disjoint between splits)."""
        raise NotImplementedError

    def draw_images(self, classes: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
        """``count`` distinct images of each class in ``classes [...]``: ``[..., count, C, H, W]`` float32."""
        raise NotImplementedError

    def instances_per_class(self) -> int | None:
        """How many distinct images a class has (``None``: unlimited, every draw is a fresh instance)."""
        return None

    # ------------------------------------------------------------------ tasks and episodes

    def check_split(self, split: str) -> Split:
        """``split`` if it is ``train`` or ``test``, else ``ValueError``."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return split

    def sample_classes(self, n: int, rng: np.random.Generator, split: Split = "train") -> np.ndarray:
        """``[n, ways]`` class ids: each task's ``ways`` distinct classes of ``split``, in random label order."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        pool = self.class_ids(self.check_split(split))
        if self.ways > pool.size:
            raise ValueError(f"{self.ways}-way tasks need >= {self.ways} classes, the {split} split has {pool.size}")
        return pool[choose_distinct(rng, pool.size, (n,), self.ways)]

    def sample_tasks(self, n: int, rng: np.random.Generator, split: Split = "train") -> list[Task]:
        """``n`` tasks of ``split``: ``{"classes": array of ways class ids, "split": split}``."""
        return [{"classes": row, "split": split} for row in self.sample_classes(n, rng, split)]

    def check_sizes(self, shots: int, queries: int) -> None:
        """``ValueError`` unless ``shots, queries >= 1`` and a class has ``shots + queries`` distinct images."""
        if shots < 1 or queries < 1:
            raise ValueError(f"shots and queries per class must be >= 1, got {shots} and {queries}")
        limit = self.instances_per_class()
        if limit is not None and shots + queries > limit:
            raise ValueError(
                f"{shots} shots + {queries} queries per class need {shots + queries} distinct images of a class; "
                f"{type(self).__name__} has {limit}"
            )

    def sample_sets(self, classes: np.ndarray, shots: int, queries: int, rng: np.random.Generator) -> FewShotEpisode:
        """Disjoint support (``shots``) and query (``queries``) images per class of ``classes [n, ways]``."""
        self.check_sizes(shots, queries)
        n, ways = classes.shape
        images = self.draw_images(classes, shots + queries, rng)  # [n, ways, shots + queries, C, H, W]
        shape = images.shape[3:]
        support = images[:, :, :shots].reshape(n, ways * shots, *shape)
        query = images[:, :, shots:].reshape(n, ways * queries, *shape)
        return FewShotEpisode(
            np.ascontiguousarray(support),
            class_major_labels(n, ways, shots),
            np.ascontiguousarray(query),
            class_major_labels(n, ways, queries),
            classes,
        )

    def sample_episode(
        self, n: int, shots: int, queries: int, rng: np.random.Generator, split: Split = "train"
    ) -> FewShotEpisode:
        """``n`` fresh ``ways``-way tasks of ``split``: ``shots`` support and ``queries`` query images per class.

        Everything is drawn from ``rng`` alone (the same generator state gives the same episode).
        """
        self.check_sizes(shots, queries)
        return self.sample_sets(self.sample_classes(n, rng, split), shots, queries, rng)

    # ------------------------------------------------------------------ the one-step gymnasium form

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        classes = np.asarray(self.task["classes"], dtype=np.int64)
        if classes.shape != (self.ways,):
            raise ValueError(f"a task needs {self.ways} classes, got {classes.tolist()}")
        self._label = int(self.np_random.integers(self.ways))
        image = self.draw_images(classes[self._label : self._label + 1], 1, self.np_random)[0, 0]
        self._done = False
        return image.astype(np.float32), {"label": self._label}

    def step(self, action):
        if self._done:
            raise RuntimeError(f"{type(self).__name__}.step: the one-step episode is over (or never started)")
        correct = int(action) == self._label
        self._done = True
        image = np.zeros(self.image_shape, dtype=np.float32)
        return image, float(correct), True, False, {"label": self._label}
