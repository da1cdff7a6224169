"""Collect a padded block of episodes for a batch of tasks with one policy forward per time step."""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import gymnasium
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import metarl.envs  # noqa: F401  (registers the metarl/ envs)
from metarl.envs.base import Task, check_task_env
from metarl.episodes import Episodes, stack_time
from metarl.errors import ConfigError, EnvError
from metarl.policy import ACTIVATIONS, GaussianMLPPolicy, Params, is_stacked

Vectorization = Literal["auto", "native", "sync"]


def resolve_env_id(env_id: str) -> str:
    """Import the module of a ``"module:env-id"`` name (gymnasium's convention) and return the bare id.

    This is how a third-party task env is named in a config: ``env.id: mypkg.envs:mypkg/MyTask-v0``.
    """
    if ":" not in env_id:
        return env_id
    module, bare = env_id.split(":", 1)
    try:
        import_user_module(module)
    except ImportError as exc:
        raise ConfigError(f"cannot import module {module!r} named in env id {env_id!r}: {exc}") from exc
    return bare


def import_user_module(name: str) -> None:
    """Import a user's env module, looking in the working directory too (as ``python -m`` would).

    The ``metarl`` console script does not put the working directory on ``sys.path``; a user's
    ``mypkg.envs`` next to their config should still be found, so the directory is searched
    after everything installed.
    """
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        cwd = os.getcwd()
        if exc.name is None or not name.startswith(exc.name) or cwd in sys.path:
            raise
        sys.path.append(cwd)
        importlib.import_module(name)


def make_task_env(env_id: str, horizon: int, env_kwargs: dict[str, Any] | None = None) -> gymnasium.Env:
    """A single task env (for task sampling, spaces, rendering); checks the task protocol."""
    env_id = resolve_env_id(env_id)
    try:
        env = gymnasium.make(env_id, max_episode_steps=horizon, **(env_kwargs or {}))
    except gymnasium.error.Error as exc:
        raise ConfigError(f"config key 'env.id': cannot make environment {env_id!r}: {exc}") from None
    except TypeError as exc:
        raise ConfigError(
            f"config key 'env.kwargs': {env_id} does not accept {sorted(env_kwargs or {})}: {exc}"
        ) from None
    try:
        check_task_env(env)
    except TypeError as exc:
        raise ConfigError(f"config key 'env.id': {exc}") from None
    return env


def make_vector_env(
    env_id: str,
    num_envs: int,
    horizon: int,
    env_kwargs: dict[str, Any] | None = None,
    vector_kwargs: dict[str, Any] | None = None,
    vectorization: Vectorization = "auto",
) -> gymnasium.vector.VectorEnv:
    """The env's natively vectorised form if it registers one (``vector_entry_point``), else a ``SyncVectorEnv``.

    ``vector_kwargs`` go to the native form only (e.g. ``num_threads`` for batched physics).
    """
    env_kwargs = dict(env_kwargs or {})
    env_id = resolve_env_id(env_id)
    spec = gymnasium.spec(env_id)
    native = spec.vector_entry_point is not None
    if vectorization == "native" and not native:
        raise ValueError(f"environment {env_id!r} registers no natively vectorised form (vector_entry_point)")
    if vectorization != "sync" and native:
        return gymnasium.make_vec(
            env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **env_kwargs, **(vector_kwargs or {})
        )
    fns = [
        lambda i=i: NamedFailures(gymnasium.make(env_id, max_episode_steps=horizon, **env_kwargs), env_id, i)
        for i in range(num_envs)
    ]
    return SyncVectorEnv(fns, autoreset_mode=AutoresetMode.NEXT_STEP)


class NamedFailures(gymnasium.Wrapper):
    """Turns an exception raised inside one sub-env's ``reset``/``step`` into an :class:`EnvError` naming
    the env id, the sub-env, its task and the episode step."""

    def __init__(self, env: gymnasium.Env, env_id: str, index: int) -> None:
        super().__init__(env)
        self.env_id, self.index, self.t = env_id, index, 0

    def _fail(self, where: str, exc: Exception) -> EnvError:
        task = getattr(self.env.unwrapped, "task", None)
        return EnvError(
            f"env {self.env_id} raised in {where} (sub-env {self.index}, task {task}, episode step "
            f"{self.t}): {type(exc).__name__}: {exc}"
        )

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        """Reset, naming the env on failure."""
        self.t = 0
        try:
            return self.env.reset(seed=seed, options=options)
        except Exception as exc:
            raise self._fail("reset", exc) from exc

    def step(self, action: Any) -> Any:
        """Step, naming the env on failure."""
        try:
            result = self.env.step(action)
        except Exception as exc:
            raise self._fail("step", exc) from exc
        self.t += 1
        return result


@contextlib.contextmanager
def torch_threads(num_threads: int) -> Iterator[None]:
    """Run the block with ``num_threads`` torch intra-op threads, restoring the previous count after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def episode_streams(
    rng: np.random.Generator, generator: torch.Generator, num_episodes: int
) -> tuple[list[int], list[int]]:
    """One reset seed and one action-noise seed per episode, drawn in episode order.

    The reset seeds come from ``rng`` (as gymnasium's vector ``reset(seed=[...])`` takes them),
    the noise seeds from ``generator``. Every episode then draws its action noise from its own
    torch generator (:func:`episode_noise`), so an episode's random numbers do not depend on
    which other episodes are sampled with it: a block of the batch's tasks x episodes (one Ray
    actor's share) samples exactly what the whole batch samples for those episodes.
    """
    reset_seeds = rng.integers(0, 2**31 - 1, size=num_episodes).tolist()
    noise_seeds = torch.randint(0, 2**62, (num_episodes,), generator=generator, dtype=torch.int64).tolist()
    return reset_seeds, noise_seeds


def episode_noise(noise_seeds: Sequence[int], horizon: int, act_dim: int, dtype: torch.dtype) -> torch.Tensor:
    """Standard normal action noise ``[T, m, act_dim]`` for ``m`` episodes, episode ``j`` from its own seed."""
    columns = [
        torch.randn((horizon, act_dim), generator=torch.Generator().manual_seed(int(seed)), dtype=dtype)
        for seed in noise_seeds
    ]
    return torch.stack(columns, 1)


def per_task_forward(policy: GaussianMLPPolicy, obs: torch.Tensor, params: Params) -> tuple[torch.Tensor, torch.Tensor]:
    """The policy's mean and log-std for ``obs [n, B, obs_dim]``, computed as one matmul per task and layer.

    This is :meth:`GaussianMLPPolicy.forward` (the same layers, activation and log-std), laid out
    so that every row (episode) of every task is computed by the same kernel on the same memory
    alignment whatever else is in the batch. A task's actions are then bitwise the same whether it
    is sampled with all the others (the local sampler) or in any block of tasks and episodes (a
    Ray actor), down to a single episode. What that takes, each measured (CPU, MKL) as giving
    other last bits when left out (``tests/test_sampler.py``):

    - shared parameters are broadcast to the ``n`` tasks, so shared and stacked parameters take
      the same batched-matmul path; a single task is computed as a batch of two equal copies
      (torch takes another kernel for a batch of one);
    - each task's rows are padded with zero rows to :func:`padded_rows`: a multiple of
      :data:`ROW_MULTIPLE` (fewer rows take other kernels), and at least enough that every
      layer's matmul takes torch's BLAS path, never its small-matmul loop (:data:`BMM_LOOP_WORK`);
    - every layer's input rows start at a multiple of :data:`ROW_MULTIPLE` floats (16 bytes):
      a layer whose input width is not a multiple of it reads a zero-padded copy with a wider row
      stride (misaligned rows sum in another order when the layer is narrow: measured for 10-wide
      rows into a 6-wide layer, episode 1's row at byte 40 of its task's block);
    - a layer one unit wide is computed two wide (a zero weight row) and the extra column dropped
      (a one-column product's rows depend on their position).

    The padding is dropped from the result.
    """
    n, rows = obs.shape[0], obs.shape[1]
    stacked = params if is_stacked(params) else {k: v.unsqueeze(0).expand(n, *v.shape) for k, v in params.items()}
    if n == 1:
        obs = obs.expand(2, *obs.shape[1:])
        stacked = {k: v.expand(2, *v.shape[1:]) for k, v in stacked.items()}
    total = padded_rows(rows, stacked)
    activation = ACTIVATIONS[policy.activation]
    last = len(policy.layers) - 1
    x = obs
    for i in range(last + 1):
        weight, bias = stacked[f"layers.{i}.weight"], stacked[f"layers.{i}.bias"]
        width = int(weight.shape[1])
        if width < 2:
            weight = torch.cat([weight, weight.new_zeros(weight.shape[0], 2 - width, weight.shape[2])], 1)
            bias = torch.cat([bias, bias.new_zeros(bias.shape[0], 2 - width)], 1)
        x = torch.baddbmm(bias.unsqueeze(1), aligned_rows(x, total), weight.transpose(1, 2))[..., :width]
        if i < last:
            x = activation(x)
    mean = x[:n, :rows]
    return mean, stacked["log_std"][:n].unsqueeze(1).expand_as(mean)


ROW_MULTIPLE = 4
"""Rows per task in :func:`per_task_forward` are padded to this multiple, and every layer's input row
starts at a multiple of this many floats: 4 float32 are 16 bytes, so every task's block and every row of
every layer starts 16-byte aligned."""

BMM_LOOP_WORK = 400
"""torch's CPU ``bmm``/``baddbmm`` (ATen's ``bmm_out_or_baddbmm_``) multiplies matrices whose
``rows * columns * contraction`` is below this with its own loop and larger ones with BLAS (MKL); the
two sum in other orders, so a row's result would depend on how many rows are in its batch."""


def padded_rows(rows: int, params: Params) -> int:
    """The rows per task :func:`per_task_forward` computes for ``rows`` rows: a multiple of
    :data:`ROW_MULTIPLE`, and enough that every layer's ``rows * in * out`` reaches :data:`BMM_LOOP_WORK`.

    The minimum depends only on the layer sizes, so every block of a task's episodes (the whole
    batch's ``B``, or a Ray actor's share of them, down to one episode) takes the same kernel.
    """
    smallest = min(max(2, int(v.shape[-2])) * int(v.shape[-1]) for k, v in params.items() if k.endswith(".weight"))
    needed = max(rows, -(-BMM_LOOP_WORK // smallest))
    return needed + (-needed % ROW_MULTIPLE)


def aligned_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``x [m, r, k]`` as ``[m, rows, k]`` (zero rows added) whose rows start at multiples of
    :data:`ROW_MULTIPLE` elements from an address aligned to as many: ``x`` itself if it already is so, else a
    zero-padded copy with row stride ``k`` rounded up to :data:`ROW_MULTIPLE` (viewed back to width ``k``)."""
    m, r, k = x.shape
    if (
        r == rows
        and k % ROW_MULTIPLE == 0
        and x.is_contiguous()
        and x.data_ptr() % (x.element_size() * ROW_MULTIPLE) == 0
    ):
        return x
    buffer = x.new_zeros(m, rows, k + (-k % ROW_MULTIPLE))
    buffer[:, :r, :k] = x
    return buffer[:, :, :k]


def rollout(
    env: gymnasium.vector.VectorEnv,
    env_id: str,
    policy: GaussianMLPPolicy,
    params: Params,
    tasks: Sequence[Task],
    episodes_per_task: int,
    horizon: int,
    dtype: torch.dtype,
    reset_seeds: Sequence[int],
    noise_seeds: Sequence[int],
    first_episode: int = 0,
) -> Episodes:
    """Run ``B`` episodes of each task in ``env`` (``len(tasks) * B`` sub-envs) with the given per-episode streams.

    Sub-env ``i * B + b`` runs episode ``b`` of task ``i``; ``params`` are shared or stacked for
    exactly these tasks. This is the whole of sampling: the local sampler runs it on the
    meta-batch, a Ray actor on its block of it (:mod:`metarl.ray_sampler`): some of the tasks,
    and of each the episodes ``first_episode .. first_episode + B - 1`` of the meta-batch (which
    error messages name).
    """
    n, b = len(tasks), episodes_per_task
    env.set_attr("task", [task for task in tasks for _ in range(b)])  # type: ignore[attr-defined]
    seeds: Any = list(reset_seeds)  # gymnasium's vector reset takes one seed per sub-env
    obs_np, _ = _guarded(lambda: env.reset(seed=seeds), "reset", env_id, tasks)
    _check_finite("observation", obs_np, env_id, tasks, b, 0, first_episode)
    noise = episode_noise(noise_seeds, horizon, policy.act_dim, dtype).view(horizon, n, b, -1)
    alive = torch.ones(n, b, dtype=dtype)
    observations, actions, rewards, masks = [], [], [], []
    successes: list[np.ndarray | None] = []
    with torch.no_grad():
        for t in range(horizon):
            obs = torch.as_tensor(np.asarray(obs_np), dtype=dtype).view(n, b, -1)
            mean, log_std = per_task_forward(policy, obs, params)
            action = mean + noise[t] * log_std.exp()
            if not torch.isfinite(action).all():
                raise FloatingPointError(
                    f"the policy's actions are not finite at episode step {t}: its parameters diverged "
                    "(an inner step size maml.inner_lr too large?)"
                )
            step_input = action.view(n * b, -1).numpy()
            obs_np, reward, terminated, truncated, info = _guarded(
                lambda step_input=step_input: env.step(step_input), "step", env_id, tasks
            )
            _check_finite("reward", reward, env_id, tasks, b, t, first_episode)
            _check_finite("observation", obs_np, env_id, tasks, b, t + 1, first_episode)
            observations.append(obs)
            actions.append(action)
            rewards.append(torch.as_tensor(np.asarray(reward), dtype=dtype).view(n, b))
            masks.append(alive)
            successes.append(success_flags(info, n * b))
            done = torch.as_tensor(np.logical_or(terminated, truncated)).view(n, b)
            alive = alive * (~done).to(dtype)
    rewards_t = stack_time(rewards)
    mask_t = stack_time(masks)
    success = None
    if any(flags is not None for flags in successes):  # a step without the key (none in Meta-World) counts as 0
        steps = [np.zeros(n * b) if flags is None else flags for flags in successes]
        success = torch.as_tensor(np.stack(steps), dtype=dtype).view(horizon, n, b) * mask_t
    return Episodes(stack_time(observations), stack_time(actions), rewards_t * mask_t, mask_t, success=success)


def success_flags(info: dict[str, Any], num_envs: int) -> np.ndarray | None:
    """``info["success"]`` of a vector env step as ``num_envs`` 0/1 values; ``None`` if no sub-env reports it.

    Gymnasium's vector envs put a sub-env's info key in an array with a ``"_success"`` mask of the
    sub-envs that returned it; a sub-env without it counts as 0 (a reset step, which the mask drops).
    """
    if "success" not in info:
        return None
    values = np.asarray(info["success"], dtype=np.float64).reshape(num_envs)
    present = np.asarray(info.get("_success", np.ones(num_envs, dtype=bool)), dtype=bool).reshape(num_envs)
    return np.where(present & (values > 0), 1.0, 0.0)


def _guarded(call: Any, where: str, env_id: str, tasks: Sequence[Task]) -> Any:
    """Run an env call; an exception becomes an :class:`EnvError` naming the env (and task, if known)."""
    try:
        return call()
    except EnvError:
        raise
    except Exception as exc:
        raise EnvError(
            f"env {env_id} raised in {where} (natively vectorised form, {len(tasks)} tasks, "
            f"first {tasks[0]}): {type(exc).__name__}: {exc}"
        ) from exc


def _check_finite(
    what: str, values: Any, env_id: str, tasks: Sequence[Task], episodes_per_task: int, t: int, first_episode: int = 0
) -> None:
    """Raise :class:`EnvError` naming the env, task, episode and step if an observation or reward is NaN/inf."""
    array = np.asarray(values)
    if np.isfinite(array).all():
        return
    flat = np.flatnonzero(~np.isfinite(array.reshape(array.shape[0], -1)).all(axis=1))
    episode = int(flat[0])
    task = tasks[episode // episodes_per_task]
    raise EnvError(
        f"env {env_id} returned a non-finite {what} at episode step {t} "
        f"(task {task}, episode {first_episode + episode % episodes_per_task})"
    )


def check_batch(num_tasks: int, params: Params, tasks: Sequence[Task]) -> None:
    """Raise ``ValueError`` unless there are ``num_tasks`` tasks and the parameters are shared or stacked for them."""
    if len(tasks) != num_tasks:
        raise ValueError(f"sampler was built for {num_tasks} tasks, got {len(tasks)}")
    if is_stacked(params) and params["log_std"].shape[0] != num_tasks:
        raise ValueError(f"stacked params have {params['log_std'].shape[0]} tasks, expected {num_tasks}")


class Sampler:
    """Runs ``B`` episodes of each of ``n`` tasks in one vector env of ``n * B`` sub-envs (the ``local`` backend).

    Sub-env ``i * B + b`` runs episode ``b`` of task ``i``. Every time step does one policy
    forward for the whole batch (one matmul per task, :func:`per_task_forward`), with shared
    parameters or per-task stacked parameters. Every episode has its own random streams
    (:func:`episode_streams`), so :class:`metarl.ray_sampler.RaySampler` samples the same
    episodes bit for bit from blocks of the batch's tasks x episodes.
    The forwards run on ``policy_threads`` torch threads (default 1): they are small, and idle
    intra-op threads spin and take cores from the batched physics threads (see
    ``benchmarks/bench_threads.py``).
    ``collect_seconds`` adds up the wall time spent in :meth:`collect` (for the trainer's
    sampling/learning split). ``samples_per_task`` (default None) is the sample budget that
    :func:`collect_to_budget` reads (``maml.samples_per_task``; set by the trainer).
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
    ) -> None:
        if policy_threads < 1:
            raise ValueError(f"policy_threads must be >= 1, got {policy_threads}")
        if num_tasks < 1 or episodes_per_task < 1 or horizon < 1:
            raise ValueError(
                "num_tasks, episodes_per_task and horizon must be >= 1, "
                f"got {num_tasks}, {episodes_per_task}, {horizon}"
            )
        self.num_tasks = num_tasks
        self.episodes_per_task = episodes_per_task
        self.horizon = horizon
        self.dtype = dtype
        self.policy_threads = policy_threads
        self.collect_seconds = 0.0
        self.env_id = resolve_env_id(env_id)
        try:
            self.env = make_vector_env(
                env_id, num_tasks * episodes_per_task, horizon, env_kwargs, vector_kwargs, vectorization
            )
        except TypeError as exc:
            raise ConfigError(f"config key 'env.kwargs' / 'env.vector_kwargs': {env_id} rejects them: {exc}") from None

    def collect(
        self,
        policy: GaussianMLPPolicy,
        params: Params,
        tasks: Sequence[Task],
        rng: np.random.Generator,
        generator: torch.Generator,
    ) -> Episodes:
        """Roll out ``B`` episodes per task with actions ``~ N(mean, std)``; returns ``[T, n, B, ...]`` tensors.

        ``rng`` draws the sub-env reset seeds and ``generator`` the per-episode noise seeds
        (:func:`episode_streams`).
        """
        start = time.perf_counter()
        check_batch(self.num_tasks, params, tasks)
        reset_seeds, noise_seeds = episode_streams(rng, generator, self.num_tasks * self.episodes_per_task)
        with torch_threads(self.policy_threads):
            episodes = rollout(
                self.env,
                self.env_id,
                policy,
                params,
                tasks,
                self.episodes_per_task,
                self.horizon,
                self.dtype,
                reset_seeds,
                noise_seeds,
            )
        self.collect_seconds += time.perf_counter() - start
        return episodes

    def close(self) -> None:
        """Close the vector env."""
        self.env.close()


def budget_rounds(samples_per_task: int, horizon: int, episodes_per_task: int) -> int:
    """The most samplings :func:`collect_to_budget` makes: ``4 * ceil(budget / (T * B))``."""
    return 4 * max(1, math.ceil(samples_per_task / (horizon * episodes_per_task)))


def _drop_episodes(episodes: Episodes, keep: torch.Tensor) -> Episodes:
    """``episodes`` with the episodes where ``keep`` (``[n, B]``) is 0 emptied: mask, rewards, observations
    and actions zero (finite, and nothing a masked consumer reads)."""
    keep = keep.to(episodes.mask.dtype)
    step = keep.unsqueeze(0)
    return Episodes(
        episodes.observations * step.unsqueeze(-1).to(episodes.observations.dtype),
        episodes.actions * step.unsqueeze(-1).to(episodes.actions.dtype),
        episodes.rewards * step.to(episodes.rewards.dtype),
        episodes.mask * step,
        success=None if episodes.success is None else episodes.success * step,
    )


def collect_to_budget(
    sampler: Any,
    policy: GaussianMLPPolicy,
    params: Params,
    tasks: Sequence[Task],
    rng: np.random.Generator,
    generator: torch.Generator,
    samples_per_task: int | None = None,
    max_rounds: int | None = None,
) -> Episodes:
    """``sampler.collect``, then more rounds until every task has ``samples_per_task`` valid steps (rllab's protocol).

    rllab's MAML sampler (cbfinn/maml_rl ``sandbox/rocky/tf/samplers/batch_sampler.py``, one
    ``parallel_sampler.sample_paths(max_samples=fast_batch_size * max_path_length)`` per task, e.g.
    20 x 200 = 4000) rolls whole episodes out until the task's sample count reaches the budget, so
    episodes that end early (the Ant falling) are made up by more episodes. Here: the first ``collect`` gives ``B``
    episodes of every task, all kept. While a task is below the budget, and for at most
    ``max_rounds`` samplings in all (default :func:`budget_rounds`), one more ``collect`` of
    ``B`` episodes per task runs (a loop over rounds, not tasks; works with any sampler with
    ``collect``: the local, Ray and on-device ones). Of a round's episodes a task keeps them in
    order while it is still below the budget before the episode, as rllab stops once the count is
    reached; the others (all of them for tasks that have enough) become empty episodes (mask 0,
    zero values), which no masked consumer (returns, baselines, advantages, losses, the trainer's
    episode metrics) counts. Episode slots empty for every task are dropped, so the result is
    ``[T, n, B_total]`` with ``B_total`` between ``B`` and ``max_rounds * B``. Every round draws
    its streams from ``rng`` and ``generator`` as a ``collect`` does, so the result is determined
    by their state. If the budget is not reached within ``max_rounds`` samplings, a
    ``RuntimeWarning`` says so and the episodes collected are returned.

    ``samples_per_task`` defaults to ``sampler.samples_per_task`` (None if it has none); with None
    this is exactly ``sampler.collect(...)``.
    """
    budget = getattr(sampler, "samples_per_task", None) if samples_per_task is None else samples_per_task
    first: Episodes = sampler.collect(policy, params, tasks, rng, generator)
    if budget is None:
        return first
    if isinstance(budget, bool) or int(budget) != budget or budget < 1:
        raise ValueError(f"samples_per_task must be a positive integer or None, got {budget!r}")
    limit = budget_rounds(int(budget), first.horizon, first.episodes_per_task) if max_rounds is None else max_rounds
    if limit < 1:
        raise ValueError(f"max_rounds must be >= 1, got {max_rounds}")
    blocks = [first]
    counts = first.mask.sum((0, 2))  # [n] valid steps per task
    rounds = 1
    while rounds < limit and bool((counts < budget).any()):
        block: Episodes = sampler.collect(policy, params, tasks, rng, generator)
        rounds += 1
        lengths = block.mask.sum(0)  # [n, B]
        before = counts.unsqueeze(1) + lengths.cumsum(1) - lengths  # each task's count before each episode
        block = _drop_episodes(block, before < budget)
        counts = counts + block.mask.sum((0, 2))
        blocks.append(block)
    short = int((counts < budget).sum().item())
    if short:
        warnings.warn(
            f"maml.samples_per_task={budget}: {short} of {len(counts)} tasks have fewer valid samples after "
            f"{rounds} samplings of {first.episodes_per_task} episodes (the most: {limit}; fewest "
            f"{int(counts.min().item())}); going on with the samples there are",
            RuntimeWarning,
            stacklevel=2,
        )
    if len(blocks) == 1:
        return first
    fields = ("observations", "actions", "rewards", "mask") + (("success",) if first.success is not None else ())
    merged = {name: torch.cat([getattr(b, name) for b in blocks], 2) for name in fields}
    used = merged["mask"].sum(0).gt(0).any(0)  # [B_total]: slots that hold an episode of some task
    if not bool(used.all()):
        index = used.nonzero().squeeze(1)
        merged = {name: value.index_select(2, index) for name, value in merged.items()}
    return Episodes(**merged)
