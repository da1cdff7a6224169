"""Learning benchmark: meta-train a config, then evaluate MAML and a random initialisation paper-style.

    python -m benchmarks.bench_learning --config configs/navigation2d.yaml [--iterations 200]
        [--run-dir runs/bench_navigation2d] [--results DIR] [--set key=value ...] [--seed N]
        [--num-tasks N] [--num-steps K] [--episodes B] [--precise-tasks N] [--seeds N] [--skip-training]
        [--no-progress]

Trains with the config (the shipped configs carry the MAML paper's settings) into ``--run-dir``,
then evaluates the meta-trained policy and a random initialisation of the same architecture on
fresh tasks after 0..k inner steps (alpha, then alpha/2; the ``eval`` section of the config,
or ``--num-tasks``/``--num-steps``/``--episodes``). Writes ``<name>.{md,json}`` (name from the
env id, e.g. ``navigation2d``) to ``--results`` (default ``<run-dir>/results``): the return
table with 95% CIs next to the MAML paper's figures, whether the paper's one-step figure is
reached (on the config's evaluation tasks, 40 for the paper's protocol, and on
``--precise-tasks`` other fresh tasks, whose CI is about three times tighter), the wall time
of this invocation and the median seconds per meta-iteration with its sampling/learning split.
Training resumes from the run directory's checkpoint when there is one, so a long run can be
stopped and re-launched with the same command; ``--skip-training`` only evaluates it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import (
    CONFIGS,
    BenchParser,
    add_config,
    add_progress,
    add_results,
    command_line,
    log,
    make_parser,
    run_main,
    seed_ci95,
)
from metarl.build import build_policy, horizon
from metarl.checkpoint import has_checkpoint, load_checkpoint
from metarl.cli import non_negative, positive
from metarl.config import Config, load_config
from metarl.errors import BenchmarkError
from metarl.evaluation import evaluate_adaptation, markdown_table, returns_by_task_parameter, steps_label
from metarl.paper import ONE_STEP_TARGETS, rl_reference
from metarl.policy import GaussianMLPPolicy
from metarl.reporting import env_slug, read_metrics, timing_summary, write_results
from metarl.trainer import train

MODULE = "bench_learning"
MAML, RANDOM = "MAML (metarl)", "random init"


def protocol_section(config: Config, results: dict[str, dict[str, Any]], num_tasks: int, seed: int) -> str:
    """One evaluation's markdown: table next to the paper's figures, target and random-init checks."""
    steps = results[MAML]["steps"]
    beats_random = all(m["mean_return"] > r["mean_return"] for m, r in zip(steps, results[RANDOM]["steps"]))
    paper = rl_reference(config.env.id, horizon(config.env))
    paper_rows = "".join(
        f"| {label} | " + " | ".join(f"{v:g}" for v in values[: len(steps)]) + " |\n" for label, values in paper.items()
    )
    target = ONE_STEP_TARGETS.get(config.env.id)
    step1 = steps[1]["mean_return"] if len(steps) > 1 else float("nan")
    by_task = returns_by_task_parameter(results[MAML])
    by_task_md = f"\nMAML by task parameter (mean return of the tasks in each bin):\n\n{by_task}\n" if by_task else ""
    verdict = (
        f"target after 1 step >= {target}: **{step1:.2f}** ({'met' if step1 >= target else 'NOT met'})"
        if target is not None
        else f"after 1 step: **{step1:.2f}**"
    )
    episodes = results[MAML]["episodes_per_step"]
    return (
        f"## {num_tasks} fresh tasks (seed {seed}), {episodes} trajectories per step, "
        f"step sizes alpha then alpha/2\n\n{markdown_table(results)}\n{paper_rows}\n"
        f"- {verdict}; beats random init at every step: **{beats_random}**\n{by_task_md}"
    )


def build_parser() -> BenchParser:
    """The command-line flags."""
    parser = make_parser(MODULE, __doc__)
    add_config(parser, CONFIGS / "navigation2d.yaml")
    parser.add_argument("--run-dir", type=Path, help="run directory to train into (default: runs/bench_<env>)")
    parser.add_argument("--iterations", type=positive, help="train.iterations (default: the config's)")
    parser.add_argument("--seed", type=non_negative, help="train.seed (evaluation tasks come from eval.seed)")
    parser.add_argument("--num-tasks", type=positive, help="fresh evaluation tasks (default: eval.num_tasks)")
    parser.add_argument(
        "--num-steps", type=non_negative, help="evaluate after 0..k inner steps (default: eval.num_steps)"
    )
    parser.add_argument(
        "--episodes",
        type=positive,
        help="trajectories per task and inner step in evaluation (default: eval.episodes_per_step)",
    )
    parser.add_argument(
        "--precise-tasks",
        type=non_negative,
        default=400,
        help="also evaluate on this many other fresh tasks for a tighter CI (0: skip; default 400)",
    )
    parser.add_argument(
        "--seeds",
        type=positive,
        default=1,
        help="independent runs with train.seed, seed+1, ... (each a full run in <run-dir>/seed_<s>); the table "
        "adds the mean over seeds with a 95%% CI across seeds (default 1)",
    )
    parser.add_argument("--skip-training", action="store_true", help="only evaluate the run directory's checkpoint")
    add_results(parser, "<run-dir>/results")
    add_progress(parser)
    return parser


def overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` plus the flags that are config keys."""
    pairs = [
        ("train.iterations", args.iterations),
        ("train.seed", args.seed),
        ("eval.num_tasks", args.num_tasks),
        ("eval.num_steps", args.num_steps),
        ("eval.episodes_per_step", args.episodes),
    ]
    return [*args.set, *(f"{key}={value}" for key, value in pairs if value is not None)]


def run_one(config: Config, run_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Train (or resume) one run, evaluate it and a random initialisation; the markdown and the data."""
    wall = None
    if not args.skip_training:
        resume = has_checkpoint(run_dir)
        if resume:
            log(f"resuming the run in {run_dir}")
        start = time.perf_counter()
        train(config, run_dir, resume=resume, progress=not args.no_progress, log=log)
        wall = time.perf_counter() - start
    checkpoint = load_checkpoint(run_dir)
    maml = checkpoint.policy
    assert isinstance(maml, GaussianMLPPolicy)  # maml.loss=pg, checked in run()
    timing = timing_summary(read_metrics(run_dir))
    policies = {MAML: maml, RANDOM: build_policy(config, maml.obs_dim, maml.act_dim)}
    results = {label: evaluate_adaptation(policy, config) for label, policy in policies.items()}
    md = [protocol_section(config, results, config.eval.num_tasks, config.eval.seed)]
    data: dict[str, Any] = {"results": results}
    if args.precise_tasks:
        seed = config.eval.seed + 1  # an independent draw of tasks
        precise = {
            label: evaluate_adaptation(policy, config, num_tasks=args.precise_tasks, seed=seed)
            for label, policy in policies.items()
        }
        md.append(protocol_section(config, precise, args.precise_tasks, seed))
        data["results_precise"] = precise
    wall_line = f"{wall:.0f} s" if wall is not None else "n/a (evaluated an existing run)"
    md.append(
        f"- trained {checkpoint.iteration} meta-iterations ({checkpoint.path}). Training wall time (this invocation): "
        f"{wall_line}; summed iteration time over all {timing['iterations']} logged iterations: "
        f"{timing['total_iteration_s']:.0f} s; median s/meta-iteration {timing['median_s_per_iteration']:.2f} "
        f"(sampling {timing['median_sampling_s']:.2f}, advantages + inner steps {timing['median_adapt_s']:.2f}, "
        f"meta-update {timing['median_learning_s']:.2f}; learner fraction {timing['learner_fraction']:.0%}); "
        f"train.num_threads={config.train.num_threads}"
    )
    data.update(
        timing=timing,
        wall_s=wall,
        iterations=checkpoint.iteration,
        run_dir=str(run_dir),
        seed=config.train.seed,
        markdown="\n".join(md),
    )
    return data


def across_seeds(runs: list[dict[str, Any]], key: str) -> str:
    """Markdown: MAML's mean return after each step, per seed and as the mean over seeds ± 95% CI across seeds."""
    per_seed = [[s["mean_return"] for s in run[key][MAML]["steps"]] for run in runs]
    steps = range(len(per_seed[0]))
    header = "| seed | " + " | ".join(steps_label(k) for k in steps) + " |"
    lines = [header, "|---" * (len(per_seed[0]) + 1) + "|"]
    for run, values in zip(runs, per_seed, strict=True):
        lines.append(f"| {run['seed']} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    cells = []
    for k in steps:
        mean, ci = seed_ci95([values[k] for values in per_seed])
        cells.append(f"**{mean:.2f} ± {ci:.2f}**")
    lines.append(f"| mean over {len(runs)} seeds ± 95% CI | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Train (or resume) ``--seeds`` runs, evaluate each against a random initialisation, write the table."""
    config = load_config(args.config, overrides(args))
    if config.maml.loss != "pg":
        raise BenchmarkError(
            f"bench_learning measures meta-RL runs (maml.loss: pg), not maml.loss: {config.maml.loss}; "
            "few-shot learning has bench_sinusoid, bench_sinusoid_algorithms and bench_classification"
        )
    name = env_slug(config.env.id)
    run_dir: Path = args.run_dir or Path("runs") / f"bench_{name}"
    first_seed = config.train.seed
    runs = []
    for offset in range(args.seeds):
        seed_config = load_config(args.config, [*overrides(args), f"train.seed={first_seed + offset}"])
        seed_dir = run_dir if args.seeds == 1 else run_dir / f"seed_{first_seed + offset}"
        runs.append(run_one(seed_config, seed_dir, args))
    md = [f"# {config.env.id}: return after 0..{config.eval.num_steps} inner steps", ""]
    if args.seeds == 1:
        md.append(runs[0]["markdown"])
    else:
        md += [
            f"## Across {args.seeds} seeds: MAML, {config.eval.num_tasks} fresh tasks (seed {config.eval.seed})",
            "",
            across_seeds(runs, "results"),
            "",
        ]
        if args.precise_tasks:
            md += [
                f"## Across {args.seeds} seeds: MAML, {args.precise_tasks} other fresh tasks",
                "",
                across_seeds(runs, "results_precise"),
                "",
            ]
        for one in runs:
            md += [f"## Seed {one['seed']}", "", one["markdown"], ""]
    text = "\n".join(md)
    print(text)
    data: dict[str, Any] = dict(runs[0]) if args.seeds == 1 else {"runs": runs}
    data.update(
        paper=rl_reference(config.env.id, horizon(config.env)), target_step1=ONE_STEP_TARGETS.get(config.env.id)
    )
    out = args.results or run_dir / "results"
    md_path, js_path = write_results(out, name, text, data, command=command_line(MODULE, args.argv))
    log(f"wrote {md_path}, {js_path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit status (2 and one ``error:`` line for bad input)."""
    return run_main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
