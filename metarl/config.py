"""Experiment configuration: typed dataclasses, YAML loading, ``key=value`` overrides and validation.

Every field has a type and, where it matters, a range; a bad config stops with one line
naming the key, the bad value and what is allowed (:class:`ConfigError`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from metarl.errors import ConfigError

__all__ = ["Config", "ConfigError", "describe", "from_dict", "load_config", "load_yaml", "to_dict"]


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader plus YAML 1.2 floats: PyYAML follows YAML 1.1, which reads ``1e-3``,
    ``1E5`` and ``1.0e5`` (no dot, or no exponent sign) as strings."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$"),
    list("-+.0123456789"),
)


def load_yaml(text: str) -> Any:
    """Parse YAML text with YAML 1.2 floats (``1e-3`` is a float, as in Python and YAML 1.2)."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: plain data only


def _f(default: Any, help: str, **check: float) -> Any:
    """A dataclass field with a help text and optional bounds (``gt``, ``ge``, ``le``, ``lt``)."""
    kwargs: dict[str, Any] = {"metadata": {"help": help, **check}}
    if isinstance(default, (list, dict)):
        kwargs["default_factory"] = lambda: type(default)(default)
    else:
        kwargs["default"] = default
    return field(**kwargs)


@dataclass
class EnvConfig:
    """Which task distribution to meta-train on."""

    id: str = _f("metarl/Navigation2D-v0", "registered gymnasium id of an env implementing the task protocol")
    horizon: int | None = _f(
        None,
        "episode length T (steps; default: the env's registered max_episode_steps); "
        "episodes that terminate earlier are masked",
        gt=0,
    )
    kwargs: dict = _f({}, "keyword arguments for the env constructor")
    vector_kwargs: dict = _f({}, "keyword arguments for the natively vectorised form only (e.g. num_threads)")
    vectorization: Literal["auto", "native", "sync"] = _f(
        "auto", "auto: the env's native vector form if registered, else gymnasium SyncVectorEnv"
    )


@dataclass
class PolicyConfig:
    """Gaussian MLP policy."""

    hidden_sizes: list[int] = _f([64, 64], "hidden layer widths")
    activation: Literal["tanh", "relu"] = _f("tanh", "hidden activation")
    init_std: float = _f(1.0, "initial action standard deviation", gt=0)
    init: Literal["glorot", "fan_in"] = _f(
        "glorot", "weight init: Glorot-uniform with zero biases (rllab), or torch.nn.Linear's fan-in uniform"
    )


@dataclass
class MamlConfig:
    """Inner loop and sampling (per meta-iteration)."""

    loss: Literal["pg", "supervised", "classification"] = _f(
        "pg",
        "inner/outer loss family: policy gradient, supervised MSE (regression), or cross-entropy (N-way K-shot "
        "classification of a few-shot env such as metarl/Glyphs-v0, with the classifier section's model)",
    )
    meta_batch_size: int = _f(20, "tasks per meta-iteration (n)", gt=0)
    episodes_per_task: int = _f(20, "trajectories per task and inner step (B)", gt=0)
    samples_per_task: int | None = _f(
        None,
        "rllab's sample budget per task and sampling (the paper's 20 x 200 = 4000): after the B episodes, tasks "
        "with fewer valid steps (episodes that terminated early) get further rounds of B episodes, each kept "
        "while the task is below the budget, for at most 4 x ceil(budget / (horizon x B)) samplings; "
        "null: exactly B episodes per task",
        gt=0,
    )
    inner_lr: float = _f(0.1, "inner-loop step size alpha", gt=0)
    num_inner_steps: int = _f(1, "inner gradient steps k (re-sampling between steps)", gt=0)
    first_order: bool | None = _f(
        None,
        "detach the inner gradient (first order); null: what maml.algorithm implies (fomaml, reptile: true; "
        "mamlpp: annealed, see mamlpp.first_order_iterations; the others: false). A value that contradicts "
        "the algorithm is an error",
    )
    algorithm: Literal["maml", "fomaml", "reptile", "metasgd", "anil", "mamlpp", "vpg", "promp"] = _f(
        "maml",
        "the meta-learning algorithm (docs/design.md#algorithms): maml, fomaml (first order), reptile "
        "(Nichol et al. 2018), metasgd (learned per-parameter inner step sizes, Li et al. 2017), anil (only "
        "maml.adapt_params adapt in the inner loop, Raghu et al. 2020), mamlpp (MAML++, Antoniou et al. 2019), "
        "vpg (MAML with a plain policy-gradient Adam outer step, the ProMP paper's MAML-VPG), promp (ProMP, "
        "Rothfuss et al. 2019: clipped surrogate and inner-KL penalty, several Adam steps per batch; see promp.*). "
        "maml.loss=pg: the ones metarl.algorithms.ALGORITHMS lists for rl (maml, fomaml, vpg, promp, ...)",
    )
    adapt_params: Literal["all", "head"] | list[str] | None = _f(
        None,
        "the parameters the inner loop adapts: all, head (the model's last layer), or a list of parameter names "
        "or layer prefixes (e.g. [layers.2]); null: the algorithm's default (anil: head, the others: all)",
    )
    gamma: float = _f(0.99, "discount factor", ge=0, le=1)
    gae_lambda: float = _f(1.0, "GAE lambda (1: Monte-Carlo returns minus baseline)", ge=0, le=1)
    normalize_advantages: bool = _f(True, "standardise advantages per task")
    inner_estimator: Literal["log", "lvc", "dice"] = _f(
        "log",
        "inner policy-gradient loss, all with the same inner step but different Hessians, hence meta-gradients: "
        "log (log-likelihood form, MAML paper), lvc (ProMP's low-variance curvature form, whose Hessian credits "
        "pre-adaptation sampling step by step) or dice (DiCE with a loaded baseline, Foerster et al. 2018: also "
        "credits each action for later steps' advantages, the exact Hessian in expectation; needs "
        "outer.derivatives autograd or auto)",
    )


@dataclass
class OuterConfig:
    """Meta-optimiser."""

    optimizer: Literal["trpo", "adam"] | None = _f(
        None,
        "meta-optimiser; null: the algorithm's own (maml.loss=pg: trpo for maml, fomaml, metasgd and anil, adam "
        "for vpg and promp; supervised losses: adam). A value that contradicts the algorithm is an error",
    )
    max_kl: float = _f(0.01, "TRPO trust region: max mean KL per meta-update", gt=0)
    cg_iters: int = _f(10, "TRPO conjugate-gradient iterations", gt=0)
    cg_damping: float = _f(1e-5, "TRPO damping added to the Fisher-vector product", ge=0)
    ls_backtrack: float = _f(0.8, "TRPO line-search step shrink factor", gt=0, lt=1)
    ls_max_steps: int = _f(15, "TRPO line-search maximum backtracking steps", gt=0)
    hvp_subsample: float = _f(
        1.0, "fraction of post-adaptation trajectories per task used for the Fisher in the KL Hessian", gt=0, le=1
    )
    curvature: Literal["exact", "fisher"] = _f(
        "exact", "TRPO KL Hessian: exact through the inner loop, or the adapted policies' Fisher (inner Jacobian = I)"
    )
    derivatives: Literal["auto", "closed_form", "autograd"] = _f(
        "auto",
        "how the learner computes the meta-gradient and curvature: closed_form (by hand, fastest; the log and lvc "
        "inner estimators with a fixed inner_lr on every parameter), autograd (any estimator and inner rule), or "
        "auto: closed_form where it applies, else autograd. Both give the same numbers to float round-off",
    )
    lr: float = _f(1e-3, "Adam learning rate", gt=0)
    step_size_lr: float | None = _f(
        None,
        "Adam learning rate of the learned inner step sizes (metasgd's alpha, mamlpp's per-layer step sizes); "
        "null: outer.lr, as the papers",
        gt=0,
    )
    max_param_norm: float = _f(
        1e4, "reject a meta-update whose parameters' L2 norm exceeds this (an exploding step, treated like a NaN)", gt=0
    )


@dataclass
class TrainConfig:
    """Run length, seeding, logging and checkpoints."""

    iterations: int = _f(100, "meta-iterations", gt=0)
    seed: int = _f(0, "seed of every random generator in the run", ge=0)
    checkpoint_every: int = _f(25, "write a checkpoint every N iterations (and after the first, and at the end)", gt=0)
    checkpoint_minutes: float = _f(10.0, "also write one when this many minutes passed since the last", gt=0)
    num_threads: int = _f(
        1,
        "torch intra-op threads of the learner (0: torch's default, all cores). 1 is the safe default: with one "
        "other busy process on 2 cores, 2 threads were 5x slower; on a quiet machine 2 are 1.75x faster "
        "(results/threads.md). Same seed and same thread count give identical parameters",
        ge=0,
    )
    dtype: Literal["float32", "float64"] = _f("float32", "floating-point precision of the learner")
    device: Literal["cpu", "cuda", "auto"] = _f(
        "cpu",
        "where policy-gradient MAML's learner runs (advantages, inner steps, meta-gradient, TRPO/Adam); the sampler "
        "stays on the CPU, each sampling's episodes are moved once (pinned memory), checkpoints are saved from the "
        "CPU copy. auto: cuda when a CUDA device is available, else cpu",
    )


@dataclass
class EvalConfig:
    """Evaluation protocol (paper: alpha for the first step, alpha/2 after)."""

    num_tasks: int = _f(40, "fresh tasks", gt=0)
    num_steps: int = _f(3, "evaluate after 0..num_steps inner steps", ge=0)
    episodes_per_step: int = _f(40, "trajectories per task and inner step", gt=0)
    seed: int = _f(1_000_003, "seed of the evaluation tasks (different from training)", ge=0)


@dataclass
class SupervisedConfig:
    """Supervised MAML (``maml.loss: supervised``): support/query sets per task."""

    shots: int = _f(5, "K support samples per task (classification: per class)", gt=0)
    query_size: int = _f(10, "query samples per task for the outer loss (classification: per class)", gt=0)
    eval_query_size: int = _f(
        100, "query points per task for the evaluation MSE (classification: images per class, accuracy)", gt=0
    )
    log_every: int = _f(100, "log the mean of the per-iteration metrics every N iterations", gt=0)


@dataclass
class ClassifierConfig:
    """Few-shot classifier (``maml.loss: classification``); N (ways) is the env's ``env.kwargs.ways``."""

    model: Literal["conv", "mlp"] = _f(
        "conv", "conv: the MAML paper's 4-block conv net; mlp: its MLP on the flattened image"
    )
    filters: int = _f(64, "conv: channels of every 3x3 convolution (paper: 64)", gt=0)
    blocks: int = _f(4, "conv: conv-norm-ReLU-downsample blocks (paper: 4)", gt=0)
    downsample: Literal["stride", "maxpool"] = _f(
        "stride", "conv: stride-2 convolutions (the MAML code's Omniglot model) or 2x2 max-pooling"
    )
    norm: Literal["batch", "none"] = _f(
        "batch",
        "batch: batch normalisation with statistics of each task's own images (no running statistics, nothing "
        "shared across tasks); none: no normalisation",
    )
    hidden_sizes: list[int] = _f([256, 128, 64, 64], "mlp: hidden layer widths (paper: 256, 128, 64, 64)")
    eval_chunk: int = _f(
        8,
        "evaluation: tasks adapted together per chunk (bounds memory; on CPU, small chunks also avoid glibc's "
        "page-faulting of huge allocations, which made 100-task chunks 1.5x slower)",
        gt=0,
    )


@dataclass
class SamplerConfig:
    """Where episodes are sampled: in this process (local) or on Ray actors (one machine or a cluster)."""

    backend: Literal["local", "ray"] = _f(
        "local",
        "local: one vector env in this process; ray: Ray actors, each with a vector env for a block of the tasks x "
        "episodes "
        "(same seed, same episodes bit for bit; needs the ray extra)",
    )
    num_workers: int = _f(
        0,
        "ray: sampling actors (0: one per CPU of the Ray cluster); up to one per task own whole tasks, more split "
        "the tasks' episodes too (at most one per episode of the meta-batch)",
        ge=0,
    )
    ray_address: str | None = _f(
        None,
        "ray: cluster to join ('auto': the one `ray start` runs on this machine, or host:port); "
        "null: $RAY_ADDRESS if set, else an embedded Ray started in this process",
    )
    num_cpus: int = _f(0, "ray: CPUs of the embedded Ray (0: all cores of this machine)", ge=0)
    cpus_per_worker: float = _f(1.0, "ray: CPUs reserved for each sampling actor", gt=0)
    max_failures: int = _f(
        3,
        "ray: times one actor's slice may fail in one sampling (actor died, env raised) and be re-sampled on a "
        "restarted actor before the run stops with an error naming the env, the task and the failure",
        ge=0,
    )


@dataclass
class ReptileConfig:
    """Reptile (``maml.algorithm: reptile``): the outer step and the inner optimiser."""

    outer_step_size: float = _f(
        1.0,
        "epsilon at iteration 0 of theta <- theta + epsilon * (mean_i phi_i - theta), phi_i: task i's parameters "
        "after maml.num_inner_steps inner steps (paper: 1.0 for few-shot classification)",
        gt=0,
    )
    final_outer_step_size: float = _f(
        0.0, "epsilon at the last iteration; linear in between (the paper anneals it linearly to 0)", ge=0
    )
    inner_optimizer: Literal["sgd", "adam"] = _f(
        "sgd", "inner steps: SGD of size maml.inner_lr, or Adam of learning rate maml.inner_lr (moments per task)"
    )
    adam_beta1: float = _f(0.0, "the inner Adam's beta1 (paper: 0)", ge=0, lt=1)


@dataclass
class MamlppConfig:
    """MAML++ (``maml.algorithm: mamlpp``): the annealing schedules (the paper's fixes without batch norm)."""

    multi_step_loss_iterations: int | None = _f(
        None,
        "iterations over which the multi-step loss weights move from uniform toward the last inner step; after "
        "them only the last step's query loss counts (null: train.iterations/10, the paper's 15 of 150 epochs; "
        "0: last step only)",
        ge=0,
    )
    first_order_iterations: int | None = _f(
        None,
        "derivative-order annealing: first-order meta-gradients for this many iterations, then second order "
        "(null: train.iterations/3, the paper's 50 of 150 epochs)",
        ge=0,
    )
    min_outer_lr: float = _f(
        1e-5, "the outer learning rate is cosine-annealed from outer.lr to this over train.iterations", ge=0
    )


@dataclass
class PrompConfig:
    """ProMP (``maml.algorithm: promp``, Rothfuss et al. 2019); defaults: the authors' run scripts."""

    clip_eps: float = _f(
        0.3, "clip range epsilon of the post-adaptation likelihood ratio: [1 - eps, 1 + eps] (authors: 0.3)", gt=0, lt=1
    )
    num_steps: int = _f(
        5, "Adam steps (outer.lr) on each sampled meta-batch, the inner loop re-run at each (authors: 5)", gt=0
    )
    target_kl: float = _f(
        0.01,
        "adaptive_kl: the inner KL target; a coefficient halves below target/1.5 and doubles above 1.5*target "
        "(authors: 0.01)",
        gt=0,
    )
    init_kl_coeff: float = _f(
        5e-4,
        "initial coefficient eta of each inner step's KL(sampling pre-update policy || current) (authors: 5e-4)",
        ge=0,
    )
    adaptive_kl: bool = _f(
        False, "adapt the KL coefficients after every meta-iteration (authors' run scripts: false; their class: true)"
    )


@dataclass
class Config:
    """A full experiment."""

    env: EnvConfig = field(default_factory=EnvConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    maml: MamlConfig = field(default_factory=MamlConfig)
    outer: OuterConfig = field(default_factory=OuterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    supervised: SupervisedConfig = field(default_factory=SupervisedConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    reptile: ReptileConfig = field(default_factory=ReptileConfig)
    mamlpp: MamlppConfig = field(default_factory=MamlppConfig)
    promp: PrompConfig = field(default_factory=PrompConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)


def _allowed(tp: Any, meta: dict[str, Any]) -> str:
    """Human description of what a field accepts."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        parts = [_allowed(a, meta) for a in args if a is not type(None)]
        return ", or ".join(parts) + (", or null" if type(None) in args else "")
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    name = getattr(tp, "__name__", str(tp))
    if origin is list:
        item = typing.get_args(tp)[0]
        name = f"a non-empty list of {'positive ' if item in (int, float) else ''}{item.__name__}"
    bounds = [f"{op} {meta[k]}" for k, op in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")) if k in meta]
    return f"{name}" + (f" {' and '.join(bounds)}" if bounds else "")


def _coerce(key: str, value: Any, tp: Any, meta: dict[str, Any]) -> Any:
    """Check (and minimally coerce: int -> float) one value against its field type and bounds."""

    def bad() -> ConfigError:
        return ConfigError(f"config key '{key}': bad value {value!r}; allowed: {_allowed(tp, meta)}")

    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):  # X | None, or X | Y (the first alternative that fits)
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for alternative in (a for a in args if a is not type(None)):
            try:
                return _coerce(key, value, alternative, meta)
            except ConfigError:
                continue
        raise bad()
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad()
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list) or not all(isinstance(v, item) and not isinstance(v, bool) for v in value):
            raise bad()
        if not value or (item is int and any(v <= 0 for v in value)):
            raise bad()
        return list(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
    elif tp is float:
        number = _to_float(value)
        if number is None or not math.isfinite(number):
            raise bad()  # names the value as given (e.g. 'abc'), not its conversion
        value = number
    elif tp is dict:
        if not isinstance(value, dict):
            raise bad()
        return dict(value)
    elif tp is str:
        if not isinstance(value, str) or not value:
            raise bad()
        return value
    for k, ok in (
        ("gt", value > meta.get("gt", value - 1)),
        ("ge", value >= meta.get("ge", value)),
        ("lt", value < meta.get("lt", value + 1)),
        ("le", value <= meta.get("le", value)),
    ):
        if k in meta and not ok:
            raise bad()
    return value


def _to_float(value: Any) -> float | None:
    """A number, or a string any YAML 1.2 / Python float literal spells (``1e-3``, ``1E5``, ``.5``); else None.

    PyYAML follows YAML 1.1, which reads ``1e-3`` (no dot) as a string.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def from_dict(data: dict[str, Any] | None) -> Config:
    """Build a validated :class:`Config` from nested mappings (unknown keys are errors)."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config must be a mapping of sections, got {type(data).__name__}")
    sections = {f.name: f for f in dataclasses.fields(Config)}
    config = Config()
    for section, values in data.items():
        if section not in sections:
            raise ConfigError(f"config key '{section}': unknown section; allowed: {', '.join(sections)}")
        if values is None:  # an empty section ("maml:" with nothing under it)
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"config key '{section}': expected a mapping of keys, got {values!r}")
        target = getattr(config, section)
        hints = typing.get_type_hints(type(target))
        fields = {f.name: f for f in dataclasses.fields(target)}
        for key, value in values.items():
            if key not in fields:
                raise ConfigError(f"config key '{section}.{key}': unknown key; allowed: {', '.join(fields)}")
            setattr(target, key, _coerce(f"{section}.{key}", value, hints[key], dict(fields[key].metadata)))
    from metarl.algorithms import check_config  # keys that must agree with each other (imports torch)

    check_config(config)
    return config


def to_dict(config: Config) -> dict[str, Any]:
    """Plain nested dict (YAML-serialisable) of a config."""
    return dataclasses.asdict(config)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a nested config dict.

    A longer path reaches into a mapping-valued key, e.g. ``env.kwargs.frame_skip=1``.
    """
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"override {item!r}: expected section.key=value, e.g. maml.inner_lr=0.05")
        path, raw = item.split("=", 1)
        *parents, key = path.split(".")
        node = data
        for depth, name in enumerate(parents):
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                where = ".".join(parents[: depth + 1])
                raise ConfigError(f"config key '{where}': expected a mapping of keys, got {node!r}")
        try:
            node[key] = load_yaml(raw)
        except yaml.YAMLError:
            raise ConfigError(f"override {item!r}: the value is not valid YAML") from None
    return data


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None), apply overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = load_yaml(path.read_text())
            data = {} if data is None else data
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            line = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
            raise ConfigError(f"config file {path} is not valid YAML{line}: {getattr(exc, 'problem', exc)}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(
                f"config file {path} must be a mapping of sections (env:, maml:, ...), got a {type(data).__name__}"
            )
    return from_dict(apply_overrides(data, overrides or []))


def describe(config_type: type = Config) -> str:
    """A markdown table of every key with its default, allowed values and help (for docs)."""
    lines = ["| key | default | allowed | meaning |", "|---|---|---|---|"]
    for section in dataclasses.fields(config_type):
        sub = section.default_factory()  # type: ignore[operator]
        hints = typing.get_type_hints(type(sub))
        for f in dataclasses.fields(sub):
            meta = dict(f.metadata)
            key, default, allowed = f"{section.name}.{f.name}", getattr(sub, f.name), _allowed(hints[f.name], meta)
            lines.append(f"| `{key}` | `{default!r}` | {allowed} | {meta['help']} |")
    return "\n".join(lines)


def annotated_yaml(config: Config) -> str:
    """The config as YAML, every key followed by a comment with its allowed values and meaning."""
    lines: list[str] = []
    for section in dataclasses.fields(config):
        sub = getattr(config, section.name)
        lines.append(f"{section.name}:  # {type(sub).__doc__}")
        hints = typing.get_type_hints(type(sub))
        for f in dataclasses.fields(sub):
            meta = dict(f.metadata)
            value = yaml.safe_dump(getattr(sub, f.name), default_flow_style=True, width=10_000).strip()
            value = value.removesuffix("\n...").strip()
            lines.append(f"  {f.name}: {value}  # {_allowed(hints[f.name], meta)}: {meta['help']}")
    return "\n".join(lines)
