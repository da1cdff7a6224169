"""Benchmark MAML against pretrained (Stable-Baselines3), random-init and oracle baselines, paper-style.

    python scripts/benchmark.py --checkpoint RUN_OR_FILE [--output-dir DIR] [--results results]
        [--sb3-timesteps N] [--sb3-algo ppo|trpo] [--num-tasks 40] [--num-steps 3]
        [--episodes-per-step N] [--methods maml,pretrained,random,oracle] [--seed N]

Every method is adapted and evaluated by metarl.evaluation.evaluate_adaptation on the same
fresh tasks: same inner loop, step sizes (alpha, then alpha/2) and trajectories per step.
"pretrained" is an SB3 policy trained on the whole task distribution with the checkpoint's
architecture (its actor's weights are loaded exactly into metarl's policy); "random" is the
same architecture from a random initialisation; "oracle" (default on 2D navigation only)
sees the task and is not adapted. SB3 models are cached in --output-dir (default
<run dir>/benchmark), so re-running does not retrain.

Writes <results>/benchmark_<env>.{md,json,png}: the table of mean return ± 95% CI after
0..K steps per method, and the MAML paper's figure (return vs number of gradient steps).
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metarl.baselines import BenchmarkProtocol, SB3Settings, parse_methods, run_benchmark  # noqa: E402
from metarl.evaluation import markdown_table  # noqa: E402
from metarl.render import plot_adaptation_curves  # noqa: E402
from metarl.reporting import env_slug, write_results  # noqa: E402


def report_markdown(data: dict[str, Any], figure: str, command: str) -> str:
    """The markdown report: protocol, table, paper reference, baseline details, command."""
    p, sb3 = data["protocol"], data["sb3"]
    settings = sb3["settings"]
    steps = ", ".join(f"{lr:g}" for lr in p["step_sizes"]) or "none"
    lines = [
        f"# MAML vs baselines on {data['env_id']} (horizon {data['horizon']})",
        "",
        f"Mean return ± 95% CI over {p['num_tasks']} fresh tasks (seed {p['seed']}), {p['episodes_per_step']} "
        f"trajectories per task and step, actions {p['actions']}. Every method is adapted with metarl's inner "
        f"loop (REINFORCE + linear baseline) with step sizes {steps}. Policy: {data['policy']['hidden_sizes']} "
        f"{data['policy']['activation']}. Evaluation and SB3 training ran on one torch thread.",
        "",
        markdown_table(data["methods"]),
        "",
    ]
    if data["paper_reference"]:
        lines += ["Paper (Finn et al. 2017, read off the figure, ±10%): "
                  + "; ".join(f"{k}: {' / '.join(f'{v:g}' for v in values)}"
                              for k, values in data["paper_reference"].items()) + ".", ""]
    details = {
        "MAML": f"checkpoint `{data['checkpoint']}`.",
        "pretrained": (f"SB3 {settings['algo'].upper()} on the whole task distribution (new task every episode), "
                       f"{settings['total_timesteps']} timesteps, {settings['n_envs']} envs x "
                       f"{sb3['rollout_steps_per_env']} steps per rollout, lr {settings['learning_rate']:g}, "
                       f"gae_lambda {settings['gae_lambda']:g}, seed {settings['seed']}; actor weights loaded into "
                       f"metarl's policy, then adapted like MAML."),
        "random": "the same architecture from a random initialisation (`build_policy`, the config's seed).",
        "oracle": (f"SB3 {settings['algo'].upper()} policy that sees the task (appended to the observation), "
                   f"same budget; evaluated without adaptation (flat line)."),
    }
    for name in data["methods"]:
        key = name.lower() if name != "MAML" else "maml"
        text = details.get(name, "")
        if key in sb3:
            info = sb3[key]
            how = "loaded from cache" if info["cached"] else "trained"
            text += (f" Model `{Path(info['path']).name}` ({how}; training took {info['train_seconds']:.0f} s); "
                     f"learned std {', '.join(f'{math.exp(v):.3f}' for v in info['log_std'])}.")
        lines.append(f"- **{name}**: {text}")
    lines += ["", f"Figure: `{figure}`.", "", f"Command: `{command}`"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the benchmark, write the results; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="metarl checkpoint file, or a run directory")
    parser.add_argument("--output-dir", type=Path, help="SB3 model cache (default: <run dir>/benchmark)")
    parser.add_argument("--results", type=Path, default=Path("results"), help="where to write benchmark_<env>.*")
    parser.add_argument("--name", help="results file stem (default: benchmark_<env>)")
    parser.add_argument("--methods", help="comma-separated subset of maml,pretrained,random,oracle "
                                          "(default: all; oracle only on 2D navigation)")
    parser.add_argument("--sb3-timesteps", type=int, default=SB3Settings.total_timesteps, help="SB3 training budget")
    parser.add_argument("--sb3-algo", choices=("ppo", "trpo"), default="ppo", help="SB3 algorithm (trpo: sb3-contrib)")
    parser.add_argument("--sb3-envs", type=int, default=SB3Settings.n_envs, help="parallel SB3 training envs")
    parser.add_argument("--sb3-seed", type=int, default=0, help="SB3 training seed")
    parser.add_argument("--num-tasks", type=int, default=40, help="fresh evaluation tasks")
    parser.add_argument("--num-steps", type=int, default=3, help="evaluate after 0..K inner steps")
    parser.add_argument("--episodes-per-step", type=int, help="trajectories per task and step (default: config eval)")
    parser.add_argument("--seed", type=int, help="evaluation task seed (default: config eval.seed)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    for name in ("sb3_timesteps", "sb3_envs", "num_tasks", "episodes_per_step"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.num_steps < 0:
        parser.error(f"--num-steps must be >= 0, got {args.num_steps}")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        methods = parse_methods(args.methods) if args.methods else None
        sb3 = SB3Settings(algo=args.sb3_algo, total_timesteps=args.sb3_timesteps, n_envs=args.sb3_envs,
                          seed=args.sb3_seed)
        protocol = BenchmarkProtocol(args.num_tasks, args.num_steps, args.episodes_per_step, args.seed)
        data = run_benchmark(args.checkpoint, args.output_dir, methods, sb3, protocol, not args.no_progress, log)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    name = args.name or f"benchmark_{env_slug(data['env_id'])}"
    figure = args.results / f"{name}.png"
    flat = [n for n, r in data["methods"].items() if not r["adapted"]]
    plot_adaptation_curves(data["methods"], figure, f"{data['env_id']}: return vs gradient steps "
                           f"({data['protocol']['num_tasks']} tasks)", flat, data["paper_reference"])
    arguments = argv if argv is not None else sys.argv[1:]
    command = "python scripts/benchmark.py " + " ".join(shlex.quote(a) for a in arguments)
    data["command"] = command
    data["figure"] = str(figure)
    md, js = write_results(args.results, name, report_markdown(data, figure.name, command), data)
    print(markdown_table(data["methods"]))
    print(f"wrote {md}, {js}, {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
