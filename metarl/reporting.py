"""Shared pieces of the benchmark scripts: machine description and writing result tables."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def machine_description() -> str:
    """One line naming the CPU, core count, Python and torch versions and torch threads."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads"
    )


def env_slug(env_id: str) -> str:
    """A short file-name-safe name of an env id: ``metarl/HalfCheetahVel-v0`` -> ``halfcheetahvel``
    (a ``module:`` prefix is dropped)."""
    name = env_id.split(":")[-1].split("/")[-1].split("-v")[0]
    return "".join(c for c in name.lower() if c.isalnum())


def json_default(value: Any) -> Any:
    """JSON for what ``json`` cannot write itself: numpy arrays and scalars, tensors, paths, sets."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"cannot write a {type(value).__name__} to JSON")


def to_json(data: Any) -> str:
    """``data`` as indented JSON; numpy arrays and scalars in task values and results are converted."""
    return json.dumps(data, indent=2, default=json_default)


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as JSON to ``path`` atomically (creating its directory); return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = to_json(data)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def git_commit() -> str:
    """The current commit of the working tree metarl runs from (``unknown`` outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def write_results(
    results_dir: Path, name: str, markdown: str, data: dict[str, Any], command: str | None = None
) -> tuple[Path, Path]:
    """Write ``name.md`` and ``name.json`` under ``results_dir``.

    Each records the command, the commit, the date and the machine.
    """
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d %H:%M")
    command = command or data.get("command") or " ".join(["python", *sys.argv])
    commit, machine = git_commit(), machine_description()
    md = results_dir / f"{name}.md"
    md.write_text(f"{markdown}\n\nCommand: `{command}`. Commit: {commit}. Machine: {machine}. Date: {stamp}.\n")
    js = write_json(
        results_dir / f"{name}.json", {**data, "command": command, "commit": commit, "machine": machine, "date": stamp}
    )
    return md, js


def timing_summary(rows: list[dict[str, float]]) -> dict[str, float]:
    """Median seconds per meta-iteration, its split and the summed iteration time (``metrics.jsonl`` rows).

    The split: sampling (env steps and policy forwards), adapt (advantages and the inner steps
    between samplings; rows logged before this key existed counted it as sampling) and the
    meta-update; ``learner_fraction`` is the median share of adapt + meta-update.
    ``total_iteration_s`` adds up every logged iteration, across resumed invocations too: the
    training time without start-up, checkpoint writing and logging.
    """
    sampling = [r["perf/time_sampling_s"] for r in rows]
    adapt = [r.get("perf/time_adapt_s", 0.0) for r in rows]
    learning = [r["perf/time_learning_s"] for r in rows]
    total = [s + a + lr for s, a, lr in zip(sampling, adapt, learning)]
    return {
        "iterations": len(rows),
        "total_iteration_s": sum(total),
        "median_s_per_iteration": statistics.median(total),
        "median_sampling_s": statistics.median(sampling),
        "median_adapt_s": statistics.median(adapt),
        "median_learning_s": statistics.median(learning),
        "learner_fraction": statistics.median((a + lr) / t for a, lr, t in zip(adapt, learning, total)),
    }


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """The rows of a run directory's ``metrics.jsonl``, one per logged meta-iteration."""
    from metarl.loop import read_metrics_rows

    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.jsonl in {run_dir}")
    return read_metrics_rows(path)


def paired_difference(
    rows_a: list[dict[str, float]], rows_b: list[dict[str, float]], key: str, first: int = 0, last: int | None = None
) -> dict[str, float]:
    """Mean and standard error of ``B - A`` for ``key`` over the iterations both runs logged (in ``[first, last]``).

    Two runs with the same ``train.seed`` draw the same tasks and noise seeds at the same
    iteration, so the per-iteration difference cancels the task draw, which dominates the
    spread of a single run's curve (e.g. HalfCheetahVel's mean goal velocity per batch).
    """
    a = {int(r["iteration"]): r[key] for r in rows_a if key in r}
    b = {int(r["iteration"]): r[key] for r in rows_b if key in r}
    common = sorted(i for i in a.keys() & b.keys() if i >= first and (last is None or i <= last))
    if len(common) < 2:
        raise ValueError(f"the runs share {len(common)} logged iterations of {key!r} in the range; need at least 2")
    diffs = [b[i] - a[i] for i in common]
    return {
        "iterations": len(common),
        "first": common[0],
        "last": common[-1],
        "mean": statistics.mean(diffs),
        "se": statistics.stdev(diffs) / len(diffs) ** 0.5,
    }
