"""The result files of a continual-learning output folder, and where they live.

The runner writes one file per finished sequence and one per single-task baseline; the summary reads
them back with :func:`collect_runs`. Every path is built here and nowhere else::

    DIR/runs/{method}/order-{k}/seed-{s}/result.json   ContinualRun      (fnapi.continual-run/1)
    DIR/single/seed-{s}/{task}.json                    SingleTaskResult  (fnapi.continual-single/1)

A file is written atomically when its run finishes, so a file that exists is a finished run. Both
are strict frozen models: a damaged or hand-edited file is a :class:`~fnapi.errors.DataError` naming
the file and the field.

>>> run = ContinualRun(method="sequential_lora", order=["a", "b"], order_index=0, seed=1,
...                    matrix=[[0.1, 0.2], [0.8, 0.3], [0.6, 0.9]], seconds=12.0, steps=[50, 50])
>>> run.save(run_result_path("out", run.method, run.order_index, run.seed))  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import Field, ValidationError, ValidationInfo, field_validator

from fnapi.errors import DataError, Problem
from fnapi.paths import atomic_write_text
from fnapi.recipe import Section, validation_problems

CONTINUAL_RUN_FORMAT = "fnapi.continual-run/1"
SINGLE_TASK_FORMAT = "fnapi.continual-single/1"
RUNS_DIR = "runs"
SINGLE_DIR = "single"
RESULT_FILE = "result.json"

_Count = Annotated[int, Field(ge=0)]


class ContinualRun(Section):
    """One sequence: a method trained on the tasks of one order, with one seed.

    ``matrix`` is (T + 1) x T for the T tasks of ``order`` (row 0: the base model; row i: after
    training tasks 1..i; column j: the order's j-th task); ``single_task`` the score of each task of
    ``order`` trained alone from the base model with the same seed; ``probes`` the general-knowledge
    probe accuracy of rows 0..T (empty when probes are off); ``probes_change_ci95`` the interval on
    the probe change of the last row against the base; ``steps`` the training steps of each task.
    """

    format: Literal["fnapi.continual-run/1"] = CONTINUAL_RUN_FORMAT
    method: str = Field(min_length=1)
    order: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    order_index: _Count
    seed: int
    matrix: list[list[float]]
    single_task: list[float] | None = None
    probes: list[float] = []
    probes_change_ci95: list[float] | None = None
    seconds: float = Field(ge=0)
    steps: list[_Count]

    @field_validator("order")
    @classmethod
    def _tasks_once(cls, order: list[str]) -> list[str]:
        twice = sorted({task for task in order if order.count(task) > 1})
        if twice:
            raise ValueError(f"each task is trained once in an order; {', '.join(twice)} appears more than once")
        return order

    @field_validator("matrix")
    @classmethod
    def _matrix_shape(cls, matrix: list[list[float]], info: ValidationInfo) -> list[list[float]]:
        tasks = _tasks(info)
        if tasks is None:
            return matrix
        if len(matrix) != tasks + 1:
            raise ValueError(f"needs {tasks + 1} rows (the base model, then one after each of the {tasks} tasks "
                             f"of order), got {len(matrix)}")
        for index, row in enumerate(matrix):
            if len(row) != tasks:
                raise ValueError(f"row {index} has {len(row)} scores; needs one per task of order ({tasks})")
        return matrix

    @field_validator("single_task", "steps")
    @classmethod
    def _one_per_task(cls, values: list[Any] | None, info: ValidationInfo) -> list[Any] | None:
        tasks = _tasks(info)
        if values is not None and tasks is not None and len(values) != tasks:
            raise ValueError(f"needs one value per task of order ({tasks}), got {len(values)}")
        return values

    @field_validator("probes")
    @classmethod
    def _probe_rows(cls, probes: list[float], info: ValidationInfo) -> list[float]:
        tasks = _tasks(info)
        if probes and tasks is not None and len(probes) != tasks + 1:
            raise ValueError(f"needs one accuracy per matrix row ({tasks + 1}: the base model, then after each task) "
                             f"or none when probes are off, got {len(probes)}")
        return probes

    @field_validator("probes_change_ci95")
    @classmethod
    def _interval(cls, interval: list[float] | None) -> list[float] | None:
        if interval is not None and (len(interval) != 2 or interval[0] > interval[1]):
            raise ValueError(f"an interval is [low, high] with low <= high, got {interval}")
        return interval

    @property
    def tasks(self) -> int:
        """T, the number of tasks of this sequence."""
        return len(self.order)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<continual run>") -> ContinualRun:
        """Check parsed JSON; a :class:`DataError` naming ``source`` and each bad field otherwise."""
        return _validate(cls, data, source, "continual run result")

    @classmethod
    def load(cls, path: str | Path) -> ContinualRun:
        """Read a ``result.json``."""
        return cls.from_dict(_read_json(path, "continual run result"), str(path))

    def save(self, path: str | Path) -> Path:
        """Write the result atomically (temp file + rename) and return its path."""
        return atomic_write_text(path, json.dumps(self.model_dump(mode="json"), indent=2) + "\n")


class SingleTaskResult(Section):
    """One task trained alone from the base model with one seed: the forward-transfer baseline."""

    format: Literal["fnapi.continual-single/1"] = SINGLE_TASK_FORMAT
    task: str = Field(min_length=1)
    seed: int
    score: float
    steps: _Count
    seconds: float = Field(ge=0)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<single-task result>") -> SingleTaskResult:
        """Check parsed JSON; a :class:`DataError` naming ``source`` and each bad field otherwise."""
        return _validate(cls, data, source, "single-task result")

    @classmethod
    def load(cls, path: str | Path) -> SingleTaskResult:
        """Read a ``single/seed-S/TASK.json``."""
        return cls.from_dict(_read_json(path, "single-task result"), str(path))

    def save(self, path: str | Path) -> Path:
        """Write the result atomically (temp file + rename) and return its path."""
        return atomic_write_text(path, json.dumps(self.model_dump(mode="json"), indent=2) + "\n")


def _tasks(info: ValidationInfo) -> int | None:
    """T from the already validated ``order`` (None when ``order`` itself failed: reported there)."""
    order = info.data.get("order")
    return None if order is None else len(order)


_Result = TypeVar("_Result", ContinualRun, SingleTaskResult)


def _validate(model: type[_Result], data: Any, source: str, what: str) -> _Result:
    if not isinstance(data, dict):
        raise DataError(f"{source}: a {what} is a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise DataError.invalid(source, validation_problems(exc, model), what=what) from None


def _read_json(path: str | Path, what: str) -> Any:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {what} {path}: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None


# ---- the layout of an output folder -------------------------------------------------------------------

def run_result_path(root: str | Path, method: str, order_index: int, seed: int) -> Path:
    """``root/runs/{method}/order-{order_index}/seed-{seed}/result.json``: where a sequence's result lives."""
    return (Path(root) / RUNS_DIR / _path_part(method, "method") / f"order-{int(order_index)}" / f"seed-{int(seed)}"
            / RESULT_FILE)


def single_result_path(root: str | Path, task: str, seed: int) -> Path:
    """``root/single/seed-{seed}/{task}.json``: where a single-task baseline's result lives."""
    return Path(root) / SINGLE_DIR / f"seed-{int(seed)}" / f"{_path_part(task, 'task')}.json"


def _path_part(name: str, what: str) -> str:
    """``name`` as one folder or file name: no separators, nothing that climbs out of the folder."""
    if not name or name in (".", "..") or name.startswith(".") or any(c in name for c in "/\\\0"):
        raise DataError(f"{what} name {name!r} cannot be a file name in the output folder",
                        "use names without slashes that do not start with a dot")
    return name


def collect_runs(root: str | Path) -> list[ContinualRun]:
    """Every finished sequence under the output folder ``root``, ordered by method, order and seed.

    A run's ``single_task`` is filled from ``root/single/seed-S/`` when the file of every task of
    its order is there (otherwise it keeps what the run file holds). A file whose method, order or
    seed disagrees with its place in the folder is a :class:`DataError`, as is any damaged file.
    """
    root = Path(root)
    runs: list[ContinualRun] = []
    for path in sorted((root / RUNS_DIR).glob(f"*/order-*/seed-*/{RESULT_FILE}")):
        run = ContinualRun.load(path)
        problem = _misplaced(path, root, run)
        if problem is not None:
            raise DataError.invalid(str(path), [problem], what="continual run result")
        scores = _single_scores(root, run)
        if scores is not None:
            run = run.model_copy(update={"single_task": scores})
        runs.append(run)
    return sorted(runs, key=lambda r: (r.method, r.order_index, r.seed))


def _misplaced(path: Path, root: Path, run: ContinualRun) -> Problem | None:
    """What in the file disagrees with the folder it is in (a copied or mislabelled result)."""
    method, order, seed = path.relative_to(root / RUNS_DIR).parts[:3]
    if method != run.method:
        return Problem("method", f"{run.method!r}, but the file is in the folder of method {method!r}")
    if order != f"order-{run.order_index}":
        return Problem("order_index", f"{run.order_index}, but the file is in {order}")
    if seed != f"seed-{run.seed}":
        return Problem("seed", f"{run.seed}, but the file is in {seed}")
    return None


def _single_scores(root: Path, run: ContinualRun) -> list[float] | None:
    """The single-task score of each task of ``run.order`` with its seed, when all are there."""
    paths = [single_result_path(root, task, run.seed) for task in run.order]
    if not all(p.is_file() for p in paths):
        return None
    scores = []
    for task, path in zip(run.order, paths):
        single = SingleTaskResult.load(path)
        for field, expected in (("task", task), ("seed", run.seed)):
            if getattr(single, field) != expected:
                raise DataError.invalid(str(path), [Problem(field, f"{getattr(single, field)!r}, but the file is "
                                                                   f"where the result of {field} {expected!r} belongs")],
                                        what="single-task result")
        scores.append(single.score)
    return scores
