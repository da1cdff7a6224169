"""Render a meta-trained policy before adaptation and after each of K inner steps.

    python scripts/render.py --checkpoint PATH [--task JSON-or-key=value,...] [--num-steps K]
        [--output DIR] [--gif] [--seed N] [--num-tasks N] [--episodes N] [--stochastic]

Adaptation is metarl's inner loop on sampled trajectories of the task (step sizes alpha,
then alpha/2, as in the evaluation protocol); the rendered episodes use the policy mean
unless --stochastic. Output, by env:

* MuJoCo (e.g. metarl/HalfCheetahVel-v0): ``render_<env>.mp4`` (and ``.gif`` with --gif), one
  episode per adaptation step, with the task, the step and the running return on the frames;
* metarl/Navigation2D-v0: ``render_navigation2d.png``, trajectories for several tasks;
* metarl/Sinusoid-v0: ``render_sinusoid.png``, predicted curves vs the truth;

plus ``render_<env>.json`` with the tasks and returns. Tasks: ``--task '{"velocity": 1.5}'`` or
``--task goal_x=0.3,goal_y=-0.2``; without --task, tasks are sampled with --seed.
MUJOCO_GL defaults to egl (headless).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from metarl.render import render_checkpoint  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, render, print what was written; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint file, or a run directory")
    parser.add_argument("--task", help="the task, as JSON or key=value,... (default: sampled with --seed)")
    parser.add_argument("--num-steps", type=int, default=3, help="inner steps K (default 3)")
    parser.add_argument("--num-tasks", type=int, help="tasks to sample (default: 1 for videos, 4 for plots)")
    parser.add_argument("--episodes", type=int,
                        help="trajectories per inner step (default: config eval.episodes_per_step)")
    parser.add_argument("--output", type=Path, help="output directory (default: <run dir>/render)")
    parser.add_argument("--gif", action="store_true", help="also write a gif (MuJoCo envs)")
    parser.add_argument("--stochastic", action="store_true", help="render sampled actions instead of the policy mean")
    parser.add_argument("--seed", type=int, default=0, help="seed of task sampling, adaptation and rendering")
    parser.add_argument("--size", type=int, nargs=2, default=(480, 320), metavar=("W", "H"), help="video frame size")
    args = parser.parse_args(argv)
    if args.num_steps < 0:
        parser.error(f"--num-steps must be >= 0, got {args.num_steps}")
    for name in ("num_tasks", "episodes"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    torch.set_num_threads(1)
    try:
        result = render_checkpoint(
            args.checkpoint, args.output, args.task, args.num_steps, args.num_tasks, args.episodes, args.seed,
            args.stochastic, args.gif, *args.size,
        )
    except (FileNotFoundError, ValueError, NotImplementedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for task, returns in zip(result.tasks, result.returns):
        cells = " / ".join(f"{r:.2f}" for r in returns)
        print(f"task {task}: return after 0..{len(returns) - 1} steps ({result.actions}): {cells}")
    for path in result.files:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
