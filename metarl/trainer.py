"""Meta-training entry point: MAML with a policy-gradient inner loop (TRPO or Adam outer step),
or supervised MAML, both through the one loop in :mod:`metarl.loop`."""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch

from metarl import build, rule_learner
from metarl.algorithms import algorithm_name, inner_rule, learned_step_sizes, outer_optimizer, with_rule
from metarl.config import Config
from metarl.episodes import Episodes, OnDevice
from metarl.errors import CheckpointError, ConfigError
from metarl.loop import Algorithm, Log, TrainResult, _stderr, run_training
from metarl.maml import AdaptationSettings, MetaBatch, sample_meta_batch
from metarl.policy import GaussianMLPPolicy, Params, copy_parameters, learner_device
from metarl.promp import ProMP
from metarl.sampler import Sampler, torch_threads
from metarl.trpo import adam_step, trpo_step


def algo_name(config: Config) -> str:
    """e.g. ``maml-trpo``, ``fomaml-adam``, ``promp-adam``, ``maml-supervised``, ``metasgd-supervised`` or
    ``maml-classification``."""
    outer = config.maml.loss if config.maml.loss in ("supervised", "classification") else outer_optimizer(config)
    return f"{algorithm_name(config.maml)}-{outer}"


def run_name(config: Config) -> str:
    """CleanRL-style run name ``env__algo__seed__time``."""
    env = config.env.id.split(":")[-1].split("/")[-1]
    return f"{env}__{algo_name(config)}__{config.train.seed}__{time.strftime('%Y%m%d-%H%M%S')}"


class PolicyGradientMAML(Algorithm):
    """MAML for policies: sample, adapt with REINFORCE steps, re-sample, meta-update with TRPO or Adam
    (:func:`metarl.algorithms.outer_optimizer`; ``vpg``: Adam), or ProMP's steps (:mod:`metarl.promp`)."""

    progress_keys = {
        "meta/return_pre": "return before",
        "meta/return_post": "after adaptation",
        "episodes/success_pre": "success before",
        "episodes/success_post": "success after",
        "perf/env_steps_per_s": "env steps/s",
    }
    policy: GaussianMLPPolicy

    def __init__(self, config: Config) -> None:
        self.config = config
        self.name = algo_name(config)
        self.task_env = build.task_env(config)
        self.policy = build.build_policy(config, *build.io_dims(self.task_env))
        # Meta-SGD's learned inner step sizes (meta-parameters next to the policy's), else None
        self.step_sizes = learned_step_sizes(config, self.policy)
        self.optimizer = (
            torch.optim.Adam(self.meta_parameters(), lr=config.outer.lr) if outer_optimizer(config) == "adam" else None
        )
        self.promp = ProMP(config) if config.maml.algorithm == "promp" else None  # its KL coefficients
        self.sampler = build.make_sampler(config, config.maml.meta_batch_size, config.maml.episodes_per_task)
        self.sampler.samples_per_task = config.maml.samples_per_task  # rllab's budget (sampler.collect_to_budget)
        self.adaptation = build.adaptation_settings(config.maml)
        self.trpo = build.trpo_settings(config.outer, config.maml)
        # train.device: on a GPU the learner works on a replica of the policy, synchronised with it around every
        # meta-update; the sampler, the optimiser, checkpoints and resume only ever see the CPU policy.
        self.device = learner_device(config.train.device)
        self.learner = self.policy if self.device.type == "cpu" else copy.deepcopy(self.policy).to(self.device)
        self.collector = (
            self.sampler
            if self.learner is self.policy
            else cast(Sampler, OnDevice(self.sampler, self.device, self.policy))
        )
        if not self.rule_adaptation(0).plain and self.learner is not self.policy:
            raise ConfigError(
                f"config key 'train.device': maml.algorithm={config.maml.algorithm!r} (learned step sizes or an "
                "adapted subset) runs its learner on the CPU; use train.device=cpu"
            )

    def meta_parameters(self) -> list[torch.nn.Parameter]:
        """What the outer step learns: the policy's parameters, then any learned inner step sizes."""
        extra = list(self.step_sizes.parameters()) if self.step_sizes is not None else []
        return [*self.policy.parameters(), *extra]

    def rule_adaptation(self, it: int) -> AdaptationSettings:
        """The inner loop of iteration ``it``: the algorithm's adapted parameters and (live) learned step sizes."""
        rule = inner_rule(self.config, self.policy, step_sizes=self.step_sizes, iteration=it)
        return with_rule(self.adaptation, rule)

    def extra_state(self) -> dict[str, Any]:
        """The learned step sizes (Meta-SGD), if any; ProMP's KL coefficients."""
        state = {} if self.step_sizes is None else {"step_sizes": self.step_sizes.state()}
        return state if self.promp is None else {**state, "promp": self.promp.state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore the learned step sizes and ProMP's KL coefficients on resume."""
        if self.promp is not None:
            self.promp.load_state(state.get("promp", {}))
        if self.step_sizes is None:
            return
        if "step_sizes" not in state:
            raise CheckpointError(
                f"the checkpoint holds no learned step sizes, which maml.algorithm={self.config.maml.algorithm!r} "
                "needs to resume"
            )
        self.step_sizes.load_state(state["step_sizes"])

    def iteration(self, it: int) -> dict[str, float]:
        """Sample tasks, sample and adapt, one meta-update; returns the iteration's scalars."""
        rng, generator = build.iteration_rngs(self.config.train.seed, it)
        tasks = self.task_env.unwrapped.sample_tasks(self.config.maml.meta_batch_size, rng)  # type: ignore[attr-defined]
        if self.learner is not self.policy:
            copy_parameters(self.policy, self.learner)
        t0, collected = time.perf_counter(), self.sampler.collect_seconds
        adaptation = self.rule_adaptation(it)
        batch, used = sample_meta_batch(
            self.collector, self.learner, self.learner.params(), tasks, adaptation, rng, generator
        )
        t1, t_collect = time.perf_counter(), self.sampler.collect_seconds - collected
        stds = policy_metrics(used)  # before the meta-update: used[0] shares storage with the live parameters
        if self.promp is not None:
            assert self.optimizer is not None
            learner = self.learner if self.learner is not self.policy else None
            stats = self.promp.step(self.policy, self.optimizer, batch, used, adaptation, learner)
        elif not adaptation.plain:
            extra = list(self.step_sizes.parameters()) if self.step_sizes is not None else []
            if self.optimizer is None:
                stats = rule_learner.trpo_step(self.policy, extra, batch, adaptation, self.trpo)
            else:
                stats = rule_learner.adam_step(self.policy, self.optimizer, batch, adaptation)
            if self.step_sizes is not None:
                flat = torch.cat([v.detach().reshape(-1) for v in self.step_sizes.parameters()])
                stds["inner/step_size_mean"] = flat.double().mean().item()
        elif self.optimizer is None:
            stats = trpo_step(self.learner, batch, adaptation, self.trpo)
            if self.learner is not self.policy:
                copy_parameters(self.learner, self.policy)
        else:
            stats = adam_step(
                self.policy, self.optimizer, batch, adaptation, self.trpo.derivatives, learner=self.learner
            )
        metrics = iteration_metrics(batch, stats, t_collect, t1 - t0 - t_collect, time.perf_counter() - t1)
        if self.config.maml.samples_per_task is not None:
            metrics |= budget_metrics(batch, self.config.maml.samples_per_task)
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
        "meta/return_pre": mean_episode_return(batch.train[0]),
        "meta/return_post": mean_episode_return(batch.valid),
        "perf/env_steps_per_s": env_steps / max(t_sample, 1e-9),
        "perf/time_sampling_s": t_sample,
        "perf/time_adapt_s": t_adapt,
        "perf/time_learning_s": t_learn,
        "outer/loss_before": stats["loss_before"],
    }
    for key in ("kl", "improvement", "ls_steps", "accepted"):
        if key in stats:
            metrics[f"trpo/{key}"] = stats[key]
    metrics |= {key: value for key, value in stats.items() if key.startswith("promp/")}
    return {**metrics, **episode_metrics(batch.train[0], "pre"), **episode_metrics(batch.valid, "post")}


def real_episodes(episodes: Episodes) -> torch.Tensor:
    """``[n, B]``: whether each slot holds an episode; the empty (fully masked) episodes that
    :func:`metarl.sampler.collect_to_budget` pads tasks with do not, and no metric counts them."""
    return episodes.mask.sum(0) > 0


def mean_episode_return(episodes: Episodes) -> float:
    """The mean undiscounted return over the episodes (not the empty slots)."""
    return episodes.episode_returns()[real_episodes(episodes)].mean().item()


def episode_metrics(episodes: Episodes, when: str) -> dict[str, float]:
    """Mean episode length, the fraction of episodes that ended before the horizon (terminated), and,
    when the env reports ``info["success"]`` (Meta-World), the fraction that succeeded at some step.

    Over the episodes only: an empty slot (:func:`real_episodes`) is not an episode.
    """
    real = real_episodes(episodes)
    lengths = episodes.mask.sum(0)[real]  # the episodes' lengths
    horizon = episodes.mask.shape[0]
    metrics = {
        f"episodes/length_{when}": lengths.mean().item(),
        f"episodes/terminated_early_{when}": (lengths < horizon).to(lengths.dtype).mean().item(),
    }
    success = episodes.episode_success()
    if success is not None:
        metrics[f"episodes/success_{when}"] = success[real].mean().item()
    return metrics


def budget_metrics(batch: MetaBatch, samples_per_task: int) -> dict[str, float]:
    """With ``maml.samples_per_task``: the mean number of episodes and of valid samples per task, and the
    fraction of tasks left short of the budget (the round limit hit), before and after adaptation."""
    metrics = {}
    for when, episodes in (("pre", batch.train[0]), ("post", batch.valid)):
        samples = episodes.mask.sum((0, 2)).double()  # [n]
        metrics[f"episodes/per_task_{when}"] = real_episodes(episodes).sum(1).double().mean().item()
        metrics[f"episodes/samples_per_task_{when}"] = samples.mean().item()
        metrics[f"episodes/short_of_budget_{when}"] = (samples < samples_per_task).double().mean().item()
    return metrics


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
