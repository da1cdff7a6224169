"""Meta-train a policy with MAML.

    python scripts/train.py --config configs/navigation2d.yaml [--output-dir DIR] [--iterations N]
        [--seed N] [--set section.key=value ...] [--resume DIR]

Writes the resolved config, TensorBoard event files, ``metrics.jsonl`` and checkpoints
under the run directory (default ``runs/<env>__<algo>__<seed>__<time>``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metarl.config import ConfigError, load_config  # noqa: E402
from metarl.trainer import TrainingDiverged, algo_name, run_name, train  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run training, return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="YAML config (default: built-in defaults = 2D navigation)")
    parser.add_argument("--output-dir", type=Path, help="run directory (default: runs/<run name>)")
    parser.add_argument("--iterations", type=int, help="override train.iterations")
    parser.add_argument("--seed", type=int, help="override train.seed")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any key, e.g. maml.inner_lr=0.05")
    parser.add_argument("--resume", type=Path, metavar="DIR", help="continue the run in DIR from its latest checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)

    overrides = list(args.set)
    if args.iterations is not None:
        overrides.append(f"train.iterations={args.iterations}")
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    try:
        if args.resume is not None:
            config_path = args.config or args.resume / "config.yaml"
            config = load_config(config_path, overrides)
            run_dir = args.resume
        else:
            config = load_config(args.config, overrides)
            run_dir = args.output_dir or Path("runs") / run_name(config, algo_name(config))
        if config.maml.loss == "supervised":
            from metarl.supervised import train_supervised

            result = train_supervised(config, run_dir, resume=args.resume is not None, progress=not args.no_progress)
        else:
            result = train(config, run_dir, resume=args.resume is not None, progress=not args.no_progress)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"error: training diverged: {exc}", file=sys.stderr)
        return 3
    print(f"run directory: {result.run_dir}\ncheckpoint: {result.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
