"""Baselines for the MAML benchmark, trained with Stable-Baselines3, and the benchmark itself.

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
(:func:`metarl_policy_from_sb3`). Every method is then evaluated by
:func:`metarl.evaluation.evaluate_adaptation`: same fresh tasks, same trajectories per step,
same step sizes (alpha, then alpha/2), same seeds.

Environments: :class:`TaskResamplingWrapper` draws a task from the env's distribution at
every reset from an explicit ``numpy.random.Generator``; :class:`TaskObservationEnv` appends
the task's values to the observation (the oracle's view; registered per env by
:func:`register_oracle_env`, so metarl's sampler runs it like any task env).

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
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from metarl.envs.base import Task, check_task_env
from metarl.config import Config, PolicyConfig
from metarl.evaluation import markdown_table
from metarl.evaluation import evaluate_adaptation
from metarl.paper import rl_reference
from metarl.maml import inner_step_sizes
from metarl.policy import GaussianMLPPolicy
from metarl.checkpoint import load_checkpoint
from metarl.build import build_policy, horizon, torch_dtype

Role = Literal["pretrained", "oracle"]
METHODS = ("maml", "pretrained", "random", "oracle")
DISPLAY_NAMES = {"maml": "MAML", "pretrained": "pretrained", "random": "random", "oracle": "oracle"}
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

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Draw a task, then reset the wrapped env."""
        self.task_env.task = self.task_env.sample_tasks(1, self.rng)[0]
        return self.env.reset(seed=seed, options=options)


class TaskObservationEnv(gymnasium.Env):
    """A task env whose observation is the inner env's observation followed by the task's values.

    The task keys (and their order) are those of the inner env's default task. It implements
    the task protocol itself (``task``, ``sample_tasks`` delegate to the inner env), so it
    draws exactly the same tasks from the same generator.
    """

    def __init__(self, env_id: str, **env_kwargs: Any) -> None:
        self.inner = check_task_env(gymnasium.make(env_id, disable_env_checker=True, **env_kwargs))
        space = self.inner.observation_space  # type: ignore[attr-defined]
        if not isinstance(space, spaces.Box) or len(space.shape) != 1:
            raise ValueError(f"{env_id}: the oracle view needs a 1-D Box observation space, got {space}")
        self.task_keys: tuple[str, ...] = tuple(self.inner.task)
        extra = len(self.task_keys)
        self.observation_space = spaces.Box(
            np.concatenate([space.low, np.full(extra, -np.inf)]).astype(np.float32),
            np.concatenate([space.high, np.full(extra, np.inf)]).astype(np.float32),
            dtype=np.float32,
        )
        self.action_space = self.inner.action_space  # type: ignore[attr-defined]
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

    def _observe(self, obs: np.ndarray) -> np.ndarray:
        task = self.inner.task
        values = np.array([task[k] for k in self.task_keys], dtype=np.float32)
        return np.concatenate([np.asarray(obs, dtype=np.float32).reshape(-1), values])

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        obs, info = self.inner.reset(seed=seed, options=options)  # type: ignore[attr-defined]
        return self._observe(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.inner.step(action)  # type: ignore[attr-defined]
        return self._observe(obs), reward, terminated, truncated, info

    def close(self) -> None:
        self.inner.close()  # type: ignore[attr-defined]


def register_oracle_env(env_id: str) -> str:
    """Register (once) the oracle view of ``env_id`` and return its id, e.g. ``metarl/Navigation2DOracle-v0``."""
    namespace, name, version = gymnasium.envs.registration.parse_env_id(env_id)
    oracle_id = gymnasium.envs.registration.get_env_id(namespace, f"{name}Oracle", version)
    if oracle_id not in gymnasium.registry:
        gymnasium.register(
            id=oracle_id,
            entry_point="metarl.baselines:TaskObservationEnv",
            kwargs={"env_id": env_id},
            max_episode_steps=gymnasium.spec(env_id).max_episode_steps,
        )
    return oracle_id


def role_env_id(config: Config, role: Role) -> str:
    """The env a baseline is trained on: the config's env, or its oracle view."""
    return config.env.id if role == "pretrained" else register_oracle_env(config.env.id)


def make_resampling_env(env_id: str, horizon: int, env_kwargs: dict[str, Any], rng: np.random.Generator):
    """``Monitor(TaskResamplingWrapper(make(env_id)))``: one training env for SB3."""
    from stable_baselines3.common.monitor import Monitor

    env = gymnasium.make(env_id, max_episode_steps=horizon, **env_kwargs)
    return Monitor(TaskResamplingWrapper(env, rng))


# --------------------------------------------------------------------------- SB3 <-> metarl


def sb3_policy_kwargs(policy: PolicyConfig) -> dict[str, Any]:
    """``policy_kwargs`` for SB3's ``MlpPolicy`` whose actor matches a metarl policy config."""
    if policy.activation not in ACTIVATION_MODULES:
        raise ValueError(f"policy.activation {policy.activation!r} has no SB3 equivalent; "
                         f"allowed: {sorted(ACTIVATION_MODULES)}")
    hidden = list(policy.hidden_sizes)
    return {"net_arch": {"pi": hidden, "vf": list(hidden)}, "activation_fn": ACTIVATION_MODULES[policy.activation],
            "log_std_init": math.log(policy.init_std)}


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
        raise ValueError(f"SB3 policy must use an unsquashed DiagGaussianDistribution (no gSDE), "
                         f"got {type(sb3_policy.action_dist).__name__}, squash_output={sb3_policy.squash_output}")
    if not isinstance(sb3_policy.pi_features_extractor, FlattenExtractor):
        extractor = type(sb3_policy.pi_features_extractor).__name__
        raise ValueError(f"SB3 policy must use a FlattenExtractor, got {extractor}")
    modules = list(sb3_policy.mlp_extractor.policy_net)
    linears = [m for m in modules if isinstance(m, nn.Linear)]
    activations = [m for m in modules if not isinstance(m, nn.Linear)]
    expected = ACTIVATION_MODULES[activation]
    if len(activations) != len(linears) or not all(isinstance(m, expected) for m in activations):
        raise ValueError(f"SB3 actor activations {[type(m).__name__ for m in activations]} do not match "
                         f"metarl's {activation!r} after every hidden layer")
    state: dict[str, torch.Tensor] = {}
    for i, layer in enumerate([*linears, sb3_policy.action_net]):
        state[f"layers.{i}.weight"] = layer.weight.detach().clone()
        state[f"layers.{i}.bias"] = layer.bias.detach().clone()
    state["log_std"] = sb3_policy.log_std.detach().clone()
    return state


def metarl_policy_from_sb3(sb3_policy: Any, policy_config: PolicyConfig, dtype: torch.dtype = torch.float32
                           ) -> GaussianMLPPolicy:
    """A :class:`GaussianMLPPolicy` with exactly the actor of an SB3 ``ActorCriticPolicy`` (same means, log-std)."""
    obs_space, act_space = sb3_policy.observation_space, sb3_policy.action_space
    if len(obs_space.shape) != 1 or len(act_space.shape) != 1:
        raise ValueError(f"need flat observation and action spaces, got {obs_space.shape} and {act_space.shape}")
    policy = GaussianMLPPolicy.from_config(policy_config, obs_space.shape[0], act_space.shape[0])
    state = sb3_actor_state(sb3_policy, policy_config.activation)
    try:
        policy.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"SB3 actor does not match policy config {policy_config}: {exc}") from exc
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
            raise ValueError(f"SB3 algorithm must be 'ppo' or 'trpo', got {self.algo!r}")
        for name in ("total_timesteps", "n_envs", "n_steps", "batch_size", "n_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"SB3 {name} must be >= 1, got {getattr(self, name)}")

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

    return {"role": role, "env_id": config.env.id, "env_kwargs": config.env.kwargs, "horizon": horizon(config.env),
            "policy": asdict(config.policy), "gamma": config.maml.gamma, "sb3": asdict(settings),
            "rollout_steps": settings.rollout_steps(), "minibatch_size": settings.minibatch_size(),
            "sb3_version": stable_baselines3.__version__}


def cache_path(cache_dir: Path, key: dict[str, Any]) -> Path:
    """``<cache_dir>/sb3_<role>_<digest>.zip`` for a cache key."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir / f"sb3_{key['role']}_{digest}.zip"


def _algo_class(algo: str):
    if algo == "ppo":
        from stable_baselines3 import PPO

        return PPO
    from sb3_contrib import TRPO

    return TRPO


def _progress_callback(total: int, desc: str, enabled: bool):
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


def train_sb3(config: Config, role: Role, settings: SB3Settings, progress: bool = True):
    """Train an SB3 actor-critic on the task distribution (``role="pretrained"``) or its oracle view.

    ``n_envs`` training envs in a ``DummyVecEnv``, each resampling its task at every reset from
    its own generator (spawned from ``SeedSequence([seed, role])``); ``gamma`` is the config's.
    Runs on one torch thread. Returns the SB3 model.
    """
    from stable_baselines3.common.vec_env import DummyVecEnv

    env_id = role_env_id(config, role)
    sequences = np.random.SeedSequence([settings.seed, METHODS.index(role)]).spawn(settings.n_envs)
    fns = [partial(make_resampling_env, env_id, horizon(config.env), dict(config.env.kwargs), np.random.default_rng(s))
           for s in sequences]
    venv = DummyVecEnv(fns)
    n_steps = settings.rollout_steps()
    common = dict(n_steps=n_steps, batch_size=settings.minibatch_size(),
                  gamma=config.maml.gamma, gae_lambda=settings.gae_lambda, learning_rate=settings.learning_rate,
                  policy_kwargs=sb3_policy_kwargs(config.policy), seed=settings.seed, device="cpu", verbose=0)
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


@dataclass
class SB3Baseline:
    """A trained (or cached) SB3 baseline and its metarl policy."""

    policy: GaussianMLPPolicy
    path: Path
    cached: bool
    train_seconds: float
    key: dict[str, Any] = field(default_factory=dict)


def sb3_baseline(config: Config, role: Role, settings: SB3Settings, cache_dir: Path, progress: bool = True,
                 log: Log = _quiet) -> SB3Baseline:
    """Load the SB3 baseline for ``role`` from ``cache_dir`` or train and save it; convert to a metarl policy."""
    key = cache_key(config, role, settings)
    path = cache_path(cache_dir, key)
    meta = path.with_suffix(".json")
    cls = _algo_class(settings.algo)
    if path.is_file() and meta.is_file() and json.loads(meta.read_text()).get("key") == key:
        log(f"[{role}] loading cached SB3 {settings.algo.upper()} model {path}")
        model = cls.load(path, device="cpu")
        seconds, cached = float(json.loads(meta.read_text()).get("train_seconds", float("nan"))), True
    else:
        log(f"[{role}] training SB3 {settings.algo.upper()} on {role_env_id(config, role)} for "
            f"{settings.total_timesteps} timesteps ({settings.n_envs} envs) -> {path}")
        start = time.perf_counter()
        model = train_sb3(config, role, settings, progress)
        seconds, cached = time.perf_counter() - start, False
        cache_dir.mkdir(parents=True, exist_ok=True)
        model.save(path)
        meta.write_text(json.dumps({"key": key, "train_seconds": seconds}, indent=2))
        log(f"[{role}] trained in {seconds:.0f} s")
    policy = metarl_policy_from_sb3(model.policy, config.policy, torch_dtype(config.train.dtype))
    return SB3Baseline(policy, path, cached, seconds, key)


# --------------------------------------------------------------------------- the benchmark


@dataclass(frozen=True)
class BenchmarkProtocol:
    """The evaluation protocol shared by every method (``None``: the checkpoint config's ``eval`` value)."""

    num_tasks: int = 40
    num_steps: int = 3
    episodes_per_step: int | None = None
    seed: int | None = None


def oracle_config(config: Config) -> Config:
    """The config with the env replaced by its oracle view (metarl's sampler runs it through SyncVectorEnv)."""
    oracle = copy.deepcopy(config)
    oracle.env.id = register_oracle_env(config.env.id)
    oracle.env.vectorization = "sync"
    oracle.env.vector_kwargs = {}
    return oracle


def default_methods(env_id: str) -> tuple[str, ...]:
    """Every method; the oracle only where it is cheap (2D navigation)."""
    return METHODS if env_id.startswith("metarl/Navigation2D") else ("maml", "pretrained", "random")


def parse_methods(text: str) -> tuple[str, ...]:
    """``"maml,pretrained"`` -> ``("maml", "pretrained")``; unknown names are an error."""
    methods = tuple(m.strip().lower() for m in text.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown method(s) {unknown or text!r}; allowed: {', '.join(METHODS)}")
    return methods


def run_benchmark(
    checkpoint: str | Path,
    output_dir: Path | None = None,
    methods: Sequence[str] | None = None,
    sb3: SB3Settings = SB3Settings(),
    protocol: BenchmarkProtocol = BenchmarkProtocol(),
    progress: bool = True,
    log: Log = _quiet,
) -> dict[str, Any]:
    """Evaluate MAML and the baselines on the same fresh tasks with the same adaptation procedure.

    Every method goes through :func:`metarl.evaluation.evaluate_adaptation` with the same
    tasks, seed, trajectories per step and step sizes; the oracle is evaluated without
    adaptation and its step-0 return is reported at every step (``"adapted": false``). SB3
    models are cached in ``output_dir`` (default ``<run dir>/benchmark``). Returns a
    JSON-serialisable dict with ``methods`` (display name -> evaluation result), the protocol,
    the SB3 settings and the paper's reference numbers where known.
    """
    loaded = load_checkpoint(checkpoint)
    policy, config, file = loaded.policy, loaded.config, loaded.path
    if config.maml.loss != "pg":
        raise ValueError(f"the benchmark compares RL policies; {file} was trained with maml.loss={config.maml.loss!r}")
    methods = tuple(methods) if methods is not None else default_methods(config.env.id)
    parse_methods(",".join(methods))
    if protocol.num_tasks < 1 or protocol.num_steps < 0:
        raise ValueError(f"need num_tasks >= 1 and num_steps >= 0, got {protocol.num_tasks}, {protocol.num_steps}")
    out = output_dir if output_dir is not None else file.parent.parent / "benchmark"
    episodes = protocol.episodes_per_step or config.eval.episodes_per_step
    seed = config.eval.seed if protocol.seed is None else protocol.seed

    def evaluate(p: GaussianMLPPolicy, cfg: Config, steps: int) -> dict[str, Any]:
        return evaluate_adaptation(p, cfg, protocol.num_tasks, steps, episodes, seed)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    results: dict[str, dict[str, Any]] = {}
    sb3_info: dict[str, Any] = {}
    try:
        for method in methods:
            name = DISPLAY_NAMES[method]
            start = time.perf_counter()
            if method == "maml":
                log(f"[maml] evaluating {file}")
                result = evaluate(policy, config, protocol.num_steps)
            elif method == "random":
                log("[random] evaluating a random initialisation (build_policy, train.seed)")
                result = evaluate(build_policy(config, policy.obs_dim, policy.act_dim), config, protocol.num_steps)
            else:
                baseline = sb3_baseline(config, method, sb3, out, progress, log)  # type: ignore[arg-type]
                sb3_info[method] = {"path": str(baseline.path), "cached": baseline.cached,
                                    "train_seconds": baseline.train_seconds,
                                    "log_std": baseline.policy.log_std.detach().tolist()}
                log(f"[{method}] evaluating the SB3 policy{'' if method == 'pretrained' else ' without adaptation'}")
                if method == "pretrained":
                    result = evaluate(baseline.policy, config, protocol.num_steps)
                else:
                    result = flat_result(evaluate(baseline.policy, oracle_config(config), 0), protocol.num_steps)
            result["adapted"] = method != "oracle"
            result["eval_seconds"] = time.perf_counter() - start
            results[name] = result
            log(f"[{method}] return after 0..{protocol.num_steps} steps: "
                + " / ".join(f"{s['mean_return']:.2f}" for s in result["steps"]))
    finally:
        torch.set_num_threads(threads)
    lr = config.maml.inner_lr
    reference = rl_reference(config.env.id, horizon(config.env))
    return {
        "env_id": config.env.id,
        "horizon": horizon(config.env),
        "checkpoint": str(file),
        "protocol": {"num_tasks": protocol.num_tasks, "num_steps": protocol.num_steps, "episodes_per_step": episodes,
                     "seed": seed, "inner_lr": lr,
                     "step_sizes": inner_step_sizes(lr, protocol.num_steps, decay_after_first=True),
                     "actions": "sampled from the Gaussian policy (as in training)", "torch_threads": 1},
        "policy": asdict(config.policy),
        "sb3": {"settings": asdict(sb3), "rollout_steps_per_env": sb3.rollout_steps(),
                "minibatch_size": sb3.minibatch_size(), **sb3_info},
        "methods": results,
        "paper_reference": {k: v[: protocol.num_steps + 1] for k, v in reference.items()},
        "output_dir": str(out),
    }


def flat_result(result: dict[str, Any], num_steps: int) -> dict[str, Any]:
    """A no-adaptation result (step 0 only) repeated at steps 0..``num_steps`` (a flat line in tables and plots)."""
    first = result["steps"][0]
    return {**result, "steps": [{**first, "step": k} for k in range(num_steps + 1)],
            "per_task": result["per_task"][:1]}


def report_markdown(data: dict[str, Any], figure: str, command: str) -> str:
    """The markdown report: protocol, table, paper reference, baseline details, command."""
    p, sb3 = data["protocol"], data["sb3"]
    settings = sb3["settings"]
    steps = ", ".join(f"{lr:g}" for lr in p["step_sizes"]) or "none"
    lines = [
        f"# MAML vs baselines on {data['env_id']} (horizon {data['horizon']})",
        "",
        f"Mean return ± 95% CI over {p['num_tasks']} fresh tasks (seed {p['seed']}), {p['episodes_per_step']} "
        f"trajectories per task and step, actions {p['actions']}. Every method is adapted with metarl's inner "
        f"loop (REINFORCE + linear baseline) with step sizes {steps}. Policy: {data['policy']['hidden_sizes']} "
        f"{data['policy']['activation']}. Evaluation and SB3 training ran on one torch thread.",
        "",
        markdown_table(data["methods"]),
        "",
    ]
    if data["paper_reference"]:
        lines += ["Paper (Finn et al. 2017, read off the figure, ±10%): "
                  + "; ".join(f"{k}: {' / '.join(f'{v:g}' for v in values)}"
                              for k, values in data["paper_reference"].items()) + ".", ""]
    details = {
        "MAML": f"checkpoint `{data['checkpoint']}`.",
        "pretrained": (f"SB3 {settings['algo'].upper()} on the whole task distribution (new task every episode), "
                       f"{settings['total_timesteps']} timesteps, {settings['n_envs']} envs x "
                       f"{sb3['rollout_steps_per_env']} steps per rollout, lr {settings['learning_rate']:g}, "
                       f"gae_lambda {settings['gae_lambda']:g}, seed {settings['seed']}; actor weights loaded into "
                       f"metarl's policy, then adapted like MAML."),
        "random": "the same architecture from a random initialisation (`build_policy`, the config's seed).",
        "oracle": (f"SB3 {settings['algo'].upper()} policy that sees the task (appended to the observation), "
                   f"same budget; evaluated without adaptation (flat line)."),
    }
    for name in data["methods"]:
        key = name.lower() if name != "MAML" else "maml"
        text = details.get(name, "")
        if key in sb3:
            info = sb3[key]
            how = "loaded from cache" if info["cached"] else "trained"
            text += (f" Model `{Path(info['path']).name}` ({how}; training took {info['train_seconds']:.0f} s); "
                     f"learned std {', '.join(f'{math.exp(v):.3f}' for v in info['log_std'])}.")
        lines.append(f"- **{name}**: {text}")
    lines += ["", f"Figure: `{figure}`.", "", f"Command: `{command}`"]
    return "\n".join(lines)
