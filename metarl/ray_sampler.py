"""The ``ray`` sampling backend: Ray actors, each with a vector env for a block of the meta-batch's tasks x episodes.

:class:`RaySampler` has the :class:`metarl.sampler.Sampler` interface (``collect``, ``close``,
``collect_seconds``) and returns the same ``[T, n, B]`` :class:`~metarl.episodes.Episodes`
block, bit for bit, whatever the number of actors:

- the driver draws every episode's reset seed and noise seed from the iteration's generators
  exactly as the local sampler does (:func:`metarl.sampler.episode_streams`);
- each actor owns a vector env (the env's native batched form, else gymnasium's
  ``SyncVectorEnv``) for a fixed block of the ``[n tasks x B episodes]`` grid,
  tasks ``[t0, t1)`` x episodes ``[e0, e1)`` (:func:`sampling_blocks`): whole tasks when there
  are no more actors than tasks, else each task's episodes split too, so that up to ``n * B``
  actors work. It runs :func:`metarl.sampler.rollout` on its block with the reset and noise
  seeds of exactly its episodes: the same code, the same per-episode streams and the same
  per-task policy matmuls as the local sampler (:func:`metarl.sampler.per_task_forward`
  computes a row the same whatever else is in the block);
- the parameters (shared, or stacked per task) go to the object store once per sampling and
  every actor reads them from there (its tasks' rows of stacked ones); the blocks come back and
  are put in their places of the ``[T, n, B]`` block.

Faults: an actor that dies (its process killed, its node lost) or whose env raises is killed,
started again with the same block and re-sampled with the same streams, so the batch is
complete and identical. After ``max_failures`` failures of one block in one sampling the run
stops with an :class:`~metarl.errors.EnvError` naming the env, the block's tasks and episodes
and the last failure; nothing partial is returned.

Ray itself: with no address, an embedded Ray is started in this process with
``sampler.num_cpus`` CPUs (a one-machine user needs no set-up); ``sampler.ray_address: auto``
(or ``$RAY_ADDRESS``) joins a running cluster. Ray is left running when a sampler closes (an
evaluation sampler may follow the training one); it stops when the process exits.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from metarl.envs.base import Task
from metarl.episodes import Episodes
from metarl.errors import ConfigError, EnvError
from metarl.policy import GaussianMLPPolicy, Params, is_stacked
from metarl.sampler import (
    Vectorization,
    check_batch,
    episode_streams,
    make_vector_env,
    resolve_env_id,
    rollout,
    torch_threads,
)

FIELDS = ("observations", "actions", "rewards", "mask")
"""The tensors of an :class:`Episodes` block that actors send back (and ``success`` when the env reports it)."""


def require_ray() -> Any:
    """The ``ray`` module, or a :class:`ConfigError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "config key 'sampler.backend': 'ray' needs Ray, which is not installed; "
            "install the extra: pip install -e '.[ray]'"
        ) from None
    return ray


def init_ray(address: str | None = None, num_cpus: int = 0) -> None:
    """Connect to Ray once per process: join ``address`` (or ``$RAY_ADDRESS``), else start an embedded Ray.

    An embedded Ray gets ``num_cpus`` CPUs (0: all cores). Nothing happens if this process
    is already connected (a test's or a user's own ``ray.init``).
    """
    ray = require_ray()
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    options: dict[str, Any] = {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": True}
    try:
        if address:
            ray.init(address=address, **options)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count() or 1, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"join the Ray cluster at {address!r}" if address else "start an embedded Ray"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"config key 'sampler.ray_address': cannot {where}: {first} "
            "(is `ray start --head` running there? see README, 'Sampling on a Ray cluster')"
        ) from None


def policy_spec(policy: GaussianMLPPolicy) -> dict[str, Any]:
    """What an actor needs to rebuild the policy's architecture (its parameters come with every sampling)."""
    hidden = [int(p.shape[0]) for name, p in policy.named_parameters() if name.endswith(".weight")][:-1]
    return {
        "obs_dim": policy.obs_dim,
        "act_dim": policy.act_dim,
        "hidden_sizes": hidden,
        "activation": policy.activation,
        "init": policy.init,
    }


def task_slices(num_tasks: int, num_workers: int) -> list[tuple[int, int]]:
    """Contiguous task ranges ``[start, stop)`` for ``num_workers`` actors, sizes differing by at most one."""
    bounds = np.linspace(0, num_tasks, num_workers + 1).round().astype(int)
    sizes = np.diff(bounds)
    if (sizes < 1).any():
        raise ValueError(f"cannot split {num_tasks} tasks between {num_workers} actors")
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


class Block(NamedTuple):
    """One actor's share of a sampling: tasks ``[t0, t1)`` x episodes ``[e0, e1)`` of the ``[n, B]`` grid."""

    t0: int
    t1: int
    e0: int
    e1: int

    @property
    def episodes(self) -> int:
        """The number of episodes (sub-envs) in the block."""
        return (self.t1 - self.t0) * (self.e1 - self.e0)


def sampling_blocks(num_tasks: int, episodes_per_task: int, num_workers: int) -> list[Block]:
    """Split the ``[num_tasks x episodes_per_task]`` grid into ``num_workers`` blocks, one per actor.

    Every ``(task, episode)`` is in exactly one block, and each block is tasks ``[t0, t1)`` x
    episodes ``[e0, e1)`` (the same episodes of each of its tasks, so an actor runs the
    ``[tasks, episodes]`` layout of :func:`metarl.sampler.rollout`). Sorted by ``(t0, e0)``.

    - ``num_workers <= num_tasks``: whole tasks, :func:`task_slices` (``e0, e1 = 0, B``), as
      before episodes were split. (Episode blocks would make the largest smaller here too, e.g.
      14 episodes instead of 20 for 20 x 10 on 16 actors, but the whole-task split is kept.)
    - More actors than tasks: the tasks are cut into contiguous groups and each group's episodes
      into ranges, one per actor (each task on its own: the episodes of each task split into
      ``~num_workers / n`` ranges); or the episodes are cut into ranges and each range's tasks into
      groups. Cuts are as even as possible (sizes differing by at most one); the number of cuts,
      the way round and the actors per group are chosen so that the largest block is the smallest
      possible (the slowest actor decides a sampling), never larger than splitting each task's
      episodes alone. Over grids up to 40 x 40 it was the even split's ``ceil(n * B / num_workers)``
      episodes in 94% of cases, at most 1.5x that (4/3 on 20 x 10 and 40 x 20). E.g. 20 tasks x 10
      episodes on 128 actors: blocks of at most 2 episodes, where whole tasks give 10 (on 20 actors).

    A pure function of its arguments, so the driver and a restarted actor agree on every block.
    ``ValueError`` for fewer than one actor or more than there are episodes (``num_tasks * episodes_per_task``).
    """
    n, b, w = num_tasks, episodes_per_task, num_workers
    if n < 1 or b < 1:
        raise ValueError(f"cannot split {n} tasks x {b} episodes: both must be >= 1")
    if not 1 <= w <= n * b:
        raise ValueError(
            f"cannot split {n} tasks x {b} episodes between {w} actors: between 1 and {n * b} actors "
            "(one episode each) can have work"
        )
    if w <= n:
        return [Block(t0, t1, 0, b) for t0, t1 in task_slices(n, w)]
    by_task = _cut_grid(b, n, w)  # task groups, each group's episodes in ranges
    by_episode = _cut_grid(n, b, w)  # episode ranges, each range's tasks in groups
    if by_task[0] <= by_episode[0]:
        blocks = [Block(c0, c1, r0, r1) for r0, r1, c0, c1 in by_task[1]]
    else:
        blocks = [Block(r0, r1, c0, c1) for r0, r1, c0, c1 in by_episode[1]]
    return sorted(blocks)


def _cut_grid(rows: int, columns: int, workers: int) -> tuple[int, list[tuple[int, int, int, int]]]:
    """Cut ``columns`` into even ranges and each range's ``rows`` into even ranges, ``workers`` rectangles in
    all (at most ``rows * columns``): the largest rectangle's area and the rectangles ``(r0, r1, c0, c1)``,
    for the number of column ranges that makes the largest area the smallest (then the fewest ranges)."""
    best: tuple[int, list[tuple[int, int, int, int]]] | None = None
    for cuts in range(-(-workers // rows), min(columns, workers) + 1):  # <= rows actors per column range
        ranges = task_slices(columns, cuts)
        actors = _actors_per_column(rows, [c1 - c0 for c0, c1 in ranges], workers)
        largest = max(-(-rows // a) * (c1 - c0) for a, (c0, c1) in zip(actors, ranges))
        if best is None or largest < best[0]:
            cells = [(r0, r1, c0, c1) for (c0, c1), a in zip(ranges, actors) for r0, r1 in task_slices(rows, a)]
            best = (largest, cells)
    assert best is not None
    return best


def _actors_per_column(rows: int, widths: list[int], workers: int) -> list[int]:
    """Actors for each column of ``rows`` x ``widths[j]`` cells, ``workers`` in all (between one and ``rows``
    per column), making the largest rectangle (``ceil(rows / actors) * width``) the smallest possible."""

    def needed(size: int) -> list[int] | None:  # the fewest actors per column for rectangles of at most `size`
        if size < max(widths):
            return None
        return [-(-rows // (size // width)) for width in widths]

    low, high = max(widths), rows * max(widths)  # high: one actor per column (no more columns than actors)
    while low < high:
        middle = (low + high) // 2
        counts = needed(middle)
        if counts is not None and sum(counts) <= workers:
            high = middle
        else:
            low = middle + 1
    counts = needed(low)
    assert counts is not None and sum(counts) <= workers
    for _ in range(workers - sum(counts)):  # spare actors: to the column with the largest rectangles
        j = max(
            (j for j in range(len(widths)) if counts[j] < rows), key=lambda j: (-(-rows // counts[j]) * widths[j], -j)
        )
        counts[j] += 1
    return counts


def one_line(text: str) -> str:
    """The first non-empty line of an error message (Ray's carry tracebacks)."""
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return str(text).strip()


class SamplingWorker:
    """A Ray actor's state: a vector env for its block's ``num_tasks * episodes_per_task`` episodes and a policy.

    Used as ``ray.remote(SamplingWorker)``; plain Python otherwise (tests call it directly).
    """

    def __init__(
        self,
        env_id: str,
        num_tasks: int,
        episodes_per_task: int,
        horizon: int,
        env_kwargs: dict[str, Any],
        vector_kwargs: dict[str, Any],
        vectorization: Vectorization,
        dtype: str,
        policy_threads: int,
    ) -> None:
        self.env_id = resolve_env_id(env_id)
        self.num_tasks, self.episodes_per_task, self.horizon = num_tasks, episodes_per_task, horizon
        self.dtype = getattr(torch, dtype)
        self.policy_threads = policy_threads
        self.env = make_vector_env(
            env_id, num_tasks * episodes_per_task, horizon, env_kwargs, vector_kwargs, vectorization
        )
        self._policy: tuple[dict[str, Any], GaussianMLPPolicy] | None = None

    def where(self) -> str:
        """``host:node:pid`` of the actor (also a readiness check)."""
        import ray

        node = ray.get_runtime_context().get_node_id()[:12]
        return f"{socket.gethostname()}:{node}:{os.getpid()}"

    def policy(self, spec: dict[str, Any]) -> GaussianMLPPolicy:
        """A policy module of the given architecture, built once and reused."""
        if self._policy is None or self._policy[0] != spec:
            self._policy = (spec, GaussianMLPPolicy(**spec))
        return self._policy[1]

    def sample(
        self,
        spec: dict[str, Any],
        params: dict[str, np.ndarray],
        start: int,
        tasks: list[Task],
        reset_seeds: list[int],
        noise_seeds: list[int],
        first_episode: int = 0,
    ) -> dict[str, Any]:
        """Roll out this actor's block: tasks ``start .. start + len(tasks) - 1`` of the batch, episodes
        ``first_episode ..`` of each (one seed of each stream per episode, task-major); numpy arrays back."""
        began = time.perf_counter()
        stop = start + len(tasks)
        tensors = {k: torch.from_numpy(np.array(v)) for k, v in params.items()}
        if is_stacked(tensors):
            tensors = {k: v[start:stop] for k, v in tensors.items()}
        with torch_threads(self.policy_threads):
            episodes = rollout(
                self.env,
                self.env_id,
                self.policy(spec),
                tensors,
                tasks,
                self.episodes_per_task,
                self.horizon,
                self.dtype,
                reset_seeds,
                noise_seeds,
                first_episode,
            )
        out: dict[str, Any] = {name: getattr(episodes, name).numpy() for name in FIELDS}
        if episodes.success is not None:
            out["success"] = episodes.success.numpy()
        out["seconds"] = time.perf_counter() - began
        return out

    def close(self) -> None:
        """Close the vector env."""
        self.env.close()


@dataclass
class RayStats:
    """What the Ray backend moved and where its time went (summed over :meth:`RaySampler.collect` calls)."""

    collects: int = 0
    restarts: int = 0
    bytes_to_workers: int = 0
    bytes_from_workers: int = 0
    seconds_put: float = 0.0
    seconds_get: float = 0.0
    seconds_slowest_worker: float = 0.0
    seconds_total: float = 0.0
    workers: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain values for JSON."""
        return dict(self.__dict__)


class RaySampler:
    """Samples ``B`` episodes of each of ``n`` tasks on Ray actors; same interface and output as :class:`Sampler`.

    ``num_workers`` actors (0: one per ``cpus_per_worker`` CPUs of the cluster), at most one per
    episode (``n * B``); actor ``k`` owns the block ``sampling_blocks(n, B, num_workers)[k]`` (whole
    tasks while there are no more actors than tasks) for the sampler's lifetime. Actors that cannot
    start within ``start_timeout`` seconds (no free CPUs) are a :class:`ConfigError`.
    ``samples_per_task``: the sample budget :func:`metarl.sampler.collect_to_budget` reads, as the
    local sampler's.
    """

    samples_per_task: int | None = None

    def __init__(
        self,
        env_id: str,
        num_tasks: int,
        episodes_per_task: int,
        horizon: int,
        env_kwargs: dict[str, Any] | None = None,
        vector_kwargs: dict[str, Any] | None = None,
        vectorization: Vectorization = "auto",
        dtype: torch.dtype = torch.float32,
        policy_threads: int = 1,
        num_workers: int = 0,
        ray_address: str | None = None,
        num_cpus: int = 0,
        cpus_per_worker: float = 1.0,
        max_failures: int = 3,
        start_timeout: float = 600.0,
    ) -> None:
        if num_tasks < 1 or episodes_per_task < 1 or horizon < 1:
            raise ValueError(
                "num_tasks, episodes_per_task and horizon must be >= 1, "
                f"got {num_tasks}, {episodes_per_task}, {horizon}"
            )
        if policy_threads < 1 or num_workers < 0 or max_failures < 0 or cpus_per_worker <= 0:
            raise ValueError(
                "policy_threads >= 1, num_workers >= 0, max_failures >= 0 and cpus_per_worker > 0 needed, got "
                f"{policy_threads}, {num_workers}, {max_failures}, {cpus_per_worker}"
            )
        self.ray = require_ray()
        init_ray(ray_address, num_cpus)
        self.env_id = resolve_env_id(env_id)
        self.num_tasks, self.episodes_per_task, self.horizon = num_tasks, episodes_per_task, horizon
        self.dtype = dtype
        self.max_failures = max_failures
        self.collect_seconds = 0.0
        self.stats = RayStats()
        cpus = float(self.ray.cluster_resources().get("CPU", 0.0))
        if num_workers == 0:
            num_workers = max(1, int(cpus // cpus_per_worker))
        num_workers = min(num_workers, num_tasks * episodes_per_task)  # more would have nothing to sample
        if num_workers * cpus_per_worker > cpus + 1e-9:
            raise ConfigError(
                f"config keys 'sampler.num_workers' and 'sampler.cpus_per_worker': {num_workers} "
                f"actors x {cpus_per_worker:g} CPUs do not fit the Ray cluster's {cpus:g} CPUs (they would wait "
                "forever): use fewer actors, a fraction of a CPU each, or a larger cluster"
            )
        self.start_timeout = start_timeout
        self.blocks = sampling_blocks(num_tasks, episodes_per_task, num_workers)
        self._worker_args = {
            "env_id": env_id,
            "horizon": horizon,
            "env_kwargs": dict(env_kwargs or {}),
            "vector_kwargs": dict(vector_kwargs or {}),
            "vectorization": vectorization,
            "dtype": str(dtype).removeprefix("torch."),
            "policy_threads": policy_threads,
        }
        self._remote = self.ray.remote(num_cpus=cpus_per_worker, max_restarts=0, max_task_retries=0)(SamplingWorker)
        self.actors: list[Any] = [None] * len(self.blocks)
        try:
            for k in range(len(self.blocks)):
                self.actors[k] = self._start(k)
            self.stats.workers = self._get_all([a.where.remote() for a in self.actors], self.start_timeout)
        except BaseException:
            self.close()
            raise

    @property
    def num_workers(self) -> int:
        """The number of sampling actors."""
        return len(self.actors)

    def _start(self, k: int) -> Any:
        """A new actor for block ``k`` (spread over the cluster's nodes)."""
        t0, t1, e0, e1 = self.blocks[k]
        return self._remote.options(scheduling_strategy="SPREAD").remote(
            num_tasks=t1 - t0, episodes_per_task=e1 - e0, **self._worker_args
        )

    def _get_all(self, refs: list[Any], timeout: float) -> list[Any]:
        """``ray.get`` that reports an actor's start-up error (e.g. an unknown env) as the error itself."""
        try:
            return self.ray.get(refs, timeout=timeout)
        except self.ray.exceptions.GetTimeoutError:
            raise ConfigError(
                f"config key 'sampler.num_workers': {len(refs)} sampling actors did not start within {timeout:g} s "
                "(is the Ray cluster's CPU taken by other work?)"
            ) from None
        except self.ray.exceptions.RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, Exception):
                raise cause from None
            raise

    def collect(
        self,
        policy: GaussianMLPPolicy,
        params: Params,
        tasks: Sequence[Task],
        rng: np.random.Generator,
        generator: torch.Generator,
    ) -> Episodes:
        """Roll out ``B`` episodes per task on the actors; the same block :meth:`Sampler.collect` returns."""
        began = time.perf_counter()
        check_batch(self.num_tasks, params, tasks)
        b = self.episodes_per_task
        reset_seeds, noise_seeds = episode_streams(rng, generator, self.num_tasks * b)
        spec = policy_spec(policy)
        arrays = {k: v.detach().cpu().numpy() for k, v in params.items()}
        t = time.perf_counter()
        params_ref = self.ray.put(arrays)
        self.stats.seconds_put += time.perf_counter() - t
        self.stats.bytes_to_workers += sum(a.nbytes for a in arrays.values()) * len(self.actors)

        def submit(k: int) -> Any:
            t0, t1, e0, e1 = self.blocks[k]
            episodes = [i * b + e for i in range(t0, t1) for e in range(e0, e1)]  # task-major, as rollout runs them
            self.stats.bytes_to_workers += 16 * len(episodes)
            return self.actors[k].sample.remote(
                spec,
                params_ref,
                t0,
                list(tasks[t0:t1]),
                [reset_seeds[j] for j in episodes],
                [noise_seeds[j] for j in episodes],
                e0,
            )

        pending = {submit(k): k for k in range(len(self.actors))}
        failures = [0] * len(self.actors)
        results: list[dict[str, Any] | None] = [None] * len(self.actors)
        slowest = 0.0
        while pending:
            ready, _ = self.ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            k = pending.pop(ref)
            t = time.perf_counter()
            try:
                result = self.ray.get(ref)
            except self.ray.exceptions.RayTaskError as exc:
                cause = exc.cause
                if isinstance(cause, FloatingPointError):  # the policy diverged: the same on any actor
                    raise FloatingPointError(str(cause)) from None
                if not isinstance(cause, EnvError):  # not the env's fault: a bug, reported as itself
                    raise (cause if isinstance(cause, Exception) else exc) from None
                failure = one_line(str(cause))
            except self.ray.exceptions.RayActorError as exc:
                failure = f"the sampling actor died ({type(exc).__name__}: {one_line(str(exc))})"
            else:
                self.stats.seconds_get += time.perf_counter() - t
                results[k] = result
                slowest = max(slowest, float(result["seconds"]))
                continue
            failures[k] += 1
            t0, t1, e0, e1 = self.blocks[k]
            if failures[k] > self.max_failures:
                self._cancel(pending)
                raise EnvError(
                    f"env {self.env_id}: sampling tasks {t0}..{t1 - 1}, episodes {e0}..{e1 - 1} of the meta-batch "
                    f"(first task {tasks[t0]}) failed {failures[k]} times (sampler.max_failures={self.max_failures}); "
                    f"last failure: {failure}"
                )
            self._restart(k)
            pending[submit(k)] = k
        names = FIELDS + (("success",) if all(r is not None and "success" in r for r in results) else ())
        blocks: dict[str, np.ndarray] = {}
        for block, result in zip(self.blocks, results):
            assert result is not None
            t0, t1, e0, e1 = block
            for name in names:
                part = result[name]  # [T, tasks, episodes, ...]
                if name not in blocks:
                    blocks[name] = np.empty((part.shape[0], self.num_tasks, b, *part.shape[3:]), dtype=part.dtype)
                blocks[name][:, t0:t1, e0:e1] = part
                self.stats.bytes_from_workers += part.nbytes
        elapsed = time.perf_counter() - began
        self.stats.collects += 1
        self.stats.seconds_slowest_worker += slowest
        self.stats.seconds_total += elapsed
        self.collect_seconds += elapsed
        return Episodes(**{name: torch.from_numpy(array) for name, array in blocks.items()})

    def _restart(self, k: int) -> None:
        """Kill actor ``k`` (if it still runs) and start a fresh one for the same block."""
        try:
            self.ray.kill(self.actors[k], no_restart=True)
        except Exception:  # already dead
            pass
        self.stats.restarts += 1
        self.actors[k] = self._start(k)

    def _cancel(self, pending: dict[Any, int]) -> None:
        """Drop the samplings still in flight (the batch is abandoned)."""
        for ref in pending:
            try:
                self.ray.cancel(ref, force=False)
            except Exception:
                pass

    def close(self) -> None:
        """Stop the actors (Ray itself keeps running until the process exits)."""
        for actor in self.actors:
            if actor is None:
                continue
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:
                pass
        self.actors = []
