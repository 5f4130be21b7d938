"""Continual-learning measures (AA, BWT, FWT, probes retained) on hand-made matrices, and the
summary over methods, orders and seeds."""

from __future__ import annotations

import random

import numpy as np
import pytest

from fnapi.continual_learning.metrics import (
    average_accuracy,
    backward_transfer,
    forward_transfer,
    matrix_tasks,
    mean_by_position,
    probes_retained,
)
from fnapi.continual_learning.results import ContinualRun
from fnapi.continual_learning.summary import summarize
from fnapi.errors import DataError
from fnapi.measures import seed_interval

# T = 3. Row 0: the base model; row i: after training tasks 1..i; column j: task j.
MATRIX = [
    [0.10, 0.20, 0.30],
    [0.90, 0.25, 0.35],
    [0.70, 0.80, 0.40],
    [0.50, 0.60, 0.95],
]
SINGLE = [0.85, 0.70, 0.90]


def test_average_accuracy_is_the_mean_of_the_last_row():
    assert average_accuracy(MATRIX) == pytest.approx((0.50 + 0.60 + 0.95) / 3)


def test_backward_transfer_compares_the_end_with_just_after_learning():
    # task 1: 0.90 after learning it (matrix[1][0]), 0.50 at the end; task 2: 0.80 (matrix[2][1]) -> 0.60
    assert backward_transfer(MATRIX) == pytest.approx(((0.50 - 0.90) + (0.60 - 0.80)) / 2)


def test_backward_transfer_reads_json_row_c_plus_1_for_column_c():
    # Only the entries just after learning (matrix[c + 1][c]) differ from the rest: reading the plain
    # diagonal matrix[c][c] instead would give 0.
    matrix = [[0.0, 0.0, 0.0],
              [1.0, 0.0, 0.0],
              [0.0, 1.0, 0.0],
              [0.0, 0.0, 0.0]]
    assert backward_transfer(matrix) == pytest.approx(-1.0)
    assert forward_transfer(matrix, [0.0, 0.0, 0.0]) == pytest.approx(0.5)  # (1.0 + 0.0) / 2 over tasks 2..3


def test_forward_transfer_against_single_task_training_over_tasks_2_to_T():
    # task 2: 0.80 in the sequence vs 0.70 alone; task 3: 0.95 vs 0.90; task 1 is not counted
    assert forward_transfer(MATRIX, SINGLE) == pytest.approx(((0.80 - 0.70) + (0.95 - 0.90)) / 2)
    assert forward_transfer(MATRIX, None) is None
    with pytest.raises(ValueError, match="2 single-task scores for 3 tasks"):
        forward_transfer(MATRIX, [0.5, 0.5])


def test_perfect_memory_has_zero_backward_transfer():
    learned = [0.8, 0.7, 0.9, 0.6]
    matrix = [[0.1] * 4] + [[learned[j] if j < i else 0.1 for j in range(4)] for i in range(1, 5)]
    assert backward_transfer(matrix) == pytest.approx(0.0)
    assert average_accuracy(matrix) == pytest.approx(sum(learned) / 4)


def test_forgetting_everything_gives_minus_the_mean_just_learned_score():
    learned = [0.8, 0.7, 0.9, 0.6]
    matrix = [[0.0] * 4] + [[learned[j] if j == i - 1 else 0.0 for j in range(4)] for i in range(1, 5)]
    assert backward_transfer(matrix) == pytest.approx(-(0.8 + 0.7 + 0.9) / 3)  # the last task is not forgotten yet
    assert average_accuracy(matrix) == pytest.approx(0.6 / 4)


def test_one_task_has_no_backward_or_forward_transfer():
    matrix = [[0.2], [0.7]]
    assert matrix_tasks(matrix) == 1
    assert average_accuracy(matrix) == pytest.approx(0.7)
    assert backward_transfer(matrix) is None
    assert forward_transfer(matrix, [0.6]) is None


def test_probes_retained_is_the_last_over_the_first():
    assert probes_retained([0.50, 0.45, 0.40]) == pytest.approx(0.8)
    assert probes_retained([]) is None
    assert probes_retained([0.0, 0.3]) is None


@pytest.mark.parametrize("matrix, message", [([[0.1, 0.2]], "at least one row after training"),
                                             ([[0.1, 0.2], [0.5], [0.3, 0.4]], "row 1 has 1 scores"),
                                             ([[0.1, 0.2], [0.5, 0.6]], "row 0 has 2 scores")])
def test_a_matrix_that_is_not_T_plus_1_by_T_is_refused(matrix, message):
    with pytest.raises(ValueError, match=message):
        average_accuracy(matrix)


def test_mean_by_position_averages_element_wise_and_refuses_mixed_sizes():
    a = [[0.0, 0.2], [1.0, 0.4], [0.6, 0.8]]
    b = [[0.2, 0.0], [0.8, 0.2], [0.4, 1.0]]
    np.testing.assert_allclose(mean_by_position([a, b]), [[0.1, 0.1], [0.9, 0.3], [0.5, 0.9]])
    with pytest.raises(ValueError, match="different numbers of tasks"):
        mean_by_position([a, [[0.1], [0.2]]])


# ---- the summary: 2 orders x 2 seeds per method --------------------------------------------------------

TASKS = ["a", "b"]
ORDERS = [["a", "b"], ["b", "a"]]
FORGET = {"sequential_lora": lambda k, s: 0.40 + 0.05 * k + 0.03 * s, "replay": lambda k, s: 0.10 + 0.05 * k - 0.01 * s,
          "ewc": lambda k, s: 0.40 + 0.05 * k + 0.03 * s + (0.02 if (k + s) % 2 else -0.02)}


def _run(method: str, k: int, s: int, **extra) -> ContinualRun:
    learned = 0.80 + 0.02 * s
    forget = FORGET[method](k, s)
    matrix = [[0.10 + 0.01 * k, 0.20], [learned, 0.25], [learned - forget, 0.90 - 0.01 * k]]
    fields = dict(method=method, order=ORDERS[k], order_index=k, seed=s, matrix=matrix, seconds=10.0 + s,
                  steps=[5, 5], probes=[0.5, 0.45, 0.40 + 0.02 * s])
    return ContinualRun(**{**fields, **extra})


def _runs(methods=("sequential_lora", "replay")) -> list[ContinualRun]:
    runs = [_run(m, k, s) for m in methods for k in (0, 1) for s in (1, 2)]
    random.Random(3).shuffle(runs)  # pairing goes by order and seed, never by position in the list
    return runs


def test_summary_averages_matrices_by_position_over_orders_and_seeds():
    runs = _runs()
    summary = summarize(runs, TASKS)
    replay = summary.methods["replay"]
    own = [r for r in runs if r.method == "replay"]
    for i in range(3):
        for j in range(2):
            assert replay.matrix[i][j] == pytest.approx(sum(r.matrix[i][j] for r in own) / 4)
    assert replay.seeds == [1, 2] and replay.order_indices == [0, 1] and len(replay.runs) == 4
    assert summary.orders == {0: ["a", "b"], 1: ["b", "a"]}
    assert list(summary.methods) == ["sequential_lora", "replay"]  # the reference first
    assert summary.seconds == pytest.approx(sum(r.seconds for r in runs))


def test_summary_measures_are_means_over_runs_with_intervals_that_contain_them():
    summary = summarize(_runs(), TASKS)
    replay = summary.methods["replay"]
    bwts = [-FORGET["replay"](k, s) for k in (0, 1) for s in (1, 2)]
    assert replay.bwt.mean == pytest.approx(sum(bwts) / 4) and replay.bwt.n == 4
    assert replay.bwt.ci95 == pytest.approx(seed_interval(bwts).ci95)
    for estimate in (replay.aa, replay.bwt, replay.probes_retained):
        low, high = estimate.ci95
        assert low < estimate.mean < high
    assert replay.probes_retained.mean == pytest.approx(sum((0.40 + 0.02 * s) / 0.5 for _ in (0, 1) for s in (1, 2)) / 4)
    assert replay.fwt is None  # no single-task results


def test_difference_from_the_reference_is_paired_by_order_and_seed():
    summary = summarize(_runs(("sequential_lora", "replay", "ewc")), TASKS)
    assert summary.reference == "sequential_lora"
    assert summary.methods["sequential_lora"].vs_reference is None
    replay = summary.methods["replay"].vs_reference
    # per pair: BWT difference = forget(seq) - forget(replay) = 0.30 + 0.04 s; AA difference is half of it
    diffs = [0.30 + 0.04 * s for _ in (0, 1) for s in (1, 2)]
    assert replay.method == "sequential_lora" and replay.bwt.n == 4
    assert replay.bwt.mean == pytest.approx(0.36)
    assert replay.bwt.ci95 == pytest.approx(seed_interval(diffs).ci95)
    assert replay.aa.mean == pytest.approx(0.36 / 2)
    assert replay.bwt.ci95[0] > 0  # clearly less forgetting
    ewc = summary.methods["ewc"].vs_reference
    assert ewc.bwt.mean == pytest.approx(0.0) and ewc.bwt.ci95[0] < 0 < ewc.bwt.ci95[1]


def test_reference_can_be_named_and_must_have_run():
    summary = summarize(_runs(), TASKS, reference="replay")
    assert list(summary.methods) == ["replay", "sequential_lora"]
    assert summary.methods["sequential_lora"].vs_reference.bwt.mean == pytest.approx(-0.36)
    with pytest.raises(DataError, match="reference method 'lwf' has no runs"):
        summarize(_runs(), TASKS, reference="lwf")
    alone = summarize([r for r in _runs() if r.method == "replay"], TASKS)
    assert alone.reference is None and alone.methods["replay"].vs_reference is None


def test_forward_transfer_in_the_summary_uses_each_runs_single_task_scores():
    runs = [_run("replay", k, s, single_task=[0.5, 0.7]) for k in (0, 1) for s in (1, 2)]
    summary = summarize(runs, TASKS)
    # FWT = matrix[2][1] - single_task[1] = 0.90 - 0.01 k - 0.7
    assert summary.methods["replay"].fwt.mean == pytest.approx(0.2 - 0.005)
    assert summary.methods["replay"].single_task == pytest.approx([0.5, 0.7])


def test_summary_refuses_runs_that_do_not_fit_together():
    with pytest.raises(DataError, match="task 'c' is not one of the tasks"):
        summarize([_run("replay", 0, 1, order=["a", "c"])], TASKS)
    with pytest.raises(DataError, match="order 0 is b → a here but a → b in another run"):
        summarize([_run("replay", 0, 1), _run("replay", 0, 2, order=["b", "a"])], TASKS)
    with pytest.raises(DataError, match="two results for the run of replay"):
        summarize([_run("replay", 0, 1), _run("replay", 0, 1)], TASKS)
    with pytest.raises(DataError, match="no finished continual-learning runs"):
        summarize([], TASKS)
