"""Baselines for the MAML benchmark, trained with Stable-Baselines3 (the benchmark protocol is :mod:`metarl.benchmark`).

The MAML paper compares its meta-learned initialisation with

* **pretrained**: one policy trained on the whole task distribution (a new task every episode),
  then fine-tuned on each test task with the *same* inner loop as MAML;
* **random**: the same architecture from a random initialisation, adapted the same way;
* **oracle** (2D navigation): a policy that sees the task (goal appended to the observation),
  evaluated without adaptation.

Here the pretrained and oracle policies are trained with Stable-Baselines3 (PPO, or TRPO from
sb3-contrib) using an ``MlpPolicy`` whose actor has the checkpoint's architecture
(``net_arch=dict(pi=hidden, vf=hidden)``, same activation, ``log_std_init = log(init_std)``), so
that the actor's weights load exactly into metarl's :class:`~metarl.policy.GaussianMLPPolicy`
(:func:`metarl_policy_from_sb3`). :func:`metarl.benchmark.run_benchmark` then evaluates every
method with :func:`metarl.evaluation.evaluate_adaptation`: same fresh tasks, same trajectories
per step, same step sizes (alpha, then alpha/2), same seeds.

Environments: :class:`TaskResamplingWrapper` draws a task from the env's distribution at
every reset from an explicit ``numpy.random.Generator``; :class:`TaskObservationEnv` appends
the task's values (numbers, or the flattened numpy arrays / lists of an array-valued task) to
the observation: the oracle's view, registered per env by :func:`register_oracle_env`, so
metarl's sampler runs it like any task env. Third-party envs named ``module:env-id`` work: the
module is imported and the oracle is registered next to the bare id
(``tests.third_party_env:thirdparty/GoalPoint1D-v0`` -> ``thirdparty/GoalPoint1DOracle-v0``).
An env whose observation is not a flat vector, or whose tasks hold strings, has no oracle
(:func:`check_oracle` says why in one line).

SB3 models are cached in the benchmark's output directory as ``sb3_<role>_<key>.zip`` with a
``.json`` describing the key (env id, env kwargs, horizon, policy config, gamma, algorithm
settings, budget, SB3 version): re-running with the same settings loads instead of training.
Note that SB3 seeds the global ``random``/``numpy``/``torch`` generators from its ``seed``
(metarl itself never uses them).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from metarl.build import horizon, torch_dtype
from metarl.config import Config, PolicyConfig
from metarl.envs.base import Task, check_task_env
from metarl.errors import BaselineError
from metarl.evaluation import describe_value
from metarl.policy import GaussianMLPPolicy
from metarl.reporting import to_json, write_json
from metarl.sampler import resolve_env_id

Role = Literal["pretrained", "oracle"]
ROLE_SEED_INDEX: dict[str, int] = {"pretrained": 1, "oracle": 3}
"""Mixed into each role's SB3 training seeds (the roles' positions in ``maml,pretrained,random,oracle``)."""
ACTIVATION_MODULES: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}


Log = Callable[[str], None]


def _quiet(_: str) -> None:
    """The default log: say nothing."""


# --------------------------------------------------------------------------- environments


class TaskResamplingWrapper(gymnasium.Wrapper):
    """Sets a fresh task, drawn from the env's own distribution with ``rng``, before every reset.

    Training on this env is training "on the whole task distribution" (the pretrained baseline).
    """

    def __init__(self, env: gymnasium.Env, rng: np.random.Generator) -> None:
        super().__init__(env)
        self.task_env = check_task_env(env)
        self.rng = rng

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Draw a task, then reset the wrapped env."""
        self.task_env.task = self.task_env.sample_tasks(1, self.rng)[0]
        return self.env.reset(seed=seed, options=options)


class TaskObservationEnv(gymnasium.Env):
    """A task env whose observation is the inner env's observation followed by the task's values.

    The task keys (and their order) are those of the inner env's default task; each value is
    appended flattened (a number takes one slot, a ``[2]`` array two). It implements the task
    protocol itself (``task``, ``sample_tasks`` delegate to the inner env), so it draws exactly
    the same tasks from the same generator. ``env_id`` may be ``module:env-id``. Raises
    :class:`BaselineError` when the env has no oracle view (see :func:`task_sizes`).
    """

    def __init__(self, env_id: str, **env_kwargs: Any) -> None:
        self.env_id = env_id
        self.inner: Any = check_task_env(gymnasium.make(resolve_env_id(env_id), disable_env_checker=True, **env_kwargs))
        space = self.inner.observation_space
        if not isinstance(space, spaces.Box) or len(space.shape) != 1:
            self.inner.close()
            raise BaselineError(
                f"{env_id} has no oracle baseline: the oracle appends the task to the observation, "
                f"which needs a flat (1-D Box) observation space, got {space}"
            )
        try:
            self.task_sizes = task_sizes(env_id, self.inner.task)
        except BaselineError:
            self.inner.close()
            raise
        extra = sum(self.task_sizes.values())
        self.observation_space = spaces.Box(
            np.concatenate([space.low, np.full(extra, -np.inf)]).astype(np.float32),
            np.concatenate([space.high, np.full(extra, np.inf)]).astype(np.float32),
            dtype=np.float32,
        )
        self.action_space = self.inner.action_space
        self.metadata = {"render_modes": []}

    @property
    def task(self) -> Task:
        """The inner env's task."""
        return self.inner.task

    @task.setter
    def task(self, task: Task) -> None:
        self.inner.task = task

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[Task]:
        """The inner env's tasks."""
        return self.inner.sample_tasks(n, rng)

    def task_vector(self, task: Task) -> np.ndarray:
        """The task's values flattened in key order, as float32 (what is appended to the observation)."""
        if tuple(task) != tuple(self.task_sizes) and set(task) != set(self.task_sizes):
            raise BaselineError(
                f"{self.env_id}: task keys {sorted(task)} differ from the oracle's "
                f"{sorted(self.task_sizes)} (the env's default task)"
            )
        parts = [_numeric(self.env_id, key, task[key]) for key in self.task_sizes]
        sizes = {key: part.size for key, part in zip(self.task_sizes, parts)}
        if sizes != self.task_sizes:
            raise BaselineError(
                f"{self.env_id}: task value sizes {sizes} differ from those of the env's default "
                f"task {self.task_sizes}; the oracle needs tasks of one shape"
            )
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def _observe(self, obs: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(obs, dtype=np.float32).reshape(-1), self.task_vector(self.inner.task)])

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset the inner env; the observation ends with the task's values."""
        super().reset(seed=seed)
        obs, info = self.inner.reset(seed=seed, options=options)
        return self._observe(obs), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Step the inner env; the observation ends with the task's values."""
        obs, reward, terminated, truncated, info = self.inner.step(action)
        return self._observe(obs), reward, terminated, truncated, info

    def close(self) -> None:
        """Close the inner env."""
        self.inner.close()


def _numeric(env_id: str, key: str, value: Any) -> np.ndarray:
    """A task value as a flat float32 array, or :class:`BaselineError` for a string or non-numeric value."""
    if isinstance(value, (str, bytes)):
        raise BaselineError(
            f"{env_id} has no oracle baseline: its task value {key!r} is a string ({value!r}), "
            "not numbers the oracle could append to the observation"
        )
    try:
        array = np.asarray(value, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError):
        raise BaselineError(
            f"{env_id} has no oracle baseline: its task value {key!r} is {describe_value(value)}, "
            "not numbers the oracle could append to the observation"
        ) from None
    return array


def task_sizes(env_id: str, task: Task) -> dict[str, int]:
    """How many observation slots each task value takes in the oracle view (``{"goal_x": 1, "goal_y": 1}``)."""
    return {key: _numeric(env_id, key, value).size for key, value in task.items()}


def register_oracle_env(env_id: str) -> str:
    """Register (once) the oracle view of ``env_id`` and return its id, e.g. ``metarl/Navigation2DOracle-v0``.

    ``env_id`` may be ``module:env-id``: the module is imported and the oracle registered next to
    the bare id (``mypkg:mypkg/Task-v0`` -> ``mypkg/TaskOracle-v0``), with the env's episode length.
    """
    bare = resolve_env_id(env_id)
    try:
        spec = gymnasium.spec(bare)
        namespace, name, version = gymnasium.envs.registration.parse_env_id(bare)
    except gymnasium.error.Error as exc:
        raise BaselineError(f"cannot find environment {env_id!r} for its oracle baseline: {exc}") from None
    oracle_id = gymnasium.envs.registration.get_env_id(namespace, f"{name}Oracle", version)
    if oracle_id not in gymnasium.registry:
        gymnasium.register(
            id=oracle_id,
            entry_point="metarl.baselines:TaskObservationEnv",
            kwargs={"env_id": env_id},
            max_episode_steps=spec.max_episode_steps,
        )
    return oracle_id


def check_oracle(config: Config, num_tasks: int = 4) -> str:
    """Register the config env's oracle view and check it can be built and observe sampled tasks; return its id.

    Raises :class:`BaselineError` with one line saying why an env has no oracle (observation
    not a flat vector, string task values, task values whose shape varies).
    """
    oracle_id = register_oracle_env(config.env.id)
    env = TaskObservationEnv(config.env.id, **config.env.kwargs)
    try:
        for task in env.sample_tasks(num_tasks, np.random.default_rng(0)):
            env.task_vector(task)
    finally:
        env.close()
    return oracle_id


def oracle_config(config: Config) -> Config:
    """The config with the env replaced by its oracle view (metarl's sampler runs it through SyncVectorEnv)."""
    oracle = copy.deepcopy(config)
    oracle.env.id = register_oracle_env(config.env.id)
    oracle.env.vectorization = "sync"
    oracle.env.vector_kwargs = {}
    return oracle


def role_env_id(config: Config, role: Role) -> str:
    """The env a baseline is trained on: the config's env, or its oracle view."""
    return config.env.id if role == "pretrained" else register_oracle_env(config.env.id)


def make_resampling_env(env_id: str, horizon: int, env_kwargs: dict[str, Any], rng: np.random.Generator) -> Any:
    """``Monitor(TaskResamplingWrapper(make(env_id)))``: one training env for SB3 (``env_id`` may be ``module:id``)."""
    from stable_baselines3.common.monitor import Monitor

    env = gymnasium.make(resolve_env_id(env_id), max_episode_steps=horizon, **env_kwargs)
    return Monitor(TaskResamplingWrapper(env, rng))


def require_sb3(algo: str = "ppo") -> None:
    """Raise :class:`BaselineError` when Stable-Baselines3 (or sb3-contrib for TRPO) is not installed."""
    try:
        import stable_baselines3  # noqa: F401

        if algo == "trpo":
            import sb3_contrib  # noqa: F401
    except ImportError as exc:
        raise BaselineError(
            f"the pretrained and oracle baselines need Stable-Baselines3: pip install 'metarl[baselines]' ({exc})"
        ) from None


# --------------------------------------------------------------------------- SB3 <-> metarl


def sb3_policy_kwargs(policy: PolicyConfig) -> dict[str, Any]:
    """``policy_kwargs`` for SB3's ``MlpPolicy`` whose actor matches a metarl policy config."""
    if policy.activation not in ACTIVATION_MODULES:
        raise BaselineError(
            f"policy.activation {policy.activation!r} has no SB3 equivalent; allowed: {sorted(ACTIVATION_MODULES)}"
        )
    hidden = list(policy.hidden_sizes)
    return {
        "net_arch": {"pi": hidden, "vf": list(hidden)},
        "activation_fn": ACTIVATION_MODULES[policy.activation],
        "log_std_init": math.log(policy.init_std),
    }


def sb3_actor_state(sb3_policy: Any, activation: str) -> dict[str, torch.Tensor]:
    """The actor of an SB3 ``ActorCriticPolicy`` as a metarl ``GaussianMLPPolicy`` state dict.

    ``mlp_extractor.policy_net``'s linear layers and ``action_net`` become ``layers.0..L``
    (SB3's ``Linear`` stores ``[out, in]`` weights, as metarl does) and SB3's state-independent
    ``log_std`` becomes ``log_std``. Raises ``ValueError`` when the policy is not a plain
    diagonal Gaussian MLP with the given activation on flat observations.
    """
    from stable_baselines3.common.distributions import DiagGaussianDistribution
    from stable_baselines3.common.torch_layers import FlattenExtractor

    if not isinstance(sb3_policy.action_dist, DiagGaussianDistribution) or sb3_policy.squash_output:
        raise BaselineError(
            f"SB3 policy must use an unsquashed DiagGaussianDistribution (no gSDE), "
            f"got {type(sb3_policy.action_dist).__name__}, squash_output={sb3_policy.squash_output}"
        )
    if not isinstance(sb3_policy.pi_features_extractor, FlattenExtractor):
        extractor = type(sb3_policy.pi_features_extractor).__name__
        raise BaselineError(f"SB3 policy must use a FlattenExtractor, got {extractor}")
    modules = list(sb3_policy.mlp_extractor.policy_net)
    linears = [m for m in modules if isinstance(m, nn.Linear)]
    activations = [m for m in modules if not isinstance(m, nn.Linear)]
    expected = ACTIVATION_MODULES[activation]
    if len(activations) != len(linears) or not all(isinstance(m, expected) for m in activations):
        raise BaselineError(
            f"SB3 actor activations {[type(m).__name__ for m in activations]} do not match "
            f"metarl's {activation!r} after every hidden layer"
        )
    state: dict[str, torch.Tensor] = {}
    for i, layer in enumerate([*linears, sb3_policy.action_net]):
        state[f"layers.{i}.weight"] = layer.weight.detach().clone()
        state[f"layers.{i}.bias"] = layer.bias.detach().clone()
    state["log_std"] = sb3_policy.log_std.detach().clone()
    return state


def metarl_policy_from_sb3(
    sb3_policy: Any, policy_config: PolicyConfig, dtype: torch.dtype = torch.float32
) -> GaussianMLPPolicy:
    """A :class:`GaussianMLPPolicy` with exactly the actor of an SB3 ``ActorCriticPolicy`` (same means, log-std)."""
    obs_space, act_space = sb3_policy.observation_space, sb3_policy.action_space
    if len(obs_space.shape) != 1 or len(act_space.shape) != 1:
        raise BaselineError(f"need flat observation and action spaces, got {obs_space.shape} and {act_space.shape}")
    policy = GaussianMLPPolicy.from_config(policy_config, obs_space.shape[0], act_space.shape[0])
    state = sb3_actor_state(sb3_policy, policy_config.activation)
    try:
        policy.load_state_dict(state)
    except RuntimeError as exc:
        raise BaselineError(f"SB3 actor does not match policy config {policy_config}: {exc}") from exc
    return policy.to(dtype)


# --------------------------------------------------------------------------- SB3 training (cached)


@dataclass(frozen=True)
class SB3Settings:
    """How a Stable-Baselines3 baseline is trained (the cache key includes all of it)."""

    algo: Literal["ppo", "trpo"] = "ppo"
    total_timesteps: int = 300_000
    n_envs: int = 8
    n_steps: int = 256
    """Steps per env per rollout (capped so that one rollout fits in a tiny budget)."""
    batch_size: int = 256
    n_epochs: int = 10
    """PPO epochs per rollout (unused by TRPO)."""
    learning_rate: float = 3e-4
    """PPO's learning rate; TRPO's value-function learning rate."""
    gae_lambda: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.algo not in ("ppo", "trpo"):
            raise BaselineError(f"SB3 algorithm must be 'ppo' or 'trpo', got {self.algo!r}")
        for name in ("total_timesteps", "n_envs", "n_steps", "batch_size", "n_epochs"):
            if getattr(self, name) < 1:
                raise BaselineError(f"SB3 {name} must be >= 1, got {getattr(self, name)}")

    def rollout_steps(self) -> int:
        """Steps per env per rollout: ``n_steps``, or fewer for a budget smaller than one rollout."""
        return max(8, min(self.n_steps, math.ceil(self.total_timesteps / self.n_envs)))

    def minibatch_size(self) -> int:
        """``batch_size`` if it divides the rollout, else the whole rollout (SB3 warns on a ragged last batch)."""
        rollout = self.rollout_steps() * self.n_envs
        return self.batch_size if rollout % self.batch_size == 0 else rollout


def cache_key(config: Config, role: Role, settings: SB3Settings) -> dict[str, Any]:
    """Everything the trained SB3 model depends on."""
    import stable_baselines3

    return {
        "role": role,
        "env_id": config.env.id,
        "env_kwargs": config.env.kwargs,
        "horizon": horizon(config.env),
        "policy": asdict(config.policy),
        "gamma": config.maml.gamma,
        "sb3": asdict(settings),
        "rollout_steps": settings.rollout_steps(),
        "minibatch_size": settings.minibatch_size(),
        "sb3_version": stable_baselines3.__version__,
    }


def normalised(key: dict[str, Any]) -> dict[str, Any]:
    """``key`` as it reads back from JSON (tuples as lists, numpy values as numbers): comparable with a cache file."""
    return json.loads(to_json(key))


def cache_path(cache_dir: Path, key: dict[str, Any]) -> Path:
    """``<cache_dir>/sb3_<role>_<digest>.zip`` for a cache key."""
    digest = hashlib.sha256(json.dumps(normalised(key), sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir / f"sb3_{key['role']}_{digest}.zip"


def _algo_class(algo: str) -> Any:
    if algo == "ppo":
        from stable_baselines3 import PPO

        return PPO
    from sb3_contrib import TRPO

    return TRPO


def _progress_callback(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar over SB3 timesteps with the mean training-episode return (SB3's own bar needs ``rich``)."""
    from stable_baselines3.common.callbacks import BaseCallback
    from tqdm import tqdm

    class ProgressCallback(BaseCallback):
        def _on_training_start(self) -> None:
            self.bar = tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True, unit="step")

        def _on_step(self) -> bool:
            self.bar.update(self.training_env.num_envs)
            return True

        def _on_rollout_end(self) -> None:
            episodes = self.model.ep_info_buffer
            if episodes:
                self.bar.set_postfix(ep_return=f"{np.mean([e['r'] for e in episodes]):.1f}")

        def _on_training_end(self) -> None:
            self.bar.close()

    return ProgressCallback()


def train_sb3(config: Config, role: Role, settings: SB3Settings, progress: bool = True) -> Any:
    """Train an SB3 actor-critic on the task distribution (``role="pretrained"``) or its oracle view.

    ``n_envs`` training envs in a ``DummyVecEnv``, each resampling its task at every reset from
    its own generator (spawned from ``SeedSequence([seed, role])``); ``gamma`` is the config's.
    Runs on one torch thread. Returns the SB3 model.
    """
    from stable_baselines3.common.vec_env import DummyVecEnv

    env_id = role_env_id(config, role)
    sequences = np.random.SeedSequence([settings.seed, ROLE_SEED_INDEX[role]]).spawn(settings.n_envs)
    fns: list[Callable[[], gymnasium.Env]] = [
        partial(make_resampling_env, env_id, horizon(config.env), dict(config.env.kwargs), np.random.default_rng(s))
        for s in sequences
    ]
    venv = DummyVecEnv(fns)
    n_steps = settings.rollout_steps()
    common = dict(
        n_steps=n_steps,
        batch_size=settings.minibatch_size(),
        gamma=config.maml.gamma,
        gae_lambda=settings.gae_lambda,
        learning_rate=settings.learning_rate,
        policy_kwargs=sb3_policy_kwargs(config.policy),
        seed=settings.seed,
        device="cpu",
        verbose=0,
    )
    if settings.algo == "ppo":
        common["n_epochs"] = settings.n_epochs
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = _algo_class(settings.algo)("MlpPolicy", venv, **common)
        desc = f"SB3 {settings.algo.upper()} ({role})"
        model.learn(settings.total_timesteps, callback=_progress_callback(settings.total_timesteps, desc, progress))
    finally:
        torch.set_num_threads(threads)
        venv.close()
    return model


def read_cache_meta(meta: Path) -> dict[str, Any]:
    """The ``.json`` next to a cached SB3 model (``{}`` when it is missing or unreadable: the model is retrained)."""
    try:
        data = json.loads(meta.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass
class SB3Baseline:
    """A trained (or cached) SB3 baseline and its metarl policy."""

    policy: GaussianMLPPolicy
    path: Path
    cached: bool
    train_seconds: float
    key: dict[str, Any] = field(default_factory=dict)


def sb3_baseline(
    config: Config, role: Role, settings: SB3Settings, cache_dir: Path, progress: bool = True, log: Log = _quiet
) -> SB3Baseline:
    """Load the SB3 baseline for ``role`` from ``cache_dir`` or train and save it; convert to a metarl policy."""
    require_sb3(settings.algo)
    key = cache_key(config, role, settings)
    path = cache_path(cache_dir, key)
    meta = path.with_suffix(".json")
    cls = _algo_class(settings.algo)
    stored = read_cache_meta(meta)
    if path.is_file() and stored.get("key") == normalised(key):
        log(f"[{role}] loading cached SB3 {settings.algo.upper()} model {path}")
        model = cls.load(path, device="cpu")
        seconds, cached = float(stored.get("train_seconds", float("nan"))), True
    else:
        log(
            f"[{role}] training SB3 {settings.algo.upper()} on {role_env_id(config, role)} for "
            f"{settings.total_timesteps} timesteps ({settings.n_envs} envs) -> {path}"
        )
        start = time.perf_counter()
        model = train_sb3(config, role, settings, progress)
        seconds, cached = time.perf_counter() - start, False
        cache_dir.mkdir(parents=True, exist_ok=True)
        model.save(path)
        write_json(meta, {"key": key, "train_seconds": seconds})
        log(f"[{role}] trained in {seconds:.0f} s")
    policy = metarl_policy_from_sb3(model.policy, config.policy, torch_dtype(config.train.dtype))
    return SB3Baseline(policy, path, cached, seconds, key)
