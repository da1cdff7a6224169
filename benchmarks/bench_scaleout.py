"""Scale-out on paper: the projected meta-iteration time of a config on 1, 8 and 64 nodes of Ray actors.

Measured on this machine, on a slice of the config's meta-batch (``--num-tasks`` tasks x
``--episodes`` episodes per task at the config's horizon; ML10's full batch is 200,000 env steps per
meta-iteration, the default slice 16,000), with the Ray backend and torch pinned to one thread:

- **One actor** (an embedded Ray with 1 CPU, one physics thread): its env steps/s on its own clock
  (the rollout inside the actor, policy forwards included), the share of a core it got, and the
  bytes and seconds of each sampling's transfers (parameters out through the object store, the
  ``[T, n, B]`` episodes block back; :class:`~metarl.ray_sampler.RayStats`). A meta-iteration is
  ``maml.num_inner_steps + 1`` samplings of new tasks: the first with the shared parameters, the
  others with per-task stacked parameters (the real payload). One untimed warm-up meta-iteration,
  then ``--repeats``.
- **A simulated two-node cluster** (``ray.cluster_utils.Cluster``, 2 nodes x 1 CPU, 2 actors, one
  per node, the same slice; ``--no-cluster`` skips it): its end-to-end env steps/s, next to the
  projection for 2 nodes x 1 core on the same slice.

Then the projection (:func:`project`) for the config's full meta-batch at each of ``--nodes``:

- sampling = samplings x ceil(episodes / actors) x horizon / the measured actor's steps/s, with one
  actor per core (``--cores-per-node``, default this machine's core count) and the episodes split
  evenly (the slowest actor decides). The last column splits as
  :class:`~metarl.ray_sampler.RaySampler` does (:func:`~metarl.ray_sampler.sampling_blocks`): whole
  tasks while there are no more actors than tasks, else blocks of tasks x episodes, up to one
  actor per episode;
- transfer = the bytes that leave or reach the driver's node (parameters once per other node,
  the other nodes' share of the seeds and episodes) / ``--network-gbps`` (default 10 Gbit/s), plus
  the object-store time measured per byte on the slice (scaled to the full batch's bytes), plus the
  other Ray overhead measured per sampling (constant);
- learner = ``--learner-s``: the driver's work between samplings that Ray does not sample
  (advantages, inner step, TRPO meta-update). Default: 2.8 s per 200,000 env steps of a
  meta-iteration (ML10's batch), scaled linearly to the config's batch. ML10's 2.8 s: this 2-core
  machine's ML1-Reach training (the same policy and TRPO settings, half ML10's 20 tasks) logged
  ``perf/time_adapt_s`` + ``perf/time_learning_s`` = 0.43 + 0.96 s per meta-iteration (medians),
  doubled; results/learner_halfcheetahvel.md's 0.59 + 0.98 s, scaled by FLOPs per step and steps,
  gives 2.5 s. Pass ``--learner-s`` for another config or a faster learner.

Writes ``scaleout_<env>.{md,json}`` to ``--results`` (default ``runs/bench_scaleout``).

Example::

    python -m benchmarks.bench_scaleout --config configs/metaworld_ml10.yaml --results results
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench_ray import physics_kwargs, ray_overheads, ray_sampler, reset_stats
from benchmarks.common import (
    CONFIGS,
    BenchParser,
    add_config,
    add_results,
    command_line,
    csv,
    log,
    make_parser,
    run_main,
)
from metarl.build import build_policy, horizon, io_dims, iteration_rngs, task_env
from metarl.cli import positive
from metarl.config import load_config
from metarl.errors import ConfigError
from metarl.policy import GaussianMLPPolicy, stack_params
from metarl.ray_sampler import sampling_blocks
from metarl.reporting import env_slug, machine_description, write_results

MODULE = "bench_scaleout"

LEARNER_S_PER_STEP = 2.8 / 200_000
"""Default driver seconds (adaptation + meta-update) per env step of a meta-iteration: ML10's 2.8 s / 200,000 steps."""

SEED_BYTES = 16
"""Bytes sent to an actor per episode besides the parameters: its reset and noise seeds (two int64)."""


# --------------------------------------------------------------------------- the projection (pure)


@dataclass(frozen=True)
class Workload:
    """A meta-iteration's sampling: ``samplings`` x ``tasks`` x ``episodes_per_task`` episodes of ``horizon`` steps."""

    tasks: int
    episodes_per_task: int
    horizon: int
    samplings: int

    @property
    def episodes(self) -> int:
        """Episodes per sampling."""
        return self.tasks * self.episodes_per_task

    @property
    def steps(self) -> int:
        """Env steps per meta-iteration (every sampling's ``[T, n, B]`` block)."""
        return self.samplings * self.episodes * self.horizon


@dataclass(frozen=True)
class Costs:
    """What one actor and one sampling's transfers cost, measured on this machine."""

    actor_steps_per_s: float
    """Env steps/s of one actor on one core (the rollout on the actor's own clock)."""
    episode_bytes_per_step: float
    """Bytes of the episodes block sent back per env step (observations, actions, rewards, mask, success)."""
    param_bytes: int
    """One copy of the policy's parameters."""
    store_s_per_byte: float
    """Object-store seconds (driver's ``ray.put`` of the parameters + ``ray.get`` of the episodes) per byte."""
    overhead_s: float
    """Other Ray overhead per sampling (dispatch, the actors' own (de)serialisation), taken as constant."""


def project(
    work: Workload,
    costs: Costs,
    nodes: int,
    cores_per_node: int,
    network_bytes_per_s: float,
    learner_s: float,
    split: str = "episodes",
) -> dict[str, float]:
    """The projected seconds of one meta-iteration on ``nodes`` x ``cores_per_node`` actors (one per core).

    ``split="episodes"``: the episodes of a sampling are split evenly over the actors (ceil: the
    slowest actor decides); ``"ray"``: the blocks :class:`~metarl.ray_sampler.RaySampler` gives its
    actors (:func:`~metarl.ray_sampler.sampling_blocks`: whole tasks while there are no more actors
    than tasks, else tasks x episodes blocks; the largest decides); ``"tasks"``: whole tasks per
    actor (all their episodes), as ``RaySampler`` split before its blocks split episodes (at most
    one actor per task). Actors beyond the work are idle. Every
    byte of a sampling goes through the object store (``store_s_per_byte``); the parameters go once
    to each other node in use, and those nodes' share of the seeds and the episodes crosses the
    network, all through the driver node's link (``network_bytes_per_s``), not overlapped with
    sampling. Returns the actors and nodes in use, the episodes of the slowest actor, the bytes,
    and the seconds: ``sampling``, ``network``, ``store``, ``transfer`` (network + store +
    overhead), ``learner`` and ``total``.
    """
    if nodes < 1 or cores_per_node < 1:
        raise ValueError(f"nodes and cores_per_node must be >= 1, got {nodes}, {cores_per_node}")
    if split not in ("episodes", "ray", "tasks"):
        raise ValueError(f"split must be 'episodes', 'ray' or 'tasks', got {split!r}")
    actors = nodes * cores_per_node
    if split == "episodes":
        used = min(actors, work.episodes)
        slowest_episodes = math.ceil(work.episodes / actors)
    elif split == "ray":
        used = min(actors, work.episodes)  # RaySampler starts no more actors than episodes
        slowest_episodes = max(block.episodes for block in sampling_blocks(work.tasks, work.episodes_per_task, used))
    else:
        used = min(actors, work.tasks)
        slowest_episodes = math.ceil(work.tasks / actors) * work.episodes_per_task
    used_nodes = min(nodes, used)  # actors spread over the nodes (Ray's SPREAD)
    remote_share = (used_nodes - 1) / used_nodes
    sampling = work.samplings * slowest_episodes * work.horizon / costs.actor_steps_per_s
    params_out = costs.param_bytes * (1 + (work.samplings - 1) * work.tasks)  # shared, then stacked per task
    seeds_out = SEED_BYTES * work.episodes * work.samplings
    episodes_back = costs.episode_bytes_per_step * work.steps
    network_bytes = params_out * (used_nodes - 1) + (seeds_out + episodes_back) * remote_share
    network = network_bytes / network_bytes_per_s
    store = costs.store_s_per_byte * (params_out + episodes_back)
    transfer = network + store + costs.overhead_s * work.samplings
    return {
        "actors": actors,
        "actors_used": used,
        "nodes_used": used_nodes,
        "slowest_actor_episodes": slowest_episodes,
        "bytes_params_out": params_out,
        "bytes_seeds_out": seeds_out,
        "bytes_episodes_back": episodes_back,
        "bytes_network": network_bytes,
        "sampling": sampling,
        "network": network,
        "store": store,
        "transfer": transfer,
        "learner": learner_s,
        "total": sampling + transfer + learner_s,
    }


# --------------------------------------------------------------------------- measurements


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    value = float(text)
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a number >= 0."""
    value = float(text)
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process on this machine (``/proc``), None if unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def actor_pids(sampler: Any) -> list[int]:
    """The actors' process ids (``host:node:pid`` in :attr:`RayStats.workers`)."""
    return [int(where.rsplit(":", 1)[1]) for where in sampler.stats.workers]


def time_meta_iterations(
    sampler: Any, config: Any, env: Any, policy: GaussianMLPPolicy, repeats: int
) -> dict[str, Any]:
    """``repeats`` meta-iterations' samplings (after one untimed warm-up), each on new tasks: seconds, steps, stats.

    Each meta-iteration samples ``maml.num_inner_steps + 1`` times: first with the policy's shared
    parameters, then with per-task stacked copies (no adaptation in between: the same payload
    and the same env work as training, without the learner).
    """
    samplings = config.maml.num_inner_steps + 1
    n = sampler.num_tasks
    shared = {k: v.detach() for k, v in policy.params().items()}
    stacked = {k: v.clone() for k, v in stack_params(shared, n).items()}
    wall, steps, cpu_before, load = 0.0, 0, {}, 0.0
    pids = actor_pids(sampler)
    for it in range(repeats + 1):
        if it == 1:  # the warm-up built the actors' envs; count from here
            reset_stats(sampler)
            cpu_before = {pid: cpu_seconds(pid) for pid in pids}
            load = os.getloadavg()[0]
        rng, generator = iteration_rngs(config.train.seed, it)
        tasks = env.unwrapped.sample_tasks(n, rng)
        for s in range(samplings):
            start = time.perf_counter()
            episodes = sampler.collect(policy, shared if s == 0 else stacked, tasks, rng, generator)
            if it > 0:
                wall += time.perf_counter() - start
                steps += episodes.mask.numel()
    stats = sampler.stats.as_dict()
    shares = []
    for pid in pids:
        before, after = cpu_before.get(pid), cpu_seconds(pid)
        if before is not None and after is not None:
            shares.append((after - before) / wall)
    return {
        "steps": steps,
        "wall_s": wall,
        "steps_per_s": steps / wall,
        "actor_s": stats["seconds_slowest_worker"],
        "stats": stats,
        "overheads": ray_overheads(stats),
        "actor_cpu_share": shares,
        "load_average": load,
        "workers": stats["workers"],
    }


def measure_one_actor(config: Any, args: argparse.Namespace, env: Any, policy: GaussianMLPPolicy) -> dict[str, Any]:
    """One actor on one CPU of an embedded Ray (or of the Ray this process already joined)."""
    from metarl.ray_sampler import init_ray, require_ray

    ray = require_ray()
    started = not ray.is_initialized()
    init_ray(None, 1)
    log(f"one actor: {args.num_tasks} tasks x {args.episodes} episodes, {args.repeats} meta-iterations + warm-up")
    sampler = ray_sampler(config, 1, 1, args.num_tasks, args.episodes)
    try:
        result = time_meta_iterations(sampler, config, env, policy, args.repeats)
    finally:
        sampler.close()
        if started:
            ray.shutdown()
    result["steps_per_actor_s"] = result["steps"] / result["actor_s"]
    return result


def measure_cluster(config: Any, args: argparse.Namespace, env: Any, policy: GaussianMLPPolicy) -> dict[str, Any]:
    """Two actors on a two-node cluster simulated on this machine (2 nodes x 1 CPU), the same slice."""
    from metarl.ray_sampler import init_ray, require_ray

    ray = require_ray()
    from ray.cluster_utils import Cluster

    log("simulated two-node cluster: 2 nodes x 1 CPU, 2 actors")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    sampler = None
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        init_ray(cluster.address)
        sampler = ray_sampler(config, 2, 1, args.num_tasks, args.episodes)
        nodes = {where.split(":")[1] for where in sampler.stats.workers}
        if len(nodes) != 2:
            raise ConfigError(f"the 2 actors did not land on 2 nodes: {sampler.stats.workers}")
        return time_meta_iterations(sampler, config, env, policy, args.repeats)
    finally:
        if sampler is not None:
            sampler.close()
        ray.shutdown()
        cluster.shutdown()


def costs_of(one: dict[str, Any], param_bytes: int, samplings: int) -> Costs:
    """The per-actor and per-byte costs from the one-actor measurement."""
    s = one["stats"]
    collects = max(s["collects"], 1)
    put_bytes = param_bytes * (1 + (samplings - 1) * one["num_tasks"]) * collects / samplings
    return Costs(
        actor_steps_per_s=one["steps_per_actor_s"],
        episode_bytes_per_step=s["bytes_from_workers"] / one["steps"],
        param_bytes=param_bytes,
        store_s_per_byte=(s["seconds_put"] + s["seconds_get"]) / (put_bytes + s["bytes_from_workers"]),
        overhead_s=max(0.0, one["overheads"]["other_overhead_s"]),
    )


# --------------------------------------------------------------------------- the benchmark


def build_parser() -> BenchParser:
    """The benchmark's flags."""
    parser = make_parser(MODULE, __doc__)
    add_config(parser, CONFIGS / "metaworld_ml10.yaml")
    add_results(parser, "runs/bench_scaleout")
    parser.add_argument("--num-tasks", type=positive, default=4, help="tasks in the measured slice (default 4)")
    parser.add_argument("--episodes", type=positive, default=2, help="episodes per task in the slice (default 2)")
    parser.add_argument(
        "--repeats", type=positive, default=2, help="timed meta-iterations of the slice after one warm-up (default 2)"
    )
    parser.add_argument("--nodes", type=csv(positive), default=[1, 8, 64], help="node counts (default 1,8,64)")
    parser.add_argument(
        "--cores-per-node",
        type=positive,
        default=os.cpu_count() or 1,
        help=f"cores (actors) per node (default: this machine's, {os.cpu_count() or 1})",
    )
    parser.add_argument(
        "--network-gbps", type=positive_float, default=10.0, help="the driver node's network, Gbit/s (default 10)"
    )
    parser.add_argument(
        "--learner-s",
        type=non_negative_float,
        default=None,
        help="driver seconds per meta-iteration (adaptation + meta-update; default 2.8 s per 200,000 env steps)",
    )
    parser.add_argument("--no-cluster", action="store_true", help="skip the simulated two-node cluster")
    parser.add_argument("--name", default=None, help="results file stem (default scaleout_<env>)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Measure, project, print and write the table."""
    if not args.nodes:
        raise ValueError("--nodes: give at least one node count, e.g. 1,8,64")
    config = load_config(args.config, args.set)
    if config.maml.loss != "pg":
        raise ConfigError("config key 'maml.loss': bench_scaleout projects RL sampling; use an RL config")
    m = config.maml
    if args.num_tasks > m.meta_batch_size or args.episodes > m.episodes_per_task:
        raise ValueError(
            f"--num-tasks {args.num_tasks} / --episodes {args.episodes}: the slice must fit the config's "
            f"meta-batch ({m.meta_batch_size} tasks x {m.episodes_per_task} episodes)"
        )
    if not args.no_cluster:
        from metarl.ray_sampler import require_ray

        if require_ray().is_initialized():
            raise ValueError(
                "the simulated cluster needs this process's own Ray, but it is already connected to one "
                "(--no-cluster skips the cluster)"
            )
    torch.set_num_threads(1)  # the driver's policy work on one core, as each actor's (run_main restores it)
    env = task_env(config)
    policy = build_policy(config, *io_dims(env))
    samplings = m.num_inner_steps + 1
    full = Workload(m.meta_batch_size, m.episodes_per_task, horizon(config.env), samplings)
    piece = Workload(args.num_tasks, args.episodes, horizon(config.env), samplings)
    learner_s = args.learner_s if args.learner_s is not None else LEARNER_S_PER_STEP * full.steps
    param_bytes = sum(p.numel() * p.element_size() for p in policy.parameters())
    bandwidth = args.network_gbps * 1e9 / 8
    try:
        one = measure_one_actor(config, args, env, policy)
        one["num_tasks"] = args.num_tasks
        cluster = None if args.no_cluster else measure_cluster(config, args, env, policy)
    finally:
        env.close()
    costs = costs_of(one, param_bytes, samplings)
    rows = []
    for nodes in args.nodes:
        row = project(full, costs, nodes, args.cores_per_node, bandwidth, learner_s)
        ray = project(full, costs, nodes, args.cores_per_node, bandwidth, learner_s, split="ray")
        rows.append(
            {
                "nodes": nodes,
                **row,
                "total_ray_blocks": ray["total"],
                "actors_ray_blocks": ray["actors_used"],
                "slowest_actor_episodes_ray_blocks": ray["slowest_actor_episodes"],
            }
        )
    one_node = project(full, costs, 1, args.cores_per_node, bandwidth, learner_s)
    comparison = None
    if cluster is not None:
        predicted = project(piece, costs, 2, 1, bandwidth, 0.0, split="ray")  # as the measured RaySampler splits
        projected = piece.steps / (predicted["sampling"] + predicted["transfer"])
        alone, together = one["actor_cpu_share"], cluster["actor_cpu_share"]
        comparison = {
            "measured_steps_per_s": cluster["steps_per_s"],
            "projected_steps_per_s": projected,
            "ratio": cluster["steps_per_s"] / projected,
            # the projection assumes each actor gets what the lone actor got; on this shared machine it did not
            "ratio_cpu_share_corrected": (
                cluster["steps_per_s"] / projected * alone[0] / (sum(together) / len(together))
                if alone and together
                else None
            ),
            "projection": predicted,
        }
    table = markdown(config, args, full, piece, costs, one, cluster, comparison, rows, one_node, learner_s)
    print(table)
    data = {
        "env_id": config.env.id,
        "env_kwargs": config.env.kwargs,
        "workload": asdict(full),
        "slice": asdict(piece),
        "repeats": args.repeats,
        "cores_per_node": args.cores_per_node,
        "network_gbps": args.network_gbps,
        "learner_s": learner_s,
        "learner_s_given": args.learner_s is not None,
        "vector_kwargs": physics_kwargs(config, 1),
        "costs": asdict(costs),
        "one_actor": one,
        "cluster": cluster,
        "cluster_vs_projection": comparison,
        "projection_one_node": one_node,
        "rows": rows,
    }
    name = args.name or f"scaleout_{env_slug(config.env.id)}"
    out = args.results or Path("runs") / "bench_scaleout"
    md_path, js_path = write_results(out, name, table, data, command=command_line(MODULE, args.argv))
    log(f"wrote {md_path}, {js_path}")
    return 0


def markdown(
    config: Any,
    args: argparse.Namespace,
    full: Workload,
    piece: Workload,
    costs: Costs,
    one: dict[str, Any],
    cluster: dict[str, Any] | None,
    comparison: dict[str, Any] | None,
    rows: list[dict[str, Any]],
    one_node: dict[str, float],
    learner_s: float,
) -> str:
    """The results: what was measured, what is assumed, the projection table and the cluster comparison."""
    p = config.policy
    share = one["actor_cpu_share"]
    quiet_rate = one["steps"] / (share[0] * one["wall_s"]) if share and share[0] > 0 else None
    quiet = f"; {quiet_rate:,.0f} per CPU-second of the actor" if quiet_rate else ""
    share_text = f"{share[0]:.0%} of a core" if share else "its CPU share unknown"
    learner_origin = (
        "given with --learner-s"
        if args.learner_s is not None
        else "the default for ML10's 200,000 env steps, see --help"
        if full.steps == 200_000
        else f"the default 2.8 s per 200,000 env steps scaled to {full.steps:,}: pass --learner-s for this config"
    )
    lines = [
        f"# Scale-out projection on Ray: {config.env.id}",
        "",
        f"Full meta-batch: {full.tasks} tasks x {full.episodes_per_task} episodes x {full.horizon} steps x "
        f"{full.samplings} samplings = {full.steps:,} env steps per meta-iteration; policy {p.hidden_sizes} "
        f"{p.activation}; {machine_description()}.",
        "",
        f"**Measured** here on a slice ({piece.tasks} tasks x {piece.episodes_per_task} episodes, {args.repeats} "
        f"meta-iterations of {piece.steps:,} steps after one warm-up; Ray, 1 actor on 1 CPU, 1 torch thread; "
        f"load average {one['load_average']:.1f} on {os.cpu_count()} cores):",
        "",
        f"- one actor: **{costs.actor_steps_per_s:,.0f} env steps/s** on its own clock ({share_text}{quiet}); "
        f"end to end through Ray {one['steps_per_s']:,.0f} env steps/s;",
        f"- bytes (counted): parameters {costs.param_bytes / 1e3:.1f} kB per copy (shared before adaptation, "
        f"stacked per task after); episodes back {costs.episode_bytes_per_step:.0f} B per env step, "
        f"{costs.episode_bytes_per_step * full.episodes * full.horizon / 1e6:.1f} MB per full sampling;",
        f"- object store (put + get): {costs.store_s_per_byte * 1e9:.2f} s per GB; other Ray overhead "
        f"{1000 * costs.overhead_s:.0f} ms per sampling.",
        "",
        f"**Assumed**: {args.cores_per_node} cores per node (--cores-per-node; this machine has {os.cpu_count()}), "
        "one actor per core, each as fast as the measured actor; a sampling's episodes split evenly over the "
        f"actors (the slowest decides: ceil); {args.network_gbps:g} Gbit/s into the driver's node (--network-gbps), "
        f"not overlapped with sampling; learner {learner_s:.2f} s per meta-iteration ({learner_origin}), the same "
        "on any number of nodes."
        + (
            f" The actor's rate per CPU-second ({quiet_rate:,.0f} env steps/s, a core of its own) would make the "
            f"sampling column {1 - costs.actor_steps_per_s / quiet_rate:.0%} shorter."
            if quiet_rate and quiet_rate > costs.actor_steps_per_s
            else ""
        ),
        "",
        "| nodes | actors | episodes per actor per sampling (slowest) | sampling s [measured rate, assumed split] "
        "| transfer s [counted bytes, assumed network, measured store] | learner s [assumed] | total s | "
        "speed-up vs 1 node | total s, RaySampler's blocks (actors used, slowest actor's episodes) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['nodes']} | {r['actors']} | {r['slowest_actor_episodes']} | {r['sampling']:.2f} | "
            f"{r['transfer']:.3f} | {r['learner']:.2f} | **{r['total']:.2f}** | "
            f"{one_node['total'] / r['total']:.1f}x | {r['total_ray_blocks']:.2f} ({r['actors_ray_blocks']}, "
            f"{r['slowest_actor_episodes_ray_blocks']}) |"
        )
    if cluster is not None and comparison is not None:
        shares = ", ".join(f"{s:.0%}" for s in cluster["actor_cpu_share"]) or "unknown"
        lines += [
            "",
            f"Simulated two-node cluster (`ray.cluster_utils.Cluster`, 2 nodes x 1 CPU on this machine, 2 actors, "
            f"one per node; the same slice, {args.repeats} meta-iterations after one warm-up; load average "
            f"{cluster['load_average']:.1f}; the actors got {shares} of a core):",
            "",
            "| 2 nodes x 1 core, the slice | env steps/s |",
            "|---|---:|",
            f"| measured (end to end, wall clock) | {comparison['measured_steps_per_s']:,.0f} |",
            f"| projected (from the one-actor measurement) | {comparison['projected_steps_per_s']:,.0f} |",
            f"| measured / projected | {comparison['ratio']:.2f} |",
        ]
        corrected = comparison["ratio_cpu_share_corrected"]
        if corrected is not None:
            lines.append(
                f"| measured / projected, corrected for the actors' CPU share ({one['actor_cpu_share'][0]:.0%} "
                f"alone, {shares} in the cluster) | {corrected:.2f} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit status (2 and one ``error:`` line for bad input)."""
    return run_main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
