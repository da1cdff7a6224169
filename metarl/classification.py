"""N-way K-shot few-shot classification (Finn et al. 2017, section 5.2) through the same core as regression.

``maml.loss: classification``. A task is N classes of a few-shot env (``metarl/Glyphs-v0``,
``metarl/Omniglot-v0``; :class:`metarl.envs.fewshot.FewShotEnv`): its *support* set holds
``supervised.shots`` (K) images per class, its *query* set ``supervised.query_size`` other
images per class. The inner loss is each task's mean cross-entropy on its support set, the
outer loss the adapted model's mean cross-entropy on its query set. The model is the
``classifier`` section's conv net or MLP (:mod:`metarl.classifier`), called with per-task
stacked parameters, so a meta-batch is one forward pass.

Every algorithm of ``maml.algorithm`` applies unchanged: training hands the inner loss and
the query loss to :class:`metarl.algorithms.MetaLearner`, and evaluation adapts with the
run's own inner rule (:func:`metarl.algorithms.inner_rule`: learned step sizes, adapted
subset, inner optimiser), exactly as regression does (:mod:`metarl.supervised`).

Evaluation (:func:`evaluate_classification`) draws fresh tasks from the **held-out** classes
(the env's ``test`` split) and reports the query accuracy after 0..k inner steps with 95%
confidence intervals over tasks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from metarl.algorithms import InnerRule, MetaLearner, algorithm_name, inner_rule, meta_loss, outer_optimizer
from metarl.build import horizon, iteration_rngs, torch_dtype
from metarl.classifier import Classifier, build_classifier
from metarl.config import Config
from metarl.envs.fewshot import FewShotEpisode, Split
from metarl.errors import ConfigError
from metarl.evaluation import mean_ci95
from metarl.loop import Algorithm
from metarl.maml import InnerLoss
from metarl.policy import Params, detach_params
from metarl.sampler import make_task_env
from metarl.supervised import few_shot_protocol


@runtime_checkable
class FewShotTaskEnv(Protocol):
    """A task env of N-way few-shot classification (e.g. ``metarl/Glyphs-v0``; see :mod:`metarl.envs.fewshot`)."""

    ways: int
    image_shape: tuple[int, int, int]

    def sample_episode(
        self, n: int, shots: int, queries: int, rng: np.random.Generator, split: Split = "train"
    ) -> FewShotEpisode:
        """``n`` tasks of ``split`` with ``shots`` support and ``queries`` query images per class, from ``rng`` only."""
        ...


def fewshot_env(config: Config) -> FewShotTaskEnv:
    """The config's task env, checked to be a few-shot classification env.

    A constructor argument the env refuses (``env.kwargs``) is a :class:`ConfigError`; a missing
    data set is the env's own :class:`~metarl.errors.DataError`.
    """
    try:
        env = make_task_env(config.env.id, horizon(config.env), config.env.kwargs).unwrapped
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"config key 'env.kwargs': {config.env.id} refuses {config.env.kwargs}: {exc}") from None
    if not isinstance(env, FewShotTaskEnv):
        raise ConfigError(
            f"maml.loss=classification needs a few-shot classification env with ways, image_shape and "
            f"sample_episode(n, shots, queries, rng, split) (e.g. metarl/Glyphs-v0, metarl/Omniglot-v0); "
            f"env.id={config.env.id!r} ({type(env).__name__}) is not one"
        )
    return env


@dataclass(frozen=True)
class ClassificationBatch:
    """Support and query sets of ``n`` tasks as tensors: images ``[n, M, C, H, W]``, labels ``[n, M]`` (int64)."""

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor

    @property
    def num_tasks(self) -> int:
        """``n``, the number of tasks."""
        return self.support_x.shape[0]

    def tasks(self, start: int, stop: int) -> ClassificationBatch:
        """The tasks ``start:stop`` (views)."""
        return ClassificationBatch(
            *(t[start:stop] for t in (self.support_x, self.support_y, self.query_x, self.query_y))
        )


def to_batch(episode: FewShotEpisode, dtype: torch.dtype = torch.float32) -> ClassificationBatch:
    """An episode's arrays as tensors: images in ``dtype``, labels int64."""

    def images(a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)

    def labels(a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).long()

    return ClassificationBatch(
        images(episode.support_x), labels(episode.support_y), images(episode.query_x), labels(episode.query_y)
    )


def sample_batch(
    env: FewShotTaskEnv,
    num_tasks: int,
    shots: int,
    queries: int,
    rng: np.random.Generator,
    dtype: torch.dtype = torch.float32,
    split: Split = "train",
) -> ClassificationBatch:
    """``num_tasks`` fresh tasks of ``split``: K-shot support and ``queries`` query images per class (from ``rng``)."""
    try:
        episode = env.sample_episode(num_tasks, shots, queries, rng, split)
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(
            f"config keys 'supervised.shots', 'supervised.query_size' or 'env.kwargs.ways': {exc}"
        ) from None
    return to_batch(episode, dtype)


def task_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Each task's mean cross-entropy, ``[n]``, of ``logits [n, M, N]`` against ``labels [n, M]``."""
    n, m = labels.shape
    return F.cross_entropy(logits.reshape(n * m, -1), labels.reshape(-1), reduction="none").view(n, m).mean(1)


def task_accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Each task's fraction of correctly labelled images, ``[n]`` (float64, no graph)."""
    return (logits.detach().argmax(-1) == labels).double().mean(1)


def ce_inner_loss(model: Classifier, x: Tensor, y: Tensor) -> InnerLoss:
    """The inner loss: the sum over tasks of each task's mean support cross-entropy (every step)."""
    return lambda params, step: task_cross_entropy(model(x, params), y).sum()


def query_ce_loss(
    model: Classifier, batch: ClassificationBatch, record: list[Tensor] | None = None
) -> Callable[[Params], Tensor]:
    """The outer loss: each task's query cross-entropy, ``[n]``, of stacked adapted parameters.

    With ``record``, each call also appends the per-task query accuracy of the same forward pass.
    """

    def loss(params: Params) -> Tensor:
        logits = model(batch.query_x, params)
        if record is not None:
            record.append(task_accuracy(logits, batch.query_y))
        return task_cross_entropy(logits, batch.query_y)

    return loss


def meta_objective(
    model: Classifier, params: Params, batch: ClassificationBatch, lrs: list[float], first_order: bool
) -> Tensor:
    """MAML's meta-objective with fixed step sizes ``lrs``: the mean over tasks of the adapted models' query
    cross-entropy (differentiable in ``params``; second order unless ``first_order``). For tests and
    analysis; training goes through :class:`~metarl.algorithms.MetaLearner`, which uses the same
    :func:`~metarl.algorithms.meta_loss`."""
    rule = InnerRule(tuple(lrs), None, first_order)
    inner = ce_inner_loss(model, batch.support_x, batch.support_y)
    return meta_loss(inner, query_ce_loss(model, batch), params, batch.num_tasks, rule, len(lrs)).objective


class ClassificationMAML(Algorithm):
    """Few-shot classification meta-learning as an :class:`~metarl.loop.Algorithm`, any ``maml.algorithm``.

    Every iteration draws ``maml.meta_batch_size`` tasks of the training classes with
    ``supervised.shots`` support and ``supervised.query_size`` query images per class, from
    generators derived from ``(train.seed, iteration)`` (a resumed run continues the same
    curve), and takes one meta-update of :class:`~metarl.algorithms.MetaLearner` on the
    support and query cross-entropy. Learned step sizes are checkpointed with the model.
    Scalars (``meta/ce_pre``, ``meta/ce_post``, ``meta/accuracy_post``, ...) are averaged
    over ``supervised.log_every`` iterations.
    """

    progress_keys = {
        "meta/ce_pre": "CE before",
        "meta/ce_post": "after",
        "meta/accuracy_post": "query acc",
        "perf/iterations_per_s": "it/s",
    }

    def __init__(self, config: Config) -> None:
        if config.maml.loss != "classification":
            raise ConfigError(
                f"config key 'maml.loss': classification needs 'classification', got {config.maml.loss!r}"
            )
        if outer_optimizer(config) != "adam" and config.maml.algorithm != "reptile":
            raise ConfigError(
                f"config key 'outer.optimizer': bad value {config.outer.optimizer!r}; "
                "allowed with maml.loss=classification: 'adam'"
            )
        self.config = config
        self.name = f"{algorithm_name(config.maml)}-classification"
        self.dtype = torch_dtype(config.train.dtype)
        self.env = fewshot_env(config)
        self.model = self.policy = build_classifier(
            config.classifier, self.env.image_shape, self.env.ways, config.train.seed, self.dtype
        )
        self.learner = MetaLearner(config, self.policy, loss_name="cross-entropy")
        self.optimizer = self.learner.optimizer
        self.window: dict[str, float] = {}
        self.window_start: int | None = None
        self.window_time = time.perf_counter()

    def iteration(self, it: int) -> dict[str, float] | None:
        """One meta-step; returns the window's mean scalars every ``supervised.log_every`` iterations."""
        m, s = self.config.maml, self.config.supervised
        if self.window_start is None:
            self.window_start, self.window_time = it, time.perf_counter()
        rng, _ = iteration_rngs(self.config.train.seed, it)
        batch = sample_batch(self.env, m.meta_batch_size, s.shots, s.query_size, rng, self.dtype)
        accuracy: list[Tensor] = []
        inner = ce_inner_loss(self.model, batch.support_x, batch.support_y)
        stats = self.learner.step(it, inner, query_ce_loss(self.model, batch, accuracy), batch.num_tasks)
        stats = {
            "meta/ce_pre": stats.pop("loss_pre"),
            "meta/ce_post": stats.pop("loss_post"),
            "meta/accuracy_post": float(accuracy[-1].mean()),
            **stats,
        }
        for key, value in stats.items():
            self.window[key] = self.window.get(key, 0.0) + float(value)
        done = it + 1
        if done % s.log_every and done != self.config.train.iterations:
            return None
        count = done - self.window_start
        metrics = {key: total / count for key, total in self.window.items()}
        metrics["perf/iterations_per_s"] = count / max(time.perf_counter() - self.window_time, 1e-9)
        self.window, self.window_start = {}, None
        return metrics

    def extra_state(self) -> dict[str, Any]:
        """The learned step sizes (Meta-SGD, MAML++), which evaluation adapts with."""
        return self.learner.extra_state()

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore the learned step sizes on resume."""
        self.learner.load_extra_state(state)


def evaluation_rule(
    model: Classifier, config: Config, rule: InnerRule | None = None, lr: float | None = None
) -> InnerRule:
    """The inner rule an evaluation adapts with: ``rule`` (else the config's), first order, no graph to learned
    sizes; ``lr`` replaces its step sizes by one fixed size."""
    rule = (rule if rule is not None else inner_rule(config, model)).detached()
    return rule if lr is None else replace(rule, step_sizes=(lr,))


def evaluate_classification(
    model: Classifier,
    config: Config,
    num_tasks: int | None = None,
    shots: int | None = None,
    num_steps: int | None = None,
    query_size: int | None = None,
    seed: int | None = None,
    lr: float | None = None,
    rule: InnerRule | None = None,
    split: Split = "test",
) -> dict[str, Any]:
    """Few-shot accuracy on fresh tasks of the held-out classes after 0..k inner steps, with 95% CIs over tasks.

    ``num_tasks`` tasks of ``split`` (default the env's held-out ``test`` classes), each with
    ``shots`` support and ``query_size`` query images per class, are drawn at once from
    ``seed`` (so the same seed gives the same tasks and images, whatever the chunking), then
    adapted ``classifier.eval_chunk`` tasks at a time with ``rule``, the run's inner rule
    (:func:`metarl.algorithms.checkpoint_inner_rule`; ``lr`` replaces its step sizes). Returns
    ``{"steps": [{"step", "accuracy", "ci95", "cross_entropy"}, ...], "per_task": [[accuracy of
    each task] per step], ...}``. Arguments left as ``None`` come from ``config.eval`` (tasks,
    steps, seed) and ``config.supervised`` (shots, ``eval_query_size``).
    """
    num_tasks, shots, num_steps, query_size, seed = few_shot_protocol(
        config, num_tasks, shots, num_steps, query_size, seed
    )
    rule = evaluation_rule(model, config, rule, lr)
    env = fewshot_env(config)
    dtype = next(model.parameters()).dtype
    batch = sample_batch(env, num_tasks, shots, query_size, np.random.default_rng(seed), dtype, split)
    theta = detach_params(model.params())
    accuracy: list[list[np.ndarray]] = [[] for _ in range(num_steps + 1)]
    cross_entropy: list[list[np.ndarray]] = [[] for _ in range(num_steps + 1)]
    chunk = config.classifier.eval_chunk
    for start in range(0, num_tasks, chunk):  # chunks of tasks bound the memory; each chunk is one batched forward
        part = batch.tasks(start, start + chunk)
        inner = ce_inner_loss(model, part.support_x, part.support_y)
        for k, params in enumerate([theta, *rule.steps(inner, theta, part.num_tasks, num_steps)]):
            with torch.no_grad():
                logits = model(part.query_x, params)
                accuracy[k].append(task_accuracy(logits, part.query_y).numpy())
                cross_entropy[k].append(task_cross_entropy(logits, part.query_y).double().numpy())
    per_task = [np.concatenate(a) for a in accuracy]
    steps = []
    for k, values in enumerate(per_task):
        mean, ci = mean_ci95(values)
        steps.append(
            {"step": k, "accuracy": mean, "ci95": ci, "cross_entropy": float(np.concatenate(cross_entropy[k]).mean())}
        )
    return {
        "steps": steps,
        "per_task": [v.tolist() for v in per_task],
        "num_tasks": num_tasks,
        "ways": env.ways,
        "shots": shots,
        "query_size": query_size,
        "split": split,
        "inner_lr": config.maml.inner_lr if lr is None else lr,
        "inner_rule": rule.describe(),
        "step_sizes": rule.mean_step_sizes(num_steps),
        "seed": seed,
    }


def percent(result: dict[str, Any]) -> dict[str, Any]:
    """An evaluation result with accuracy and its CI in percent (for tables)."""
    steps = [{**s, "accuracy": 100 * s["accuracy"], "ci95": 100 * s["ci95"]} for s in result["steps"]]
    return {**result, "steps": steps}


def accuracy_table(config: Config, result: dict[str, Any], name: str | None = None) -> str:
    """The ``metarl evaluate`` table of a classification run: accuracy (%) ± 95% CI per step, and the protocol."""
    from metarl.evaluation import markdown_table

    table = markdown_table({name or algorithm_name(config.maml): percent(result)}, key="accuracy", digits=1)
    return (
        f"{table}\n\nAccuracy in % on {result['query_size']} query images per class of {result['num_tasks']} "
        f"{result['ways']}-way {result['shots']}-shot tasks of the held-out ({result['split']}) classes of "
        f"{config.env.id}; 95% CI over tasks. Inner rule: {result['inner_rule']}"
    )
