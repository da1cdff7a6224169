"""Config loading, overrides and error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from metarl.config import ConfigError, Config, describe, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(ROOT.glob("configs/*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_are_valid(path: Path) -> None:
    assert isinstance(load_config(path), Config)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("maml.inner_lr=-1", "config key 'maml.inner_lr': bad value -1.0; allowed: float > 0"),
        ("maml.bogus=1", "config key 'maml.bogus': unknown key; allowed: loss, meta_batch_size"),
        ("outer.optimizer=sgd", "config key 'outer.optimizer': bad value 'sgd'; allowed: one of 'trpo', 'adam'"),
        ("policy.hidden_sizes=[0]", "config key 'policy.hidden_sizes': bad value [0]"),
        ("nosection.x=1", "config key 'nosection': unknown section"),
        ("train.iterations=1.5", "config key 'train.iterations': bad value 1.5; allowed: int > 0"),
        ("maml.gamma=1.5", "allowed: float >= 0 and <= 1"),
        ("maml.first_order=maybe", "config key 'maml.first_order': bad value 'maybe'; allowed: bool"),
        ("inner_lr=0.1", "expected section.key=value"),
    ],
)
def test_bad_values_name_key_value_and_allowed(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value)


def test_overrides_are_parsed_as_yaml() -> None:
    cfg = load_config(None, ["policy.hidden_sizes=[32, 16]", "maml.first_order=true", "maml.inner_lr=1"])
    assert cfg.policy.hidden_sizes == [32, 16] and cfg.maml.first_order is True
    assert isinstance(cfg.maml.inner_lr, float)


def test_overrides_reach_into_mapping_keys() -> None:
    cfg = load_config(ROOT / "configs/halfcheetah_vel.yaml", ["env.kwargs.frame_skip=3"])
    assert cfg.env.kwargs["frame_skip"] == 3
    assert cfg.env.kwargs["clip_actions"] is True  # the file's other kwargs are kept
    cfg = load_config(None, ["env.vector_kwargs.num_threads=1"])
    assert cfg.env.vector_kwargs == {"num_threads": 1}
    with pytest.raises(ConfigError, match="config key 'maml.inner_lr': expected a mapping of keys, got 0.1"):
        load_config(ROOT / "configs/halfcheetah_vel.yaml", ["maml.inner_lr.x=1"])
    with pytest.raises(ConfigError, match="config key 'maml.inner_lr': bad value"):
        load_config(None, ["maml.inner_lr.x=1"])


def test_missing_file_and_describe() -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent.yaml")
    table = describe()
    assert "`maml.inner_lr`" in table and "`outer.max_kl`" in table
