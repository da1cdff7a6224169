"""Sinusoid regression, every algorithm of the MAML family side by side (issue 16).

    python -m benchmarks.bench_sinusoid_algorithms [--algorithms maml,fomaml,reptile,metasgd,anil,mamlpp]
        [--shots 5,10,20] [--seeds 0,1,2] [--iterations 10000] [--num-tasks 1000]
        [--run-dir runs/bench_sinusoid_algorithms] [--results DIR] [--config configs/sinusoid_supervised.yaml]
        [--set key=value ...] [--no-progress]

Meta-trains every algorithm (``maml.algorithm``) for every K (``--shots``, query set of K
points, as the MAML paper) and seed, each in its own run directory under ``--run-dir`` (a run
that holds a checkpoint is resumed, a finished one is only evaluated: shards of seeds can run
in parallel and a last invocation with every seed writes the tables). The common settings
come from ``--config`` (the MAML paper's: 40-40 ReLU, meta-batch 25, inner step 0.01, Adam
1e-3); an algorithm's own settings are in :data:`SETTINGS` and printed in the table. Every
checkpoint is evaluated through its own inner rule (:func:`metarl.algorithms.checkpoint_inner_rule`:
learned step sizes, adapted subset) on the same ``--num-tasks`` fresh tasks per K: MSE on 100
query points after 1, 5 and 10 inner steps. A cell is the mean over seeds of the mean over
tasks ± a Student-t 95% CI across seeds; the per-seed table has the 95% CI over tasks. Writes
``sinusoid_algorithms.{md,json}`` and ``sinusoid_algorithms.png`` to ``--results`` (default
``<run-dir>/results``). Anchors: the MAML paper (5-shot, 1/5/10 steps) and the Meta-SGD paper's
one-step table (:mod:`metarl.paper`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
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
from metarl.algorithms import ALGORITHMS, checkpoint_inner_rule
from metarl.checkpoint import has_checkpoint, load_checkpoint
from metarl.cli import positive
from metarl.config import Config, load_config, to_dict
from metarl.errors import BenchmarkError, TrainingDiverged
from metarl.paper import META_SGD_TARGET, SINUSOID_MAML_BY_STEPS, SINUSOID_ONE_STEP_BY_SHOTS
from metarl.policy import GaussianMLPPolicy
from metarl.reporting import write_results
from metarl.supervised import evaluate_regression
from metarl.trainer import train

MODULE = "bench_sinusoid_algorithms"
STEPS = (1, 5, 10)
FIGURE = "sinusoid_algorithms.png"
DIVERGED = 1e6
"""A task's MSE above this (or non-finite) counts as a diverged adaptation."""

SETTINGS: dict[str, list[str]] = {
    "maml": [],
    "fomaml": [],
    "reptile": ["maml.num_inner_steps=5", "maml.inner_lr=0.005", "reptile.outer_step_size=1.0"],
    "metasgd": [],
    "anil": [],
    "mamlpp": ["maml.num_inner_steps=5", "outer.step_size_lr=0.0001"],
}
"""Each algorithm's own settings on top of ``--config``: MAML, first-order MAML, Meta-SGD and ANIL train
with one inner step as their papers' sinusoid runs; MAML++ with five (the paper's), and its
learned step sizes with a smaller Adam rate (the paper's shared rate let them swing negative and
the five-step inner loop diverge on sinusoid: docs/results.md); Reptile with five SGD steps of 0.005
(five of 0.01 overflowed on some tasks: docs/results.md) and ε annealed linearly from 1 to 0 (the paper's
few-shot setting)."""


def run_config(args: argparse.Namespace, algorithm: str, shots: int, seed: int) -> Config:
    """The config of one run: ``--config``, ``--set``, the algorithm's settings, K, the seed and the budget."""
    return load_config(
        args.config,
        [
            *args.set,
            f"maml.algorithm={algorithm}",
            *SETTINGS[algorithm],
            f"supervised.shots={shots}",
            f"supervised.query_size={shots}",
            f"train.seed={seed}",
            f"train.iterations={args.iterations}",
            f"train.checkpoint_every={args.iterations}",
        ],
    )


RELEVANT = ("env", "policy", "maml", "outer", "train", "supervised", "reptile", "mamlpp")
"""The config sections a sinusoid run depends on (a resumed run must match them)."""


def relevant(config: Config) -> dict[str, Any]:
    """The sections of :data:`RELEVANT`, as plain data."""
    data = to_dict(config)
    return {section: data[section] for section in RELEVANT}


def iterations_per_second(run_dir: Path) -> float:
    """Mean of the run's logged ``perf/iterations_per_s`` (NaN if none)."""
    path = run_dir / "metrics.jsonl"
    rates = [json.loads(line).get("perf/iterations_per_s") for line in path.read_text().splitlines() if line.strip()]
    rates = [r for r in rates if r is not None]
    return float(np.mean(rates)) if rates else float("nan")


def run_one(args: argparse.Namespace, algorithm: str, shots: int, seed: int) -> dict[str, Any]:
    """Train (or resume) one run, then evaluate its checkpoint with its own inner rule."""
    config = run_config(args, algorithm, shots, seed)
    run_dir = args.run_dir / f"{algorithm}_k{shots}_seed{seed}"
    resumed = has_checkpoint(run_dir)
    if resumed and relevant(load_checkpoint(run_dir).config) != relevant(config):
        raise BenchmarkError(
            f"{run_dir} holds a run with other settings than this invocation's; remove it or use another --run-dir"
        )
    start = time.perf_counter()
    row: dict[str, Any] = {
        "algorithm": algorithm,
        "shots": shots,
        "seed": seed,
        "resumed": resumed,
        "inner_steps": config.maml.num_inner_steps,
        "settings": SETTINGS[algorithm],
        "training_diverged": None,
    }
    try:
        result = train(config, run_dir, resume=resumed, progress=not args.no_progress, log=log)
    except TrainingDiverged as exc:  # a result of the algorithm and its settings: reported, not fatal
        log(f"   training diverged: {exc}")
        return {**row, "training_diverged": str(exc), "train_wall_s": time.perf_counter() - start}
    wall = time.perf_counter() - start
    checkpoint = load_checkpoint(result.checkpoint)
    rule = checkpoint_inner_rule(checkpoint)
    assert isinstance(checkpoint.policy, GaussianMLPPolicy)
    evaluation = evaluate_regression(
        checkpoint.policy, checkpoint.config, num_tasks=args.num_tasks, shots=shots, num_steps=max(STEPS), rule=rule
    )
    per_task = np.asarray(evaluation.pop("per_task"), dtype=np.float64)
    diverged = [int(np.sum(~np.isfinite(v) | (v > DIVERGED))) for v in per_task]
    return {
        **row,
        "iterations": checkpoint.iteration,
        "train_wall_s": wall,
        "iterations_per_s": iterations_per_second(run_dir),
        "inner_rule": rule.describe(),
        "steps": evaluation["steps"],
        "diverged_tasks": diverged,
    }


def seed_cell(group: list[dict[str, Any]], step: int, num_tasks: int) -> str:
    """Mean over seeds ± 95% CI across seeds of the step's mean MSE, or how many seeds diverged (in training
    or in this adaptation)."""
    runs = [r for r in group if r["training_diverged"] is None]
    failed = len(group) - len(runs)
    note = f" ({failed}/{len(group)} seeds diverged in training)" if failed else ""
    if not runs:
        return f"training diverged ({failed}/{len(group)} seeds)"
    bad = sum(1 for r in runs if r["diverged_tasks"][step] > 0)
    if bad:
        tasks = sum(r["diverged_tasks"][step] for r in runs)
        return f"diverged ({bad}/{len(runs)} seeds, {tasks}/{len(runs) * num_tasks} tasks)"
    mean, ci = seed_ci95([r["steps"][step]["mse"] for r in runs])
    return (f"{mean:.3f} ± {ci:.3f}" if math.isfinite(ci) else f"{mean:.3f}") + note


def task_cell(run: dict[str, Any], step: int) -> str:
    """One seed's mean MSE ± 95% CI over tasks."""
    if run["training_diverged"] is not None:
        return "-"
    if run["diverged_tasks"][step]:
        return f"diverged ({run['diverged_tasks'][step]} tasks)"
    s = run["steps"][step]
    return f"{s['mse']:.3f} ± {s['ci95']:.3f}"


def markdown(runs: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The tables: per K the mean over seeds; the anchors; the Meta-SGD target; per-seed detail."""
    algorithms = list(dict.fromkeys(r["algorithm"] for r in runs))
    shots = list(dict.fromkeys(r["shots"] for r in runs))
    seeds = sorted({r["seed"] for r in runs})
    lines = [
        "# Sinusoid regression: the MAML family side by side",
        "",
        f"Budget: {args.iterations:,} meta-iterations per run for every algorithm (the MAML paper trained 70,000), "
        f"meta-batch 25, seeds {', '.join(map(str, seeds))}. Evaluation: {args.num_tasks} fresh tasks per K (the same "
        "tasks, shots and query points for every algorithm and seed), K-shot support set, MSE on 100 query points "
        "after k inner steps of each checkpoint's own inner rule (learned step sizes, adapted subset). Cells: mean "
        f"over the {len(seeds)} seeds of the mean over tasks ± Student-t 95% CI across seeds; lower is better. "
        f"'diverged': some task's MSE is non-finite or above {DIVERGED:g}.",
        "",
    ]
    for k in shots:
        lines += [
            f"## K = {k}",
            "",
            "| algorithm | inner steps (train) | settings | it/s (1 thread) | "
            + " | ".join(f"{s} step{'s' if s > 1 else ''}" for s in STEPS)
            + " |",
            "|---|---:|---|---:|" + "---:|" * len(STEPS),
        ]
        for name in algorithms:
            group = [r for r in runs if r["algorithm"] == name and r["shots"] == k]
            if not group:
                continue
            done = [r for r in group if r["training_diverged"] is None]
            rate = np.nanmean([r["iterations_per_s"] for r in done]) if done else float("nan")
            settings = ", ".join(f"`{s}`" for s in group[0]["settings"]) or "-"
            cells = " | ".join(seed_cell(group, s, args.num_tasks) for s in STEPS)
            lines.append(f"| {name} | {group[0]['inner_steps']} | {settings} | {rate:.0f} | {cells} |")
        if k == 5:
            cells = " | ".join(f"{SINUSOID_MAML_BY_STEPS[s]:.2f}" for s in STEPS)
            lines.append(f"| paper: MAML (MAML paper, 70,000 iterations) | 1 | - | - | {cells} |")
        for name, by_shots in SINUSOID_ONE_STEP_BY_SHOTS.items():
            if k in by_shots:
                lines.append(f"| paper: {name} | 1 | - | - | {by_shots[k]:.2f} | - | - |")
        lines.append("")
    target_shots, target_step, target = META_SGD_TARGET
    group = [
        r for r in runs if r["algorithm"] == "metasgd" and r["shots"] == target_shots and r["training_diverged"] is None
    ]
    if group:
        mean, ci = seed_ci95([r["steps"][target_step]["mse"] for r in group])
        verdict = "met" if mean <= target else "missed"
        lines += [
            f"**Target** (issue 16): Meta-SGD, K = {target_shots}, {target_step} step: MSE ≤ {target}. "
            f"Measured {mean:.3f} ± {ci:.3f} over {len(group)} seeds: **{verdict}**.",
            "",
        ]
    lines += [
        "## Per seed (mean ± 95% CI over tasks)",
        "",
        "| algorithm | K | seed | iterations | train wall (this invocation) | inner rule | "
        + " | ".join(f"{s} step{'s' if s > 1 else ''}" for s in STEPS)
        + " |",
        "|---|---:|---:|---:|---:|---|" + "---:|" * len(STEPS),
    ]
    for r in runs:
        wall = f"{r['train_wall_s']:.0f} s" + (" (resumed)" if r["resumed"] else "")
        cells = " | ".join(task_cell(r, s) for s in STEPS)
        if r["training_diverged"] is not None:
            what, its = f"training diverged: {r['training_diverged'].split(';')[0]}", "-"
        else:
            what, its = r["inner_rule"], f"{r['iterations']:,}"
        lines.append(f"| {r['algorithm']} | {r['shots']} | {r['seed']} | {its} | {wall} | {what} | {cells} |")
    lines += ["", f"![MSE vs inner steps]({FIGURE})"]
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    """One panel per K: mean MSE (over seeds) after 0..10 steps per algorithm, log scale, and the paper anchors."""
    from metarl.plots import STEP_COLORS, pyplot

    plt = pyplot()
    shots = list(dict.fromkeys(r["shots"] for r in runs))
    algorithms = list(dict.fromkeys(r["algorithm"] for r in runs))
    fig, axes = plt.subplots(1, len(shots), figsize=(5.0 * len(shots), 3.8), squeeze=False)
    try:
        for ax, k in zip(axes[0], shots):
            for i, name in enumerate(algorithms):
                group = [
                    r for r in runs if r["algorithm"] == name and r["shots"] == k and r["training_diverged"] is None
                ]
                if not group:
                    continue
                steps = [s["step"] for s in group[0]["steps"]]
                values = np.array([[s["mse"] for s in r["steps"]] for r in group], dtype=np.float64)
                with np.errstate(invalid="ignore", over="ignore"):
                    mean = np.where(np.isfinite(values).all(0), values.mean(0), np.nan)
                mean[mean > 50] = np.nan  # a diverged adaptation leaves the plot
                ax.plot(steps, mean, marker="o", ms=3, color=STEP_COLORS[i % len(STEP_COLORS)], label=name)
            if k == 5:
                ax.plot(list(SINUSOID_MAML_BY_STEPS), list(SINUSOID_MAML_BY_STEPS.values()), "kx", label="MAML paper")
            for marker, (name, by_shots) in zip(("k^", "kv"), SINUSOID_ONE_STEP_BY_SHOTS.items()):
                if k in by_shots:
                    ax.plot([1], [by_shots[k]], marker, mfc="none", label=name)
            ax.set_yscale("log")
            ax.set_xlabel("inner steps")
            ax.set_ylabel("query MSE (mean over seeds)")
            ax.set_title(f"sinusoid, K = {k}", fontsize=10)
            ax.grid(alpha=0.3, which="both")
        handles, labels = axes[0][0].get_legend_handles_labels()  # K = 5 has every anchor
        axes[0][-1].legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)


def build_parser() -> BenchParser:
    """The command-line flags."""
    parser = make_parser(MODULE, __doc__)
    add_config(parser, CONFIGS / "sinusoid_supervised.yaml")
    parser.add_argument(
        "--algorithms", type=csv(str), default=list(SETTINGS), help="comma-separated algorithms (default: all six)"
    )
    parser.add_argument("--shots", type=csv(int), default=[5, 10, 20], help="comma-separated K (default 5,10,20)")
    parser.add_argument("--seeds", type=csv(int), default=[0, 1, 2], help="comma-separated train.seed (default 0,1,2)")
    parser.add_argument("--iterations", type=positive, default=10000, help="meta-iterations of every run")
    parser.add_argument("--num-tasks", type=positive, default=1000, help="fresh evaluation tasks per K")
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=Path("runs") / MODULE,
        help=f"folder of the training runs, one per algorithm, K and seed (default: runs/{MODULE})",
    )
    add_results(parser, "<run-dir>/results")
    add_progress(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Train and evaluate every (algorithm, K, seed); write the tables and the figure."""
    unknown = [a for a in args.algorithms if a not in SETTINGS or a not in ALGORITHMS]
    if unknown or not args.algorithms:
        raise BenchmarkError(f"--algorithms: unknown {unknown or 'none given'}; allowed: {', '.join(SETTINGS)}")
    if not args.shots or min(args.shots) < 1 or not args.seeds or min(args.seeds) < 0:
        raise BenchmarkError("--shots needs positive numbers and --seeds non-negative ones")
    for algorithm in args.algorithms:  # validate every config before training anything
        run_config(args, algorithm, args.shots[0], args.seeds[0])
    runs: list[dict[str, Any]] = []
    total = len(args.algorithms) * len(args.shots) * len(args.seeds)
    for k in args.shots:
        for algorithm in args.algorithms:
            for seed in args.seeds:
                log(f"[{len(runs) + 1}/{total}] {algorithm}, K={k}, seed {seed}")
                runs.append(run_one(args, algorithm, k, seed))
                if runs[-1]["training_diverged"] is None:
                    steps = runs[-1]["steps"]
                    log("   MSE after 1/5/10 steps: " + " / ".join(f"{steps[s]['mse']:.3g}" for s in STEPS))
    out: Path = args.results or args.run_dir / "results"
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(runs, args)
    plot(runs, out / FIGURE)
    print(table)
    data = {
        "iterations": args.iterations,
        "num_tasks": args.num_tasks,
        "runs": runs,
        "paper": {"maml_k5_by_steps": SINUSOID_MAML_BY_STEPS, "one_step_by_shots": SINUSOID_ONE_STEP_BY_SHOTS},
        "figure": str(out / FIGURE),
        "run_dir": str(args.run_dir),
    }
    md, js = write_results(out, "sinusoid_algorithms", table, data, command=command_line(MODULE, args.argv))
    log(f"wrote {md}, {js}, {out / FIGURE}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit status (2 and one ``error:`` line for bad input)."""
    return run_main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
