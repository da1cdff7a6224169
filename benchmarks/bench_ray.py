"""Sampling throughput of the local sampler vs the Ray backend (1 and 2 actors) on one machine, side by side.

Each method collects the config's meta-batch (``maml.meta_batch_size`` tasks x
``maml.episodes_per_task`` episodes x the horizon; HalfCheetahVel's paper batch 40 x 20 x 200 by
default) with the config's policy, as :meth:`Sampler.collect` does in training. The repeats are
interleaved; the table gives the best and the median env steps/s of each method, and for Ray the
bytes moved per sampling and per meta-iteration (two samplings at one inner step), the time in
the object store (``ray.put`` of the parameters, ``ray.get`` of the episodes) and the rest of the
overhead (wall time minus the slowest actor's rollout). Every method samples the same episodes bit
for bit (checked once per run).

The physics threads of the native batched env are split between the actors: the local sampler and
one actor get ``--threads`` (default: all cores), each of two actors half of them. An embedded Ray
is started with 3 logical CPUs, so that the 1-actor and the 2-actor samplers can both stay up (only one
samples at a time); Ray's start-up and the actors' start are not timed.

Example::

    python -m benchmarks.bench_ray --config configs/halfcheetah_vel.yaml --repeats 5 --results results
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium.envs.registration import load_env_creator

from benchmarks.common import CONFIGS, BenchParser, add_config, add_results, command_line, log, make_parser, run_main
from metarl.build import build_policy, horizon, io_dims, iteration_rngs, task_env, torch_dtype
from metarl.cli import positive
from metarl.config import load_config
from metarl.episodes import Episodes
from metarl.errors import ConfigError
from metarl.reporting import machine_description, write_results
from metarl.sampler import Sampler, resolve_env_id

MODULE = "bench_ray"
FIELDS = ("observations", "actions", "rewards", "mask")


def build_parser() -> BenchParser:
    """The benchmark's flags."""
    parser = make_parser(MODULE, __doc__)
    add_config(parser, CONFIGS / "halfcheetah_vel.yaml")
    add_results(parser, "runs/bench_ray")
    parser.add_argument("--repeats", type=positive, default=5, help="interleaved repeats of every method (default 5)")
    parser.add_argument("--threads", type=positive, default=os.cpu_count() or 1, help="physics threads in all")
    parser.add_argument("--name", default=None, help="results file stem (default ray_sampling_<env>)")
    return parser


def physics_kwargs(config: Any, threads: int) -> dict[str, Any]:
    """The config's ``env.vector_kwargs`` with ``num_threads=threads`` where the env's native vector form takes it.

    The batched MuJoCo envs take ``num_threads`` (physics threads); others (2D navigation's
    numpy form, ``SyncVectorEnv`` fallbacks) get the config's keys unchanged.
    """
    kwargs = dict(config.env.vector_kwargs)
    entry = gymnasium.spec(resolve_env_id(config.env.id)).vector_entry_point
    if entry is not None and config.env.vectorization != "sync":
        creator = load_env_creator(entry) if isinstance(entry, str) else entry
        if "num_threads" in inspect.signature(creator).parameters:
            kwargs["num_threads"] = threads
    return kwargs


def ray_sampler(
    config: Any, actors: int, threads: int, num_tasks: int | None = None, episodes_per_task: int | None = None
) -> Any:
    """A :class:`~metarl.ray_sampler.RaySampler` on ``actors`` actors of one CPU each, ``threads`` physics threads each.

    It samples the config's meta-batch, or ``num_tasks`` x ``episodes_per_task`` of it.
    """
    from metarl.ray_sampler import RaySampler

    e, m = config.env, config.maml
    return RaySampler(
        e.id,
        num_tasks or m.meta_batch_size,
        episodes_per_task or m.episodes_per_task,
        horizon(e),
        env_kwargs=e.kwargs,
        vector_kwargs=physics_kwargs(config, threads),
        vectorization=e.vectorization,
        dtype=torch_dtype(config.train.dtype),
        num_workers=actors,
        cpus_per_worker=1.0,
    )


def make_samplers(config: Any, threads: int) -> dict[str, Any]:
    """The local sampler and the Ray samplers with 1 and 2 actors, physics threads split between actors."""
    from metarl.ray_sampler import init_ray

    init_ray(None, 3)  # logical CPUs: the 1-actor and the 2-actor samplers stay up; one samples at a time
    e, m = config.env, config.maml
    samplers: dict[str, Any] = {
        "local": Sampler(
            e.id,
            m.meta_batch_size,
            m.episodes_per_task,
            horizon(e),
            env_kwargs=e.kwargs,
            vector_kwargs=physics_kwargs(config, threads),
            vectorization=e.vectorization,
            dtype=torch_dtype(config.train.dtype),
        )
    }
    for actors in (1, 2):
        name = f"ray, {actors} actor{'s' if actors > 1 else ''}"
        samplers[name] = ray_sampler(config, actors, max(1, threads // actors))
    return samplers


def reset_stats(sampler: Any) -> None:
    """Zero a Ray sampler's :class:`~metarl.ray_sampler.RayStats` (keeping its actors' places): count from here."""
    from metarl.ray_sampler import RayStats

    sampler.stats = RayStats(workers=sampler.stats.workers)


def ray_overheads(stats: dict[str, Any]) -> dict[str, float]:
    """Per sampling, from summed :class:`~metarl.ray_sampler.RayStats` (``as_dict``): MB to the actors and
    back, seconds in the object store (``ray.put`` + ``ray.get``) and the other overhead (wall time minus
    the slowest actor's rollout minus the object store)."""
    count = max(stats["collects"], 1)
    store = (stats["seconds_put"] + stats["seconds_get"]) / count
    return {
        "mb_to": stats["bytes_to_workers"] / count / 1e6,
        "mb_back": stats["bytes_from_workers"] / count / 1e6,
        "store_s": store,
        "other_overhead_s": (stats["seconds_total"] - stats["seconds_slowest_worker"]) / count - store,
    }


def run(args: argparse.Namespace) -> int:
    """Time every method (repeats interleaved), check they agree, print and write the table."""
    config = load_config(args.config, args.set)
    if config.maml.loss != "pg":
        raise ConfigError("config key 'maml.loss': bench_ray measures RL sampling; use an RL config")
    env = task_env(config)
    policy = build_policy(config, *io_dims(env))
    samplers = make_samplers(config, args.threads)
    seconds: dict[str, list[float]] = {name: [] for name in samplers}
    steps = 0
    try:
        first: dict[str, Episodes] = {}
        for repeat in range(args.repeats + 1):  # repeat 0 warms up (and checks identity), untimed
            rng, generator = iteration_rngs(config.train.seed, repeat)
            tasks = env.unwrapped.sample_tasks(config.maml.meta_batch_size, rng)  # type: ignore[attr-defined]
            for name, sampler in samplers.items():
                episodes_rng = np.random.default_rng([config.train.seed, repeat, 1])  # the same draws for every method
                torch_gen = torch.Generator().manual_seed(int(generator.initial_seed()))
                start = time.perf_counter()
                episodes = sampler.collect(policy, policy.params(), tasks, episodes_rng, torch_gen)
                elapsed = time.perf_counter() - start
                if repeat == 0:
                    first[name] = episodes
                    if hasattr(sampler, "stats"):
                        reset_stats(sampler)  # count the timed samplings only
                else:
                    seconds[name].append(elapsed)
                    steps = int(episodes.mask.sum())
        reference = first["local"]
        identical = {
            name: all(torch.equal(getattr(reference, f), getattr(ep, f)) for f in FIELDS) for name, ep in first.items()
        }
        stats = {name: s.stats.as_dict() for name, s in samplers.items() if hasattr(s, "stats")}
    finally:
        for sampler in samplers.values():
            sampler.close()
    table, rows = markdown_table(config, args, seconds, steps, stats, identical)
    print(table)
    data = {
        "env_id": config.env.id,
        "env_kwargs": config.env.kwargs,
        "num_tasks": config.maml.meta_batch_size,
        "episodes_per_task": config.maml.episodes_per_task,
        "horizon": horizon(config.env),
        "threads": args.threads,
        "repeats": args.repeats,
        "env_steps_per_sampling": steps,
        "seconds": seconds,
        "rows": rows,
        "ray_stats": stats,
        "identical_to_local": identical,
    }
    name = args.name or f"ray_sampling_{config.env.id.split('/')[-1].split('-')[0].lower()}"
    out = args.results or Path("runs") / "bench_ray"
    md_path, js_path = write_results(out, name, table, data, command=command_line(MODULE, args.argv))
    log(f"wrote {md_path}, {js_path}")
    return 0


def markdown_table(
    config: Any,
    args: argparse.Namespace,
    seconds: dict[str, list[float]],
    steps: int,
    stats: dict[str, dict[str, Any]],
    identical: dict[str, bool],
) -> tuple[str, list[dict[str, Any]]]:
    """The results table (and its rows as data)."""
    m = config.maml
    local_best = steps / min(seconds["local"])
    lines = [
        f"# Sampling on Ray vs locally: {config.env.id}",
        "",
        f"{m.meta_batch_size} tasks x {m.episodes_per_task} episodes x {horizon(config.env)} steps = {steps:,} env "
        f"steps per sampling, policy {config.policy.hidden_sizes} {config.policy.activation}; {args.threads} physics "
        f"thread(s) in all (split between the actors); {args.repeats} interleaved repeats after one untimed warm-up; "
        f"{machine_description()}.",
        "",
        "| sampler | env steps/s (best) | median | vs local (best) | same episodes as local | MB moved per "
        "sampling (to actors / back) | per meta-iteration (k=1) | object store put+get per sampling | other "
        "overhead per sampling |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    rows = []
    for name, times in seconds.items():
        best, median = steps / min(times), steps / statistics.median(times)
        row: dict[str, Any] = {"sampler": name, "best": best, "median": median, "vs_local": best / local_best}
        cells = [
            name,
            f"{best:,.0f}",
            f"{median:,.0f}",
            f"{best / local_best:.2f}x",
            "yes" if identical[name] else "NO",
        ]
        if name in stats:
            o = ray_overheads(stats[name])
            row.update(o)
            cells += [
                f"{o['mb_to']:.3f} / {o['mb_back']:.1f}",
                f"{2 * (o['mb_to'] + o['mb_back']):.1f} MB",
                f"{1000 * o['store_s']:.0f} ms",
                f"{1000 * o['other_overhead_s']:.0f} ms",
            ]
        else:
            cells += ["–", "–", "–", "–"]
        rows.append(row)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), rows


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit status (2 and one ``error:`` line for bad input)."""
    return run_main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
