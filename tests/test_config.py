"""Config loading, YAML 1.2 floats, overrides and one-line error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from metarl.config import Config, ConfigError, annotated_yaml, describe, from_dict, load_config, load_yaml, to_dict

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(ROOT.glob("configs/*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_are_valid(path: Path) -> None:
    assert isinstance(load_config(path), Config)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("maml.inner_lr=-1", "config key 'maml.inner_lr': bad value -1.0; allowed: float > 0"),
        ("maml.inner_lr=abc", "config key 'maml.inner_lr': bad value 'abc'; allowed: float > 0"),
        ("maml.bogus=1", "config key 'maml.bogus': unknown key; allowed: loss, meta_batch_size"),
        ("outer.optimizer=sgd", "config key 'outer.optimizer': bad value 'sgd'; allowed: one of 'trpo', 'adam'"),
        ("policy.hidden_sizes=[0]", "config key 'policy.hidden_sizes': bad value [0]"),
        ("nosection.x=1", "config key 'nosection': unknown section"),
        ("train.iterations=1.5", "config key 'train.iterations': bad value 1.5; allowed: int > 0"),
        ("maml.gamma=1.5", "allowed: float >= 0 and <= 1"),
        ("maml.first_order=maybe", "config key 'maml.first_order': bad value 'maybe'; allowed: bool"),
        ("inner_lr=0.1", "expected section.key=value"),
        ("maml.inner_lr=[1", "override 'maml.inner_lr=[1': the value is not valid YAML"),
    ],
)
def test_bad_values_name_key_value_and_allowed(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "value"),
    [("1e-3", 1e-3), ("1E5", 1e5), (".5", 0.5), ("1.0e5", 1e5), ("-2e-1", -0.2), ("+.5e-2", 0.005), ("0.05", 0.05)],
)
def test_every_yaml_1_2_and_python_float_is_a_float(tmp_path: Path, text: str, value: float) -> None:
    """PyYAML (YAML 1.1) reads 1e-3, 1E5 and 1.0e5 as strings; metarl reads them as Python and YAML 1.2 do."""
    assert load_yaml(text) == value and isinstance(load_yaml(text), float)
    magnitude = str(abs(value))
    assert load_config(None, [f"maml.inner_lr={text.lstrip('+-')}"]).maml.inner_lr == float(magnitude)
    path = tmp_path / "c.yaml"
    path.write_text(f"outer:\n  lr: {text.lstrip('+-')}\n")
    assert load_config(path).outer.lr == float(magnitude)
    # env kwargs are passed through untyped: they get floats too, not strings
    assert load_config(None, [f"env.kwargs.ctrl_cost_weight={text}"]).env.kwargs["ctrl_cost_weight"] == value


@pytest.mark.parametrize("text", ["10", "0x10", "abc", "1e", "e5", "1.2.3", "true", "null"])
def test_what_is_not_a_float_stays_what_it_was(text: str) -> None:
    assert not isinstance(load_yaml(text), float)


@pytest.mark.parametrize("key", ["maml.inner_lr", "outer.max_kl", "outer.lr", "outer.max_param_norm"])
@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "inf", "nan", "1e999"])
def test_non_finite_values_are_rejected_where_a_finite_one_is_required(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"config key '{key}': bad value"):
        load_config(None, [f"{key}={value}"])


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


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("maml: [1, 2\n", r"is not valid YAML \(line 2, column 1\)"),
        ("maml:\n  inner_lr: 0.1\n bad indent: 1\n", r"is not valid YAML \(line 3"),
        ('"just a string"\n', "must be a mapping of sections .* got a str"),
        ("- 1\n- 2\n", "must be a mapping of sections .* got a list"),
        ("42\n", "must be a mapping of sections .* got a int"),
        ("maml: 3\n", "config key 'maml': expected a mapping of keys, got 3"),
    ],
)
def test_bad_yaml_files_are_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert str(path) in str(info.value) or "config key" in str(info.value)
    assert "\n" not in str(info.value)


def test_empty_file_and_empty_sections_mean_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("")
    assert load_config(path) == Config()
    path.write_text("# only a comment\nmaml:\nouter:\n")
    assert load_config(path) == Config()


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found: /nonexistent.yaml"):
        load_config("/nonexistent.yaml")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path)  # a directory
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match="binary.yaml"):
        load_config(binary)


def test_round_trip_through_a_dict() -> None:
    cfg = load_config(ROOT / "configs/navigation2d.yaml", ["outer.optimizer=adam", "train.dtype=float64"])
    assert from_dict(to_dict(cfg)) == cfg


def test_describe_and_annotated_yaml_list_every_key() -> None:
    table = describe()
    assert "`maml.inner_lr`" in table and "`outer.max_kl`" in table and "`outer.max_param_norm`" in table
    text = annotated_yaml(load_config(None, ["maml.inner_lr=1e-3"]))
    assert "  inner_lr: 0.001  # float > 0: inner-loop step size alpha" in text
    assert load_config(None, []) == from_dict(load_yaml(_strip_comments(annotated_yaml(Config()))))


def _strip_comments(text: str) -> str:
    """The YAML of ``annotated_yaml`` without its trailing comments."""
    return "\n".join(line.split("  #")[0] for line in text.splitlines())
