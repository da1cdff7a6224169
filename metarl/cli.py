"""The ``metarl`` command: ``train``, ``evaluate``, ``render``, ``benchmark`` and ``config``.

One set of flags with one meaning each (``--config``, ``--set``, ``--seed``, ``--run-dir``,
``--results``, ``--episodes``, ``--num-tasks``, ``--num-steps``, ``--no-progress``,
``--debug``), and one place (:func:`main`) that turns every error a user can cause into
one ``error:`` line and an exit status: 2 for bad input, 3 for a diverged run, 130/143
for an interrupt. ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metarl.errors import ConfigError, MetarlError, RunDirError

if TYPE_CHECKING:
    from metarl.config import Config

EXAMPLES = """examples:
  metarl train --config configs/navigation2d.yaml --run-dir runs/nav
  metarl train --run-dir runs/nav --resume --set train.iterations=200
  metarl evaluate --run-dir runs/nav --num-tasks 40 --num-steps 3
  metarl render --run-dir runs/nav --task goal_x=0.3,goal_y=-0.2
  metarl benchmark --run-dir runs/nav --sb3-timesteps 300000
  metarl config --config configs/halfcheetah_vel.yaml --set maml.inner_lr=0.05
"""


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- shared flags


def positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def non_negative(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value


def add_common(parser: argparse.ArgumentParser) -> None:
    """``--no-progress`` and ``--debug``, on every subcommand."""
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``--set``."""
    parser.add_argument("--config", type=Path, help="YAML config (default: the built-in defaults, 2D navigation)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (YAML value), e.g. maml.inner_lr=0.05 or env.kwargs.frame_skip=1",
    )


def add_eval_flags(parser: argparse.ArgumentParser, num_steps_default: int | None = None) -> None:
    """``--num-tasks``, ``--num-steps``, ``--episodes`` and ``--seed`` of an evaluation protocol."""
    parser.add_argument("--num-tasks", type=positive, help="fresh tasks (default: the run's eval.num_tasks)")
    parser.add_argument(
        "--num-steps",
        type=non_negative,
        default=num_steps_default,
        help="inner steps k: measure after 0..k (default: the run's eval.num_steps)",
    )
    parser.add_argument(
        "--episodes",
        type=positive,
        help="trajectories per task and inner step (default: the run's eval.episodes_per_step)",
    )
    parser.add_argument("--seed", type=non_negative, help="seed of the fresh tasks (default: the run's eval.seed)")


def add_run_dir(parser: argparse.ArgumentParser, required: bool, help: str) -> None:
    """``--run-dir``: the run directory (train writes it; evaluate, render and benchmark read it)."""
    parser.add_argument("--run-dir", type=Path, required=required, help=help)


def overrides_of(args: argparse.Namespace, *extra: str) -> list[str]:
    """The ``--set`` overrides plus ``extra`` (``--seed``, ``--iterations`` turned into keys)."""
    return [*args.set, *extra]


# --------------------------------------------------------------------------- commands


def cmd_train(args: argparse.Namespace, log: Callable[[str], None]) -> int:
    """Meta-train; print the run directory, the TensorBoard command, and a closing summary."""
    from metarl.build import horizon_notice
    from metarl.config import load_config
    from metarl.trainer import run_name, train

    extra = [f"train.seed={args.seed}"] if args.seed is not None else []
    extra += [f"train.iterations={args.iterations}"] if args.iterations is not None else []
    if args.resume:
        if args.run_dir is None:
            raise RunDirError("--resume needs --run-dir (the run to continue)")
        config = resume_config(args.run_dir, args.config, overrides_of(args, *extra))
        run_dir = args.run_dir
    else:
        config = load_config(args.config, overrides_of(args, *extra))
        run_dir = args.run_dir or Path("runs") / run_name(config)
    notice = horizon_notice(config.env)
    if notice:
        log(notice)
    log(f"run directory: {run_dir}\nwatch it with: tensorboard --logdir {run_dir.parent}")
    result = train(
        config, run_dir, resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite, log=log
    )
    print(f"done: {result.iteration} iteration{'s' if result.iteration != 1 else ''}; checkpoint {result.checkpoint}")
    print(f"evaluate it with: metarl evaluate --run-dir {run_dir}")
    return 0


def resume_config(run_dir: Path, config_path: Path | None, overrides: list[str]) -> Config:
    """The config to resume ``run_dir`` with: ``--config`` if given, else the run's ``config.yaml``
    (else its newest checkpoint's config), with the ``--set`` overrides applied."""
    from metarl.checkpoint import has_checkpoint, load_checkpoint
    from metarl.config import apply_overrides, from_dict, load_config, to_dict

    if config_path is not None:
        return load_config(config_path, overrides)
    if (run_dir / "config.yaml").is_file():
        return load_config(run_dir / "config.yaml", overrides)
    if run_dir.is_dir() and has_checkpoint(run_dir):
        return from_dict(apply_overrides(to_dict(load_checkpoint(run_dir).config), overrides))
    where = "does not exist" if not run_dir.exists() else "holds no run (no config.yaml, no checkpoint)"
    raise RunDirError(f"nothing to resume in {run_dir}: it {where}; start a new run without --resume")


EVALUATE_SETTABLE = ("env.", "eval.", "sampler.")
"""The config sections ``metarl evaluate --set`` may change; the checkpoint fixes the model and training."""


def evaluation_config(config: Config, overrides: list[str]) -> Config:
    """The checkpoint's config with ``metarl evaluate``'s ``--set`` overrides (env, eval and sampler keys only),
    e.g. ``env.kwargs.split=test`` for Meta-World's held-out goals or skills."""
    from metarl.config import apply_overrides, from_dict, to_dict

    for item in overrides:
        if not item.split("=", 1)[0].strip().startswith(EVALUATE_SETTABLE):
            raise ConfigError(
                f"metarl evaluate --set {item}: only env.*, eval.* and sampler.* keys can change at evaluation "
                "(the checkpoint fixes the model and its training)"
            )
    return from_dict(apply_overrides(to_dict(config), overrides)) if overrides else config


def cmd_evaluate(args: argparse.Namespace, log: Callable[[str], None]) -> int:
    """Few-shot evaluation of a run's checkpoint; writes ``evaluation.{md,json}`` and prints the table."""
    import shlex

    from metarl.algorithms import algorithm_name, checkpoint_inner_rule
    from metarl.checkpoint import load_checkpoint
    from metarl.evaluation import (
        evaluate_adaptation,
        gain_lines,
        markdown_table,
        returns_by_task_parameter,
        success_by_skill,
    )
    from metarl.policy import GaussianMLPPolicy
    from metarl.reporting import write_results

    checkpoint = load_checkpoint(args.run_dir)
    for line in checkpoint.skipped:
        log(f"note: skipped unreadable checkpoint: {line}")
    config = evaluation_config(checkpoint.config, args.set)
    if config.maml.loss == "classification":
        import torch

        from metarl.classification import accuracy_table, evaluate_classification
        from metarl.sampler import torch_threads

        assert not isinstance(checkpoint.policy, GaussianMLPPolicy)  # the loader builds a classifier for this loss
        with torch_threads(config.train.num_threads or torch.get_num_threads()):  # the learner's threads
            result = evaluate_classification(
                checkpoint.policy,
                config,
                args.num_tasks,
                num_steps=args.num_steps,
                seed=args.seed,
                rule=checkpoint_inner_rule(checkpoint),
            )
        table = accuracy_table(config, result)
    elif config.maml.loss == "supervised":
        from metarl.supervised import evaluate_regression

        rule = checkpoint_inner_rule(checkpoint)  # the run's learned step sizes and adapted subset
        result = evaluate_regression(
            checkpoint.gaussian_policy("metarl evaluate"),
            config,
            args.num_tasks,
            num_steps=args.num_steps,
            seed=args.seed,
            rule=rule,
        )
        table = markdown_table({algorithm_name(config.maml): result}, key="mse", digits=3)
        table += f"\n\nInner rule: {result['inner_rule']}"
    else:
        result = evaluate_adaptation(
            checkpoint.gaussian_policy("metarl evaluate"),
            config,
            args.num_tasks,
            args.num_steps,
            args.episodes,
            args.seed,
            rule=checkpoint_inner_rule(checkpoint),
        )
        table = markdown_table({algorithm_name(config.maml): result})
        if "per_task_success" in result:
            table += "\n\nSuccess rate (any step of the episode):\n\n" + markdown_table(
                {algorithm_name(config.maml): result}, key="success_rate", ci_key="success_ci95"
            )
            by_skill = success_by_skill(result)
            if by_skill is not None:
                table += "\n\nBy skill:\n\n" + by_skill
        table += "\n\n" + gain_lines(result)
        lengths = " / ".join(
            f"{s['mean_length']:.1f} ({100 * s['terminated_early']:.0f}% ended early)" for s in result["steps"]
        )
        table += f"\n\nMean episode length after 0..{len(result['steps']) - 1} steps: {lengths}"
        by_task = returns_by_task_parameter(result)
        if by_task is not None:
            table += "\n\nBy task parameter:\n\n" + by_task
    result["checkpoint"] = str(checkpoint.path)
    result["iteration"] = checkpoint.iteration
    out_dir = args.results or (args.run_dir if args.run_dir.is_dir() else checkpoint.path.parent.parent)
    heading = f"checkpoint {checkpoint.path} (iteration {checkpoint.iteration})"
    command = "metarl " + " ".join(shlex.quote(a) for a in args.argv)
    md, js = write_results(out_dir, args.name, f"# {config.env.id}: {heading}\n\n{table}", result, command=command)
    print(f"{heading}\n\n{table}\n\nwrote {md}, {js}")
    return 0


def cmd_render(args: argparse.Namespace, log: Callable[[str], None]) -> int:
    """Render the run's policy before and after each inner step; print each task's return (or MSE) per step."""
    import shlex

    os.environ.setdefault("MUJOCO_GL", "egl")
    from metarl.render import format_task, render_checkpoint

    result = render_checkpoint(
        args.run_dir,
        args.results,
        args.task,
        args.num_steps,
        args.num_tasks,
        args.episodes,
        args.seed,
        args.stochastic,
        args.gif,
        width=args.size[0],
        height=args.size[1],
        command="metarl " + " ".join(shlex.quote(a) for a in args.argv),
    )
    for task, values in zip(result.tasks, result.values):
        cells = " / ".join(f"{v:.2f}" for v in values)
        print(f"task {format_task(task)}: {result.metric} after 0..{len(values) - 1} steps ({result.actions}): {cells}")
    for path in result.files:
        print(f"wrote {path}")
    return 0


def cmd_benchmark(args: argparse.Namespace, log: Callable[[str], None]) -> int:
    """MAML against the pretrained, random-init and oracle baselines on the same fresh tasks."""
    import shlex

    from metarl.baselines import SB3Settings
    from metarl.benchmark import BenchmarkProtocol, parse_methods, report_markdown, run_benchmark
    from metarl.evaluation import markdown_table
    from metarl.plots import plot_adaptation_curves
    from metarl.reporting import env_slug, write_results

    methods = parse_methods(args.methods) if args.methods else None
    sb3 = SB3Settings(algo=args.sb3_algo, total_timesteps=args.sb3_timesteps, n_envs=args.sb3_envs, seed=args.sb3_seed)
    protocol = BenchmarkProtocol(args.num_tasks or 40, args.num_steps, args.episodes, args.seed)
    cache = (args.run_dir if args.run_dir.is_dir() else args.run_dir.parent.parent) / "sb3_cache"
    data = run_benchmark(args.run_dir, cache, methods, sb3, protocol, not args.no_progress, log)
    results = args.results or cache.parent / "benchmark"
    name = args.name or f"benchmark_{env_slug(data['env_id'])}"
    figure = results / f"{name}.png"
    plot_adaptation_curves(
        data["methods"],
        figure,
        f"{data['env_id']}: return vs gradient steps ({data['protocol']['num_tasks']} tasks)",
        reference=data["paper_reference"],
    )
    command = "metarl " + " ".join(shlex.quote(a) for a in args.argv)
    data["command"] = command
    data["figure"] = str(figure)
    md, js = write_results(results, name, report_markdown(data, figure.name), data)
    print(markdown_table(data["methods"]))
    print(f"wrote {md}, {js}, {figure}")
    return 0


def cmd_config(args: argparse.Namespace, log: Callable[[str], None]) -> int:
    """Print the resolved, validated config with each key's meaning and allowed values."""
    from metarl.config import annotated_yaml, load_config

    print(annotated_yaml(load_config(args.config, args.set)))
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The ``metarl`` argument parser with its subcommands."""
    parser = argparse.ArgumentParser(
        prog="metarl",
        description="Model-Agnostic Meta-Learning for policies and few-shot learners.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "train",
        help="meta-train (writes a run directory)",
        description="Meta-train a policy (or a few-shot learner) with MAML. Writes config.yaml, "
        "TensorBoard event files, metrics.jsonl and checkpoints/ under the run directory.",
    )
    add_config_flags(p)
    add_run_dir(p, False, "run directory (default: runs/<env>__<algo>__<seed>__<time>)")
    p.add_argument("--seed", type=non_negative, help="train.seed")
    p.add_argument("--iterations", type=positive, help="train.iterations (total, including resumed ones)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --run-dir from its newest readable checkpoint (config from its config.yaml)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --run-dir")
    add_common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "evaluate",
        help="few-shot evaluation on fresh tasks",
        description="Return after 0..k inner steps on fresh tasks: step size alpha, then alpha/2 (the MAML "
        "paper's protocol). Regression: MSE; classification: query accuracy on tasks of the held-out classes "
        "(both adapt with the run's own inner rule). Writes evaluation.md and evaluation.json (with the command, "
        "commit, date and machine).",
    )
    add_run_dir(p, True, "run directory or checkpoint file")
    add_eval_flags(p)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an env.*, eval.* or sampler.* key of the run's config, e.g. env.kwargs.split=test "
        "(Meta-World's held-out goals or skills)",
    )
    p.add_argument("--results", type=Path, help="where to write evaluation.{md,json} (default: the run directory)")
    p.add_argument("--name", default="evaluation", help="results file stem (default: evaluation)")
    add_common(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "render",
        help="render the policy before and after adaptation",
        description="MuJoCo tasks: an mp4 (and gif), one episode per inner step, task and return on "
        "the frames. 2D navigation: a PNG of trajectories. Sinusoid: predicted vs true curves.",
    )
    add_run_dir(p, True, "run directory or checkpoint file")
    p.add_argument("--task", help="the task as JSON or key=value,... (e.g. '{\"velocity\": 1.5}'); default: sampled")
    p.add_argument("--num-steps", type=non_negative, default=3, help="inner steps k (default 3)")
    p.add_argument("--num-tasks", type=positive, help="tasks to sample (default: 1 for videos, 4 for plots)")
    p.add_argument("--episodes", type=positive, help="trajectories per inner step (default: the run's eval setting)")
    p.add_argument("--seed", type=non_negative, default=0, help="seed of task sampling, adaptation and rendering")
    p.add_argument("--results", type=Path, help="output directory (default: <run dir>/render)")
    p.add_argument("--gif", action="store_true", help="also write a gif (MuJoCo envs)")
    p.add_argument("--stochastic", action="store_true", help="render sampled actions instead of the policy mean")
    p.add_argument("--size", type=positive, nargs=2, default=(480, 320), metavar=("W", "H"), help="video frame size")
    add_common(p)
    p.set_defaults(func=cmd_render)

    p = sub.add_parser(
        "benchmark",
        help="MAML vs pretrained / random / oracle baselines",
        description="Evaluate MAML, an SB3 policy pretrained on all tasks, a random initialisation and "
        "(where the env has one) an oracle on the same fresh tasks with the same inner loop. Writes "
        "benchmark_<env>.{md,json,png} to --results (default: <run dir>/benchmark).",
    )
    add_run_dir(p, True, "run directory or checkpoint file")
    add_eval_flags(p, num_steps_default=3)
    p.add_argument("--results", type=Path, help="where to write the tables and figure (default: <run dir>/benchmark)")
    p.add_argument("--name", help="results file stem (default: benchmark_<env>)")
    p.add_argument("--methods", help="comma-separated subset of maml,pretrained,random,oracle")
    p.add_argument("--sb3-timesteps", type=positive, default=100_000, help="SB3 training budget (default 100000)")
    p.add_argument("--sb3-algo", choices=("ppo", "trpo"), default="ppo", help="SB3 algorithm (trpo: sb3-contrib)")
    p.add_argument("--sb3-envs", type=positive, default=8, help="parallel SB3 training envs")
    p.add_argument("--sb3-seed", type=non_negative, default=0, help="SB3 training seed")
    add_common(p)
    p.set_defaults(func=cmd_benchmark)

    p = sub.add_parser(
        "config",
        help="print the resolved config with each key's meaning",
        description="Print the validated config of --config and --set as YAML, each key with its "
        "meaning and allowed values.",
    )
    add_config_flags(p)
    add_common(p)
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; every error a user can cause ends as one ``error:`` line and an exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        code: int = args.func(args, _stderr)
        return code
    except MetarlError as exc:
        return _report(exc, exc.exit_code, args.debug)
    except KeyboardInterrupt as exc:
        return _report(exc, 130, args.debug, "interrupted")
    except (ValueError, OSError, NotImplementedError) as exc:  # bad values, unreadable or unwritable paths
        return _report(exc, 2, args.debug)


def _report(exc: BaseException, code: int, debug: bool, text: str | None = None) -> int:
    """Print one ``error:`` line (the traceback too with ``--debug``); return the exit status."""
    if debug:
        traceback.print_exception(exc)
    message = " ".join((text or str(exc) or type(exc).__name__).split())  # one line, whatever the exception says
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


def run(argv: Sequence[str] | None = None) -> Any:
    """Console-script entry point: exit with :func:`main`'s status."""
    sys.exit(main(argv))
