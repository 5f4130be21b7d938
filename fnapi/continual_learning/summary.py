"""The summary of a continual-learning experiment: every method over its orders and seeds, and the
report files ``continual.json``, ``continual.md`` and ``matrix.png``.

Per method, :func:`summarize` averages the accuracy matrices by position in the training order (row
i: after the first i tasks trained, column j: the j-th task trained), so sequences of different
orders average together; gives AA, BWT, FWT and probes retained (see :mod:`fnapi.continual_learning.metrics`)
as means with Student-t 95% intervals over the method's runs (orders x seeds,
:func:`fnapi.measures.seed_interval`); and the difference in AA and BWT from a reference method
(``sequential_lora`` unless named), paired by order and seed: each pair shares its task order and
seed, so the interval is on the per-pair differences.

>>> summary = summarize(collect_runs("out"), ["arith", "code", "qa"])  # doctest: +SKIP
>>> write_outputs(summary, "out")                                     # doctest: +SKIP
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fnapi.continual_learning.metrics import average_accuracy, backward_transfer, forward_transfer, mean_by_position, probes_retained
from fnapi.continual_learning.results import ContinualRun
from fnapi.errors import DataError
from fnapi.measures import Estimate, seed_interval
from fnapi.paths import atomic_write_bytes, atomic_write_text
from fnapi.redaction import redact, redact_obj

CONTINUAL_JSON = "continual.json"
CONTINUAL_MD = "continual.md"
MATRIX_PNG = "matrix.png"
DEFAULT_REFERENCE = "sequential_lora"
_DIGITS = 6


@dataclass(frozen=True)
class RunScores:
    """One sequence's measures, beside what it was: method, order, seed, matrix, time and steps."""

    method: str
    order_index: int
    order: tuple[str, ...]
    seed: int
    matrix: list[list[float]]
    single_task: list[float] | None
    aa: float
    bwt: float | None
    fwt: float | None
    probes_retained: float | None
    probes_change_ci95: list[float] | None
    seconds: float
    steps: list[int]

    @classmethod
    def of(cls, run: ContinualRun) -> RunScores:
        return cls(method=run.method, order_index=run.order_index, order=tuple(run.order), seed=run.seed,
                   matrix=[list(row) for row in run.matrix], single_task=run.single_task,
                   aa=average_accuracy(run.matrix), bwt=backward_transfer(run.matrix),
                   fwt=forward_transfer(run.matrix, run.single_task), probes_retained=probes_retained(run.probes),
                   probes_change_ci95=run.probes_change_ci95, seconds=run.seconds, steps=list(run.steps))

    @property
    def key(self) -> tuple[int, int]:
        """What pairs it with another method's run: the same order and seed."""
        return self.order_index, self.seed

    def to_dict(self) -> dict[str, Any]:
        return {"order_index": self.order_index, "order": list(self.order), "seed": self.seed,
                "matrix": _rounded(self.matrix), "aa": _rounded(self.aa), "bwt": _rounded(self.bwt),
                "fwt": _rounded(self.fwt), "probes_retained": _rounded(self.probes_retained),
                "seconds": round(self.seconds, 3), "single_task": _rounded(self.single_task),
                "probes_change_ci95": _rounded(self.probes_change_ci95), "steps": list(self.steps)}


@dataclass(frozen=True)
class ReferenceDifference:
    """A method minus the reference method in AA and BWT, over the runs both have with the same order
    and seed, each with a Student-t interval over those pairs (None when no pair has the measure)."""

    method: str
    aa: Estimate | None
    bwt: Estimate | None

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "aa": _difference(self.aa), "bwt": _difference(self.bwt)}


@dataclass(frozen=True)
class MethodSummary:
    """One method over its runs: the mean matrix by position, the measures with intervals, the
    difference from the reference and every run's own values."""

    name: str
    matrix: list[list[float]]
    single_task: list[float] | None
    aa: Estimate
    bwt: Estimate | None
    fwt: Estimate | None
    probes_retained: Estimate | None
    seeds: list[int]
    order_indices: list[int]
    runs: list[RunScores]
    vs_reference: ReferenceDifference | None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"matrix": _rounded(self.matrix)}
        for key in ("aa", "bwt", "fwt", "probes_retained"):
            estimate = getattr(self, key)
            out[key] = None if estimate is None else _rounded(estimate.mean)
            out[f"{key}_ci95"] = None if estimate is None else _rounded(list(estimate.ci95))
        out.update(seeds=list(self.seeds), order_indices=list(self.order_indices), n_runs=len(self.runs),
                   vs_reference=None if self.vs_reference is None else self.vs_reference.to_dict(),
                   single_task=_rounded(self.single_task), runs=[run.to_dict() for run in self.runs])
        return out


@dataclass(frozen=True)
class ContinualSummary:
    """Every method of a continual-learning experiment; ``orders`` maps an order's index to its tasks
    in training order; ``seconds`` is the time of all the sequences."""

    tasks: list[str]
    orders: dict[int, list[str]]
    methods: dict[str, MethodSummary]
    reference: str | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """``continual.json``: its keys are what other tools read; new keys may be added, none renamed."""
        indices = sorted(self.orders)
        return redact_obj({"tasks": list(self.tasks), "orders": [list(self.orders[k]) for k in indices],
                           "order_indices": indices, "reference": self.reference,
                           "methods": {name: m.to_dict() for name, m in self.methods.items()},
                           "seconds": round(self.seconds, 3)})

    def to_markdown(self) -> str:
        """``continual.md``: the table of methods, a sentence per method against the reference, the
        tasks and orders, the picture of the matrices and every run."""
        reference = self.reference
        header = ["method", "AA", "BWT", "FWT", "probes retained", f"vs {reference or 'reference'} (BWT)", "runs"]
        lines = ["# Continual learning", "",
                 "Mean [95% interval] over each method's runs (orders x seeds, Student-t).", "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for m in self.methods.values():
            vs = "reference" if m.name == reference else _signed(m.vs_reference.bwt if m.vs_reference else None)
            lines.append(f"| {m.name} | {_shown(m.aa)} | {_shown(m.bwt, signed=True)} | {_shown(m.fwt, signed=True)} "
                         f"| {_shown(m.probes_retained, percent=True)} | {vs} | {len(m.runs)} |")
        if reference is not None:
            lines += [""] + [f"- {self._versus(m)}" for m in self.methods.values() if m.name != reference]
        lines += ["", "Tasks: " + ", ".join(self.tasks) + ".", "", "Orders (training order):"]
        lines += [f"- order {k}: " + " → ".join(self.orders[k]) for k in sorted(self.orders)]
        lines += ["", "![accuracy matrices](matrix.png)", "",
                  "Matrices are means by position in the training order: row *base* is the model before "
                  "training, row *after i* after training the first i tasks of its order, column *task j* the "
                  "j-th task trained. AA: mean score over all tasks after the last. BWT: mean over tasks 1..T-1 "
                  "of (score after the last task - score just after learning it); negative is forgetting. FWT: "
                  "mean over tasks 2..T of (score just after learning it in the sequence - score of the task "
                  "trained alone from the base model). Probes retained: general-knowledge probe accuracy after "
                  "the last task / before the first. vs reference: paired by order and seed.", "",
                  "| method | order | seed | AA | BWT | FWT | probes retained | seconds |",
                  "|---|---|---|---|---|---|---|---|"]
        for m in self.methods.values():
            for run in m.runs:
                retained = "n/a" if run.probes_retained is None else f"{100 * run.probes_retained:.1f}%"
                lines.append(f"| {m.name} | {run.order_index} | {run.seed} | {run.aa:.3f} | {_number(run.bwt)} "
                             f"| {_number(run.fwt)} | {retained} | {run.seconds:.0f} |")
        return redact("\n".join(lines) + "\n")

    def _versus(self, m: MethodSummary) -> str:
        """One sentence on ``m`` against the reference, claiming a difference only beyond the interval."""
        reference = self.reference
        diff = m.vs_reference
        if diff is None or (diff.aa is None and diff.bwt is None):
            return f"{m.name}: no run shares an order and seed with {reference}, so there is no paired difference."
        pairs = max(e.n for e in (diff.aa, diff.bwt) if e is not None)
        if pairs < 2:
            return (f"{m.name}: a single run pairs with {reference} (AA {_signed(diff.aa)}, BWT {_signed(diff.bwt)}); "
                    "one pair gives no interval, so no difference can be claimed.")
        beyond, within = [], []
        for label, estimate, up, down in (("BWT", diff.bwt, "less forgetting of earlier tasks",
                                           "more forgetting of earlier tasks"),
                                          ("AA", diff.aa, "higher average accuracy", "lower average accuracy")):
            if estimate is None:
                continue
            low, high = estimate.ci95
            if low > 0 or high < 0:
                beyond.append(f"{label} {_signed(estimate)}: {up if estimate.mean > 0 else down} than {reference}, "
                              "beyond the 95% interval")
            else:
                within.append(f"{label} {_signed(estimate)}")
        text = f"{m.name} vs {reference} over {pairs} paired runs: "
        if not beyond:
            return text + "no difference beyond the 95% interval (" + "; ".join(within) + ")."
        return text + "; ".join(beyond) + ("" if not within else "; no difference beyond the interval in "
                                           + "; ".join(within)) + "."


def summarize(runs: Sequence[ContinualRun], tasks: Sequence[str], *, reference: str | None = None,
              seconds: float | None = None) -> ContinualSummary:
    """Summarise ``runs`` (any methods, orders and seeds) over the experiment's ``tasks``.

    ``reference`` is the method the others are compared with (default ``sequential_lora`` when it
    ran, else none); ``seconds`` the experiment's time (default: the sum of the runs' times). Every
    task of a run's order must be one of ``tasks``; a method's runs must all have the same number of
    tasks and differ in order or seed.
    """
    if not runs:
        raise DataError("no finished continual-learning runs to summarise")
    tasks = list(tasks)
    orders: dict[int, list[str]] = {}
    by_method: dict[str, list[RunScores]] = {}
    for run in runs:
        where = f"run of {run.method} (order {run.order_index}, seed {run.seed})"
        unknown = [task for task in run.order if task not in tasks]
        if unknown:
            raise DataError(f"{where}: task {unknown[0]!r} is not one of the tasks ({', '.join(tasks)})")
        known = orders.setdefault(run.order_index, list(run.order))
        if known != list(run.order):
            raise DataError(f"{where}: order {run.order_index} is {' → '.join(run.order)} here but "
                            f"{' → '.join(known)} in another run")
        scores = RunScores.of(run)
        if any(other.key == scores.key for other in by_method.get(run.method, [])):
            raise DataError(f"two results for the {where}")
        by_method.setdefault(run.method, []).append(scores)
    if reference is None:
        reference = DEFAULT_REFERENCE if DEFAULT_REFERENCE in by_method else None
    elif reference not in by_method:
        raise DataError(f"reference method {reference!r} has no runs (methods: {', '.join(by_method)})")
    names = sorted(by_method, key=lambda name: name != reference)  # the reference first, then as they came
    methods = {name: _method(name, by_method[name], by_method.get(reference) if name != reference else None, reference)
               for name in names}
    total = sum(run.seconds for run in runs) if seconds is None else float(seconds)
    return ContinualSummary(tasks=tasks, orders=orders, methods=methods, reference=reference, seconds=total)


def _method(name: str, runs: list[RunScores], reference_runs: list[RunScores] | None,
            reference: str | None) -> MethodSummary:
    runs = sorted(runs, key=lambda r: r.key)
    try:
        matrix = mean_by_position([r.matrix for r in runs])
    except ValueError as exc:
        raise DataError(f"method {name}: {exc}") from None
    singles = [r.single_task for r in runs if r.single_task is not None]
    single_task = [sum(column) / len(column) for column in zip(*singles)] if singles else None
    vs = None
    if reference_runs is not None and reference is not None:
        paired = {r.key: r for r in reference_runs}
        pairs = [(r, paired[r.key]) for r in runs if r.key in paired]
        vs = ReferenceDifference(reference, _interval([a.aa - b.aa for a, b in pairs]),
                                 _interval([a.bwt - b.bwt for a, b in pairs if a.bwt is not None and b.bwt is not None]))
    return MethodSummary(name=name, matrix=matrix, single_task=single_task, aa=seed_interval([r.aa for r in runs]),
                         bwt=_interval([r.bwt for r in runs]), fwt=_interval([r.fwt for r in runs]),
                         probes_retained=_interval([r.probes_retained for r in runs]),
                         seeds=sorted({r.seed for r in runs}), order_indices=sorted({r.order_index for r in runs}),
                         runs=runs, vs_reference=vs)


def _interval(values: Sequence[float | None]) -> Estimate | None:
    """Mean and Student-t interval of the values that exist; None when none does."""
    present = [v for v in values if v is not None]
    return seed_interval(present) if present else None


# ---- formatting ------------------------------------------------------------------------------------------

def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, _DIGITS)
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _difference(estimate: Estimate | None) -> dict[str, Any] | None:
    if estimate is None:
        return None
    return {"diff": _rounded(estimate.mean), "ci95": _rounded(list(estimate.ci95)), "n": estimate.n}


def _shown(estimate: Estimate | None, *, percent: bool = False, signed: bool = False) -> str:
    """``0.512 [0.480, 0.544]`` (one run: the mean alone); ``n/a`` when not measured."""
    if estimate is None:
        return "n/a"
    scale, places, unit = (100.0, 1, "%") if percent else (1.0, 3, "")
    sign = "+" if signed else ""
    mean = f"{estimate.mean * scale:{sign}.{places}f}{unit}"
    if estimate.n < 2:
        return mean
    low, high = (v * scale for v in estimate.ci95)
    return f"{mean} [{low:{sign}.{places}f}, {high:{sign}.{places}f}]"


def _signed(estimate: Estimate | None) -> str:
    return "n/a" if estimate is None else _shown(estimate, signed=True)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


# ---- files -------------------------------------------------------------------------------------------

def plot_matrices(summary: ContinualSummary) -> bytes:
    """PNG bytes: one heatmap per method (its mean matrix by position, scores annotated, one colour
    scale 0..1 for all), titled with the method's AA and BWT."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    methods = list(summary.methods.values())
    columns = min(3, len(methods))
    rows = math.ceil(len(methods) / columns)
    tasks = max(len(m.matrix[0]) for m in methods)
    side = 1.6 + 0.55 * tasks
    fig, axes = plt.subplots(rows, columns, figsize=(side * columns + 1.6, (side + 0.4) * rows), dpi=100,
                             squeeze=False, layout="constrained")
    image = None
    for ax, m in zip(axes.flat, methods):
        image = ax.imshow(m.matrix, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        size = len(m.matrix[0])
        names = summary.orders[m.order_indices[0]] if len(m.order_indices) == 1 else None
        ax.set_xticks(range(size), names if names else [f"task {j + 1}" for j in range(size)],
                      rotation=30 if names else 0, ha="right" if names else "center", fontsize=8)
        ax.set_yticks(range(size + 1), ["base"] + [f"after {names[i] if names else i + 1}" for i in range(size)],
                      fontsize=8)
        for i, row in enumerate(m.matrix):
            for j, value in enumerate(row):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if value > 0.6 else "white")
        bwt = "n/a" if m.bwt is None else f"{m.bwt.mean:+.2f}"
        ax.set_title(f"{m.name}\nAA {m.aa.mean:.2f}  BWT {bwt}", fontsize=9)
    for ax in list(axes.flat)[len(methods):]:
        ax.axis("off")
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="score")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def write_outputs(summary: ContinualSummary, folder: str | Path) -> list[Path]:
    """Write ``continual.json``, ``continual.md`` and ``matrix.png`` into ``folder``, each atomically;
    everything is made before the first file is written, so a failure leaves none of them new."""
    folder = Path(folder)
    picture = plot_matrices(summary)
    markdown = summary.to_markdown()
    data = json.dumps(summary.to_dict(), indent=2) + "\n"
    return [atomic_write_text(folder / CONTINUAL_JSON, data), atomic_write_text(folder / CONTINUAL_MD, markdown),
            atomic_write_bytes(folder / MATRIX_PNG, picture)]
