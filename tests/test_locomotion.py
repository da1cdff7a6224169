"""MuJoCo locomotion task envs: task protocol, env checker, and single-vs-batched identity."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import gymnasium
import metarl.envs  # noqa: F401  (registers the metarl/ envs)
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from metarl.envs.base import check_task_env
from metarl.envs.locomotion import (
    AntDirVectorEnv,
    AntVelEnv,
    AntVelVectorEnv,
    GoalDirectionTasks,
    GoalVelocityTasks,
    HalfCheetahDirVectorEnv,
    HalfCheetahVelEnv,
    HalfCheetahVelVectorEnv,
)
from metarl.envs.mujoco_batch import BatchPhysics, PerEnvPhysics

from metarl.config import load_config
from metarl.trainer import train

ENV_IDS = ["metarl/HalfCheetahVel-v0", "metarl/HalfCheetahDir-v0", "metarl/AntVel-v0", "metarl/AntDir-v0"]
VECTOR_CLASSES = {
    "metarl/HalfCheetahVel-v0": HalfCheetahVelVectorEnv,
    "metarl/HalfCheetahDir-v0": HalfCheetahDirVectorEnv,
    "metarl/AntVel-v0": AntVelVectorEnv,
    "metarl/AntDir-v0": AntDirVectorEnv,
}
# the Ant without contact forces in the observation or reward runs on BatchPhysics
ANT_NO_CONTACT = {"include_cfrc_ext_in_observation": False, "contact_cost_weight": 0.0}
TOLERANCE = {"rtol": 1e-6, "atol": 1e-8}
NUM_ENVS = 6


def make_single(env_id: str, **kwargs):
    return gymnasium.make(env_id, **kwargs).unwrapped


def make_batched(env_id: str, num_envs: int = NUM_ENVS, num_threads: int = 2, **kwargs):
    return gymnasium.make_vec(
        env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", num_threads=num_threads, **kwargs
    )


# --------------------------------------------------------------------------- single envs


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_check_env(env_id: str) -> None:
    env = make_single(env_id)
    check_env(env, skip_render_check=True)
    assert check_task_env(env) is env


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_registration(env_id: str) -> None:
    assert gymnasium.spec(env_id).max_episode_steps == 200
    env = make_batched(env_id)
    assert type(env) is VECTOR_CLASSES[env_id]
    assert env.max_episode_steps == 200
    assert env.single_observation_space == make_single(env_id).observation_space
    env.close()


def test_observation_sizes_follow_v5() -> None:
    assert make_single("metarl/HalfCheetahVel-v0").observation_space.shape == (17,)
    assert make_single("metarl/AntVel-v0").observation_space.shape == (105,)  # cfrc_ext included, as v5
    assert make_single("metarl/AntVel-v0", **ANT_NO_CONTACT).observation_space.shape == (27,)


def test_reward_parts_cheetah_vel() -> None:
    env = make_single("metarl/HalfCheetahVel-v0")
    env.task = {"velocity": 1.5}
    env.reset(seed=0)
    action = np.full(6, 0.5, dtype=np.float32)
    _, reward, terminated, _, info = env.step(action)
    assert info["reward_forward"] == pytest.approx(-abs(info["x_velocity"] - 1.5))
    assert info["reward_ctrl"] == pytest.approx(-0.05 * 6 * 0.25)
    assert reward == pytest.approx(info["reward_forward"] + info["reward_ctrl"])
    assert not terminated


@pytest.mark.parametrize("env_id", ["metarl/HalfCheetahVel-v0", "metarl/AntVel-v0"])
def test_clip_actions_clips_before_physics_and_control_cost(env_id: str) -> None:
    wide = np.linspace(-2.0, 2.0, make_single(env_id).action_space.shape[0]).astype(np.float32)
    clipped = np.clip(wide, -1.0, 1.0)
    steps = []
    for clip, action in [(True, wide), (False, clipped), (False, wide)]:
        env = make_single(env_id, clip_actions=clip)
        env.reset(seed=3)
        steps.append(env.step(action))
    (obs_a, rew_a, _, _, info_a), (obs_b, rew_b, _, _, _), (obs_c, rew_c, _, _, info_c) = steps
    np.testing.assert_array_equal(obs_a, obs_b)  # clipped == already-clipped action
    assert rew_a == rew_b
    np.testing.assert_array_equal(obs_a, obs_c)  # MuJoCo clamps the controls anyway ...
    weight = 0.05 if "Cheetah" in env_id else 0.5
    assert info_a["reward_ctrl"] == pytest.approx(-weight * np.sum(clipped**2))
    assert info_c["reward_ctrl"] == pytest.approx(-weight * np.sum(wide**2))  # ... but not the cost
    assert rew_c < rew_a


def test_reward_parts_ant_dir() -> None:
    env = make_single("metarl/AntDir-v0")
    env.task = {"direction": -1.0}
    env.reset(seed=0)
    _, reward, _, _, info = env.step(np.zeros(8, dtype=np.float32))
    assert info["reward_forward"] == pytest.approx(-info["x_velocity"])
    parts = ("reward_forward", "reward_ctrl", "reward_contact", "reward_survive")
    assert reward == pytest.approx(sum(info[k] for k in parts))
    assert info["reward_survive"] == 1.0


# --------------------------------------------------------------------------- tasks


@pytest.mark.parametrize(("env_id", "high"), [("metarl/HalfCheetahVel-v0", 2.0), ("metarl/AntVel-v0", 3.0)])
def test_velocity_tasks(env_id: str, high: float) -> None:
    env = make_single(env_id)
    tasks = env.sample_tasks(500, np.random.default_rng(3))
    velocities = np.array([t["velocity"] for t in tasks])
    assert velocities.min() >= 0.0 and velocities.max() <= high
    assert velocities.min() < 0.1 * high and velocities.max() > 0.9 * high
    assert tasks == env.sample_tasks(500, np.random.default_rng(3))
    assert tasks != env.sample_tasks(500, np.random.default_rng(4))
    assert env.sample_tasks(0, np.random.default_rng(0)) == []


@pytest.mark.parametrize("env_id", ["metarl/HalfCheetahDir-v0", "metarl/AntDir-v0"])
def test_direction_tasks(env_id: str) -> None:
    env = make_single(env_id)
    tasks = env.sample_tasks(400, np.random.default_rng(5))
    directions = np.array([t["direction"] for t in tasks])
    assert set(directions) == {-1.0, 1.0}
    assert 150 < (directions > 0).sum() < 250
    assert tasks == env.sample_tasks(400, np.random.default_rng(5))


def test_task_setter_and_vector_sampling() -> None:
    env = make_single("metarl/HalfCheetahVel-v0", velocity_low=0.5, velocity_high=1.0)
    env.task = {"velocity": 0.7}
    assert env.task == {"velocity": 0.7}
    vec = make_batched("metarl/HalfCheetahVel-v0", velocity_low=0.5, velocity_high=1.0)
    rng_a, rng_b = np.random.default_rng(9), np.random.default_rng(9)
    assert vec.unwrapped.sample_tasks(7, rng_a) == env.sample_tasks(7, rng_b)
    vec.close()


@pytest.mark.parametrize(
    ("factory", "kwargs", "match"),
    [
        (HalfCheetahVelEnv, {"velocity_low": 2.0, "velocity_high": 1.0}, "velocity_low <= velocity_high"),
        (HalfCheetahVelEnv, {"velocity_high": float("nan")}, "finite"),
        (HalfCheetahVelEnv, {"ctrl_cost_weight": -0.1}, "ctrl_cost_weight"),
        (AntVelEnv, {"healthy_z_range": (1.0, 0.2)}, "healthy_z_range"),
        (AntVelEnv, {"reset_noise_scale": -1.0}, "reset_noise_scale"),
        (HalfCheetahVelVectorEnv, {"num_envs": 2, "num_threads": 0}, "num_threads"),
        (AntVelEnv, {"clip_actions": "yes"}, "clip_actions"),
    ],
)
def test_bad_kwargs(factory, kwargs, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        factory(**kwargs)


def test_bad_tasks_and_calls() -> None:
    env = make_single("metarl/HalfCheetahDir-v0")
    with pytest.raises(ValueError, match="direction"):
        env.task = {"direction": 0.5}
    with pytest.raises(ValueError, match="key 'direction'"):
        env.task = {"velocity": 1.0}
    with pytest.raises(ValueError, match="non-negative integer"):
        env.sample_tasks(-1, np.random.default_rng(0))
    vec = make_batched("metarl/HalfCheetahDir-v0", num_envs=2)
    with pytest.raises(ValueError, match="key 'direction'"):
        vec.set_attr("task", [{"direction": 1.0}, {"velocity": 1.0}])
    with pytest.raises(RuntimeError, match="before reset"):
        vec.step(np.zeros((2, 6)))
    vec.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        vec.step(np.zeros((3, 6)))
    vec.close()


def test_default_threads_and_pickle() -> None:
    vec = make_batched("metarl/HalfCheetahVel-v0", num_envs=2, num_threads=None)
    assert vec.num_threads == os.cpu_count()
    vec.close()
    env = pickle.loads(pickle.dumps(make_single("metarl/AntVel-v0", velocity_high=1.0, healthy_reward=2.0)))
    assert env.task_family == GoalVelocityTasks(0.0, 1.0) and env.params.healthy_reward == 2.0
    assert isinstance(make_single("metarl/AntDir-v0").task_family, GoalDirectionTasks)


# --------------------------------------------------------------------------- single vs batched


def _assert_info_matches(single_info: dict, batched_info: dict, i: int, where: str) -> None:
    assert set(single_info) <= set(batched_info), where
    for key, value in single_info.items():
        np.testing.assert_allclose(batched_info[key][i], value, **TOLERANCE, err_msg=f"{where}: info[{key!r}]")


def _compare_rollouts(
    env_id: str, num_steps: int, action_scale: np.ndarray, num_threads: int = 2, **kwargs
) -> np.ndarray:
    """Step a batched env and NUM_ENVS single envs with the same tasks, seeds and actions.

    Returns the step at which each sub-episode terminated (-1: never). Actions reach outside
    the action bounds (``action_scale > 1``); a sub-episode is compared up to its termination.
    """
    vec = make_batched(env_id, num_threads=num_threads, **kwargs)
    tasks = vec.unwrapped.sample_tasks(NUM_ENVS, np.random.default_rng(0))
    vec.set_attr("task", tasks)
    seeds = [100 + 7 * i for i in range(NUM_ENVS)]
    obs, info = vec.reset(seed=seeds)
    assert obs.dtype == np.float64 and obs.shape == (NUM_ENVS, *vec.single_observation_space.shape)
    singles = []
    for i, (task, seed) in enumerate(zip(tasks, seeds)):
        single = make_single(env_id, **kwargs)
        single.task = task
        single_obs, single_info = single.reset(seed=seed)
        np.testing.assert_allclose(obs[i], single_obs, **TOLERANCE, err_msg=f"reset obs {i}")
        _assert_info_matches(single_info, info, i, f"reset {i}")
        singles.append(single)

    rng = np.random.default_rng(1)
    high = vec.single_action_space.high
    terminated_at = np.full(NUM_ENVS, -1)
    for t in range(num_steps):
        actions = (rng.uniform(-1.0, 1.0, size=(NUM_ENVS, high.size)) * high * action_scale).astype(np.float32)
        obs, rewards, terminations, truncations, infos = vec.step(actions)
        assert rewards.dtype == np.float64 and terminations.dtype == bool and not truncations.any()
        assert np.isfinite(obs).all() and np.isfinite(rewards).all()
        for i, single in enumerate(singles):
            if terminated_at[i] >= 0:
                assert terminations[i]  # stays terminated until the next reset
                continue
            single_obs, single_reward, single_terminated, _, single_info = single.step(actions[i])
            where = f"step {t}, sub-episode {i}"
            np.testing.assert_allclose(obs[i], single_obs, **TOLERANCE, err_msg=where)
            np.testing.assert_allclose(rewards[i], single_reward, **TOLERANCE, err_msg=where)
            assert terminations[i] == single_terminated, where
            _assert_info_matches(single_info, infos, i, where)
            if single_terminated:
                terminated_at[i] = t
    vec.close()
    return terminated_at


@pytest.mark.parametrize("env_id", ["metarl/HalfCheetahVel-v0", "metarl/HalfCheetahDir-v0"])
def test_cheetah_single_vs_batched(env_id: str) -> None:
    terminated_at = _compare_rollouts(env_id, num_steps=40, action_scale=np.full((NUM_ENVS, 1), 1.5))
    assert (terminated_at < 0).all()


def test_cheetah_single_vs_batched_options() -> None:
    _compare_rollouts(
        "metarl/HalfCheetahVel-v0",
        num_steps=30,
        action_scale=np.full((NUM_ENVS, 1), 1.5),
        num_threads=1,
        exclude_current_positions_from_observation=False,
        frame_skip=4,
        ctrl_cost_weight=0.1,
    )


@pytest.mark.parametrize("env_id", ["metarl/HalfCheetahVel-v0", "metarl/AntVel-v0"])
def test_single_vs_batched_with_clip_actions(env_id: str) -> None:
    assert make_batched(env_id, num_envs=1, clip_actions=True).unwrapped._action_bounds is not None
    _compare_rollouts(env_id, num_steps=30, action_scale=np.full((NUM_ENVS, 1), 1.5), clip_actions=True)


@pytest.mark.parametrize("config", ["configs/halfcheetah_vel.yaml", "configs/ant_vel.yaml"])
def test_single_vs_batched_with_shipped_env_kwargs(config: str) -> None:
    """The configs' own env settings (the paper's control step via ``frame_skip``, clipping, reward weights)."""
    env = load_config(Path(__file__).resolve().parents[1] / config).env
    assert "frame_skip" in env.kwargs
    batched = make_batched(env.id, num_envs=1, **env.kwargs).unwrapped
    assert batched._physics.frame_skip == env.kwargs["frame_skip"] == make_single(env.id, **env.kwargs).frame_skip
    _compare_rollouts(env.id, num_steps=40, action_scale=np.full((NUM_ENVS, 1), 1.5), **env.kwargs)


# bang-bang actions make the first three ants jump out of the healthy z range; the rest stay alive
ANT_ACTION_SCALE = np.array([[1.5], [1.5], [1.5], [0.3], [0.3], [0.3]])


@pytest.mark.parametrize("env_id", ["metarl/AntVel-v0", "metarl/AntDir-v0"])
def test_ant_single_vs_batched(env_id: str) -> None:
    assert isinstance(make_batched(env_id, num_envs=1).unwrapped._physics, PerEnvPhysics)
    terminated_at = _compare_rollouts(env_id, num_steps=60, action_scale=ANT_ACTION_SCALE)
    assert (terminated_at >= 0).any(), "no Ant episode terminated: the termination path is untested"
    assert (terminated_at < 0).any()


def test_ant_without_contact_forces_single_vs_batched() -> None:
    assert isinstance(make_batched("metarl/AntVel-v0", num_envs=1, **ANT_NO_CONTACT).unwrapped._physics, BatchPhysics)
    terminated_at = _compare_rollouts(
        "metarl/AntVel-v0", num_steps=60, action_scale=ANT_ACTION_SCALE, num_threads=2, **ANT_NO_CONTACT
    )
    assert (terminated_at >= 0).any()


def test_ant_single_vs_batched_one_thread_no_termination_flag() -> None:
    terminated_at = _compare_rollouts(
        "metarl/AntDir-v0",
        num_steps=30,
        action_scale=ANT_ACTION_SCALE,
        num_threads=1,
        terminate_when_unhealthy=False,
    )
    assert (terminated_at < 0).all()


@pytest.mark.parametrize("env_id", ["metarl/HalfCheetahVel-v0", "metarl/AntVel-v0"])
def test_reset_seeding_matches_single(env_id: str) -> None:
    """An int seed expands to seed + i; reset() without seed continues each episode's generator."""
    vec = make_batched(env_id, num_envs=3)
    obs_first, _ = vec.reset(seed=11)
    obs_second, _ = vec.reset()
    np.testing.assert_array_equal(vec.reset(seed=11)[0], obs_first)
    for i in range(3):
        single = make_single(env_id)
        np.testing.assert_array_equal(single.reset(seed=11 + i)[0], obs_first[i])
        np.testing.assert_array_equal(single.reset()[0], obs_second[i])
    vec.close()


@pytest.mark.parametrize("config", ["configs/halfcheetah_vel.yaml", "configs/ant_vel.yaml"])
def test_two_iteration_training_smoke_run(tmp_path: Path, config: str) -> None:
    """The shipped locomotion configs train end to end (tiny batch, short horizon) through the batched physics."""
    cfg = load_config(
        config,
        [
            "maml.meta_batch_size=2",
            "maml.episodes_per_task=2",
            "env.horizon=10",
            "train.iterations=2",
            "policy.hidden_sizes=[8]",
            "env.vector_kwargs={num_threads: 1}",
        ],
    )
    result = train(cfg, tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1]
    assert all(np.isfinite(r["meta/return_pre"]) and np.isfinite(r["meta/return_post"]) for r in rows)
    assert all(r["trpo/kl"] <= cfg.outer.max_kl * 1.0001 for r in rows)
    assert result.checkpoint.is_file()


@pytest.mark.slow
def test_paper_size_halfcheetahvel_iteration(tmp_path: Path) -> None:
    """One meta-iteration of the shipped HalfCheetahVel config at the paper's size (40 tasks x 20 x 200 steps)."""
    cfg = load_config("configs/halfcheetah_vel.yaml", ["train.iterations=1"])
    train(cfg, tmp_path, progress=False)
    (row,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert row["perf/env_steps_per_s"] > 0 and np.isfinite(row["meta/return_post"])
    assert 0 < row["trpo/kl"] <= cfg.outer.max_kl * 1.0001


# --------------------------------------------------------------------------- rllab options


def _reset_states(env_id: str, reset_noise: str, num_resets: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(qpos, qvel)`` after each of ``num_resets`` resets of one single env (seeded once, then continued)."""
    env = make_single(env_id, reset_noise=reset_noise)
    qpos, qvel = [], []
    for k in range(num_resets):
        env.reset(seed=seed if k == 0 else None)
        qpos.append(env.data.qpos.copy())
        qvel.append(env.data.qvel.copy())
    return np.array(qpos), np.array(qvel)


def _excess_kurtosis(x: np.ndarray) -> float:
    z = (x - x.mean()) / x.std()
    return float(np.mean(z**4) - 3.0)


@pytest.mark.parametrize("env_id", ["metarl/HalfCheetahVel-v0", "metarl/AntVel-v0"])
def test_rllab_reset_noise_scale_distribution_and_mean(env_id: str) -> None:
    """rllab's reset_mujoco: qpos = init_qpos + 0.01 N(0,1), qvel = init_qvel + 0.1 N(0,1), on every coordinate.

    With 2000 resets the pooled std has a relative standard error of ~0.5% (qpos: 30000 values for
    the Ant) and the excess kurtosis one of ~0.03: the 4% and 0.15 tolerances are > 5 standard
    errors, and gymnasium's uniform noise (std 0.1/sqrt(3), kurtosis -1.2) is far outside both.
    """
    n = 2000
    env = make_single(env_id, reset_noise="rllab")
    model = env.model
    numeric = np.array(model.numeric("init_qpos").data) if model.nnumeric else model.qpos0.copy()
    np.testing.assert_array_equal(env.reset_qpos, numeric)  # the Ant: rllab's bent-leg pose at z = 0.55
    if "Ant" in env_id:
        assert env.reset_qpos[2] == 0.55 and not np.array_equal(env.reset_qpos, model.qpos0)
    qpos, qvel = _reset_states(env_id, "rllab", n, seed=123)
    for values, mean, scale in ((qpos, env.reset_qpos, 0.01), (qvel, np.zeros(model.nv), 0.1)):
        noise = values - mean
        assert abs(noise.std() / scale - 1.0) < 0.04, noise.std()
        assert abs(_excess_kurtosis(noise.ravel())) < 0.15  # normal, not uniform
        assert np.all(np.abs(noise.mean(0)) < 5 * scale / np.sqrt(n))  # centred on rllab's init state
        per_coordinate = noise.std(0) / scale
        assert np.all(np.abs(per_coordinate - 1.0) < 0.15), per_coordinate  # every coordinate is perturbed
        assert np.abs(noise).max() > 3.2 * scale  # normal tails
    # the default is gymnasium's: U(-0.1, 0.1) on qpos around qpos0, 0.1 N(0, 1) on qvel
    qpos_g, qvel_g = _reset_states(env_id, "gymnasium", n, seed=123)
    noise_g = qpos_g - model.qpos0
    assert np.abs(noise_g).max() <= 0.1 and abs(noise_g.std() / (0.1 / np.sqrt(3)) - 1.0) < 0.04
    assert abs(_excess_kurtosis(noise_g.ravel()) + 1.2) < 0.1
    assert abs(qvel_g.std() / 0.1 - 1.0) < 0.04
    default = make_single(env_id)
    assert default.reset_noise == "gymnasium" and default.forward_velocity == "torso_fd"
    np.testing.assert_array_equal(
        default.reset(seed=5)[0], make_single(env_id, reset_noise="gymnasium").reset(seed=5)[0]
    )


@pytest.mark.parametrize("env_id", ["metarl/HalfCheetahVel-v0", "metarl/AntVel-v0"])
def test_rllab_reset_noise_is_reproducible_from_the_seed(env_id: str) -> None:
    first, second = _reset_states(env_id, "rllab", 5, seed=7), _reset_states(env_id, "rllab", 5, seed=7)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    other = _reset_states(env_id, "rllab", 5, seed=8)
    assert not np.array_equal(first[0], other[0])
    # the vector form draws each episode's noise as the single env's reset(seed=s_i) does
    vec = make_batched(env_id, num_envs=3, reset_noise="rllab")
    vec.reset(seed=[7, 8, 9])
    for i, seed in enumerate([7, 8, 9]):
        single = make_single(env_id, reset_noise="rllab")
        single.reset(seed=seed)
        np.testing.assert_array_equal(vec.unwrapped._physics.qpos[i], single.data.qpos)
        np.testing.assert_array_equal(vec.unwrapped._physics.qvel[i], single.data.qvel)
    vec.close()


def _reference_com_velocity(env, body: int) -> tuple[np.ndarray, np.ndarray]:
    """The torso subtree's COM velocity at ``env``'s state, two ways, on a fresh ``MjData``:
    MuJoCo's ``mj_subtreeVel`` and a central finite difference of ``subtree_com`` along ``qvel``."""
    import mujoco

    model, data = env.model, mujoco.MjData(env.model)
    data.qpos[:], data.qvel[:] = env.data.qpos, env.data.qvel
    mujoco.mj_forward(model, data)
    mujoco.mj_subtreeVel(model, data)
    h, coms = 1e-6, []
    for sign in (1.0, -1.0):
        moved = mujoco.MjData(model)
        moved.qpos[:] = env.data.qpos
        mujoco.mj_integratePos(model, moved.qpos, env.data.qvel, sign * h)
        mujoco.mj_kinematics(model, moved)
        mujoco.mj_comPos(model, moved)
        coms.append(moved.subtree_com[body].copy())
    return data.subtree_linvel[body].copy(), (coms[0] - coms[1]) / (2 * h)


@pytest.mark.parametrize("env_id", ["metarl/HalfCheetahVel-v0", "metarl/AntVel-v0", "metarl/AntDir-v0"])
def test_subtree_com_velocity_matches_mujoco_and_differs_from_torso_fd(env_id: str) -> None:
    """``forward_velocity="subtree_com"``: rllab's get_body_comvel("torso") after the step."""
    com_env = make_single(env_id, forward_velocity="subtree_com")
    fd_env = make_single(env_id)
    task = {"velocity": 1.0} if "Vel" in env_id else {"direction": -1.0}
    com_env.task = fd_env.task = task
    com_env.reset(seed=4)
    fd_env.reset(seed=4)
    body = com_env.velocity_subtree.body
    assert com_env.model.body(body).name == "torso"
    assert com_env.velocity_subtree.bodies.size == com_env.model.nbody - 1  # the whole robot
    rng = np.random.default_rng(0)
    gaps = []
    for _ in range(25):
        action = rng.uniform(-1.0, 1.0, com_env.action_space.shape).astype(np.float32)
        _, reward, _, _, info = com_env.step(action)
        _, _, _, _, fd_info = fd_env.step(action)
        np.testing.assert_array_equal(com_env.data.qpos, fd_env.data.qpos)  # the option does not touch the physics
        subtree_linvel, finite_difference = _reference_com_velocity(com_env, body)
        np.testing.assert_allclose(info["x_velocity"], subtree_linvel[0], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(info["x_velocity"], finite_difference[0], rtol=1e-6, atol=1e-7)
        if "y_velocity" in info:
            np.testing.assert_allclose(info["y_velocity"], subtree_linvel[1], rtol=1e-10, atol=1e-12)
        expected = -abs(info["x_velocity"] - 1.0) if "Vel" in env_id else -info["x_velocity"]
        assert info["reward_forward"] == pytest.approx(expected, rel=1e-12)
        gaps.append(abs(info["x_velocity"] - fd_info["x_velocity"]))
    # the legs swing: the robot's COM moves unlike the torso (and at the step's end, not on average)
    assert max(gaps) > 0.05, gaps


@pytest.mark.parametrize(
    ("env_id", "kwargs", "backend"),
    [
        ("metarl/HalfCheetahVel-v0", {}, BatchPhysics),
        ("metarl/HalfCheetahDir-v0", {}, BatchPhysics),
        ("metarl/AntVel-v0", {}, PerEnvPhysics),
        ("metarl/AntDir-v0", ANT_NO_CONTACT, BatchPhysics),
    ],
)
def test_rllab_options_single_vs_batched(env_id: str, kwargs: dict, backend: type) -> None:
    options = {"reset_noise": "rllab", "forward_velocity": "subtree_com", **kwargs}
    vec = make_batched(env_id, num_envs=1, **options).unwrapped
    assert isinstance(vec._physics, backend) and vec._probe is not None and vec._reset_noise == "rllab"
    vec.close()
    scale = ANT_ACTION_SCALE if "Ant" in env_id else np.full((NUM_ENVS, 1), 1.5)
    _compare_rollouts(env_id, num_steps=40, action_scale=scale, **options)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"reset_noise": "uniform"}, "reset_noise"), ({"forward_velocity": "com"}, "forward_velocity")],
)
def test_bad_rllab_options(kwargs: dict, match: str) -> None:
    for factory in (AntVelEnv, HalfCheetahVelEnv):
        with pytest.raises(ValueError, match=match):
            factory(**kwargs)


def test_rllab_env_kwargs_reach_the_sampler_through_the_config() -> None:
    """``env.kwargs`` from the config (``--set env.kwargs=...``) reach the natively vectorised form."""
    from metarl.build import make_sampler

    cfg = load_config(
        "configs/ant_vel.yaml",
        ["env.kwargs.reset_noise=rllab", "env.kwargs.forward_velocity=subtree_com", "env.horizon=5"],
    )
    assert cfg.env.kwargs["frame_skip"] == 2  # the config's other kwargs are kept
    sampler = make_sampler(cfg, 2, 1)
    try:
        env = sampler.env.unwrapped
        assert isinstance(env, AntVelVectorEnv)
        assert env._reset_noise == "rllab" and env._probe is not None
        np.testing.assert_array_equal(env._init_qpos, env.single_env.unwrapped.model.numeric("init_qpos").data)
    finally:
        sampler.close()
