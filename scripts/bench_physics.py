"""Physics throughput of a locomotion task env: gymnasium SyncVectorEnv vs metarl's batched env.

Three ways to advance ``--num-envs`` episodes by ``--steps`` env steps with random actions
(generated beforehand, the same for all three; only the stepping is timed):

(a) ``gymnasium.make_vec(..., vectorization_mode="sync")``: a SyncVectorEnv over the single env;
(b) ``gymnasium.make_vec(..., vectorization_mode="vector_entry_point", num_threads=T)``: the
    natively vectorised env, one ``step`` call per env step (observations, rewards and
    terminations included);
(c) the physics-only ceiling: one ``mujoco.rollout`` call on ``T`` threads stepping the same
    initial states through ``steps * frame_skip`` physics steps with the actions held, with no
    Python per step and no observations or rewards.

Throughput is env steps per second (an env step is ``frame_skip`` physics steps). For envs
that terminate (Ant), (b) counts only the sub-episode steps it simulated, (a) also simulates
the auto-reset episodes and (c) all of them. Prints a markdown table and writes it to
``results/physics_<env>.md``. Timings on a shared machine are noisy: use ``--repeats`` (the
best of the interleaved repeats is reported) and compare the ratios, which are measured side by side.

Example::

    .venv/bin/python scripts/bench_physics.py --env metarl/HalfCheetahVel-v0
"""

from __future__ import annotations

import argparse
import ast
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import gymnasium
import mujoco
import numpy as np
from mujoco import rollout

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import envs  # noqa: E402,F401  (registers the metarl/ envs)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="metarl/HalfCheetahVel-v0", help="registered env id")
    parser.add_argument("--num-envs", type=int, default=800, help="episodes stepped together (40 tasks x 20)")
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
    except ValueError as error:
        parser.error(str(error))
    for name in ("num_envs", "steps", "threads", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
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


def time_rollout_ceiling(env_id: str, actions: np.ndarray, seed: int, threads: int) -> tuple[float, int]:
    """(c) Seconds for one ``mujoco.rollout`` call over the whole horizon, and env steps simulated."""
    steps, num_envs, _ = actions.shape
    env = gymnasium.make(env_id).unwrapped
    model, frame_skip = env.model, env.frame_skip
    spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
    initial = np.empty((num_envs, mujoco.mj_stateSize(model, spec)))
    for i in range(num_envs):
        env.reset(seed=seed + i)
        mujoco.mj_getState(model, env.data, initial[i], spec)
    control = np.repeat(actions.transpose(1, 0, 2).astype(np.float64), frame_skip, axis=1)
    state = np.empty((num_envs, steps * frame_skip, initial.shape[1]))
    sensordata = np.empty((num_envs, steps * frame_skip, model.nsensordata))
    datas = [mujoco.MjData(model) for _ in range(threads)]
    with rollout.Rollout(nthread=threads if threads > 1 else 0) as pool:
        start = time.perf_counter()
        pool.rollout(model, datas, initial, control, state=state, sensordata=sensordata)
        elapsed = time.perf_counter() - start
    env.close()
    return elapsed, steps * num_envs


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


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one, else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def markdown_table(args: argparse.Namespace, rates: dict[str, float]) -> str:
    """The results as a markdown section with the command and the machine."""
    sync, ceiling = rates["(a) gymnasium SyncVectorEnv"], rates["(c) mujoco.rollout physics-only ceiling"]
    lines = [
        f"# Physics throughput: {args.env}",
        "",
        f"`{' '.join([Path(sys.executable).name, *sys.argv])}`",
        "",
        f"{args.num_envs} episodes x {args.steps} env steps, random actions, {args.threads} thread(s) for (b) and (c), "
        f"env kwargs {args.env_kwargs or 'default'}, best of {args.repeats}; {os.cpu_count()} CPU(s) ({cpu_name()}), "
        f"Python {platform.python_version()}, mujoco {mujoco.__version__}, gymnasium {gymnasium.__version__}.",
        "",
        "| method | env steps/s | vs SyncVectorEnv | vs physics ceiling |",
        "|---|---:|---:|---:|",
    ]
    for name, rate in rates.items():
        lines.append(f"| {name} | {rate:,.0f} | {rate / sync:.2f}x | {rate / ceiling:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    space = gymnasium.make(args.env).action_space
    actions = random_actions(space, args.steps, args.num_envs, args.seed)
    measures = {
        "(a) gymnasium SyncVectorEnv": lambda: time_sync(args.env, actions, args.seed, args.env_kwargs),
        "(b) metarl batched env": lambda: time_batched(args.env, actions, args.seed, args.threads, args.env_kwargs),
        "(c) mujoco.rollout physics-only ceiling": lambda: time_rollout_ceiling(
            args.env, actions, args.seed, args.threads
        ),
    }
    rates = best_rates(measures, args.repeats)
    table = markdown_table(args, rates)
    print(table)
    out = args.out or Path("results") / f"physics_{args.env.split('/')[-1]}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
