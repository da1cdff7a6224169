"""benchmarks/bench_learner.py: a tiny run (parts table, side by side, iteration split, profile), its cached
meta-batch, its FLOP formulas and its one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench_learner
from benchmarks.common import ROOT
from metarl.build import adaptation_settings, trpo_settings
from metarl.config import load_config
from metarl.maml import MetaBatch
from metarl.policy import GaussianMLPPolicy
from tests.helpers import random_episodes

TINY = ["maml.meta_batch_size=3", "maml.episodes_per_task=4", "policy.hidden_sizes=[8]", "env.horizon=15"]
NAV = str(ROOT / "configs" / "navigation2d.yaml")


def _args(out: Path, *extra: str) -> list[str]:
    sets = [f"--set={s}" for s in TINY]
    return ["--config", NAV, *sets, "--threads", "1", "--repeats", "1", "--results", str(out), *extra]


def _error(capsys: pytest.CaptureFixture[str], *needles: str) -> None:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_tiny_run_writes_the_table_and_reuses_its_cached_batch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "results"
    code = bench_learner.main(
        _args(out, "--iterations", "1", "--variants", "derivatives=autograd", "--against", str(ROOT))
    )
    assert code == 0, capsys.readouterr().err
    md = (out / "learner_navigation2d.md").read_text()
    for needle in (
        "re-adaptation",
        "surrogate and meta-gradient",
        "curvature set-up",
        "curvature-vector product (each)",
        "line-search evaluation (each)",
        "whole meta-update",
        "matmul peak",
        "Side by side",
        "current, derivatives=autograd",
        "against",
        "learner share",
        "Profile of the slowest part",
        "Command: `python -m benchmarks.bench_learner",
    ):
        assert needle in md, needle
    data = json.loads((out / "learner_navigation2d.json").read_text())
    result = data["by_threads"]["1"]
    assert result["parts"]["fvp"]["calls"] == 10 and result["peak_gflops"] > 0
    assert set(result["side_by_side"]) == {"current", "current, derivatives=autograd", f"against {ROOT}"}
    assert 0 < result["iteration"]["learner_share"] < 1
    assert not list(out.glob("*.pt"))  # the cached batch stays out of the results folder
    batches = list((tmp_path / "runs" / "bench_learner").glob("learner_batch_navigation2d_*.pt"))
    assert len(batches) == 1
    stamp = batches[0].stat().st_mtime_ns
    capsys.readouterr()
    assert bench_learner.main(_args(out, "--iterations", "0", "--no-profile")) == 0
    assert "cached meta-batch" in capsys.readouterr().err
    assert batches[0].stat().st_mtime_ns == stamp  # the same batch, not re-sampled
    assert "learner share" not in (out / "learner_navigation2d.md").read_text()


def test_default_folder_is_the_benchmarks_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = sorted((ROOT / "results").glob("learner_*"))
    monkeypatch.chdir(tmp_path)
    args = ["--config", NAV, *[f"--set={s}" for s in TINY], "--threads", "1", "--repeats", "1", "--iterations", "0"]
    assert bench_learner.main([*args, "--no-profile"]) == 0
    assert (tmp_path / "runs" / "bench_learner" / "learner_navigation2d.md").exists()
    assert sorted((ROOT / "results").glob("learner_*")) == shipped


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--threads", "0"], ["--threads"]),
        (["--against", "/no/such/checkout"], ["--against", "metarl/trpo.py"]),
        (["--variants", "bogus=1"], ["--variants", "bogus"]),
        (["--set", "outer.optimizer=adam"], ["outer.optimizer=trpo"]),
    ],
)
def test_bad_input_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], needles: list[str]
) -> None:
    assert bench_learner.main(_args(tmp_path, "--iterations", "0", "--no-profile", *extra)) == 2
    _error(capsys, *needles)


def test_flop_model_counts_the_matmuls_from_the_shapes() -> None:
    """2 * in * out per layer and sample per product: forward 2S, an inner step 4S + 2S1, an inner HVP 4S + 8S1."""
    policy = GaussianMLPPolicy(2, 2, (3,))
    batch = MetaBatch([{}] * 2, [random_episodes(2, 4, 5, 0)], random_episodes(2, 4, 5, 1))
    config = load_config(None, ["outer.hvp_subsample=0.5", "outer.curvature=exact"])
    flops = bench_learner.flop_model(policy, batch, adaptation_settings(config.maml), trpo_settings(config.outer))
    s, s1 = 2 * 3 + 3 * 2, 3 * 2
    samples, fisher = 2 * 5 * 4, 2 * 5 * 2
    step, hvp = 4 * s + 2 * s1, 4 * s + 8 * s1
    assert flops["adapt"] == pytest.approx(samples * step / 1e9)
    assert flops["meta_gradient"] == pytest.approx(samples * (step + hvp) / 1e9)
    assert flops["curvature"] == pytest.approx(fisher * 2 * s / 1e9)
    assert flops["fvp"] == pytest.approx((fisher * (4 * s + 4 * s1) + 2 * samples * hvp) / 1e9)
    assert flops["line_search"] == pytest.approx(samples * (step + 2 * s) / 1e9)
