"""The MAML paper's reference numbers (Finn, Abbeel & Levine 2017), in one place.

Read off the paper's figures (±10%); used by the benchmarks and the benchmark figure.
"""

from __future__ import annotations

RL_RETURNS: dict[tuple[str, int], dict[str, list[float]]] = {
    ("metarl/Navigation2D-v0", 100): {
        "MAML (paper)": [-39, -11, -3.3, -3.1],
        "pretrained (paper)": [-40, -20, -12, -8],
    },
    ("metarl/HalfCheetahVel-v0", 200): {
        "MAML (paper)": [-129, -78, -67, -61],
        "pretrained (paper)": [-158, -136, -128, -134],
    },
    ("metarl/AntVel-v0", 200): {"MAML (paper)": [31, 96, 99, 100], "pretrained (paper)": [-2, 6, 9, 10]},
}
"""Average return after 0..3 inner steps, by (env id, horizon)."""

ONE_STEP_TARGETS: dict[str, float] = {"metarl/Navigation2D-v0": -11.7, "metarl/HalfCheetahVel-v0": -78.0}
"""One-step post-adaptation return the project's issues set as targets (the paper's figure, -11 +- 6%)."""

SINUSOID_MSE: dict[str, dict[int, float]] = {
    "MAML (K=5)": {1: 0.67, 5: 0.38, 10: 0.35},
    "pretrained (K=5)": {1: 2.41, 5: 2.23, 10: 2.19},
}
"""Sinusoid regression, 5-shot: query MSE after 1 / 5 / 10 gradient steps."""

SINUSOID_ITERATIONS: dict[str, str] = {"MAML (K=5)": "70,000", "pretrained (K=5)": "-"}
"""Meta-training iterations behind :data:`SINUSOID_MSE`."""


def rl_reference(env_id: str, horizon: int) -> dict[str, list[float]]:
    """The paper's return curves for an env and horizon (empty if the paper has none)."""
    return RL_RETURNS.get((env_id, horizon), {})
