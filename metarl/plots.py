"""Figures of evaluation results (not renderings of a policy): the MAML paper's adaptation-curve figure.

:func:`plot_adaptation_curves` draws mean return (or MSE) against the number of inner
gradient steps, one line per method with 95% confidence intervals over tasks, as in
Finn et al. (2017); ``metarl benchmark`` writes it next to its table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metarl.evaluation import metric_name

STEP_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
"""One colour per line (per method, or per inner step in the renders)."""

CI_LABEL = "mean ± 95% CI over tasks"
"""What every error bar and band shows."""


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (figures are only written to files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def is_flat(result: Mapping[str, Any]) -> bool:
    """Whether a method was evaluated without adaptation (``"adapted": false``, or step 0 only)."""
    steps = [s["step"] for s in result["steps"]]
    return result.get("adapted") is False or steps == [0]


def plot_adaptation_curves(
    results: Mapping[str, Mapping[str, Any]],
    path: Path,
    title: str,
    flat: Sequence[str] = (),
    reference: Mapping[str, Sequence[float]] | None = None,
    key: str = "mean_return",
) -> Path:
    """The MAML paper's figure: mean ``key`` vs number of gradient steps, one line per method, 95% CI bars.

    ``results[name]["steps"]`` is :func:`metarl.evaluation.evaluate_adaptation`'s list (or
    :func:`metarl.supervised.evaluate_regression`'s with ``key="mse"``). Methods named in
    ``flat`` or evaluated without adaptation (:func:`is_flat`, e.g. an oracle) are drawn as a
    dashed horizontal line at their step-0 value with a 95% CI band; ``reference`` curves (the
    paper's numbers) are drawn faint and dotted. The y axis and the legend say what the bars
    are (mean ± 95% CI over tasks). Returns ``path``.
    """
    if not results:
        raise ValueError("plot_adaptation_curves needs at least one method")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    try:
        max_step = max(s["step"] for r in results.values() for s in r["steps"])
        for ref in (reference or {}).values():
            max_step = max(max_step, len(ref) - 1)
        colors = {name: STEP_COLORS[i % len(STEP_COLORS)] for i, name in enumerate(results)}
        handles: list[Any] = []  # legend in the order of the methods, then the references
        for name, result in results.items():
            color = colors[name]
            steps = np.array([s["step"] for s in result["steps"]])
            mean = np.array([s[key] for s in result["steps"]], dtype=float)
            ci = np.nan_to_num(np.array([s["ci95"] for s in result["steps"]], dtype=float))
            if name in flat or is_flat(result):
                handles.append(
                    ax.axhline(mean[0], color=color, ls="--", lw=1.5, label=f"{name} (no adaptation; band: 95% CI)")
                )
                ax.axhspan(mean[0] - ci[0], mean[0] + ci[0], color=color, alpha=0.15)
            else:
                handles.append(
                    ax.errorbar(steps, mean, yerr=ci, color=color, marker="o", ms=5, capsize=4, lw=1.8, label=name)
                )
        for j, (name, values) in enumerate((reference or {}).items()):
            # "MAML (paper)" takes the colour of "MAML"
            color = colors.get(name.split(" (")[0], STEP_COLORS[(len(results) + j) % len(STEP_COLORS)])
            handles += ax.plot(range(len(values)), values, ":", marker="x", color=color, alpha=0.6, lw=1, label=name)
        ax.set_xticks(range(max_step + 1))
        ax.set_xlabel("number of gradient steps")
        ax.set_ylabel(f"{metric_name(key)} ({CI_LABEL})")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(
            handles=handles,
            fontsize=8,
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            frameon=False,
            title=f"error bars: {CI_LABEL}",
            title_fontsize=8,
        )
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path
