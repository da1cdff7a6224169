"""2D navigation env: checks, task protocol, and single-vs-vector identity."""

from __future__ import annotations

from pathlib import Path

import gymnasium
import metarl.envs  # noqa: F401
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from metarl.envs.navigation import Navigation2DEnv, Navigation2DVectorEnv


@pytest.mark.parametrize("normalized", [False, True])
def test_check_env_passes(normalized: bool) -> None:
    check_env(gymnasium.make("metarl/Navigation2D-v0", normalized_actions=normalized).unwrapped, skip_render_check=True)


def test_normalized_actions_scale_and_clip_to_the_max_velocity() -> None:
    env = Navigation2DEnv(normalized_actions=True, goal_tolerance=0)
    assert env.action_space.high.tolist() == [1.0, 1.0]
    env.reset(seed=0)
    obs, *_ = env.step(np.array([0.5, -3.0]))
    np.testing.assert_allclose(obs, [0.05, -0.1], rtol=0, atol=1e-7)


def test_tasks_come_from_the_given_rng_only() -> None:
    env = Navigation2DEnv()
    a = env.sample_tasks(50, np.random.default_rng(3))
    b = env.sample_tasks(50, np.random.default_rng(3))
    assert a == b
    goals = np.array([[t["goal_x"], t["goal_y"]] for t in a])
    assert goals.min() >= -0.5 and goals.max() <= 0.5 and goals.std() > 0.1


@pytest.mark.parametrize("normalized", [False, True])
def test_single_and_vector_forms_give_identical_transitions(rng: np.random.Generator, normalized: bool) -> None:
    tasks = Navigation2DEnv().sample_tasks(6, rng)
    vec = Navigation2DVectorEnv(6, normalized_actions=normalized)
    vec.set_attr("task", tasks)
    singles = [Navigation2DEnv(normalized_actions=normalized) for _ in tasks]
    for env, task in zip(singles, tasks):
        env.task = task
    obs_v, _ = vec.reset(seed=list(range(6)))
    obs_s = np.stack([env.reset(seed=i)[0] for i, env in enumerate(singles)])
    np.testing.assert_array_equal(obs_v, obs_s)
    for _ in range(30):
        scale = 3.0 if normalized else 0.3
        actions = rng.uniform(-scale, scale, size=(6, 2))  # includes out-of-bound actions (clipped)
        obs_v, rew_v, term_v, trunc_v, _ = vec.step(actions)
        out = [env.step(a) for env, a in zip(singles, actions)]
        np.testing.assert_array_equal(obs_v, np.stack([o[0] for o in out]))
        np.testing.assert_allclose(rew_v, np.array([o[1] for o in out]), rtol=0, atol=1e-12)
        np.testing.assert_array_equal(term_v, np.array([o[2] for o in out]))
        assert not trunc_v.any()


def test_episode_terminates_within_goal_tolerance() -> None:
    env = Navigation2DEnv(goal_tolerance=0.01)
    env.task = {"goal_x": 0.1, "goal_y": 0.205}
    env.reset(seed=0)
    assert env.step(np.array([0.1, 0.1]))[2] is False
    _, reward, terminated, _, _ = env.step(np.array([0.0, 0.1]))
    assert terminated and reward == pytest.approx(-0.005)
    vec = Navigation2DVectorEnv(2, goal_tolerance=0.01)
    vec.set_attr("task", [env.task, {"goal_x": 0.5, "goal_y": 0.5}])
    vec.reset(seed=0)
    vec.step(np.full((2, 2), 0.1))
    np.testing.assert_array_equal(vec.step(np.array([[0.0, 0.1], [0.0, 0.1]]))[2], [True, False])
    with pytest.raises(ValueError, match="goal_tolerance"):
        Navigation2DEnv(goal_tolerance=-1)


def test_reward_is_minus_distance_after_clipped_move() -> None:
    env = Navigation2DEnv()
    env.task = {"goal_x": 0.3, "goal_y": -0.4}
    env.reset(seed=0)
    obs, reward, *_ = env.step(np.array([1.0, -1.0]))
    np.testing.assert_allclose(obs, [0.1, -0.1])
    assert reward == pytest.approx(-np.hypot(0.2, -0.3))


@pytest.mark.slow
def test_maml_learns_2d_navigation(tmp_path: Path) -> None:
    """40 paper-size meta-iterations: adaptation helps, and the meta-trained init adapts better than a random one."""
    from metarl.build import build_policy
    from metarl.config import load_config
    from metarl.evaluation import evaluate_adaptation
    from metarl.trainer import train

    config = load_config("configs/navigation2d.yaml", ["train.iterations=40", "train.num_threads=1"])
    result = train(config, tmp_path, progress=False)
    trained = evaluate_adaptation(result.policy, config, num_tasks=40, num_steps=1, episodes_per_step=20)
    random = evaluate_adaptation(build_policy(config, 2, 2), config, num_tasks=40, num_steps=1, episodes_per_step=20)
    step1 = trained["steps"][1]
    assert step1["mean_return"] > trained["steps"][0]["mean_return"] + step1["ci95"]
    assert step1["mean_return"] > random["steps"][1]["mean_return"] + 10
