"""The sampler: native and generic vector paths, stacked parameters, thread scoping, failing envs named."""

from __future__ import annotations

import gymnasium
import metarl.envs  # noqa: F401
import numpy as np
import pytest
import torch
from metarl.envs.base import check_task_env
from metarl.envs.navigation import Navigation2DEnv

from metarl.episodes import Episodes
from metarl.errors import ConfigError, EnvError
from metarl.policy import GaussianMLPPolicy, stack_params
from metarl.sampler import Sampler, budget_rounds, collect_to_budget, make_task_env
from tests.helpers import random_episodes


def test_native_and_generic_sampler_paths_agree(rng: np.random.Generator) -> None:
    policy = GaussianMLPPolicy(2, 2, (8,))
    tasks = Navigation2DEnv().sample_tasks(3, rng)
    blocks = []
    for vectorization in ("native", "sync"):
        sampler = Sampler("metarl/Navigation2D-v0", 3, 2, 10, vectorization=vectorization)
        blocks.append(
            sampler.collect(policy, policy.params(), tasks, np.random.default_rng(1), torch.Generator().manual_seed(2))
        )
        sampler.close()
    for name in ("observations", "actions", "rewards", "mask"):
        torch.testing.assert_close(getattr(blocks[0], name), getattr(blocks[1], name))


def test_sampler_policy_threads_are_scoped_to_collect(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forwards run on ``policy_threads``; the caller's torch thread count is restored, also on error."""
    import metarl.sampler

    policy = GaussianMLPPolicy(2, 2, (8,))
    tasks = Navigation2DEnv().sample_tasks(2, rng)
    sampler = Sampler("metarl/Navigation2D-v0", 2, 2, 5, policy_threads=1)
    seen = []
    real_forward = metarl.sampler.per_task_forward

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real_forward(*args, **kwargs)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(metarl.sampler, "per_task_forward", spy)
        sampler.collect(policy, policy.params(), tasks, np.random.default_rng(0), torch.Generator().manual_seed(0))
        assert seen == [1] * 5 and torch.get_num_threads() == 2
        with pytest.raises(ValueError):
            sampler.collect(policy, policy.params(), tasks[:1], np.random.default_rng(0), torch.Generator())
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
        sampler.close()
    with pytest.raises(ValueError, match="policy_threads"):
        Sampler("metarl/Navigation2D-v0", 2, 2, 5, policy_threads=0)


def test_stacked_params_sample_like_shared_params(rng: np.random.Generator) -> None:
    policy = GaussianMLPPolicy(2, 2, (8,))
    tasks = Navigation2DEnv().sample_tasks(3, rng)
    sampler = Sampler("metarl/Navigation2D-v0", 3, 4, 12)
    shared = sampler.collect(policy, policy.params(), tasks, np.random.default_rng(1), torch.Generator().manual_seed(2))
    stacked_params = {k: v.detach() for k, v in stack_params(policy.params(), 3).items()}
    stacked = sampler.collect(policy, stacked_params, tasks, np.random.default_rng(1), torch.Generator().manual_seed(2))
    torch.testing.assert_close(shared.observations, stacked.observations)
    assert shared.observations.shape == (12, 3, 4, 2)


def test_env_without_task_protocol_is_rejected() -> None:
    with pytest.raises(TypeError, match="task protocol"):
        check_task_env(gymnasium.make("CartPole-v1"))
    with pytest.raises(ConfigError, match="cannot make environment"):
        make_task_env("metarl/DoesNotExist-v0", 10)


def test_env_that_raises_or_returns_nan_is_named(rng: np.random.Generator) -> None:
    """A failing env stops sampling with one EnvError line naming the env id, the task and the step."""
    policy = GaussianMLPPolicy(2, 2, (4,), "tanh")
    policy.reset_parameters(torch.Generator().manual_seed(0))
    sampler = Sampler("metarl/Navigation2D-v0", 2, 2, 5, vectorization="sync")
    tasks = Navigation2DEnv().sample_tasks(2, rng)

    def raising_step(self, action):  # type: ignore[no-untyped-def]
        raise RuntimeError("simulator exploded")

    original = Navigation2DEnv.step
    Navigation2DEnv.step = raising_step  # type: ignore[method-assign]
    try:
        with pytest.raises(EnvError, match=r"metarl/Navigation2D-v0 raised in step .*task \{.*simulator exploded"):
            sampler.collect(policy, policy.params(), tasks, rng, torch.Generator().manual_seed(0))
    finally:
        Navigation2DEnv.step = original  # type: ignore[method-assign]

    def nan_step(self, action):  # type: ignore[no-untyped-def]
        obs, reward, terminated, truncated, info = original(self, action)
        return obs * np.nan, reward, terminated, truncated, info

    Navigation2DEnv.step = nan_step  # type: ignore[method-assign]
    try:
        with pytest.raises(EnvError, match=r"non-finite observation at episode step 1 \(task \{'goal_x'"):
            sampler.collect(policy, policy.params(), tasks, rng, torch.Generator().manual_seed(0))
    finally:
        Navigation2DEnv.step = original  # type: ignore[method-assign]
    sampler.close()


# --------------------------------------------------------------------------- sample budget (maml.samples_per_task)

# goal_tolerance 0.12: the near goals end many episodes at the first steps; the far goals (0.9, +-0.9) are out of
# reach within the horizon of 6 steps (0.1 per step), so their episodes always run the full horizon
BUDGET_TASKS = [
    {"goal_x": 0.1, "goal_y": 0.0},
    {"goal_x": 0.9, "goal_y": 0.9},
    {"goal_x": 0.0, "goal_y": -0.1},
    {"goal_x": -0.9, "goal_y": 0.9},
]
NEAR, FAR = [0, 2], [1, 3]
BUDGET_B, BUDGET_T = 4, 6


def _budget_setup(dtype: torch.dtype = torch.float64) -> tuple[GaussianMLPPolicy, Sampler]:
    policy = GaussianMLPPolicy(2, 2, (8,)).to(dtype)
    policy.reset_parameters(torch.Generator().manual_seed(0))
    sampler = Sampler("metarl/Navigation2D-v0", 4, BUDGET_B, BUDGET_T, env_kwargs={"goal_tolerance": 0.12}, dtype=dtype)
    return policy, sampler


def _budget_collect(sampler, policy: GaussianMLPPolicy, budget: int | None, seed: int = 1, **kwargs):
    return collect_to_budget(
        sampler,
        policy,
        policy.params(),
        BUDGET_TASKS,
        np.random.default_rng(seed),
        torch.Generator().manual_seed(seed + 1),
        budget,
        **kwargs,
    )


def test_budget_is_reached_and_only_short_tasks_get_more_episodes() -> None:
    policy, sampler = _budget_setup()
    budget = 20
    try:
        plain = _budget_collect(sampler, policy, None)
        episodes = _budget_collect(sampler, policy, budget)
    finally:
        sampler.close()
    first_counts = plain.mask.sum((0, 2))
    assert (first_counts[FAR] == BUDGET_T * BUDGET_B).all() and (first_counts[NEAR] < budget).all()
    t, n, b_total = episodes.mask.shape
    assert (t, n) == (BUDGET_T, 4) and b_total > BUDGET_B
    counts = episodes.mask.sum((0, 2))
    assert (counts >= budget).all(), counts
    # the first round is the plain sampling, whole
    for name in ("observations", "actions", "rewards", "mask"):
        torch.testing.assert_close(getattr(episodes, name)[:, :, :BUDGET_B], getattr(plain, name), rtol=0, atol=0)
    # the tasks that had enough get nothing more: no valid sample beyond the first B episodes
    assert episodes.mask[:, FAR, BUDGET_B:].sum() == 0 and (counts[FAR] == first_counts[FAR]).all()
    lengths = episodes.mask.sum(0)  # [n, B_total]
    for i in NEAR:
        kept = lengths[i][lengths[i] > 0]
        assert kept.sum() >= budget > kept[:-1].sum()  # extra episodes only until the budget is reached
        assert (lengths[i, : kept.numel()] > 0).all()  # the episodes come first, the empty slots after
    # empty slots are empty: no valid step, zero values; no slot is empty for every task
    empty = lengths == 0
    assert empty.any() and not empty.all(0).any()
    assert episodes.observations[:, empty].abs().sum() == 0 and episodes.actions[:, empty].abs().sum() == 0
    assert episodes.rewards[:, empty].abs().sum() == 0


def test_budget_sampling_is_deterministic_and_reads_the_samplers_budget() -> None:
    policy, sampler = _budget_setup()
    try:
        first = _budget_collect(sampler, policy, 20, seed=5)
        second = _budget_collect(sampler, policy, 20, seed=5)
        sampler.samples_per_task = 20  # what the trainer sets from maml.samples_per_task
        from_attribute = _budget_collect(sampler, policy, None, seed=5)
        other = _budget_collect(sampler, policy, 20, seed=6)
        sampler.samples_per_task = None
        plain = _budget_collect(sampler, policy, None, seed=5)
    finally:
        sampler.close()
    for name in ("observations", "actions", "rewards", "mask"):
        torch.testing.assert_close(getattr(first, name), getattr(second, name), rtol=0, atol=0)
        torch.testing.assert_close(getattr(first, name), getattr(from_attribute, name), rtol=0, atol=0)
    assert not torch.equal(first.actions[:, :, :BUDGET_B], other.actions[:, :, :BUDGET_B])
    assert plain.episodes_per_task == BUDGET_B  # no budget: exactly sampler.collect


def test_budget_stops_after_the_round_limit_with_a_warning() -> None:
    policy, sampler = _budget_setup()
    calls = []
    real_collect = sampler.collect

    def counting_collect(*args, **kwargs):
        calls.append(1)
        return real_collect(*args, **kwargs)

    sampler.collect = counting_collect  # type: ignore[method-assign]
    budget = 2 * BUDGET_T * BUDGET_B  # two rounds of the far tasks' full-length episodes
    try:
        with pytest.warns(RuntimeWarning, match="samples_per_task=48: 2 of 4 tasks have fewer"):
            limited = _budget_collect(sampler, policy, budget, max_rounds=3)
    finally:
        sampler.close()
    assert len(calls) == 3 and budget_rounds(budget, BUDGET_T, BUDGET_B) == 8
    counts = limited.mask.sum((0, 2))
    assert (counts[FAR] == budget).all() and (counts[NEAR] < budget).all()  # what there is, returned
    assert limited.episodes_per_task <= 3 * BUDGET_B


def _with_empty_episodes(episodes: Episodes, slots: list[int]) -> Episodes:
    """``episodes`` with fully masked, zero episodes inserted at ``slots`` of the enlarged ``B`` axis."""
    b = episodes.episodes_per_task + len(slots)
    real = [j for j in range(b) if j not in slots]
    out = {}
    for name in ("observations", "actions", "rewards", "mask"):
        value = getattr(episodes, name)
        wide = torch.zeros(value.shape[0], value.shape[1], b, *value.shape[3:], dtype=value.dtype)
        wide[:, :, real] = value
        out[name] = wide
    return Episodes(**out)


def test_empty_episodes_change_no_advantage_loss_or_metric(tiny_policy: GaussianMLPPolicy) -> None:
    """Fully masked episodes (what the budget pads tasks with) are invisible to every consumer (float64)."""
    from metarl.advantages import process
    from metarl.maml import log_probs, mean_kl, old_policy, reinforce_loss, surrogate_loss
    from metarl.trainer import episode_metrics, mean_episode_return
    from metarl.trpo import adapt_first_order

    base = random_episodes(n=3, b=4, t=7, seed=11)
    raw = Episodes(base.observations, base.actions, base.rewards, base.mask)
    slots = [1, 4, 6, 7]
    padded_raw = _with_empty_episodes(raw, slots)
    real = [j for j in range(8) if j not in slots]
    tight = {"rtol": 1e-12, "atol": 1e-12}
    for normalize in (True, False):
        plain = process(raw, gamma=0.9, gae_lambda=0.95, normalize=normalize)
        padded = process(padded_raw, gamma=0.9, gae_lambda=0.95, normalize=normalize)
        torch.testing.assert_close(padded.advantages[:, :, real], plain.advantages, **tight)
        torch.testing.assert_close(padded.returns[:, :, real], plain.returns, **tight)
        assert padded.advantages[:, :, slots].abs().sum() == 0
    params = tiny_policy.params()
    stacked = {k: v.detach().unsqueeze(0).expand(3, *v.shape).clone() for k, v in params.items()}
    torch.testing.assert_close(
        reinforce_loss(tiny_policy, stacked, padded), reinforce_loss(tiny_policy, stacked, plain), **tight
    )
    torch.testing.assert_close(
        reinforce_loss(tiny_policy, stacked, padded, "lvc"), reinforce_loss(tiny_policy, stacked, plain, "lvc"), **tight
    )
    moved = {k: v + 0.05 for k, v in stacked.items()}
    old_plain, old_padded = old_policy(tiny_policy, stacked, plain), old_policy(tiny_policy, stacked, padded)
    torch.testing.assert_close(
        surrogate_loss(tiny_policy, moved, padded, old_padded),
        surrogate_loss(tiny_policy, moved, plain, old_plain),
        **tight,
    )
    torch.testing.assert_close(
        mean_kl(tiny_policy, moved, padded, old_padded), mean_kl(tiny_policy, moved, plain, old_plain), **tight
    )
    assert log_probs(tiny_policy, stacked, padded)[0].isfinite().all()
    adapted_plain = adapt_first_order(tiny_policy, params, [plain], [0.5])
    adapted_padded = adapt_first_order(tiny_policy, params, [padded], [0.5])
    for name in adapted_plain:
        torch.testing.assert_close(adapted_padded[name], adapted_plain[name], **tight)
    assert episode_metrics(padded, "pre") == pytest.approx(episode_metrics(plain, "pre"), rel=1e-12)
    assert mean_episode_return(padded) == pytest.approx(mean_episode_return(plain), rel=1e-12)


def test_budget_through_the_config_and_training(tmp_path) -> None:
    """``--set maml.samples_per_task=...`` reaches the training sampler; the per-task episode counts are logged."""
    import json

    from metarl.config import load_config
    from metarl.errors import ConfigError as Invalid
    from metarl.trainer import train

    with pytest.raises(Invalid, match="samples_per_task"):
        load_config(None, ["maml.samples_per_task=0"])
    assert load_config(None, []).maml.samples_per_task is None
    overrides = [
        "env.id=metarl/Navigation2D-v0",
        "env.kwargs={goal_tolerance: 0.12}",
        "env.horizon=6",
        "maml.meta_batch_size=3",
        "maml.episodes_per_task=2",
        "maml.samples_per_task=10",
        "policy.hidden_sizes=[8]",
        "train.iterations=2",
    ]
    cfg = load_config(None, overrides)
    assert cfg.maml.samples_per_task == 10
    train(cfg, tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        for when in ("pre", "post"):
            assert row[f"episodes/per_task_{when}"] >= 2
            assert row[f"episodes/samples_per_task_{when}"] >= 10
            assert row[f"episodes/short_of_budget_{when}"] == 0.0
            assert 0 < row[f"episodes/length_{when}"] <= 6
    assert any(row["episodes/per_task_pre"] > 2 for row in rows)


def test_success_is_any_valid_step_and_none_when_the_env_reports_none() -> None:
    """``info["success"]`` per step, masked after termination; an episode succeeds if any of its steps does.

    Checked against the rewards (minus the distance to the goal): success at a step is distance < radius.
    """
    from tests.ray_envs import ENV_ID

    radius, n, b, horizon = 0.35, 4, 5, 12
    env_kwargs = {"success_radius": radius, "goal_tolerance": 0.2, "max_action": 0.2}
    tasks = make_task_env(ENV_ID, horizon, env_kwargs).unwrapped.sample_tasks(n, np.random.default_rng(0))  # type: ignore[attr-defined]
    policy = GaussianMLPPolicy(2, 2, (8,))
    sampler = Sampler(ENV_ID, n, b, horizon, env_kwargs)
    try:
        episodes = sampler.collect(
            policy, policy.params(), tasks, np.random.default_rng(1), torch.Generator().manual_seed(2)
        )
    finally:
        sampler.close()
    assert episodes.success is not None and episodes.success.shape == episodes.mask.shape
    within = ((-episodes.rewards < radius) & (episodes.mask > 0)).to(episodes.mask.dtype)
    torch.testing.assert_close(episodes.success, within, rtol=0, atol=0)
    expected = within.amax(0)
    success = episodes.episode_success()
    assert success is not None
    torch.testing.assert_close(success, expected, rtol=0, atol=0)
    assert 0 < float(success.mean()) < 1  # some episodes succeed and some do not: the check can fail
    assert float(episodes.mask.sum()) < episodes.mask.numel()  # some episodes terminated (padded steps dropped)

    plain = Sampler("metarl/Navigation2D-v0", n, b, horizon)
    try:
        none = plain.collect(policy, policy.params(), tasks, np.random.default_rng(1), torch.Generator().manual_seed(2))
    finally:
        plain.close()
    assert none.success is None and none.episode_success() is None


def test_budget_sampling_keeps_the_success_flags_of_the_episodes_it_keeps() -> None:
    from tests.ray_envs import ENV_ID

    env_kwargs = {"success_radius": 0.35, "goal_tolerance": 0.2, "max_action": 0.2}
    tasks = make_task_env(ENV_ID, 12, env_kwargs).unwrapped.sample_tasks(3, np.random.default_rng(0))  # type: ignore[attr-defined]
    policy = GaussianMLPPolicy(2, 2, (8,))
    sampler = Sampler(ENV_ID, 3, 2, 12, env_kwargs)
    try:
        episodes = collect_to_budget(
            sampler, policy, policy.params(), tasks, np.random.default_rng(1), torch.Generator().manual_seed(2), 40
        )
    finally:
        sampler.close()
    assert episodes.success is not None and episodes.episodes_per_task > 2
    within = ((-episodes.rewards < 0.35) & (episodes.mask > 0)).to(episodes.mask.dtype)
    torch.testing.assert_close(episodes.success, within, rtol=0, atol=0)


@pytest.mark.parametrize("episodes", [1, 2, 3, 5])
def test_a_tasks_actions_are_bitwise_the_same_in_any_slice_of_the_batch(episodes: int) -> None:
    """What a Ray actor computes for its slice equals the whole batch's rows bit for bit, also when a task's
    rows would start misaligned in the batch (2 episodes x 17 floats: byte 136), which gave other last bits."""
    from metarl.sampler import per_task_forward

    policy = GaussianMLPPolicy(17, 6, (16, 16))
    policy.reset_parameters(torch.Generator().manual_seed(0))
    shared = {k: v.detach() for k, v in policy.params().items()}
    noise = torch.Generator().manual_seed(1)
    stacked = {k: v + 0.05 * torch.randn(v.shape, generator=noise) for k, v in stack_params(shared, 4).items()}
    obs = torch.randn(4, episodes, 17, generator=torch.Generator().manual_seed(2))
    for params in (shared, stacked):
        full_mean, full_log_std = per_task_forward(policy, obs, params)
        assert full_mean.shape == (4, episodes, 6) and full_log_std.shape == (4, episodes, 6)
        for start, stop in ((0, 1), (1, 2), (1, 3), (3, 4), (2, 4)):
            part = params if params is shared else {k: v[start:stop].clone() for k, v in params.items()}
            mean, _ = per_task_forward(policy, obs[start:stop].clone(), part)
            assert torch.equal(mean, full_mean[start:stop]), (start, stop)


@pytest.mark.parametrize(
    ("obs_dim", "act_dim", "hidden", "activation"),
    [
        (17, 6, (16, 16), "tanh"),  # 4 rows of 16 x 6 in the last layer: torch's small-matmul loop, not BLAS
        (2, 2, (16, 16), "tanh"),  # 2 x 16 x rows < 400 below 13 rows
        (17, 6, (50, 50), "tanh"),  # a 50-wide input: rows at offsets 200 bytes apart, not all 16-byte aligned
        (3, 5, (7, 13), "relu"),
        (1, 1, (40, 40), "relu"),  # a one-unit output layer (sinusoid RL)
        (39, 4, (100, 100), "tanh"),  # Meta-World's
    ],
)
def test_a_tasks_actions_are_bitwise_the_same_whatever_subset_of_its_episodes_is_sampled(
    obs_dim: int, act_dim: int, hidden: tuple[int, ...], activation: str
) -> None:
    """A Ray actor's block of tasks x episodes (down to one episode) computes what the whole batch computes for
    those rows, bit for bit: every block size takes the same kernel on the same row alignment."""
    from metarl.sampler import per_task_forward

    n, b = 3, 13
    policy = GaussianMLPPolicy(obs_dim, act_dim, hidden, activation)  # type: ignore[arg-type]
    policy.reset_parameters(torch.Generator().manual_seed(0))
    shared = {k: v.detach() for k, v in policy.params().items()}
    noise = torch.Generator().manual_seed(1)
    stacked = {k: v + 0.05 * torch.randn(v.shape, generator=noise) for k, v in stack_params(shared, n).items()}
    obs = torch.randn(n, b, obs_dim, generator=torch.Generator().manual_seed(2))
    blocks = [(t0, t1, e0, e1) for t0, t1 in ((0, 1), (1, 3), (0, 3)) for e0 in range(b) for e1 in (e0 + 1, e0 + 2, b)]
    for params in (shared, stacked):
        full_mean, full_log_std = per_task_forward(policy, obs, params)
        reference, _ = policy(obs, params) if params is stacked else policy(obs)
        torch.testing.assert_close(full_mean, reference, rtol=1e-5, atol=1e-6)  # it is the policy's forward
        for t0, t1, e0, e1 in blocks:
            part = params if params is shared else {k: v[t0:t1].clone() for k, v in params.items()}
            mean, log_std = per_task_forward(policy, obs[t0:t1, e0:e1].clone(), part)
            assert torch.equal(mean, full_mean[t0:t1, e0:e1]), (t0, t1, e0, e1)
            assert torch.equal(log_std, full_log_std[t0:t1, e0:e1]), (t0, t1, e0, e1)


def test_padded_rows_reach_the_blas_path_in_multiples_of_four() -> None:
    from metarl.sampler import BMM_LOOP_WORK, padded_rows

    def params(*sizes: int) -> dict[str, torch.Tensor]:
        return {f"layers.{i}.weight": torch.zeros(o, k) for i, (k, o) in enumerate(zip(sizes[:-1], sizes[1:]))}

    assert padded_rows(10, params(39, 100, 100, 4)) == 12  # Meta-World: 4 x 100 x 4 rows is past the loop already
    assert padded_rows(1, params(17, 16, 16, 6)) == 8  # 16 x 6 x 4 = 384 < 400: 8 rows
    assert padded_rows(1, params(1, 40, 40, 1)) == 12  # a one-unit layer counts two wide: 40 x 2 x 12 >= 400
    assert padded_rows(21, params(2, 16, 2)) == 24
    for rows in range(1, 30):
        got = padded_rows(rows, params(3, 7, 13, 5))
        assert got >= rows and got % 4 == 0 and got * 3 * 7 >= BMM_LOOP_WORK


def test_a_blocks_non_finite_observation_names_the_meta_batchs_episode() -> None:
    """A Ray actor's block starts at episode ``first_episode`` of its tasks: the error names that episode."""
    from metarl.sampler import make_vector_env, rollout

    policy = GaussianMLPPolicy(2, 2, (4,))
    policy.reset_parameters(torch.Generator().manual_seed(0))
    tasks = Navigation2DEnv().sample_tasks(1, np.random.default_rng(0))
    env = make_vector_env("metarl/Navigation2D-v0", 2, 5, vectorization="sync")
    original = Navigation2DEnv.step

    def nan_step(self, action):  # type: ignore[no-untyped-def]
        obs, reward, terminated, truncated, info = original(self, action)
        return obs * np.nan, reward, terminated, truncated, info

    Navigation2DEnv.step = nan_step  # type: ignore[method-assign]
    try:
        with pytest.raises(EnvError, match=r"non-finite observation at episode step 1 \(task .*, episode 3\)"):
            rollout(
                env, "metarl/Navigation2D-v0", policy, policy.params(), tasks, 2, 5, torch.float32, [1, 2], [3, 4], 3
            )
    finally:
        Navigation2DEnv.step = original  # type: ignore[method-assign]
        env.close()
