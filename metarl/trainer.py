"""Meta-training entry point: MAML with a policy-gradient inner loop (TRPO or Adam outer step),
or supervised MAML, both through the one loop in :mod:`metarl.loop`."""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import torch

from metarl import build
from metarl.algorithms import algorithm_name
from metarl.config import Config
from metarl.episodes import Episodes, OnDevice
from metarl.loop import Algorithm, Log, TrainResult, _stderr, run_training
from metarl.maml import MetaBatch, sample_meta_batch
from metarl.policy import GaussianMLPPolicy, Params, learner_device
from metarl.sampler import Sampler, torch_threads
from metarl.trpo import adam_step, trpo_step


def algo_name(config: Config) -> str:
    """e.g. ``maml-trpo``, ``fomaml-adam``, ``maml-supervised``, ``metasgd-supervised`` or ``maml-classification``."""
    outer = config.maml.loss if config.maml.loss in ("supervised", "classification") else config.outer.optimizer
    return f"{algorithm_name(config.maml)}-{outer}"


def run_name(config: Config) -> str:
    """CleanRL-style run name ``env__algo__seed__time``."""
    env = config.env.id.split(":")[-1].split("/")[-1]
    return f"{env}__{algo_name(config)}__{config.train.seed}__{time.strftime('%Y%m%d-%H%M%S')}"


class PolicyGradientMAML(Algorithm):
    """MAML for policies: sample, adapt with REINFORCE steps, re-sample, meta-update with TRPO or Adam."""

    progress_keys = {
        "meta/return_pre": "return before",
        "meta/return_post": "after adaptation",
        "perf/env_steps_per_s": "env steps/s",
    }
    policy: GaussianMLPPolicy

    def __init__(self, config: Config) -> None:
        self.config = config
        self.name = algo_name(config)
        self.task_env = build.task_env(config)
        self.policy = build.build_policy(config, *build.io_dims(self.task_env))
        self.optimizer = (
            torch.optim.Adam(self.policy.parameters(), lr=config.outer.lr) if config.outer.optimizer == "adam" else None
        )
        self.sampler = build.make_sampler(config, config.maml.meta_batch_size, config.maml.episodes_per_task)
        self.adaptation = build.adaptation_settings(config.maml)
        self.trpo = build.trpo_settings(config.outer)
        # train.device: on a GPU the learner works on a replica of the policy, synchronised with it around every
        # meta-update; the sampler, the optimiser, checkpoints and resume only ever see the CPU policy.
        self.device = learner_device(config.train.device)
        self.learner = self.policy if self.device.type == "cpu" else copy.deepcopy(self.policy).to(self.device)
        self.collector = (
            self.sampler
            if self.learner is self.policy
            else cast(Sampler, OnDevice(self.sampler, self.device, self.policy))
        )

    @staticmethod
    def _copy_parameters(source: GaussianMLPPolicy, target: GaussianMLPPolicy) -> None:
        with torch.no_grad():
            for s, t in zip(source.parameters(), target.parameters()):
                t.copy_(s)

    def iteration(self, it: int) -> dict[str, float]:
        """Sample tasks, sample and adapt, one meta-update; returns the iteration's scalars."""
        rng, generator = build.iteration_rngs(self.config.train.seed, it)
        tasks = self.task_env.unwrapped.sample_tasks(self.config.maml.meta_batch_size, rng)  # type: ignore[attr-defined]
        if self.learner is not self.policy:
            self._copy_parameters(self.policy, self.learner)
        t0, collected = time.perf_counter(), self.sampler.collect_seconds
        batch, used = sample_meta_batch(
            self.collector, self.learner, self.learner.params(), tasks, self.adaptation, rng, generator
        )
        t1, t_collect = time.perf_counter(), self.sampler.collect_seconds - collected
        stds = policy_metrics(used)  # before the meta-update: used[0] shares storage with the live parameters
        if self.optimizer is None:
            stats = trpo_step(self.learner, batch, self.adaptation, self.trpo)
            if self.learner is not self.policy:
                self._copy_parameters(self.learner, self.policy)
        else:
            stats = adam_step(self.policy, self.optimizer, batch, self.adaptation, learner=self.learner)
        metrics = iteration_metrics(batch, stats, t_collect, t1 - t0 - t_collect, time.perf_counter() - t1)
        return {**metrics, **stds}

    def close(self) -> None:
        """Close the sampler's envs."""
        self.sampler.close()


def iteration_metrics(
    batch: MetaBatch, stats: dict[str, float], t_sample: float, t_adapt: float, t_learn: float
) -> dict[str, float]:
    """The per-iteration scalars logged to TensorBoard (grouped keys).

    Wall-time split: ``t_sample`` in the sampler (env steps and policy forwards), ``t_adapt``
    between samplings (returns, baselines, advantages, the inner steps that produce the
    parameters to re-sample with), ``t_learn`` in the meta-update (inner loop re-run with
    its graph, surrogate, meta-gradient, CG, line search). The learner is the last two.
    """
    sets: list[Episodes] = [*batch.train, batch.valid]
    env_steps = sum(ep.num_steps for ep in sets)
    metrics = {
        "meta/return_pre": batch.train[0].episode_returns().mean().item(),
        "meta/return_post": batch.valid.episode_returns().mean().item(),
        "perf/env_steps_per_s": env_steps / max(t_sample, 1e-9),
        "perf/time_sampling_s": t_sample,
        "perf/time_adapt_s": t_adapt,
        "perf/time_learning_s": t_learn,
        "outer/loss_before": stats["loss_before"],
    }
    for key in ("kl", "improvement", "ls_steps", "accepted"):
        if key in stats:
            metrics[f"trpo/{key}"] = stats[key]
    return {**metrics, **episode_metrics(batch.train[0], "pre"), **episode_metrics(batch.valid, "post")}


def episode_metrics(episodes: Episodes, when: str) -> dict[str, float]:
    """Mean episode length and the fraction of episodes that ended before the horizon (terminated)."""
    lengths = episodes.mask.sum(0)  # [n, B]
    horizon = episodes.mask.shape[0]
    return {
        f"episodes/length_{when}": lengths.mean().item(),
        f"episodes/terminated_early_{when}": (lengths < horizon).to(lengths.dtype).mean().item(),
    }


def policy_metrics(used: Sequence[Params]) -> dict[str, float]:
    """The policy's action std (mean over action dimensions and tasks) before and after adaptation."""
    return {
        "policy/std_pre": used[0]["log_std"].exp().mean().item(),
        "policy/std_post": used[-1]["log_std"].exp().mean().item(),
    }


def make_algorithm(config: Config) -> Algorithm:
    """The algorithm ``maml.loss`` names: supervised (regression), classification, or policy-gradient MAML."""
    if config.maml.loss == "supervised":
        from metarl.supervised import SupervisedMAML

        return SupervisedMAML(config)
    if config.maml.loss == "classification":
        from metarl.classification import ClassificationMAML

        return ClassificationMAML(config)
    return PolicyGradientMAML(config)


def train(
    config: Config,
    run_dir: Path,
    resume: bool = False,
    progress: bool = True,
    overwrite: bool = False,
    log: Log = _stderr,
) -> TrainResult:
    """Meta-train the config's algorithm, writing logs and checkpoints under ``run_dir`` (see :func:`run_training`)."""
    threads = config.train.num_threads or torch.get_num_threads()
    with torch_threads(threads):  # scoped: the caller's thread count is restored afterwards
        return run_training(config, Path(run_dir), make_algorithm(config), resume, overwrite, progress, log)
