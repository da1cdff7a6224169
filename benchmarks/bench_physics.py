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
simulates the auto-reset episodes and (c) all of them. Prints a markdown table and writes it to
``results/physics_<env>.md``. Timings on a shared machine are noisy: use ``--repeats`` (the
best of the interleaved repeats is reported) and compare the ratios, which are measured side by side.

Example::

    .venv/bin/python scripts/bench_physics.py --env metarl/HalfCheetahVel-v0
    .venv/bin/python scripts/bench_physics.py --config configs/halfcheetah_vel.yaml  # the config's env settings
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import gymnasium
import mujoco
import numpy as np
import torch
from mujoco import rollout

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import metarl.envs  # noqa: E402,F401  (registers the metarl/ envs)
from metarl.config import load_config  # noqa: E402
from metarl.policy import GaussianMLPPolicy  # noqa: E402
from metarl.reporting import machine_description  # noqa: E402
from metarl.sampler import Sampler  # noqa: E402

SYNC = "(a) gymnasium SyncVectorEnv"
CEILING = "(c) mujoco.rollout physics-only ceiling"
SAMPLER_SYNC = "(d) metarl Sampler on SyncVectorEnv, policy forward included"
SAMPLER_BATCHED = "(e) metarl Sampler on the batched env, policy forward included"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="metarl/HalfCheetahVel-v0", help="registered env id")
    parser.add_argument(
        "--config", type=Path, default=None,
        help="take the env id and env kwargs from this training config (--env-kwargs items override them)",
    )
    parser.add_argument("--tasks", type=int, default=40, help="tasks of the meta-batch")
    parser.add_argument("--episodes-per-task", type=int, default=20, help="episodes per task")
    parser.add_argument("--steps", type=int, default=200, help="env steps per episode")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of (b) and (c)")
    parser.add_argument("--repeats", type=int, default=1, help="timed repeats of each method (best is reported)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the actions and resets")
    parser.add_argument(
        "--env-kwargs",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="env constructor kwargs for (a) and (b), values as Python literals "
        "(e.g. include_cfrc_ext_in_observation=False contact_cost_weight=0)",
    )
    parser.add_argument("--out", type=Path, default=None, help="output file (default results/physics_<env>.md)")
    args = parser.parse_args(argv)
    try:
        args.env_kwargs = parse_env_kwargs(args.env_kwargs)
        if args.config is not None:
            env = load_config(args.config).env
            args.env, args.env_kwargs = env.id, {**env.kwargs, **args.env_kwargs}
    except ValueError as error:  # ConfigError is a ValueError
        parser.error(str(error))
    for name in ("tasks", "episodes_per_task", "steps", "threads", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    args.num_envs = args.tasks * args.episodes_per_task
    return args


def parse_env_kwargs(items: list[str]) -> dict[str, Any]:
    """``["key=value", ...]`` as a dict, each value a Python literal."""
    kwargs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--env-kwargs items must be KEY=VALUE, got {item!r}")
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError) as error:
            raise ValueError(f"--env-kwargs {key}: {value!r} is not a Python literal") from error
    return kwargs


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
    env = gymnasium.make(env_id, **env_kwargs).unwrapped
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
    env_id: str, tasks: int, episodes_per_task: int, steps: int, seed: int, threads: int,
    env_kwargs: dict[str, Any], vectorization: str,
) -> tuple[float, int]:
    """(d)/(e) Seconds for one :meth:`Sampler.collect` of the meta-batch (policy forward included), live steps."""
    torch.set_num_threads(threads)
    vector_kwargs = {"num_threads": threads} if vectorization == "native" else {}
    sampler = Sampler(env_id, tasks, episodes_per_task, steps, env_kwargs, vector_kwargs, vectorization)
    env = gymnasium.make(env_id, **env_kwargs).unwrapped
    policy = GaussianMLPPolicy(env.observation_space.shape[0], env.action_space.shape[0], (64, 64), "tanh")
    policy.reset_parameters(torch.Generator().manual_seed(seed))
    rng = np.random.default_rng(seed)
    task_list = env.sample_tasks(tasks, rng)
    start = time.perf_counter()
    episodes = sampler.collect(policy, policy.params(), task_list, rng, torch.Generator().manual_seed(seed))
    elapsed = time.perf_counter() - start
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
    """The results as a markdown section with the command and the machine."""
    sync, ceiling = rates[SYNC], rates[CEILING]
    sampler_sync = rates[SAMPLER_SYNC]
    lines = [
        f"# Physics and sampler throughput: {args.env}",
        "",
        f"`{' '.join([Path(sys.executable).name, *sys.argv])}`",
        "",
        f"{args.tasks} tasks x {args.episodes_per_task} episodes x {args.steps} env steps; (a)-(c) random actions, "
        f"(d)-(e) a 64x64 tanh policy; {args.threads} thread(s) for (b)-(e), env kwargs "
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
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    space = gymnasium.make(args.env).action_space
    actions = random_actions(space, args.steps, args.num_envs, args.seed)
    measures = {
        SYNC: lambda: time_sync(args.env, actions, args.seed, args.env_kwargs),
        "(b) metarl batched env": lambda: time_batched(args.env, actions, args.seed, args.threads, args.env_kwargs),
        CEILING: lambda: time_rollout_ceiling(args.env, actions, args.seed, args.threads, args.env_kwargs),
    }
    for label, mode in ((SAMPLER_SYNC, "sync"), (SAMPLER_BATCHED, "native")):
        measures[label] = lambda mode=mode: time_sampler(
            args.env, args.tasks, args.episodes_per_task, args.steps, args.seed, args.threads, args.env_kwargs, mode
        )
    rates = best_rates(measures, args.repeats)
    table = markdown_table(args, rates)
    print(table)
    out = args.out or Path("results") / f"physics_{args.env.split('/')[-1]}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
