"""Sinusoid regression: the one-step env, supervised MAML through the core, and both training paths."""

from __future__ import annotations

import json
import math
from pathlib import Path

import gymnasium
import metarl.envs  # noqa: F401
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from metarl.envs.sinusoid import SinusoidEnv, SinusoidVectorEnv

from metarl.cli import main as cli
from metarl.config import load_config
from metarl.policy import GaussianMLPPolicy
from metarl.sampler import Sampler
from metarl.trainer import train

ROOT = Path(__file__).resolve().parents[1]
RL_CONFIG = ROOT / "configs" / "sinusoid_rl.yaml"
SUPERVISED_CONFIG = ROOT / "configs" / "sinusoid_supervised.yaml"


# --------------------------------------------------------------------------- env


@pytest.mark.filterwarnings("ignore:.*symmetric and normalized space:UserWarning")
def test_check_env_passes() -> None:
    check_env(gymnasium.make("metarl/Sinusoid-v0").unwrapped, skip_render_check=True)


def test_tasks_come_from_the_given_rng_only() -> None:
    env = SinusoidEnv()
    a = env.sample_tasks(200, np.random.default_rng(3))
    assert a == env.sample_tasks(200, np.random.default_rng(3))
    amplitude = np.array([t["amplitude"] for t in a])
    phase = np.array([t["phase"] for t in a])
    assert 0.1 <= amplitude.min() and amplitude.max() <= 5.0 and amplitude.std() > 1.0
    assert 0.0 <= phase.min() and phase.max() <= math.pi and phase.std() > 0.5


def test_episode_is_one_step_scored_by_squared_error() -> None:
    env = gymnasium.make("metarl/Sinusoid-v0")
    env.unwrapped.task = {"amplitude": 2.0, "phase": 0.5}
    obs, _ = env.reset(seed=4)
    assert obs.shape == (1,) and obs.dtype == np.float32 and -5 <= obs[0] <= 5
    action = np.array([0.7], dtype=np.float32)
    _, reward, terminated, _, info = env.step(action)
    target = 2.0 * math.sin(float(obs[0]) + 0.5)
    assert terminated
    assert info["target"] == pytest.approx(target, rel=1e-12)
    assert reward == pytest.approx(-((0.7 - target) ** 2), rel=1e-6)  # the action is float32
    with pytest.raises(RuntimeError, match="call reset"):
        env.unwrapped.step(action)
    assert env.reset(seed=4)[0] == obs  # the seed fixes x


def test_bad_env_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="amplitude_low"):
        SinusoidEnv(amplitude_low=5.0, amplitude_high=1.0)
    with pytest.raises(ValueError, match="action_bound"):
        SinusoidEnv(action_bound=2.0)
    with pytest.raises(ValueError, match="'amplitude' and 'phase'"):
        SinusoidVectorEnv(2).set_attr("task", [{"goal": 1.0}] * 2)


def test_single_and_vector_forms_give_identical_transitions(rng: np.random.Generator) -> None:
    tasks = SinusoidEnv().sample_tasks(6, rng)
    vec = gymnasium.make_vec("metarl/Sinusoid-v0", num_envs=6, vectorization_mode="vector_entry_point")
    assert isinstance(vec, SinusoidVectorEnv)
    vec.set_attr("task", tasks)
    singles = [SinusoidEnv() for _ in tasks]
    for env, task in zip(singles, tasks):
        env.task = task
    seeds = rng.integers(0, 2**31 - 1, size=6).tolist()
    for episode in range(3):  # seeded resets, then resets continuing each episode's generator
        obs_v, _ = vec.reset(seed=seeds if episode == 0 else None)
        obs_s = np.stack([env.reset(seed=seeds[i] if episode == 0 else None)[0] for i, env in enumerate(singles)])
        np.testing.assert_array_equal(obs_v, obs_s)
        actions = rng.uniform(-12, 12, size=(6, 1))  # includes out-of-bound actions (scored as given)
        _, rew_v, term_v, trunc_v, info_v = vec.step(actions)
        out = [env.step(a) for env, a in zip(singles, actions)]
        np.testing.assert_array_equal(rew_v, np.array([o[1] for o in out]))
        np.testing.assert_array_equal(info_v["target"], np.array([o[4]["target"] for o in out]))
        assert term_v.all() and not trunc_v.any()


def test_sampler_runs_k_one_step_episodes_per_task(rng: np.random.Generator) -> None:
    policy = GaussianMLPPolicy(1, 1, (8,), "relu", init_std=0.3)
    tasks = SinusoidEnv().sample_tasks(3, rng)
    blocks = []
    for vectorization in ("native", "sync"):
        sampler = Sampler("metarl/Sinusoid-v0", 3, 5, 1, vectorization=vectorization)
        reset_rng, generator = np.random.default_rng(1), torch.Generator().manual_seed(2)
        blocks.append(sampler.collect(policy, policy.params(), tasks, reset_rng, generator))
        sampler.close()
    assert blocks[0].observations.shape == (1, 3, 5, 1) and blocks[0].num_steps == 15
    for name in ("observations", "actions", "rewards", "mask"):
        torch.testing.assert_close(getattr(blocks[0], name), getattr(blocks[1], name))
    amplitude = torch.tensor([t["amplitude"] for t in tasks]).view(3, 1)
    phase = torch.tensor([t["phase"] for t in tasks]).view(3, 1)
    target = amplitude * torch.sin(blocks[0].observations[0, ..., 0].double() + phase)
    torch.testing.assert_close(
        blocks[0].rewards[0].double(), -((blocks[0].actions[0, ..., 0].double() - target) ** 2), rtol=1e-5, atol=1e-5
    )


# --------------------------------------------------------------------------- supervised MAML core


# --------------------------------------------------------------------------- training runs


def test_rl_config_trains_end_to_end_and_evaluates(tmp_path: Path) -> None:
    config = load_config(
        RL_CONFIG,
        [
            "maml.meta_batch_size=3",
            "maml.episodes_per_task=6",
            "policy.hidden_sizes=[8]",
            "train.iterations=2",
            "train.checkpoint_every=1",
        ],
    )
    train(config, tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1]
    assert all(r["meta/return_post"] < 0 for r in rows)
    assert cli(["evaluate", "--run-dir", str(tmp_path), "--num-tasks", "3", "--episodes", "4", "--num-steps", "1"]) == 0
    steps = json.loads((tmp_path / "evaluation.json").read_text())["steps"]
    assert [s["step"] for s in steps] == [0, 1]
