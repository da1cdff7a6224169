"""The package as a user installs it: `pip install .` (not editable) gives a working `metarl` anywhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_non_editable_install_trains_from_any_directory(tmp_path: Path) -> None:
    """Install the wheel's files into a target folder, then train from an unrelated directory with them.

    Proves the layout: the task envs install as ``metarl.envs`` (no top-level ``envs``) and the
    command runs without the source tree.
    """
    target = tmp_path / "site"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    assert (target / "metarl" / "envs" / "navigation.py").is_file()
    assert not (target / "envs").exists()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run(
        [sys.executable, "-c", "import metarl.envs; print(metarl.envs.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert where.stdout.strip().startswith(str(target)), where.stdout + where.stderr
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "metarl",
            "train",
            "--run-dir",
            "run",
            "--iterations",
            "1",
            "--no-progress",
            "--set",
            "maml.meta_batch_size=2",
            "--set",
            "maml.episodes_per_task=2",
            "--set",
            "env.horizon=5",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert (elsewhere / "run" / "checkpoints" / "latest.pt").is_file()
