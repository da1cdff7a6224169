"""Turn a validated :class:`~metarl.config.Config` into the objects a run uses.

One place for every config -> object factory: the task env, its episode length, the
policy, the sampler, the inner-loop and TRPO settings, and the per-iteration random
generators. Training, evaluation, rendering and the benchmarks all build from here.
"""

from __future__ import annotations

import gymnasium
import numpy as np
import torch

from metarl.algorithms import static_first_order
from metarl.config import Config, EnvConfig, MamlConfig, OuterConfig
from metarl.errors import ConfigError
from metarl.maml import AdaptationSettings
from metarl.policy import GaussianMLPPolicy
from metarl.sampler import Sampler, make_task_env, resolve_env_id
from metarl.trpo import TRPOSettings

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def torch_dtype(name: str) -> torch.dtype:
    """``"float32"``/``"float64"`` to the torch dtype."""
    return DTYPES[name]


def registered_horizon(env_id: str) -> int | None:
    """The env's registered ``max_episode_steps`` (``None`` if it registers none)."""
    bare = resolve_env_id(env_id)
    try:
        return gymnasium.spec(bare).max_episode_steps
    except gymnasium.error.Error as exc:
        raise ConfigError(f"config key 'env.id': cannot find environment {env_id!r}: {exc}") from None


def horizon(env: EnvConfig) -> int:
    """The episode length ``T``: ``env.horizon`` if set, else the env's registered ``max_episode_steps``."""
    if env.horizon is not None:
        return env.horizon
    registered = registered_horizon(env.id)
    if registered is None:
        raise ConfigError(f"config key 'env.horizon': {env.id!r} registers no max_episode_steps; set env.horizon")
    return registered


def horizon_notice(env: EnvConfig) -> str | None:
    """A one-line notice when ``env.horizon`` differs from the env's registered episode length, else ``None``."""
    if env.horizon is None:
        return None
    registered = registered_horizon(env.id)
    if registered is None or registered == env.horizon:
        return None
    return (
        f"note: env.horizon={env.horizon} overrides {env.id}'s registered max_episode_steps={registered} "
        "(episodes are cut or extended to env.horizon steps)"
    )


def task_env(config: Config) -> gymnasium.Env:
    """A single task env of the config (task sampling, spaces); checks the task protocol."""
    return make_task_env(config.env.id, horizon(config.env), config.env.kwargs)


def io_dims(env: gymnasium.Env) -> tuple[int, int]:
    """Flat observation and action sizes of an env."""
    assert env.observation_space.shape is not None and env.action_space.shape is not None
    return int(np.prod(env.observation_space.shape)), int(np.prod(env.action_space.shape))


def build_policy(config: Config, obs_dim: int, act_dim: int) -> GaussianMLPPolicy:
    """The configured policy in the configured dtype, initialised from ``train.seed``."""
    policy = GaussianMLPPolicy.from_config(config.policy, obs_dim, act_dim)
    policy.reset_parameters(torch.Generator().manual_seed(config.train.seed))
    return policy.to(torch_dtype(config.train.dtype))


def make_sampler(config: Config, num_tasks: int, episodes_per_task: int) -> Sampler:
    """A sampler of ``episodes_per_task`` episodes for each of ``num_tasks`` tasks of the config's env.

    ``sampler.backend: ray`` gives a :class:`metarl.ray_sampler.RaySampler` (same interface, same
    episodes bit for bit); Ray is imported only then.
    """
    e, s = config.env, config.sampler
    if s.backend == "ray":
        from metarl.ray_sampler import RaySampler

        # the same interface as Sampler (collect, close, collect_seconds), not a subclass
        return RaySampler(  # type: ignore[return-value]
            e.id,
            num_tasks,
            episodes_per_task,
            horizon(e),
            env_kwargs=e.kwargs,
            vector_kwargs=e.vector_kwargs,
            vectorization=e.vectorization,
            dtype=torch_dtype(config.train.dtype),
            num_workers=s.num_workers,
            ray_address=s.ray_address,
            num_cpus=s.num_cpus,
            cpus_per_worker=s.cpus_per_worker,
            max_failures=s.max_failures,
        )
    return Sampler(
        e.id,
        num_tasks,
        episodes_per_task,
        horizon(e),
        env_kwargs=e.kwargs,
        vector_kwargs=e.vector_kwargs,
        vectorization=e.vectorization,
        dtype=torch_dtype(config.train.dtype),
    )


def adaptation_settings(maml: MamlConfig) -> AdaptationSettings:
    """The inner-loop settings of the ``maml`` section."""
    return AdaptationSettings(
        inner_lr=maml.inner_lr,
        num_steps=maml.num_inner_steps,
        first_order=static_first_order(maml),
        gamma=maml.gamma,
        gae_lambda=maml.gae_lambda,
        normalize_advantages=maml.normalize_advantages,
        inner_estimator=maml.inner_estimator,
    )


def trpo_settings(outer: OuterConfig, maml: MamlConfig | None = None) -> TRPOSettings:
    """The TRPO settings of the ``outer`` section; ``maml`` resolves ``outer.derivatives: auto``.

    The closed form covers the ``log`` and ``lvc`` inner estimators; ``dice`` needs autograd
    (:class:`ConfigError` if ``closed_form`` is asked for with it).
    """
    estimator = maml.inner_estimator if maml is not None else "log"
    derivatives = outer.derivatives
    if derivatives == "auto":
        derivatives = "autograd" if estimator == "dice" else "closed_form"
    elif derivatives == "closed_form" and estimator == "dice":
        raise ConfigError(
            "config key 'outer.derivatives': closed_form covers the log and lvc inner estimators, not "
            "maml.inner_estimator='dice'; use autograd or auto"
        )
    return TRPOSettings(
        max_kl=outer.max_kl,
        cg_iters=outer.cg_iters,
        cg_damping=outer.cg_damping,
        ls_backtrack=outer.ls_backtrack,
        ls_max_steps=outer.ls_max_steps,
        hvp_subsample=outer.hvp_subsample,
        curvature=outer.curvature,
        derivatives=derivatives,
    )


def iteration_rngs(seed: int, iteration: int) -> tuple[np.random.Generator, torch.Generator]:
    """Independent numpy and torch generators for one meta-iteration, derived from ``(seed, iteration)``.

    Deriving them per iteration (instead of carrying generator state) makes a resumed run
    draw exactly what the uninterrupted run would have drawn.
    """
    sequence = np.random.SeedSequence([seed, iteration])
    torch_seed = int(sequence.spawn(1)[0].generate_state(1, dtype=np.uint64)[0] >> 1)
    return np.random.default_rng(sequence), torch.Generator().manual_seed(torch_seed)
