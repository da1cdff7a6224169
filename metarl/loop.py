"""The one meta-training loop that every algorithm runs through.

An :class:`Algorithm` supplies what is specific to it: how to run one meta-iteration and
which scalars to log. Everything else lives here, once: the run directory (one run per
directory, a lock against a second writer), resume from the newest readable checkpoint,
the resolved config dump, TensorBoard and ``metrics.jsonl``, the progress bar, the
checkpoint cadence (after the first iteration, every ``train.checkpoint_every`` iterations,
every ``train.checkpoint_minutes``, at the end and on SIGINT/SIGTERM), and divergence
handling (a non-finite value or exploding parameters stop the run naming the iteration and
the last checkpoint that exists).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import torch
import yaml
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from metarl.checkpoint import (
    TEMP_SUFFIX,
    has_checkpoint,
    load_checkpoint,
    remove_stale_temp_files,
    save_checkpoint,
)
from metarl.classifier import Model
from metarl.config import Config, to_dict
from metarl.errors import CheckpointError, ConfigError, EnvError, MetarlError, RunDirError, TrainingDiverged

Log = Callable[[str], None]
LOCK = ".lock"
METRICS = "metrics.jsonl"
RUN_FILES = ("config.yaml", METRICS, "checkpoints")


class Interrupted(MetarlError):
    """SIGINT or SIGTERM stopped training after a checkpoint was written; exit 130 or 143."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class Algorithm:
    """One meta-training method as the loop sees it. Subclasses set ``policy`` (and ``optimizer``).

    ``policy`` is the meta-learned model: a Gaussian policy (RL, regression) or a classifier.
    """

    name = "algorithm"
    policy: Model
    optimizer: torch.optim.Optimizer | None = None
    progress_keys: dict[str, str] = {}
    """Metric key -> short label shown on the progress bar."""

    def iteration(self, it: int) -> dict[str, float] | None:
        """Run meta-iteration ``it``; return the scalars to log for it, or ``None`` to log nothing.

        Raise :class:`FloatingPointError` for a non-finite value (the loop stops the run).
        """
        raise NotImplementedError

    def extra_state(self) -> dict[str, Any]:
        """State beyond the policy and optimiser to checkpoint (tensors and plain data)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`extra_state` on resume."""

    def close(self) -> None:
        """Release resources (env workers)."""


@dataclass
class TrainResult:
    """Where a run left its outputs."""

    run_dir: Path
    checkpoint: Path
    policy: Model
    iteration: int


def _stderr(message: str) -> None:
    import sys

    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- run directory


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` already holds (part of) a metarl run."""
    return any((run_dir / name).exists() for name in RUN_FILES) or any(run_dir.glob("events.out.tfevents*"))


def clear_run(run_dir: Path) -> None:
    """Remove a run's outputs from ``run_dir`` (config, metrics, event files, checkpoints); other files stay."""
    for name in RUN_FILES:
        target = run_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    for event in run_dir.glob("events.out.tfevents*"):
        event.unlink()


def _read_pid(fd: int) -> int:
    """The pid written in an open lock file (0 if none)."""
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        return int(os.read(fd, 32).decode().strip() or "0")
    except ValueError:
        return 0


@contextmanager
def run_lock(run_dir: Path, log: Log) -> Iterator[None]:
    """Hold ``run_dir/.lock`` for the block: an exclusive ``flock`` with this process's pid written in it.

    The kernel releases the lock when its holder dies (even by kill -9), so a lock file left behind
    is stale by construction: it is taken over with a notice naming the dead holder's pid. A live
    holder makes this an error naming its pid (no pid-reuse false positives, unlike a pid check).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK
    try:
        fcntl = importlib.import_module("fcntl")
    except ImportError:  # not POSIX (Windows): no flock; run unlocked rather than not at all
        log(f"note: no file locking on this platform: nothing stops a second process writing {run_dir}")
        yield
        return
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_pid(fd)
            os.close(fd)
            raise RunDirError(
                f"run directory {run_dir} is being written by process {holder or 'unknown'} (lock file {lock}); "
                "wait for it to finish or use another --run-dir"
            ) from None
        try:  # the previous holder may have removed the file between our open and our flock: retry then
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    previous = _read_pid(fd)
    if previous and previous != os.getpid():
        log(f"note: took over the stale lock {lock} of process {previous}, which is no longer running")
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, str(os.getpid()).encode())
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


# --------------------------------------------------------------------------- metrics


def read_metrics_rows(path: Path, log: Log | None = None) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl``; a torn (unparseable) *last* line is dropped with a notice,
    a bad line elsewhere is an error naming the file and line."""
    if not path.is_file():
        return []
    lines = path.read_text(errors="replace").splitlines()
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or "iteration" not in row:
                raise ValueError("not a metrics row")
        except ValueError as exc:
            if number == len(lines):
                if log is not None:
                    log(f"note: dropped the torn last line {number} of {path}")
                break
            raise MetarlError(f"{path} line {number} is not a metrics row ({exc})") from None
        rows.append(row)
    return rows


def truncate_metrics(run_dir: Path, iteration: int, log: Log) -> None:
    """On resume: keep only ``metrics.jsonl`` rows of iterations < ``iteration`` (rewritten atomically)."""
    path = run_dir / METRICS
    if not path.is_file():
        return
    rows = [r for r in read_metrics_rows(path, log) if int(r["iteration"]) < iteration]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)


def log_metrics(writer: SummaryWriter, run_dir: Path, iteration: int, metrics: dict[str, float]) -> None:
    """Write scalars to TensorBoard and append them to ``metrics.jsonl``."""
    for key, value in metrics.items():
        writer.add_scalar(key, value, iteration)
    with open(run_dir / METRICS, "a") as f:
        f.write(json.dumps({"iteration": iteration, **metrics}) + "\n")


def describe_values(config: Config) -> str:
    """Hyperparameters as a markdown table (logged to TensorBoard as text)."""
    rows = ["| key | value |", "|---|---|"]
    for section, values in to_dict(config).items():
        rows += [f"| {section}.{k} | {v} |" for k, v in values.items()]
    return "\n".join(rows)


# --------------------------------------------------------------------------- signals


class _StopRequest:
    """SIGINT/SIGTERM handler: the first signal asks the loop to stop after the iteration in flight,
    a second one abandons it at once."""

    def __init__(self, log: Log) -> None:
        self.signum: int | None = None
        self.log = log
        self.previous: dict[int, Any] = {}

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        try:
            self.log(
                f"\n{signal.Signals(signum).name}: stopping after the current iteration "
                "(send it again to abandon the iteration)"
            )
        except RuntimeError:  # the signal arrived inside a write to the same stream (reentrant call)
            pass

    def __enter__(self) -> _StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, self)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


# --------------------------------------------------------------------------- the loop


def param_norm(policy: Model) -> float:
    """L2 norm of all parameters."""
    with torch.no_grad():
        return float(torch.linalg.vector_norm(torch.cat([p.reshape(-1) for p in policy.parameters()])))


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Checks that need no lock: flags that contradict, a path that is a file, nothing to resume."""
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite contradict each other: choose one")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} is a file, not a directory")
    if resume and not (has_checkpoint(run_dir) or (run_dir / "config.yaml").is_file()):
        raise RunDirError(f"nothing to resume in {run_dir}: it holds no run (start a new run without --resume)")


def claim_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Under the lock: refuse a directory holding another run unless overwriting; clear it for ``overwrite``."""
    if holds_run(run_dir):
        if not overwrite:
            raise RunDirError(
                f"run directory {run_dir} already holds a run; "
                "continue it with --resume, or replace it with --overwrite"
            )
        clear_run(run_dir)


def run_training(
    config: Config,
    run_dir: Path,
    algorithm: Algorithm,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    log: Log = _stderr,
) -> TrainResult:
    """Meta-train ``algorithm`` for ``train.iterations`` iterations, writing everything under ``run_dir``.

    With ``resume``, continue from the newest readable checkpoint in ``run_dir`` (from iteration 0
    if the run stopped before its first checkpoint): iteration ``it`` draws from generators derived
    from ``(seed, it)``, so the resumed run follows the uninterrupted one exactly (same thread
    count). Raises :class:`TrainingDiverged` (exit 3) for a non-finite value or exploding
    parameters, :class:`Interrupted` after SIGINT/SIGTERM (a checkpoint of the last completed
    iteration is written first), :class:`RunDirError` for a directory that holds another run or
    that another process is writing.
    """
    run_dir = Path(run_dir)
    try:
        prepare_run_dir(run_dir, resume, overwrite)
        with run_lock(run_dir, log):
            if not resume:
                claim_run_dir(run_dir, overwrite)
            return _train_locked(config, run_dir, run_dir / "checkpoints", algorithm, resume, progress, log)
    finally:
        algorithm.close()


def _write_config(run_dir: Path, config: Config) -> None:
    """Write the resolved ``config.yaml`` atomically (a kill never leaves half a config to resume from)."""
    path = run_dir / "config.yaml"
    tmp = path.with_name(f".{path.name}{TEMP_SUFFIX}")
    tmp.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    os.replace(tmp, path)


def _wait_to_sort_after_event_files(run_dir: Path) -> None:
    """Make a new event file sort after the run's existing ones (wait up to a second).

    TensorBoard reads a run's event files in name order, and a name starts with its creation
    second, then host and pid: a resume within the same second as the killed run's start could
    sort first, and the purge marker it holds would then drop nothing.
    """
    seconds = [
        int(p.name.split(".")[3]) for p in run_dir.glob("events.out.tfevents.*") if p.name.split(".")[3].isdigit()
    ]
    if seconds and max(seconds) + 1 > time.time():
        time.sleep(max(seconds) + 1 - time.time())


def _train_locked(
    config: Config, run_dir: Path, ckpt_dir: Path, algorithm: Algorithm, resume: bool, progress: bool, log: Log
) -> TrainResult:
    start = 0
    last: Path | None = None
    if resume:
        for stale in remove_stale_temp_files(ckpt_dir):
            log(f"note: removed a partial checkpoint left by a killed writer: {stale.name}")
        if has_checkpoint(run_dir):
            checkpoint = load_checkpoint(run_dir)
            for line in checkpoint.skipped:
                log(f"note: skipped unreadable checkpoint: {line}")
            _restore(algorithm, checkpoint.policy.state_dict(), checkpoint.optimizer, checkpoint.extra, checkpoint.path)
            start, last = checkpoint.iteration, checkpoint.path
            log(f"resuming from {checkpoint.path} (iteration {start})")
        else:
            log(
                f"note: {run_dir} has no checkpoint yet (the run stopped before its first one): starting at iteration 0"
            )
        truncate_metrics(run_dir, start, log)
    _write_config(run_dir, config)

    def save(done: int) -> Path:
        return save_checkpoint(ckpt_dir, algorithm.policy, config, done, algorithm.optimizer, algorithm.extra_state())

    t = config.train
    if start >= t.iterations:
        return TrainResult(run_dir, last or save(start), algorithm.policy, start)
    if resume:
        _wait_to_sort_after_event_files(run_dir)
    # purge_step: TensorBoard drops the steps >= start that the earlier process logged (no duplicates)
    writer = SummaryWriter(str(run_dir), purge_step=start if resume else None)
    if start == 0:
        writer.add_text("hyperparameters", describe_values(config))
    bar = tqdm(
        range(start, t.iterations),
        initial=start,
        total=t.iterations,
        unit="it",
        desc=f"meta-train {algorithm.name}",
        disable=not progress,
        dynamic_ncols=True,
    )
    last_save = time.monotonic()
    done = start
    stop = _StopRequest(log)
    try:
        with stop:
            for it in bar:
                metrics = _one_iteration(algorithm, it, last, config)
                done = it + 1
                if metrics is not None:
                    log_metrics(writer, run_dir, it, metrics)
                    labels = algorithm.progress_keys.items()
                    bar.set_postfix({label: f"{metrics[key]:.3g}" for key, label in labels if key in metrics})
                signum = stop.signum  # read once: a signal arriving below is handled after the next iteration
                due = (
                    done == start + 1
                    or done % t.checkpoint_every == 0
                    or done == t.iterations
                    or time.monotonic() - last_save >= 60 * t.checkpoint_minutes
                    or signum is not None
                )
                if due:
                    writer.flush()  # TensorBoard up to the checkpoint is on disk too (a kill -9 loses no earlier step)
                    last, last_save = save(done), time.monotonic()
                if signum is not None and done < t.iterations:
                    raise Interrupted(
                        f"interrupted ({signal.Signals(signum).name}) after iteration {done}; checkpoint {last}; "
                        f"continue with: metarl train --run-dir {run_dir} --resume",
                        signum,
                    )
    except KeyboardInterrupt:
        where = f"the last checkpoint is {last}" if last else "no checkpoint was written"
        raise Interrupted(
            f"interrupted during iteration {done}, which was abandoned; {where}; "
            f"continue with: metarl train --run-dir {run_dir} --resume",
            stop.signum or signal.SIGINT,
        ) from None
    finally:
        bar.close()
        writer.close()
    assert last is not None
    return TrainResult(run_dir, last, algorithm.policy, done)


def _restore(
    algorithm: Algorithm, weights: dict[str, Any], optimizer: dict[str, Any] | None, extra: dict[str, Any], path: Path
) -> None:
    """Load a checkpoint's state into a freshly built algorithm (one error line for a config of another shape)."""
    try:
        algorithm.policy.load_state_dict(weights)
    except RuntimeError:
        shapes = {k: tuple(v.shape) for k, v in weights.items()}
        raise ConfigError(
            f"the config's policy does not match the checkpoint {path} (its parameters: {shapes}); "
            "resume with the run's own config.yaml"
        ) from None
    if algorithm.optimizer is not None:
        if optimizer is None:
            raise CheckpointError(
                f"{path} has no optimiser state, which {algorithm.name} needs to resume "
                "(it was written by a run without one)"
            )
        try:
            algorithm.optimizer.load_state_dict(optimizer)
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"{path}: its optimiser state does not fit {algorithm.name} ({exc})") from None
    algorithm.load_extra_state(extra)


def _one_iteration(algorithm: Algorithm, it: int, last: Path | None, config: Config) -> dict[str, float] | None:
    """Run iteration ``it``; turn non-finite values, exploding parameters and env failures into one-line errors."""
    where = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
    try:
        metrics = algorithm.iteration(it)
    except FloatingPointError as exc:
        raise TrainingDiverged(f"iteration {it}: {exc}; stopped, {where}") from exc
    except EnvError as exc:
        raise EnvError(f"iteration {it}: {exc}; {where}") from exc
    norm = param_norm(algorithm.policy)
    if not math.isfinite(norm) or norm > config.outer.max_param_norm:
        raise TrainingDiverged(
            f"iteration {it}: the meta-update made the parameters explode (L2 norm {norm:.3g} > "
            f"outer.max_param_norm={config.outer.max_param_norm:g}); stopped, {where}"
        )
    if metrics is not None:
        bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
        if bad:
            raise TrainingDiverged(f"iteration {it}: non-finite {', '.join(sorted(bad))}; stopped, {where}")
    return metrics
