"""Evaluate a meta-trained checkpoint: return (or regression MSE) after 0..k inner steps on fresh tasks.

    python scripts/evaluate.py --checkpoint PATH [--num-tasks 40] [--num-steps 3]
        [--episodes-per-step N] [--seed N] [--output-dir DIR]

Policy-gradient checkpoints (``maml.loss: pg``), paper protocol: step size alpha for the
first inner step, alpha/2 after; writes ``evaluation.json`` (``steps``: ``{"step",
"mean_return", "ci95"}``). Supervised checkpoints (``maml.loss: supervised``, e.g. sinusoid
regression): K-shot support, MSE on query points after 0..k steps of size alpha
(``steps``: ``{"step", "mse", "ci95"}``; ``--episodes-per-step`` does not apply, the shots
come from the config). Prints the same as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metarl.checkpoint import load_checkpoint, policy_from_checkpoint, resolve_checkpoint  # noqa: E402
from metarl.evaluation import evaluate_adaptation, markdown_table, returns_by_task_parameter  # noqa: E402
from metarl.supervised import evaluate_regression  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, evaluate, write ``evaluation.json``; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint file, or a run directory")
    parser.add_argument("--num-tasks", type=int, help="fresh tasks (default: config eval.num_tasks)")
    parser.add_argument("--num-steps", type=int, help="max inner steps k (default: config eval.num_steps)")
    parser.add_argument("--episodes-per-step", type=int, help="trajectories per task per step (default: config)")
    parser.add_argument("--seed", type=int, help="task seed (default: config eval.seed)")
    parser.add_argument("--output-dir", type=Path, help="where to write evaluation.json (default: the run directory)")
    args = parser.parse_args(argv)
    for name in ("num_tasks", "num_steps", "episodes_per_step"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "num_steps" else 1):
            print(f"error: --{name.replace('_', '-')} must be >= {0 if name == 'num_steps' else 1}, got {value}", file=sys.stderr)
            return 2
    try:
        path = resolve_checkpoint(args.checkpoint)
        payload = load_checkpoint(path)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    policy = policy_from_checkpoint(payload)
    config = payload["config"]
    if config.maml.loss == "supervised":
        result = evaluate_regression(policy, config, args.num_tasks, num_steps=args.num_steps, seed=args.seed)
        table = markdown_table({"MAML": result}, key="mse", digits=3)
    else:
        result = evaluate_adaptation(policy, config, args.num_tasks, args.num_steps, args.episodes_per_step, args.seed)
        table = markdown_table({"MAML": result})
        by_task = returns_by_task_parameter(result)
        if by_task is not None:
            table += "\n\nMean return by task parameter:\n\n" + by_task
    result["checkpoint"] = str(path)
    out_dir = args.output_dir or path.parent.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "evaluation.json").write_text(json.dumps(result, indent=2))
    print(table)
    print(f"wrote {out_dir / 'evaluation.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
