"""metarl's task-batched inner loop against learn2learn's per-task one: MAML and Meta-SGD on sinusoid (issue 16).

    python -m benchmarks.bench_learn2learn [--iterations 2000] [--chunk 250] [--shots 5] [--num-tasks 1000]
        [--seed 0] [--methods metarl-maml,l2l-maml,loop-maml,metarl-metasgd,l2l-metasgd,loop-metasgd]
        [--results DIR] [--config configs/sinusoid_supervised.yaml] [--set key=value ...]

The same network (the config's 40-40 ReLU MLP, one initialisation copied into every method), the
same meta-batches (25 tasks, K-shot support and query sets drawn once from ``(seed, iteration)``
and fed to every method), one inner step of 0.01 (Meta-SGD: α initialised to 0.01),
second-order meta-gradients and Adam(1e-3) on the query MSE, 1 torch thread. Methods:

- ``metarl-*``: :class:`metarl.algorithms.MetaLearner`, all tasks in one batched inner loop;
- ``l2l-*``: learn2learn 0.2.0's ``MAML`` / ``MetaSGD`` with the loop of its examples (per task:
  ``clone()``, ``adapt()``, query loss, ``backward()``), when learn2learn is installed
  (``benchmarks/install_learn2learn.sh``; it is not a dependency of metarl);
- ``loop-*``: the same per-task loop written plainly on a parameter dict (what learn2learn's
  examples do, without its module cloning): the cost of the Python loop over tasks alone.

Timing: the methods train in turns of ``--chunk`` iterations (interleaved, so load on a shared
machine hits them alike); seconds per meta-iteration is the median over a method's chunks.
Every trained model is then evaluated by metarl's evaluation on the same ``--num-tasks`` fresh
tasks with its own learned step sizes (MSE after 1 and 10 steps), and the MSE of metarl and of
learn2learn (or the loop) is compared task by task. Writes ``learn2learn_sinusoid.{md,json}``
to ``--results`` (default ``runs/bench_learn2learn``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import statistics
import sys
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.common import CONFIGS, BenchParser, add_config, add_results, command_line, log, make_parser, run_main
from metarl.algorithms import InnerRule, MetaLearner
from metarl.build import build_policy, io_dims, iteration_rngs, task_env
from metarl.cli import non_negative, positive
from metarl.config import Config, load_config
from metarl.errors import BenchmarkError
from metarl.evaluation import mean_ci95
from metarl.policy import GaussianMLPPolicy
from metarl.reporting import write_results
from metarl.sampler import torch_threads
from metarl.supervised import RegressionBatch, evaluate_regression, meta_step, regression_env, sample_regression_batch

MODULE = "bench_learn2learn"
METHODS = ("metarl-maml", "l2l-maml", "loop-maml", "metarl-metasgd", "l2l-metasgd", "loop-metasgd")


def import_learn2learn() -> tuple[Any, Any] | None:
    """learn2learn's ``MAML`` and ``MetaSGD`` classes, or ``None`` if learn2learn is not installed.

    Its package ``__init__`` imports ``learn2learn.vision``, hence torchvision, which has no build
    for the CPU torch here; the two algorithm modules need neither, so they are loaded without
    running that ``__init__`` (learn2learn's own, unmodified code).
    """
    spec = importlib.util.find_spec("learn2learn")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = list(spec.submodule_search_locations)[0]
    saved = {name: sys.modules.get(name) for name in ("learn2learn", "learn2learn.algorithms")}
    for name, path in (("learn2learn", root), ("learn2learn.algorithms", f"{root}/algorithms")):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [path]
            sys.modules[name] = package
    try:
        maml = importlib.import_module("learn2learn.algorithms.maml").MAML
        meta_sgd = importlib.import_module("learn2learn.algorithms.meta_sgd").MetaSGD
    except ImportError:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
        return None
    return maml, meta_sgd


def sequential_copy(policy: GaussianMLPPolicy) -> nn.Sequential:
    """The policy's mean network as an ``nn.Sequential`` of Linear/ReLU with the same weights (for learn2learn)."""
    layers: list[nn.Module] = []
    for i, layer in enumerate(policy.layers):
        assert isinstance(layer, nn.Linear)
        copy = nn.Linear(layer.in_features, layer.out_features).to(layer.weight.dtype)
        copy.load_state_dict(layer.state_dict())
        layers.append(copy)
        if i < len(policy.layers) - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def into_policy(model: nn.Sequential, like: GaussianMLPPolicy) -> GaussianMLPPolicy:
    """A metarl policy holding a trained ``nn.Sequential``'s weights (for metarl's evaluation)."""
    linears = [m for m in model if isinstance(m, nn.Linear)]
    policy = GaussianMLPPolicy(like.obs_dim, like.act_dim, [m.out_features for m in linears[:-1]], "relu")
    policy = policy.to(linears[0].weight.dtype)
    with torch.no_grad():
        for name, value in policy.params().items():
            if name != "log_std":
                _, index, kind = name.split(".")
                value.copy_(getattr(linears[int(index)], kind))
    return policy


def layer_names(policy: GaussianMLPPolicy) -> list[str]:
    """The policy's layer parameter names in ``nn.Sequential.parameters()`` order (weight, bias per layer)."""
    return [f"layers.{i}.{kind}" for i in range(len(policy.layers)) for kind in ("weight", "bias")]


def mlp(x: Tensor, params: Sequence[Tensor]) -> Tensor:
    """The ReLU MLP on a flat list (weight, bias, weight, bias, ...) of one task's parameters."""
    pairs = list(zip(params[::2], params[1::2]))
    for i, (w, b) in enumerate(pairs):
        x = F.linear(x, w, b)
        if i < len(pairs) - 1:
            x = torch.relu(x)
    return x


@dataclass
class Method:
    """One contender: its one-iteration update, its timing and, after training, its inner rule for evaluation."""

    name: str
    step: Callable[[int, RegressionBatch], float]
    policy: Callable[[], GaussianMLPPolicy]
    rule: Callable[[], InnerRule]
    chunk_seconds: list[float] = field(default_factory=list)
    chunk_iterations: list[int] = field(default_factory=list)
    last_loss: float = float("nan")


def metarl_method(name: str, config: Config, start: GaussianMLPPolicy) -> Method:
    """metarl: the batched inner loop of :class:`MetaLearner` on every task at once (``config``: its algorithm's)."""
    policy = GaussianMLPPolicy(start.obs_dim, start.act_dim, config.policy.hidden_sizes, "relu").to(torch.float32)
    policy.load_state_dict(start.state_dict())
    learner = MetaLearner(config, policy, "MSE")
    return Method(
        name,
        lambda it, batch: meta_step(policy, learner, batch, it)["meta/mse_post"],
        lambda: policy,
        lambda: learner.rule().detached(),
    )


def l2l_method(name: str, classes: tuple[Any, Any], start: GaussianMLPPolicy, inner_lr: float, lr: float) -> Method:
    """learn2learn: ``MAML`` or ``MetaSGD`` with the loop of its examples, task by task."""
    maml_class, meta_sgd_class = classes
    model = sequential_copy(start)
    wrapper = (maml_class if name.endswith("maml") else meta_sgd_class)(model, lr=inner_lr, first_order=False)
    optimizer = torch.optim.Adam(wrapper.parameters(), lr=lr)

    def step(it: int, batch: RegressionBatch) -> float:
        optimizer.zero_grad()
        total = 0.0
        n = batch.num_tasks
        for i in range(n):
            learner = wrapper.clone()
            learner.adapt(F.mse_loss(learner(batch.support_x[i]), batch.support_y[i]))
            loss = F.mse_loss(learner(batch.query_x[i]), batch.query_y[i]) / n
            loss.backward()
            total += loss.item()
        optimizer.step()
        return total

    def rule() -> InnerRule:
        names = layer_names(start)
        if name.endswith("maml"):
            return InnerRule((inner_lr,), frozenset(names))
        sizes = {n: a.detach().clone() for n, a in zip(names, wrapper.lrs, strict=True)}
        return InnerRule((sizes,), frozenset(names))

    return Method(name, step, lambda: into_policy(model, start), rule)


def loop_method(name: str, start: GaussianMLPPolicy, inner_lr: float, lr: float) -> Method:
    """A plain per-task loop on a parameter list (the shape of learn2learn's examples, without module cloning)."""
    params = [p.detach().clone().requires_grad_() for p in sequential_copy(start).parameters()]
    alphas = [torch.full_like(p, inner_lr, requires_grad=True) for p in params] if name.endswith("metasgd") else []
    optimizer = torch.optim.Adam(params + alphas, lr=lr)

    def step(it: int, batch: RegressionBatch) -> float:
        optimizer.zero_grad()
        total = 0.0
        n = batch.num_tasks
        for i in range(n):
            inner = F.mse_loss(mlp(batch.support_x[i], params), batch.support_y[i])
            grads = torch.autograd.grad(inner, params, create_graph=True)
            sizes: list[Tensor | float] = list(alphas) if alphas else [inner_lr] * len(params)
            adapted = [p - a * g for p, a, g in zip(params, sizes, grads)]
            loss = F.mse_loss(mlp(batch.query_x[i], adapted), batch.query_y[i]) / n
            loss.backward()
            total += loss.item()
        optimizer.step()
        return total

    def policy() -> GaussianMLPPolicy:
        model = sequential_copy(start)
        with torch.no_grad():
            for mine, trained in zip(model.parameters(), params):
                mine.copy_(trained)
        return into_policy(model, start)

    def rule() -> InnerRule:
        names = layer_names(start)
        if not alphas:
            return InnerRule((inner_lr,), frozenset(names))
        return InnerRule(({n: a.detach().clone() for n, a in zip(names, alphas)},), frozenset(names))

    return Method(name, step, policy, rule)


def build_parser() -> BenchParser:
    """The command-line flags."""
    parser = make_parser(MODULE, __doc__)
    add_config(parser, CONFIGS / "sinusoid_supervised.yaml")
    parser.add_argument("--iterations", type=positive, default=2000, help="meta-iterations of every method")
    parser.add_argument("--chunk", type=positive, default=250, help="iterations per turn (timing is interleaved)")
    parser.add_argument("--shots", type=positive, default=5, help="K (support and query set size)")
    parser.add_argument("--num-tasks", type=positive, default=1000, help="fresh evaluation tasks")
    parser.add_argument("--seed", type=non_negative, default=0, help="seed of the initialisation and the meta-batches")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    add_results(parser, f"runs/{MODULE}")
    return parser


def cell(step: dict[str, float]) -> str:
    """``mean ± ci``, or ``diverged`` when some task's MSE is not finite."""
    if not math.isfinite(step["mse"]):
        return "diverged"
    return f"{step['mse']:.3f} ± {step['ci95']:.3f}"


def run(args: argparse.Namespace) -> int:
    """Train every method on the same meta-batches in interleaved chunks, evaluate, compare, write the table."""
    wanted = [m for m in args.methods.split(",") if m]
    unknown = [m for m in wanted if m not in METHODS]
    if unknown or not wanted:
        raise BenchmarkError(f"--methods: unknown {unknown or 'none given'}; allowed: {', '.join(METHODS)}")
    common = [
        *args.set,
        f"supervised.shots={args.shots}",
        f"supervised.query_size={args.shots}",
        f"train.seed={args.seed}",
        "maml.num_inner_steps=1",
        "train.dtype=float32",
        f"train.iterations={args.iterations}",
    ]
    configs = {a: load_config(args.config, [*common, f"maml.algorithm={a}"]) for a in ("maml", "metasgd")}
    config = configs["maml"]
    if config.policy.activation != "relu":
        raise BenchmarkError("the learn2learn comparison builds a ReLU MLP: set policy.activation=relu")
    classes = import_learn2learn()
    if classes is None:
        log("learn2learn is not installed (benchmarks/install_learn2learn.sh): comparing against the plain loop only")
        wanted = [m for m in wanted if not m.startswith("l2l-")]
    start = build_policy(config, *io_dims(task_env(config)))
    env = regression_env(config)
    m = config.maml
    methods: list[Method] = []
    for name in wanted:
        if name.startswith("metarl-"):
            methods.append(metarl_method(name, configs[name.split("-")[1]], start))
        elif name.startswith("l2l-"):
            assert classes is not None
            methods.append(l2l_method(name, classes, start, m.inner_lr, config.outer.lr))
        else:
            methods.append(loop_method(name, start, m.inner_lr, config.outer.lr))
    with torch_threads(1):
        for first in range(0, args.iterations, args.chunk):
            its = range(first, min(first + args.chunk, args.iterations))
            batches = []
            for it in its:  # the same meta-batches for every method, drawn from (seed, iteration)
                rng, _ = iteration_rngs(config.train.seed, it)
                tasks = env.sample_tasks(m.meta_batch_size, rng)
                batches.append(sample_regression_batch(env, tasks, args.shots, args.shots, rng, torch.float32))
            for method in methods:
                t0 = time.perf_counter()
                for it, batch in zip(its, batches):
                    method.last_loss = method.step(it, batch)
                method.chunk_seconds.append(time.perf_counter() - t0)
                method.chunk_iterations.append(len(its))
            log(
                f"{its[-1] + 1}/{args.iterations}: "
                + ", ".join(f"{x.name} {x.chunk_seconds[-1] / len(its) * 1e3:.1f} ms/it" for x in methods)
            )
        rows: dict[str, dict[str, Any]] = {}
        for method in methods:
            evaluation = evaluate_regression(
                method.policy(), config, num_tasks=args.num_tasks, shots=args.shots, num_steps=10, rule=method.rule()
            )
            per = [s / n for s, n in zip(method.chunk_seconds, method.chunk_iterations)]
            rows[method.name] = {
                "s_per_iteration": statistics.median(per),
                "s_per_iteration_chunks": per,
                "train_wall_s": sum(method.chunk_seconds),
                "last_query_mse": method.last_loss,
                "evaluation": {k: v for k, v in evaluation.items() if k != "per_task"},
                "per_task": evaluation["per_task"],
            }
    table = markdown(rows, args, config)
    print(table)
    out: Path = args.results or Path("runs") / MODULE
    data = {
        "iterations": args.iterations,
        "shots": args.shots,
        "num_tasks": args.num_tasks,
        "learn2learn": classes is not None,
        "methods": {name: {k: v for k, v in row.items() if k != "per_task"} for name, row in rows.items()},
    }
    md, js = write_results(out, "learn2learn_sinusoid", table, data, command=command_line(MODULE, args.argv))
    log(f"wrote {md}, {js}")
    return 0


def markdown(rows: dict[str, dict[str, Any]], args: argparse.Namespace, config: Config) -> str:
    """The table: s/iteration, speed-up of metarl, MSE after 1 and 10 steps, paired MSE difference."""
    lines = [
        "# metarl vs learn2learn: MAML and Meta-SGD on sinusoid",
        "",
        f"Same network ({'-'.join(map(str, config.policy.hidden_sizes))} ReLU), same initialisation, the same "
        f"{args.iterations:,} meta-batches of {config.maml.meta_batch_size} tasks (K = {args.shots} support and "
        f"query points), one inner step of {config.maml.inner_lr:g} (Meta-SGD: α from it), second order, "
        f"Adam({config.outer.lr:g}), float32, 1 torch thread. Time: seconds per meta-iteration over turns of "
        f"{args.chunk} iterations, the methods interleaved (median and fastest turn); 'metarl faster by': the "
        "median over turns of the ratio to metarl's time in the same turn (the load of a shared machine "
        "cancels). MSE: metarl's evaluation of every trained "
        f"model on the same {args.num_tasks} fresh tasks with its own step sizes, mean ± 95% CI over tasks; "
        "Δ: the paired (same task) difference to metarl's, mean ± 95% CI.",
        "",
        "| method | s / meta-iteration (median) | fastest turn | metarl faster by | MSE after 1 step | "
        "Δ vs metarl (1 step) | MSE after 10 steps |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        algorithm = name.split("-")[1]
        ours = rows.get(f"metarl-{algorithm}")
        speed = "-"
        if ours is not None and ours is not row:
            ratios = np.divide(row["s_per_iteration_chunks"], ours["s_per_iteration_chunks"])
            speed = f"{statistics.median(ratios.tolist()):.1f}x"
        delta = "-"
        if ours is not None and ours is not row:
            diff = np.subtract(row["per_task"][1], ours["per_task"][1])
            mean, ci = mean_ci95(diff)
            delta = f"{mean:+.3f} ± {ci:.3f}"
        steps = row["evaluation"]["steps"]
        lines.append(
            f"| {name} | {row['s_per_iteration'] * 1e3:.1f} ms | {min(row['s_per_iteration_chunks']) * 1e3:.1f} ms | "
            f"{speed} | {cell(steps[1])} | {delta} | "
            f"{cell(steps[10])} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; returns the exit status (2 and one ``error:`` line for bad input)."""
    return run_main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
