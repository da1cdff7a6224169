"""The meta-training loop: sample tasks, sample + adapt, meta-update, log, checkpoint."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from metarl.checkpoint import load_checkpoint, save_checkpoint
from metarl.config import Config, describe, to_dict
from metarl.maml import AdaptationSettings, sample_meta_batch
from metarl.policy import GaussianMLPPolicy
from metarl.sampler import Sampler, make_task_env
from metarl.trpo import NonFiniteError, TRPOSettings, adam_step, trpo_step


class TrainingDiverged(RuntimeError):
    """Training produced a NaN/inf; the last good checkpoint is kept."""


def iteration_rngs(seed: int, iteration: int) -> tuple[np.random.Generator, torch.Generator]:
    """Independent numpy and torch generators for one meta-iteration, derived from (seed, iteration).

    Deriving them per iteration (instead of carrying generator state) makes a resumed run
    draw exactly what the uninterrupted run would have drawn.
    """
    sequence = np.random.SeedSequence([seed, iteration])
    torch_seed = int(sequence.spawn(1)[0].generate_state(1, dtype=np.uint64)[0] >> 1)
    return np.random.default_rng(sequence), torch.Generator().manual_seed(torch_seed)


def torch_dtype(name: str) -> torch.dtype:
    """``"float32"``/``"float64"`` to the torch dtype."""
    return {"float32": torch.float32, "float64": torch.float64}[name]


def build_policy(config: Config, obs_dim: int, act_dim: int) -> GaussianMLPPolicy:
    """The configured policy, initialised from the config's seed."""
    policy = GaussianMLPPolicy.from_config(config.policy, obs_dim, act_dim)
    policy.reset_parameters(torch.Generator().manual_seed(config.train.seed))
    return policy.to(torch_dtype(config.train.dtype))


def make_sampler(config: Config, num_tasks: int, episodes_per_task: int) -> Sampler:
    """A sampler of ``episodes_per_task`` episodes for each of ``num_tasks`` tasks of the config's env."""
    e = config.env
    return Sampler(e.id, num_tasks, episodes_per_task, e.horizon, e.kwargs, e.vector_kwargs, e.vectorization,
                   torch_dtype(config.train.dtype))


def adaptation_settings(config: Config) -> AdaptationSettings:
    """The inner-loop settings of a config."""
    m = config.maml
    return AdaptationSettings(
        m.inner_lr, m.num_inner_steps, m.first_order, m.gamma, m.gae_lambda, m.normalize_advantages, m.inner_estimator
    )


def trpo_settings(config: Config) -> TRPOSettings:
    """The TRPO settings of a config."""
    o = config.outer
    return TRPOSettings(
        o.max_kl, o.cg_iters, o.cg_damping, o.ls_backtrack, o.ls_max_steps, o.hvp_subsample, o.curvature
    )


def run_name(config: Config, algo: str) -> str:
    """CleanRL-style run name ``env__algo__seed__time``."""
    env = config.env.id.split("/")[-1]
    return f"{env}__{algo}__{config.train.seed}__{time.strftime('%Y%m%d-%H%M%S')}"


def algo_name(config: Config) -> str:
    """e.g. ``maml-trpo`` or ``fomaml-adam``."""
    return f"{'fo' if config.maml.first_order else ''}maml-{config.outer.optimizer}"


@dataclass
class TrainResult:
    """Where a run left its outputs."""

    run_dir: Path
    checkpoint: Path
    policy: GaussianMLPPolicy


def train(config: Config, run_dir: Path, resume: bool = False, progress: bool = True) -> TrainResult:
    """Meta-train with MAML (policy-gradient inner loop) and write logs and checkpoints under ``run_dir``.

    With ``resume``, continue from ``run_dir/checkpoints/latest.pt``; the remaining iterations
    draw the same tasks and noise as an uninterrupted run would.
    """
    if config.maml.loss != "pg":
        raise ValueError("train() runs the policy-gradient loss; use metarl.supervised for maml.loss=supervised")
    if config.train.num_threads:
        torch.set_num_threads(config.train.num_threads)
    ckpt_dir = run_dir / "checkpoints"
    task_env = make_task_env(config.env.id, config.env.horizon, config.env.kwargs)
    obs_dim = int(np.prod(task_env.observation_space.shape))
    act_dim = int(np.prod(task_env.action_space.shape))
    policy = build_policy(config, obs_dim, act_dim)
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.outer.lr) if config.outer.optimizer == "adam" else None
    start = 0
    if resume:
        payload = load_checkpoint(ckpt_dir)
        policy.load_state_dict(payload["policy"])
        if optimizer is not None and payload["optimizer"] is not None:
            optimizer.load_state_dict(payload["optimizer"])
        start = payload["iteration"]
        drop_metrics_from(run_dir, start)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))

    m = config.maml
    sampler = make_sampler(config, m.meta_batch_size, m.episodes_per_task)
    adaptation, trpo = adaptation_settings(config), trpo_settings(config)
    writer = SummaryWriter(str(run_dir))
    if start == 0:
        writer.add_text("hyperparameters", describe_values(config))
    checkpoint = ckpt_dir / "latest.pt"
    bar = tqdm(range(start, config.train.iterations), initial=start, total=config.train.iterations,
               desc="meta-train", disable=not progress, dynamic_ncols=True)
    try:
        for it in bar:
            rng, generator = iteration_rngs(config.train.seed, it)
            tasks = task_env.unwrapped.sample_tasks(m.meta_batch_size, rng)
            t0, collected = time.perf_counter(), sampler.collect_seconds
            batch, _ = sample_meta_batch(sampler, policy, policy.params(), tasks, adaptation, rng, generator)
            t1, t_collect = time.perf_counter(), sampler.collect_seconds - collected
            try:
                stats = trpo_step(policy, batch, adaptation, trpo) if optimizer is None else adam_step(policy, optimizer, batch, adaptation)
            except NonFiniteError as exc:
                raise TrainingDiverged(
                    f"iteration {it}: {exc}; stopped, the last good checkpoint is {checkpoint}"
                ) from exc
            t2 = time.perf_counter()
            metrics = iteration_metrics(batch, stats, t_collect, t1 - t0 - t_collect, t2 - t1)
            if not all(math.isfinite(v) for v in metrics.values()):
                raise TrainingDiverged(f"iteration {it}: non-finite metrics {metrics}; last good checkpoint is {checkpoint}")
            log_metrics(writer, run_dir, it, metrics)
            bar.set_postfix(pre=f"{metrics['meta/return_pre']:.1f}", post=f"{metrics['meta/return_post']:.1f}",
                            sps=f"{metrics['perf/env_steps_per_s']:.0f}")
            if (it + 1) % config.train.checkpoint_every == 0 or it + 1 == config.train.iterations:
                checkpoint = save_checkpoint(ckpt_dir, policy, config, it + 1, optimizer)
    finally:
        bar.close()
        writer.close()
        sampler.close()
    if start >= config.train.iterations:
        checkpoint = save_checkpoint(ckpt_dir, policy, config, start, optimizer)
    return TrainResult(run_dir, checkpoint, policy)


def iteration_metrics(
    batch, stats: dict[str, float], t_sample: float, t_adapt: float, t_learn: float
) -> dict[str, float]:
    """The per-iteration scalars logged to TensorBoard (grouped keys).

    Wall-time split: ``t_sample`` in the sampler (env steps and policy forwards), ``t_adapt``
    between samplings (returns, baselines, advantages, the inner steps that produce the
    parameters to re-sample with), ``t_learn`` in the meta-update (inner loop re-run with
    its graph, surrogate, meta-gradient, CG, line search). The learner is the last two.
    """
    env_steps = sum(ep.num_steps for ep in [*batch.train, batch.valid])
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
    return metrics


def drop_metrics_from(run_dir: Path, iteration: int) -> None:
    """On resume: remove ``metrics.jsonl`` rows of iterations >= ``iteration`` (run after the last checkpoint)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return
    lines = path.read_text().splitlines()
    kept = [line for line in lines if json.loads(line)["iteration"] < iteration]
    if len(kept) != len(lines):
        path.write_text("".join(line + "\n" for line in kept))


def log_metrics(writer: SummaryWriter, run_dir: Path, iteration: int, metrics: dict[str, float]) -> None:
    """Write scalars to TensorBoard and append them to ``metrics.jsonl``."""
    for key, value in metrics.items():
        writer.add_scalar(key, value, iteration)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"iteration": iteration, **metrics}) + "\n")


def describe_values(config: Config) -> str:
    """Hyperparameters as a markdown table (logged to TensorBoard as text)."""
    rows = ["| key | value |", "|---|---|"]
    for section, values in to_dict(config).items():
        rows += [f"| {section}.{k} | {v} |" for k, v in values.items()]
    return "\n".join(rows)


_ = describe  # re-exported for scripts that document the config
