"""Helpers shared by several test modules (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from metarl.advantages import process
from metarl.build import build_policy
from metarl.checkpoint import save_checkpoint
from metarl.cli import main
from metarl.config import load_config
from metarl.episodes import Episodes
from metarl.maml import AdaptationSettings
from metarl.policy import Params, flatten, unflatten


def random_episodes(n: int, b: int, t: int, seed: int, obs_dim: int = 2, act_dim: int = 2) -> Episodes:
    """Random float64 episodes with ragged lengths (some episodes terminate early), advantages attached."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(t, n, b, obs_dim, generator=g, dtype=torch.float64)
    act = torch.randn(t, n, b, act_dim, generator=g, dtype=torch.float64)
    rew = torch.randn(t, n, b, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, t + 1, (n, b), generator=g)
    mask = (torch.arange(t).view(t, 1, 1) < lengths.unsqueeze(0)).double()
    return process(Episodes(obs, act, rew * mask, mask), gamma=0.9, gae_lambda=0.95, normalize=True)


def settings(k: int, first_order: bool = False, estimator: str = "log") -> AdaptationSettings:
    """Inner-loop settings for the float64 gradient tests: lr 0.5, gamma 0.9, lambda 0.95, normalised."""
    return AdaptationSettings(0.5, k, first_order, 0.9, 0.95, True, estimator)


def finite_difference_grad(f, params: Params, eps: float = 1e-6) -> torch.Tensor:
    """Central finite differences of a scalar function of the flattened parameters."""
    flat = flatten(params).detach()
    grad = torch.zeros_like(flat)
    for i in range(flat.numel()):
        e = torch.zeros_like(flat)
        e[i] = eps
        plus = f({k: v.requires_grad_() for k, v in unflatten(flat + e, params).items()})
        minus = f({k: v.requires_grad_() for k, v in unflatten(flat - e, params).items()})
        grad[i] = (plus.item() - minus.item()) / (2 * eps)
    return grad


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``metarl ARGV`` in-process: exit status, stdout, stderr."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code: int, err: str, *fragments: str) -> None:
    """Exit status 2, a single ``error:`` line naming each fragment, no traceback."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), err
    assert sum(line.startswith("error:") for line in lines) == 1 and "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])


def untrained_run(root: Path, *overrides: str, obs_dim: int, act_dim: int, config_file: Path | None = None) -> Path:
    """A run directory with an untrained (seeded) checkpoint: enough for the failure paths."""
    config = load_config(config_file, ["policy.hidden_sizes=[8]", *overrides])
    save_checkpoint(root / "checkpoints", build_policy(config, obs_dim, act_dim), config, 0)
    return root


def step_rows(values: list[float], key: str = "mean_return", ci: float = 1.0) -> list[dict[str, Any]]:
    """Evaluation ``steps`` rows: ``{"step": k, key: value, "ci95": ci}``."""
    return [{"step": k, key: v, "ci95": ci} for k, v in enumerate(values)]


def assert_train_refuses(
    capsys: pytest.CaptureFixture[str], run_dir: Path, overrides: list[str], *fragments: str
) -> None:
    """``metarl train`` with these ``--set`` overrides stops with one error line naming the fragments, and
    creates no run directory."""
    argv = ["train", "--run-dir", str(run_dir), "--no-progress"]
    code, _, err = run_cli(capsys, *argv, *(a for o in overrides for a in ("--set", o)))
    assert_one_error_line(code, err, *fragments)
    assert not run_dir.exists()
