"""Checkpoints: atomic writes, the one dtype-correct loader, fall-back order and one-line errors."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

import metarl.checkpoint as checkpoint_module
from metarl import build
from metarl.checkpoint import LATEST, load_checkpoint, remove_stale_temp_files, save_checkpoint
from metarl.config import Config, load_config
from metarl.errors import CheckpointError
from metarl.policy import GaussianMLPPolicy


def tiny(dtype: str = "float32", hidden: int = 4) -> tuple[Config, GaussianMLPPolicy]:
    """A config and its freshly built 2-in, 2-out policy in ``dtype``."""
    config = load_config(None, [f"train.dtype={dtype}", f"policy.hidden_sizes=[{hidden}]"])
    return config, build.build_policy(config, 2, 2)


def bump(policy: GaussianMLPPolicy, by: float) -> None:
    """Shift every parameter, so checkpoints of different iterations differ."""
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(by)


def equal_weights(a: GaussianMLPPolicy, b: GaussianMLPPolicy) -> bool:
    """Bitwise equality of two policies' parameters (names, dtypes and values)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


class Opaque:
    """A Python object: pickled by ``torch.save``, refused by ``torch.load(weights_only=True)``."""


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_keeps_weights_dtype_config_and_iteration(tmp_path: Path, dtype: str) -> None:
    config, policy = tiny(dtype)
    path = save_checkpoint(tmp_path / "checkpoints", policy, config, 7, extra={"baseline": torch.ones(3)})
    assert path == tmp_path / "checkpoints" / "checkpoint_000007.pt"
    for where in (path, tmp_path / "checkpoints", tmp_path, tmp_path / "checkpoints" / LATEST):
        loaded = load_checkpoint(where)
        assert loaded.iteration == 7 and loaded.config == config and loaded.skipped == []
        assert loaded.policy.layers[0].weight.dtype == build.torch_dtype(dtype)
        assert equal_weights(loaded.policy, policy)
        assert torch.equal(loaded.extra["baseline"], torch.ones(3))
        assert loaded.optimizer is None


def test_adam_state_round_trips(tmp_path: Path) -> None:
    config, policy = tiny()
    adam = torch.optim.Adam(policy.parameters(), lr=1e-2)
    sum(p.sum() for p in policy.parameters()).backward()
    adam.step()
    save_checkpoint(tmp_path, policy, config, 1, adam)
    restored = torch.optim.Adam(load_checkpoint(tmp_path).policy.parameters(), lr=1e-2)
    restored.load_state_dict(load_checkpoint(tmp_path).optimizer)  # type: ignore[arg-type]
    for key, state in adam.state_dict()["state"].items():
        assert torch.equal(state["exp_avg"], restored.state_dict()["state"][key]["exp_avg"])


def test_loading_is_weights_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config, policy = tiny()
    save_checkpoint(tmp_path, policy, config, 1)
    calls: list[dict] = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_checkpoint(tmp_path)
    assert calls and all(c.get("weights_only") is True for c in calls)
    # a file holding a pickled Python object (code could run on load) is refused, in one line
    save_checkpoint(tmp_path / "evil", policy, config, 1, extra={"object": Opaque()})
    with pytest.raises(CheckpointError, match="weights-only loading refuses") as info:
        load_checkpoint(tmp_path / "evil" / "checkpoint_000001.pt")
    assert "\n" not in str(info.value)


def test_files_are_complete_and_readable_by_others(tmp_path: Path) -> None:
    config, policy = tiny()
    previous = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path, policy, config, 1)
    finally:
        os.umask(previous)
    for file in (path, tmp_path / LATEST):
        assert stat.S_IMODE(file.stat().st_mode) == 0o644  # not mkstemp's 0600
    assert not list(tmp_path.glob("*.tmp"))


# --------------------------------------------------------------------------- atomicity


def test_a_failed_write_leaves_the_previous_checkpoint_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, policy = tiny()
    save_checkpoint(tmp_path, policy, config, 1)
    before = (tmp_path / LATEST).read_bytes()
    real_save = torch.save

    def torn_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        if hasattr(f, "truncate"):
            f.flush()
            f.truncate(100)  # half-written ...
        else:
            os.truncate(f, 100)
        raise OSError(28, "No space left on device")  # ... then the disk fills up

    monkeypatch.setattr(torch, "save", torn_save)
    bump(policy, 1.0)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path, policy, config, 2)
    assert (tmp_path / LATEST).read_bytes() == before
    assert not (tmp_path / "checkpoint_000002.pt").exists()
    assert not list(tmp_path.glob("*.tmp"))
    assert load_checkpoint(tmp_path).iteration == 1


def test_stale_temp_files_are_removed(tmp_path: Path) -> None:
    config, policy = tiny()
    save_checkpoint(tmp_path, policy, config, 1)
    stale = [tmp_path / ".checkpoint_000002.abc.tmp", tmp_path / ".latest.xyz.tmp"]
    for p in stale:
        p.write_bytes(b"PK\x03\x04 half a zip")
    assert load_checkpoint(tmp_path).iteration == 1  # temp files are never candidates
    assert remove_stale_temp_files(tmp_path) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_000001.pt", LATEST]
    assert remove_stale_temp_files(tmp_path / "missing") == []


# --------------------------------------------------------------------------- fall-back order


def write_run(directory: Path, iterations: list[int]) -> dict[int, GaussianMLPPolicy]:
    """Checkpoints of the given iterations (latest.pt = the last), each with distinct weights."""
    config, policy = tiny()
    saved = {}
    for it in iterations:
        bump(policy, 0.1)
        save_checkpoint(directory, policy, config, it)
        saved[it] = tiny()[1]
        saved[it].load_state_dict(policy.state_dict())
    return saved


def test_latest_is_used_when_readable(tmp_path: Path) -> None:
    saved = write_run(tmp_path / "checkpoints", [1, 2, 4])
    loaded = load_checkpoint(tmp_path)
    assert loaded.path.name == LATEST and loaded.iteration == 4 and equal_weights(loaded.policy, saved[4])


def test_corrupt_latest_falls_back_to_the_newest_numbered(tmp_path: Path) -> None:
    saved = write_run(tmp_path, [1, 2, 4])
    (tmp_path / LATEST).write_bytes((tmp_path / LATEST).read_bytes()[:200])
    loaded = load_checkpoint(tmp_path)
    assert loaded.path.name == "checkpoint_000004.pt" and equal_weights(loaded.policy, saved[4])
    assert len(loaded.skipped) == 1 and LATEST in loaded.skipped[0] and "truncated" in loaded.skipped[0]
    # the newest numbered one is broken too: the next one down
    (tmp_path / "checkpoint_000004.pt").write_text("not a checkpoint")
    loaded = load_checkpoint(tmp_path)
    assert loaded.path.name == "checkpoint_000002.pt" and len(loaded.skipped) == 2
    assert equal_weights(loaded.policy, saved[2])


def test_a_numbered_checkpoint_newer_than_latest_wins(tmp_path: Path) -> None:
    """A writer killed between checkpoint_N.pt and latest.pt leaves latest.pt one checkpoint behind."""
    saved = write_run(tmp_path, [1, 2])
    latest_of_2 = (tmp_path / LATEST).read_bytes()
    saved |= write_run(tmp_path / "later", [3])
    os.replace(tmp_path / "later" / "checkpoint_000003.pt", tmp_path / "checkpoint_000003.pt")
    (tmp_path / LATEST).write_bytes(latest_of_2)
    loaded = load_checkpoint(tmp_path)
    assert loaded.path.name == "checkpoint_000003.pt" and loaded.iteration == 3 and loaded.skipped == []


def test_numbered_checkpoints_sort_by_iteration_not_name(tmp_path: Path) -> None:
    config, policy = tiny()
    save_checkpoint(tmp_path, policy, config, 999_999)
    save_checkpoint(tmp_path, policy, config, 1_000_000)  # 7 digits: sorts before 999999 as a string
    (tmp_path / LATEST).unlink()
    assert load_checkpoint(tmp_path).iteration == 1_000_000


def test_no_readable_checkpoint_is_one_error(tmp_path: Path) -> None:
    write_run(tmp_path, [1, 2])
    for p in tmp_path.glob("*.pt"):
        p.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"no readable checkpoint in .*: all 3 files failed") as info:
        load_checkpoint(tmp_path)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- one-line errors


def bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Files that are not metarl checkpoints, each with the reason its error must give."""
    config, policy = tiny()
    good = save_checkpoint(tmp_path / "good", policy, config, 1)
    cases = {
        "missing": (tmp_path / "nope.pt", "no such file or directory"),
        "empty directory": (tmp_path / "empty", "no checkpoint in"),
        "truncated": (tmp_path / "truncated.pt", "truncated or corrupt"),
        "empty file": (tmp_path / "zero.pt", "truncated or corrupt"),
        "text file": (tmp_path / "notes.pt", "not a torch file"),
        "foreign torch file": (tmp_path / "foreign.pt", "is not a metarl checkpoint"),
        "whole module": (tmp_path / "module.pt", "weights-only loading refuses"),
        "foreign config": (tmp_path / "config.pt", "its config is not valid"),
        "wrong shapes": (tmp_path / "shapes.pt", "the weights do not fit"),
    }
    (tmp_path / "empty").mkdir()
    (tmp_path / "truncated.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "zero.pt").write_bytes(b"")
    (tmp_path / "notes.pt").write_text("hello\n")
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "foreign.pt")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")
    payload = torch.load(good, weights_only=True)
    torch.save({**payload, "config": {"maml": {"no_such_key": 1}}}, tmp_path / "config.pt")
    torch.save({**payload, "obs_dim": 5}, tmp_path / "shapes.pt")
    return cases


def test_unreadable_checkpoints_are_one_line_errors_naming_the_file(tmp_path: Path) -> None:
    for name, (path, reason) in bad_files(tmp_path).items():
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        message = str(info.value)
        assert reason in message, (name, message)
        assert str(path) in message and "\n" not in message and len(message) < 400, (name, message)


def test_read_payload_reports_a_directory_and_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is a directory"):
        checkpoint_module.read_payload(tmp_path)
    if os.geteuid() != 0:  # root reads anything
        locked = tmp_path / "locked.pt"
        locked.write_bytes(b"x")
        locked.chmod(0)
        with pytest.raises(CheckpointError, match="cannot read checkpoint"):
            checkpoint_module.read_payload(locked)
