"""Learning benchmark: meta-train a config, then evaluate MAML and a random initialisation paper-style.

    python scripts/bench_learning.py --config configs/navigation2d.yaml [--iterations 500]
        [--output-dir runs/bench_navigation2d] [--results results] [--set key=value ...]
        [--skip-training] [--no-progress]

Trains with the config (the shipped configs carry the MAML paper's settings), then evaluates
the meta-trained policy and a random initialisation of the same architecture on fresh tasks
after 0..k inner steps (alpha, then alpha/2; ``eval`` section of the config). Writes
``results/<name>.{md,json}`` (name from the env id, e.g. ``navigation2d``,
``halfcheetahvel``): the return table with 95% CIs next to the MAML paper's figures, whether
the paper's one-step figure is reached (on the config's evaluation tasks, 40 for the
paper's protocol, and on ``--precise-tasks`` other fresh tasks, whose CI is about three
times tighter), the wall time of this invocation and the median
seconds per meta-iteration with its sampling/learning split. Training resumes from the run
directory's checkpoint when there is one, so a long run can be stopped and re-launched with
the same command; ``--skip-training`` only evaluates it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metarl.checkpoint import load_checkpoint, policy_from_checkpoint  # noqa: E402
from metarl.config import Config, load_config  # noqa: E402
from metarl.evaluation import PAPER_REFERENCE, evaluate_adaptation, markdown_table, returns_by_task_parameter  # noqa: E402
from metarl.reporting import env_slug, read_metrics, timing_summary, write_results  # noqa: E402
from metarl.trainer import build_policy, train  # noqa: E402

TARGET_STEP1: dict[str, float] = {"metarl/Navigation2D-v0": -11.7, "metarl/HalfCheetahVel-v0": -78.0}
"""One-step post-adaptation targets the issues set (the paper's figure)."""


def protocol_section(config: Config, results: dict[str, dict], num_tasks: int, seed: int) -> str:
    """One evaluation's markdown: table next to the paper's figures, target and random-init checks."""
    steps = results["MAML (metarl)"]["steps"]
    beats_random = all(m["mean_return"] > r["mean_return"] for m, r in zip(steps, results["random init"]["steps"]))
    paper = PAPER_REFERENCE.get((config.env.id, config.env.horizon), {})
    paper_rows = "".join(
        f"| {label} | " + " | ".join(f"{v:g}" for v in values[: len(steps)]) + " |\n" for label, values in paper.items()
    )
    target = TARGET_STEP1.get(config.env.id)
    step1 = steps[1]["mean_return"] if len(steps) > 1 else float("nan")
    by_task = returns_by_task_parameter(results["MAML (metarl)"])
    by_task_md = f"\nMAML by task parameter (mean return of the tasks in each bin):\n\n{by_task}\n" if by_task else ""
    verdict = (f"target after 1 step >= {target}: **{step1:.2f}** ({'met' if step1 >= target else 'NOT met'})"
               if target is not None else f"after 1 step: **{step1:.2f}**")
    return (
        f"## {num_tasks} fresh tasks (seed {seed}), {config.eval.episodes_per_step} trajectories per step, "
        f"step sizes alpha then alpha/2\n\n{markdown_table(results)}\n{paper_rows}\n"
        f"- {verdict}; beats random init at every step: **{beats_random}**\n{by_task_md}"
    )


def main(argv: list[str] | None = None) -> int:
    """Train (or resume), evaluate against a random initialisation, write the results table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("configs/navigation2d.yaml"))
    parser.add_argument("--iterations", type=int, default=None, help="meta-iterations (default: the config's)")
    parser.add_argument("--output-dir", type=Path, default=None, help="run directory (default runs/bench_<name>)")
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--skip-training", action="store_true", help="evaluate the run directory's latest checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--precise-tasks", type=int, default=400,
                        help="also evaluate on this many other fresh tasks for a tighter CI (0: skip)")
    args = parser.parse_args(argv)
    if args.precise_tasks < 0:
        parser.error(f"--precise-tasks must be >= 0, got {args.precise_tasks}")

    overrides = [*args.set] + ([f"train.iterations={args.iterations}"] if args.iterations is not None else [])
    config = load_config(args.config, overrides)
    name = env_slug(config.env.id)
    run_dir = args.output_dir or Path("runs") / f"bench_{name}"
    wall = None
    if not args.skip_training:
        resume = (run_dir / "checkpoints" / "latest.pt").is_file()
        start = time.perf_counter()
        train(config, run_dir, resume=resume, progress=not args.no_progress)
        wall = time.perf_counter() - start
    payload = load_checkpoint(run_dir)
    maml = policy_from_checkpoint(payload)
    rows = read_metrics(run_dir)
    timing = timing_summary(rows)
    random_init = build_policy(config, maml.obs_dim, maml.act_dim)
    policies = {"MAML (metarl)": maml, "random init": random_init}
    results = {label: evaluate_adaptation(policy, config) for label, policy in policies.items()}
    md = [
        f"# {config.env.id}: return after 0..{config.eval.num_steps} inner steps",
        "",
        protocol_section(config, results, config.eval.num_tasks, config.eval.seed),
    ]
    data: dict = {"results": results}
    if args.precise_tasks:
        seed = config.eval.seed + 1  # an independent draw of tasks
        precise = {label: evaluate_adaptation(policy, config, num_tasks=args.precise_tasks, seed=seed)
                   for label, policy in policies.items()}
        md.append(protocol_section(config, precise, args.precise_tasks, seed))
        data["results_precise"] = precise
    wall_line = f"{wall:.0f} s" if wall is not None else "n/a (evaluated an existing run)"
    md.append(
        f"- trained {payload['iteration']} meta-iterations. Training wall time (this invocation): {wall_line}; "
        f"summed iteration time over all {timing['iterations']} logged iterations: "
        f"{timing['total_iteration_s']:.0f} s; median s/meta-iteration {timing['median_s_per_iteration']:.2f} "
        f"(sampling {timing['median_sampling_s']:.2f}, advantages + inner steps {timing['median_adapt_s']:.2f}, "
        f"meta-update {timing['median_learning_s']:.2f}; learner fraction {timing['learner_fraction']:.0%})\n"
        f"- command: `python scripts/bench_learning.py {' '.join(argv if argv is not None else sys.argv[1:])}`"
    )
    md = "\n".join(md)
    print(md)
    paper = PAPER_REFERENCE.get((config.env.id, config.env.horizon), {})
    write_results(args.results, name, md, {**data, "timing": timing, "wall_s": wall, "iterations": payload["iteration"],
                                           "paper": paper, "target_step1": TARGET_STEP1.get(config.env.id)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
