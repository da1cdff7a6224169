"""Sinusoid regression benchmark (Finn et al. 2017, sec. 5.1): MAML vs first-order MAML vs pretrained.

    python -m benchmarks.bench_sinusoid [--iterations 30000] [--fo-iterations N] [--k10-iterations N]
        [--pretrain-iterations 10000] [--num-tasks 1000] [--seeds 0,1,2] [--run-dir runs/bench_sinusoid]
        [--results DIR] [--config configs/sinusoid_supervised.yaml] [--set key=value ...] [--no-progress]

Trains, from ``--config`` (default ``configs/sinusoid_supervised.yaml``: 40-40 ReLU, inner lr
0.01, Adam 1e-3, meta-batch 25) with ``metarl.trainer.train``: second-order MAML with K=5 and
K=10, first-order MAML with K=5 (each in its own run directory ``<run-dir>/seed<N>/<method>``; a
run that holds a checkpoint is resumed), and the "pretrained on all tasks" baseline (same network,
Adam on samples of all tasks jointly); "random init" is the untrained network. Every method is
trained once per seed in ``--seeds`` (``train.seed``: initialisation and task draws). Every model
is evaluated on the same fresh tasks (``--num-tasks``): K-shot support set, MSE on 100 query
points after 0..10 inner steps of the model's inner rule (plain SGD steps of 0.01; a run of another
``maml.algorithm`` adapts with its checkpoint's learned step sizes and adapted subset). The table
gives the mean over seeds of the mean over tasks ± a Student-t 95% CI across seeds (one seed: ± 95%
CI over tasks), with a per-seed table below it. Every algorithm side by side: ``bench_sinusoid_algorithms``. Writes
``sinusoid.{md,json}`` and ``sinusoid_adaptation.png`` (held-out tasks: true curve, the K
shots, predictions before and after 1 and 10 steps, for MAML and the pretrained baseline) to
``--results`` (default ``<run-dir>/results``) and prints the table. Training wall times are
measured on this machine (1 torch thread, see the config).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

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
from metarl.algorithms import InnerRule, checkpoint_inner_rule
from metarl.build import build_policy, io_dims, task_env
from metarl.checkpoint import has_checkpoint, load_checkpoint
from metarl.cli import positive
from metarl.config import Config, load_config
from metarl.errors import BenchmarkError
from metarl.paper import SINUSOID_ITERATIONS, SINUSOID_MSE
from metarl.policy import GaussianMLPPolicy
from metarl.reporting import write_results
from metarl.supervised import (
    evaluate_regression,
    evaluation_rule,
    predictions_after_steps,
    regression_env,
    sample_regression_batch,
    train_pretrained,
)
from metarl.trainer import train

MODULE = "bench_sinusoid"
REPORTED_STEPS = (0, 1, 5, 10)
FIGURE = "sinusoid_adaptation.png"


@dataclass
class Method:
    """One row of the benchmark: how to train it and with how many shots to evaluate it."""

    name: str
    shots: int
    kind: str  # "maml", "pretrained" or "random"
    iterations: int = 0
    overrides: list[str] = field(default_factory=list)


def methods(args: argparse.Namespace) -> list[Method]:
    """The benchmark's rows, in table order."""
    return [
        Method("MAML (K=5)", 5, "maml", args.iterations, []),
        Method("first-order MAML (K=5)", 5, "maml", args.fo_iterations or args.iterations, ["maml.first_order=true"]),
        Method("pretrained (K=5)", 5, "pretrained", args.pretrain_iterations),
        Method("random init (K=5)", 5, "random"),
        Method(
            "MAML (K=10)",
            10,
            "maml",
            args.k10_iterations or args.iterations,
            ["supervised.shots=10", "supervised.query_size=10"],
        ),
        Method(
            "pretrained (K=10)",
            10,
            "pretrained",
            args.pretrain_iterations,
            ["supervised.shots=10", "supervised.query_size=10"],
        ),
    ]


def method_config(method: Method, args: argparse.Namespace, seed: int) -> Config:
    """The supervised config of one method: ``--config``, ``--set``, the seed and the method's own overrides."""
    iterations = max(method.iterations, 1)
    return load_config(
        args.config,
        [
            *args.set,
            f"train.seed={seed}",
            f"train.iterations={iterations}",
            f"train.checkpoint_every={iterations}",
            *method.overrides,
        ],
    )


def slug(name: str) -> str:
    """A method's run-directory name: ``MAML (K=5)`` -> ``maml_k5``."""
    return "".join(c for c in name.lower().replace(" ", "_") if c.isalnum() or c in "_-")


def train_method(
    method: Method, config: Config, args: argparse.Namespace, seed: int
) -> tuple[GaussianMLPPolicy, InnerRule, float, bool]:
    """Train (or build) one method's model; returns it, its inner rule (a meta-trained run's from its checkpoint:
    learned step sizes, adapted subset), this invocation's training wall time, and whether it resumed."""
    start = time.perf_counter()
    resumed = False
    if method.kind == "maml":
        run_dir = args.run_dir / f"seed{seed}" / slug(method.name)
        resumed = has_checkpoint(run_dir)
        if resumed:
            log(f"   resuming the run in {run_dir}")
        result = train(config, run_dir, resume=resumed, progress=not args.no_progress, log=log)
        checkpoint = load_checkpoint(result.checkpoint)
        assert isinstance(checkpoint.policy, GaussianMLPPolicy)
        return checkpoint.policy, checkpoint_inner_rule(checkpoint), time.perf_counter() - start, resumed
    if method.kind == "pretrained":
        policy = train_pretrained(config, method.iterations, progress=not args.no_progress)
    else:
        policy = build_policy(config, *io_dims(task_env(config)))
    return policy, evaluation_rule(policy, config), time.perf_counter() - start, resumed


def warm_up(args: argparse.Namespace) -> None:
    """Run two iterations once so that one-time costs (imports, TensorBoard writer set-up) are not timed."""
    with tempfile.TemporaryDirectory() as tmp:
        config = method_config(Method("warm-up", 5, "maml", 2), args, args.seeds[0])
        train(config, Path(tmp) / "warm-up", progress=False, log=lambda _: None)


def cell(step: dict[str, float]) -> str:
    """``mean ± ci`` of one evaluation step (CI over tasks)."""
    return f"{step['mse']:.3f} ± {step['ci95']:.3f}"


def seed_cell(group: list[dict[str, Any]], step: int) -> str:
    """Mean over seeds ± Student-t 95% CI across seeds of one step's mean MSE; one seed: its CI over tasks."""
    if len(group) == 1:
        return cell(group[0]["steps"][step])
    mean, ci = seed_ci95([row["steps"][step]["mse"] for row in group])
    return f"{mean:.3f} ± {ci:.3f}"


def wall_cell(row: dict[str, Any]) -> str:
    """A run's training wall time in this invocation, ``-`` for the untrained network."""
    if row["kind"] == "random":
        return "-"
    return f"{row['train_wall_s']:.0f} s" + (" (resumed)" if row["resumed"] else "")


def markdown(rows: list[dict[str, Any]], num_tasks: int) -> str:
    """The table over seeds with the paper's figures for reference, then one row per method and seed."""
    seeds = sorted({row["seed"] for row in rows})
    steps = ["before adaptation" if k == 0 else f"{k} step{'s' if k > 1 else ''}" for k in REPORTED_STEPS]
    spread = (
        f"mean over the {len(seeds)} seeds ({', '.join(map(str, seeds))}) of the mean over tasks ± Student-t 95% CI "
        "across seeds"
        if len(seeds) > 1
        else f"seed {seeds[0]}, mean ± 95% CI over tasks"
    )
    lines = [
        "# Sinusoid regression: few-shot MSE (MAML vs baselines)",
        "",
        f"Evaluation: {num_tasks} fresh tasks (the same tasks, shots and query points for every "
        "method with the same K and every seed), K-shot support set, MSE on 100 query points x ~ U[-5, 5] after k "
        f"inner steps (plain SGD steps of 0.01, or a checkpoint's learned ones); {spread}. Lower is better. Train "
        "wall time: this invocation, per seed (a resumed run counts only the iterations it added).",
        "",
        "| method | K | train iterations | " + " | ".join(steps) + " |",
        "|---|---:|---:|" + "---:|" * len(REPORTED_STEPS),
    ]
    names = list(dict.fromkeys(row["name"] for row in rows))
    for name in names:
        group = [row for row in rows if row["name"] == name]
        first = group[0]
        iters = f"{first['iterations']:,}" if first["kind"] != "random" else "-"
        cells = " | ".join(seed_cell(group, k) for k in REPORTED_STEPS)
        lines.append(f"| {name} | {first['shots']} | {iters} | {cells} |")
    for name, ref in SINUSOID_MSE.items():
        cells = " | ".join(f"{ref[k]:.2f}" for k in REPORTED_STEPS[1:])
        lines.append(f"| paper: {name} | 5 | {SINUSOID_ITERATIONS[name]} | - | {cells} |")
    lines += [
        "",
        "## Per seed (mean ± 95% CI over tasks)",
        "",
        "| method | seed | train wall time | " + " | ".join(steps) + " |",
        "|---|---:|---:|" + "---:|" * len(REPORTED_STEPS),
    ]
    for name in names:
        for row in (row for row in rows if row["name"] == name):
            cells = " | ".join(cell(row["steps"][k]) for k in REPORTED_STEPS)
            lines.append(f"| {name} | {row['seed']} | {wall_cell(row)} | {cells} |")
    lines += ["", f"![adaptation on held-out tasks, seed {seeds[0]}]({FIGURE})"]
    return "\n".join(lines)


def plot(
    models: dict[str, tuple[GaussianMLPPolicy, InnerRule]], config: Config, path: Path, seed: int, num_tasks: int = 3
) -> None:
    """Held-out tasks: true curve, the K shots, predictions before and after 1 and 10 steps, one row per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    env = regression_env(config)
    rng = np.random.default_rng(seed)
    tasks = env.sample_tasks(num_tasks, rng)
    batch = sample_regression_batch(env, tasks, config.supervised.shots, 1, rng)
    xs = np.linspace(-5, 5, 200)
    grid = torch.tensor(xs, dtype=torch.float32).view(1, -1, 1).expand(num_tasks, -1, -1).contiguous()
    fig, axes = plt.subplots(
        len(models), num_tasks, figsize=(4.2 * num_tasks, 3.2 * len(models)), sharex=True, squeeze=False
    )
    styles = {
        0: ("pre-update", ":", "tab:gray"),
        1: ("1 grad step", "--", "tab:green"),
        10: ("10 grad steps", "-", "tab:red"),
    }
    for row, (name, (policy, rule)) in enumerate(models.items()):
        preds = predictions_after_steps(policy, batch.support_x, batch.support_y, grid, list(styles), rule)
        for col, task in enumerate(tasks):
            ax = axes[row][col]
            ax.plot(xs, task["amplitude"] * np.sin(xs + task["phase"]), color="black", lw=2, label="ground truth")
            for k, (label, ls, color) in styles.items():
                ax.plot(xs, preds[k][col, :, 0], ls=ls, color=color, lw=1.5, label=label)
            ax.scatter(
                batch.support_x[col, :, 0],
                batch.support_y[col, :, 0],
                color="tab:purple",
                marker="^",
                s=40,
                zorder=5,
                label=f"{config.supervised.shots} shots",
            )
            ax.set_title(f"{name}: A={task['amplitude']:.2f}, φ={task['phase']:.2f}", fontsize=9)
            ax.set_ylim(-6, 6)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> BenchParser:
    """The command-line flags."""
    parser = make_parser(MODULE, __doc__)
    add_config(parser, CONFIGS / "sinusoid_supervised.yaml")
    parser.add_argument("--iterations", type=positive, default=30000, help="meta-iterations of second-order MAML (K=5)")
    parser.add_argument(
        "--fo-iterations", type=positive, help="meta-iterations of first-order MAML (default: --iterations)"
    )
    parser.add_argument("--k10-iterations", type=positive, help="meta-iterations of MAML K=10 (default: --iterations)")
    parser.add_argument(
        "--pretrain-iterations", type=positive, default=10000, help="Adam steps of the pretrained baseline"
    )
    parser.add_argument("--num-tasks", type=positive, default=1000, help="fresh evaluation tasks")
    parser.add_argument(
        "--seeds",
        type=csv(int),
        default=[0, 1, 2],
        help="comma-separated train.seed, one full run each (default 0,1,2; evaluation tasks come from eval.seed)",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=Path("runs") / "bench_sinusoid",
        help="folder of the training runs, one per method (default: runs/bench_sinusoid)",
    )
    add_results(parser, "<run-dir>/results")
    add_progress(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Train every method for every seed, evaluate, write the results."""
    if not args.seeds or min(args.seeds) < 0:
        raise BenchmarkError("--seeds needs non-negative numbers, e.g. --seeds 0,1,2")
    configs = {  # validate everything first
        (seed, method.name): method_config(method, args, seed) for seed in args.seeds for method in methods(args)
    }
    warm_up(args)
    rows: list[dict[str, Any]] = []
    models: dict[str, tuple[GaussianMLPPolicy, InnerRule]] = {}
    for seed in args.seeds:
        for method in methods(args):
            config = configs[(seed, method.name)]
            log(f"== seed {seed}, {method.name}: {method.kind}, {method.iterations} iterations")
            policy, rule, wall, resumed = train_method(method, config, args, seed)
            evaluation = evaluate_regression(
                policy, config, num_tasks=args.num_tasks, shots=method.shots, num_steps=10, rule=rule
            )
            evaluation.pop("per_task")
            rows.append(
                {
                    "name": method.name,
                    "seed": seed,
                    "kind": method.kind,
                    "shots": method.shots,
                    "iterations": method.iterations,
                    "train_wall_s": wall,
                    "resumed": resumed,
                    "overrides": method.overrides,
                    "steps": {step["step"]: step for step in evaluation.pop("steps")},
                    "evaluation": evaluation,
                }
            )
            log(
                f"   {wall:.0f} s; MSE after 0/1/5/10 steps: "
                + " / ".join(cell(rows[-1]["steps"][k]) for k in REPORTED_STEPS)
            )
            if seed == args.seeds[0]:
                models[method.name] = (policy, rule)

    table = markdown(rows, args.num_tasks)
    out: Path = args.results or args.run_dir / "results"
    out.mkdir(parents=True, exist_ok=True)
    first = methods(args)[0].name
    plot(
        {k: models[k] for k in (first, "pretrained (K=5)")},
        configs[(args.seeds[0], first)],
        out / FIGURE,
        seed=configs[(args.seeds[0], first)].eval.seed + 1,
    )
    print(table)
    data = {
        "num_tasks": args.num_tasks,
        "seeds": args.seeds,
        "runs": rows,
        "paper": SINUSOID_MSE,
        "figure": str(out / FIGURE),
        "run_dir": str(args.run_dir),
    }
    md_path, js_path = write_results(out, "sinusoid", table, data, command=command_line(MODULE, args.argv))
    log(f"wrote {md_path}, {js_path}, {out / FIGURE}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit status (2 and one ``error:`` line for bad input)."""
    return run_main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
