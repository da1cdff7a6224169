"""The policy's closed-form derivative passes against autograd (float64), the learner's device, and the
episode layouts and transfers the meta-update relies on."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from metarl.episodes import Episodes, OnDevice, task_major
from metarl.errors import ConfigError
from metarl.policy import (
    GaussianMLPPolicy,
    Params,
    learner_device,
    mlp_backward,
    mlp_forward,
    mlp_hvp,
    mlp_jvp,
    mlp_mean,
    stack_params,
)
from tests.helpers import random_episodes

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


def _policy(hidden: tuple[int, ...], activation: str, device: str = "cpu") -> GaussianMLPPolicy:
    policy = GaussianMLPPolicy(3, 2, hidden, activation, init="fan_in").double()  # type: ignore[arg-type]
    policy.reset_parameters(torch.Generator().manual_seed(1))
    return policy.to(device)


def _network(params: Params) -> Params:
    return {k: v for k, v in params.items() if k != "log_std"}


CASES = [((5,), "tanh"), ((4, 5), "tanh"), ((5,), "relu"), ((4, 5), "relu")]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("hidden", "activation"), CASES)
def test_closed_form_passes_match_autograd(hidden: tuple[int, ...], activation: str, device: str) -> None:
    """Forward, backward (VJP), tangent (JVP) and the second-order backward (HVP) of the mean network, per task."""
    policy = _policy(hidden, activation, device)
    g = torch.Generator().manual_seed(2)
    n, m = 3, 7
    obs = torch.randn(n, m, 3, generator=g, dtype=torch.float64).to(device)
    # per-task parameters that differ (stacked copies, perturbed)
    theta = {
        k: (v.detach() + 0.1 * torch.randn(v.shape, generator=g, dtype=torch.float64).to(device)).requires_grad_()
        for k, v in stack_params(policy.params(), n).items()
    }
    net = _network(theta)
    tangent = {k: torch.randn(v.shape, generator=g, dtype=torch.float64).to(device) for k, v in net.items()}
    a = torch.randn(n, m, 2, generator=g, dtype=torch.float64).to(device)
    b = torch.randn(n, m, 2, generator=g, dtype=torch.float64).to(device)

    mean, _ = policy(obs, theta)
    cache = mlp_forward(policy, theta, obs)
    torch.testing.assert_close(cache.mean, mean.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mlp_mean(policy, theta, obs), mean.detach(), rtol=1e-12, atol=1e-12)

    # loss = sum a * mean + b * mean^2 / 2: d loss / d mean = a + b * mean, its tangent b * J v
    loss = (a * mean + 0.5 * b * mean.pow(2)).sum()
    grads = torch.autograd.grad(loss, list(net.values()), create_graph=True)
    grad_mean = (a + b * cache.mean).detach()
    back = mlp_backward(policy, theta, cache, grad_mean, keep=True)
    for name, expected in zip(net, grads):
        torch.testing.assert_close(back.grads[name], expected.detach(), rtol=1e-10, atol=1e-12)

    names = list(net)
    _, expected_jvp = torch.autograd.functional.jvp(
        lambda *values: policy(obs, {**theta, **dict(zip(names, values))})[0],
        tuple(v.detach() for v in net.values()),
        tuple(tangent.values()),
    )
    r_mean, _ = mlp_jvp(policy, theta, cache, tangent)
    torch.testing.assert_close(r_mean, expected_jvp, rtol=1e-10, atol=1e-12)

    expected_hvp = torch.autograd.grad(grads, list(net.values()), grad_outputs=list(tangent.values()))
    r_mean, hidden_tangents = mlp_jvp(policy, theta, cache, tangent)
    hvp = mlp_hvp(policy, theta, tangent, cache, back, hidden_tangents, b * r_mean)
    for name, expected in zip(net, expected_hvp):
        torch.testing.assert_close(hvp[name], expected, rtol=1e-10, atol=1e-12)
    assert max(v.abs().max().item() for v in hvp.values()) > 1e-3


def test_learner_device() -> None:
    assert learner_device("cpu") == torch.device("cpu")
    assert learner_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="train.device"):
            learner_device("cuda")
    with pytest.raises(ValueError, match="cpu, cuda or auto"):
        learner_device("tpu")


def test_task_major_storage_keeps_values_and_makes_task_major_a_view() -> None:
    episodes = random_episodes(3, 2, 4, seed=0)
    stored = episodes.task_major_storage()
    for name in ("observations", "actions", "rewards", "mask", "returns", "advantages"):
        assert torch.equal(getattr(stored, name), getattr(episodes, name))
    view = task_major(stored.observations)
    assert view.data_ptr() == stored.observations.data_ptr()  # no copy
    torch.testing.assert_close(view, task_major(episodes.observations), rtol=0, atol=0)
    part = stored.tasks(slice(1, 3))
    assert part.num_tasks == 2 and torch.equal(part.rewards, episodes.rewards[:, 1:3])
    assert task_major(part.observations).is_contiguous()


@pytest.mark.parametrize("device", DEVICES)
def test_episodes_move_to_the_device(device: str) -> None:
    episodes = random_episodes(2, 2, 3, seed=1)
    moved = episodes.to(torch.device(device))
    assert moved.observations.device.type == device and moved.advantages is not None
    assert torch.equal(moved.rewards.cpu(), episodes.rewards)
    assert episodes.to(torch.device("cpu")) is episodes  # already there: no copy


class _RecordingSampler:
    collect_seconds = 1.5

    def __init__(self) -> None:
        self.calls: list[tuple[Any, Params]] = []

    def collect(self, policy: Any, params: Params, *args: Any, **kwargs: Any) -> Episodes:
        self.calls.append((policy, params))
        return random_episodes(2, 2, 3, seed=2)


@pytest.mark.parametrize("device", DEVICES)
def test_on_device_samples_on_the_cpu_and_returns_episodes_on_the_device(device: str) -> None:
    cpu_policy = _policy((4,), "tanh")
    learner = _policy((4,), "tanh", device)
    inner = _RecordingSampler()
    sampler = OnDevice(inner, torch.device(device), cpu_policy)
    episodes = sampler.collect(learner, learner.params(), [], None, None)
    policy, params = inner.calls[0]
    assert policy is cpu_policy and all(v.device.type == "cpu" and not v.requires_grad for v in params.values())
    assert episodes.observations.device.type == device
    assert sampler.collect_seconds == 1.5  # everything else is the wrapped sampler's
