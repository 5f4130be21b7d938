"""The continual benchmark's goal check (benchmarks/continual_builtin.py) on hand-made summaries."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from fnapi.recipe import ContinualRecipe

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("continual_builtin", REPO / "benchmarks" / "continual_builtin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def recipe():
    return ContinualRecipe.from_yaml(REPO / "recipes" / "continual" / "builtin.yaml")


def _method(aa: float, bwt: float, runs: int, vs: dict | None = None) -> dict:
    return {"aa": aa, "bwt": bwt, "aa_ci95": [aa, aa], "bwt_ci95": [bwt, bwt], "fwt": 0.0, "fwt_ci95": [0.0, 0.0],
            "probes_retained": 1.0, "probes_retained_ci95": [1.0, 1.0], "vs_reference": vs,
            "runs": [{}] * runs, "seeds": list(range(runs))}


def _summary(n: int, bwt_low: float) -> dict:
    vs = {"method": "sequential_lora", "aa": {"diff": 0.2, "ci95": [0.1, 0.3], "n": n},
          "bwt": {"diff": 0.3, "ci95": [bwt_low, 0.5], "n": n}}
    return {"methods": {"sequential_lora": _method(0.3, -0.7, n), "ewc": _method(0.3, -0.6, n),
                        "lwf": _method(0.4, -0.5, n), "loki": _method(0.5, -0.4, n, vs),
                        "protect": _method(0.4, -0.45, n, vs)}}


def test_the_best_masked_method_beyond_the_interval_meets_the_goal(benchmark, recipe):
    result = benchmark.goal(_summary(3, 0.1), recipe)
    assert result["best_masked"] == "loki"
    assert result["checks"] == {"bwt_beyond_lora": True, "aa_not_below_lora": True, "bwt_at_least_ewc_lwf": True}
    assert result["met"] is True


def test_an_interval_reaching_zero_is_not_beyond(benchmark, recipe):
    result = benchmark.goal(_summary(3, -0.05), recipe)
    assert result["checks"]["bwt_beyond_lora"] is False
    assert result["met"] is False


def test_one_seed_decides_nothing(benchmark, recipe):
    # one run gives a zero-width interval; it must not count as a difference beyond the interval
    result = benchmark.goal(_summary(1, 0.3), recipe)
    assert result["checks"]["bwt_beyond_lora"] is False
    assert result["met"] is False


def test_worse_than_lwf_fails_the_baseline_check(benchmark, recipe):
    summary = _summary(3, 0.1)
    summary["methods"]["lwf"]["bwt"] = -0.2
    assert benchmark.goal(summary, recipe)["checks"]["bwt_at_least_ewc_lwf"] is False
