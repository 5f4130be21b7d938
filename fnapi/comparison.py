"""Method comparison that can decide: several recipes, several seeds, random-neuron controls, equal
task score, and intervals on every difference.

:func:`compare_recipes` expands each recipe into its runs and runs them through
:func:`fnapi.runner.run`:

- ``seeds=N`` repeats every method with the seeds ``recipe.seed, recipe.seed + 1, ...``; a masked
  method's template is built from the run's seed (so the networks themselves are resampled).
- ``task_target=X`` sets ``train.task_target`` on every run: each trains until its validation task
  score reaches ``X`` (or its step cap), so retention is compared at equal learning; the steps each
  needed are reported.
- ``controls=True`` adds, for every masked method, a random-neuron control: the same recipe with
  ``mask.control: random`` (as many neurons per layer, drawn with the run's seed), as its own row
  ``NAME-random``.

Runs that would build the same template (same model, seed, data and template settings) share it.
A run directory that already holds a finished run of the same recipe is read, not run again, so a
killed comparison resumes its unfinished runs when the command is repeated.

Across seeds each measure gets a mean and a Student-t 95% interval. Each method's difference from
the baseline (plain LoRA unless named) and from its control is paired: per seed the two runs share
the seed and the probe items, and the interval comes from a bootstrap that resamples seeds and
items together (:func:`paired_difference`).

>>> result = compare_recipes([Recipe.from_yaml(p) for p in paths], "runs/compare", seeds=3)  # doctest: +SKIP
>>> write_comparison(result, "runs/compare")                                                    # doctest: +SKIP
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fnapi.errors import RecipeError
from fnapi.events import EventSink, Log, NullSink
from fnapi.measures import RESAMPLES, EvalMeasures, seed_interval
from fnapi.paths import atomic_write_bytes, atomic_write_text
from fnapi.recipe import Recipe
from fnapi.redaction import redact, redact_obj

COMPARISON_MD = "comparison.md"
COMPARISON_JSON = "comparison.json"
PARETO_PNG = "pareto.png"
CONTROL_SUFFIX = "-random"
# Settings that should agree for the rows to be comparable; a difference is reported, not refused.
_SHARED = ("model.name", "data.path", "data.max_length", "train.steps", "train.batch_size",
           "train.task_target", "eval.task_samples", "eval.probes", "eval.probe_samples", "eval.text",
           "eval.kl_prompts")


@dataclass
class MethodRow:
    """One run's results, taken from its forgetting report."""

    name: str
    seed: int
    method: str
    mask: str
    control: bool
    task_before: float | None
    task_after: float | None
    probes_before: float | None
    probes_after: float | None
    probes_retained: float | None
    kl_to_base: float | None
    text_nll_change: float | None
    steps: int
    trainable_parameters: int
    total_parameters: int
    train_seconds: float
    final_loss: float | None
    run_dir: str
    #: open-ended answers retained (after / before): the measure a user sees
    generative_retained: float | None = None
    #: KL from the base on its own replies to general prompts
    chat_kl: float | None = None
    format_leak: bool | None = None

    @classmethod
    def from_report(cls, recipe: Recipe, report: Any, run_dir: Path) -> MethodRow:
        preset = recipe.mask.preset
        mask = "none" if recipe.mask.switches() == ("none", "all") else f"{preset} {_components(recipe)}"
        return cls(name=recipe.name, seed=recipe.seed, method=recipe.train.method, mask=mask,
                   control=recipe.mask.control != "none", task_before=report.task.before,
                   task_after=report.task.after, probes_before=report.probes.before,
                   probes_after=report.probes.after, probes_retained=report.probes.retained,
                   kl_to_base=report.kl_to_base, text_nll_change=report.text_nll.change, steps=report.steps,
                   trainable_parameters=report.trainable_parameters, total_parameters=report.total_parameters,
                   train_seconds=report.train_seconds, final_loss=report.final_loss, run_dir=str(run_dir),
                   generative_retained=report.generative.retained,
                   chat_kl=(report.chat_kl or {}).get("value"),
                   format_leak=(report.format_leak or {}).get("flag"))


def _components(recipe: Recipe) -> str:
    chosen = recipe.mask.components
    if chosen == "stable":
        return f"(top {recipe.mask.top_stable} stable)"
    if chosen == "all":
        return "(all)"
    return "(" + ",".join(map(str, chosen)) + ")"


@dataclass
class MethodSummary:
    """One method across seeds: means with 95% intervals, and paired differences."""

    name: str
    control: bool
    control_of: str | None
    rows: list[MethodRow]
    measures: dict[str, dict[str, Any]]
    vs_baseline: dict[str, Any] | None = None
    vs_control: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**self.measures, "vs_lora": self.vs_baseline, "vs_control": self.vs_control,
                "control": self.control, "control_of": self.control_of, "seeds": [r.seed for r in self.rows],
                "runs": [r.run_dir for r in self.rows]}


@dataclass
class MethodComparison:
    """The runs of a comparison, their per-method summaries, the baseline and warnings."""

    rows: list[MethodRow]
    methods: dict[str, MethodSummary]
    baseline: str | None
    seeds: list[int]
    task_target: float | None = None
    template: str | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return redact_obj({"methods": {name: m.to_dict() for name, m in self.methods.items()},
                           "baseline": self.baseline, "seeds": self.seeds, "task_target": self.task_target,
                           "rows": [asdict(row) for row in self.rows], "template": self.template,
                           "warnings": list(self.warnings)})

    def table(self) -> tuple[list[str], list[list[str]]]:
        """Column names and formatted cells (one row per method), shared by Markdown and console."""
        header = ["method", "task after", "open-ended retained", "chat drift", "probes retained",
                  f"vs {self.baseline or 'baseline'}", "vs control", "KL to base", "text NLL change", "steps",
                  "trainable"]
        cells = []
        for summary in self.methods.values():
            row = summary.rows[0]
            preset = row.mask.split()[0]
            label = f"{summary.name} ({row.method}" + ("" if preset == "none" else f", {preset}") + ")"
            m = summary.measures
            cells.append([label, _interval(m["task"]), _interval(m.get("generative_retained"), percent=True),
                          _interval(m.get("chat_kl"), digits=3), _interval(m["probes_retained"], percent=True),
                          _difference(summary.vs_baseline), _difference(summary.vs_control),
                          _interval(m["kl_to_base"], digits=3), _interval(m["text_nll_change"], digits=4, signed=True),
                          _interval(m["steps"], digits=0), _count(row.trainable_parameters)])
        return header, cells

    def to_markdown(self) -> str:
        header, cells = self.table()
        seeds = len(self.seeds)
        lines = ["# Method comparison", "",
                 f"{seeds} seed{'s' if seeds != 1 else ''} per method ({', '.join(map(str, self.seeds))}); "
                 "mean [95% interval]"
                 + (f"; every run trained until its validation task score reached {self.task_target} "
                    "(or its step cap)" if self.task_target is not None else "") + ".", "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in cells]
        lines += ["", f"![task score against probe retention]({PARETO_PNG})", "",
                  "Task: exact match on held-out task items. Open-ended retained: general questions asked "
                  "alone, reply right when it names the right choice and no other, after / before (what a user "
                  "sees). Chat drift: KL from the base model on its own replies to general prompts "
                  "(nats/token). Probes retained: general-knowledge probe accuracy by choice ranking "
                  "after / before (blind to a model that stopped answering in its own voice). vs baseline / "
                  "vs control: the paired difference in probes retained "
                  "(percentage points; seeds and probe items resampled together). KL: mean next-token KL "
                  "divergence from the base model on held-out text (nats/token). Text NLL change: after - "
                  "before, nats/token. Intervals across seeds are Student-t.", ""]
        lines += self._difference_table()
        masks = sorted({f"{row.name}: {row.mask}" for row in self.rows if row.mask != "none"})
        if masks:
            lines.append("Masks: " + "; ".join(masks) + ".")
        lines += ["", "| run | seed | task | probes retained | KL | steps |", "|---|---|---|---|---|---|"]
        for row in self.rows:
            lines.append(f"| {row.name} | {row.seed} | {_fmt(row.task_after, 3)} | "
                         f"{'n/a' if row.probes_retained is None else f'{100 * row.probes_retained:.1f}%'} | "
                         f"{_fmt(row.kl_to_base, 3)} | {row.steps} |")
        if self.template:
            lines.append(f"\nTemplate shared by the masked runs: `{self.template}`.")
        lines += [f"- warning: {w}" for w in self.warnings]
        return redact("\n".join(lines) + "\n")


    def _difference_table(self) -> list[str]:
        """Every paired difference (probes and, where scored, held-out text), method minus reference."""
        summaries = [m for m in self.methods.values() if m.vs_baseline or m.vs_control]
        if not summaries:
            return []
        reference = self.baseline or "baseline"
        header = [f"{side}: {what}" for side in (f"vs {reference}", "vs control")
                  for what in ("probes retained", "text NLL change", "KL to base")]
        lines = ["Paired differences, method minus reference (probes in points; text NLL change and KL in "
                 "nats/token; negative text differences mean the method moved the model less):", "",
                 "| method | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
        for m in summaries:
            cells = []
            for side in (m.vs_baseline, m.vs_control):
                cells += [_difference(side), _difference((side or {}).get("text_nll_change"), scale=1.0, digits=3),
                          _difference((side or {}).get("kl_to_base"), scale=1.0, digits=3)]
            lines.append(f"| {m.name} | " + " | ".join(cells) + " |")
        return lines + [""]


def _interval(entry: dict[str, Any] | None, *, digits: int = 3, percent: bool = False, signed: bool = False) -> str:
    if not entry or entry.get("mean") is None:
        return "n/a"
    scale, unit = (100.0, "%") if percent else (1.0, "")
    sign = "+" if signed else ""
    mean, (low, high) = entry["mean"] * scale, [v * scale for v in entry["ci95"]]
    if entry.get("n", 1) < 2:
        return f"{mean:{sign}.{digits}f}{unit}" if not percent else f"{mean:.1f}{unit}"
    places = 1 if percent else digits
    return f"{mean:{sign}.{places}f}{unit} [{low:.{places}f}, {high:.{places}f}]"


def _difference(entry: dict[str, Any] | None, *, scale: float = 100.0, digits: int = 1) -> str:
    if not entry:
        return ""
    low, high = (scale * v for v in entry["ci95"])
    return f"{scale * entry['diff']:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def _count(n: int) -> str:
    """``1234567`` -> ``1.23M``: parameter counts at a glance."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


# ---- the runs ----------------------------------------------------------------------------------------

def expand_runs(recipes: Sequence[Recipe], *, seeds: int = 1, task_target: float | None = None,
                controls: bool = True) -> list[Recipe]:
    """Every run of a comparison, method by method: each recipe (and its random control when it is
    masked and ``controls``), once per seed."""
    if not recipes:
        raise RecipeError("compare needs at least one recipe")
    if seeds < 1:
        raise RecipeError(f"--seeds must be at least 1 (got {seeds})")
    names = [r.name for r in recipes]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise RecipeError(f"recipes must have different names to get their own run directories; "
                          f"{', '.join(twice)} appears more than once", "change `name:` in the recipe files")
    methods: list[Recipe] = []
    for recipe in recipes:
        if task_target is not None:
            recipe = recipe.replace(**{"train.task_target": task_target})
        methods.append(recipe)
        if controls and _is_masked(recipe) and recipe.mask.control == "none":
            methods.append(recipe.replace(**{"name": recipe.name + CONTROL_SUFFIX, "mask.control": "random"}))
    clash = sorted(set(names) & {m.name for m in methods if m.mask.control != "none"})
    if clash:
        raise RecipeError(f"recipe name {clash[0]} is also the name of a control row", "rename that recipe")
    return [m.replace(seed=m.seed + k) for m in methods for k in range(seeds)]


def _is_masked(recipe: Recipe) -> bool:
    return recipe.mask.switches() != ("none", "all")


def run_dir_for(output: Path, recipe: Recipe, seeds: int) -> Path:
    """``output/NAME`` for a single seed, ``output/NAME/seed-S`` for several."""
    return output / recipe.name if seeds == 1 else output / recipe.name / f"seed-{recipe.seed}"


def compare_recipes(recipes: Sequence[Recipe], output: str | Path, *, seeds: int = 1,
                    task_target: float | None = None, controls: bool = True, baseline: str | None = None,
                    sink: EventSink | None = None, cancel: threading.Event | None = None) -> MethodComparison:
    """Run every method (see the module docstring) into ``output`` and summarise them."""
    from fnapi.runner import run

    runs = expand_runs(recipes, seeds=seeds, task_target=task_target, controls=controls)
    sink = sink if sink is not None else NullSink()
    output = Path(output)
    built: dict[str, Path] = {}
    rows: list[MethodRow] = []
    measures: list[tuple[EvalMeasures, EvalMeasures] | None] = []
    for number, recipe in enumerate(runs, start=1):
        key = _template_key(recipe)
        if key is not None and key in built:
            recipe = recipe.replace(**{"template.path": str(built[key])})
        directory = run_dir_for(output, recipe, seeds)
        finished = _finished_run(directory, recipe)
        if finished is not None:
            report, template_path = finished
            sink.emit(Log(message=f"{recipe.name} seed {recipe.seed}: finished earlier in {directory}", stage="compare"))
        else:
            sink.emit(Log(message=f"run {number} of {len(runs)}: {recipe.name}, seed {recipe.seed}", stage="compare"))
            result = run(recipe, sink=sink, cancel=cancel, output=directory)
            report, template_path, directory = result.report, result.template_path, result.run_dir
        if key is not None and key not in built and template_path is not None:
            built[key] = Path(template_path).resolve()
        rows.append(MethodRow.from_report(recipe, report, directory))
        measures.append(_read_measures(directory))
    shared = next(iter(built.values()), None)
    names = list(dict.fromkeys(r.name for r in rows))
    chosen = baseline if baseline is not None else _default_baseline(runs)
    if chosen is not None and chosen not in names:
        raise RecipeError(f"--baseline {chosen!r} is not one of the methods ({', '.join(names)})")
    summaries = summarise(rows, measures, baseline=chosen)
    return MethodComparison(rows=rows, methods=summaries, baseline=chosen, seeds=sorted({r.seed for r in rows}),
                            task_target=task_target, template=None if shared is None else str(shared),
                            warnings=_differences(recipes))


def _default_baseline(runs: Sequence[Recipe]) -> str | None:
    """The first unmasked LoRA method, the usual reference for forgetting."""
    return next((r.name for r in runs if r.train.method == "lora" and not _is_masked(r)), None)


def _finished_run(directory: Path, recipe: Recipe) -> tuple[Any, Path | None] | None:
    """The report of a finished run of ``recipe`` in ``directory``, if there is one."""
    from fnapi.report import ForgettingReport
    from fnapi.rundir import RECIPE_FILE, is_finished

    report_file, recipe_file = directory / "report.json", directory / RECIPE_FILE
    if not (is_finished(directory) and report_file.exists() and recipe_file.exists()):
        return None
    try:
        if Recipe.from_yaml(recipe_file).fingerprint() != recipe.fingerprint():
            return None
        report = ForgettingReport.from_dict(json.loads(report_file.read_text()))
    except (RecipeError, OSError, ValueError, TypeError):
        return None
    template = directory / "template.json"
    return report, template if template.exists() else None


def _read_measures(directory: Path) -> tuple[EvalMeasures, EvalMeasures] | None:
    from fnapi.runner import MEASURES_FILE, MEASURES_FORMAT

    path = directory / MEASURES_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != MEASURES_FORMAT:
        return None
    try:
        return EvalMeasures.from_dict(data["before"]), EvalMeasures.from_dict(data["after"])
    except (KeyError, TypeError, ValueError):  # a damaged file: this run's measures are left out
        return None


# ---- statistics across seeds ------------------------------------------------------------------------

def summarise(rows: Sequence[MethodRow], measures: Sequence[tuple[EvalMeasures, EvalMeasures] | None], *,
              baseline: str | None) -> dict[str, MethodSummary]:
    """Per method: mean and interval across seeds of each measure, and paired differences in probe
    retention from ``baseline`` and from the method's control."""
    by_name: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        by_name.setdefault(row.name, []).append(index)
    summaries: dict[str, MethodSummary] = {}
    for name, indices in by_name.items():
        chosen = [rows[i] for i in indices]
        values = {"task": [r.task_after for r in chosen], "probes_retained": [r.probes_retained for r in chosen],
                  "generative_retained": [r.generative_retained for r in chosen],
                  "chat_kl": [r.chat_kl for r in chosen],
                  "kl_to_base": [r.kl_to_base for r in chosen], "text_nll_change": [r.text_nll_change for r in chosen],
                  "steps": [float(r.steps) for r in chosen]}
        stats = {key: _across_seeds(v) for key, v in values.items()}
        control = chosen[0].control
        summaries[name] = MethodSummary(name=name, control=control,
                                        control_of=name[: -len(CONTROL_SUFFIX)] if control else None,
                                        rows=chosen, measures=stats)
    for name, summary in summaries.items():
        own = [measures[i] for i in by_name[name]]
        if baseline is not None and name != baseline:
            summary.vs_baseline = paired_difference(own, [measures[i] for i in by_name[baseline]],
                                                    [rows[i].seed for i in by_name[name]],
                                                    [rows[i].seed for i in by_name[baseline]])
        partner = name + CONTROL_SUFFIX
        if partner in by_name:
            summary.vs_control = paired_difference(own, [measures[i] for i in by_name[partner]],
                                                   [rows[i].seed for i in by_name[name]],
                                                   [rows[i].seed for i in by_name[partner]])
    return summaries


def _across_seeds(values: Sequence[float | None]) -> dict[str, Any]:
    present = [v for v in values if v is not None]
    if not present:
        return {"mean": None, "ci95": None, "n": 0}
    estimate = seed_interval(present)
    return {"mean": estimate.mean, "ci95": list(estimate.ci95), "n": estimate.n}


def paired_difference(method: Sequence[tuple[EvalMeasures, EvalMeasures] | None],
                      reference: Sequence[tuple[EvalMeasures, EvalMeasures] | None],
                      method_seeds: Sequence[int], reference_seeds: Sequence[int], *,
                      resamples: int = RESAMPLES) -> dict[str, Any] | None:
    """Difference in probe retention (after / before accuracy on the main probe set), ``method`` minus
    ``reference``, over the seeds both have, with a 95% interval from a bootstrap that resamples the
    seeds and, within them, the probe items (the same items for both: the pairing cancels how hard
    each item is). None when per-item scores are missing.

    When both sides scored held-out text, ``text_nll_change`` and ``kl_to_base`` hold the same kind
    of paired difference for the change in NLL per token and for the KL to the base model, the
    paragraphs resampled with the seeds (token-weighted, as the runs' own means)."""
    ref = dict(zip(reference_seeds, reference))
    pairs = [(m, ref[s]) for m, s in zip(method, method_seeds) if s in ref and m is not None and ref[s] is not None]
    if not pairs or any(not m[0].probes or not r[0].probes for m, r in pairs):
        return None
    before = np.array([m[0].probes[0].correct for m, _ in pairs])  # seeds x items
    own = np.array([m[1].probes[0].correct for m, _ in pairs])
    other = np.array([r[1].probes[0].correct for _, r in pairs])
    other_before = np.array([r[0].probes[0].correct for _, r in pairs])
    if own.shape != other.shape:
        return None

    def retention(seed_idx: np.ndarray, item_idx: np.ndarray) -> float:
        b = before[seed_idx][:, item_idx].mean(axis=1)
        ob = other_before[seed_idx][:, item_idx].mean(axis=1)
        a = own[seed_idx][:, item_idx].mean(axis=1)
        o = other[seed_idx][:, item_idx].mean(axis=1)
        return float(np.mean(a / np.maximum(b, 1e-12) - o / np.maximum(ob, 1e-12)))

    result = _paired_bootstrap(retention, *own.shape, resamples=resamples)
    result.update(seeds=own.shape[0], items=own.shape[1])
    for key, difference in _text_differences(pairs).items():
        result[key] = _paired_bootstrap(difference, *difference.shape, resamples=resamples)
    return result


class _WeightedDifference:
    """Per seed, the token-weighted mean over paragraphs of ``own - other``; callable on resampled
    seed and paragraph indices like the retention statistic."""

    def __init__(self, delta: np.ndarray, weights: np.ndarray) -> None:
        self.delta, self.weights, self.shape = delta, weights, delta.shape

    def __call__(self, seed_idx: np.ndarray, item_idx: np.ndarray) -> float:
        d, w = self.delta[seed_idx][:, item_idx], self.weights[seed_idx][:, item_idx]
        return float(np.mean((d * w).sum(axis=1) / np.maximum(w.sum(axis=1), 1e-12)))


def _text_differences(pairs: Sequence[tuple[tuple[EvalMeasures, EvalMeasures], tuple[EvalMeasures, EvalMeasures]]],
                      ) -> dict[str, _WeightedDifference]:
    """The paired text statistics both sides of every pair can give (same paragraphs, same tokens)."""
    texts = [(m[0].texts, m[1].texts, r[0].texts, r[1].texts) for m, r in pairs]
    if not all(all(t) for t in texts):
        return {}
    firsts = [tuple(t[0] for t in group) for group in texts]
    tokens = [f[0].tokens for f in firsts]
    if any(t.tokens != tok for f, tok in zip(firsts, tokens) for t in f) or len({len(t) for t in tokens}) != 1:
        return {}
    weights = np.array(tokens, dtype=float)
    out: dict[str, _WeightedDifference] = {}
    change = np.array([np.subtract(f[1].nll, f[0].nll) - np.subtract(f[3].nll, f[2].nll) for f in firsts])
    out["text_nll_change"] = _WeightedDifference(change, weights)
    if all(f[1].kl is not None and f[3].kl is not None for f in firsts):
        out["kl_to_base"] = _WeightedDifference(np.array([np.subtract(f[1].kl, f[3].kl) for f in firsts]), weights)
    return out


def _paired_bootstrap(statistic: Any, seeds_n: int, items_n: int, *, resamples: int) -> dict[str, Any]:
    """``statistic`` on all seeds and items, and its 95% interval from resampling both together."""
    diff = statistic(np.arange(seeds_n), np.arange(items_n))
    rng = np.random.default_rng([seeds_n, items_n, 17])
    draws = [statistic(rng.integers(0, seeds_n, seeds_n), rng.integers(0, items_n, items_n))
             for _ in range(resamples)]
    low, high = np.quantile(draws, [0.025, 0.975])
    return {"diff": diff, "ci95": [float(low), float(high)]}


# ---- templates and like-for-like checks ----------------------------------------------------------------

def _template_key(recipe: Recipe) -> str | None:
    """What decides the template a recipe builds; None when it loads one or has none."""
    section = recipe.template
    if section is None or section.path:
        return None
    build = section.model_dump(mode="json", exclude={"path", "out"})
    data = list(section.data) or [recipe.data.path]
    # Attribution involves no random choice, so every seed shares one attribution template.
    seed = None if section.method == "attribution" else recipe.seed
    return json.dumps({"model": recipe.model.model_dump(mode="json"), "seed": seed, "data": data,
                       "template": build}, sort_keys=True)


def _differences(recipes: Sequence[Recipe]) -> list[str]:
    warnings = []
    for dotted in ("seed", *_SHARED):
        values = {r.name: _get(r.to_dict(), dotted) for r in recipes}
        if len({json.dumps(v) for v in values.values()}) > 1:
            shown = ", ".join(f"{name}: {value}" for name, value in values.items())
            warnings.append(f"{dotted} differs between the recipes ({shown}), so the rows are not like for like")
    return warnings


def _get(data: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        data = data.get(key) if isinstance(data, dict) else None
    return data


# ---- files ----------------------------------------------------------------------------------------------

def plot_pareto(comparison: MethodComparison) -> bytes:
    """PNG bytes: task score against retention, one point per method and seed (controls hollow). The
    retention is open-ended answers kept when every run measured them, choice ranking otherwise."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=100)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    owners = [n for n, m in comparison.methods.items() if not m.control]
    open_ended = all(r.generative_retained is not None for r in comparison.rows)
    measure = "generative_retained" if open_ended else "probes_retained"
    for name, summary in comparison.methods.items():
        owner = summary.control_of if summary.control else name
        colour = colours[(owners.index(owner) if owner in owners else len(owners)) % len(colours)]
        kept = [r for r in summary.rows if r.task_after is not None and getattr(r, measure) is not None]
        xs = [r.task_after for r in kept]
        ys = [100 * getattr(r, measure) for r in kept]
        ax.scatter(xs, ys, s=42, label=name, edgecolors=colour, facecolors="none" if summary.control else colour,
                   linewidths=1.4, marker="s" if summary.control else "o")
    if comparison.task_target is not None:
        ax.axvline(comparison.task_target, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("task score after training (exact match)")
    ax.set_ylabel("general questions answered open-ended, retained (%)" if open_ended
                  else "general-knowledge probes retained, choice ranking (%)")
    ax.set_title("task learned against knowledge kept (hollow: random-neuron controls)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def write_comparison(comparison: MethodComparison, directory: str | Path) -> tuple[Path, Path, Path]:
    """Write ``comparison.md``, ``comparison.json`` and ``pareto.png`` into ``directory`` atomically."""
    directory = Path(directory)
    picture = atomic_write_bytes(directory / PARETO_PNG, plot_pareto(comparison))
    markdown = atomic_write_text(directory / COMPARISON_MD, comparison.to_markdown())
    data = atomic_write_text(directory / COMPARISON_JSON, json.dumps(comparison.to_dict(), indent=2) + "\n")
    return markdown, data, picture
