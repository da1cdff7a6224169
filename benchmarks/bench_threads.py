"""Thread settings benchmark: which torch thread counts make a short meta-training run fastest, and are they exact?

    python -m benchmarks.bench_threads [--config configs/navigation2d.yaml] [--set key=value ...]
        [--iterations 10] [--warmup 2] [--settings 1:1,2:1,2:2] [--conditions quiet,busy] [--repeats 2]
        [--seed 0] [--run-dir runs/bench_threads] [--results DIR] [--overwrite]

Each setting ``T:P`` is ``train.num_threads=T`` (torch intra-op threads of the learner) and ``P``
torch threads for the sampler's policy forwards. Every measurement is a fresh process training
the config for ``--warmup`` + ``--iterations`` meta-iterations into its own run directory under
``--run-dir``; the warm-up iterations are dropped and the rest give the median seconds per
meta-iteration and its split (sampling, advantages + inner steps, meta-update) from
``metrics.jsonl`` (:func:`metarl.reporting.timing_summary`). Conditions: ``quiet`` (nothing else
started by the benchmark) and ``busy`` (one other process spinning a Python loop on one core,
as on a shared machine). Repeats are interleaved (repeat 1 of every condition and setting,
then repeat 2, ..., the order of the settings rotated each repeat), so that the machine's
background load falls on every setting alike.

Determinism: every run has the same seed, so the final parameters of runs with the same
setting must be identical (whatever the load); the report says whether they are, and whether
runs with different thread counts end with identical parameters (and where their metrics
first differ). Writes ``threads.{md,json}`` to ``--results`` (default ``<run-dir>/results``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    CONFIGS,
    ROOT,
    BenchParser,
    add_config,
    add_results,
    command_line,
    log,
    make_parser,
    report,
    run_main,
)
from metarl.checkpoint import load_checkpoint
from metarl.cli import non_negative, positive
from metarl.config import Config, from_dict, load_config, to_dict
from metarl.errors import MetarlError, RunDirError
from metarl.loop import holds_run, run_training
from metarl.reporting import read_metrics, timing_summary, write_results

MODULE = "bench_threads"
CONDITIONS = ("quiet", "busy")
BUSY_LOOP = "while True:\n    pass\n"
WORKER = "import sys; from benchmarks.bench_threads import worker; sys.exit(worker(sys.argv[1:]))"


@dataclass(frozen=True)
class Setting:
    """A thread setting: the learner's torch threads (``train.num_threads``) and the sampler's policy threads."""

    threads: int
    policy_threads: int

    @property
    def label(self) -> str:
        """``T:P``."""
        return f"{self.threads}:{self.policy_threads}"


@dataclass
class Measurement:
    """One measurement run: its condition, setting, repeat, folder, wall time and timing summary."""

    condition: str
    setting: Setting
    repeat: int
    run_dir: Path
    wall_s: float = 0.0
    load_before: float = 0.0
    rows: list[dict[str, Any]] | None = None


def parse_settings(text: str) -> list[Setting]:
    """``"1:1,2:1"`` -> settings; each ``T:P`` with positive integers (``T`` alone means ``T:1``)."""
    settings = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        threads, _, policy = item.partition(":")
        try:
            setting = Setting(int(threads), int(policy or 1))
        except ValueError:
            raise MetarlError(f"--settings: {item!r} is not THREADS:POLICY_THREADS (e.g. 2:1)") from None
        if setting.threads < 1 or setting.policy_threads < 1:
            raise MetarlError(f"--settings: {item!r}: thread counts must be >= 1")
        if setting not in settings:
            settings.append(setting)
    if not settings:
        raise MetarlError(f"--settings names no setting: {text!r}")
    return settings


def parse_conditions(text: str) -> list[str]:
    """``"quiet,busy"`` -> the conditions, each one of :data:`CONDITIONS`."""
    conditions = [c.strip() for c in text.split(",") if c.strip()]
    bad = [c for c in conditions if c not in CONDITIONS]
    if not conditions or bad:
        raise MetarlError(f"--conditions must be a comma-separated subset of {', '.join(CONDITIONS)}, got {text!r}")
    return list(dict.fromkeys(conditions))


# --------------------------------------------------------------------------- the measured process


def worker(argv: Sequence[str]) -> int:
    """Train one measurement run (in its own process): ``CONFIG_JSON RUN_DIR POLICY_THREADS OVERWRITE``.

    Sets torch's threads to ``train.num_threads`` as :func:`metarl.trainer.train` does, and the
    sampler's policy threads to ``POLICY_THREADS``. Returns the exit status (one ``error:`` line on failure).
    """
    from metarl.trainer import PolicyGradientMAML

    config_json, run_dir, policy_threads, overwrite = argv
    try:
        config = from_dict(json.loads(config_json))
        torch.set_num_threads(config.train.num_threads)
        algorithm = PolicyGradientMAML(config)
        algorithm.sampler.policy_threads = int(policy_threads)
        run_training(config, Path(run_dir), algorithm, overwrite=overwrite == "1", progress=False, log=log)
    except MetarlError as exc:
        return report(str(exc), exc.exit_code, None)
    except ValueError as exc:
        return report(str(exc), 2, None)
    return 0


def measure(config: Config, m: Measurement, overwrite: bool) -> None:
    """Run measurement ``m`` in a fresh process (with a busy neighbour for the ``busy`` condition)."""
    config = from_dict({**to_dict(config), "train": {**to_dict(config)["train"], "num_threads": m.setting.threads}})
    busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if m.condition == "busy" else None
    try:
        if busy is not None:
            time.sleep(0.5)  # let the neighbour start spinning
        m.load_before = os.getloadavg()[0]
        start = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                WORKER,
                json.dumps(to_dict(config)),
                str(m.run_dir),
                str(m.setting.policy_threads),
                "1" if overwrite else "0",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        m.wall_s = time.perf_counter() - start
    finally:
        if busy is not None:
            busy.terminate()
            busy.wait()
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        last = lines[-1].removeprefix("error: ") if lines else f"exit status {done.returncode}"
        raise MetarlError(f"measurement run {m.run_dir} failed: {last}")
    m.rows = read_metrics(m.run_dir)


# --------------------------------------------------------------------------- analysis


def measured_rows(m: Measurement, warmup: int) -> list[dict[str, Any]]:
    """The rows of ``m`` after the warm-up iterations."""
    return [r for r in (m.rows or []) if int(r["iteration"]) >= warmup]


def parameters(run_dir: Path) -> dict[str, torch.Tensor]:
    """The final parameters of a run."""
    return load_checkpoint(run_dir).policy.state_dict()


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference between two parameter sets (0.0: bitwise identical)."""
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def first_differing_iteration(a: Measurement, b: Measurement) -> int | None:
    """The first iteration whose logged returns differ between two runs (``None``: none differ)."""
    keys = ("meta/return_pre", "meta/return_post", "outer/loss_before")
    for row_a, row_b in zip(a.rows or [], b.rows or []):
        if any(row_a.get(k) != row_b.get(k) for k in keys):
            return int(row_a["iteration"])
    return None


def determinism(runs: list[Measurement], settings: list[Setting]) -> dict[str, Any]:
    """Same setting => identical parameters? And do different settings end with identical parameters?"""
    params = {m.run_dir: parameters(m.run_dir) for m in runs}
    same: dict[str, dict[str, Any]] = {}
    for setting in settings:
        group = [m for m in runs if m.setting == setting]
        diffs = [max_difference(params[group[0].run_dir], params[m.run_dir]) for m in group[1:]]
        same[setting.label] = {
            "runs": len(group),
            "identical": all(d == 0.0 for d in diffs),
            "max_abs_difference": max(diffs, default=0.0),
        }
    across: dict[str, dict[str, Any]] = {}
    reference = next(m for m in runs if m.setting == settings[0])
    for setting in settings[1:]:
        other = next(m for m in runs if m.setting == setting)
        diff = max_difference(params[reference.run_dir], params[other.run_dir])
        across[f"{settings[0].label} vs {setting.label}"] = {
            "identical": diff == 0.0,
            "max_abs_difference": diff,
            "first_differing_iteration": first_differing_iteration(reference, other),
        }
    return {"same_setting": same, "across_settings": across}


def summarise(runs: list[Measurement], warmup: int) -> dict[str, dict[str, Any]]:
    """Per ``condition T:P``: the timing summary of all measured iterations of its repeats, and per-repeat medians."""
    out: dict[str, dict[str, Any]] = {}
    for m in runs:
        key = f"{m.condition} {m.setting.label}"
        entry = out.setdefault(
            key,
            {
                "condition": m.condition,
                "threads": m.setting.threads,
                "policy_threads": m.setting.policy_threads,
                "rows": [],
                "repeats": [],
            },
        )
        rows = measured_rows(m, warmup)
        entry["rows"] += rows
        entry["repeats"].append(
            {
                "repeat": m.repeat,
                "run_dir": str(m.run_dir),
                "wall_s": m.wall_s,
                "load_before": m.load_before,
                **timing_summary(rows),
            }
        )
    for entry in out.values():
        entry["timing"] = timing_summary(entry.pop("rows"))
    return out


def markdown(summary: dict[str, dict[str, Any]], det: dict[str, Any], config: Config, args: argparse.Namespace) -> str:
    """The timing table, the fastest setting per condition, and the determinism findings."""
    lines = [
        f"# Torch thread settings: {config.env.id} meta-training on {os.cpu_count()} cores",
        "",
        f"Each row: {args.repeats} fresh process(es) training {args.warmup} warm-up + {args.iterations} measured "
        f"meta-iterations ({config.maml.meta_batch_size} tasks x {config.maml.episodes_per_task} trajectories, "
        f"policy {config.policy.hidden_sizes} {config.policy.activation}, outer.curvature {config.outer.curvature}); "
        "median over all measured iterations of the repeats (per-repeat medians in brackets). "
        "busy: one other process spins a Python loop on one core during the run. train.num_threads 0 (torch's "
        f"default) means {torch.get_num_threads()} threads on this machine. **This machine is shared and noisy**: "
        "other jobs ran alongside (1-minute load average before each run in threads.json); repeats were interleaved "
        "so that the noise falls on every setting alike, and only differences well beyond the spread of the "
        "repeats mean anything.",
        "",
        "| condition | train.num_threads | sampler policy threads | s / meta-iteration | sampling s | "
        "advantages + inner steps s | meta-update s | learner share |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for entry in summary.values():
        t = entry["timing"]
        per_repeat = ", ".join(f"{r['median_s_per_iteration']:.2f}" for r in entry["repeats"])
        lines.append(
            f"| {entry['condition']} | {entry['threads']} | {entry['policy_threads']} | "
            f"**{t['median_s_per_iteration']:.2f}** ({per_repeat}) | {t['median_sampling_s']:.2f} | "
            f"{t['median_adapt_s']:.2f} | {t['median_learning_s']:.2f} | {t['learner_fraction']:.0%} |"
        )
    lines.append("")
    for condition, best in fastest(summary).items():
        lines.append(
            f"- fastest {condition}: train.num_threads={best['threads']}, sampler policy threads "
            f"{best['policy_threads']} ({best['timing']['median_s_per_iteration']:.2f} s / meta-iteration)"
        )
    lines += ["", "Determinism (same seed in every run):", ""]
    for label, d in det["same_setting"].items():
        verdict = "identical" if d["identical"] else f"NOT identical (max difference {d['max_abs_difference']:.3g})"
        lines.append(f"- setting {label}, {d['runs']} runs (every condition and repeat): final parameters {verdict}")
    for label, d in det["across_settings"].items():
        if d["identical"]:
            lines.append(f"- {label}: final parameters identical")
        else:
            lines.append(
                f"- {label}: final parameters differ (max difference {d['max_abs_difference']:.3g}; "
                f"logged metrics first differ at iteration {d['first_differing_iteration']})"
            )
    return "\n".join(lines)


def fastest(summary: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The fastest entry of each condition."""
    best: dict[str, dict[str, Any]] = {}
    for entry in summary.values():
        current = best.get(entry["condition"])
        if current is None or entry["timing"]["median_s_per_iteration"] < current["timing"]["median_s_per_iteration"]:
            best[entry["condition"]] = entry
    return best


# --------------------------------------------------------------------------- command line


def build_parser() -> BenchParser:
    """The command-line flags."""
    parser = make_parser(MODULE, __doc__)
    add_config(parser, CONFIGS / "navigation2d.yaml")
    parser.add_argument("--iterations", type=positive, default=10, help="measured meta-iterations per run (default 10)")
    parser.add_argument(
        "--warmup", type=non_negative, default=2, help="warm-up meta-iterations, not measured (default 2)"
    )
    parser.add_argument(
        "--settings",
        default="1:1,2:1,2:2",
        help="comma-separated THREADS:POLICY_THREADS settings (default 1:1,2:1,2:2); the first is "
        "the reference of the determinism comparison",
    )
    parser.add_argument("--conditions", default="quiet,busy", help="comma-separated subset of quiet,busy")
    parser.add_argument("--repeats", type=positive, default=2, help="runs per condition and setting (default 2)")
    parser.add_argument("--seed", type=non_negative, help="train.seed of every run (default: the config's)")
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=Path("runs") / "bench_threads",
        help="folder of the measurement runs (default: runs/bench_threads)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace measurement runs already in --run-dir")
    add_results(parser, "<run-dir>/results")
    return parser


def run(args: argparse.Namespace) -> int:
    """Measure every condition and setting (repeats interleaved), check determinism, write the report."""
    settings, conditions = parse_settings(args.settings), parse_conditions(args.conditions)
    extra = [
        f"train.iterations={args.warmup + args.iterations}",
        f"train.checkpoint_every={args.warmup + args.iterations}",
    ]
    extra += [f"train.seed={args.seed}"] if args.seed is not None else []
    config = load_config(args.config, [*args.set, *extra])
    if config.maml.loss != "pg":
        raise MetarlError("bench_threads measures policy-gradient MAML (maml.loss=pg)")
    plan = []
    for repeat in range(args.repeats):
        shift = repeat % len(settings)
        order = settings[shift:] + settings[:shift]
        for condition, setting in itertools.product(conditions, order):
            name = f"{condition}_t{setting.threads}p{setting.policy_threads}_r{repeat}"
            plan.append(Measurement(condition, setting, repeat, args.run_dir / name))
    taken = [m.run_dir for m in plan if m.run_dir.exists() and holds_run(m.run_dir)]
    if taken and not args.overwrite:
        raise RunDirError(f"{taken[0]} already holds a measurement run; use --overwrite or another --run-dir")
    log(
        f"{len(plan)} measurement runs of {args.warmup}+{args.iterations} iterations in {args.run_dir} "
        "(the machine is shared: timings are noisy)"
    )
    for i, m in enumerate(plan, 1):
        measure(config, m, args.overwrite)
        t = timing_summary(measured_rows(m, args.warmup))
        log(
            f"[{i}/{len(plan)}] {m.condition} {m.setting.label} repeat {m.repeat}: "
            f"{t['median_s_per_iteration']:.2f} s/iteration (wall {m.wall_s:.0f} s, load {m.load_before:.2f})"
        )
    summary = summarise(plan, args.warmup)
    det = determinism(plan, settings)
    text = markdown(summary, det, config, args)
    print(text)
    data = {
        "config": to_dict(config),
        "warmup": args.warmup,
        "iterations": args.iterations,
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "torch_default_threads": torch.get_num_threads(),
        "results": summary,
        "fastest": {c: f"{e['threads']}:{e['policy_threads']}" for c, e in fastest(summary).items()},
        "determinism": det,
    }
    out = args.results or args.run_dir / "results"
    md_path, js_path = write_results(out, "threads", text, data, command=command_line(MODULE, args.argv))
    log(f"wrote {md_path}, {js_path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit status (2 and one ``error:`` line for bad input)."""
    return run_main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
