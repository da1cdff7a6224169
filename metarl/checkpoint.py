"""Checkpoints: atomic writes, and the one loader that turns a checkpoint back into a policy.

A checkpoint holds the meta-parameters, the optimiser state (if the outer loop has one), the
iteration it was written after, the full config and any extra state an algorithm learns.
It is written to a temp file and renamed, so a file is either complete or absent; loading a
run directory uses the newest *readable* checkpoint (``latest.pt``, else the newest numbered
one) and says which it skipped.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from metarl.build import torch_dtype
from metarl.config import Config, from_dict, to_dict
from metarl.errors import CheckpointError, ConfigError
from metarl.policy import GaussianMLPPolicy

LATEST = "latest.pt"
NUMBERED = re.compile(r"checkpoint_(\d+)\.pt")
TEMP_SUFFIX = ".tmp"


@dataclass
class Checkpoint:
    """A loaded checkpoint: the policy (in the run's dtype), its config and training state."""

    path: Path
    iteration: int
    config: Config
    policy: GaussianMLPPolicy
    optimizer: dict[str, Any] | None
    extra: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    """One line per newer checkpoint file that could not be read (and was passed over)."""


def save_checkpoint(
    directory: Path,
    policy: GaussianMLPPolicy,
    config: Config,
    iteration: int,
    optimizer: torch.optim.Optimizer | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``checkpoint_{iteration:06d}.pt``, then ``latest.pt``, each atomically; return the numbered path."""
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": "metarl-checkpoint-1",
        "iteration": iteration,
        "policy": policy.state_dict(),
        "obs_dim": policy.obs_dim,
        "act_dim": policy.act_dim,
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "config": to_dict(config),
        "extra": dict(extra or {}),
    }
    path = directory / f"checkpoint_{iteration:06d}.pt"
    for target in (path, directory / LATEST):
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{target.stem}.", suffix=TEMP_SUFFIX)
        os.close(fd)
        try:
            torch.save(payload, tmp)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def remove_stale_temp_files(directory: Path) -> list[Path]:
    """Delete temp files a killed writer left in a checkpoint directory; return them."""
    if not directory.is_dir():
        return []
    stale = sorted(p for p in directory.iterdir() if p.name.endswith(TEMP_SUFFIX))
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def candidates(path: Path) -> list[Path]:
    """Checkpoint files to try for ``path``, newest first: the file itself, or a (run or checkpoints)
    directory's ``latest.pt`` then its numbered checkpoints by iteration, highest first."""
    if path.is_file():
        return [path]
    directory = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    if not directory.is_dir():
        return []
    numbered = sorted(
        (p for p in directory.iterdir() if NUMBERED.fullmatch(p.name)),
        key=lambda p: int(NUMBERED.fullmatch(p.name).group(1)),  # type: ignore[union-attr]
        reverse=True,
    )
    latest = directory / LATEST
    return ([latest] if latest.is_file() else []) + numbered


def has_checkpoint(path: Path) -> bool:
    """Whether ``path`` (a file, run or checkpoints directory) holds any checkpoint file."""
    return bool(candidates(path))


def read_payload(file: Path) -> dict[str, Any]:
    """The raw payload of one checkpoint file (tensors and plain data only: ``weights_only=True``)."""
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{file} is not a readable metarl checkpoint (truncated or another format: {first})") from None
    if not isinstance(payload, dict) or not {"iteration", "policy", "config", "obs_dim", "act_dim"} <= payload.keys():
        raise CheckpointError(f"{file} is not a metarl checkpoint (it lacks the policy, config or iteration)")
    return payload


def _from_payload(file: Path, payload: dict[str, Any]) -> Checkpoint:
    """Rebuild the policy (in the checkpoint's dtype) and config from a payload."""
    try:
        config = from_dict(payload["config"])
    except ConfigError as exc:
        raise CheckpointError(f"{file}: its config is not valid for this metarl version ({exc})") from None
    policy = GaussianMLPPolicy.from_config(config.policy, int(payload["obs_dim"]), int(payload["act_dim"]))
    policy = policy.to(torch_dtype(config.train.dtype))
    try:
        policy.load_state_dict(payload["policy"])
    except RuntimeError as exc:
        raise CheckpointError(f"{file}: the weights do not fit the policy its config describes ({exc})") from None
    return Checkpoint(file, int(payload["iteration"]), config, policy, payload.get("optimizer"),
                      dict(payload.get("extra") or {}))


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a checkpoint file, or the newest readable checkpoint of a run or checkpoints directory.

    Raises :class:`CheckpointError` with one line when there is none, or none is readable.
    """
    path = Path(path)
    files = candidates(path)
    if not files:
        if not path.exists():
            raise CheckpointError(f"no checkpoint at {path}: no such file or directory")
        raise CheckpointError(f"no checkpoint in {path} (looked for {LATEST} and checkpoint_*.pt, "
                              f"also under {path / 'checkpoints'})")
    skipped: list[str] = []
    for file in files:
        try:
            checkpoint = _from_payload(file, read_payload(file))
        except CheckpointError as exc:
            if len(files) == 1:
                raise
            skipped.append(str(exc))
            continue
        checkpoint.skipped = skipped
        return checkpoint
    raise CheckpointError(f"no readable checkpoint in {path}: all {len(files)} files failed, newest: {skipped[0]}")
