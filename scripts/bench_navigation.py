"""Learning benchmark on 2D navigation with the MAML paper's settings.

    python scripts/bench_navigation.py [--config configs/navigation2d.yaml] [--iterations 500]
        [--output-dir runs/bench_navigation] [--results results] [--set key=value ...] [--skip-training]

Trains (20 tasks x 20 trajectories, H=100, alpha=0.1, one inner step, TRPO max KL 0.01,
gamma=0.99, lambda=1), then evaluates the meta-trained policy and a random initialisation
of the same architecture on 40 fresh tasks after 0..3 inner steps (alpha, then alpha/2;
40 trajectories per step). Writes ``results/navigation2d.{md,json}``: the return table
with 95% CIs, the MAML paper's figures, the wall time and the median seconds per
meta-iteration with its sampling/learning split. Interrupted training can be continued
with ``--resume``-style re-runs: the script resumes from the run directory's checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metarl.checkpoint import load_checkpoint, policy_from_checkpoint  # noqa: E402
from metarl.config import load_config  # noqa: E402
from metarl.evaluation import evaluate_adaptation, markdown_table  # noqa: E402
from metarl.reporting import timing_summary, write_results  # noqa: E402
from metarl.trainer import build_policy, train  # noqa: E402

PAPER = {"MAML (paper)": [-39.0, -11.0, -3.3, -3.1], "pretrained (paper)": [-40.0, -20.0, -12.0, -8.0]}
TARGET_STEP1 = -11.7


def main(argv: list[str] | None = None) -> int:
    """Train, evaluate against a random initialisation, write the results table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("configs/navigation2d.yaml"))
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--output-dir", type=Path, default=Path("runs/bench_navigation"))
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--skip-training", action="store_true", help="evaluate the run directory's latest checkpoint")
    args = parser.parse_args(argv)

    config = load_config(args.config, [*args.set, f"train.iterations={args.iterations}"])
    wall = None
    if not args.skip_training:
        resume = (args.output_dir / "checkpoints" / "latest.pt").is_file()
        start = time.perf_counter()
        train(config, args.output_dir, resume=resume)
        wall = time.perf_counter() - start
    payload = load_checkpoint(args.output_dir)
    maml = policy_from_checkpoint(payload)
    rows = [json.loads(line) for line in (args.output_dir / "metrics.jsonl").read_text().splitlines()]
    timing = timing_summary(rows)
    random_init = build_policy(config, maml.obs_dim, maml.act_dim)
    results = {
        "MAML (metarl)": evaluate_adaptation(maml, config),
        "random init": evaluate_adaptation(random_init, config),
    }
    step1 = results["MAML (metarl)"]["steps"][1]["mean_return"]
    beats_random = all(
        m["mean_return"] > r["mean_return"]
        for m, r in zip(results["MAML (metarl)"]["steps"], results["random init"]["steps"])
    )
    table = markdown_table(results)
    paper_rows = "\n".join(f"| {name} | " + " | ".join(f"{v:g}" for v in values) + " |" for name, values in PAPER.items())
    wall_line = f"{wall:.0f} s" if wall is not None else "n/a (evaluated an existing run)"
    md = (
        f"# 2D navigation: return after 0..3 inner steps (40 fresh tasks, 40 trajectories per step)\n\n"
        f"{table}\n{paper_rows}\n\n"
        f"- trained {payload['iteration']} meta-iterations; target after 1 step >= {TARGET_STEP1}: "
        f"**{step1:.2f}** ({'met' if step1 >= TARGET_STEP1 else 'NOT met'}); beats random init at every step: "
        f"**{beats_random}**\n"
        f"- training wall time (this invocation): {wall_line}; median s/meta-iteration "
        f"{timing['median_s_per_iteration']:.2f} (sampling {timing['median_sampling_s']:.2f}, learning "
        f"{timing['median_learning_s']:.2f})\n"
        f"- command: `python scripts/bench_navigation.py {' '.join(argv if argv is not None else sys.argv[1:])}`"
    )
    print(md)
    write_results(args.results, "navigation2d", md, {"results": results, "timing": timing, "wall_s": wall,
                                                     "iterations": payload["iteration"], "paper": PAPER})
    return 0


if __name__ == "__main__":
    sys.exit(main())
