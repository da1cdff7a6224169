"""The ``metarl`` command: every bad input of the reliability issue ends as one ``error:`` line.

Each row of :data:`ROWS` runs through :func:`metarl.cli.main` (the code the console script and
``python -m metarl`` run) and checks the exit status (2 for bad input, 3 for a diverged run),
that stderr holds exactly one ``error:`` line naming the thing, and no traceback. A few rows
also run through the real entry point in a subprocess.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import pytest
import torch

from metarl.cli import main

TINY = [
    "maml.meta_batch_size=2",
    "maml.episodes_per_task=2",
    "env.horizon=10",
    "policy.hidden_sizes=[8]",
    "train.num_threads=1",
]
FLAGS = [f"--set={s}" for s in TINY] + ["--no-progress"]
FAULTY = f"{__name__}:clitest/Faulty-v0"


# --------------------------------------------------------------------------- a third-party env that fails


class Faulty(gymnasium.Env):
    """A point on a line (goal ~ U[-1, 1]) that raises, or returns a NaN observation, after ``fail_after``
    steps of its life (every sub-env counts its own steps; 20 per iteration at horizon 10)."""

    def __init__(self, fail_after: int = 3, mode: str = "raise") -> None:
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.action_space = gymnasium.spaces.Box(-1, 1, (1,), np.float32)
        self.task: dict[str, float] = {"goal": 0.0}
        self.fail_after, self.mode, self.steps, self.x = fail_after, mode, 0, 0.0

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[dict[str, float]]:
        return [{"goal": float(g)} for g in rng.uniform(-1, 1, n)]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.x = 0.0
        return np.array([self.x], np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.steps += 1
        if self.steps > self.fail_after and self.mode == "raise":
            raise RuntimeError(f"simulator blew up at its step {self.steps}")
        self.x += float(np.clip(action[0], -0.1, 0.1))
        obs = np.array([np.nan if self.steps > self.fail_after else self.x], np.float32)
        return obs, -abs(self.x - self.task["goal"]), False, False, {}


if "clitest/Faulty-v0" not in gymnasium.registry:
    gymnasium.register("clitest/Faulty-v0", entry_point=Faulty, max_episode_steps=10)


# --------------------------------------------------------------------------- the table


@dataclass
class Row:
    """One bad input: the command (``{tmp}`` is the row's directory, ``{run}`` a finished 1-iteration run
    there), its exit status and what its one error line must name."""

    id: str
    argv: list[str]
    code: int
    names: list[str]
    setup: Callable[[Path], None] | None = None
    check: Callable[[str], None] | None = None
    flags: list[str] = field(default_factory=lambda: list(FLAGS))


def write(name: str, text: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / name).write_text(text)

    return setup


def truncated_checkpoint(tmp: Path) -> None:
    latest = tmp / "run" / "checkpoints" / "latest.pt"
    (tmp / "truncated.pt").write_bytes(latest.read_bytes()[:1000])


def foreign_torch_file(tmp: Path) -> None:
    torch.save({"model": {"weight": torch.zeros(2)}}, tmp / "foreign.pt")


def names_an_existing_checkpoint(line: str) -> None:
    match = re.search(r"the last good checkpoint is (\S+\.pt)", line)
    assert match and Path(match.group(1)).is_file(), line


def empty_dir(tmp: Path) -> None:
    (tmp / "empty").mkdir()


def train(*overrides: str, run: str = "{tmp}/r") -> list[str]:
    """``train --run-dir RUN --set O ...``."""
    return ["train", "--run-dir", run, *[arg for o in overrides for arg in ("--set", o)]]


def evaluate(path: str) -> list[str]:
    """``evaluate --run-dir PATH``."""
    return ["evaluate", "--run-dir", path]


ROWS = [
    # run directories
    Row("existing run dir", train(run="{run}"), 2, ["{run}", "already holds a run", "--resume", "--overwrite"]),
    Row("resume with nothing to resume", [*train(run="{tmp}/none"), "--resume"], 2, ["nothing to resume", "/none"]),
    Row("resume an empty dir", [*train(run="{tmp}/empty"), "--resume"], 2, ["nothing to resume"], empty_dir),
    Row("resume without --run-dir", ["train", "--resume"], 2, ["--resume needs --run-dir"]),
    Row("resume and overwrite", [*train(run="{run}"), "--resume", "--overwrite"], 2, ["contradict"]),
    Row("run dir is a file", train(run="{tmp}/f"), 2, ["{tmp}/f", "is a file"], write("f", "x")),
    # config values
    Row("inner_lr .inf", train("maml.inner_lr=.inf"), 2, ["'maml.inner_lr'", "inf"]),
    Row("inner_lr nan", train("maml.inner_lr=.nan"), 2, ["'maml.inner_lr'", "nan"]),
    Row("max_kl .inf", train("outer.max_kl=.inf"), 2, ["'outer.max_kl'", "inf"]),
    Row("not a float", train("maml.inner_lr=abc"), 2, ["'maml.inner_lr'", "'abc'"]),
    Row("unknown key", train("maml.inner_rl=0.1"), 2, ["'maml.inner_rl'", "unknown key"]),
    Row("override syntax", train("inner_lr"), 2, ["'inner_lr'", "section.key=value"]),
    # config files
    Row("missing config", ["train", "--config", "{tmp}/no.yaml"], 2, ["config file not found", "{tmp}/no.yaml"]),
    Row(
        "malformed YAML",
        ["train", "--config", "{tmp}/bad.yaml"],
        2,
        ["{tmp}/bad.yaml", "not valid YAML", "line 2"],
        write("bad.yaml", "maml: [1, 2\n"),
    ),
    Row(
        "YAML plain string",
        ["train", "--config", "{tmp}/s.yaml"],
        2,
        ["{tmp}/s.yaml", "mapping of sections", "str"],
        write("s.yaml", '"just a string"\n'),
    ),
    Row(
        "YAML section not a mapping",
        ["config", "--config", "{tmp}/m.yaml"],
        2,
        ["'maml'", "mapping"],
        write("m.yaml", "maml: 0.1\n"),
        flags=[],
    ),
    # envs
    Row("misspelt env kwarg", train("env.kwargs.no_such_kwarg=1"), 2, ["env.kwargs", "no_such_kwarg"]),
    Row("env without task protocol", train("env.id=Pendulum-v1"), 2, ["env.id", "task protocol", "sample_tasks"]),
    Row("unknown env id", train("env.id=metarl/NoSuchEnv-v0"), 2, ["env.id", "NoSuchEnv"]),
    Row("env module not importable", train("env.id=no_such_pkg:x/Y-v0"), 2, ["no_such_pkg"]),
    Row(
        "env raises in step",
        train(f"env.id={FAULTY}"),
        2,
        ["clitest/Faulty-v0", "iteration 0", "task", "step", "simulator blew up", "no checkpoint was written yet"],
    ),
    Row(
        "env raises after a checkpoint",
        train(f"env.id={FAULTY}", "env.kwargs.fail_after=45"),  # 20 steps per iteration: fails in iteration 2
        2,
        ["clitest/Faulty-v0", "iteration 2", "simulator blew up", "checkpoint_000001.pt"],
        check=names_an_existing_checkpoint,
    ),
    Row(
        "env returns NaN",
        train(f"env.id={FAULTY}", "env.kwargs.mode=nan"),
        2,
        ["clitest/Faulty-v0", "iteration 0", "non-finite observation", "task"],
    ),
    # resume with another config
    Row(
        "resume with another shape",
        [*train("policy.hidden_sizes=[4]", run="{run}"), "--resume"],
        2,
        ["does not match the checkpoint", "{run}"],
    ),
    Row(
        "resume a TRPO run with Adam",
        [*train("outer.optimizer=adam", run="{run}"), "--resume"],
        2,
        ["{run}", "no optimiser state"],
    ),
    # checkpoints
    Row(
        "evaluate truncated",
        evaluate("{tmp}/truncated.pt"),
        2,
        ["{tmp}/truncated.pt", "truncated"],
        truncated_checkpoint,
        flags=[],
    ),
    Row(
        "evaluate text file",
        evaluate("{tmp}/notes.pt"),
        2,
        ["{tmp}/notes.pt", "not a torch file"],
        write("notes.pt", "hello\n"),
        flags=[],
    ),
    Row(
        "evaluate foreign torch file",
        evaluate("{tmp}/foreign.pt"),
        2,
        ["{tmp}/foreign.pt", "not a metarl checkpoint"],
        foreign_torch_file,
        flags=[],
    ),
    Row("evaluate missing path", evaluate("{tmp}/gone"), 2, ["{tmp}/gone", "no such file"], flags=[]),
    Row("evaluate dir without checkpoint", evaluate("{tmp}/empty"), 2, ["no checkpoint in"], empty_dir, flags=[]),
    # divergence
    Row(
        "NaN at iteration 0",
        train("maml.inner_lr=1e30"),
        3,
        ["iteration 0", "actions are not finite", "maml.inner_lr", "no checkpoint was written yet"],
    ),
    Row(
        "Adam lr 1e30",
        train("outer.optimizer=adam", "outer.lr=1e30"),
        3,
        ["iteration 0", "outer.max_param_norm", "no checkpoint was written yet"],
    ),
    Row(
        "NaN after a checkpoint",
        [*train("maml.inner_lr=1e30", run="{run}"), "--resume", "--iterations", "3"],
        3,
        ["iteration 1", "the last good checkpoint is"],
        check=names_an_existing_checkpoint,
    ),
]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 1-iteration run (copied into each row's directory)."""
    run = tmp_path_factory.mktemp("base") / "run"
    threads = torch.get_num_threads()
    assert main(["train", "--run-dir", str(run), "--iterations", "1", *FLAGS]) == 0
    torch.set_num_threads(threads)
    return run


@pytest.fixture(autouse=True)
def restore_torch_threads() -> Iterator[None]:
    """Training sets torch's thread count for the process; give the other tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def prepare(row: Row, tmp: Path, finished_run: Path) -> list[str]:
    """Set up the row's files; return its command line with the placeholders filled in."""
    shutil.copytree(finished_run, tmp / "run")
    if row.setup is not None:
        row.setup(tmp)
    command, *rest = row.argv
    return [a.format(tmp=tmp, run=tmp / "run") for a in [command, *row.flags, *rest]]  # the row's --set wins


def the_error_line(row: Row, code: int, out: str, err: str, tmp: Path) -> str:
    """Check exit status, one ``error:`` line naming the row's things, no traceback; return the line."""
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == row.code, (code, err)
    assert len(errors) == 1, err
    assert "Traceback" not in err and "Traceback" not in out, err
    for name in row.names:
        assert name.format(tmp=tmp, run=tmp / "run") in errors[0], (name, errors[0])
    if row.check is not None:
        row.check(errors[0])
    return errors[0]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input_is_one_error_line(row: Row, tmp_path: Path, finished_run: Path, capsys) -> None:
    argv = prepare(row, tmp_path, finished_run)
    code = main(argv)
    captured = capsys.readouterr()
    the_error_line(row, code, captured.out, captured.err, tmp_path)


SUBPROCESS_ROWS = [
    "existing run dir",
    "malformed YAML",
    "misspelt env kwarg",
    "evaluate truncated",
    "NaN at iteration 0",
]


@pytest.mark.parametrize("row", [r for r in ROWS if r.id in SUBPROCESS_ROWS], ids=SUBPROCESS_ROWS)
def test_the_real_entry_point(row: Row, tmp_path: Path, finished_run: Path) -> None:
    """``python -m metarl`` (the console script's code) in a fresh process: same status, same one line."""
    argv = prepare(row, tmp_path, finished_run)
    proc = subprocess.run(
        [sys.executable, "-m", "metarl", *argv], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    the_error_line(row, proc.returncode, proc.stdout, proc.stderr, tmp_path)


def test_debug_shows_the_traceback(tmp_path: Path, finished_run: Path, capsys) -> None:
    row = ROWS[0]
    assert main([*prepare(row, tmp_path, finished_run), "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "RunDirError" in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1


@pytest.mark.parametrize(("text", "value"), [("1e-3", "0.001"), ("1E5", "100000.0"), (".5", "0.5")])
def test_float_spellings_are_accepted(tmp_path: Path, capsys, text: str, value: str) -> None:
    """``1e-3`` was rejected as "not a float" (YAML 1.1 reads it as a string)."""
    assert main(["config", "--set", f"maml.inner_lr={text}"]) == 0
    assert f"  inner_lr: {value}  #" in capsys.readouterr().out
    (tmp_path / "c.yaml").write_text(f"maml:\n  inner_lr: {text}\nouter:\n  max_kl: {text}\n")
    assert main(["config", "--config", str(tmp_path / "c.yaml")]) == 0
    out = capsys.readouterr().out
    assert f"  inner_lr: {value}  #" in out and f"  max_kl: {value}  #" in out


@pytest.mark.parametrize("text", ["1e-3", ".5"])
def test_float_spellings_train(tmp_path: Path, capsys, text: str) -> None:
    argv = ["train", "--run-dir", str(tmp_path / "r"), "--iterations", "1", "--set", f"maml.inner_lr={text}", *FLAGS]
    assert main(argv) == 0
    assert "error" not in capsys.readouterr().err


def test_overwrite_replaces_the_run(tmp_path: Path, finished_run: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "notes.txt").write_text("mine")
    assert main(["train", "--run-dir", str(run), "--iterations", "2", "--overwrite", *FLAGS]) == 0
    assert len(list(run.glob("events.out.tfevents*"))) == 1
    assert [line.count('"iteration"') for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 1]
    assert (run / "notes.txt").read_text() == "mine"  # only the run's own files go
