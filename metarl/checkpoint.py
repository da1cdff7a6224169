"""Atomic checkpoints of the meta-parameters, optimiser state and config."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from metarl.config import Config, from_dict, to_dict
from metarl.policy import GaussianMLPPolicy

LATEST = "latest.pt"


def save_checkpoint(
    directory: Path,
    policy: GaussianMLPPolicy,
    config: Config,
    iteration: int,
    optimizer: torch.optim.Optimizer | None = None,
) -> Path:
    """Write ``checkpoint_{iteration}.pt`` and ``latest.pt`` atomically (temp file + rename); return the path."""
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "iteration": iteration,
        "policy": policy.state_dict(),
        "obs_dim": policy.obs_dim,
        "act_dim": policy.act_dim,
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "config": to_dict(config),
    }
    path = directory / f"checkpoint_{iteration:06d}.pt"
    for target in (path, directory / LATEST):
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        os.close(fd)
        torch.save(payload, tmp)
        os.replace(tmp, target)
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint file, a checkpoints directory or a run directory; return the file."""
    path = Path(path)
    for candidate in (path, path / LATEST, path / "checkpoints" / LATEST):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no checkpoint at {path} (looked for the file, {LATEST} and checkpoints/{LATEST})")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint; ``config`` is returned as a validated :class:`Config`."""
    payload = torch.load(resolve_checkpoint(path), map_location="cpu", weights_only=False)
    payload["config"] = from_dict(payload["config"])
    return payload


def policy_from_checkpoint(payload: dict[str, Any]) -> GaussianMLPPolicy:
    """Rebuild the policy a checkpoint was written from, with its weights."""
    cfg: Config = payload["config"]
    policy = GaussianMLPPolicy.from_config(cfg.policy, payload["obs_dim"], payload["act_dim"])
    policy.load_state_dict(payload["policy"])
    return policy
