"""Paired comparison of two training runs that share a seed (an A/B test of a setting).

    python scripts/compare_runs.py RUN_A RUN_B [--first N] [--last N]
        [--keys meta/return_post,meta/return_pre] [--results DIR --name NAME]

Runs with the same ``train.seed`` draw the same tasks and noise seeds at each meta-iteration
(:func:`metarl.trainer.iteration_rngs`), for example two branches resumed from one checkpoint
with different ``--set`` overrides. For every key the table gives the mean and standard error
of the per-iteration difference B - A over the iterations both logged, and each run's median
seconds per meta-iteration over them. With ``--results`` it also writes ``<name>.{md,json}``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metarl.reporting import paired_difference, read_metrics, timing_summary, write_results  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Read both runs' metrics, print (and optionally write) the paired table; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--first", type=int, default=0, help="first iteration to compare")
    parser.add_argument("--last", type=int, default=None, help="last iteration to compare (default: the last shared)")
    parser.add_argument("--keys", default="meta/return_post,meta/return_pre", help="comma-separated metrics keys")
    parser.add_argument("--results", type=Path, default=None, help="also write the table under this directory")
    parser.add_argument("--name", default="compare_runs", help="results file stem")
    args = parser.parse_args(argv)
    keys = [k.strip() for k in args.keys.split(",") if k.strip()]
    if not keys:
        parser.error("--keys names no metric")
    try:
        rows_a, rows_b = read_metrics(args.run_a), read_metrics(args.run_b)
        diffs = {key: paired_difference(rows_a, rows_b, key, args.first, args.last) for key in keys}
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    span = next(iter(diffs.values()))

    def median_seconds(rows: list[dict[str, float]]) -> float:
        chosen = [r for r in rows if span["first"] <= r["iteration"] <= span["last"]]
        return timing_summary(chosen)["median_s_per_iteration"]

    lines = [f"# {args.run_b} (B) vs {args.run_a} (A)", "",
             f"Paired over iterations {span['first']}-{span['last']} ({span['iterations']} shared).", "",
             "| metric | B - A | standard error |", "|---|---:|---:|"]
    lines += [f"| {key} | {d['mean']:+.2f} | {d['se']:.2f} |" for key, d in diffs.items()]
    sec_a, sec_b = median_seconds(rows_a), median_seconds(rows_b)
    lines += ["", f"Median seconds per meta-iteration: A {sec_a:.1f}, B {sec_b:.1f}.",
              f"- command: `python scripts/compare_runs.py {' '.join(argv if argv is not None else sys.argv[1:])}`"]
    md = "\n".join(lines)
    print(md)
    if args.results is not None:
        write_results(args.results, args.name, md, {"differences": diffs, "seconds_a": sec_a, "seconds_b": sec_b,
                                                     "run_a": str(args.run_a), "run_b": str(args.run_b)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
