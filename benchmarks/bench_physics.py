"""Physics and sampler throughput of a locomotion task env: gymnasium SyncVectorEnv vs metarl's batched env.

Three ways to advance ``--tasks x --episodes-per-task`` episodes by ``--steps`` env steps with
random actions (generated beforehand, the same for all three; only the stepping is timed):

(a) ``gymnasium.make_vec(..., vectorization_mode="sync")``: a SyncVectorEnv over the single env;
(b) ``gymnasium.make_vec(..., vectorization_mode="vector_entry_point", num_threads=T)``: the
    natively vectorised env, one ``step`` call per env step (observations, rewards and
    terminations included);
(c) the physics-only ceiling: one ``mujoco.rollout`` call on ``T`` threads stepping the same
    initial states through ``steps * frame_skip`` physics steps with the actions held, with no
    Python per step and no observations or rewards.

and the sampler, policy forward included: metarl's :class:`~metarl.sampler.Sampler` collecting
the same meta-batch (a 64x64 tanh Gaussian policy, one forward per step for all episodes,
actions drawn from it, the episodes block assembled) over

(d) gymnasium's ``SyncVectorEnv`` (``env.vectorization: sync``), and
(e) the natively vectorised env (what training uses).

Throughput is env steps per second (an env step is ``frame_skip`` physics steps). For envs
that terminate (Ant), (b), (d) and (e) count only the steps of live episodes, (a) also
simulates the auto-reset episodes and (c) all of them. The env id and its kwargs come from
``--config`` (default ``configs/halfcheetah_vel.yaml``) and ``--set`` (e.g. ``--set
env.kwargs.frame_skip=5``). Prints a markdown table and writes ``physics_<env>.{md,json}`` to
``--results`` (default ``runs/bench_physics``). Timings on a shared machine are noisy: use
``--repeats`` (the best of the interleaved repeats is reported) and compare the ratios, which
are measured side by side.

Example::

    python -m benchmarks.bench_physics --config configs/halfcheetah_vel.yaml --repeats 3
    python -m benchmarks.bench_physics --config configs/ant_vel.yaml --set env.kwargs.frame_skip=5
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium
import mujoco
import numpy as np
import torch
from mujoco import rollout

from benchmarks.common import CONFIGS, BenchParser, add_config, add_results, command_line, log, make_parser, run_main
from metarl.build import horizon
from metarl.cli import non_negative, positive
from metarl.config import load_config
from metarl.errors import ConfigError
from metarl.policy import GaussianMLPPolicy
from metarl.reporting import machine_description, write_results
from metarl.sampler import Sampler, resolve_env_id

MODULE = "bench_physics"
SYNC = "(a) gymnasium SyncVectorEnv"
CEILING = "(c) mujoco.rollout physics-only ceiling"
SAMPLER_SYNC = "(d) metarl Sampler on SyncVectorEnv, policy forward included"
SAMPLER_BATCHED = "(e) metarl Sampler on the batched env, policy forward included"


def build_parser() -> BenchParser:
    """The command-line flags."""
    parser = make_parser(MODULE, __doc__)
    add_config(parser, CONFIGS / "halfcheetah_vel.yaml")
    parser.add_argument("--num-tasks", type=positive, default=40, help="tasks of the meta-batch (default 40)")
    parser.add_argument("--episodes", type=positive, default=20, help="episodes per task (default 20)")
    parser.add_argument("--horizon", type=positive, help="env steps per episode (default: the config's horizon)")
    parser.add_argument(
        "--threads",
        type=positive,
        default=os.cpu_count() or 1,
        help="threads of (b)-(e): batched physics and the policy forward (default: all cores)",
    )
    parser.add_argument("--repeats", type=positive, default=1, help="timed repeats of each method (best is reported)")
    parser.add_argument("--seed", type=non_negative, default=0, help="seed of the actions and resets")
    add_results(parser, "runs/bench_physics")
    parser.add_argument("--name", help="results file stem (default: physics_<env name>)")
    return parser


def resolve(args: argparse.Namespace) -> None:
    """Fill ``args.env``, ``args.env_kwargs``, ``args.horizon`` and ``args.num_envs`` from the config."""
    config = load_config(args.config, args.set)
    args.env = resolve_env_id(config.env.id)
    args.env_kwargs = dict(config.env.kwargs)
    args.horizon = args.horizon or horizon(config.env)
    args.num_envs = args.num_tasks * args.episodes
    try:
        env = gymnasium.make(args.env, **args.env_kwargs)
    except (gymnasium.error.Error, TypeError) as exc:
        raise ConfigError(f"cannot make {args.env} with env.kwargs {args.env_kwargs}: {exc}") from None
    is_mujoco = hasattr(env.unwrapped, "model") and hasattr(env.unwrapped, "frame_skip")
    env.close()
    if not is_mujoco:
        raise ConfigError(f"config key 'env.id': bench_physics measures MuJoCo task envs; {args.env} is not one")


def random_actions(space: gymnasium.spaces.Box, steps: int, num_envs: int, seed: int) -> np.ndarray:
    """``[steps, num_envs, act_dim]`` float32 actions uniform in the action space."""
    rng = np.random.default_rng(seed)
    return rng.uniform(space.low, space.high, size=(steps, num_envs, space.shape[0])).astype(np.float32)


def time_sync(env_id: str, actions: np.ndarray, seed: int, env_kwargs: dict[str, Any]) -> tuple[float, int]:
    """(a) Seconds to step a SyncVectorEnv through ``actions``, and env steps simulated."""
    steps, num_envs, _ = actions.shape
    env = gymnasium.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync", **env_kwargs)
    env.reset(seed=seed)
    start = time.perf_counter()
    for action in actions:
        env.step(action)
    elapsed = time.perf_counter() - start
    env.close()
    return elapsed, steps * num_envs


def time_batched(
    env_id: str, actions: np.ndarray, seed: int, threads: int, env_kwargs: dict[str, Any]
) -> tuple[float, int]:
    """(b) Seconds to step the natively vectorised env through ``actions``, and sub-episode steps simulated."""
    steps, num_envs, _ = actions.shape
    env = gymnasium.make_vec(
        env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", num_threads=threads, **env_kwargs
    )
    env.reset(seed=seed)
    running = np.ones(num_envs, dtype=bool)
    simulated = 0
    start = time.perf_counter()
    for action in actions:
        simulated += int(running.sum())
        _, _, terminated, _, _ = env.step(action)
        running &= ~terminated
    elapsed = time.perf_counter() - start
    env.close()
    return elapsed, simulated


def ceiling_inputs(
    env_id: str, actions: np.ndarray, seed: int, env_kwargs: dict[str, Any]
) -> tuple[mujoco.MjModel, np.ndarray, np.ndarray]:
    """The model, initial states and per-physics-step controls of the physics-only ceiling (c).

    The model and ``frame_skip`` come from the env built with ``env_kwargs``, so an env step
    means the same number of physics steps as in (a) and (b): every action is held for
    ``frame_skip`` physics steps.
    """
    num_envs = actions.shape[1]
    env: Any = gymnasium.make(env_id, **env_kwargs).unwrapped
    model, frame_skip = env.model, env.frame_skip
    spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
    initial = np.empty((num_envs, mujoco.mj_stateSize(model, spec)))
    for i in range(num_envs):
        env.reset(seed=seed + i)
        mujoco.mj_getState(model, env.data, initial[i], spec)
    env.close()
    control = np.repeat(actions.transpose(1, 0, 2).astype(np.float64), frame_skip, axis=1)
    return model, initial, control


def time_rollout_ceiling(
    env_id: str, actions: np.ndarray, seed: int, threads: int, env_kwargs: dict[str, Any]
) -> tuple[float, int]:
    """(c) Seconds for one ``mujoco.rollout`` call over the whole horizon, and env steps simulated."""
    steps, num_envs, _ = actions.shape
    model, initial, control = ceiling_inputs(env_id, actions, seed, env_kwargs)
    state = np.empty((num_envs, control.shape[1], initial.shape[1]))
    sensordata = np.empty((num_envs, control.shape[1], model.nsensordata))
    datas = [mujoco.MjData(model) for _ in range(threads)]
    with rollout.Rollout(nthread=threads if threads > 1 else 0) as pool:
        start = time.perf_counter()
        pool.rollout(model, datas, initial, control, state=state, sensordata=sensordata)
        elapsed = time.perf_counter() - start
    return elapsed, steps * num_envs


def time_sampler(
    env_id: str,
    tasks: int,
    episodes_per_task: int,
    steps: int,
    seed: int,
    threads: int,
    env_kwargs: dict[str, Any],
    vectorization: str,
) -> tuple[float, int]:
    """(d)/(e) Seconds for one :meth:`Sampler.collect` of the meta-batch (policy forward included), live steps.

    The batched env of (e) steps its physics on ``threads`` threads; the policy forward runs on the
    sampler's own policy threads, as in training.
    """
    vector_kwargs = {"num_threads": threads} if vectorization == "native" else {}
    sampler = Sampler(env_id, tasks, episodes_per_task, steps, env_kwargs, vector_kwargs, vectorization)  # type: ignore[arg-type]
    env: Any = gymnasium.make(env_id, **env_kwargs).unwrapped
    policy = GaussianMLPPolicy(env.observation_space.shape[0], env.action_space.shape[0], (64, 64), "tanh")
    policy.reset_parameters(torch.Generator().manual_seed(seed))
    rng = np.random.default_rng(seed)
    task_list = env.sample_tasks(tasks, rng)
    try:
        start = time.perf_counter()
        episodes = sampler.collect(policy, policy.params(), task_list, rng, torch.Generator().manual_seed(seed))
        elapsed = time.perf_counter() - start
    finally:
        sampler.close()
        env.close()
    return elapsed, int(episodes.mask.sum())


def best_rates(measures: dict[str, Callable[[], tuple[float, int]]], repeats: int) -> dict[str, float]:
    """Highest env-steps/s of each ``measure() -> (seconds, env_steps)``, repeats interleaved.

    Interleaving gives every method the same chance of a quiet moment on a shared machine.
    """
    rates = {name: 0.0 for name in measures}
    for _ in range(repeats):
        for name, measure in measures.items():
            seconds, env_steps = measure()
            rates[name] = max(rates[name], env_steps / seconds)
    return rates


def markdown_table(args: argparse.Namespace, rates: dict[str, float]) -> str:
    """The results as a markdown section."""
    sync, ceiling = rates[SYNC], rates[CEILING]
    sampler_sync = rates[SAMPLER_SYNC]
    lines = [
        f"# Physics and sampler throughput: {args.env}",
        "",
        f"{args.num_tasks} tasks x {args.episodes} episodes x {args.horizon} env steps; (a)-(c) random actions, "
        f"(d)-(e) a 64x64 tanh policy; {args.threads} thread(s) for (b), (c) and the physics of (e), env kwargs "
        f"{args.env_kwargs or 'default'}, best of {args.repeats}; mujoco {mujoco.__version__}, "
        f"gymnasium {gymnasium.__version__}; {machine_description()}.",
        "",
        "| method | env steps/s | vs (a) SyncVectorEnv | vs (d) Sampler on SyncVectorEnv | vs (c) physics ceiling |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, rate in rates.items():
        lines.append(
            f"| {name} | {rate:,.0f} | {rate / sync:.2f}x | {rate / sampler_sync:.2f}x | {rate / ceiling:.2f}x |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Time every method (repeats interleaved), print and write the table."""
    resolve(args)
    space: Any = gymnasium.make(args.env, **args.env_kwargs).action_space
    actions = random_actions(space, args.horizon, args.num_envs, args.seed)
    measures: dict[str, Callable[[], tuple[float, int]]] = {
        SYNC: lambda: time_sync(args.env, actions, args.seed, args.env_kwargs),
        "(b) metarl batched env": lambda: time_batched(args.env, actions, args.seed, args.threads, args.env_kwargs),
        CEILING: lambda: time_rollout_ceiling(args.env, actions, args.seed, args.threads, args.env_kwargs),
    }
    for label, mode in ((SAMPLER_SYNC, "sync"), (SAMPLER_BATCHED, "native")):
        measures[label] = lambda mode=mode: time_sampler(  # type: ignore[misc]
            args.env, args.num_tasks, args.episodes, args.horizon, args.seed, args.threads, args.env_kwargs, mode
        )
    rates = best_rates(measures, args.repeats)
    table = markdown_table(args, rates)
    print(table)
    name = args.name or f"physics_{args.env.split('/')[-1]}"
    data = {
        "env_id": args.env,
        "env_kwargs": args.env_kwargs,
        "num_tasks": args.num_tasks,
        "episodes": args.episodes,
        "horizon": args.horizon,
        "threads": args.threads,
        "repeats": args.repeats,
        "seed": args.seed,
        "env_steps_per_s": rates,
        "mujoco": mujoco.__version__,
        "gymnasium": gymnasium.__version__,
    }
    out = args.results or Path("runs") / "bench_physics"
    md_path, js_path = write_results(out, name, table, data, command=command_line(MODULE, args.argv))
    log(f"wrote {md_path}, {js_path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit status (2 and one ``error:`` line for bad input)."""
    return run_main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
