"""How to run the conv net with per-task stacked parameters on CPU: grouped convolution vs ``torch.func.vmap``.

    python -m benchmarks.bench_conv_forward [--tasks 8,32] [--shots 1,5] [--queries 3] [--filters 64]
        [--repeats 7] [--results DIR]

For a 5-way meta-batch of ``--tasks`` tasks (``--shots`` support and ``--queries`` query images
per class, 28x28), times with one torch thread:

- **forward**: the query logits under stacked per-task parameters (no graph), as evaluation runs it;
- **meta-gradient**: one second-order MAML meta-gradient (one inner step on the support
  cross-entropy with ``create_graph``, the query cross-entropy, backward to θ), as training runs it;

for three ways of writing the stacked forward: **grouped** (metarl's
:class:`metarl.classifier.ConvClassifier`: the tasks side by side along the channels, one
convolution with ``groups = n`` and one ``batch_norm`` over the tasks' channels per layer),
**vmap** (``torch.func.vmap`` over tasks of the plain one-task forward) and, as a reference
only, a Python **loop** over tasks (what metarl does not do). The repeats are interleaved (A, B,
C, A, B, C, ...) and the median is reported, so a busy machine slows all alike. Checks that the
three give the same logits. Writes ``conv_forward.{md,json}`` to ``--results`` (default
``runs/bench_conv_forward``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import BenchParser, add_results, command_line, log, make_parser, run_main
from metarl.classification import task_cross_entropy
from metarl.classifier import ConvClassifier
from metarl.cli import positive
from metarl.maml import adapt
from metarl.policy import Params
from metarl.reporting import write_results

MODULE = "bench_conv_forward"
WAYS = 5

Forward = Callable[[torch.Tensor, Params], torch.Tensor]


def forwards(model: ConvClassifier) -> dict[str, Forward]:
    """The three ways of running ``model`` on ``x [n, M, C, H, W]`` with stacked parameters."""

    def grouped(x: torch.Tensor, params: Params) -> torch.Tensor:
        return model(x, params)

    def vmapped(x: torch.Tensor, params: Params) -> torch.Tensor:
        return torch.func.vmap(lambda p, xi: model(xi.unsqueeze(0), p).squeeze(0))(params, x)

    def loop(x: torch.Tensor, params: Params) -> torch.Tensor:
        return torch.cat([model(x[i : i + 1], {k: v[i] for k, v in params.items()}) for i in range(x.shape[0])])

    return {"grouped": grouped, "vmap": vmapped, "loop (reference)": loop}


def time_once(fn: Callable[[], Any]) -> float:
    """Seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(tasks: int, shots: int, queries: int, filters: int, repeats: int) -> dict[str, Any]:
    """Median seconds of the forward and of the meta-gradient for each way, interleaved; and the max difference."""
    g = torch.Generator().manual_seed(0)
    model = ConvClassifier((1, 28, 28), WAYS, filters=filters)
    model.reset_parameters(g)
    sx = torch.rand(tasks, WAYS * shots, 1, 28, 28, generator=g)
    sy = torch.arange(WAYS).repeat_interleave(shots).expand(tasks, -1).contiguous()
    qx = torch.rand(tasks, WAYS * queries, 1, 28, 28, generator=g)
    qy = torch.arange(WAYS).repeat_interleave(queries).expand(tasks, -1).contiguous()
    stacked = {
        k: v.detach().unsqueeze(0) + 0.01 * torch.randn(tasks, *v.shape, generator=g) for k, v in model.params().items()
    }
    ways = forwards(model)

    def forward_only(fwd: Forward) -> Callable[[], Any]:
        def run() -> None:
            with torch.no_grad():
                fwd(qx, stacked)

        return run

    def meta_gradient(fwd: Forward) -> Callable[[], Any]:
        def run() -> None:
            params = model.params()
            inner = lambda p, step: task_cross_entropy(fwd(sx, p), sy).sum()  # noqa: E731
            adapted = adapt(inner, params, tasks, [0.4], first_order=False, stacked=False)
            model.zero_grad(set_to_none=True)
            F.cross_entropy(fwd(qx, adapted).flatten(0, 1), qy.flatten()).backward()

        return run

    with torch.no_grad():
        reference = ways["loop (reference)"](qx, stacked)
        difference = {name: float((fwd(qx, stacked) - reference).abs().max()) for name, fwd in ways.items()}
    times: dict[str, dict[str, list[float]]] = {name: {"forward": [], "meta_gradient": []} for name in ways}
    for fwd in ways.values():  # warm-up
        forward_only(fwd)()
        meta_gradient(fwd)()
    for _ in range(repeats):
        for name, fwd in ways.items():
            times[name]["forward"].append(time_once(forward_only(fwd)))
            times[name]["meta_gradient"].append(time_once(meta_gradient(fwd)))
    return {
        "tasks": tasks,
        "shots": shots,
        "queries": queries,
        "median_s": {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()},
        "max_abs_difference_to_loop": difference,
    }


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The table: median milliseconds per way, and grouped's speed-up over vmap."""
    lines = [
        "# Conv net with per-task stacked parameters on CPU: grouped convolution vs torch.func.vmap",
        "",
        f"The MAML paper's 4-block conv net ({args.filters} filters, per-task batch norm, stride 2) on 28x28 images, "
        f"5-way tasks, {args.queries} query images per class, one torch thread. Median of {args.repeats} interleaved "
        "repeats, milliseconds. forward: query logits under stacked parameters, no graph (evaluation). "
        "meta-gradient: one second-order MAML meta-gradient (one inner step with create_graph, backward to θ; "
        "training). The loop over tasks is a reference only: metarl never loops over tasks.",
        "",
        "| tasks | K | way | forward (ms) | meta-gradient (ms) | max abs difference to the loop |",
        "|---:|---:|---|---:|---:|---:|",
    ]
    for row in rows:
        for name, t in row["median_s"].items():
            lines.append(
                f"| {row['tasks']} | {row['shots']} | {name} | {1000 * t['forward']:.0f} | "
                f"{1000 * t['meta_gradient']:.0f} | {row['max_abs_difference_to_loop'][name]:.1e} |"
            )
    lines += ["", "vmap time / grouped time (above 1: grouped is faster):", ""]
    for row in rows:
        vmap, grouped = row["median_s"]["vmap"], row["median_s"]["grouped"]
        lines.append(
            f"- {row['tasks']} tasks, K = {row['shots']}: forward {vmap['forward'] / grouped['forward']:.2f}x, "
            f"meta-gradient {vmap['meta_gradient'] / grouped['meta_gradient']:.2f}x"
        )
    return "\n".join(lines)


def build_parser() -> BenchParser:
    """The command-line flags."""
    parser = make_parser(MODULE, __doc__)
    parser.add_argument("--tasks", type=lambda s: [int(v) for v in s.split(",")], default=[8, 32], help="tasks n")
    parser.add_argument("--shots", type=lambda s: [int(v) for v in s.split(",")], default=[1, 5], help="K")
    parser.add_argument("--queries", type=positive, default=3, help="query images per class")
    parser.add_argument("--filters", type=positive, default=64, help="conv filters")
    parser.add_argument("--repeats", type=positive, default=7, help="timed repeats of each way")
    add_results(parser, f"runs/{MODULE}")
    return parser


def run(args: argparse.Namespace) -> int:
    """Measure every (tasks, K); write the table."""
    torch.set_num_threads(1)
    rows = []
    for tasks in args.tasks:
        for shots in args.shots:
            log(f"{tasks} tasks, K = {shots}")
            rows.append(measure(tasks, shots, args.queries, args.filters, args.repeats))
    table = markdown(rows, args)
    print(table)
    out: Path = args.results or Path("runs") / MODULE
    data = {"rows": rows, "filters": args.filters, "queries": args.queries, "repeats": args.repeats}
    md, js = write_results(out, "conv_forward", table, data, command=command_line(MODULE, args.argv))
    log(f"wrote {md}, {js}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit status (2 and one ``error:`` line for bad input)."""
    return run_main(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
