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
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from metarl.build import torch_dtype
from metarl.classifier import Model, build_classifier
from metarl.config import Config, from_dict, to_dict
from metarl.errors import CheckpointError, ConfigError
from metarl.policy import GaussianMLPPolicy

LATEST = "latest.pt"
NUMBERED = re.compile(r"checkpoint_(\d+)\.pt")
TEMP_SUFFIX = ".tmp"


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (in the run's dtype), its config and training state.

    ``policy`` is the meta-learned model: a :class:`~metarl.policy.GaussianMLPPolicy` (RL,
    regression), or a classifier for ``maml.loss: classification`` (:mod:`metarl.classifier`).
    """

    path: Path
    iteration: int
    config: Config
    policy: Model
    optimizer: dict[str, Any] | None
    extra: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    """One line per newer checkpoint file that could not be read (and was passed over)."""

    def gaussian_policy(self, command: str) -> GaussianMLPPolicy:
        """The model as a policy (or regressor); :class:`CheckpointError` naming ``command`` for a classifier."""
        if not isinstance(self.policy, GaussianMLPPolicy):
            raise CheckpointError(
                f"{self.path} holds a few-shot classifier (maml.loss={self.config.maml.loss}); {command} needs a "
                "policy or regressor (maml.loss pg or supervised); use metarl evaluate for a classifier"
            )
        return self.policy


def save_checkpoint(
    directory: Path,
    policy: Model,
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
    if not isinstance(policy, GaussianMLPPolicy):
        payload["input_shape"] = list(policy.input_shape)  # a classifier's (channels, height, width)
    path = directory / f"checkpoint_{iteration:06d}.pt"
    for target in (path, directory / LATEST):
        _write_atomically(payload, directory, target)
    return path


def _write_atomically(payload: dict[str, Any], directory: Path, target: Path) -> None:
    """``torch.save`` to a temp file in ``directory``, flush it to disk, then rename it to ``target``.

    A reader (or a writer killed at any point) sees either the complete old file or the complete
    new one; a killed writer leaves at most a ``.tmp`` file, removed on resume.
    """
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{target.stem}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    """Flush a directory entry (a rename) to disk, where the platform allows opening directories."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
    """The raw payload of one checkpoint file (tensors and plain data only: ``weights_only=True``).

    Raises :class:`CheckpointError` with one line for a truncated file, a file of another format,
    or a torch file that is not a metarl checkpoint.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": the error below says it all
            payload = torch.load(file, map_location="cpu", weights_only=True)
    except IsADirectoryError:
        raise CheckpointError(f"{file} is a directory, not a checkpoint file") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {file}: {exc.strerror or exc}") from None
    except Exception as exc:  # torch.load raises many types for a file that is not one of its own
        raise CheckpointError(f"{file} is not a readable metarl checkpoint ({_why_unreadable(exc)})") from None
    if not isinstance(payload, dict) or not {"iteration", "policy", "config", "obs_dim", "act_dim"} <= payload.keys():
        raise CheckpointError(f"{file} is not a metarl checkpoint (it lacks the policy, config or iteration)")
    return payload


def _why_unreadable(exc: Exception) -> str:
    """A short reason for a failed ``torch.load``: its messages run to several lines and sentences."""
    text = " ".join(str(exc).split())
    if isinstance(exc, EOFError) or "central directory" in text or isinstance(exc, zipfile.BadZipFile):
        return "truncated or corrupt: not a complete torch zip archive"
    if "Weights only load failed" in text:
        return "it holds Python objects that weights-only loading refuses, so it was not written by metarl"
    if isinstance(exc, (KeyError, pickle.UnpicklingError)):
        return "not a torch file"
    first = text.split(". ")[0][:200]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _from_payload(file: Path, payload: dict[str, Any]) -> Checkpoint:
    """Rebuild the policy (in the checkpoint's dtype) and config from a payload."""
    try:
        config = from_dict(payload["config"])
    except ConfigError as exc:
        raise CheckpointError(f"{file}: its config is not valid for this metarl version ({exc})") from None
    try:
        policy: Model
        if config.maml.loss == "classification":
            channels, height, width = (int(s) for s in payload["input_shape"])
            dtype = torch_dtype(config.train.dtype)
            policy = build_classifier(config.classifier, (channels, height, width), int(payload["act_dim"]), 0, dtype)
        else:
            policy = GaussianMLPPolicy.from_config(config.policy, int(payload["obs_dim"]), int(payload["act_dim"]))
            policy = policy.to(torch_dtype(config.train.dtype))
        policy.load_state_dict(payload["policy"])
        iteration = int(payload["iteration"])
    except (RuntimeError, TypeError, ValueError, AttributeError, KeyError) as exc:
        reason = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"{file}: the weights do not fit the policy its config describes ({reason})") from None
    optimizer = payload.get("optimizer")
    extra = payload.get("extra") or {}
    if not isinstance(optimizer, (dict, type(None))) or not isinstance(extra, dict):
        raise CheckpointError(f"{file} is not a metarl checkpoint (its optimiser or extra state is not a mapping)")
    return Checkpoint(file, iteration, config, policy, optimizer, dict(extra))


def _number(file: Path) -> int | None:
    """The iteration in a numbered checkpoint's name (``None`` for ``latest.pt`` or another name)."""
    match = NUMBERED.fullmatch(file.name)
    return int(match.group(1)) if match else None


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a checkpoint file, or the newest readable checkpoint of a run or checkpoints directory.

    For a directory: ``latest.pt``, unless a numbered checkpoint is newer (a writer killed between
    the numbered file and ``latest.pt``) or ``latest.pt`` is unreadable; then the newest readable
    numbered one. Files passed over are listed in :attr:`Checkpoint.skipped`. Raises
    :class:`CheckpointError` with one line when there is none, or none is readable.
    """
    path = Path(path)
    files = candidates(path)
    if not files:
        if not path.exists():
            raise CheckpointError(f"no checkpoint at {path}: no such file or directory")
        raise CheckpointError(
            f"no checkpoint in {path} (looked for {LATEST} and checkpoint_*.pt, also under {path / 'checkpoints'})"
        )
    skipped: list[str] = []
    best: Checkpoint | None = None
    for file in files:  # latest.pt first, then the numbered ones, newest first
        number = _number(file)
        if best is not None and (number is None or number <= best.iteration):
            break
        try:
            checkpoint = _from_payload(file, read_payload(file))
        except CheckpointError as exc:
            if len(files) == 1:
                raise
            skipped.append(str(exc))
            continue
        if best is None or checkpoint.iteration > best.iteration:
            best = checkpoint
        if number is not None:
            break
    if best is None:
        raise CheckpointError(f"no readable checkpoint in {path}: all {len(files)} files failed, newest: {skipped[0]}")
    best.skipped = skipped
    return best
