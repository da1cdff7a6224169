"""The meta-RL family side by side on one task distribution and one env-step budget (issue 17).

    python -m benchmarks.bench_rl_algorithms [--variants maml-trpo,fomaml-trpo,maml-vpg,promp,dice-trpo,metasgd-trpo,
        anil-trpo] [--seeds 0,1,2] [--iterations 200] [--eval-every 50] [--num-tasks 400] [--episodes B]
        [--config configs/navigation2d.yaml] [--run-dir runs/bench_rl_algorithms] [--results DIR]
        [--set key=value ...] [--no-progress]

Every variant (:data:`VARIANTS`: ``maml.algorithm``, the inner estimator and the outer step)
meta-trains from ``--config`` for ``--iterations`` meta-iterations. All of them sample the
same number of env steps per iteration (``k + 1`` samplings of meta-batch × episodes ×
horizon; ProMP takes several gradient steps on each sampled batch, not more samples), so equal
iterations are an equal env-step budget. Every ``--eval-every`` iterations the run stops, its
checkpoint is evaluated with its own inner rule (learned step sizes, adapted subset) on
``--num-tasks`` fresh tasks (the same tasks for every variant and seed: ``eval.seed``), one
inner step of ``--episodes`` trajectories, and training resumes (the loop's resume draws what
an uninterrupted run would have). The curves are that one-step return against env steps,
mean over seeds with a band of the 95% CI across seeds; the table gives the final one, the
wall time of training (summed iteration time from the run's metrics) and, for every variant,
the env steps it needed to reach MAML-TRPO's final one-step return (the ProMP paper's claim
is that ProMP needs fewer). A run directory that holds a checkpoint is resumed, so shards of
seeds or variants can run in parallel and a last invocation with all of them writes the
tables. Writes ``rl_algorithms.{md,json}`` and ``rl_algorithms.png`` to ``--results``
(default ``<run-dir>/results``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    CONFIGS,
    BenchParser,
    add_config,
    add_progress,
    add_results,
    command_line,
    csv,
    log,
    make_parser,
    run_main,
    seed_ci95,
)
from metarl.algorithms import checkpoint_inner_rule
from metarl.checkpoint import has_checkpoint, load_checkpoint
from metarl.cli import positive
from metarl.config import Config, load_config, to_dict
from metarl.errors import BenchmarkError, TrainingDiverged
from metarl.evaluation import evaluate_adaptation
from metarl.reporting import write_results
from metarl.trainer import train

MODULE = "bench_rl_algorithms"
FIGURE = "rl_algorithms.png"
REFERENCE = "maml-trpo"
"""The variant whose final one-step return the others' env steps are measured against."""

VARIANTS: dict[str, list[str]] = {
    "maml-trpo": ["maml.algorithm=maml"],
    "fomaml-trpo": ["maml.algorithm=fomaml", "maml.first_order=null"],
    "maml-vpg": ["maml.algorithm=vpg", "outer.optimizer=null"],
    "promp": ["maml.algorithm=promp", "outer.optimizer=null", "maml.inner_estimator=lvc"],
    "dice-trpo": ["maml.algorithm=maml", "maml.inner_estimator=dice"],
    "lvc-trpo": ["maml.algorithm=maml", "maml.inner_estimator=lvc"],
    "metasgd-trpo": ["maml.algorithm=metasgd"],
    "anil-trpo": ["maml.algorithm=anil"],
}
"""Each variant's settings on top of ``--config`` (and ``--set``): the algorithm, its inner-loss estimator and,
for VPG and ProMP, the algorithm's own outer step (Adam; the configs name TRPO explicitly)."""

DEFAULT_VARIANTS = ["maml-trpo", "fomaml-trpo", "maml-vpg", "promp", "dice-trpo", "metasgd-trpo", "anil-trpo"]

RELEVANT = ("env", "policy", "maml", "outer", "train", "promp")
"""The config sections a run depends on (a resumed run must match them, the iteration count aside)."""


def run_config(args: argparse.Namespace, variant: str, seed: int, iterations: int) -> Config:
    """The config of one run: ``--config``, ``--set``, the variant's settings, the seed and the iterations so far."""
    return load_config(
        args.config,
        [*args.set, *VARIANTS[variant], f"train.seed={seed}", f"train.iterations={iterations}"],
    )


def relevant(config: Config) -> dict[str, Any]:
    """The sections of :data:`RELEVANT` without the iteration count, as plain data."""
    data = to_dict(config)
    out = {section: data[section] for section in RELEVANT if section in data}
    out["train"] = {k: v for k, v in out["train"].items() if k not in ("iterations", "checkpoint_every")}
    return out


def summed_iteration_seconds(run_dir: Path) -> float:
    """The run's training time: the sum of its logged sampling, adaptation and learning times."""
    total = 0.0
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            total += sum(row.get(f"perf/time_{part}_s", 0.0) for part in ("sampling", "adapt", "learning"))
    return total


def evaluate_point(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """The checkpoint's one-step return on the fixed fresh tasks, through its own inner rule."""
    checkpoint = load_checkpoint(run_dir)
    policy = checkpoint.gaussian_policy("bench_rl_algorithms")
    result = evaluate_adaptation(
        policy, checkpoint.config, args.num_tasks, 1, args.episodes, rule=checkpoint_inner_rule(checkpoint)
    )  # episodes None: the config's eval.episodes_per_step
    return {
        "iteration": checkpoint.iteration,
        "return_0": result["steps"][0]["mean_return"],
        "return_1": result["steps"][1]["mean_return"],
        "ci95_1": result["steps"][1]["ci95"],
    }


def env_steps_per_iteration(config: Config) -> int:
    """Env steps one meta-iteration samples at most: (k + 1) samplings of tasks × episodes × horizon."""
    from metarl.build import horizon

    m = config.maml
    return (m.num_inner_steps + 1) * m.meta_batch_size * m.episodes_per_task * horizon(config.env)


def run_one(args: argparse.Namespace, variant: str, seed: int) -> dict[str, Any]:
    """Train one run in ``--eval-every`` segments, evaluating after each; resume what is already there."""
    run_dir = args.run_dir / f"{variant}_seed{seed}"
    final = run_config(args, variant, seed, args.iterations)
    if has_checkpoint(run_dir) and relevant(load_checkpoint(run_dir).config) != relevant(final):
        raise BenchmarkError(f"{run_dir} holds a run with other settings; remove it or use another --run-dir")
    curve_file = run_dir / "curve.json"
    curve: list[dict[str, Any]] = json.loads(curve_file.read_text()) if curve_file.exists() else []
    row: dict[str, Any] = {"variant": variant, "seed": seed, "settings": VARIANTS[variant], "training_diverged": None}
    done = {point["iteration"] for point in curve}
    target = args.eval_every
    while target <= args.iterations:
        if target not in done:
            config = run_config(args, variant, seed, target)
            config.train.checkpoint_every = args.eval_every
            try:
                train(config, run_dir, resume=has_checkpoint(run_dir), progress=not args.no_progress, log=log)
            except TrainingDiverged as exc:
                log(f"   training diverged: {exc}")
                row["training_diverged"] = str(exc)
                break
            point = evaluate_point(args, run_dir)
            curve.append(point)
            curve_file.write_text(json.dumps(curve, indent=1))
            log(f"   {variant} seed {seed}, iteration {point['iteration']}: one-step return {point['return_1']:.2f}")
        target += args.eval_every
    per_iteration = env_steps_per_iteration(final)
    return {
        **row,
        "curve": sorted(curve, key=lambda p: p["iteration"]),
        "env_steps_per_iteration": per_iteration,
        "train_seconds": summed_iteration_seconds(run_dir) if (run_dir / "metrics.jsonl").exists() else float("nan"),
    }


def mean_curve(group: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Iterations, mean over seeds and 95% CI across seeds of the one-step return at the points all seeds reached."""
    common = sorted(set.intersection(*({p["iteration"] for p in r["curve"]} for r in group)))
    values = np.array([[next(p["return_1"] for p in r["curve"] if p["iteration"] == i) for i in common] for r in group])
    stats = [seed_ci95(list(values[:, j])) for j in range(len(common))]
    return np.array(common), np.array([s[0] for s in stats]), np.array([s[1] for s in stats])


def steps_to_reach(iterations: np.ndarray, means: np.ndarray, target: float, per_iteration: int) -> float:
    """Env steps at the first evaluation point whose mean one-step return reaches ``target`` (NaN if none)."""
    hits = np.nonzero(means >= target)[0]
    return float(iterations[hits[0]] * per_iteration) if hits.size else float("nan")


def markdown(runs: list[dict[str, Any]], args: argparse.Namespace, config: Config) -> str:
    """The summary table, the per-seed table and the figure link."""
    variants = list(dict.fromkeys(r["variant"] for r in runs))
    seeds = sorted({r["seed"] for r in runs})
    groups = {v: [r for r in runs if r["variant"] == v and r["curve"]] for v in variants}
    reference = groups.get(REFERENCE) or []
    target = mean_curve(reference)[1][-1] if reference else float("nan")
    lines = [
        "# The meta-RL family side by side",
        "",
        f"Task: `{config.env.id}` from `{args.config}`; every variant trains {args.iterations} meta-iterations "
        f"({env_steps_per_iteration(config):,} env steps each, the same for all), seeds {', '.join(map(str, seeds))}. "
        f"Evaluation every {args.eval_every} iterations on the same {args.num_tasks} fresh tasks (eval seed "
        f"{config.eval.seed}), {args.episodes or config.eval.episodes_per_step} trajectories per task, one inner step "
        "with the run's own inner rule. "
        "Cells: mean over seeds ± Student-t 95% CI across seeds. Train time: summed iteration time (sampling, "
        "adaptation, learner) from the runs' metrics, mean over seeds.",
        "",
        f"| variant | settings | before adaptation | 1 step (final) | train time per run | env steps to reach "
        f"{REFERENCE}'s final {target:.2f} |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for v in variants:
        group = groups[v]
        if not group:
            lines.append(f"| {v} | {', '.join(VARIANTS[v])} | training diverged | | | |")
            continue
        finals = [r["curve"][-1] for r in group]
        pre, pre_ci = seed_ci95([p["return_0"] for p in finals])
        post, post_ci = seed_ci95([p["return_1"] for p in finals])
        iterations, means, _ = mean_curve(group)
        reach = steps_to_reach(iterations, means, target, group[0]["env_steps_per_iteration"])
        wall = float(np.mean([r["train_seconds"] for r in group]))
        settings = ", ".join(f"`{s}`" for s in VARIANTS[v])

        def cell(mean: float, ci: float) -> str:
            return f"{mean:.2f} ± {ci:.2f}" if math.isfinite(ci) else f"{mean:.2f}"

        reach_text = f"{reach:,.0f}" if math.isfinite(reach) else "not reached"
        diverged = sum(1 for r in runs if r["variant"] == v and r["training_diverged"])
        note = f" ({diverged} seeds diverged)" if diverged else ""
        lines.append(
            f"| {v}{note} | {settings} | {cell(pre, pre_ci)} | **{cell(post, post_ci)}** | {wall:.0f} s | "
            f"{reach_text} |"
        )
    lines += ["", "## Per seed: one-step return at each evaluation point", ""]
    points = sorted({p["iteration"] for r in runs for p in r["curve"]})
    lines += [
        "| variant | seed | " + " | ".join(f"it {i}" for i in points) + " |",
        "|---|---:|" + "---:|" * len(points),
    ]
    for r in runs:
        by = {p["iteration"]: p for p in r["curve"]}
        cells = " | ".join(f"{by[i]['return_1']:.2f}" if i in by else "-" for i in points)
        lines.append(f"| {r['variant']} | {r['seed']} | {cells} |")
    lines += ["", f"![one-step return vs env steps]({FIGURE})"]
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], path: Path, title: str) -> None:
    """One-step return against env steps: mean over seeds, band of the 95% CI across seeds."""
    from metarl.plots import STEP_COLORS, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    try:
        for i, v in enumerate(dict.fromkeys(r["variant"] for r in runs)):
            group = [r for r in runs if r["variant"] == v and r["curve"]]
            if not group:
                continue
            iterations, means, cis = mean_curve(group)
            steps = iterations * group[0]["env_steps_per_iteration"]
            color = STEP_COLORS[i % len(STEP_COLORS)]
            ax.plot(steps, means, marker="o", ms=3, color=color, label=v)
            if len(group) > 1:
                ax.fill_between(steps, means - cis, means + cis, color=color, alpha=0.15)
        ax.set_xlabel("env steps")
        ax.set_ylabel("one-step return (fresh tasks)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def build_parser() -> BenchParser:
    """The command-line flags."""
    parser = make_parser(MODULE, __doc__)
    add_config(parser, CONFIGS / "navigation2d.yaml")
    parser.add_argument(
        "--variants",
        type=csv(str),
        default=DEFAULT_VARIANTS,
        help=f"comma-separated variants (default: {','.join(DEFAULT_VARIANTS)}; also: lvc-trpo)",
    )
    parser.add_argument("--seeds", type=csv(int), default=[0, 1, 2], help="comma-separated train.seed (default 0,1,2)")
    parser.add_argument("--iterations", type=positive, default=200, help="meta-iterations of every run (default 200)")
    parser.add_argument("--eval-every", type=positive, default=50, help="iterations between evaluations (default 50)")
    parser.add_argument("--num-tasks", type=positive, default=400, help="fresh evaluation tasks (default 400)")
    parser.add_argument(
        "--episodes",
        type=positive,
        default=None,
        help="trajectories per task and step (default: the config's eval.episodes_per_step)",
    )
    parser.add_argument(
        "--run-dir", type=Path, default=Path("runs") / MODULE, help=f"folder of the runs (default: runs/{MODULE})"
    )
    add_results(parser, "<run-dir>/results")
    add_progress(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Train and evaluate every (variant, seed); write the tables and the figure."""
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        raise BenchmarkError(f"--variants: unknown {unknown or 'none given'}; allowed: {', '.join(VARIANTS)}")
    if not args.seeds or min(args.seeds) < 0:
        raise BenchmarkError("--seeds needs non-negative numbers")
    if args.iterations % args.eval_every:
        raise BenchmarkError(f"--iterations ({args.iterations}) must be a multiple of --eval-every ({args.eval_every})")
    configs = {v: run_config(args, v, args.seeds[0], args.iterations) for v in args.variants}  # validate all first
    runs: list[dict[str, Any]] = []
    total = len(args.variants) * len(args.seeds)
    for variant in args.variants:
        for seed in args.seeds:
            log(f"[{len(runs) + 1}/{total}] {variant}, seed {seed}")
            runs.append(run_one(args, variant, seed))
    out: Path = args.results or args.run_dir / "results"
    out.mkdir(parents=True, exist_ok=True)
    config = configs[args.variants[0]]
    table = markdown(runs, args, config)
    plot(runs, out / FIGURE, f"{config.env.id}: one-step return vs env steps")
    print(table)
    data = {
        "config": str(args.config),
        "iterations": args.iterations,
        "eval_every": args.eval_every,
        "num_tasks": args.num_tasks,
        "episodes": args.episodes,
        "runs": runs,
        "figure": str(out / FIGURE),
    }
    md, js = write_results(out, "rl_algorithms", table, data, command=command_line(MODULE, args.argv))
    log(f"wrote {md}, {js}, {out / FIGURE}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit status (2 and one ``error:`` line for bad input)."""
    return run_main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
