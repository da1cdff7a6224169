"""The Ray sampling backend: the same episodes as the local sampler bit for bit, faults, the config section, the CLI.

One local Ray (``ray.init(num_cpus=2)``) is shared by the whole module and shut down after it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from metarl.config import ConfigError, load_config
from metarl.episodes import Episodes
from metarl.errors import EnvError
from metarl.policy import GaussianMLPPolicy, Params, stack_params
from metarl.sampler import Sampler, make_task_env
from tests.helpers import assert_one_error_line, run_cli
from tests.ray_envs import ENV_ID

ray = pytest.importorskip("ray")
from metarl.ray_sampler import Block, RaySampler, sampling_blocks, task_slices  # noqa: E402

FIELDS = ("observations", "actions", "rewards", "mask", "success")


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Any:
    """One local Ray with 2 CPUs for the module (Ray's start-up takes seconds)."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def assert_identical(a: Episodes, b: Episodes) -> None:
    """Every tensor of the two blocks bitwise equal (same dtype and shape)."""
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        if x is None or y is None:  # success: only from envs that report it, then from both backends
            assert x is None and y is None, name
            continue
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert torch.equal(x, y), name


def policy_and_params(
    obs_dim: int, act_dim: int, n: int, hidden: tuple[int, ...] = (16, 16)
) -> tuple[GaussianMLPPolicy, list[Params]]:
    """A seeded policy, with its shared parameters and per-task perturbed stacked ones (as after adaptation)."""
    policy = GaussianMLPPolicy(obs_dim, act_dim, hidden)
    policy.reset_parameters(torch.Generator().manual_seed(0))
    noise = torch.Generator().manual_seed(5)
    stacked = {
        k: v.detach() + 0.05 * torch.randn(v.shape, generator=noise)
        for k, v in stack_params(policy.params(), n).items()
    }
    return policy, [{k: v.detach() for k, v in policy.params().items()}, stacked]


def local_and_ray(
    env_id: str,
    n: int,
    b: int,
    horizon: int,
    workers: int,
    env_kwargs: dict[str, Any] | None = None,
    hidden: tuple[int, ...] = (16, 16),
    **ray_kwargs: Any,
) -> list[Episodes]:
    """Sample with both backends, shared then stacked parameters, and compare bit for bit; the local blocks."""
    task_env = make_task_env(env_id, horizon, env_kwargs)
    tasks = task_env.unwrapped.sample_tasks(n, np.random.default_rng(3))  # type: ignore[attr-defined]
    obs_dim, act_dim = task_env.observation_space.shape[0], task_env.action_space.shape[0]  # type: ignore[index]
    policy, all_params = policy_and_params(obs_dim, act_dim, n, hidden)
    local = Sampler(env_id, n, b, horizon, env_kwargs)
    remote = RaySampler(env_id, n, b, horizon, env_kwargs, num_workers=workers, cpus_per_worker=0.5, **ray_kwargs)
    blocks = []
    try:
        assert remote.num_workers == workers
        for params in all_params:
            expected = local.collect(policy, params, tasks, np.random.default_rng(1), torch.Generator().manual_seed(2))
            got = remote.collect(policy, params, tasks, np.random.default_rng(1), torch.Generator().manual_seed(2))
            assert_identical(expected, got)
            blocks.append(expected)
    finally:
        local.close()
        remote.close()
    return blocks


@pytest.mark.parametrize("workers", [1, 3])
def test_navigation_episodes_identical_to_local(workers: int) -> None:
    local_and_ray("metarl/Navigation2D-v0", 5, 3, 20, workers)


@pytest.mark.parametrize("workers", [1, 3])
def test_halfcheetah_vel_episodes_identical_to_local(workers: int) -> None:
    local_and_ray("metarl/HalfCheetahVel-v0", 4, 2, 15, workers, {"frame_skip": 1, "clip_actions": True})


@pytest.mark.parametrize(("n", "b", "workers"), [(2, 4, 3), (3, 3, 4), (2, 13, 4)])
def test_navigation_episodes_identical_to_local_with_more_actors_than_tasks(n: int, b: int, workers: int) -> None:
    """Each task's episodes split over actors (3 x 3 on 4: blocks of 2 tasks x 1 episode and 1 task x 3). With the
    16-16 policy the 2 x 13 batch's matmuls (16 rows per task) take BLAS and a block's (8 rows) torch's own loop,
    unless per_task_forward pads every block to BLAS's rows."""
    blocks = sampling_blocks(n, b, workers)
    assert any(block.e1 - block.e0 < b for block in blocks)
    local_and_ray("metarl/Navigation2D-v0", n, b, 20, workers)


def test_halfcheetah_vel_episodes_identical_to_local_with_more_actors_than_tasks() -> None:
    """2 tasks x 6 episodes on 4 actors; a 16-10 policy: its last layer reads 10-float rows, 8-byte aligned at
    odd episodes, whose products sum in another order unless per_task_forward aligns every row."""
    assert {(t1 - t0, e1 - e0) for t0, t1, e0, e1 in sampling_blocks(2, 6, 4)} == {(1, 3)}
    local_and_ray("metarl/HalfCheetahVel-v0", 2, 6, 15, 4, {"frame_skip": 1, "clip_actions": True}, hidden=(16, 10))


def test_gymnasium_vector_api_env_identical_to_local() -> None:
    """An env without a native vector form runs in SyncVectorEnv on the actors (module:env-id imported there)."""
    local_and_ray(ENV_ID, 4, 2, 12, 2)


def test_success_flags_come_back_from_the_actors_identical_to_local() -> None:
    """An env that reports ``info["success"]`` (as Meta-World does): the actors send the flags back too."""
    blocks = local_and_ray(ENV_ID, 4, 2, 12, 2, {"success_radius": 0.35, "goal_tolerance": 0.2, "max_action": 0.2})
    assert all(block.success is not None and 0 < float(block.success.sum()) for block in blocks)


def test_success_flags_come_back_identical_from_actors_that_split_the_episodes() -> None:
    blocks = local_and_ray(ENV_ID, 2, 3, 12, 4, {"success_radius": 0.35, "goal_tolerance": 0.2, "max_action": 0.2})
    assert all(block.success is not None and 0 < float(block.success.sum()) for block in blocks)


def test_task_slices_cover_the_batch_contiguously() -> None:
    assert task_slices(5, 3) == [(0, 2), (2, 3), (3, 5)]
    assert task_slices(4, 1) == [(0, 4)]
    with pytest.raises(ValueError):
        task_slices(2, 3)


def test_sampling_blocks_are_whole_tasks_up_to_one_actor_per_task() -> None:
    for n, b in ((5, 3), (20, 10), (1, 4)):
        for workers in range(1, n + 1):
            assert sampling_blocks(n, b, workers) == [(t0, t1, 0, b) for t0, t1 in task_slices(n, workers)]
    assert sampling_blocks(5, 3, 3) == [Block(0, 2, 0, 3), Block(2, 3, 0, 3), Block(3, 5, 0, 3)]


def test_sampling_blocks_cover_every_episode_once_in_blocks_of_nearly_even_size() -> None:
    for n in range(1, 9):
        for b in range(1, 9):
            for workers in range(1, n * b + 1):
                blocks = sampling_blocks(n, b, workers)
                assert len(blocks) == workers and blocks == sorted(blocks)
                cover = np.zeros((n, b), dtype=int)
                for t0, t1, e0, e1 in blocks:
                    assert 0 <= t0 < t1 <= n and 0 <= e0 < e1 <= b
                    cover[t0:t1, e0:e1] += 1
                assert (cover == 1).all(), (n, b, workers)
                if workers > n:  # never worse than splitting each task's episodes on its own
                    largest = max(block.episodes for block in blocks)
                    assert largest <= -(-b // (workers // n)), (n, b, workers)
    assert sampling_blocks(1, 3, 3) == [Block(0, 1, 0, 1), Block(0, 1, 1, 2), Block(0, 1, 2, 3)]
    # ML10 on 64 nodes x 2 cores: all 128 actors, 1 or 2 episodes each (the even split's ceil(200 / 128) = 2)
    sizes = {block.episodes for block in sampling_blocks(20, 10, 128)}
    assert sizes == {1, 2}
    # 39 actors: at most ceil(200 / 39) = 6 episodes, where one task per actor and its episodes split leaves 10
    assert max(block.episodes for block in sampling_blocks(20, 10, 39)) == 6
    assert {block.episodes for block in sampling_blocks(4, 5, 20)} == {1}


def test_sampling_blocks_refuse_more_actors_than_episodes() -> None:
    assert len(sampling_blocks(2, 3, 6)) == 6
    with pytest.raises(ValueError, match="cannot split 2 tasks x 3 episodes between 7 actors: between 1 and 6"):
        sampling_blocks(2, 3, 7)
    with pytest.raises(ValueError, match="between 0 actors"):
        sampling_blocks(2, 3, 0)
    with pytest.raises(ValueError, match=">= 1"):
        sampling_blocks(0, 3, 1)


@pytest.mark.parametrize(("n", "b", "workers"), [(4, 2, 2), (2, 4, 3)])
def test_an_actor_killed_mid_sampling_is_restarted_and_the_batch_is_identical(
    tmp_path: Path, n: int, b: int, workers: int
) -> None:
    """Whole tasks per actor (4 tasks on 2), and episodes split (2 tasks x 4 on 3: the killed actor's block is
    part of the tasks' episodes); the restarted actor re-samples its block with the same streams."""
    horizon = 30
    kwargs = {"step_delay": 0.01, "marker_dir": str(tmp_path)}
    tasks = make_task_env(ENV_ID, horizon).unwrapped.sample_tasks(n, np.random.default_rng(0))  # type: ignore[attr-defined]
    policy, (params, _) = policy_and_params(2, 2, n)
    local = Sampler(ENV_ID, n, b, horizon)
    expected = local.collect(policy, params, tasks, np.random.default_rng(1), torch.Generator().manual_seed(2))
    local.close()
    sampler = RaySampler(ENV_ID, n, b, horizon, kwargs, num_workers=workers, cpus_per_worker=0.5)
    assert sampler.num_workers == workers and (sampler.blocks[0].e1 - sampler.blocks[0].e0 < b) == (workers > n)
    victim = sampler.actors[0]
    pid = sampler.stats.workers[0].rsplit(":", 1)[1]
    killed = threading.Event()

    def kill_when_it_steps() -> None:
        deadline = time.monotonic() + 60
        while not (tmp_path / pid).exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        ray.kill(victim, no_restart=True)
        killed.set()

    killer = threading.Thread(target=kill_when_it_steps)
    killer.start()
    try:
        got = sampler.collect(policy, params, tasks, np.random.default_rng(1), torch.Generator().manual_seed(2))
    finally:
        killer.join()
        sampler.close()
    assert killed.is_set() and sampler.stats.restarts == 1
    assert_identical(expected, got)


def test_an_env_that_raises_once_is_resampled_and_the_batch_is_identical(tmp_path: Path) -> None:
    n, b, horizon = 3, 2, 10
    tasks = make_task_env(ENV_ID, horizon).unwrapped.sample_tasks(n, np.random.default_rng(0))  # type: ignore[attr-defined]
    policy, (_, stacked) = policy_and_params(2, 2, n)
    local = Sampler(ENV_ID, n, b, horizon)
    expected = local.collect(policy, stacked, tasks, np.random.default_rng(1), torch.Generator().manual_seed(2))
    local.close()
    kwargs = {"fail_file": str(tmp_path / "failures"), "fail_times": 1}
    sampler = RaySampler(ENV_ID, n, b, horizon, kwargs, num_workers=2, cpus_per_worker=0.5, max_failures=1)
    try:
        got = sampler.collect(policy, stacked, tasks, np.random.default_rng(1), torch.Generator().manual_seed(2))
    finally:
        sampler.close()
    assert (tmp_path / "failures").read_text() == "1" and sampler.stats.restarts == 1
    assert_identical(expected, got)


def test_an_env_that_keeps_raising_stops_after_max_failures_with_one_line(tmp_path: Path) -> None:
    n, b, horizon = 2, 2, 10
    tasks = make_task_env(ENV_ID, horizon).unwrapped.sample_tasks(n, np.random.default_rng(0))  # type: ignore[attr-defined]
    policy, (params, _) = policy_and_params(2, 2, n)
    kwargs = {"fail_file": str(tmp_path / "failures"), "fail_times": 100}
    sampler = RaySampler(ENV_ID, n, b, horizon, kwargs, num_workers=1, cpus_per_worker=0.5, max_failures=2)
    try:
        with pytest.raises(EnvError) as error:
            sampler.collect(policy, params, tasks, np.random.default_rng(1), torch.Generator().manual_seed(2))
    finally:
        sampler.close()
    message = str(error.value)
    assert "\n" not in message
    for fragment in (
        "metarl_test/Navigation-v0",
        "tasks 0..1, episodes 0..1 of the meta-batch",
        "failed 3 times",
        "sampler.max_failures=2",
        "goal_x",
        "injected",
    ):
        assert fragment in message, (fragment, message)
    assert (tmp_path / "failures").read_text() == "3"  # the first try and max_failures=2 re-samplings


def test_a_failing_block_of_episodes_is_named_with_its_episode_range(tmp_path: Path) -> None:
    tasks = make_task_env(ENV_ID, 10).unwrapped.sample_tasks(1, np.random.default_rng(0))  # type: ignore[attr-defined]
    policy, (params, _) = policy_and_params(2, 2, 1)
    kwargs = {"fail_file": str(tmp_path / "failures"), "fail_times": 100}
    sampler = RaySampler(ENV_ID, 1, 2, 10, kwargs, num_workers=2, cpus_per_worker=0.5, max_failures=0)
    try:
        assert sampler.blocks == [Block(0, 1, 0, 1), Block(0, 1, 1, 2)]
        with pytest.raises(EnvError, match=r"sampling tasks 0\.\.0, episodes ([01])\.\.\1 of the meta-batch") as error:
            sampler.collect(policy, params, tasks, np.random.default_rng(1), torch.Generator().manual_seed(2))
    finally:
        sampler.close()
    assert "\n" not in str(error.value) and "failed 1 times" in str(error.value)


def test_more_actors_than_cpus_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="sampler.num_workers"):
        RaySampler("metarl/Navigation2D-v0", 4, 1, 5, num_workers=3, cpus_per_worker=1.0)


def test_sampler_config_section() -> None:
    config = load_config(None, ["sampler.backend=ray", "sampler.ray_address=auto", "sampler.max_failures=0"])
    assert (config.sampler.backend, config.sampler.ray_address, config.sampler.max_failures) == ("ray", "auto", 0)
    assert load_config(None).sampler.backend == "local"
    with pytest.raises(ConfigError, match="sampler.backend"):
        load_config(None, ["sampler.backend=spark"])
    with pytest.raises(ConfigError, match="sampler.max_failures"):
        load_config(None, ["sampler.max_failures=-1"])


def test_cli_trains_on_the_ray_backend_and_env_failures_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny = [
        "--set", "maml.meta_batch_size=3", "--set", "maml.episodes_per_task=2", "--set", "env.horizon=10",
        "--set", "policy.hidden_sizes=[8]", "--set", "train.iterations=1", "--no-progress",
        "--set", "sampler.backend=ray", "--set", "sampler.num_workers=2", "--set", "sampler.cpus_per_worker=0.5",
    ]  # fmt: skip
    code, _, err = run_cli(capsys, "train", "--run-dir", str(tmp_path / "run"), *tiny)
    assert code == 0, err
    assert (tmp_path / "run" / "checkpoints" / "latest.pt").is_file()
    failing = [
        "--set", f"env.id={ENV_ID}", "--set", f"env.kwargs.fail_file={tmp_path / 'failures'}",
        "--set", "env.kwargs.fail_times=100", "--set", "sampler.max_failures=1",
    ]  # fmt: skip
    code, _, err = run_cli(capsys, "train", "--run-dir", str(tmp_path / "bad"), *tiny, *failing)
    assert_one_error_line(code, err, "iteration 0", "metarl_test/Navigation-v0", "failed 2 times", "injected failure")
