"""Meta-World ML1 / ML10 task envs on MuJoCo 4: the compatibility patch, the task protocol, the splits, training.

Skipped where the ``metaworld`` extra is not installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium
import metarl.envs  # noqa: F401  (registers the ids)
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from metarl.envs.base import check_task_env

from metarl.reporting import to_json
from tests.helpers import run_cli

pytest.importorskip("metaworld")
from metarl.envs.metaworld import MetaWorldEnv, MetaWorldUnavailable, patch_mocap_welds  # noqa: E402

REFERENCE = Path(__file__).parent / "data" / "metaworld_mujoco330.npz"


@pytest.fixture(scope="module")
def ml10_train() -> MetaWorldEnv:
    """An ML10 env on the training skills (building the benchmark takes seconds: once per module)."""
    return MetaWorldEnv("ML10", split="train")


def test_ml1_env_passes_gymnasium_check_env_and_the_task_protocol() -> None:
    env = gymnasium.make("metarl/ML1Reach-v0")
    check_env(env.unwrapped, skip_render_check=True)
    inner = check_task_env(env)
    assert env.spec is not None and env.spec.max_episode_steps == 500
    assert env.observation_space.shape == (39,) and env.action_space.shape == (4,)
    inner.task = inner.sample_tasks(1, np.random.default_rng(0))[0]
    obs, _ = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(np.zeros(4, np.float32))
    assert obs.shape == (39,) and np.isfinite(reward) and info["success"] in (0.0, 1.0)
    env.close()


def test_transitions_match_metaworld_on_its_pinned_mujoco_3_3_0() -> None:
    """Same seeds and actions as tests/data/make_metaworld_reference.py ran on mujoco 3.3.0."""
    reference = np.load(REFERENCE)
    assert str(reference["mujoco_version"]) == "3.3.0"
    for skill, index in (("reach-v3", 0), ("push-v3", 7)):
        env = MetaWorldEnv("ML1", skill)
        env.task = env.task_of(index)
        np.testing.assert_array_equal(env.task["goal"], reference[f"{skill}_goal"])
        obs, _ = env.reset(seed=3)
        observations, rewards, success = [obs], [], []
        for action in np.random.default_rng(index).uniform(-1, 1, (len(reference[f"{skill}_reward"]), 4)):
            obs, reward, _, _, info = env.step(action)
            observations.append(obs)
            rewards.append(reward)
            success.append(info["success"])
        env.close()
        # MuJoCo 4's solver differs from 3.3.0's in the last digits; the patch itself changes nothing
        np.testing.assert_allclose(np.array(observations), reference[f"{skill}_obs"], atol=5e-3)
        np.testing.assert_allclose(np.array(rewards), reference[f"{skill}_reward"], atol=2e-2)
        np.testing.assert_array_equal(np.array(success), reference[f"{skill}_success"])


def test_the_patch_refuses_a_changed_upstream_method() -> None:
    class Changed:
        def reset_mocap_welds(self) -> None:
            """Not metaworld 3.1.1's method."""

    with pytest.raises(MetaWorldUnavailable, match="changed"):
        patch_mocap_welds(Changed)


def test_tasks_come_from_the_rng_only_and_serialise() -> None:
    env = MetaWorldEnv("ML1", "push-v3")
    state = np.random.get_state()
    first = env.sample_tasks(6, np.random.default_rng(7))
    again = env.sample_tasks(6, np.random.default_rng(7))
    other = env.sample_tasks(6, np.random.default_rng(8))
    assert np.random.get_state()[1].tolist() == state[1].tolist()  # numpy's global generator untouched
    assert [t["index"] for t in first] == [t["index"] for t in again] != [t["index"] for t in other]
    assert all(t["skill"] == "push-v3" and t["split"] == "train" and t["goal"].shape == (6,) for t in first)
    decoded = json.loads(to_json(first))
    assert decoded[0]["skill"] == "push-v3" and len(decoded[0]["goal"]) == 6
    test_goals = MetaWorldEnv("ML1", "push-v3", split="test").task_list
    assert len(test_goals) == len(env.task_list) == 50


def test_ml10_has_10_train_and_5_held_out_test_skills(ml10_train: MetaWorldEnv) -> None:
    test = MetaWorldEnv("ML10", split="test")
    assert len(ml10_train.skills) == 10 and len(test.skills) == 5
    assert not set(ml10_train.skills) & set(test.skills)
    assert {"reach-v3", "push-v3", "pick-place-v3"} <= set(ml10_train.skills)
    drawn = test.sample_tasks(40, np.random.default_rng(0))
    assert {t["skill"] for t in drawn} <= set(test.skills) and len({t["skill"] for t in drawn}) > 1
    with pytest.raises(ValueError, match="not in the ML10 train task list"):
        ml10_train.task = drawn[0]
    test.task = drawn[0]
    obs, _ = test.reset(seed=1)
    obs, reward, _, _, info = test.step(np.zeros(4))
    assert obs.shape == (39,) and np.isfinite(reward) and "success" in info
    test.close()


def test_one_training_iteration_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny: list[Any] = [
        "--set", "maml.meta_batch_size=2", "--set", "maml.episodes_per_task=2", "--set", "env.horizon=20",
        "--set", "policy.hidden_sizes=[8]", "--set", "train.iterations=1", "--no-progress",
    ]  # fmt: skip
    run = tmp_path / "run"
    config = "configs/metaworld_ml1_reach.yaml"
    code, _, err = run_cli(capsys, "train", "--config", config, "--run-dir", str(run), *tiny)
    assert code == 0, err
    assert (run / "checkpoints" / "latest.pt").is_file()
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert np.isfinite(row["meta/return_pre"]) and np.isfinite(row["meta/return_post"])
    assert 0 <= row["episodes/success_pre"] <= 1 and 0 <= row["episodes/success_post"] <= 1
    held_out = tmp_path / "held_out"
    code, out, err = run_cli(
        capsys, "evaluate", "--run-dir", str(run), "--set", "env.kwargs.split=test", "--num-tasks", "2",
        "--num-steps", "1", "--episodes", "2", "--results", str(held_out), "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    assert "Success rate (any step of the episode)" in out
    result = json.loads((held_out / "evaluation.json").read_text())
    assert all(t["split"] == "test" for t in result["tasks"]) and "success_rate" in result["steps"][1]
