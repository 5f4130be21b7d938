"""Forgetting measures: intervals that are computed (not constant), narrow with n, and pair items."""

from __future__ import annotations

import numpy as np
import pytest

from fnapi.errors import DataError
from fnapi.measures import (
    EvalMeasures,
    ProbeMeasure,
    TaskMeasure,
    TextMeasure,
    bootstrap,
    compare_measures,
    paired_change,
    seed_interval,
)


def _coin(n: int, p: float, seed: int) -> list[float]:
    return [float(v) for v in np.random.default_rng(seed).random(n) < p]


def test_bootstrap_interval_contains_the_mean_and_narrows_as_n_grows():
    widths = []
    for n in (50, 200, 800, 3200):
        values = _coin(n, 0.7, seed=n)
        estimate = bootstrap(values)
        assert estimate.n == n
        assert estimate.ci95[0] < estimate.mean < estimate.ci95[1]
        assert estimate.mean == pytest.approx(sum(values) / n)
        widths.append(estimate.ci95[1] - estimate.ci95[0])
    assert widths == sorted(widths, reverse=True)
    # The width of a proportion's interval is about 2 * 1.96 * sqrt(p (1 - p) / n).
    assert widths[0] == pytest.approx(2 * 1.96 * (0.21 / 50) ** 0.5, rel=0.25)
    assert widths[-1] == pytest.approx(2 * 1.96 * (0.21 / 3200) ** 0.5, rel=0.25)


def test_bootstrap_is_deterministic_and_weights_count():
    values = _coin(100, 0.5, seed=1)
    assert bootstrap(values) == bootstrap(values)
    weighted = bootstrap([1.0, 3.0], weights=[3, 1])
    assert weighted.mean == pytest.approx(1.5)
    with pytest.raises(DataError):
        bootstrap([])


def test_paired_change_is_narrower_than_unpaired_when_items_vary():
    rng = np.random.default_rng(0)
    difficulty = rng.normal(size=400)
    before = difficulty
    after = difficulty - 0.1 + rng.normal(scale=0.05, size=400)
    change = paired_change(before, after)
    assert change.mean == pytest.approx(-0.1, abs=0.01)
    assert change.ci95[1] < 0  # the paired interval sees the small drop
    separate = (bootstrap(before).ci95[1] - bootstrap(before).ci95[0])
    assert change.ci95[1] - change.ci95[0] < separate / 5
    with pytest.raises(ValueError, match="same items"):
        paired_change([1.0, 2.0], [1.0])


def test_seed_interval_is_a_t_interval():
    estimate = seed_interval([0.80, 0.85, 0.90])
    # t(0.975, 2) = 4.303; sd = 0.05; half width = 4.303 * 0.05 / sqrt(3)
    assert estimate.mean == pytest.approx(0.85)
    assert estimate.ci95[1] - estimate.mean == pytest.approx(4.303 * 0.05 / 3 ** 0.5, rel=1e-3)
    single = seed_interval([0.7])
    assert single.ci95 == (0.7, 0.7) and single.n == 1


def test_compare_measures_pairs_every_source_and_round_trips():
    before = EvalMeasures(tasks=(TaskMeasure("skill", (0.0,) * 10),),
                          probes=(ProbeMeasure("p", (1.0, 1.0, 0.0, 1.0), (-1.0, -2.0, -5.0, -1.5)),),
                          texts=(TextMeasure("t", (2.0, 3.0), (10, 30)),))
    after = EvalMeasures(tasks=(TaskMeasure("skill", (1.0,) * 9 + (0.0,)),),
                         probes=(ProbeMeasure("p", (1.0, 0.0, 0.0, 1.0), (-1.1, -4.0, -5.0, -1.5)),),
                         texts=(TextMeasure("t", (2.5, 3.0), (10, 30), kl=(0.2, 0.0)),))
    pairs = compare_measures(before, after)
    assert pairs["task"]["change"] == pytest.approx(0.9)
    assert pairs["probes"]["before"] == 0.75 and pairs["probes"]["after"] == 0.5
    assert pairs["probes"]["change"] == pytest.approx(-0.25)
    low, high = pairs["probes"]["change_ci95"]
    assert low <= -0.25 <= high
    # NLL is weighted by tokens: (2*10 + 3*30) / 40 before, (2.5*10 + 3*30) / 40 after.
    assert pairs["text_nll"]["before"] == pytest.approx(110 / 40)
    assert pairs["text_nll"]["change"] == pytest.approx(5 / 40)
    assert pairs["kl_to_base"]["mean"] == pytest.approx(0.2 * 10 / 40)
    assert EvalMeasures.from_dict(after.to_dict()) == after


def test_evaluation_progress_counts_items_batch_by_batch():
    from fnapi.data.builtin import skill_conversations
    from fnapi.measures import build_plan, evaluate
    from fnapi.models.tiny import tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    plan = build_plan(tokenizer, tasks=[("skill", skill_conversations("test")[:10])], probes=["builtin:probes"],
                      probe_samples=20, texts=["builtin:text"], text_samples=3, max_new_tokens=2)

    class Progress:
        def __init__(self):
            self.steps: list[tuple[float, str]] = []

        def advance(self, amount=1, message=""):
            self.steps.append((amount, message))

    progress = Progress()
    evaluate(tiny_model("llama"), tokenizer, plan, progress=progress)
    texts = len(plan.texts[0][1])
    assert plan.items == 10 + 20 + texts
    assert progress.steps == [(10, "task skill"), (16, "probes builtin:probes"),
                              (4, "probes builtin:probes"), (texts, "text builtin:text")]
    assert sum(amount for amount, _ in progress.steps) == plan.items  # the bar ends full


def test_damaged_baseline_and_measures_files_are_answered_not_half_read(tmp_path):
    import json

    from fnapi.comparison import _read_measures
    from fnapi.runner import BASELINE_FORMAT, MEASURES_FILE, MEASURES_FORMAT, _read_baseline

    good = {"tasks": [{"source": "builtin:skill", "scores": [1.0, 0.0]}],
            "probes": [{"source": "builtin:probes", "correct": [1.0], "logprob": [-0.5]}], "texts": []}
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({"format": BASELINE_FORMAT, **good}))
    assert _read_baseline(baseline)["tasks"] == good["tasks"]
    baseline.write_text(json.dumps({"format": BASELINE_FORMAT, "probes": [{"source": "builtin:probes", "correct": [1]}]}))
    assert _read_baseline(baseline) is None  # measured again rather than read without its log-probs
    (tmp_path / MEASURES_FILE).write_text(json.dumps({"format": MEASURES_FORMAT, "before": good, "after": good}))
    before, after = _read_measures(tmp_path)
    assert before.probes[0].logprob == (-0.5,)
    (tmp_path / MEASURES_FILE).write_text(json.dumps({"format": MEASURES_FORMAT, "before": good,
                                                      "after": {"tasks": [{"source": "x", "scores": "high"}]}}))
    assert _read_measures(tmp_path) is None
