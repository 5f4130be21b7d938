"""The measures of one continual-learning sequence, from its accuracy matrix.

A sequence trains T tasks one after another. Its ``matrix`` has T + 1 rows and T columns:
``matrix[0]`` holds the base model's score on each task, and ``matrix[i][j]`` (0-based, as in the
JSON files) the score on the sequence's (j+1)-th task after training its tasks 1..i. In 1-indexed
words: row i is "after training tasks 1..i", column j is "task j", row 0 is the base model.

- average accuracy (AA): the mean of the last row, every task scored at the end;
- backward transfer (BWT): how the score on each earlier task changed from just after learning it to
  the end, ``mean(matrix[T][j] - matrix[j][j])`` over tasks j = 1..T-1 (negative: forgetting);
- forward transfer (FWT): how much the earlier tasks helped learn each later one, against training
  that task alone from the base model (``single_task``), ``mean(matrix[j][j] - single_task[j])`` over
  tasks j = 2..T;
- probes retained: general-knowledge probe accuracy at the end as a fraction of the base model's.

>>> backward_transfer([[0.1, 0.1], [0.9, 0.2], [0.5, 0.8]])  # task 1: 0.9 just after, 0.5 at the end
-0.4
"""

from __future__ import annotations

from collections.abc import Sequence

Matrix = Sequence[Sequence[float]]


def matrix_tasks(matrix: Matrix) -> int:
    """The number of tasks T of an accuracy matrix; ``ValueError`` unless it is (T + 1) x T, T >= 1."""
    tasks = len(matrix) - 1
    if tasks < 1:
        raise ValueError(f"an accuracy matrix needs the base row and at least one row after training "
                         f"(got {len(matrix)} row{'s' if len(matrix) != 1 else ''})")
    for index, row in enumerate(matrix):
        if len(row) != tasks:
            raise ValueError(f"row {index} has {len(row)} scores; a matrix of {tasks + 1} rows has one per task ({tasks})")
    return tasks


def average_accuracy(matrix: Matrix) -> float:
    """AA: the mean score over all tasks after training the last one (``mean(matrix[T])``)."""
    tasks = matrix_tasks(matrix)
    return _mean(matrix[tasks])


def backward_transfer(matrix: Matrix) -> float | None:
    """BWT: the mean over tasks 1..T-1 of (score at the end - score just after learning the task),
    ``mean(matrix[T][c] - matrix[c + 1][c] for c in 0..T-2)`` with 0-based columns. None for one task."""
    tasks = matrix_tasks(matrix)
    if tasks < 2:
        return None
    return _mean([matrix[tasks][c] - matrix[c + 1][c] for c in range(tasks - 1)])


def forward_transfer(matrix: Matrix, single_task: Sequence[float] | None) -> float | None:
    """FWT: the mean over tasks 2..T of (score just after learning the task in the sequence - score of
    that task trained alone from the base model), ``mean(matrix[c + 1][c] - single_task[c] for c in
    1..T-1)`` with 0-based columns. None for one task or without single-task scores."""
    tasks = matrix_tasks(matrix)
    if single_task is None or tasks < 2:
        return None
    if len(single_task) != tasks:
        raise ValueError(f"{len(single_task)} single-task scores for {tasks} tasks")
    return _mean([matrix[c + 1][c] - single_task[c] for c in range(1, tasks)])


def probes_retained(probes: Sequence[float]) -> float | None:
    """Probe accuracy after the last task as a fraction of the base model's (``probes[-1] / probes[0]``);
    None when probes were not scored or the base model scored zero."""
    if len(probes) < 2 or probes[0] == 0:
        return None
    return probes[-1] / probes[0]


def mean_by_position(matrices: Sequence[Matrix]) -> list[list[float]]:
    """The element-wise mean of matrices of one shape. Rows and columns are positions in each
    sequence's training order (column j: the j-th task trained), so sequences of different orders
    average position by position."""
    if not matrices:
        raise ValueError("no matrices to average")
    tasks = {matrix_tasks(m) for m in matrices}
    if len(tasks) > 1:
        raise ValueError(f"matrices of different numbers of tasks ({', '.join(map(str, sorted(tasks)))}) "
                         "cannot be averaged by position")
    rows, columns = len(matrices[0]), len(matrices[0][0])
    return [[_mean([m[i][j] for m in matrices]) for j in range(columns)] for i in range(rows)]


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values))
