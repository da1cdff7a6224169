"""The Ray backend on a two-node cluster simulated on this machine (``ray.cluster_utils.Cluster``).

The sampler joins it through ``$RAY_ADDRESS`` (as after ``ray start --head``), spreads its
actors over both nodes and samples the same episodes as the local sampler.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from metarl.policy import GaussianMLPPolicy
from metarl.sampler import Sampler, make_task_env

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from metarl.ray_sampler import RaySampler  # noqa: E402


@pytest.fixture(scope="module")
def two_nodes() -> Any:
    """A head node and a worker node with one CPU each; shut down after the module."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_two_node_cluster_samples_the_local_episodes(two_nodes: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", two_nodes.address)
    env_id, n, b, horizon = "metarl/HalfCheetahVel-v0", 4, 2, 10
    tasks = make_task_env(env_id, horizon).unwrapped.sample_tasks(n, np.random.default_rng(0))  # type: ignore[attr-defined]
    policy = GaussianMLPPolicy(17, 6, (16,))
    policy.reset_parameters(torch.Generator().manual_seed(0))
    local = Sampler(env_id, n, b, horizon)
    expected = local.collect(policy, policy.params(), tasks, np.random.default_rng(1), torch.Generator().manual_seed(2))
    local.close()
    sampler = RaySampler(env_id, n, b, horizon)  # num_workers 0: one per CPU of the cluster
    try:
        nodes = {where.split(":")[1] for where in sampler.stats.workers}
        assert sampler.num_workers == 2 and len(nodes) == 2, sampler.stats.workers
        got = sampler.collect(
            policy, policy.params(), tasks, np.random.default_rng(1), torch.Generator().manual_seed(2)
        )
    finally:
        sampler.close()
    for name in ("observations", "actions", "rewards", "mask"):
        assert torch.equal(getattr(expected, name), getattr(got, name)), name
