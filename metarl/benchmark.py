"""The MAML benchmark protocol: MAML against the pretrained, random-init and oracle baselines.

Every method is evaluated by :func:`metarl.evaluation.evaluate_adaptation` on the same fresh
tasks (same seed), with the same trajectories per task and step and the same inner loop
(step sizes alpha, then alpha/2): MAML's checkpoint; an SB3 policy pretrained on the whole
task distribution; the same architecture from a random initialisation; and (where the env has
one) an SB3 oracle that sees the task, evaluated without adaptation at step 0 only. The SB3
baselines are trained (and cached) by :mod:`metarl.baselines`; the paper's reference numbers
come from :mod:`metarl.paper`. :func:`report_markdown` writes the report; the figure is
:func:`metarl.plots.plot_adaptation_curves`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch

from metarl.algorithms import InnerRule, checkpoint_inner_rule
from metarl.baselines import (
    Role,
    SB3Settings,
    check_oracle,
    oracle_config,
    require_sb3,
    sb3_baseline,
)
from metarl.build import build_policy, horizon
from metarl.checkpoint import load_checkpoint
from metarl.config import Config
from metarl.errors import BenchmarkError
from metarl.evaluation import evaluate_adaptation, markdown_table
from metarl.maml import inner_step_sizes
from metarl.paper import rl_reference
from metarl.policy import GaussianMLPPolicy

METHODS = ("maml", "pretrained", "random", "oracle")
DISPLAY_NAMES = {"maml": "MAML", "pretrained": "pretrained", "random": "random", "oracle": "oracle"}

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    """The default log: say nothing."""


@dataclass(frozen=True)
class BenchmarkProtocol:
    """The evaluation protocol shared by every method (``None``: the checkpoint config's ``eval`` value)."""

    num_tasks: int = 40
    num_steps: int = 3
    episodes_per_step: int | None = None
    seed: int | None = None


def default_methods(env_id: str) -> tuple[str, ...]:
    """Every method; the oracle only where it is cheap (2D navigation)."""
    return METHODS if env_id.startswith("metarl/Navigation2D") else ("maml", "pretrained", "random")


def parse_methods(text: str) -> tuple[str, ...]:
    """``"maml,pretrained"`` -> ``("maml", "pretrained")``; unknown names are a :class:`BenchmarkError`."""
    methods = tuple(m.strip().lower() for m in text.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise BenchmarkError(f"unknown method(s) {unknown or text!r}; allowed: {', '.join(METHODS)}")
    return methods


def flat_result(result: Mapping[str, Any]) -> dict[str, Any]:
    """A method evaluated without adaptation: its step-0 numbers only, marked ``"adapted": false``.

    Tables show it once (in the 0-steps column, ``–`` elsewhere) and the figure draws it as a
    dashed horizontal line, instead of repeating one number at every step.
    """
    return {**result, "steps": list(result["steps"][:1]), "per_task": list(result["per_task"][:1]), "adapted": False}


def run_benchmark(
    checkpoint: str | Path,
    output_dir: Path | None = None,
    methods: Sequence[str] | None = None,
    sb3: SB3Settings = SB3Settings(),
    protocol: BenchmarkProtocol = BenchmarkProtocol(),
    progress: bool = True,
    log: Log = _quiet,
) -> dict[str, Any]:
    """Evaluate MAML and the baselines on the same fresh tasks with the same adaptation procedure.

    Every method goes through :func:`metarl.evaluation.evaluate_adaptation` with the same
    tasks, seed, trajectories per step and step sizes; the oracle is evaluated without
    adaptation, at step 0 only (:func:`flat_result`). SB3 models are cached in ``output_dir``
    (default ``<run dir>/benchmark``). Returns a dict for :func:`metarl.reporting.write_json`
    (task values may be numpy arrays) with ``methods`` (display name -> evaluation result), the
    protocol, the SB3 settings and the paper's reference numbers where known. Raises
    :class:`BenchmarkError` or :class:`metarl.baselines.BaselineError` (one line) before any
    evaluation when the request cannot run, e.g. an env without an oracle view.
    """
    loaded = load_checkpoint(checkpoint)
    config, file = loaded.config, loaded.path
    if config.maml.loss != "pg":
        raise BenchmarkError(
            f"the benchmark compares RL policies; {file} was trained with maml.loss={config.maml.loss!r}"
        )
    policy = loaded.gaussian_policy("metarl benchmark")
    methods = parse_methods(",".join(methods)) if methods is not None else default_methods(config.env.id)
    if protocol.num_tasks < 1 or protocol.num_steps < 0:
        raise BenchmarkError(f"need num_tasks >= 1 and num_steps >= 0, got {protocol.num_tasks}, {protocol.num_steps}")
    if "pretrained" in methods or "oracle" in methods:
        require_sb3(sb3.algo)
    if "oracle" in methods:
        check_oracle(config)  # one line saying why, before anything is trained or evaluated
    out = output_dir if output_dir is not None else file.parent.parent / "benchmark"
    episodes = protocol.episodes_per_step or config.eval.episodes_per_step
    seed = config.eval.seed if protocol.seed is None else protocol.seed

    def evaluate(p: GaussianMLPPolicy, cfg: Config, steps: int, rule: InnerRule | None = None) -> dict[str, Any]:
        return evaluate_adaptation(p, cfg, protocol.num_tasks, steps, episodes, seed, rule=rule)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    results: dict[str, dict[str, Any]] = {}
    sb3_info: dict[str, Any] = {}
    try:
        for method in methods:
            name = DISPLAY_NAMES[method]
            start = time.perf_counter()
            if method == "maml":
                log(f"[maml] evaluating {file}")
                result = evaluate(policy, config, protocol.num_steps, checkpoint_inner_rule(loaded))
            elif method == "random":
                log("[random] evaluating a random initialisation (build_policy, train.seed)")
                result = evaluate(build_policy(config, policy.obs_dim, policy.act_dim), config, protocol.num_steps)
            else:
                baseline = sb3_baseline(config, cast(Role, method), sb3, out, progress, log)
                sb3_info[method] = {
                    "path": str(baseline.path),
                    "cached": baseline.cached,
                    "train_seconds": baseline.train_seconds,
                    "log_std": baseline.policy.log_std.detach().tolist(),
                }
                if method == "pretrained":
                    log("[pretrained] evaluating the SB3 policy")
                    result = evaluate(baseline.policy, config, protocol.num_steps)
                else:
                    log("[oracle] evaluating the SB3 policy without adaptation (step 0 only)")
                    result = flat_result(evaluate(baseline.policy, oracle_config(config), 0))
            result.setdefault("adapted", True)
            result["eval_seconds"] = time.perf_counter() - start
            results[name] = result
            returns = " / ".join(f"{s['mean_return']:.2f}" for s in result["steps"])
            when = "at 0 steps (no adaptation)" if method == "oracle" else f"after 0..{protocol.num_steps} steps"
            log(f"[{method}] return {when}: {returns}")
    finally:
        torch.set_num_threads(threads)
    lr = config.maml.inner_lr
    reference = rl_reference(config.env.id, horizon(config.env))
    return {
        "env_id": config.env.id,
        "horizon": horizon(config.env),
        "checkpoint": str(file),
        "protocol": {
            "num_tasks": protocol.num_tasks,
            "num_steps": protocol.num_steps,
            "episodes_per_step": episodes,
            "seed": seed,
            "inner_lr": lr,
            "step_sizes": inner_step_sizes(lr, protocol.num_steps, decay_after_first=True),
            "actions": "sampled from the Gaussian policy (as in training)",
            "torch_threads": 1,
        },
        "policy": asdict(config.policy),
        "sb3": {
            "settings": asdict(sb3),
            "rollout_steps_per_env": sb3.rollout_steps(),
            "minibatch_size": sb3.minibatch_size(),
            **sb3_info,
        },
        "methods": results,
        "paper_reference": {k: v[: protocol.num_steps + 1] for k, v in reference.items()},
        "output_dir": str(out),
    }


def report_markdown(data: Mapping[str, Any], figure: str) -> str:
    """The markdown report of :func:`run_benchmark`'s data: protocol, table, paper reference, baseline details.

    :func:`metarl.reporting.write_results` appends the command, commit, machine and date.
    """
    p, sb3 = data["protocol"], data["sb3"]
    settings = sb3["settings"]
    steps = ", ".join(f"{lr:g}" for lr in p["step_sizes"]) or "none"
    lines = [
        f"# MAML vs baselines on {data['env_id']} (horizon {data['horizon']})",
        "",
        f"Mean return ± 95% CI over {p['num_tasks']} fresh tasks (seed {p['seed']}), {p['episodes_per_step']} "
        f"trajectories per task and step, actions {p['actions']}. Every adapted method uses metarl's inner "
        f"loop (REINFORCE + linear baseline) with step sizes {steps}. Policy: {data['policy']['hidden_sizes']} "
        f"{data['policy']['activation']}. Evaluation and SB3 training ran on one torch thread.",
        "",
        markdown_table(data["methods"]),
        "",
    ]
    if any(r.get("adapted") is False for r in data["methods"].values()):
        lines += ["A method evaluated without adaptation (the oracle) has a number at 0 steps only (–: not run).", ""]
    if data["paper_reference"]:
        lines += [
            "Paper (Finn et al. 2017, read off the figure, ±10%): "
            + "; ".join(f"{k}: {' / '.join(f'{v:g}' for v in values)}" for k, values in data["paper_reference"].items())
            + ".",
            "",
        ]
    details = {
        "MAML": f"checkpoint `{data['checkpoint']}`.",
        "pretrained": (
            f"SB3 {settings['algo'].upper()} on the whole task distribution (new task every episode), "
            f"{settings['total_timesteps']} timesteps, {settings['n_envs']} envs x "
            f"{sb3['rollout_steps_per_env']} steps per rollout, lr {settings['learning_rate']:g}, "
            f"gae_lambda {settings['gae_lambda']:g}, seed {settings['seed']}; actor weights loaded into "
            f"metarl's policy, then adapted like MAML."
        ),
        "random": "the same architecture from a random initialisation (`build_policy`, the config's seed).",
        "oracle": (
            f"SB3 {settings['algo'].upper()} policy that sees the task (appended to the observation), "
            f"same budget; evaluated without adaptation (0 steps only; dashed line in the figure)."
        ),
    }
    for name in data["methods"]:
        key = name.lower()
        text = details.get(name, "")
        if key in sb3:
            info = sb3[key]
            how = "loaded from cache" if info["cached"] else "trained"
            text += (
                f" Model `{Path(info['path']).name}` ({how}; training took {info['train_seconds']:.0f} s); "
                f"learned std {', '.join(f'{math.exp(v):.3f}' for v in info['log_std'])}."
            )
        lines.append(f"- **{name}**: {text}")
    lines += ["", f"Figure: `{figure}`."]
    return "\n".join(lines)
