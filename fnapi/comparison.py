"""Method comparison: run several recipes the same way and put their forgetting reports side by side.

:func:`compare_recipes` runs each recipe through :func:`fnapi.runner.run` into ``output/<name>``.
Recipes that would build the same template (same model, seed, data and template settings) share
it: the first one builds it, the later ones load the copy in its run directory through
``template.path``, so every masked method uses the very same networks and ICA runs only once.

:class:`Comparison` renders one row per recipe (method, task score before -> after, probe score
retained, KL to the base model, trainable parameters, train time) as Markdown and JSON;
:func:`write_comparison` writes ``comparison.md`` and ``comparison.json`` atomically.

>>> result = compare_recipes([Recipe.from_yaml(p) for p in paths], "runs/compare")  # doctest: +SKIP
>>> write_comparison(result, "runs/compare")                                          # doctest: +SKIP
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from fnapi.errors import RecipeError
from fnapi.events import EventSink, Log, NullSink
from fnapi.paths import atomic_write_text
from fnapi.recipe import Recipe
from fnapi.redaction import redact, redact_obj

COMPARISON_MD = "comparison.md"
COMPARISON_JSON = "comparison.json"
# Settings that should agree for the rows to be comparable; a difference is reported, not refused.
_SHARED = ("seed", "model.name", "data.path", "data.max_length", "train.steps", "train.batch_size",
           "eval.task_samples", "eval.probe_samples", "eval.kl_prompts")


@dataclass
class MethodRow:
    """One recipe's results, taken from its forgetting report."""

    name: str
    method: str
    mask: str
    task_before: float | None
    task_after: float | None
    probes_before: float | None
    probes_after: float | None
    probes_retained: float | None
    kl_to_base: float | None
    trainable_parameters: int
    total_parameters: int
    train_seconds: float
    final_loss: float | None
    run_dir: str

    @classmethod
    def from_report(cls, recipe: Recipe, report: Any, run_dir: Path) -> "MethodRow":
        preset = recipe.mask.preset
        mask = "none" if recipe.mask.switches() == ("none", "all") else f"{preset} {_components(recipe)}"
        return cls(name=recipe.name, method=recipe.train.method, mask=mask, task_before=report.task.before,
                   task_after=report.task.after, probes_before=report.probes.before,
                   probes_after=report.probes.after, probes_retained=report.probes.retained,
                   kl_to_base=report.kl_to_base, trainable_parameters=report.trainable_parameters,
                   total_parameters=report.total_parameters, train_seconds=report.train_seconds,
                   final_loss=report.final_loss, run_dir=str(run_dir))


def _components(recipe: Recipe) -> str:
    chosen = recipe.mask.components
    if chosen == "stable":
        return f"(top {recipe.mask.top_stable} stable)"
    return "(" + ",".join(map(str, chosen)) + ")"


@dataclass
class Comparison:
    """The rows of a comparison, the shared template (if any) and warnings about unequal settings."""

    rows: list[MethodRow]
    template: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return redact_obj({"rows": [asdict(row) for row in self.rows], "template": self.template,
                           "warnings": list(self.warnings)})

    def table(self) -> tuple[list[str], list[list[str]]]:
        """Column names and formatted cells, shared by the Markdown and the console table."""
        header = ["method", "task before -> after", "probes retained", "KL to base", "trainable parameters",
                  "train time"]
        cells = []
        for row in self.rows:
            preset = row.mask.split()[0]
            label = f"{row.name} ({row.method}" + ("" if preset == "none" else f", {preset}") + ")"
            trainable = _count(row.trainable_parameters)
            if row.total_parameters:
                trainable += f" ({100 * row.trainable_parameters / row.total_parameters:.2f}%)"
            cells.append([label, f"{_fmt(row.task_before, 2)} -> {_fmt(row.task_after, 2)}",
                          "n/a" if row.probes_retained is None else f"{100 * row.probes_retained:.1f}%",
                          _fmt(row.kl_to_base, 4), trainable, f"{row.train_seconds:.0f} s"])
        return header, cells

    def to_markdown(self) -> str:
        header, cells = self.table()
        lines = ["# Method comparison", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in cells]
        lines.append("")
        lines.append("Task: exact match on held-out task items. Probes retained: general-knowledge probe accuracy "
                     "after / before. KL: mean next-token KL divergence from the base model on general text "
                     "(nats/token).")
        masks = [f"{row.name}: {row.mask}" for row in self.rows if row.mask != "none"]
        if masks:
            lines.append("Masks: " + "; ".join(masks) + ".")
        if self.template:
            lines.append(f"Template shared by the masked runs: `{self.template}`.")
        lines += [f"- warning: {w}" for w in self.warnings]
        return redact("\n".join(lines) + "\n")


def _count(n: int) -> str:
    """``1234567`` -> ``1.23M``: parameter counts at a glance."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def compare_recipes(recipes: Sequence[Recipe], output: str | Path, *, sink: EventSink | None = None,
                    cancel: threading.Event | None = None) -> Comparison:
    """Run every recipe into ``output/<recipe name>`` and collect one :class:`MethodRow` each.

    Recipes with equal template build settings share the template the first of them builds.
    Names must be unique (they name the run directories).
    """
    from fnapi.runner import run

    if not recipes:
        raise RecipeError("compare needs at least one recipe")
    names = [r.name for r in recipes]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise RecipeError(f"recipes must have different names to get their own run directories; "
                          f"{', '.join(twice)} appears more than once", "change `name:` in the recipe files")
    sink = sink if sink is not None else NullSink()
    output = Path(output)
    built: dict[str, Path] = {}
    rows = []
    for recipe in recipes:
        key = _template_key(recipe)
        if key is not None and key in built:
            recipe = recipe.replace(**{"template.path": str(built[key])})
            sink.emit(Log(message=f"{recipe.name}: using the template built for an earlier recipe: {built[key]}",
                          stage="compare"))
        result = run(recipe, sink=sink, cancel=cancel, output=output / recipe.name)
        if key is not None and key not in built and result.template_path is not None:
            built[key] = result.template_path.resolve()
        rows.append(MethodRow.from_report(recipe, result.report, result.run_dir))
    shared = next(iter(built.values()), None)
    return Comparison(rows=rows, template=None if shared is None else str(shared), warnings=_differences(recipes))


def _template_key(recipe: Recipe) -> str | None:
    """What decides the template a recipe builds; None when it loads one or has none."""
    section = recipe.template
    if section is None or section.path:
        return None
    build = section.model_dump(mode="json", exclude={"path", "out"})
    data = list(section.data) or [recipe.data.path]
    return json.dumps({"model": recipe.model.model_dump(mode="json"), "seed": recipe.seed, "data": data,
                       "template": build}, sort_keys=True)


def _differences(recipes: Sequence[Recipe]) -> list[str]:
    warnings = []
    for dotted in _SHARED:
        values = {r.name: _get(r.to_dict(), dotted) for r in recipes}
        if len({json.dumps(v) for v in values.values()}) > 1:
            shown = ", ".join(f"{name}: {value}" for name, value in values.items())
            warnings.append(f"{dotted} differs between the recipes ({shown}), so the rows are not like for like")
    return warnings


def _get(data: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        data = data.get(key) if isinstance(data, dict) else None
    return data


def write_comparison(comparison: Comparison, directory: str | Path) -> tuple[Path, Path]:
    """Write ``comparison.md`` and ``comparison.json`` into ``directory`` atomically; return both paths."""
    directory = Path(directory)
    markdown = atomic_write_text(directory / COMPARISON_MD, comparison.to_markdown())
    data = atomic_write_text(directory / COMPARISON_JSON, json.dumps(comparison.to_dict(), indent=2) + "\n")
    return markdown, data
