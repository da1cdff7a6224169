"""Learner benchmark: where a TRPO meta-update's time goes, its FLOPs and how close it runs to the matmul peak.

    python -m benchmarks.bench_learner [--config configs/halfcheetah_vel.yaml] [--set key=value ...]
        [--run-dir RUN_OR_CHECKPOINT] [--seed N] [--threads 1,2] [--repeats 5] [--variants SPEC ...]
        [--against DIR] [--iterations N] [--no-profile] [--results DIR] [--name NAME] [--no-progress]

Samples one meta-batch of the config (tasks and noise of ``train.seed``'s iteration 0) with an
untrained policy seeded by ``train.seed``, or with the policy of ``--run-dir`` (a run directory
or checkpoint file; its config then applies), and caches it, with the policy, to
``runs/bench_learner/learner_batch_<env>_<key>.pt`` (with ``--run-dir``: in ``<run-dir>/results``;
``<key>``: a hash of the config and the policy), never into ``--results``:
every later invocation with the same config and policy times the same batch. Then, for each
torch thread count of ``--threads`` (the meta-update's worker threads follow it, see
:class:`metarl.trpo.TRPOSettings`):

- **Parts.** ``--repeats`` TRPO meta-updates (:func:`metarl.trpo.trpo_step` with a
  :class:`~metarl.trpo.PartTimer`), each part's median time: re-adaptation (the inner loop
  re-run, keeping what the meta-gradient needs), surrogate and meta-gradient, curvature
  set-up, each curvature-vector product (CG), each line-search evaluation, and the whole
  update. Each part's FLOPs are counted from the shapes (:func:`flop_model`), which gives its
  GFLOP/s and the fraction of the machine's matmul peak, measured here at the same dtype and
  thread count (:func:`matmul_peak`), in one table.
- **Side by side.** Whole meta-updates of the current code, of each ``--variants`` setting
  (``key=value[,key=value]`` of :class:`~metarl.trpo.TRPOSettings`, e.g.
  ``derivatives=autograd`` or ``task_chunk=40,workers=1``) and of the code checked out in
  ``--against DIR`` (e.g. ``git worktree add /tmp/learner_base HEAD``), each in its own
  worker process on the same cached batch, interleaved repeat by repeat; medians and
  ratios.
- **Iteration split.** ``--iterations`` samplings of a meta-batch (``sample_meta_batch``,
  as the trainer runs it) give the sampling and the advantages-and-inner-steps times; with
  the meta-update's median they give the learner's share of a meta-iteration.
- **Profile.** torch.profiler's top operators of one call of the slowest part.

Writes ``learner_<env>.{md,json}`` to ``--results`` (default ``runs/bench_learner``; with
``--run-dir``, ``<run-dir>/results``).

FLOPs (:func:`flop_model`) count the matmuls of the mean network, ``2 * in * out`` per layer
and sample for each matrix product, over the padded ``[T, n, B]`` samples; elementwise work is
not counted. With ``S = sum_l in_l out_l`` and ``S1`` the same sum without the first layer:
forward ``2S``, backward ``2S + 2S1`` (weight and input gradients; the observation needs
none), forward tangent ``2S + 2S1``, second-order backward ``2S + 6S1``. Per meta-update:
re-adaptation = ``sum_j n M_j (4S + 2S1)`` (forward and backward on each inner step's
``M_j`` samples per task); meta-gradient = ``n M (4S + 2S1)`` (forward and backward on the
post-adaptation samples) plus, second order, ``sum_j n M_j (4S + 8S1)`` (an inner
Hessian-vector product per step); curvature set-up = ``n M_F 2S`` (forward on the Fisher's
``M_F`` subsampled samples); each curvature-vector product = ``n M_F (4S + 4S1)`` (tangent and
backward) plus, exact curvature, ``2 sum_j n M_j (4S + 8S1)``; each line-search evaluation =
``sum_j n M_j (4S + 2S1) + n M 2S``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    CONFIGS,
    BenchParser,
    add_config,
    add_progress,
    add_results,
    command_line,
    log,
    make_parser,
    run_main,
)
from metarl.algorithms import outer_optimizer
from metarl.build import (
    adaptation_settings,
    build_policy,
    io_dims,
    iteration_rngs,
    make_sampler,
    task_env,
    trpo_settings,
)
from metarl.checkpoint import load_checkpoint
from metarl.cli import non_negative, positive
from metarl.config import Config, apply_overrides, from_dict, load_config, to_dict
from metarl.episodes import Episodes
from metarl.errors import ConfigError, MetarlError
from metarl.maml import AdaptationSettings, MetaBatch, sample_meta_batch
from metarl.policy import GaussianMLPPolicy
from metarl.reporting import env_slug, write_results
from metarl.trpo import (
    PartTimer,
    TRPOSettings,
    evaluate_outer,
    kl_curvature,
    meta_gradient,
    resolve_workers,
    task_major_batch,
    trpo_step,
)

MODULE = "bench_learner"
FIELDS = ("observations", "actions", "rewards", "mask", "returns", "advantages")
PARTS = {
    "adapt": "re-adaptation (inner loop kept for the meta-gradient)",
    "meta_gradient": "surrogate and meta-gradient",
    "curvature": "curvature set-up",
    "fvp": "curvature-vector product (each)",
    "line_search": "line-search evaluation (each)",
}
PER_CALL = {"fvp", "line_search"}

WORKER = r"""
import copy, dataclasses, json, sys, time
import torch
from metarl import build, config as config_module, trpo
from metarl.episodes import Episodes
from metarl.maml import MetaBatch

spec = json.loads(sys.argv[1])
torch.set_num_threads(spec["threads"])
known = config_module.Config()
data, dropped = {}, []
for section, values in spec["config"].items():
    if not hasattr(known, section):
        dropped.append(section)
        continue
    keep = {f.name for f in dataclasses.fields(getattr(known, section))}
    data[section] = {k: v for k, v in values.items() if k in keep}
    dropped += [f"{section}.{k}" for k in values if k not in keep]
config = config_module.from_dict(data)
saved = torch.load(spec["batch"], weights_only=True)
policy = build.build_policy(config, saved["obs_dim"], saved["act_dim"])
policy.load_state_dict(saved["params"])
train = [Episodes(**e) for e in saved["train"]]
batch = MetaBatch([{}] * saved["num_tasks"], train, Episodes(**saved["valid"]))
adaptation, settings = build.adaptation_settings(config.maml), build.trpo_settings(config.outer)
settings = dataclasses.replace(settings, **spec["settings"])
print(json.dumps({"ready": True, "dropped": dropped, "file": trpo.__file__}), flush=True)
for line in sys.stdin:
    if line.strip() != "step":
        break
    candidate = copy.deepcopy(policy)
    start, cpu = time.perf_counter(), time.process_time()
    stats = trpo.trpo_step(candidate, batch, adaptation, settings)
    out = {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu, "stats": stats}
    print(json.dumps(out), flush=True)
"""
"""The side-by-side worker: one meta-update per ``step`` line on the cached batch, in a code tree of its own.

It uses only what every version of metarl has (``trpo_step``, ``Episodes``, ``MetaBatch``,
``build``); config keys that tree does not know are dropped (and named)."""


# --------------------------------------------------------------------------- the cached meta-batch


@dataclasses.dataclass
class Saved:
    """A cached meta-batch and the policy it was sampled with."""

    path: Path
    config: Config
    policy: GaussianMLPPolicy
    batch: MetaBatch
    sampled_seconds: float | None


def batch_key(config: Config, policy: GaussianMLPPolicy) -> str:
    """A short hash of the config and the policy's parameters: the cache file's identity."""
    digest = hashlib.sha256(json.dumps(to_dict(config), sort_keys=True, default=str).encode())
    for name, value in policy.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:12]


def sample_batch(config: Config, policy: GaussianMLPPolicy) -> tuple[MetaBatch, float]:
    """One meta-batch of the config at iteration 0 of ``train.seed``, as the trainer samples it; and its seconds."""
    env = task_env(config)
    m = config.maml
    sampler = make_sampler(config, m.meta_batch_size, m.episodes_per_task)
    try:
        rng, generator = iteration_rngs(config.train.seed, 0)
        tasks = env.unwrapped.sample_tasks(m.meta_batch_size, rng)  # type: ignore[attr-defined]
        start = time.perf_counter()
        batch, _ = sample_meta_batch(sampler, policy, policy.params(), tasks, adaptation_settings(m), rng, generator)
        return batch, time.perf_counter() - start
    finally:
        sampler.close()
        env.close()


def load_or_sample(config: Config, policy: GaussianMLPPolicy, folder: Path, explicit: Path | None) -> Saved:
    """The cached batch for this config and policy (sampled and saved first if there is none)."""
    path = explicit or folder / f"learner_batch_{env_slug(config.env.id)}_{batch_key(config, policy)}.pt"
    if path.exists():
        saved = torch.load(path, weights_only=True)
        policy.load_state_dict(saved["params"])
        train = [Episodes(**e) for e in saved["train"]]
        batch = MetaBatch([{}] * saved["num_tasks"], train, Episodes(**saved["valid"]))
        log(f"cached meta-batch: {path}")
        return Saved(path, config, policy, batch, None)
    batch, seconds = sample_batch(config, policy)
    obs_dim, act_dim = policy.obs_dim, policy.act_dim
    payload = {
        "train": [{f: getattr(ep, f) for f in FIELDS} for ep in batch.train],
        "valid": {f: getattr(batch.valid, f) for f in FIELDS},
        "params": {k: v.detach().clone() for k, v in policy.state_dict().items()},
        "num_tasks": len(batch.tasks),
        "obs_dim": obs_dim,
        "act_dim": act_dim,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    log(f"sampled the meta-batch in {seconds:.2f} s; cached to {path}")
    return Saved(path, config, policy, batch, seconds)


# --------------------------------------------------------------------------- FLOPs and peak


def flop_model(
    policy: GaussianMLPPolicy, batch: MetaBatch, adaptation: AdaptationSettings, settings: TRPOSettings
) -> dict[str, float]:
    """GFLOP of one call of each part of the meta-update, counted from the shapes (see the module docstring)."""
    layers = [p.shape for name, p in policy.named_parameters() if name.endswith("weight")]
    s = sum(out * inp for out, inp in layers)
    s1 = s - layers[0][0] * layers[0][1]
    n = len(batch.tasks)
    valid = batch.valid.horizon * batch.valid.episodes_per_task
    train = [ep.horizon * ep.episodes_per_task for ep in batch.train]
    fisher_episodes = batch.valid.episodes_per_task
    if settings.hvp_subsample < 1.0:
        fisher_episodes = max(1, math.ceil(settings.hvp_subsample * fisher_episodes))
    fisher = batch.valid.horizon * fisher_episodes
    second_order = not adaptation.first_order
    exact = settings.curvature == "exact" and second_order
    step = 4 * s + 2 * s1
    inner_hvp = 4 * s + 8 * s1
    flops = {
        "adapt": sum(n * m * step for m in train),
        "meta_gradient": n * valid * step + (sum(n * m * inner_hvp for m in train) if second_order else 0),
        "curvature": n * fisher * 2 * s,
        "fvp": n * fisher * (4 * s + 4 * s1) + (2 * sum(n * m * inner_hvp for m in train) if exact else 0),
        "line_search": sum(n * m * step for m in train) + n * valid * 2 * s,
    }
    return {k: v / 1e9 for k, v in flops.items()}


def matmul_peak(dtype: torch.dtype, threads: int, sizes: Sequence[int] = (256, 512, 1024, 2048)) -> float:
    """The best GFLOP/s of square matrix products (``torch.mm``) at this dtype and thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    best = 0.0
    try:
        for size in sizes:
            a = torch.randn(size, size, dtype=dtype)
            b = torch.randn(size, size, dtype=dtype)
            repeats = max(3, int(2e9 / (2 * size**3)))
            torch.mm(a, b)
            for _ in range(3):
                start = time.perf_counter()
                for _ in range(repeats):
                    torch.mm(a, b)
                seconds = (time.perf_counter() - start) / repeats
                best = max(best, 2 * size**3 / seconds / 1e9)
    finally:
        torch.set_num_threads(before)
    return best


# --------------------------------------------------------------------------- parts


def time_parts(saved: Saved, threads: int, repeats: int) -> dict[str, Any]:
    """``repeats`` meta-updates at ``threads`` torch threads (one warm-up first): each part's median seconds."""
    torch.set_num_threads(threads)
    config = saved.config
    adaptation, settings = adaptation_settings(config.maml), trpo_settings(config.outer)
    runs = []
    for j in range(repeats + 1):
        timer = PartTimer()
        candidate = copy.deepcopy(saved.policy)
        start, cpu = time.perf_counter(), time.process_time()
        stats = trpo_step(candidate, saved.batch, adaptation, settings, timer)
        total = time.perf_counter() - start
        if j > 0:
            runs.append((total, timer.totals(), stats, time.process_time() - cpu))
    parts: dict[str, dict[str, float]] = {}
    for name in ("layout", *PARTS):
        seconds = [r[1].get(name, (0.0, 0))[0] for r in runs]
        calls = [r[1].get(name, (0.0, 0))[1] for r in runs]
        parts[name] = {"seconds": statistics.median(seconds), "calls": statistics.median(calls)}
    return {
        "threads": threads,
        "workers": resolve_workers(settings.workers),
        "update_seconds": statistics.median(r[0] for r in runs),
        "update_seconds_all": [r[0] for r in runs],
        "update_cpu_seconds": statistics.median(r[3] for r in runs),
        "parts": parts,
        "stats": runs[-1][2],
    }


def parts_table(result: dict[str, Any], flops: dict[str, float], peak: float) -> tuple[str, float]:
    """The markdown table of one thread count; and the whole update's GFLOP."""
    rows = [
        "| part | calls | s per call | s per update | GFLOP per call | GFLOP/s | % of peak |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    total_flops = 0.0
    for name, label in PARTS.items():
        part = result["parts"][name]
        calls = max(part["calls"], 1)
        per_call = part["seconds"] / calls
        gflop = flops[name]
        total_flops += gflop * part["calls"]
        rate = gflop / per_call if per_call > 0 else float("nan")
        rows.append(
            f"| {label} | {part['calls']:g} | {per_call:.4f} | {part['seconds']:.4f} | {gflop:.3f} | "
            f"{rate:.1f} | {100 * rate / peak:.0f}% |"
        )
    update = result["update_seconds"]
    other = update - sum(p["seconds"] for p in result["parts"].values())
    rate = total_flops / update
    rows.append(
        f"| layout copy, CG vectors, bookkeeping | | | {other + result['parts']['layout']['seconds']:.4f} | | | |"
    )
    rows.append(
        f"| **whole meta-update** | 1 | {update:.4f} | **{update:.4f}** | {total_flops:.2f} | "
        f"**{rate:.1f}** | **{100 * rate / peak:.0f}%** |"
    )
    rows.append(f"| matmul peak (square `torch.mm`, this dtype and thread count) | | | | | {peak:.1f} | 100% |")
    return "\n".join(rows), total_flops


# --------------------------------------------------------------------------- side by side


def parse_variant(text: str) -> dict[str, Any]:
    """``key=value[,key=value]`` of :class:`TRPOSettings` (integers, floats or words) -> a dict."""
    fields = {f.name for f in dataclasses.fields(TRPOSettings)}
    out: dict[str, Any] = {}
    for pair in text.split(","):
        key, sep, value = pair.partition("=")
        if not sep or key.strip() not in fields:
            raise MetarlError(f"--variants: bad setting {pair!r}; keys: {', '.join(sorted(fields))}")
        raw = value.strip()
        try:
            out[key.strip()] = int(raw)
        except ValueError:
            try:
                out[key.strip()] = float(raw)
            except ValueError:
                out[key.strip()] = raw
    return out


class Worker:
    """A worker process timing whole meta-updates on the cached batch with one code tree and settings."""

    def __init__(self, label: str, tree: Path | None, saved: Saved, threads: int, settings: dict[str, Any]) -> None:
        self.label = label
        env = dict(os.environ)
        if tree is not None:
            env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [env.get("PYTHONPATH")])])
        spec = {
            "threads": threads,
            "config": to_dict(saved.config),
            "batch": str(saved.path.resolve()),
            "settings": settings,
        }
        self.cwd = tempfile.TemporaryDirectory()
        self.process = subprocess.Popen(
            [sys.executable, "-c", WORKER, json.dumps(spec, default=str)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=self.cwd.name,
        )
        hello = self._read()
        self.file, self.dropped = hello["file"], hello["dropped"]

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise MetarlError(f"the {self.label} worker stopped (exit status {self.process.wait()})")
        return json.loads(line)

    def step(self) -> dict[str, Any]:
        """One meta-update: its seconds and statistics."""
        assert self.process.stdin is not None
        self.process.stdin.write("step\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        """Stop the process."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=60)
        self.cwd.cleanup()


def side_by_side(
    saved: Saved, threads: int, repeats: int, variants: list[str], against: Path | None
) -> dict[str, dict[str, Any]]:
    """Whole meta-updates of each candidate in its own process, interleaved repeat by repeat (one warm-up)."""
    candidates: list[tuple[str, Path | None, dict[str, Any]]] = [("current", None, {})]
    candidates += [(f"current, {v}", None, parse_variant(v)) for v in variants]
    if against is not None:
        candidates.append((f"against {against}", against, {}))
    workers = []
    try:
        for label, tree, settings in candidates:
            workers.append(Worker(label, tree, saved, threads, settings))
            if workers[-1].dropped:
                log(f"note: {label}: config keys that code does not know were dropped: {workers[-1].dropped}")
        times: dict[str, list[float]] = {w.label: [] for w in workers}
        cpu: dict[str, list[float]] = {w.label: [] for w in workers}
        stats: dict[str, dict[str, float]] = {}
        for j in range(repeats + 1):
            for w in workers:
                out = w.step()
                if j > 0:
                    times[w.label].append(out["seconds"])
                    cpu[w.label].append(out["cpu"])
                stats[w.label] = out["stats"]
    finally:
        for w in workers:
            w.close()
    return {
        w.label: {
            "median": statistics.median(times[w.label]),
            "seconds": times[w.label],
            "cpu_median": statistics.median(cpu[w.label]),
            "stats": stats[w.label],
        }
        for w in workers
    }


def side_by_side_table(results: dict[str, dict[str, Any]]) -> str:
    """Medians, and each candidate's ratio to the ``against`` tree (if any) and to the current code."""
    against = next((k for k in results if k.startswith("against")), None)
    head = "| code | median s per meta-update | repeats (s) | median CPU s | speed vs current (wall, CPU) |"
    head += " speed vs against (wall, CPU) |" if against else ""
    rows = [head, "|---|---:|---|---:|---:|" + ("---:|" if against else "")]
    current = results["current"]
    for label, r in results.items():
        row = (
            f"| {label} | {r['median']:.3f} | {' '.join(f'{s:.2f}' for s in r['seconds'])} | {r['cpu_median']:.3f} | "
            f"{current['median'] / r['median']:.2f}x, {current['cpu_median'] / r['cpu_median']:.2f}x |"
        )
        if against:
            a = results[against]
            row += f" {a['median'] / r['median']:.2f}x, {a['cpu_median'] / r['cpu_median']:.2f}x |"
        rows.append(row)
    return "\n".join(rows)


# --------------------------------------------------------------------------- iteration split and profile


def iteration_split(saved: Saved, threads: int, iterations: int) -> dict[str, float]:
    """Median sampling and advantages-and-inner-steps seconds of ``iterations`` meta-batch samplings."""
    torch.set_num_threads(threads)
    config, m = saved.config, saved.config.maml
    env = task_env(config)
    sampler = make_sampler(config, m.meta_batch_size, m.episodes_per_task)
    sampling, adapting = [], []
    try:
        for it in range(iterations + 1):
            rng, generator = iteration_rngs(config.train.seed, it)
            tasks = env.unwrapped.sample_tasks(m.meta_batch_size, rng)  # type: ignore[attr-defined]
            before, start = sampler.collect_seconds, time.perf_counter()
            sample_meta_batch(
                sampler, saved.policy, saved.policy.params(), tasks, adaptation_settings(m), rng, generator
            )
            collect = sampler.collect_seconds - before
            if it > 0:
                sampling.append(collect)
                adapting.append(time.perf_counter() - start - collect)
    finally:
        sampler.close()
        env.close()
    return {"sampling": statistics.median(sampling), "adapt": statistics.median(adapting)}


def profile_part(saved: Saved, part: str, threads: int, rows: int = 15) -> str:
    """torch.profiler's top operators (self CPU time) of one call of ``part``."""
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(threads)
    config, policy = saved.config, saved.policy
    adaptation, settings = adaptation_settings(config.maml), trpo_settings(config.outer)
    batch = task_major_batch(saved.batch)
    exact = settings.curvature == "exact"
    meta = meta_gradient(policy, batch, adaptation, settings.task_chunk, None, settings.derivatives, exact)

    def curvature() -> Any:
        return kl_curvature(
            policy,
            policy.params(),
            batch,
            adaptation,
            settings.hvp_subsample,
            exact,
            meta,
            settings.task_chunk,
            settings.derivatives,
        )

    hvp = curvature()
    calls = {
        "adapt": lambda: meta_gradient(policy, batch, adaptation, settings.task_chunk, None, settings.derivatives),
        "meta_gradient": lambda: meta_gradient(
            policy, batch, adaptation, settings.task_chunk, None, settings.derivatives
        ),
        "curvature": curvature,
        "fvp": lambda: hvp(meta.grad),
        "line_search": lambda: evaluate_outer(
            policy, batch, adaptation, meta.old, settings.task_chunk, settings.derivatives
        ),
    }
    call = calls[part]
    call()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call()
    return str(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


# --------------------------------------------------------------------------- command


def build_parser() -> BenchParser:
    """The command-line flags."""
    parser = make_parser(MODULE, __doc__)
    add_config(parser, CONFIGS / "halfcheetah_vel.yaml")
    parser.add_argument("--run-dir", type=Path, help="take the policy and config of this run or checkpoint")
    parser.add_argument("--seed", type=non_negative, help="train.seed: the tasks, noise and untrained policy")
    parser.add_argument("--threads", default="1,2", help="torch thread counts to measure, comma-separated")
    parser.add_argument("--repeats", type=positive, default=5, help="timed meta-updates per measurement")
    parser.add_argument(
        "--variants",
        nargs="*",
        default=[],
        metavar="SPEC",
        help="TRPOSettings overrides timed side by side with the current settings, e.g. derivatives=autograd",
    )
    parser.add_argument("--against", type=Path, help="a checkout of another version, timed side by side")
    parser.add_argument(
        "--iterations", type=non_negative, default=3, help="meta-batch samplings for the iteration split (0: skip)"
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the profile of the slowest part")
    parser.add_argument("--batch", type=Path, help="the cached meta-batch file (default: in runs/bench_learner)")
    parser.add_argument("--name", help="results file stem (default: learner_<env>)")
    add_results(parser, "runs/bench_learner, or <run-dir>/results")
    add_progress(parser)
    return parser


def parse_threads(text: str) -> list[int]:
    """``"1,2"`` -> ``[1, 2]``."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise MetarlError(f"--threads must be comma-separated positive integers, got {text!r}")
    return values


def run(args: argparse.Namespace) -> int:
    """Sample or load the batch, time the parts and the candidates, write the table."""
    thread_counts = parse_threads(args.threads)
    if args.against is not None and not (args.against / "metarl" / "trpo.py").is_file():
        raise MetarlError(f"--against {args.against}: no metarl/trpo.py there (a checkout of metarl is needed)")
    overrides = [*args.set, *([f"train.seed={args.seed}"] if args.seed is not None else [])]
    if args.run_dir is not None:
        checkpoint = load_checkpoint(args.run_dir)
        config = from_dict(apply_overrides(to_dict(checkpoint.config), overrides))
        if not isinstance(checkpoint.policy, GaussianMLPPolicy):
            raise ConfigError(f"{checkpoint.path}: the learner benchmark needs a policy-gradient run's checkpoint")
        policy = checkpoint.policy
        home = checkpoint.path.parent.parent / "results"
    else:
        config = load_config(args.config, overrides)
        policy = build_policy(config, *io_dims(task_env(config)))
        home = Path("runs") / MODULE
    folder = args.results or home
    if config.maml.loss != "pg" or outer_optimizer(config) != "trpo":
        raise ConfigError(
            f"the learner benchmark needs maml.loss=pg and outer.optimizer=trpo, "
            f"not {config.maml.loss} and {outer_optimizer(config)}"
        )
    saved = load_or_sample(config, policy, home, args.batch)  # the cache stays out of --results
    adaptation, settings = adaptation_settings(config.maml), trpo_settings(config.outer)
    flops = flop_model(saved.policy, saved.batch, adaptation, settings)
    dtype = saved.batch.valid.observations.dtype
    m = config.maml
    n, b, t = len(saved.batch.tasks), saved.batch.valid.episodes_per_task, saved.batch.valid.horizon
    sizes = [p.shape[0] for name, p in saved.policy.named_parameters() if name.endswith("bias")]
    sections = [
        f"# Learner: one TRPO meta-update on {config.env.id}\n\n"
        f"A cached meta-batch (`{saved.path.name}`): {n} tasks x {b} episodes x {t} steps, "
        f"{m.num_inner_steps} inner step(s), {'first' if m.first_order else 'second'}-order, inner estimator "
        f"{m.inner_estimator}; policy {saved.policy.obs_dim}-{'-'.join(map(str, sizes))} {config.policy.activation}, "
        f"{dtype}; TRPO curvature {settings.curvature}, hvp_subsample {settings.hvp_subsample}, "
        f"{settings.cg_iters} CG iterations, derivatives {settings.derivatives}. Medians of {args.repeats} "
        "meta-updates after one warm-up."
    ]
    data: dict[str, Any] = {
        "batch": str(saved.path),
        "config": to_dict(config),
        "flops_per_call_gflop": flops,
        "by_threads": {},
    }
    for threads in thread_counts:
        load = os.getloadavg()[0]
        log(f"{threads} thread(s): matmul peak ...")
        peak = matmul_peak(dtype, threads)
        log(f"{threads} thread(s): {args.repeats} meta-updates with the part timer ...")
        result = time_parts(saved, threads, args.repeats)
        table, total = parts_table(result, flops, peak)
        result.update(peak_gflops=peak, total_gflop=total)
        result["load_average"] = [load, os.getloadavg()[0]]
        section = (
            f"## {threads} torch thread(s), {result['workers']} worker thread(s) over task chunks\n\n"
            f"Machine load average (1 min) {load:.1f} at the start of this section.\n\n{table}\n\n"
            f"Meta-update repeats (s): {' '.join(f'{s:.3f}' for s in result['update_seconds_all'])} "
            f"(median CPU time of the process {result['update_cpu_seconds']:.3f} s); "
            f"line-search steps {result['stats']['ls_steps']:g}, accepted {result['stats']['accepted']:g}."
        )
        if args.variants or args.against is not None:
            log(f"{threads} thread(s): side by side ...")
            compared = side_by_side(saved, threads, args.repeats, args.variants, args.against)
            result["side_by_side"] = compared
            section += "\n\nSide by side (each in its own process, interleaved, same batch):\n\n" + side_by_side_table(
                compared
            )
        if args.iterations:
            log(f"{threads} thread(s): {args.iterations} meta-batch samplings ...")
            split = iteration_split(saved, threads, args.iterations)
            learner = split["adapt"] + result["update_seconds"]
            share = learner / (split["sampling"] + learner)
            result["iteration"] = {**split, "meta_update": result["update_seconds"], "learner_share": share}
            section += (
                f"\n\nOne meta-iteration (medians of {args.iterations} samplings): sampling {split['sampling']:.3f} s, "
                f"advantages and inner steps {split['adapt']:.3f} s, meta-update {result['update_seconds']:.3f} s: "
                f"learner share **{100 * share:.0f}%**."
            )
        data["by_threads"][str(threads)] = result
        sections.append(section)
    if not args.no_profile:
        threads = thread_counts[0]
        parts = data["by_threads"][str(threads)]["parts"]
        slowest = max(PARTS, key=lambda name: parts[name]["seconds"])
        log(f"profiling {slowest} ({threads} thread(s)) ...")
        table = profile_part(saved, slowest, threads)
        data["profile"] = {"part": slowest, "threads": threads, "table": table}
        sections.append(
            f"## Profile of the slowest part: {PARTS[slowest]} ({threads} thread(s), one call)\n\n```text\n{table}\n```"
        )
    sections.append(f"Machine load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}.")
    md = "\n\n".join(sections)
    print(md)
    name = args.name or f"learner_{env_slug(config.env.id)}"
    md_path, js_path = write_results(Path(folder), name, md, data, command=command_line(MODULE, args.argv))
    log(f"wrote {md_path}, {js_path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit status (2 and one ``error:`` line for bad input)."""
    return run_main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
