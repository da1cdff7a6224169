"""Sinusoid regression benchmark (Finn et al. 2017, sec. 5.1): MAML vs first-order MAML vs pretrained.

    python scripts/bench_sinusoid.py [--iterations 30000] [--fo-iterations N] [--k10-iterations N]
        [--pretrain-iterations 10000] [--num-tasks 1000] [--seed 0] [--runs-dir runs/bench_sinusoid]
        [--output-dir results] [--no-progress]

Trains, from ``configs/sinusoid_supervised.yaml`` (40-40 ReLU, inner lr 0.01, Adam 1e-3,
meta-batch 25): second-order MAML with K=5 and K=10, first-order MAML with K=5, and the
"pretrained on all tasks" baseline (same network, Adam on samples of all tasks jointly);
"random init" is the untrained network. Every model is evaluated on the same fresh tasks
(``--num-tasks``): K-shot support set, MSE on 100 query points after 0..10 plain SGD steps
of 0.01, mean ± 95% CI over tasks. Writes ``results/sinusoid.md``, ``results/sinusoid.json``
and ``results/sinusoid_adaptation.png`` (held-out tasks: true curve, the K shots, predictions
before and after 1 and 10 steps, for MAML and the pretrained baseline) and prints the table.
Training wall times are measured on this machine (1 torch thread, see the config).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from metarl.config import Config, ConfigError, load_config  # noqa: E402
from metarl.policy import GaussianMLPPolicy  # noqa: E402
from metarl.reporting import machine_description  # noqa: E402
from metarl.supervised import (  # noqa: E402
    evaluate_regression,
    predictions_after_steps,
    regression_env,
    sample_regression_batch,
    train_pretrained,
    train_supervised,
)
from metarl.trainer import build_policy  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "sinusoid_supervised.yaml"
REPORTED_STEPS = (0, 1, 5, 10)
PAPER = {"MAML (K=5)": {1: 0.67, 5: 0.38, 10: 0.35}, "pretrained (K=5)": {1: 2.41, 5: 2.23, 10: 2.19}}
PAPER_ITERATIONS = {"MAML (K=5)": "70,000", "pretrained (K=5)": "-"}


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
        Method("MAML (K=10)", 10, "maml", args.k10_iterations or args.iterations,
               ["supervised.shots=10", "supervised.query_size=10"]),
        Method("pretrained (K=10)", 10, "pretrained", args.pretrain_iterations,
               ["supervised.shots=10", "supervised.query_size=10"]),
    ]


def method_config(method: Method, args: argparse.Namespace) -> Config:
    """The supervised config of one method."""
    return load_config(CONFIG, [f"train.seed={args.seed}", f"train.iterations={max(method.iterations, 1)}",
                                f"train.checkpoint_every={max(method.iterations, 1)}", *method.overrides])


def train_method(method: Method, config: Config, args: argparse.Namespace) -> tuple[GaussianMLPPolicy, float]:
    """Train (or build) one method's model; returns it and the training wall time in seconds."""
    start = time.perf_counter()
    if method.kind == "maml":
        slug = method.name.lower().replace(" ", "_").replace("(", "").replace(")", "").replace("=", "")
        policy = train_supervised(config, args.runs_dir / slug, progress=not args.no_progress).policy
    elif method.kind == "pretrained":
        policy = train_pretrained(config, method.iterations, progress=not args.no_progress)
    else:
        policy = build_policy(config, 1, 1)
    return policy, time.perf_counter() - start


def warm_up(args: argparse.Namespace) -> None:
    """Run two iterations once so that one-time costs (imports, TensorBoard writer set-up) are not timed."""
    with tempfile.TemporaryDirectory() as tmp:
        config = method_config(Method("warm-up", 5, "maml", 2), args)
        train_supervised(config, Path(tmp), progress=False)


def cell(step: dict[str, float]) -> str:
    """``mean ± ci`` of one evaluation step."""
    return f"{step['mse']:.3f} ± {step['ci95']:.3f}"


def markdown(rows: dict[str, dict[str, Any]], command: str, machine: str, num_tasks: int) -> str:
    """The results table with the paper's figures for reference."""
    header = ["method", "K", "train iterations", "train wall time"] + [
        "before adaptation" if k == 0 else f"{k} step{'s' if k > 1 else ''}" for k in REPORTED_STEPS
    ]
    lines = [
        "# Sinusoid regression: few-shot MSE (MAML vs baselines)",
        "",
        f"`{command}`",
        "",
        f"{machine}. Evaluation: {num_tasks} fresh tasks (the same tasks, shots and query points for every "
        "method with the same K), K-shot support set, MSE on 100 query points x ~ U[-5, 5] after k plain "
        "SGD steps of 0.01; mean ± 95% CI over tasks. Lower is better.",
        "",
        "| " + " | ".join(header) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(REPORTED_STEPS),
    ]
    for name, row in rows.items():
        steps = {s["step"]: s for s in row["evaluation"]["steps"]}
        wall = f"{row['train_wall_s']:.0f} s" if row["kind"] != "random" else "-"
        iters = f"{row['iterations']:,}" if row["kind"] != "random" else "-"
        cells = " | ".join(cell(steps[k]) for k in REPORTED_STEPS)
        lines.append(f"| {name} | {row['shots']} | {iters} | {wall} | {cells} |")
    for name, ref in PAPER.items():
        cells = " | ".join(f"{ref[k]:.2f}" for k in REPORTED_STEPS[1:])
        lines.append(f"| paper: {name} | 5 | {PAPER_ITERATIONS[name]} | - | - | {cells} |")
    lines += ["", "![adaptation on held-out tasks](sinusoid_adaptation.png)", ""]
    return "\n".join(lines)


def plot(models: dict[str, GaussianMLPPolicy], config: Config, path: Path, seed: int, num_tasks: int = 3) -> None:
    """Held-out tasks: true curve, the K shots, predictions before and after 1 and 10 steps, one row per model."""
    env = regression_env(config)
    rng = np.random.default_rng(seed)
    tasks = env.sample_tasks(num_tasks, rng)
    batch = sample_regression_batch(env, tasks, config.supervised.shots, 1, rng)
    xs = np.linspace(-5, 5, 200)
    grid = torch.tensor(xs, dtype=torch.float32).view(1, -1, 1).expand(num_tasks, -1, -1).contiguous()
    fig, axes = plt.subplots(len(models), num_tasks, figsize=(4.2 * num_tasks, 3.2 * len(models)), sharex=True,
                             squeeze=False)
    styles = {0: ("pre-update", ":", "tab:gray"), 1: ("1 grad step", "--", "tab:green"),
              10: ("10 grad steps", "-", "tab:red")}
    for row, (name, policy) in enumerate(models.items()):
        preds = predictions_after_steps(policy, batch.support_x, batch.support_y, grid, list(styles),
                                        config.maml.inner_lr)
        for col, task in enumerate(tasks):
            ax = axes[row][col]
            ax.plot(xs, task["amplitude"] * np.sin(xs + task["phase"]), color="black", lw=2, label="ground truth")
            for k, (label, ls, color) in styles.items():
                ax.plot(xs, preds[k][col, :, 0], ls=ls, color=color, lw=1.5, label=label)
            ax.scatter(batch.support_x[col, :, 0], batch.support_y[col, :, 0], color="tab:purple", marker="^", s=40,
                       zorder=5, label=f"{config.supervised.shots} shots")
            ax.set_title(f"{name}: A={task['amplitude']:.2f}, φ={task['phase']:.2f}", fontsize=9)
            ax.set_ylim(-6, 6)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Train every method, evaluate, write the results; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=30000, help="meta-iterations of second-order MAML (K=5)")
    parser.add_argument("--fo-iterations", type=int, help="meta-iterations of first-order MAML (default: --iterations)")
    parser.add_argument("--k10-iterations", type=int, help="meta-iterations of MAML K=10 (default: --iterations)")
    parser.add_argument("--pretrain-iterations", type=int, default=10000, help="Adam steps of the pretrained baseline")
    parser.add_argument("--num-tasks", type=int, default=1000, help="fresh evaluation tasks")
    parser.add_argument("--seed", type=int, default=0,
                        help="training seed (evaluation tasks use the config's eval.seed)")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "bench_sinusoid",
                        help="training run directories")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "results",
                        help="where to write sinusoid.{md,json,png}")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    for name in ("iterations", "fo_iterations", "k10_iterations", "pretrain_iterations", "num_tasks"):
        value = getattr(args, name)
        if value is not None and value < 1:
            print(f"error: --{name.replace('_', '-')} must be >= 1, got {value}", file=sys.stderr)
            return 2

    command = " ".join(["python scripts/bench_sinusoid.py", *(argv if argv is not None else sys.argv[1:])])
    warm_up(args)
    rows: dict[str, dict[str, Any]] = {}
    models: dict[str, GaussianMLPPolicy] = {}
    try:
        for method in methods(args):
            config = method_config(method, args)
            print(f"== {method.name}: {method.kind}, {method.iterations} iterations", file=sys.stderr, flush=True)
            policy, wall = train_method(method, config, args)
            evaluation = evaluate_regression(policy, config, num_tasks=args.num_tasks, shots=method.shots, num_steps=10)
            evaluation.pop("per_task")
            rows[method.name] = {"kind": method.kind, "shots": method.shots, "iterations": method.iterations,
                                 "train_wall_s": wall, "overrides": method.overrides, "evaluation": evaluation}
            print(f"   {wall:.0f} s; MSE after 0/1/5/10 steps: "
                  + " / ".join(cell(evaluation["steps"][k]) for k in REPORTED_STEPS), file=sys.stderr, flush=True)
            models[method.name] = policy
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    machine = machine_description()
    table = markdown(rows, command, machine, args.num_tasks)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "sinusoid.md").write_text(table)
    (args.output_dir / "sinusoid.json").write_text(json.dumps(
        {"command": command, "machine": machine, "num_tasks": args.num_tasks, "methods": rows, "paper": PAPER,
         "date": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2))
    plot({k: models[k] for k in ("MAML (K=5)", "pretrained (K=5)")}, method_config(methods(args)[0], args),
         args.output_dir / "sinusoid_adaptation.png", seed=load_config(CONFIG).eval.seed + 1)
    print(table)
    print(f"wrote {args.output_dir / 'sinusoid.md'}, sinusoid.json, sinusoid_adaptation.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
