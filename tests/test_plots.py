"""The benchmark figure: labelled axes and error bars, methods evaluated at step 0 only, the regression metric."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from metarl.plots import is_flat, plot_adaptation_curves
from tests.helpers import step_rows


def test_plot_labels_error_bars_and_draws_step0_methods_flat(tmp_path: Path, saved_figures: list[Figure]) -> None:
    results = {
        "MAML": {"steps": step_rows([-40.0, -20.0, -10.0, -5.0], ci=2.0)},
        "oracle": {"steps": step_rows([-3.0]), "adapted": False},
    }
    path = plot_adaptation_curves(
        results, tmp_path / "f.png", "test", reference={"MAML (paper)": [-39, -11, -3.3, -3.1]}
    )
    assert path.stat().st_size > 0
    (ax,) = saved_figures[0].axes
    assert ax.get_xlabel() == "number of gradient steps"
    assert "95% CI over tasks" in ax.get_ylabel() and ax.get_ylabel().startswith("return")
    legend = ax.get_legend()
    assert "95% CI over tasks" in legend.get_title().get_text()
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == ["MAML", "oracle (no adaptation; band: 95% CI)", "MAML (paper)"]
    flat_line = [line for line in ax.get_lines() if list(line.get_ydata()) == [-3.0, -3.0]]
    assert len(flat_line) == 1  # the oracle: one horizontal line, not a point per step
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2", "3"]


def test_plot_of_mse_names_the_metric(tmp_path: Path, saved_figures: list[Figure]) -> None:
    plot_adaptation_curves({"MAML": {"steps": step_rows([2.0, 0.5], key="mse")}}, tmp_path / "m.png", "mse", key="mse")
    assert saved_figures[0].axes[0].get_ylabel().startswith("MSE")
    assert is_flat({"steps": step_rows([1.0])}) and not is_flat({"steps": step_rows([1.0, 2.0])})
