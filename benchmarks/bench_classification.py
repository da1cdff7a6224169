"""Few-shot classification, the MAML family side by side: 5-way 1-shot and 5-shot accuracy (issue 16).

    python -m benchmarks.bench_classification [--configs configs/glyphs_5way1shot.yaml configs/glyphs_5way5shot.yaml]
        [--algorithms maml,fomaml,reptile,metasgd,anil,mamlpp] [--seeds 0,1,2] [--iterations N]
        [--num-tasks 600] [--num-steps 3] [--jobs 1] [--run-dir runs/bench_classification] [--results DIR]
        [--set key=value ...] [--no-progress]

Meta-trains every algorithm (``maml.algorithm``) on every config of ``--configs`` (each one
N-way K-shot setting; default the generated-glyph 5-way 1-shot and 5-shot configs) and seed,
each in its own run directory under ``--run-dir`` (a run that holds a checkpoint is resumed, a
finished one only evaluated). The budget is the config's (``train.iterations``) unless
``--iterations`` is given; an algorithm's own settings are in :data:`SETTINGS` and printed in the
table. Every checkpoint is evaluated through its own inner rule (learned step sizes, adapted
subset) on the same ``--num-tasks`` fresh tasks of the held-out classes per config: query
accuracy after 0..``--num-steps`` inner steps. A cell is the mean over seeds of the mean over
tasks ± a Student-t 95% CI across seeds; the per-seed table has the 95% CI over tasks.
``--jobs 2`` trains two runs at a time in separate processes (one torch thread each; the same
numbers as one at a time). Writes ``classification_<env>.{md,json}`` to ``--results``
(default ``<run-dir>/results``), next to the MAML paper's Omniglot numbers (:mod:`metarl.paper`).

On a local Omniglot copy (configs/omniglot_5way1shot.yaml documents where to put it):

    python -m benchmarks.bench_classification --configs configs/omniglot_5way1shot.yaml \\
        configs/omniglot_5way5shot.yaml --set env.kwargs.root=data/omniglot --results results
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import (
    CONFIGS,
    BenchParser,
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
from metarl.classification import evaluate_classification, fewshot_env
from metarl.classifier import ConvClassifier, MLPClassifier
from metarl.cli import non_negative, positive
from metarl.config import Config, load_config
from metarl.errors import BenchmarkError
from metarl.paper import OMNIGLOT_5WAY_ACCURACY
from metarl.reporting import env_slug, write_results
from metarl.sampler import torch_threads
from metarl.trainer import train

MODULE = "bench_classification"
DEFAULT_CONFIGS = [CONFIGS / "glyphs_5way1shot.yaml", CONFIGS / "glyphs_5way5shot.yaml"]

SETTINGS: dict[str, list[str]] = {
    "maml": [],
    "fomaml": [],
    "reptile": ["maml.num_inner_steps=3"],
    "metasgd": [],
    "anil": [],
    "mamlpp": ["maml.num_inner_steps=2"],
}
"""Each algorithm's own settings on top of the config: MAML, first-order MAML, Meta-SGD and ANIL
train with the config's one inner step (the MAML paper's Omniglot setting); Reptile with three
SGD steps (with one, its update is the plain gradient of the tasks' joint loss) and ε annealed
linearly from 1 to 0; MAML++ with two, so that its multi-step loss and per-step step sizes
have something to weigh."""


def run_config(args: argparse.Namespace, path: Path, algorithm: str, seed: int) -> Config:
    """The config of one run: the config file, ``--set``, the algorithm's settings, the seed and the budget."""
    base = load_config(path, list(args.set))
    iterations = args.iterations or base.train.iterations
    return load_config(
        path,
        [
            *args.set,
            f"maml.algorithm={algorithm}",
            *SETTINGS[algorithm],
            f"train.seed={seed}",
            f"train.iterations={iterations}",
            f"train.checkpoint_every={iterations}",
        ],
    )


def setting_name(config: Config) -> str:
    """``5-way 1-shot``."""
    return f"{config.env.kwargs.get('ways', 5)}-way {config.supervised.shots}-shot"


def training_speed(run_dir: Path) -> tuple[float, float]:
    """``(seconds, iterations per second)`` of the run's meta-iterations, from its ``metrics.jsonl``.

    Each row averages a window of iterations (``supervised.log_every``) and logs its rate; the
    seconds add up every window, across resumed invocations, without start-up and evaluation.
    """
    path = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    seconds, done, last = 0.0, 0, -1
    for row in rows:
        rate = row.get("perf/iterations_per_s")
        count = row["iteration"] - last
        last = row["iteration"]
        if rate:
            seconds += count / rate
            done += count
    return (seconds, done / seconds) if seconds > 0 else (float("nan"), float("nan"))


def run_one(args: argparse.Namespace, index: int, path: Path, algorithm: str, seed: int) -> dict[str, Any]:
    """Train (or resume) one run, then evaluate its checkpoint with its own inner rule on the held-out classes."""
    config = run_config(args, path, algorithm, seed)
    run_dir = args.run_dir / f"{path.stem}_{algorithm}_seed{seed}"
    resumed = has_checkpoint(run_dir)
    start = time.perf_counter()
    result = train(config, run_dir, resume=resumed, progress=not args.no_progress, log=log)
    wall = time.perf_counter() - start
    checkpoint = load_checkpoint(result.checkpoint)
    model = checkpoint.policy
    assert isinstance(model, ConvClassifier | MLPClassifier)
    rule = checkpoint_inner_rule(checkpoint)
    start = time.perf_counter()
    with torch_threads(config.train.num_threads or torch.get_num_threads()):  # as training: 2 jobs, 2 cores
        evaluation = evaluate_classification(
            model, checkpoint.config, num_tasks=args.num_tasks, num_steps=args.num_steps, rule=rule
        )
    eval_wall = time.perf_counter() - start
    evaluation.pop("per_task")
    steps = evaluation["steps"]
    train_s, rate = training_speed(run_dir)
    log(
        f"[{index}] {path.stem} {algorithm} seed {seed}: training {train_s:.0f} s, evaluation {eval_wall:.0f} s; "
        f"accuracy after 0..{args.num_steps} steps: " + " / ".join(f"{100 * s['accuracy']:.1f}%" for s in steps)
    )
    return {
        "config": str(path),
        "setting": setting_name(config),
        "env_id": config.env.id,
        "algorithm": algorithm,
        "seed": seed,
        "iterations": checkpoint.iteration,
        "train_wall_s": wall,
        "train_s": train_s,
        "eval_wall_s": eval_wall,
        "resumed": resumed,
        "iterations_per_s": rate,
        "inner_steps": config.maml.num_inner_steps,
        "meta_batch_size": config.maml.meta_batch_size,
        "inner_rule": evaluation["inner_rule"],
        "evaluation": evaluation,
        "steps": steps,
        "settings": SETTINGS[algorithm],
    }


def seed_cell(runs: list[dict[str, Any]], step: int) -> str:
    """Mean over seeds ± Student-t 95% CI across seeds of the step's accuracy, in %."""
    mean, ci = seed_ci95([100 * r["steps"][step]["accuracy"] for r in runs])
    return f"{mean:.1f} ± {ci:.1f}" if math.isfinite(ci) else f"{mean:.1f}"


def task_cell(run: dict[str, Any], step: int) -> str:
    """One seed's accuracy ± 95% CI over tasks, in %."""
    s = run["steps"][step]
    return f"{100 * s['accuracy']:.1f} ± {100 * s['ci95']:.1f}"


def steps_header(num_steps: int) -> str:
    """``0 steps | 1 step | ...``."""
    return " | ".join(f"{k} step{'' if k == 1 else 's'}" for k in range(num_steps + 1))


def markdown(runs: list[dict[str, Any]], args: argparse.Namespace, configs: dict[str, Config]) -> str:
    """The tables: per setting the mean over seeds; the paper's Omniglot numbers; per-seed detail."""
    algorithms = list(dict.fromkeys(r["algorithm"] for r in runs))
    settings = list(dict.fromkeys(r["config"] for r in runs))
    seeds = sorted({r["seed"] for r in runs})
    env_ids = sorted({r["env_id"] for r in runs})
    first = configs[settings[0]]
    model = first.classifier
    model_text = (
        f"{model.blocks}-block conv net ({model.filters} filters, {model.downsample} downsampling, norm {model.norm})"
        if model.model == "conv"
        else f"MLP {model.hidden_sizes} (norm {model.norm})"
    )
    k = args.num_steps
    lines = [
        f"# Few-shot classification on {', '.join(env_ids)}: the MAML family side by side",
        "",
        f"Model: {model_text}. Training: meta-batch {first.maml.meta_batch_size} tasks, "
        f"{first.supervised.query_size} query images per class, inner step {first.maml.inner_lr}, Adam "
        f"{first.outer.lr}; seeds {', '.join(map(str, seeds))}; the iterations of each setting are in its table. "
        f"Evaluation: {args.num_tasks} fresh tasks of the held-out classes per setting (the same tasks and images "
        f"for every algorithm and seed), {first.supervised.eval_query_size} query images per class, accuracy after "
        f"0..{k} inner steps of each checkpoint's own inner rule (learned step sizes, adapted subset). Cells: mean "
        f"over the {len(seeds)} seeds of the accuracy (%) over tasks ± Student-t 95% CI across seeds. Train time: "
        "the seconds of the run's meta-iterations (from its metrics.jsonl: without start-up and evaluation, "
        "across resumed invocations), one torch thread, mean over seeds.",
        "",
    ]
    for path in settings:
        group_runs = [r for r in runs if r["config"] == path]
        iterations = sorted({r["iterations"] for r in group_runs})
        lines += [
            f"## {group_runs[0]['setting']} ({Path(path).name}, {'/'.join(f'{i:,}' for i in iterations)} iterations)",
            "",
            f"| algorithm | inner steps (train) | settings | it/s (1 thread) | train time | {steps_header(k)} |",
            "|---|---:|---|---:|---:|" + "---:|" * (k + 1),
        ]
        for name in algorithms:
            group = [r for r in group_runs if r["algorithm"] == name]
            if not group:
                continue
            rate = np.nanmean([r["iterations_per_s"] for r in group])
            seconds = np.nanmean([r["train_s"] for r in group])
            extra = ", ".join(f"`{s}`" for s in group[0]["settings"]) or "-"
            cells = " | ".join(seed_cell(group, s) for s in range(k + 1))
            lines.append(f"| {name} | {group[0]['inner_steps']} | {extra} | {rate:.1f} | {seconds:.0f} s | {cells} |")
        shots = configs[path].supervised.shots
        for name, by_shots in OMNIGLOT_5WAY_ACCURACY.items():
            if shots in by_shots and configs[path].env.kwargs.get("ways", 5) == 5:
                mean, ci = by_shots[shots]
                lines.append(
                    f"| paper: {name} (Omniglot, 60,000 iterations of 32 tasks) | 1 | - | - | - | "
                    + " | ".join("-" for _ in range(k))
                    + f" | {mean} ± {ci} |"
                )
        lines.append("")
    lines += [
        "## Per seed (accuracy % ± 95% CI over tasks)",
        "",
        f"| setting | algorithm | seed | iterations | train time | evaluation | inner rule | {steps_header(k)} |",
        "|---|---|---:|---:|---:|---:|---|" + "---:|" * (k + 1),
    ]
    for r in runs:
        wall = f"{r['train_s']:.0f} s | {r['eval_wall_s']:.0f} s"
        cells = " | ".join(task_cell(r, s) for s in range(k + 1))
        lines.append(
            f"| {r['setting']} | {r['algorithm']} | {r['seed']} | {r['iterations']:,} | {wall} | {r['inner_rule']} | "
            f"{cells} |"
        )
    return "\n".join(lines)


def build_parser() -> BenchParser:
    """The command-line flags."""
    parser = make_parser(MODULE, __doc__)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key of every run (YAML value), e.g. env.kwargs.root=data/omniglot",
    )
    parser.add_argument(
        "--configs",
        type=Path,
        nargs="+",
        default=DEFAULT_CONFIGS,
        help="classification configs, one per N-way K-shot setting (default: configs/glyphs_5way1shot.yaml "
        "configs/glyphs_5way5shot.yaml)",
    )
    parser.add_argument(
        "--algorithms", type=csv(str), default=list(SETTINGS), help="comma-separated algorithms (default: all six)"
    )
    parser.add_argument("--seeds", type=csv(int), default=[0, 1, 2], help="comma-separated train.seed (default 0,1,2)")
    parser.add_argument("--iterations", type=positive, help="meta-iterations of every run (default: each config's)")
    parser.add_argument("--num-tasks", type=positive, default=600, help="held-out evaluation tasks per setting")
    parser.add_argument("--num-steps", type=non_negative, default=3, help="evaluate after 0..k inner steps")
    parser.add_argument("--jobs", type=positive, default=1, help="runs trained at the same time (processes)")
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=Path("runs") / MODULE,
        help=f"folder of the training runs, one per config, algorithm and seed (default: runs/{MODULE})",
    )
    add_results(parser, "<run-dir>/results")
    add_progress(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Train and evaluate every (config, algorithm, seed); write the tables."""
    unknown = [a for a in args.algorithms if a not in SETTINGS or a not in ALGORITHMS]
    if unknown or not args.algorithms:
        raise BenchmarkError(f"--algorithms: unknown {unknown or 'none given'}; allowed: {', '.join(SETTINGS)}")
    if not args.seeds or min(args.seeds) < 0:
        raise BenchmarkError("--seeds needs non-negative numbers")
    configs: dict[str, Config] = {}
    for path in args.configs:  # validate every config before training anything
        for algorithm in args.algorithms:
            config = run_config(args, path, algorithm, args.seeds[0])
            if config.maml.loss != "classification":
                raise BenchmarkError(f"{path} is not a classification config (maml.loss={config.maml.loss!r})")
            if str(path) not in configs:
                fewshot_env(config)  # a missing data set stops here, before any training
                configs[str(path)] = config
    specs = [(path, a, s) for path in args.configs for a in args.algorithms for s in args.seeds]
    log(f"{len(specs)} runs: {len(args.configs)} settings, {len(args.algorithms)} algorithms, {len(args.seeds)} seeds")
    if args.jobs > 1:
        args.no_progress = True
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
            futures = [pool.submit(run_one, args, i + 1, *spec) for i, spec in enumerate(specs)]
            try:
                runs = [f.result() for f in futures]
            except BrokenProcessPool:
                raise BenchmarkError(
                    "a worker process died (killed?); run the same command again: finished runs are only "
                    "evaluated, interrupted ones resume from their checkpoint"
                ) from None
    else:
        runs = [run_one(args, i + 1, *spec) for i, spec in enumerate(specs)]
    out: Path = args.results or args.run_dir / "results"
    table = markdown(runs, args, configs)
    print(table)
    slug = "_".join(sorted({env_slug(r["env_id"]) for r in runs}))
    data = {
        "num_tasks": args.num_tasks,
        "num_steps": args.num_steps,
        "settings": SETTINGS,
        "runs": runs,
        "paper_omniglot_5way": OMNIGLOT_5WAY_ACCURACY,
        "run_dir": str(args.run_dir),
    }
    md, js = write_results(out, f"classification_{slug}", table, data, command=command_line(MODULE, args.argv))
    log(f"wrote {md}, {js}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit status (2 and one ``error:`` line for bad input)."""
    return run_main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
