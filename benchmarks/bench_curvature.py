"""TRPO curvature benchmark: step quality and learner time of each KL-Hessian option on real meta-batches.

    python -m benchmarks.bench_curvature --run-dir RUN_OR_CHECKPOINT [--batches 2] [--threads 2]
        [--subsamples 1.0,0.2] [--results DIR] [--name curvature_<env>]

Samples ``--batches`` meta-batches with the checkpoint's policy and config (tasks and noise
from the run's seed, after the checkpoint's iteration), then runs one full TRPO meta-update
(:func:`metarl.trpo.trpo_step`: meta-gradient, conjugate gradient, line search on the exact
KL) from the same parameters for every combination of ``outer.curvature`` (``exact``:
through the inner loop; ``fisher``: the adapted policies' Fisher) and ``outer.hvp_subsample``.
Reports, per option and averaged over the batches: the learner's wall time, the surrogate
gain of the accepted step, its mean KL and the line-search backtracks, and (with two or more
batches) the same step's surrogate gain and KL on the next batch, whose tasks and
trajectories it did not see: a step that exploits one batch's noise gains there and not on
the held-out batch. Writes ``<name>.{md,json}`` to ``--results`` (default: the run
directory's ``results/``). The options compete on the same batches, side by side.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch

from benchmarks.common import BenchParser, add_results, command_line, log, make_parser, run_main
from metarl.algorithms import outer_optimizer
from metarl.build import adaptation_settings, iteration_rngs, make_sampler, task_env, trpo_settings
from metarl.checkpoint import load_checkpoint
from metarl.cli import positive
from metarl.errors import ConfigError, MetarlError
from metarl.maml import (
    AdaptationSettings,
    MetaBatch,
    OldPolicy,
    adapt_on_batch,
    sample_meta_batch,
    surrogate_and_old_policy,
)
from metarl.policy import GaussianMLPPolicy, detach_params
from metarl.reporting import env_slug, write_results
from metarl.trpo import evaluate_outer, trpo_step

MODULE = "bench_curvature"


def parse_subsamples(text: str) -> list[float]:
    """``"1.0,0.2"`` -> ``[1.0, 0.2]``, each in (0, 1]."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(not 0 < v <= 1 for v in values):
        raise MetarlError(f"--subsamples must be comma-separated fractions in (0, 1], got {text!r}")
    return values


def snapshot(policy: GaussianMLPPolicy, batch: MetaBatch, adaptation: AdaptationSettings) -> tuple[OldPolicy, float]:
    """The adapted policies' snapshot on ``batch`` at the policy's parameters, and the surrogate loss there."""
    adapted = adapt_on_batch(policy, policy.params(), batch, adaptation, first_order=True)
    with torch.no_grad():
        loss, old = surrogate_and_old_policy(policy, detach_params(adapted), batch.valid)
    return old, loss.item()


def build_parser() -> BenchParser:
    """The command-line flags."""
    parser = make_parser(MODULE, __doc__)
    parser.add_argument("--run-dir", type=Path, required=True, help="run directory or checkpoint file")
    parser.add_argument("--batches", type=positive, default=2, help="meta-batches to average over")
    parser.add_argument("--threads", type=positive, default=2, help="torch threads for the learner")
    parser.add_argument("--subsamples", default="1.0,0.2", help="hvp_subsample values to compare")
    add_results(parser, "<run-dir>/results")
    parser.add_argument("--name", help="results file stem (default: curvature_<env>)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Sample the batches, run every curvature option on each, print and write the table."""
    subsamples = parse_subsamples(args.subsamples)
    checkpoint = load_checkpoint(args.run_dir)
    for line in checkpoint.skipped:
        log(f"note: skipped unreadable checkpoint: {line}")
    config = checkpoint.config
    if outer_optimizer(config) != "trpo" or config.maml.loss != "pg":
        raise ConfigError(
            f"{checkpoint.path}: the run must use maml.loss=pg and outer.optimizer=trpo, "
            f"not {config.maml.loss} and {outer_optimizer(config)}"
        )
    torch.set_num_threads(args.threads)
    policy = checkpoint.policy
    assert isinstance(policy, GaussianMLPPolicy)  # maml.loss=pg, checked above
    m = config.maml
    env = task_env(config)
    sampler = make_sampler(config, m.meta_batch_size, m.episodes_per_task)
    adaptation, base = adaptation_settings(config.maml), trpo_settings(config.outer)
    curvatures: tuple[Literal["exact", "fisher"], ...] = ("exact", "fisher")
    options = [(curvature, sub) for curvature in curvatures for sub in subsamples]
    rows: dict[str, list[dict[str, float]]] = {f"{c}, hvp_subsample {s:g}": [] for c, s in options}
    batches = []
    try:
        for j in range(args.batches):
            rng, generator = iteration_rngs(config.train.seed, checkpoint.iteration + j)
            tasks = env.unwrapped.sample_tasks(m.meta_batch_size, rng)  # type: ignore[attr-defined]
            batch, _ = sample_meta_batch(sampler, policy, policy.params(), tasks, adaptation, rng, generator)
            batches.append((batch, *snapshot(policy, batch, adaptation)))
    finally:
        sampler.close()
        env.close()
    for j, (batch, _, _) in enumerate(batches):
        held_out, held_old, held_loss = batches[(j + 1) % len(batches)]
        for (curvature, sub), label in zip(options, rows):
            candidate = copy.deepcopy(policy)
            settings = dataclasses.replace(base, curvature=curvature, hvp_subsample=sub)
            start = time.perf_counter()
            stats = trpo_step(candidate, batch, adaptation, settings)
            stats["seconds"] = time.perf_counter() - start
            if len(batches) > 1:
                new_loss, new_kl = evaluate_outer(candidate, held_out, adaptation, held_old)
                stats.update(held_out_gain=held_loss - new_loss, held_out_kl=new_kl)
            rows[label].append(stats)
            log(
                f"batch {j}: {label}: {stats['seconds']:.2f} s, gain {stats['improvement']:.5f}, "
                f"kl {stats['kl']:.4f}, backtracks {stats['ls_steps']:.0f}"
                + (f", held-out gain {stats['held_out_gain']:.5f}" if len(batches) > 1 else "")
            )

    held = len(batches) > 1
    keys = ("seconds", "improvement", "kl", "ls_steps") + (("held_out_gain", "held_out_kl") if held else ())
    summary = {label: {key: statistics.mean(r[key] for r in runs) for key in keys} for label, runs in rows.items()}
    fastest = min(s["seconds"] for s in summary.values())
    table = [
        "| curvature | learner s (one meta-update) | relative | surrogate gain | mean KL | backtracks |"
        + (" held-out gain | held-out KL |" if held else ""),
        "|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if held else ""),
    ]
    table += [
        f"| {label} | {s['seconds']:.2f} | {s['seconds'] / fastest:.1f}x | {s['improvement']:.5f} | "
        f"{s['kl']:.4f} | {s['ls_steps']:.1f} |"
        + (f" {s['held_out_gain']:.5f} | {s['held_out_kl']:.4f} |" if held else "")
        for label, s in summary.items()
    ]
    name = args.name or f"curvature_{env_slug(config.env.id)}"
    md = (
        f"# TRPO curvature options on {config.env.id}\n\n"
        f"Checkpoint {checkpoint.path} (iteration {checkpoint.iteration}), {args.batches} meta-batches of "
        f"{m.meta_batch_size} tasks x {m.episodes_per_task} trajectories, max KL {base.max_kl}, "
        f"{base.cg_iters} CG iterations, {args.threads} torch threads; means over the batches. Held-out: "
        f"the step computed on batch j, evaluated on batch j+1 (cyclically).\n\n" + "\n".join(table)
    )
    print(md)
    out = args.results or results_home(args.run_dir, checkpoint.path)
    md_path, js_path = write_results(
        out,
        name,
        md,
        {"summary": summary, "per_batch": rows, "iteration": checkpoint.iteration, "checkpoint": str(checkpoint.path)},
        command=command_line(MODULE, args.argv),
    )
    log(f"wrote {md_path}, {js_path}")
    return 0


def results_home(run_dir: Path, checkpoint: Path) -> Path:
    """The default results folder: ``<run dir>/results`` (the run of a checkpoint file: two levels up)."""
    if run_dir.is_dir():
        return (run_dir.parent if run_dir.name == "checkpoints" else run_dir) / "results"
    return checkpoint.parent.parent / "results"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit status (2 and one ``error:`` line for bad input)."""
    return run_main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
