"""TRPO curvature benchmark: step quality and learner time of each KL-Hessian option on real meta-batches.

    python scripts/bench_curvature.py --checkpoint RUN_OR_FILE [--batches 2] [--threads 2]
        [--subsamples 1.0,0.2] [--results results] [--name curvature_<env>]

Samples ``--batches`` meta-batches with the checkpoint's policy and config (tasks and noise
from the run's seed, after the checkpoint's iteration), then runs one full TRPO meta-update
(:func:`metarl.trpo.trpo_step`: meta-gradient, conjugate gradient, line search on the exact
KL) from the same parameters for every combination of ``outer.curvature`` (``exact``:
through the inner loop; ``fisher``: the adapted policies' Fisher) and ``outer.hvp_subsample``.
Reports, per option and averaged over the batches: the learner's wall time, the surrogate
gain of the accepted step, its mean KL and the line-search backtracks, and (with two or more
batches) the same step's surrogate gain and KL on the next batch, whose tasks and
trajectories it did not see: a step that exploits one batch's noise gains there and not on
the held-out batch. Writes ``<results>/<name>.{md,json}``. The options compete on the same
batches, side by side.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metarl.checkpoint import load_checkpoint, policy_from_checkpoint  # noqa: E402
from metarl.maml import (  # noqa: E402
    AdaptationSettings,
    MetaBatch,
    OldPolicy,
    adapt_on_batch,
    sample_meta_batch,
    surrogate_and_old_policy,
)
from metarl.policy import GaussianMLPPolicy, detach_params  # noqa: E402
from metarl.reporting import env_slug, write_results  # noqa: E402
from metarl.sampler import make_task_env  # noqa: E402
from metarl.trainer import adaptation_settings, iteration_rngs, make_sampler, torch_dtype, trpo_settings  # noqa: E402
from metarl.trpo import evaluate_outer, trpo_step  # noqa: E402


def parse_subsamples(text: str) -> list[float]:
    """``"1.0,0.2"`` -> ``[1.0, 0.2]``, each in (0, 1]."""
    values = [float(v) for v in text.split(",") if v.strip()]
    if not values or any(not 0 < v <= 1 for v in values):
        raise ValueError(f"--subsamples must be comma-separated fractions in (0, 1], got {text!r}")
    return values


def snapshot(policy: GaussianMLPPolicy, batch: MetaBatch, adaptation: AdaptationSettings) -> tuple[OldPolicy, float]:
    """The adapted policies' snapshot on ``batch`` at the policy's parameters, and the surrogate loss there."""
    adapted = adapt_on_batch(policy, policy.params(), batch, adaptation, first_order=True)
    with torch.no_grad():
        loss, old = surrogate_and_old_policy(policy, detach_params(adapted), batch.valid)
    return old, loss.item()


def main(argv: list[str] | None = None) -> int:
    """Sample the batches, run every curvature option on each, print and write the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="metarl checkpoint file, or a run directory")
    parser.add_argument("--batches", type=int, default=2, help="meta-batches to average over")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the learner")
    parser.add_argument("--subsamples", default="1.0,0.2", help="hvp_subsample values to compare")
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--name", default=None, help="results file stem (default: curvature_<env>)")
    args = parser.parse_args(argv)
    if args.batches < 1 or args.threads < 1:
        parser.error(f"--batches and --threads must be >= 1, got {args.batches}, {args.threads}")
    try:
        subsamples = parse_subsamples(args.subsamples)
    except ValueError as exc:
        parser.error(str(exc))

    payload = load_checkpoint(args.checkpoint)
    config = payload["config"]
    if config.outer.optimizer != "trpo" or config.maml.loss != "pg":
        parser.error("the checkpoint's run must use maml.loss=pg and outer.optimizer=trpo")
    torch.set_num_threads(args.threads)
    policy = policy_from_checkpoint(payload).to(torch_dtype(config.train.dtype))
    m = config.maml
    task_env = make_task_env(config.env.id, config.env.horizon, config.env.kwargs)
    sampler = make_sampler(config, m.meta_batch_size, m.episodes_per_task)
    adaptation, base = adaptation_settings(config), trpo_settings(config)
    options = [(curvature, sub) for curvature in ("exact", "fisher") for sub in subsamples]
    rows: dict[str, list[dict[str, float]]] = {f"{c}, hvp_subsample {s:g}": [] for c, s in options}
    batches = []
    for j in range(args.batches):
        rng, generator = iteration_rngs(config.train.seed, payload["iteration"] + j)
        tasks = task_env.unwrapped.sample_tasks(m.meta_batch_size, rng)
        batch, _ = sample_meta_batch(sampler, policy, policy.params(), tasks, adaptation, rng, generator)
        batches.append((batch, *snapshot(policy, batch, adaptation)))
    sampler.close()
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
            print(f"batch {j}: {label}: {stats['seconds']:.2f} s, gain {stats['improvement']:.5f}, "
                  f"kl {stats['kl']:.4f}, backtracks {stats['ls_steps']:.0f}"
                  + (f", held-out gain {stats['held_out_gain']:.5f}" if len(batches) > 1 else ""), flush=True)

    keys = ("seconds", "improvement", "kl", "ls_steps") + (("held_out_gain", "held_out_kl") if len(batches) > 1 else ())
    summary = {
        label: {key: statistics.mean(r[key] for r in runs) for key in keys}
        for label, runs in rows.items()
    }
    fastest = min(s["seconds"] for s in summary.values())
    held = len(batches) > 1
    table = ["| curvature | learner s (one meta-update) | relative | surrogate gain | mean KL | backtracks |"
             + (" held-out gain | held-out KL |" if held else ""),
             "|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if held else "")]
    table += [f"| {label} | {s['seconds']:.2f} | {s['seconds'] / fastest:.1f}x | {s['improvement']:.5f} | "
              f"{s['kl']:.4f} | {s['ls_steps']:.1f} |"
              + (f" {s['held_out_gain']:.5f} | {s['held_out_kl']:.4f} |" if held else "") for label, s in summary.items()]
    name = args.name or f"curvature_{env_slug(config.env.id)}"
    md = (f"# TRPO curvature options on {config.env.id}\n\n"
          f"Checkpoint {args.checkpoint} (iteration {payload['iteration']}), {args.batches} meta-batches of "
          f"{m.meta_batch_size} tasks x {m.episodes_per_task} trajectories, max KL {base.max_kl}, "
          f"{base.cg_iters} CG iterations, {args.threads} torch threads; means over the batches. Held-out: "
          f"the step computed on batch j, evaluated on batch j+1 (cyclically).\n\n"
          + "\n".join(table)
          + f"\n\n- command: `python scripts/bench_curvature.py {' '.join(argv if argv is not None else sys.argv[1:])}`")
    print(md)
    write_results(args.results, name, md, {"summary": summary, "per_batch": rows, "iteration": payload["iteration"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
