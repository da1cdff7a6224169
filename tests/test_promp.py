"""ProMP (metarl.promp) and MAML-VPG: the clipped objective and the adaptive KL coefficient by hand, the
meta-gradient through the importance-weighted LVC inner steps against central differences, its first step
against metarl's lvc, the outer optimiser each algorithm implies, one-line config errors, and short real
training runs through the command line (checkpoint, resume with the KL coefficients)."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from metarl.algorithms import ALGORITHMS, outer_optimizer
from metarl.checkpoint import load_checkpoint
from metarl.config import load_config
from metarl.errors import CheckpointError
from metarl.maml import MetaBatch, adapt, reinforce_loss, rl_inner_loss
from metarl.policy import GaussianMLPPolicy, Params, detach_params, flatten, stack_params
from metarl.promp import (
    ProMP,
    adapt_kl_coeff,
    clipped_surrogate,
    importance_weighted_inner_loss,
    promp_loss,
    sampling_policies,
)
from tests.helpers import (
    assert_one_error_line,
    assert_train_refuses,
    finite_difference_grad,
    random_episodes,
    run_cli,
    settings,
)

NAV = Path(__file__).resolve().parents[1] / "configs" / "navigation2d.yaml"
TINY = [
    "maml.meta_batch_size=3",
    "maml.episodes_per_task=4",
    "env.horizon=15",
    "policy.hidden_sizes=[16]",
    "train.num_threads=1",
]
LR = 0.5  # tests.helpers.settings' inner step size


@pytest.fixture(autouse=True)
def restore_torch_threads() -> Iterator[None]:
    """Training sets torch's thread count for the process; give the other tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def make_batch(n: int, k: int, seed: int = 1) -> MetaBatch:
    """k inner-step episode sets and a post-adaptation set for n tasks (float64, ragged, advantages attached)."""
    train = [random_episodes(n, 3, 5, seed + i) for i in range(k)]
    return MetaBatch([{}] * n, train, random_episodes(n, 3, 5, seed + 100))


def sampled_with(policy: GaussianMLPPolicy, batch: MetaBatch) -> list[Params]:
    """The k + 1 parameter sets a sampling at the policy's parameters would have used (first-order REINFORCE steps)."""
    n = len(batch.tasks)
    current = detach_params(policy.params())
    used = [current]
    for episodes in batch.train:
        step = lambda p, _s, ep=episodes: reinforce_loss(policy, p, ep)  # noqa: E731
        current = detach_params(adapt(step, current, n, [LR], first_order=True))
        used.append(current)
    return used


# --------------------------------------------------------------------------- the pieces by hand


def test_clipped_objective_value_and_gradient_by_hand() -> None:
    """PPO's min form, per task: clipped above 1+eps with A > 0 and below 1-eps with A < 0 (no gradient);
    outside the band the other way round, and inside it, unclipped (gradient r A per log-prob)."""
    eps = 0.2
    ratios = torch.tensor(
        [
            [1.5, 0.5, 1.1, 0.6, 1.5, 9.0],  # task 0; the last sample is masked out
            [1.0, 1.0, 1.0, 1.0, 0.9, 1.0],  # task 1; the last sample is masked out
        ],
        dtype=torch.float64,
    )
    advantages = torch.tensor([[1.0, -2.0, 3.0, 1.0, -1.0, 5.0], [1.0, -1.0, 2.0, 0.0, -2.0, 7.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0]], dtype=torch.float64)
    old = torch.tensor([[-1.0, 0.5, 2.0, -0.3, 0.0, 1.0], [0.2, -0.2, 0.0, 1.0, 3.0, -1.0]], dtype=torch.float64)
    logp = (old + ratios.log()).requires_grad_()
    losses, fraction = clipped_surrogate(logp, old, advantages, mask, eps)
    # task 0: min(1.5*1, 1.2*1)=1.2 (clipped), min(0.5*-2, 0.8*-2)=-1.6 (clipped), 1.1*3=3.3, min(0.6, 0.8)=0.6,
    # min(-1.5, -1.2)=-1.5 -> mean 2.0/5; task 1: 1 - 1 + 2 + 0 + min(-1.8, -1.8)=-1.8 -> mean 0.2/5
    torch.testing.assert_close(losses, torch.tensor([-0.4, -0.04], dtype=torch.float64), rtol=0, atol=1e-12)
    assert fraction.item() == pytest.approx(4 / 10)  # 1.5, 0.5, 0.6, 1.5 lie outside [0.8, 1.2]
    (grad,) = torch.autograd.grad(losses.sum(), logp)
    expected = torch.tensor(
        [
            [0.0, 0.0, -1.1 * 3 / 5, -0.6 * 1 / 5, 1.5 * 1 / 5, 0.0],
            [-1 / 5, 1 / 5, -2 / 5, 0.0, 0.9 * 2 / 5, 0.0],
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("kl", "factor"),
    [(0.0, 0.5), (0.006, 0.5), (0.0067, 1.0), (0.01, 1.0), (0.015, 1.0), (0.0151, 2.0), (0.5, 2.0)],
)
def test_kl_coefficient_halves_below_and_doubles_above_the_band(kl: float, factor: float) -> None:
    """The authors' _adapt_kl_coeff: kl < target/1.5 -> coeff/2; kl > 1.5*target -> coeff*2; else unchanged."""
    assert adapt_kl_coeff(0.004, kl, 0.01) == pytest.approx(0.004 * factor)


# --------------------------------------------------------------------------- the meta-objective


def test_promp_meta_gradient_matches_central_differences(tiny_policy: GaussianMLPPolicy) -> None:
    """Away from the sampling parameters (ratios off 1, some clipped, inner KLs > 0), two inner steps: the
    gradient through the importance-weighted LVC inner steps, the clipped surrogate and the KL penalty."""
    k = 2
    batch = make_batch(n=2, k=k)
    sampling = sampling_policies(tiny_policy, batch, sampled_with(tiny_policy, batch))
    g = torch.Generator().manual_seed(3)
    theta = {
        name: (p.detach() + 0.15 * torch.randn(p.shape, generator=g, dtype=p.dtype)).requires_grad_()
        for name, p in tiny_policy.params().items()
    }
    coeffs, eps = [0.7, 1.3], 0.1

    def f(params: Params) -> torch.Tensor:
        return promp_loss(tiny_policy, params, batch, sampling, settings(k), coeffs, eps).objective

    loss = promp_loss(tiny_policy, theta, batch, sampling, settings(k), coeffs, eps)
    assert 0.0 < loss.clip_fraction.item() < 1.0 and (loss.inner_kls > 1e-4).all()
    autograd = flatten(list(torch.autograd.grad(loss.objective, list(theta.values()), retain_graph=True)))
    numeric = finite_difference_grad(f, theta)
    torch.testing.assert_close(autograd, numeric, rtol=1e-5, atol=1e-7)
    penalty = flatten(list(torch.autograd.grad((loss.objective - loss.surrogate), list(theta.values()))))
    assert penalty.abs().max() > 1e-3  # the KL terms take part in it


def test_first_step_inner_loop_is_metarls_lvc(tiny_policy: GaussianMLPPolicy) -> None:
    """At the sampling parameters the importance-weighted inner steps are lvc's: same losses, same adapted
    parameters and the same second-order Jacobian (so the same LVC curvature)."""
    k, n = 2, 3
    batch = make_batch(n=n, k=k, seed=7)
    sampling = sampling_policies(tiny_policy, batch, sampled_with(tiny_policy, batch))
    theta = {name: p.detach().clone().requires_grad_() for name, p in tiny_policy.params().items()}
    stacked = stack_params(theta, n)
    weighted = importance_weighted_inner_loss(tiny_policy, batch.train, sampling.train)
    lvc = rl_inner_loss(tiny_policy, batch.train, "lvc")
    torch.testing.assert_close(weighted(stacked, 0), lvc(stacked, 0), rtol=0, atol=1e-14)
    ours = adapt(weighted, theta, n, [LR] * k, first_order=False)
    theirs = adapt(lvc, theta, n, [LR] * k, first_order=False)
    g = torch.Generator().manual_seed(0)
    probe = {name: torch.randn(v.shape, generator=g, dtype=v.dtype) for name, v in ours.items()}
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-12)

    def jacobian_probe(adapted: Params) -> torch.Tensor:
        value = sum((probe[name] * adapted[name]).sum() for name in adapted)
        return flatten(list(torch.autograd.grad(value, list(theta.values()))))

    torch.testing.assert_close(jacobian_probe(ours), jacobian_probe(theirs), rtol=1e-10, atol=1e-12)
    loss = promp_loss(tiny_policy, theta, batch, sampling, settings(k), [0.5, 0.5], 0.2)
    assert loss.inner_kls.abs().max().item() < 1e-12 and loss.clip_fraction.item() == 0.0


# --------------------------------------------------------------------------- config


def test_the_outer_optimiser_follows_from_the_algorithm() -> None:
    assert ALGORITHMS["vpg"].families == ALGORITHMS["promp"].families == frozenset({"rl"})
    assert outer_optimizer(load_config(None)) == "trpo"  # null: maml's own
    assert outer_optimizer(load_config(None, ["maml.algorithm=fomaml"])) == "trpo"
    assert outer_optimizer(load_config(None, ["maml.algorithm=vpg"])) == "adam"
    assert outer_optimizer(load_config(None, ["maml.algorithm=promp"])) == "adam"
    assert outer_optimizer(load_config(None, ["maml.algorithm=vpg", "outer.optimizer=adam"])) == "adam"
    assert outer_optimizer(load_config(None, ["outer.optimizer=adam"])) == "adam"  # MAML with Adam, as before
    assert outer_optimizer(load_config(None, ["maml.loss=supervised"])) == "adam"
    assert outer_optimizer(load_config(NAV)) == "trpo"  # the shipped configs say trpo explicitly


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["maml.algorithm=promp", "outer.optimizer=trpo"], ["outer.optimizer", "'trpo' contradicts", "'promp'"]),
        (["maml.algorithm=vpg", "outer.optimizer=trpo"], ["outer.optimizer", "'trpo' contradicts", "'vpg'"]),
        (["maml.algorithm=promp", "maml.loss=supervised"], ["maml.algorithm", "'promp' does not apply"]),
        (["maml.algorithm=promp", "maml.inner_estimator=dice"], ["maml.inner_estimator"]),
        (["maml.algorithm=promp", "promp.clip_eps=0"], ["promp.clip_eps", "float > 0 and < 1"]),
        (["maml.algorithm=promp", "promp.num_steps=0"], ["promp.num_steps", "int > 0"]),
        (["maml.algorithm=promp", "promp.adaptive_kl=maybe"], ["promp.adaptive_kl", "bool"]),
    ],
    ids=str,
)
def test_contradicting_or_bad_keys_are_one_error_line(
    capsys, tmp_path: Path, overrides: list[str], fragments: list[str]
) -> None:
    assert_train_refuses(capsys, tmp_path / "run", overrides, *fragments)


def test_a_config_that_names_trpo_needs_the_optimiser_unset_for_promp(capsys, tmp_path: Path) -> None:
    argv = ["train", "--config", str(NAV), "--run-dir", str(tmp_path / "run"), "--no-progress"]
    code, _, err = run_cli(capsys, *argv, "--set", "maml.algorithm=promp")
    assert_one_error_line(code, err, "outer.optimizer", "leave outer.optimizer unset (null)")


def test_resume_without_kl_coefficients_is_refused() -> None:
    state = ProMP(load_config(None, ["maml.algorithm=promp", "maml.num_inner_steps=2"]))
    with pytest.raises(CheckpointError, match="no ProMP KL coefficients for 2 inner step"):
        state.load_state({})
    with pytest.raises(CheckpointError, match="ProMP KL coefficients"):
        state.load_state({"kl_coeffs": [1.0]})
    state.load_state({"kl_coeffs": [1.0, 2.0]})
    assert state.kl_coeffs == [1.0, 2.0]


# --------------------------------------------------------------------------- training


def train_argv(run: Path, *overrides: str, iterations: int) -> list[str]:
    sets = [a for o in [*TINY, *overrides] for a in ("--set", o)]
    return ["train", "--config", str(NAV), "--run-dir", str(run), "--iterations", str(iterations), *sets]


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_promp_trains_through_the_cli_and_resumes_its_kl_coefficients(capsys, tmp_path: Path) -> None:
    run = tmp_path / "run"
    promp = ["maml.algorithm=promp", "outer.optimizer=null", "promp.adaptive_kl=true", "promp.num_steps=3"]
    code, _, err = run_cli(capsys, *train_argv(run, *promp, iterations=2), "--no-progress")
    assert code == 0, err
    checkpoint = load_checkpoint(run)
    assert checkpoint.iteration == 2 and checkpoint.optimizer is not None
    assert checkpoint.optimizer["state"][0]["step"] == 6  # three Adam steps per meta-batch
    first = rows(run)
    assert [r["iteration"] for r in first] == [0, 1]
    for key in ("surrogate_before", "surrogate_after", "kl_inner", "kl_outer", "kl_coeff", "clip_fraction"):
        assert all(f"promp/{key}" in r for r in first), key
    assert first[0]["promp/kl_coeff"] == 5e-4  # promp.init_kl_coeff
    # each coefficient moved by the authors' rule from the KL its iteration measured
    coeffs = checkpoint.extra["promp"]["kl_coeffs"]
    assert first[1]["promp/kl_coeff"] == adapt_kl_coeff(5e-4, first[0]["promp/kl_inner"], 0.01)
    assert coeffs == [adapt_kl_coeff(first[1]["promp/kl_coeff"], first[1]["promp/kl_inner"], 0.01)]
    assert coeffs != [5e-4]
    code, _, err = run_cli(capsys, "train", "--run-dir", str(run), "--resume", "--iterations", "3", "--no-progress")
    assert code == 0, err
    assert rows(run)[2]["promp/kl_coeff"] == coeffs[0]  # continued, not restarted at promp.init_kl_coeff
    assert load_checkpoint(run).iteration == 3


def test_vpg_trains_through_the_cli_with_adam(capsys, tmp_path: Path) -> None:
    run = tmp_path / "run"
    code, _, err = run_cli(
        capsys, *train_argv(run, "maml.algorithm=vpg", "outer.optimizer=null", iterations=2), "--no-progress"
    )
    assert code == 0, err
    checkpoint = load_checkpoint(run)
    assert checkpoint.iteration == 2 and checkpoint.optimizer is not None  # Adam's moments, not TRPO
    assert checkpoint.optimizer["state"][0]["step"] == 2
    assert [r["iteration"] for r in rows(run)] == [0, 1] and "trpo/kl" not in rows(run)[0]
    code, _, err = run_cli(capsys, "train", "--run-dir", str(run), "--resume", "--iterations", "3", "--no-progress")
    assert code == 0, err
    assert load_checkpoint(run).optimizer["state"][0]["step"] == 3  # type: ignore[index]


def test_promp_learner_replica_trains_exactly_like_the_cpu_learner() -> None:
    """train.device's bookkeeping (the learner replica follows the policy after every Adam step), on the CPU."""
    from metarl.episodes import OnDevice
    from metarl.trainer import PolicyGradientMAML

    config = load_config(None, [*TINY, "maml.algorithm=promp", "promp.num_steps=2", "promp.adaptive_kl=true"])
    plain, replica = PolicyGradientMAML(config), PolicyGradientMAML(config)
    try:
        replica.learner = copy.deepcopy(replica.policy)
        replica.collector = OnDevice(replica.sampler, torch.device("cpu"), replica.policy)  # type: ignore[assignment]
        for it in range(2):
            a, b = plain.iteration(it), replica.iteration(it)
            assert {k: v for k, v in a.items() if not k.startswith("perf/")} == {
                k: v for k, v in b.items() if not k.startswith("perf/")
            }
        for p, q, r in zip(plain.policy.parameters(), replica.policy.parameters(), replica.learner.parameters()):
            assert torch.equal(p, q) and torch.equal(q, r)
        assert plain.extra_state() == replica.extra_state()
    finally:
        plain.close()
        replica.close()
