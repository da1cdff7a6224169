"""Paired comparison of two training runs that share a seed and task draws (an A/B test of a setting).

    python -m benchmarks.compare_runs RUN_A RUN_B [--first N] [--last N]
        [--keys meta/return_post,meta/return_pre] [--results DIR] [--name NAME] [--allow-different-seeds]

Runs with the same ``train.seed`` draw the same tasks and noise seeds at each meta-iteration
(:func:`metarl.build.iteration_rngs`), for example two branches resumed from one checkpoint
with different ``--set`` overrides. For every key the table gives the mean and standard error
of the per-iteration difference B - A over the iterations both logged, and each run's median
seconds per meta-iteration over them. Writes ``<name>.{md,json}`` to ``--results`` (default
``RUN_B/results``, name ``compare_<RUN_A's folder name>``).

The pairing is only valid when both runs draw the same tasks. The script reads each run's
``config.yaml`` and refuses (exit status 2) runs whose ``train.seed`` differ, or whose task
draws differ (another env, meta-batch size or task distribution: the tasks of the first
shared iterations are drawn again and compared). ``--allow-different-seeds`` compares them
anyway, with a warning at the top of the table.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import BenchParser, add_results, command_line, log, make_parser, run_main
from metarl.build import iteration_rngs, task_env
from metarl.cli import non_negative
from metarl.config import Config, load_config
from metarl.errors import MetarlError
from metarl.reporting import paired_difference, read_metrics, timing_summary, to_json, write_results

MODULE = "compare_runs"
TIMING_KEYS = ("perf/time_sampling_s", "perf/time_learning_s")
CHECKED_DRAWS = 3
"""Meta-iterations whose task draws are compared."""


class DifferentRuns(MetarlError):
    """The two runs are not a valid pair (different seeds or task draws)."""


def run_config(run_dir: Path) -> Config:
    """The validated config a run directory recorded in its ``config.yaml``."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise MetarlError(f"no config.yaml in {run_dir}: not a metarl run directory")
    return load_config(path)


def task_draws(config: Config, iterations: Sequence[int]) -> str | None:
    """The tasks the run draws at ``iterations`` (as JSON), or ``None`` if its task env cannot be built here."""
    try:
        env = task_env(config).unwrapped
    except (MetarlError, ValueError):
        return None
    tasks = [
        env.sample_tasks(config.maml.meta_batch_size, iteration_rngs(config.train.seed, it)[0])  # type: ignore[attr-defined]
        for it in iterations
    ]
    env.close()
    return to_json(tasks)


def pairing_problems(a: Config, b: Config, iterations: Sequence[int]) -> list[str]:
    """Why runs ``a`` and ``b`` are not a valid pair (empty when they draw the same tasks and noise)."""
    problems = []
    if a.train.seed != b.train.seed:
        problems.append(f"train.seed differs (A {a.train.seed}, B {b.train.seed})")
    keys = [
        ("env.id", a.env.id, b.env.id),
        ("maml.loss", a.maml.loss, b.maml.loss),
        ("maml.meta_batch_size", a.maml.meta_batch_size, b.maml.meta_batch_size),
    ]
    if a.maml.loss == b.maml.loss == "supervised":
        keys += [
            ("supervised.shots", a.supervised.shots, b.supervised.shots),
            ("supervised.query_size", a.supervised.query_size, b.supervised.query_size),
        ]
    problems += [f"{key} differs (A {va!r}, B {vb!r}), so the task draws differ" for key, va, vb in keys if va != vb]
    if problems:
        return problems
    draws_a, draws_b = task_draws(a, iterations), task_draws(b, iterations)
    if draws_a is None or draws_b is None:
        if a.env.kwargs != b.env.kwargs:
            problems.append(
                f"env.kwargs differ (A {a.env.kwargs}, B {b.env.kwargs}) and the task env cannot be "
                "built here to check that the task draws agree"
            )
    elif draws_a != draws_b:
        problems.append(
            f"the task draws differ (the tasks of iterations {list(iterations)} are not the same; "
            f"env.kwargs A {a.env.kwargs}, B {b.env.kwargs})"
        )
    return problems


def median_seconds(rows: list[dict[str, Any]], first: int, last: int) -> float | None:
    """Median seconds per meta-iteration over iterations ``first..last`` (``None`` if the rows carry no timing)."""
    chosen = [r for r in rows if first <= r["iteration"] <= last and all(k in r for k in TIMING_KEYS)]
    return timing_summary(chosen)["median_s_per_iteration"] if chosen else None


def build_parser() -> BenchParser:
    """The command-line flags."""
    parser = make_parser(MODULE, __doc__)
    parser.add_argument("run_a", type=Path, metavar="RUN_A", help="run directory A (the reference)")
    parser.add_argument("run_b", type=Path, metavar="RUN_B", help="run directory B (the change)")
    parser.add_argument("--first", type=non_negative, default=0, help="first iteration to compare")
    parser.add_argument("--last", type=non_negative, help="last iteration to compare (default: the last shared)")
    parser.add_argument("--keys", default="meta/return_post,meta/return_pre", help="comma-separated metrics keys")
    parser.add_argument(
        "--allow-different-seeds",
        action="store_true",
        help="compare runs whose seeds or task draws differ (the table then carries a warning)",
    )
    add_results(parser, "RUN_B/results")
    parser.add_argument("--name", help="results file stem (default: compare_<RUN_A folder name>)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Check the pairing, read both runs' metrics, print and write the paired table."""
    keys = [k.strip() for k in args.keys.split(",") if k.strip()]
    if not keys:
        raise MetarlError("--keys names no metric")
    if args.last is not None and args.last < args.first:
        raise MetarlError(f"--last {args.last} is before --first {args.first}")
    config_a, config_b = run_config(args.run_a), run_config(args.run_b)
    rows_a, rows_b = read_metrics(args.run_a), read_metrics(args.run_b)
    diffs = {key: paired_difference(rows_a, rows_b, key, args.first, args.last) for key in keys}
    span = next(iter(diffs.values()))
    first, last = int(span["first"]), int(span["last"])
    problems = pairing_problems(config_a, config_b, range(first, first + CHECKED_DRAWS))
    if problems and not args.allow_different_seeds:
        raise DifferentRuns(
            f"{args.run_a} and {args.run_b} are not a paired comparison: {'; '.join(problems)} "
            "(pass --allow-different-seeds to compare them anyway)"
        )
    lines = [f"# {args.run_b} (B) vs {args.run_a} (A)", ""]
    if problems:
        warning = (
            "**WARNING: NOT A PAIRED COMPARISON** (--allow-different-seeds): "
            + "; ".join(problems)
            + ". The runs see different tasks and noise, so B - A mixes the change with the task draw; "
            "the standard errors below understate the uncertainty."
        )
        lines += [warning, ""]
        log(warning.replace("**", ""))
    lines += [
        f"Paired over iterations {span['first']}-{span['last']} ({span['iterations']} shared).",
        "",
        "| metric | B - A | standard error |",
        "|---|---:|---:|",
    ]
    lines += [f"| {key} | {d['mean']:+.2f} | {d['se']:.2f} |" for key, d in diffs.items()]
    sec_a = median_seconds(rows_a, first, last)
    sec_b = median_seconds(rows_b, first, last)
    if sec_a is not None and sec_b is not None:
        lines += ["", f"Median seconds per meta-iteration: A {sec_a:.1f}, B {sec_b:.1f}."]
    text = "\n".join(lines)
    print(text)
    out = args.results or args.run_b / "results"
    name = args.name or f"compare_{args.run_a.resolve().name}"
    data = {
        "differences": diffs,
        "seconds_a": sec_a,
        "seconds_b": sec_b,
        "run_a": str(args.run_a),
        "run_b": str(args.run_b),
        "paired": not problems,
        "problems": problems,
        "seed_a": config_a.train.seed,
        "seed_b": config_b.train.seed,
    }
    md_path, js_path = write_results(out, name, text, data, command=command_line(MODULE, args.argv))
    log(f"wrote {md_path}, {js_path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; returns the exit status (2 and one ``error:`` line for runs that do not pair)."""
    return run_main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
