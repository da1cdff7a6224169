"""benchmarks/bench_scaleout.py: the projection against hand-computed numbers, a tiny run on a local Ray,
its one-line errors, and (slow) a run with the simulated two-node cluster."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import bench_scaleout
from benchmarks.bench_scaleout import Costs, Workload, project
from benchmarks.common import ROOT

NAV = str(ROOT / "configs" / "navigation2d.yaml")
TINY = ["--config", NAV, "--set", "policy.hidden_sizes=[8]", "--num-tasks", "2", "--episodes", "2", "--repeats", "1"]

# ML10's batch: 20 tasks x 10 episodes x 500 steps, 2 samplings; a made-up measurement
ML10 = Workload(tasks=20, episodes_per_task=10, horizon=500, samplings=2)
COSTS = Costs(
    actor_steps_per_s=1000.0, episode_bytes_per_step=180.0, param_bytes=58_000, store_s_per_byte=1e-9, overhead_s=0.01
)
GBPS_10 = 1.25e9  # bytes/s


@pytest.fixture(scope="module")
def local_ray() -> Any:
    """One local Ray with 2 CPUs for the tests that use it (the benchmark joins it)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def _error(code: int, capsys: pytest.CaptureFixture[str], *needles: str) -> None:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_projection_matches_a_hand_computation_on_8_nodes() -> None:
    got = project(ML10, COSTS, nodes=8, cores_per_node=2, network_bytes_per_s=GBPS_10, learner_s=2.8)
    # 16 actors, 200 episodes per sampling: the slowest actor runs ceil(200 / 16) = 13 episodes
    assert got["actors"] == 16 and got["slowest_actor_episodes"] == 13
    assert got["sampling"] == pytest.approx(2 * 13 * 500 / 1000)  # 13.0 s
    params = 58_000 * (1 + 20)  # shared before adaptation, 20 stacked copies after: 1,218,000 B
    seeds = 16 * 200 * 2  # 6,400 B
    episodes = 180 * 200_000  # 36,000,000 B
    assert (got["bytes_params_out"], got["bytes_seeds_out"], got["bytes_episodes_back"]) == (params, seeds, episodes)
    # parameters to 7 other nodes, 7/8 of the seeds and episodes back: 8,526,000 + 31,505,600 B
    assert got["bytes_network"] == pytest.approx(1_218_000 * 7 + (6_400 + 36_000_000) * 7 / 8)
    assert got["bytes_network"] == pytest.approx(40_031_600)
    assert got["network"] == pytest.approx(40_031_600 / 1.25e9)  # 0.03202528 s
    assert got["store"] == pytest.approx(1e-9 * (1_218_000 + 36_000_000))  # 0.037218 s
    assert got["transfer"] == pytest.approx(0.03202528 + 0.037218 + 2 * 0.01)
    assert got["total"] == pytest.approx(13.0 + 0.08924328 + 2.8)


def test_projection_on_one_node_moves_nothing_over_the_network() -> None:
    got = project(ML10, COSTS, nodes=1, cores_per_node=2, network_bytes_per_s=GBPS_10, learner_s=2.8)
    assert got["slowest_actor_episodes"] == 100 and got["sampling"] == pytest.approx(100.0)
    assert got["bytes_network"] == 0 and got["network"] == 0
    assert got["total"] == pytest.approx(100.0 + 0.037218 + 0.02 + 2.8)


def test_projection_on_64_nodes_by_episodes_and_by_whole_tasks() -> None:
    by_episodes = project(ML10, COSTS, 64, 2, GBPS_10, 2.8)
    assert by_episodes["actors_used"] == 128 and by_episodes["slowest_actor_episodes"] == 2  # ceil(200 / 128)
    assert by_episodes["sampling"] == pytest.approx(2 * 2 * 500 / 1000)  # 2.0 s
    by_tasks = project(ML10, COSTS, 64, 2, GBPS_10, 2.8, split="tasks")
    # whole tasks: only 20 of the 128 actors work, on 20 nodes, 10 episodes each
    assert by_tasks["actors_used"] == 20 and by_tasks["nodes_used"] == 20
    assert by_tasks["slowest_actor_episodes"] == 10 and by_tasks["sampling"] == pytest.approx(10.0)
    assert by_tasks["bytes_network"] == pytest.approx(1_218_000 * 19 + 36_006_400 * 19 / 20)
    # a whole task per actor on 8 nodes: ceil(20 / 16) = 2 tasks = 20 episodes, not 13
    assert project(ML10, COSTS, 8, 2, GBPS_10, 2.8, split="tasks")["sampling"] == pytest.approx(20.0)


def test_projection_with_the_ray_samplers_blocks() -> None:
    # more actors than tasks: RaySampler splits the episodes too, all 128 actors work, 2 episodes at most each
    on_64 = project(ML10, COSTS, 64, 2, GBPS_10, 2.8, split="ray")
    assert on_64["actors_used"] == 128 and on_64["nodes_used"] == 64
    assert on_64["slowest_actor_episodes"] == 2 and on_64["total"] == pytest.approx(
        project(ML10, COSTS, 64, 2, GBPS_10, 2.8)["total"]
    )
    # 16 actors, 20 tasks: whole tasks, as before (2 tasks = 20 episodes for the slowest)
    on_8 = project(ML10, COSTS, 8, 2, GBPS_10, 2.8, split="ray")
    assert on_8["actors_used"] == 16 and on_8["slowest_actor_episodes"] == 20
    # 39 actors: blocks of at most 6 episodes (the even split's ceil(200 / 39)), where one task per actor gives 10
    odd = project(ML10, COSTS, 39, 1, GBPS_10, 2.8, split="ray")
    assert odd["actors_used"] == 39 and odd["slowest_actor_episodes"] == 6
    # more actors than episodes: one episode each, the rest idle
    many = project(ML10, COSTS, 300, 1, GBPS_10, 2.8, split="ray")
    assert many["actors_used"] == 200 and many["slowest_actor_episodes"] == 1


def test_projection_refuses_no_nodes() -> None:
    with pytest.raises(ValueError, match="nodes"):
        project(ML10, COSTS, 0, 2, GBPS_10, 0.0)
    with pytest.raises(ValueError, match="split"):
        project(ML10, COSTS, 1, 2, GBPS_10, 0.0, split="steps")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--nodes", "0"], "--nodes"),
        (["--nodes", "1,x"], "--nodes"),
        (["--network-gbps", "0"], "--network-gbps"),
        (["--learner-s", "-1"], "--learner-s"),
        (["--config", NAV, "--num-tasks", "21", "--no-cluster"], "meta-batch"),
    ],
)
def test_bad_input_is_one_error_line(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    _error(bench_scaleout.main(argv), capsys, needle)


def test_tiny_run_on_a_local_ray(local_ray: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = bench_scaleout.main(
        [*TINY, "--no-cluster", "--cores-per-node", "2", "--learner-s", "0.5", "--results", str(tmp_path)]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "| 64 | 128 |" in out and "speed-up vs 1 node" in out
    data = json.loads((tmp_path / "scaleout_navigation2d.json").read_text())
    assert data["cluster"] is None and data["learner_s"] == 0.5
    assert data["slice"] == {"tasks": 2, "episodes_per_task": 2, "horizon": 100, "samplings": 2}
    one = data["one_actor"]
    assert one["steps"] == 2 * 2 * 100 * 2 and one["stats"]["collects"] == 2
    costs = Costs(**data["costs"])
    assert costs.actor_steps_per_s > 0 and costs.episode_bytes_per_step == 4 * (
        2 + 2 + 1 + 1
    )  # float32 obs, act, r, mask
    assert costs.param_bytes == 4 * (2 * 8 + 8 + 8 * 2 + 2 + 2)  # 2-8-2 mean network and log_std
    full = Workload(**data["workload"])
    assert full.steps == 20 * 20 * 100 * 2
    for row in data["rows"]:
        expected = project(full, costs, row["nodes"], data["cores_per_node"], 10e9 / 8, 0.5)
        assert row["total"] == pytest.approx(expected["total"])
        assert row["slowest_actor_episodes"] == math.ceil(400 / (row["nodes"] * data["cores_per_node"]))
        ray = project(full, costs, row["nodes"], data["cores_per_node"], 10e9 / 8, 0.5, split="ray")
        assert row["total_ray_blocks"] == pytest.approx(ray["total"])
        assert (row["actors_ray_blocks"], row["slowest_actor_episodes_ray_blocks"]) == (
            ray["actors_used"],
            ray["slowest_actor_episodes"],
        )
    assert [r["nodes"] for r in data["rows"]] == [1, 8, 64]
    assert data["command"].startswith("python -m benchmarks.bench_scaleout")


def test_the_cluster_needs_its_own_ray(local_ray: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _error(bench_scaleout.main([*TINY, "--results", str(tmp_path)]), capsys, "--no-cluster")


@pytest.mark.slow
def test_run_with_the_simulated_two_node_cluster(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "benchmarks.bench_scaleout", *TINY, "--nodes", "1,2", "--results", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "measured / projected" in done.stdout
    data = json.loads((tmp_path / "scaleout_navigation2d.json").read_text())
    cluster, comparison = data["cluster"], data["cluster_vs_projection"]
    assert len(cluster["workers"]) == 2 and len({w.split(":")[1] for w in cluster["workers"]}) == 2
    assert cluster["steps"] == 2 * 2 * 100 * 2 and comparison["measured_steps_per_s"] > 0
    measured, projected = comparison["measured_steps_per_s"], comparison["projected_steps_per_s"]
    assert comparison["ratio"] == pytest.approx(measured / projected)
    alone, together = data["one_actor"]["actor_cpu_share"], cluster["actor_cpu_share"]
    if alone and together:  # /proc readable: the ratio corrected for the CPU share each actor got
        corrected = measured / projected * alone[0] / (sum(together) / 2)
        assert comparison["ratio_cpu_share_corrected"] == pytest.approx(corrected)
