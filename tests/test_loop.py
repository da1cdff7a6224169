"""Fault injection on the training loop: nothing is lost, and every failure is one line.

Real processes (``python -m metarl train``) are interrupted with SIGINT and SIGTERM and killed
with SIGKILL at chosen points (mid-run, and in the middle of writing the first numbered
checkpoint, the first ``latest.pt`` and a later ``latest.pt``); checkpoints and metrics are
corrupted; two processes share a directory. In every case ``--resume`` must give parameters
bitwise identical to an uninterrupted run with the same seed and thread count.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from metarl.checkpoint import LATEST, load_checkpoint
from metarl.cli import main
from metarl.loop import read_metrics_rows

ITERATIONS = 30
TINY = [
    "maml.meta_batch_size=2",
    "maml.episodes_per_task=2",
    "env.horizon=10",
    "policy.hidden_sizes=[8]",
    "train.num_threads=1",  # bitwise identical parameters need the same thread count
    "train.checkpoint_every=10",
]
FLAGS = [f"--set={s}" for s in TINY] + ["--no-progress"]

# Runs the real command with torch.save stalled half-way through its Nth call (N from the environment):
# half the checkpoint is on disk in its temp file when the test kills the process.
STALL_NTH_SAVE = r"""
import io, os, sys, time
import torch
real_save, calls = torch.save, 0
def stalling_save(obj, f, *args, **kwargs):
    global calls
    calls += 1
    if calls == int(os.environ["STALL_AT"]):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        with (open(f, "wb") if isinstance(f, (str, os.PathLike)) else open(f.fileno(), "wb", closefd=False)) as out:
            out.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            out.flush()
        open(os.environ["STALLED"], "w").close()
        time.sleep(600)
    return real_save(obj, f, *args, **kwargs)
torch.save = stalling_save
from metarl.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(autouse=True)
def restore_torch_threads() -> Iterator[None]:
    """Training sets torch's thread count for the process; give the other tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """The parameters of an uninterrupted run of ``ITERATIONS`` iterations."""
    run = tmp_path_factory.mktemp("reference") / "run"
    threads = torch.get_num_threads()
    assert main(["train", "--run-dir", str(run), "--iterations", str(ITERATIONS), *FLAGS]) == 0
    torch.set_num_threads(threads)
    return load_checkpoint(run).policy.state_dict()


def identical(run: Path, reference: dict[str, torch.Tensor]) -> bool:
    """Whether the run's newest checkpoint is iteration ``ITERATIONS`` with bitwise the reference parameters."""
    checkpoint = load_checkpoint(run)
    weights = checkpoint.policy.state_dict()
    return checkpoint.iteration == ITERATIONS and all(torch.equal(weights[k], reference[k]) for k in reference)


def start(run: Path, *extra: str, stall_at: int | None = None) -> subprocess.Popen:
    """``python -m metarl train`` of ``ITERATIONS`` iterations into ``run`` (stderr to ``run.stderr``)."""
    command = ["-m", "metarl"] if stall_at is None else ["-c", STALL_NTH_SAVE]
    env = {**os.environ, "STALL_AT": str(stall_at or 0), "STALLED": str(run.with_suffix(".stalled"))}
    args = ["train", "--run-dir", str(run), "--iterations", str(ITERATIONS), *FLAGS, *extra]
    with open(run.with_suffix(".stderr"), "w") as err:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, *command, *args], stdout=subprocess.DEVNULL, stderr=err, env=env)


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen, timeout: float = 60) -> None:
    """Poll ``condition`` every millisecond until it holds; fail if the process exits first."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended (status {proc.returncode}) before the point to inject the fault"
        assert time.monotonic() < deadline, "timed out waiting for the point to inject the fault"
        time.sleep(0.001)


def stalled_in(run: Path, stem: str) -> Callable[[], bool]:
    """A condition: the stalled process is in the middle of writing ``stem`` (e.g. ``checkpoint_000001``):
    half its checkpoint is in a temp file. (A temp file alone may be a write that is about to complete.)"""

    def present() -> bool:
        if not run.with_suffix(".stalled").exists():
            return False
        temp = list((run / "checkpoints").glob(".*.tmp"))
        assert [p.name.split(".")[1] for p in temp] == [stem] and temp[0].stat().st_size > 0, temp
        return True

    return present


def resume(run: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """``metarl train --run-dir RUN --resume`` in this process; returns its stderr (it must succeed)."""
    capsys.readouterr()
    code = main(["train", "--run-dir", str(run), "--resume", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0, err
    return err


def metric_iterations(run: Path) -> list[int]:
    return [int(row["iteration"]) for row in read_metrics_rows(run / "metrics.jsonl")]


# --------------------------------------------------------------------------- signals


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_signal_checkpoints_and_resume_is_identical(
    tmp_path: Path, reference: dict, capsys: pytest.CaptureFixture[str], sig: signal.Signals, status: int
) -> None:
    run = tmp_path / "run"
    proc = start(run)
    wait_for(lambda: (run / "checkpoints" / "checkpoint_000001.pt").exists(), proc)
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == status
    err = run.with_suffix(".stderr").read_text()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and len(errors) == 1, err
    assert f"interrupted ({sig.name}) after iteration" in errors[0]
    assert f"continue with: metarl train --run-dir {run} --resume" in errors[0]
    stopped_at = load_checkpoint(run).iteration  # a checkpoint of the last completed iteration was written
    assert 1 <= stopped_at < ITERATIONS and f"checkpoint_{stopped_at:06d}.pt" in errors[0]
    assert metric_iterations(run) == list(range(stopped_at))
    assert not (run / ".lock").exists()
    err = resume(run, capsys)
    assert f"resuming from {run / 'checkpoints' / LATEST} (iteration {stopped_at})" in err
    assert identical(run, reference)
    assert metric_iterations(run) == list(range(ITERATIONS))


# --------------------------------------------------------------------------- kill -9


def test_kill_mid_run_then_resume_is_identical(tmp_path: Path, reference: dict, capsys) -> None:
    """kill -9 between checkpoints: the iterations after the last checkpoint are redone, identically;
    the lock the dead process left is taken over; TensorBoard shows every step once."""
    run = tmp_path / "run"
    proc = start(run)
    wait_for(lambda: (run / "checkpoints" / "checkpoint_000010.pt").exists(), proc)
    wait_for(lambda: max(metric_iterations(run) or [0]) >= 12, proc)  # some logged work after the checkpoint
    proc.kill()
    proc.wait(timeout=60)
    stopped_at = load_checkpoint(run).iteration
    assert stopped_at in (10, 20) and max(metric_iterations(run)) >= stopped_at and (run / ".lock").exists()
    err = resume(run, capsys)
    assert f"note: took over the stale lock {run / '.lock'} of process {proc.pid}, which is no longer running" in err
    assert identical(run, reference)
    assert metric_iterations(run) == list(range(ITERATIONS))
    assert tensorboard_steps(run) == list(range(ITERATIONS))


@pytest.mark.parametrize(
    ("stall_at", "stem", "resumed_from"),
    [
        (1, "checkpoint_000001", None),  # the first numbered checkpoint: nothing to resume from yet
        (2, "latest", "checkpoint_000001.pt"),  # the first latest.pt: checkpoint_000001.pt is complete
        (3, "checkpoint_000010", "latest.pt"),  # a later numbered checkpoint: latest.pt (iteration 1) is complete
        (4, "latest", "checkpoint_000010.pt"),  # a later latest.pt: the numbered one is newer than latest.pt
    ],
    ids=["first numbered write", "first latest write", "later numbered write", "later latest write"],
)
def test_kill_during_a_checkpoint_write_then_resume_is_identical(
    tmp_path: Path, reference: dict, capsys, stall_at: int, stem: str, resumed_from: str | None
) -> None:
    run = tmp_path / "run"
    proc = start(run, stall_at=stall_at)
    try:
        wait_for(stalled_in(run, stem), proc)  # half a checkpoint is in its temp file
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert list((run / "checkpoints").glob("*.tmp"))
    err = resume(run, capsys)
    assert "note: removed a partial checkpoint left by a killed writer: ." + stem in err
    if resumed_from is None:
        assert "has no checkpoint yet (the run stopped before its first one): starting at iteration 0" in err
    else:
        assert f"resuming from {run / 'checkpoints' / resumed_from}" in err
    assert identical(run, reference)
    assert not list((run / "checkpoints").glob("*.tmp"))
    assert metric_iterations(run) == list(range(ITERATIONS))


# --------------------------------------------------------------------------- damaged files


def partial_run(run: Path, iterations: int = 20) -> None:
    """A finished run of ``iterations`` iterations, trained in this process."""
    assert main(["train", "--run-dir", str(run), "--iterations", str(iterations), *FLAGS]) == 0


def resume_to_the_end(run: Path, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    code = main(["train", "--run-dir", str(run), "--resume", "--iterations", str(ITERATIONS), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0, err
    return err


def test_corrupt_latest_falls_back_to_the_newest_numbered_checkpoint(tmp_path: Path, reference: dict, capsys) -> None:
    run = tmp_path / "run"
    partial_run(run)
    latest = run / "checkpoints" / LATEST
    latest.write_bytes(latest.read_bytes()[:500])
    (run / "checkpoints" / "checkpoint_000020.pt").write_bytes(b"\0" * 100)  # and the newest numbered one
    err = resume_to_the_end(run, capsys)
    assert f"note: skipped unreadable checkpoint: {latest} is not a readable metarl checkpoint" in err
    assert f"resuming from {run / 'checkpoints' / 'checkpoint_000010.pt'} (iteration 10)" in err
    assert identical(run, reference)
    assert metric_iterations(run) == list(range(ITERATIONS))
    # the first process logged steps 10..19, the resumed one logged them again: TensorBoard shows them once
    assert tensorboard_steps(run) == list(range(ITERATIONS))


def test_torn_metrics_line_is_dropped_with_a_notice(tmp_path: Path, reference: dict, capsys) -> None:
    run = tmp_path / "run"
    partial_run(run)
    with open(run / "metrics.jsonl", "a") as f:  # a kill in the middle of appending iteration 20's row
        f.write('{"iteration": 20, "meta/return_pre": -3.')
    err = resume_to_the_end(run, capsys)
    assert f"note: dropped the torn last line 21 of {run / 'metrics.jsonl'}" in err
    assert identical(run, reference)
    assert metric_iterations(run) == list(range(ITERATIONS))


def test_a_torn_line_elsewhere_is_one_error_naming_file_and_line(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    partial_run(run, 3)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0], lines[1][:30], lines[2]]) + "\n")
    capsys.readouterr()
    assert main(["train", "--run-dir", str(run), "--resume", "--iterations", "4", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"error: {run / 'metrics.jsonl'} line 2 is not a metrics row" in err and "Traceback" not in err


# --------------------------------------------------------------------------- one run per directory


def test_a_second_process_on_the_same_directory_is_refused(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    proc = start(run, stall_at=2)  # holds the lock, stalled in its first latest.pt write
    try:
        wait_for(stalled_in(run, "latest"), proc)
        before = sorted((p.name, p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file())
        for extra in ([], ["--resume"], ["--overwrite"]):
            capsys.readouterr()
            assert main(["train", "--run-dir", str(run), "--iterations", "3", *FLAGS, *extra]) == 2
            err = capsys.readouterr().err
            errors = [line for line in err.splitlines() if line.startswith("error:")]
            assert errors == [
                f"error: run directory {run} is being written by process {proc.pid} (lock file {run / '.lock'}); "
                "wait for it to finish or use another --run-dir"
            ], err
        after = sorted((p.name, p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file())
        assert after == before  # --overwrite did not clear the live run
        assert (run / ".lock").read_text() == str(proc.pid)
    finally:
        proc.kill()
        proc.wait(timeout=60)


def test_two_concurrent_processes(tmp_path: Path) -> None:
    """Two real processes started together on one directory: one trains, the other refuses in one line
    (the lock if the first is still running, the finished run if not)."""
    run = tmp_path / "run"
    command = [sys.executable, "-m", "metarl", "train", "--run-dir", str(run), "--iterations", "5", *FLAGS]
    procs = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in "ab"]
    results = []
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        results.append((proc.returncode, err))
    (ok, _), (refused, err) = sorted(results)
    assert (ok, refused) == (0, 2), results
    assert "Traceback" not in err and len([x for x in err.splitlines() if x.startswith("error:")]) == 1, err
    assert "is being written by process" in err or "already holds a run" in err, err
    assert metric_iterations(run) == list(range(5)) and load_checkpoint(run).iteration == 5


def test_a_stale_lock_is_taken_over_with_a_notice(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    partial_run(run, 2)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / ".lock").write_text(dead.stdout.strip())
    capsys.readouterr()
    assert main(["train", "--run-dir", str(run), "--resume", "--iterations", "3", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"note: took over the stale lock {run / '.lock'} of process {dead.stdout.strip()}" in err
    assert load_checkpoint(run).iteration == 3 and not (run / ".lock").exists()


# --------------------------------------------------------------------------- checkpoint cadence


@pytest.mark.parametrize(
    ("every", "minutes", "expected"),
    [
        (2, 60.0, [1, 2, 4, 5]),  # after the first iteration, every 2, at the end
        (1000, 60.0, [1, 5]),  # a run shorter than checkpoint_every still checkpoints early
        (1000, 1e-9, [1, 2, 3, 4, 5]),  # the time interval alone (here: always due)
    ],
)
def test_checkpoint_cadence(tmp_path: Path, every: int, minutes: float, expected: list[int]) -> None:
    run = tmp_path / "run"
    flags = [*FLAGS, f"--set=train.checkpoint_every={every}", f"--set=train.checkpoint_minutes={minutes}"]
    assert main(["train", "--run-dir", str(run), "--iterations", "5", *flags]) == 0
    numbered = sorted(int(p.stem.split("_")[1]) for p in (run / "checkpoints").glob("checkpoint_*.pt"))
    assert numbered == expected


# --------------------------------------------------------------------------- TensorBoard


def tensorboard_steps(run: Path, tag: str = "meta/return_post") -> list[int]:
    """The steps TensorBoard shows for ``tag`` (it applies the purge markers written on resume)."""
    events = EventAccumulator(str(run))
    events.Reload()
    return [event.step for event in events.Scalars(tag)]


def test_tensorboard_reads_every_step_once_after_a_plain_resume(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    partial_run(run, 3)
    assert main(["train", "--run-dir", str(run), "--resume", "--iterations", "5", "--no-progress"]) == 0
    assert len(list(run.glob("events.out.tfevents*"))) == 2
    assert tensorboard_steps(run) == [0, 1, 2, 3, 4]
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["iteration"] == 4
