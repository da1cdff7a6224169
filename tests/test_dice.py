"""The DiCE inner estimator (float64): exact derivatives on an enumerated MDP, the terms the log and lvc forms
miss, the loss on a real policy, and the MAML meta-gradient and curvature through it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from metarl.episodes import Episodes, masked_task_mean, task_major
from metarl.maml import (
    MetaBatch,
    adapt,
    adapt_on_batch,
    adapt_steps,
    dice_weights,
    log_probs,
    mean_kl,
    old_policy,
    reinforce_loss,
    rl_inner_loss,
    surrogate_loss,
)
from metarl.policy import GaussianMLPPolicy, Params, detach_params, flatten, stack_params, unflatten
from metarl.trpo import TRPOSettings, kl_curvature, meta_gradient, trpo_step
from tests.helpers import finite_difference_grad, random_episodes, settings

# --------------------------------------------------------------------------- an enumerated MDP

GAMMA = 0.9
HORIZON = 3
STATES, ACTIONS = 3, 2


@dataclass(frozen=True)
class Trajectories:
    """Every trajectory of the MDP under any policy: padded ``[N, T]`` states and actions, the valid steps, the
    environment's part of each trajectory's probability and its discounted rewards ``gamma^t r_t``."""

    states: Tensor
    actions: Tensor
    mask: Tensor
    env_prob: Tensor
    rewards: Tensor


def enumerate_mdp(seed: int = 0) -> Trajectories:
    """A 3-state, 2-action MDP with stochastic transitions, a chance of terminating after every action (so
    episodes are ragged, padded with masked steps) and fixed rewards; horizon 3."""
    g = torch.Generator().manual_seed(seed)
    start = torch.softmax(torch.randn(STATES, generator=g, dtype=torch.float64), 0)
    transition = torch.softmax(2 * torch.randn(STATES, ACTIONS, STATES, generator=g, dtype=torch.float64), -1)
    done = 0.1 + 0.3 * torch.rand(STATES, ACTIONS, generator=g, dtype=torch.float64)
    reward = torch.randn(STATES, ACTIONS, generator=g, dtype=torch.float64)
    rows: list[tuple[list[int], list[int], float]] = []

    def grow(states: list[int], actions: list[int], prob: float) -> None:
        s = states[-1]
        for a in range(ACTIONS):
            acts = [*actions, a]
            if len(acts) == HORIZON:
                rows.append((states, acts, prob))
                continue
            rows.append((states, acts, prob * done[s, a].item()))  # the episode ends here
            for s2 in range(STATES):
                grow([*states, s2], acts, prob * (1 - done[s, a].item()) * transition[s, a, s2].item())

    for s0 in range(STATES):
        grow([s0], [], start[s0].item())
    n = len(rows)
    states = torch.zeros(n, HORIZON, dtype=torch.long)
    actions = torch.zeros(n, HORIZON, dtype=torch.long)
    mask = torch.zeros(n, HORIZON, dtype=torch.float64)
    for i, (ss, aa, _) in enumerate(rows):
        states[i, : len(ss)] = torch.tensor(ss)
        actions[i, : len(aa)] = torch.tensor(aa)
        mask[i, : len(aa)] = 1.0
    discount = GAMMA ** torch.arange(HORIZON, dtype=torch.float64)
    env_prob = torch.tensor([p for _, _, p in rows], dtype=torch.float64)
    return Trajectories(states, actions, mask, env_prob, reward[states, actions] * discount * mask)


def step_log_probs(theta: Tensor, traj: Trajectories) -> Tensor:
    """``log pi_theta(a_t|s_t)`` of the tabular softmax policy, ``[N, T]`` (padded steps: whatever it gives)."""
    return torch.log_softmax(theta.view(STATES, ACTIONS), -1)[traj.states, traj.actions]


def trajectory_probs(theta: Tensor, traj: Trajectories) -> Tensor:
    """``p_theta(tau)`` of every trajectory."""
    return traj.env_prob * torch.exp((step_log_probs(theta, traj) * traj.mask).sum(1))


def expected_return(theta: Tensor, traj: Trajectories) -> Tensor:
    """``J(theta) = sum_tau p_theta(tau) sum_t gamma^t r_t``, exactly."""
    return (trajectory_probs(theta, traj) * traj.rewards.sum(1)).sum()


def advantages(traj: Trajectories, baseline: Tensor | None) -> Tensor:
    """``A_t = sum_{t' >= t} gamma^t' r_t' - b(t, s_t)`` on the valid steps (0 on the padded ones)."""
    to_go = traj.rewards.flip(1).cumsum(1).flip(1)
    if baseline is None:
        return to_go
    return (to_go - baseline[torch.arange(HORIZON).expand_as(traj.states), traj.states]) * traj.mask


def expected_loss(estimator: str, theta0: Tensor, traj: Trajectories, adv: Tensor) -> Callable[[Tensor], Tensor]:
    """``theta -> sum_tau p_theta0(tau) * loss(tau; theta)`` (the probabilities detached), the loss ``-sum_t w_t A_t``
    of the estimator; DiCE's weights from :func:`dice_weights` (time-major)."""
    p0 = trajectory_probs(theta0, traj).detach()

    def loss(theta: Tensor) -> Tensor:
        logp = step_log_probs(theta, traj)
        if estimator == "dice":
            weight = dice_weights(logp.T, traj.mask.T).T
        elif estimator == "lvc":
            weight = torch.exp(logp - logp.detach())
        else:
            weight = logp
        return (p0 * -(weight * adv * traj.mask).sum(1)).sum()

    return loss


def grad_and_hessian(f: Callable[[Tensor], Tensor], theta: Tensor) -> tuple[Tensor, Tensor]:
    x = theta.detach().clone().requires_grad_()
    (grad,) = torch.autograd.grad(f(x), x)
    return grad, torch.autograd.functional.hessian(f, theta.detach())


@pytest.fixture(scope="module")
def mdp() -> tuple[Trajectories, Tensor, Tensor]:
    """The trajectories, a policy ``theta0`` and a baseline ``b[t, s]``."""
    g = torch.Generator().manual_seed(1)
    theta0 = torch.randn(STATES * ACTIONS, generator=g, dtype=torch.float64)
    baseline = torch.randn(HORIZON, STATES, generator=g, dtype=torch.float64)
    return enumerate_mdp(), theta0, baseline


def test_enumeration_is_a_distribution(mdp: tuple[Trajectories, Tensor, Tensor]) -> None:
    traj, theta0, _ = mdp
    total = trajectory_probs(theta0, traj).sum()
    torch.testing.assert_close(total, torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=1e-14)
    assert (traj.mask.sum(1) < HORIZON).any() and (traj.mask.sum(1) == HORIZON).any()  # ragged


@pytest.mark.parametrize("with_baseline", [False, True])
def test_dice_has_the_exact_gradient_and_hessian_of_the_expected_return(
    mdp: tuple[Trajectories, Tensor, Tensor], with_baseline: bool
) -> None:
    """E_{theta0}[DiCE] (weights detached) has J's gradient and Hessian at theta0; a state baseline changes neither."""
    traj, theta0, baseline = mdp
    exact_grad, exact_hessian = grad_and_hessian(lambda th: expected_return(th, traj), theta0)
    adv = advantages(traj, baseline if with_baseline else None)
    loss = expected_loss("dice", theta0, traj, adv)
    assert loss(theta0).item() == 0.0
    grad, hessian = grad_and_hessian(loss, theta0)
    assert exact_hessian.abs().max() > 1e-2 and exact_grad.abs().max() > 1e-2
    torch.testing.assert_close(-grad, exact_grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(-hessian, exact_hessian, rtol=0, atol=1e-12)


def _score_terms(traj: Trajectories, theta0: Tensor, adv: Tensor) -> dict[str, Tensor]:
    """``E[sum_t A_t X_t]`` for the outer products ``X_t`` of the per-step scores ``g_t`` (valid steps) and their
    running sums ``G_t = g_0 + ... + g_t`` (``G_{-1} = 0``), by enumeration; ``[P, P]`` each."""
    scores = torch.autograd.functional.jacobian(lambda th: step_log_probs(th, traj), theta0)  # [N, T, P]
    g = scores * traj.mask.unsqueeze(-1)
    big = g.cumsum(1)
    before = big - g
    weight = trajectory_probs(theta0, traj).unsqueeze(1) * adv * traj.mask  # [N, T]

    def expect(x: Tensor, y: Tensor) -> Tensor:
        return torch.einsum("nt,ntp,ntq->pq", weight, x, y)

    return {
        "GG": expect(big, big),
        "prev": expect(before, before),
        "gg": expect(g, g),
        "cross": expect(g, before) + expect(before, g),
    }


@pytest.mark.parametrize("with_baseline", [False, True])
def test_log_and_lvc_hessians_miss_the_sampling_terms(
    mdp: tuple[Trajectories, Tensor, Tensor], with_baseline: bool
) -> None:
    """Same gradient; Hessians (of the objective ``-loss``): exact - log = E[sum_t A_t (G_t G_t^T - G_{t-1} G_{t-1}^T)],
    exact - lvc = E[sum_t A_t (g_t G_{t-1}^T + G_{t-1} g_t^T)] (the cross-time terms)."""
    traj, theta0, baseline = mdp
    adv = advantages(traj, baseline if with_baseline else None)
    exact_grad, exact = grad_and_hessian(lambda th: expected_return(th, traj), theta0)
    (g_log, h_log), (g_lvc, h_lvc) = (
        grad_and_hessian(expected_loss(name, theta0, traj, adv), theta0) for name in ("log", "lvc")
    )
    torch.testing.assert_close(-g_log, exact_grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(-g_lvc, exact_grad, rtol=0, atol=1e-12)
    terms = _score_terms(traj, theta0, adv)
    for name in ("GG", "prev", "gg", "cross"):
        assert terms[name].abs().max() > 1e-3, name  # every term is there to be missed
    torch.testing.assert_close(exact - -h_log, terms["GG"] - terms["prev"], rtol=0, atol=1e-12)
    torch.testing.assert_close(exact - -h_lvc, terms["cross"], rtol=0, atol=1e-12)
    # lvc keeps exactly the same-step part of what log misses
    torch.testing.assert_close(-h_lvc - -h_log, terms["gg"], rtol=0, atol=1e-12)
    # the loaded form's missing term is not E[sum_t A_t G_t G_t^T]: the G_{t-1} G_{t-1}^T part stays
    assert (exact - -h_log - terms["GG"]).abs().max() > 1e-3
    if not with_baseline:  # summation by parts: sum_t R_t (G_t G_t^T - G_{t-1} G_{t-1}^T) = sum_t gamma^t r_t G_t G_t^T
        scores = torch.autograd.functional.jacobian(lambda th: step_log_probs(th, traj), theta0)
        big = (scores * traj.mask.unsqueeze(-1)).cumsum(1)
        reward_weighted = torch.einsum(
            "nt,ntp,ntq->pq", trajectory_probs(theta0, traj).unsqueeze(1) * traj.rewards, big, big
        )
        torch.testing.assert_close(exact - -h_log, reward_weighted, rtol=0, atol=1e-12)


def test_a_state_baseline_changes_the_log_hessian_only(mdp: tuple[Trajectories, Tensor, Tensor]) -> None:
    """E[b(s_t) grad^2 log pi_t] = -E[b(s_t) g_t g_t^T] is not 0, so the log form's expected Hessian depends on the
    baseline; lvc (H_t + g_t g_t^T) and dice do not."""
    traj, theta0, baseline = mdp
    hessians = {}
    for name in ("log", "lvc", "dice"):
        plain, based = (
            grad_and_hessian(expected_loss(name, theta0, traj, advantages(traj, b)), theta0)[1]
            for b in (None, baseline)
        )
        hessians[name] = (plain, based)
    assert (hessians["log"][0] - hessians["log"][1]).abs().max() > 1e-3
    torch.testing.assert_close(hessians["lvc"][0], hessians["lvc"][1], rtol=0, atol=1e-12)
    torch.testing.assert_close(hessians["dice"][0], hessians["dice"][1], rtol=0, atol=1e-12)


def test_dice_weights_on_a_ragged_episode() -> None:
    """Value 0; in the log-probabilities ``x``, ``d (sum_t w_t A_t) / d x_i = A_i`` and
    ``d^2 (sum_t w_t A_t) / d x_i d x_j = A_max(i, j)`` within an episode (the loaded form), 0 across episodes
    and on the padded steps, whatever their log-probabilities (even huge)."""
    logp = torch.tensor([[-0.5, -1.0], [-0.2, 7.0], [3.0, 1e3]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    adv = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=torch.float64)
    assert torch.equal(dice_weights(logp, mask), torch.zeros_like(logp))

    def objective(x: Tensor) -> Tensor:
        return (dice_weights(x, mask) * adv).sum()

    x = logp.clone().requires_grad_()
    (grad,) = torch.autograd.grad(objective(x), x)
    torch.testing.assert_close(grad, adv * mask, rtol=0, atol=0)
    hessian = torch.autograd.functional.hessian(objective, logp)  # [T, B, T, B]
    expected = torch.zeros(3, 2, 3, 2, dtype=torch.float64)
    for e in range(2):
        for i in range(3):
            for j in range(3):
                expected[i, e, j, e] = mask[i, e] * mask[j, e] * adv[max(i, j), e]
    torch.testing.assert_close(hessian, expected, rtol=0, atol=1e-15)
    assert expected[0, 0, 1, 0] == 3.0  # a cross-time term (lvc has none)


# --------------------------------------------------------------------------- on the real policy


def _stacked(policy: GaussianMLPPolicy, n: int) -> Params:
    return {k: v.detach().clone().requires_grad_() for k, v in stack_params(policy.params(), n).items()}


def _grad_and_hvp(
    policy: GaussianMLPPolicy, stacked: Params, episodes: Episodes, estimator: str, v: list[Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    inputs = list(stacked.values())
    loss = reinforce_loss(policy, stacked, episodes, estimator)  # type: ignore[arg-type]
    g = torch.autograd.grad(loss, inputs, create_graph=True)
    hv = torch.autograd.grad(g, inputs, grad_outputs=v)
    return loss.detach(), flatten(list(g)).detach(), flatten(list(hv))


def test_reinforce_loss_dice_on_ragged_episodes(tiny_policy: GaussianMLPPolicy) -> None:
    """Value 0, the log form's gradient, and the Hessian-vector product of the log form plus
    -sum_i mean_t[A_t (G_t (G_t . v) - G_{t-1} (G_{t-1} . v))], summed by hand episode by episode."""
    n, b, t = 2, 3, 4
    episodes = random_episodes(n, b, t, seed=11)
    assert (episodes.mask == 0).any()
    stacked = _stacked(tiny_policy, n)
    inputs = list(stacked.values())
    v = [torch.randn(p.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64) for p in inputs]
    loss, g_dice, hv_dice = _grad_and_hvp(tiny_policy, stacked, episodes, "dice", v)
    _, g_log, hv_log = _grad_and_hvp(tiny_policy, stacked, episodes, "log", v)
    _, g_lvc, hv_lvc = _grad_and_hvp(tiny_policy, stacked, episodes, "lvc", v)
    assert loss.item() == 0.0
    torch.testing.assert_close(g_dice, g_log, rtol=1e-12, atol=1e-14)
    assert g_dice.abs().max() > 1e-2
    assert (hv_dice - hv_lvc).abs().max() > 1e-3 and (hv_lvc - hv_log).abs().max() > 1e-3

    logp, _, _ = log_probs(tiny_policy, stacked, episodes)  # [n, T*B], index t*B + b
    v_flat = flatten(v)
    extra = torch.zeros_like(v_flat)
    for i in range(n):
        valid = episodes.mask[:, i].sum()
        for e in range(b):
            running = torch.zeros_like(v_flat)
            for step in range(t):
                if episodes.mask[step, i, e] == 0:
                    break
                score = flatten(list(torch.autograd.grad(logp[i, step * b + e], inputs, retain_graph=True)))
                before, running = running, running + score
                adv = episodes.advantages[step, i, e]
                extra -= adv * (running * (running @ v_flat) - before * (before @ v_flat)) / valid
    torch.testing.assert_close(hv_dice - hv_log, extra, rtol=1e-10, atol=1e-12)


def test_masked_steps_change_nothing(tiny_policy: GaussianMLPPolicy) -> None:
    """Other actions, observations and advantages after the episodes ended: the same loss, gradient and
    Hessian-vector product."""
    n = 2
    episodes = random_episodes(n, 3, 5, seed=4)
    padded = episodes.mask == 0
    assert padded.any()
    g = torch.Generator().manual_seed(9)

    def scramble(x: Tensor) -> Tensor:
        where = padded.view(*padded.shape, *([1] * (x.dim() - 3))).expand_as(x)
        return torch.where(where, 10 * torch.randn(x.shape, generator=g, dtype=x.dtype), x)

    assert episodes.advantages is not None
    scrambled = Episodes(
        scramble(episodes.observations),
        scramble(episodes.actions),
        episodes.rewards,
        episodes.mask,
        episodes.returns,
        scramble(episodes.advantages),
    )
    stacked = _stacked(tiny_policy, n)
    v = [
        torch.randn(p.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64) for p in stacked.values()
    ]
    reference = _grad_and_hvp(tiny_policy, stacked, episodes, "dice", v)
    changed = _grad_and_hvp(tiny_policy, stacked, scrambled, "dice", v)
    for a, c in zip(reference, changed, strict=True):
        torch.testing.assert_close(c, a, rtol=1e-13, atol=1e-15)
    # the scrambled steps do reach the log form's value: the comparison above is not vacuous
    padded_logp = log_probs(tiny_policy, stacked, scrambled)[0] - log_probs(tiny_policy, stacked, episodes)[0]
    assert padded_logp.abs().max() > 1.0


def test_reinforce_loss_names_the_three_estimators(tiny_policy: GaussianMLPPolicy) -> None:
    episodes = random_episodes(1, 2, 3, seed=2)
    with pytest.raises(ValueError, match="estimator must be 'log', 'lvc' or 'dice', got 'loaded'"):
        reinforce_loss(tiny_policy, stack_params(tiny_policy.params(), 1), episodes, "loaded")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sampling_log_probs is for the lvc estimator"):
        reinforce_loss(
            tiny_policy, stack_params(tiny_policy.params(), 1), episodes, "dice", sampling_log_probs=torch.zeros(1, 6)
        )


# --------------------------------------------------------------------------- the meta-gradient through DiCE


def _meta_batch(n: int, k: int, seed: int = 1) -> MetaBatch:
    return MetaBatch([{}] * n, [random_episodes(n, 3, 4, seed + j) for j in range(k)], random_episodes(n, 3, 4, 50))


def _importance_weighted_inner_loss(
    policy: GaussianMLPPolicy, batch: MetaBatch, theta0: Params, lrs: list[float]
) -> Callable[[Params, int], Tensor]:
    """The inner losses with DiCE's box written as the importance weight of each episode prefix,
    ``exp(S_t(theta) - S_t(theta_j))`` (``theta_j``: the step-``j`` parameters reached from ``theta0``, fixed):
    a function of ``theta`` whose derivatives at ``theta0`` are DiCE's, so finite differences see them."""
    n = len(batch.tasks)
    points = [stack_params(detach_params(theta0), n)]
    points += [detach_params(p) for p in adapt_steps(rl_inner_loss(policy, batch.train), theta0, n, lrs, True)]
    references = []
    for j, episodes in enumerate(batch.train):
        with torch.no_grad():
            references.append(log_probs(policy, points[j], episodes)[0])

    def time_major(x: Tensor, episodes: Episodes) -> Tensor:
        t, m, b = episodes.mask.shape
        return x.reshape(m, t, b).transpose(0, 1)

    def loss(params: Params, step: int) -> Tensor:
        episodes = batch.train[step]
        logp, _, _ = log_probs(policy, params, episodes)
        mask = episodes.mask
        s = torch.cumsum(time_major(logp, episodes) * mask, 0)
        s_ref = torch.cumsum(time_major(references[step], episodes) * mask, 0)
        ratio = torch.exp(s - s_ref)
        w = ratio - torch.cat([torch.ones_like(ratio[:1]), ratio[:-1]])
        return masked_task_mean(-task_major(w) * task_major(episodes.require_advantages()), task_major(mask)).sum()

    return loss


@pytest.mark.parametrize("k", [1, 2])
def test_dice_meta_gradient_matches_finite_differences(tiny_policy: GaussianMLPPolicy, k: int) -> None:
    """meta_gradient(derivatives="autograd") with dice is the derivative of the post-adaptation surrogate when the
    inner episodes' probabilities move with theta (central differences); the log form's is not."""
    batch = _meta_batch(2, k)
    adaptation = settings(k, False, "dice")
    theta = {name: p.detach().clone() for name, p in tiny_policy.params().items()}
    lrs = [adaptation.inner_lr] * k
    old = old_policy(tiny_policy, adapt_on_batch(tiny_policy, theta, batch, adaptation, True), batch.valid)
    inner = _importance_weighted_inner_loss(tiny_policy, batch, theta, lrs)

    def f(params: Params) -> Tensor:
        return surrogate_loss(tiny_policy, adapt(inner, params, 2, lrs, first_order=False), batch.valid, old)

    numeric = finite_difference_grad(f, theta)
    for chunk in (1, 2):
        meta = meta_gradient(tiny_policy, batch, adaptation, task_chunk=chunk, derivatives="autograd")
        torch.testing.assert_close(meta.grad, numeric, rtol=1e-5, atol=1e-7)
    log = meta_gradient(tiny_policy, batch, settings(k, False, "log"), derivatives="autograd")
    lvc = meta_gradient(tiny_policy, batch, settings(k, False, "lvc"), derivatives="autograd")
    assert (meta.grad - log.grad).abs().max() > 1e-3 and (meta.grad - lvc.grad).abs().max() > 1e-3
    first = meta_gradient(tiny_policy, batch, settings(k, True, "dice"), derivatives="autograd")
    torch.testing.assert_close(
        first.grad, meta_gradient(tiny_policy, batch, settings(k, True, "log")).grad, rtol=1e-10, atol=1e-12
    )


def test_dice_kl_curvature_is_the_hessian_through_the_weighted_inner_loop(tiny_policy: GaussianMLPPolicy) -> None:
    """kl_curvature(derivatives="autograd") with dice: J^T F J with DiCE's inner Jacobian, the explicit Hessian of
    the KL through the importance-weighted inner loop."""
    batch = _meta_batch(2, 1, seed=3)
    adaptation = settings(1, False, "dice")
    params = tiny_policy.params()
    old = old_policy(tiny_policy, adapt_on_batch(tiny_policy, params, batch, adaptation, True), batch.valid)
    inner = _importance_weighted_inner_loss(tiny_policy, batch, params, [adaptation.inner_lr])

    def kl_of_flat(flat: Tensor) -> Tensor:
        adapted = adapt(inner, unflatten(flat, params), 2, [adaptation.inner_lr], first_order=False)
        return mean_kl(tiny_policy, adapted, batch.valid, old)

    hessian = torch.autograd.functional.hessian(kl_of_flat, flatten(params).detach())
    hvp = kl_curvature(tiny_policy, params, batch, adaptation, derivatives="autograd")
    log_hvp = kl_curvature(tiny_policy, params, batch, settings(1, False, "log"), derivatives="autograd")
    v = torch.randn(hessian.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(hvp(v), hessian @ v, rtol=1e-7, atol=1e-10)
    assert (hvp(v) - log_hvp(v)).abs().max() > 1e-3


def test_closed_form_derivatives_refuse_dice(tiny_policy: GaussianMLPPolicy) -> None:
    batch = _meta_batch(2, 1)
    params = tiny_policy.params()
    for first_order in (False, True):
        adaptation = settings(1, first_order, "dice")
        with pytest.raises(ValueError, match="dice needs outer.derivatives: autograd"):
            meta_gradient(tiny_policy, batch, adaptation, derivatives="closed_form")
        with pytest.raises(ValueError, match="dice needs outer.derivatives: autograd"):
            kl_curvature(tiny_policy, params, batch, adaptation, derivatives="closed_form")
    with pytest.raises(ValueError, match="dice needs outer.derivatives: autograd"):
        trpo_step(tiny_policy, batch, settings(1, False, "dice"), TRPOSettings(derivatives="closed_form"))


def test_trpo_step_with_dice_through_autograd(tiny_policy: GaussianMLPPolicy) -> None:
    before = flatten(tiny_policy.params()).detach().clone()
    stats = trpo_step(
        tiny_policy,
        _meta_batch(2, 1, seed=12),
        settings(1, False, "dice"),
        TRPOSettings(max_kl=1e-3, cg_iters=5, derivatives="autograd"),
    )
    assert stats["accepted"] == 1.0 and stats["improvement"] > 0
    assert (flatten(tiny_policy.params()).detach() - before).abs().max() > 1e-6
