"""The papers' reference numbers, in one place: the MAML paper (Finn, Abbeel & Levine 2017) and, for the
sinusoid algorithms benchmark, the Meta-SGD paper (Li et al. 2017).

The RL returns are read off the MAML paper's figures (±10%); the sinusoid numbers are the papers' tables.
Used by the benchmarks and their figures.
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

SINUSOID_ONE_STEP_BY_SHOTS: dict[str, dict[int, float]] = {
    "Meta-SGD (Meta-SGD paper)": {5: 0.48, 10: 0.26, 20: 0.13},
    "MAML (Meta-SGD paper)": {5: 0.69, 10: 0.44, 20: 0.23},
}
"""Sinusoid regression, query MSE after one gradient step, by shots K: the Meta-SGD paper's table
(Li, Zhou, Chen & Li 2017, table 1)."""

SINUSOID_MAML_BY_STEPS: dict[int, float] = SINUSOID_MSE["MAML (K=5)"]
"""The MAML paper's 5-shot sinusoid MSE after 1 / 5 / 10 steps (the anchor of the algorithms benchmark)."""

META_SGD_TARGET = (5, 1, 0.48)
"""The issue's target: Meta-SGD's 5-shot MSE after 1 step at most 0.48 (the Meta-SGD paper's number)."""


def rl_reference(env_id: str, horizon: int) -> dict[str, list[float]]:
    """The paper's return curves for an env and horizon (empty if the paper has none)."""
    return RL_RETURNS.get((env_id, horizon), {})


OMNIGLOT_5WAY_ACCURACY: dict[str, dict[int, tuple[float, float]]] = {
    "MAML": {1: (98.7, 0.4), 5: (99.9, 0.1)},
    "first-order MAML": {1: (98.3, 0.5), 5: (99.2, 0.2)},
}
"""Omniglot 5-way few-shot classification, accuracy in % (mean, 95% CI) by shots K: the MAML paper's
table 1 (conv net, 60,000 iterations of 32 tasks, one inner step of 0.4 in training)."""
