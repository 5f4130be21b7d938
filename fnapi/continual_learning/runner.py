"""``continual(recipe)``: every method learns the tasks one after another, in every order, per seed.

One *sequence* is one (method, order, seed). It loads the base model, scores every task on it (the
accuracy matrix's row 0), then for each task in turn: the method prepares the model
(:mod:`fnapi.continual_learning.methods`), :func:`fnapi.training.train` fine-tunes it with a new Trainer (so
every task starts a fresh optimizer and learning-rate schedule), the method takes what it keeps
(a Fisher, a snapshot, the task's networks), and every task and the general probes are scored
again: one more row. The single-task baselines (each task trained alone from the base model, for
forward transfer) are one more unit of work per seed.

Every unit is resumable. A sequence writes, after each finished task, the model and the method's
memory (``state-<i>/``) and then ``progress.json`` with the rows so far; a task cut off by a kill
resumes from its training checkpoint (``task-<i>/checkpoints``). Finished sequences leave
``result.json`` (:mod:`fnapi.continual_learning.results` owns the paths and the file), which the summary
reads. Units are independent, so a SLURM array runs one per element (``element=``).

>>> summary = continual(ContinualRecipe.from_yaml("recipes/continual/quick.yaml"),  # doctest: +SKIP
...                     output="runs/continual", sink=console_sink())
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fnapi.errors import DataError, RecipeError
from fnapi.events import CompositeSink, EventSink, JsonlSink, Log, Metric, NullSink, RunFinished, RunStarted, stage
from fnapi.paths import atomic_write_text
from fnapi.recipe import ContinualRecipe, SequentialLora

if TYPE_CHECKING:
    from fnapi.data.formats import Conversation
    from fnapi.models.loading import LoadedModel

RECIPE_FILE = "recipe.yaml"
BASE_FILE = "base.json"
BASE_FORMAT = "fnapi.continual-base/1"
PROGRESS_FILE = "progress.json"
PROGRESS_FORMAT = "fnapi.continual-progress/1"
#: Each task of a sequence trains with its own seed, so a new adapter per task does not start where
#: the last one started, and the data order differs between tasks.
TASK_SEED_STRIDE = 1000


@dataclass(frozen=True)
class Element:
    """One independent unit of work: a sequence (method, order, seed), or the single-task baselines
    of a seed (``method`` None)."""

    method: str | None
    order_index: int
    seed: int

    def describe(self) -> str:
        if self.method is None:
            return f"single-task baselines, seed {self.seed}"
        return f"{self.method}, order {self.order_index + 1}, seed {self.seed}"


def elements(recipe: ContinualRecipe) -> list[Element]:
    """Every unit of work, in the order they run (and the SLURM array's element numbers): seed by
    seed, so a long experiment stopped part way has every method on its first seeds."""
    units = []
    for seed in recipe.seeds:
        if recipe.single_task:
            units.append(Element(None, 0, seed))
        units += [Element(method.label, k, seed) for method in recipe.methods for k in range(len(recipe.task_orders))]
    return units


def continual(recipe: ContinualRecipe, *, output: str | Path | None = None, sink: EventSink | None = None,
              cancel: threading.Event | None = None, element: int | None = None,
              source: str | None = None) -> Any:
    """Run every sequence of ``recipe`` into ``output`` (default: the recipe's ``output.dir``) and
    write the summary; return it (:class:`~fnapi.continual_learning.summary.ContinualSummary`).

    Finished units are read, unfinished ones resume. With ``element`` only that unit runs (a SLURM
    array element) and nothing is summarised (None is returned); :func:`summarize_folder` does that
    once the elements are done. ``source`` names the recipe in errors.
    """
    from fnapi.preflight import check_continual

    source = source or f"recipe {recipe.name!r}"
    check_continual(recipe, source)
    root = Path(output) if output is not None else recipe.output_dir()
    units = elements(recipe)
    if element is not None and not 0 <= element < len(units):
        raise RecipeError(f"element {element} does not exist: {source} has {len(units)} (0-{len(units) - 1})",
                          "see `fnapi continual RECIPE --list`")
    _claim(recipe, root, source)
    events = sink if sink is not None else NullSink()
    started = time.monotonic()
    events.emit(RunStarted(name=recipe.name, run_dir=str(root)))
    chosen = [units[element]] if element is not None else units
    for number, unit in enumerate(chosen, start=1):
        events.emit(Log(message=f"[{number}/{len(chosen)}] {unit.describe()}", stage="continual"))
        run_element(recipe, unit, root, sink=events, cancel=cancel)
    if element is not None:
        return None
    summary = summarize_folder(recipe, root)
    events.emit(RunFinished(name=recipe.name, seconds=time.monotonic() - started, run_dir=str(root),
                            summary={name: {"aa": m.aa.mean, "bwt": m.bwt.mean if m.bwt else None}
                                     for name, m in summary.methods.items()}))
    return summary


def summarize_folder(recipe: ContinualRecipe, root: str | Path) -> Any:
    """Read every finished sequence under ``root`` and write continual.json, continual.md and matrix.png."""
    from fnapi.continual_learning.results import collect_runs
    from fnapi.continual_learning.summary import summarize, write_outputs

    root = Path(root)
    runs = collect_runs(root)
    if not runs:
        raise DataError(f"{root} holds no finished sequence to summarise",
                        "run `fnapi continual RECIPE --output DIR` (or the SLURM array) first")
    summary = summarize(runs, [task.name for task in recipe.tasks])
    write_outputs(summary, root)
    return summary


def _claim(recipe: ContinualRecipe, root: Path, source: str) -> None:
    """The output folder belongs to one experiment: a recipe that adds methods, seeds or orders joins it
    (the folder's recipe becomes the union), one that changes what was run is refused, not mixed."""
    path = root / RECIPE_FILE
    if path.exists():
        try:
            earlier = ContinualRecipe.from_yaml(path)
        except RecipeError:
            raise RecipeError(f"{root} holds the results of another continual recipe ({path} cannot be read)",
                              "use another --output folder, or delete that one to start over") from None
        try:
            union = recipe.extends(earlier)
        except ValueError as exc:
            raise RecipeError(f"{root} holds the results of another continual recipe ({path} differs from {source}: "
                              f"{exc})", "use another --output folder, or delete that one to start over") from None
        if union.fingerprint() != earlier.fingerprint():
            union.to_yaml(path)
        return
    root.mkdir(parents=True, exist_ok=True)
    recipe.to_yaml(path)


# ---- one unit --------------------------------------------------------------------------------------

def run_element(recipe: ContinualRecipe, unit: Element, root: Path, *, sink: EventSink,
                cancel: threading.Event | None = None) -> None:
    """Run (or resume, or skip when finished) one unit of work."""
    from fnapi.continual_learning.results import run_result_path, single_result_path

    if unit.method is None:
        if all(single_result_path(root, task.name, unit.seed).exists() for task in recipe.tasks):
            sink.emit(Log(message=f"{unit.describe()}: finished earlier", stage="continual"))
            return
        folder = single_result_path(root, recipe.tasks[0].name, unit.seed).parent
    else:
        result = run_result_path(root, unit.method, unit.order_index, unit.seed)
        if result.exists():
            sink.emit(Log(message=f"{unit.describe()}: finished earlier", stage="continual"))
            return
        folder = result.parent
    folder.mkdir(parents=True, exist_ok=True)
    jsonl = JsonlSink(folder / "events.jsonl")
    events = CompositeSink(sink, jsonl)
    try:
        if unit.method is None:
            _single_tasks(recipe, unit.seed, root, events, cancel)
        else:
            _sequence(recipe, unit, folder, root, events, cancel)
    finally:
        jsonl.close()


@dataclass
class _Task:
    """A task's rows for one seed: what trains and what is scored."""

    name: str
    train: list[Conversation]
    scored: list[Conversation]


def _read_tasks(recipe: ContinualRecipe, seed: int) -> dict[str, _Task]:
    from fnapi.data import load_data
    from fnapi.data.labels import ClassLabels

    tasks = {}
    for task in recipe.tasks:
        labels = None if task.labels is None else ClassLabels(
            tuple(task.labels), task.instruction, task.label_field, tuple(task.text_fields or ()) or None)
        data = load_data(task.data, seed=seed, shuffle=task.shuffle, labels=labels)
        pool = data.test if data.test else data.validation
        if not pool:
            raise DataError(f"{task.data.path}: task {task.name!r} has no test or validation rows to score",
                            f"set tasks[...].data.validation_split above 0 for {task.name}")
        tasks[task.name] = _Task(task.name, list(data.train), list(pool[: recipe.eval.task_samples]))
    return tasks


class _Scorer:
    """Scores a model on tasks and the general probes, the same way for every row."""

    def __init__(self, recipe: ContinualRecipe, loaded: LoadedModel, tasks: dict[str, _Task]) -> None:
        from fnapi.data.probes import load_probes
        from fnapi.evaluation import SCORERS

        self.recipe, self.tokenizer, self.tasks = recipe, loaded.tokenizer, tasks
        self.scorer = SCORERS[recipe.tasks[0].metric]
        self.chat_template = recipe.tasks[0].data.chat_template
        self.probes = (list(load_probes(recipe.eval.probes[0], limit=recipe.eval.probe_samples).items)
                       if recipe.eval.probes else [])

    def tasks_only(self, model: Any, names: list[str], sink: EventSink, cancel: threading.Event | None,
                   what: str) -> list[float]:
        return self.score(model, names, sink, cancel, what, probes=False)[0]

    def score(self, model: Any, names: list[str], sink: EventSink, cancel: threading.Event | None, what: str,
              probes: bool = True) -> tuple[list[float], list[float]]:
        """``(task scores in the order of names, per-item probe correctness)``."""
        from fnapi.measures import measure_probes, measure_task
        from fnapi.runner import adapter_merged

        items = sum(len(self.tasks[n].scored) for n in names) + (len(self.probes) if probes else 0)
        with adapter_merged(model), stage(sink, "evaluate", total=items, unit="item", cancel=cancel,
                                          description=what) as progress:
            scores = []
            for name in names:
                rows = self.tasks[name].scored
                per_item = measure_task(model, self.tokenizer, rows, self.scorer,
                                        max_new_tokens=self.recipe.eval.max_new_tokens,
                                        chat_template=self.chat_template,
                                        on_items=lambda done, n=name: progress.advance(done, message=f"task {n}"))
                scores.append(sum(per_item) / len(per_item))
            correct: list[float] = []
            if probes and self.probes:
                measure = measure_probes(model, self.tokenizer, self.probes, source=self.recipe.eval.probes[0],
                                         chat_template=self.chat_template,
                                         on_items=lambda done: progress.advance(done, message="probes"))
                correct = list(measure.correct)
            progress.metric({f"task_{n}": s for n, s in zip(names, scores)}
                            | ({"probes": sum(correct) / len(correct)} if correct else {}))
        return scores, correct


def _base_scores(recipe: ContinualRecipe, root: Path, loaded: LoadedModel, scorer: _Scorer, sink: EventSink,
                 cancel: threading.Event | None) -> dict[str, Any]:
    """The base model's score on every task and probe item; measured once per output folder (every
    sequence shares them: same model, same scored rows)."""
    names = [task.name for task in recipe.tasks]
    key = hashlib.sha256(json.dumps(
        [recipe.model.model_dump(mode="json"), recipe.eval.model_dump(mode="json"),
         [[c.messages for c in scorer.tasks[n].scored] for n in names]], sort_keys=True, default=str
    ).encode()).hexdigest()[:16]
    path = root / BASE_FILE
    if path.exists():
        try:
            stored = json.loads(path.read_text())
            if stored.get("format") == BASE_FORMAT and stored.get("key") == key:
                sink.emit(Log(message=f"base model scores: read from {path}", stage="evaluate"))
                return stored
        except (OSError, ValueError):
            pass  # measured again below
    tasks, probes = scorer.score(loaded.model, names, sink, cancel, "the base model on every task")
    stored = {"format": BASE_FORMAT, "key": key, "tasks": dict(zip(names, tasks)), "probes": probes}
    atomic_write_text(path, json.dumps(stored) + "\n")
    return stored


def _tokenizer_for(recipe: ContinualRecipe, loaded: LoadedModel, sink: EventSink, cancel: threading.Event | None):
    from fnapi.data import tokenize

    def encode(rows: list[Conversation], task: str) -> Any:
        section = recipe.task(task).data
        data = tokenize(rows, loaded.tokenizer, chat_template=section.chat_template, max_length=section.max_length,
                        sink=sink, cancel=cancel)
        if len(data) == 0:
            raise DataError(f"{section.path}: no training example of task {task!r} has a token to learn",
                            "check the format with `fnapi data inspect` and the task's data.max_length")
        return data

    return encode


def _sequence(recipe: ContinualRecipe, unit: Element, folder: Path, root: Path, sink: EventSink,
              cancel: threading.Event | None) -> None:
    import transformers

    from fnapi.continual_learning.methods import TaskContext, make_strategy
    from fnapi.continual_learning.results import ContinualRun, run_result_path
    from fnapi.models.loading import load_model
    from fnapi.training import train

    section = next(method for method in recipe.methods if method.label == unit.method)
    order = recipe.task_orders[unit.order_index]
    transformers.set_seed(unit.seed)
    loaded = load_model(recipe.model, sink=sink, cancel=cancel)
    tasks = _read_tasks(recipe, unit.seed)
    scorer = _Scorer(recipe, loaded, tasks)
    base = _base_scores(recipe, root, loaded, scorer, sink, cancel)
    encode = _tokenizer_for(recipe, loaded, sink, cancel)
    strategy = make_strategy(section, recipe)
    progress = _read_progress(folder, unit, order)
    done = progress["finished"]
    model = loaded.model
    if done:
        state = folder / f"state-{len(done)}"
        model = strategy.load_state(model, state, loaded)
        sink.emit(Log(message=f"resuming after task {len(done)} of {len(order)} ({order[len(done) - 1]}), "
                              f"from {state}", stage="continual"))
    for index in range(len(done), len(order)):
        name = order[index]
        task = recipe.task(name)
        seed = unit.seed + TASK_SEED_STRIDE * index
        ctx = TaskContext(index=index, name=name, train_rows=tasks[name].train, data=task.data,
                          tokenize=lambda rows, n=name: encode(rows, n), loaded=loaded, seed=unit.seed,
                          sink=sink, cancel=cancel)
        sink.emit(Log(message=f"task {index + 1} of {len(order)}: {name} ({unit.describe()})", stage="continual"))
        model, plan = strategy.before_task(model, ctx, recipe.train_for(section, task))
        tokens = encode(tasks[name].train + list(plan.extra_rows), name)
        started = time.monotonic()
        with plan.constraint(model) if plan.constraint else contextlib.nullcontext():
            result = train(model, loaded.tokenizer, tokens, None, plan.train_section, mask=plan.neuron_mask,
                           loss_term=plan.loss_term, output_dir=folder / f"task-{index + 1}", seed=seed, sink=sink,
                           cancel=cancel, resume=True, save_model=False,
                           run_name=f"{recipe.name}-{unit.method}-o{unit.order_index + 1}-s{unit.seed}-{name}")
        model = strategy.after_task(result.model, ctx)
        row, correct = scorer.score(model, order, sink, cancel, f"every task after {name} (task {index + 1})")
        sink.emit(Metric(stage="continual", step=index + 1,
                         values={f"task_{n}": s for n, s in zip(order, row)}
                         | ({"probes": sum(correct) / len(correct)} if correct else {})))
        # The model and the method's memory first, then the progress that points at them: a unit
        # killed in between redoes this task's scoring from its finished training checkpoint.
        _save_state(strategy, model, folder / f"state-{index + 1}")
        done.append({"task": name, "row": row, "probes": correct, "steps": result.steps,
                     "final_loss": result.final_loss, "seconds": time.monotonic() - started})
        _write_progress(folder, progress)
        _forget(folder, index)
    rows = [[base["tasks"][n] for n in order]] + [entry["row"] for entry in done]
    probe_rows = [base["probes"]] + [entry["probes"] for entry in done]
    run = ContinualRun(method=unit.method, order=list(order), order_index=unit.order_index, seed=unit.seed,
                       matrix=rows, single_task=None,
                       probes=[_mean(p) for p in probe_rows] if all(probe_rows) else [],
                       probes_change_ci95=_change_interval(probe_rows[0], probe_rows[-1]),
                       seconds=sum(entry["seconds"] for entry in done), steps=[entry["steps"] for entry in done])
    run.save(run_result_path(root, unit.method, unit.order_index, unit.seed))
    shutil.rmtree(folder / f"state-{len(order)}", ignore_errors=True)  # the result is written; weights not kept
    sink.emit(Log(message=f"{unit.describe()}: finished", stage="continual"))


def _single_tasks(recipe: ContinualRecipe, seed: int, root: Path, sink: EventSink,
                  cancel: threading.Event | None) -> None:
    """Each task trained alone from the base model with plain LoRA (the reference of forward transfer)."""
    import transformers

    from fnapi.continual_learning.results import SingleTaskResult, single_result_path
    from fnapi.models.loading import load_model
    from fnapi.training import train

    reference = SequentialLora()
    tasks = None
    for task in recipe.tasks:
        path = single_result_path(root, task.name, seed)
        if path.exists():
            continue
        transformers.set_seed(seed)
        loaded = load_model(recipe.model, sink=sink, cancel=cancel)
        tasks = tasks or _read_tasks(recipe, seed)
        scorer = _Scorer(recipe, loaded, tasks)
        encode = _tokenizer_for(recipe, loaded, sink, cancel)
        sink.emit(Log(message=f"single task {task.name} from the base model (seed {seed})", stage="continual"))
        started = time.monotonic()
        result = train(loaded, None, encode(tasks[task.name].train, task.name), None,
                       recipe.train_for(reference, task), output_dir=path.parent / task.name, seed=seed,
                       sink=sink, cancel=cancel, resume=True, save_model=False,
                       run_name=f"{recipe.name}-single-s{seed}-{task.name}")
        score = scorer.tasks_only(result.model, [task.name], sink, cancel, f"{task.name} after training it alone")[0]
        SingleTaskResult(task=task.name, seed=seed, score=score, steps=result.steps,
                         seconds=time.monotonic() - started).save(path)
        shutil.rmtree(path.parent / task.name, ignore_errors=True)


# ---- progress and state ------------------------------------------------------------------------------

def _read_progress(folder: Path, unit: Element, order: list[str]) -> dict[str, Any]:
    """The tasks this sequence finished before, checked against what it is asked to do now."""
    path = folder / PROGRESS_FILE
    fresh = {"format": PROGRESS_FORMAT, "method": unit.method, "order": order, "seed": unit.seed, "finished": []}
    if not path.exists():
        return fresh
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the sequence's progress ({exc})",
                        f"delete {folder} to run this sequence again from the start") from None
    if not isinstance(stored, dict) or stored.get("format") != PROGRESS_FORMAT or stored.get("order") != order \
            or stored.get("method") != unit.method or stored.get("seed") != unit.seed:
        raise DataError(f"{path} records another sequence than {unit.describe()}",
                        f"delete {folder} to run this sequence again from the start")
    finished = stored.get("finished", [])
    if not (folder / f"state-{len(finished)}").is_dir() and finished:
        raise DataError(f"{path} says {len(finished)} task(s) finished but {folder / f'state-{len(finished)}'} "
                        "is missing", f"delete {folder} to run this sequence again from the start")
    return stored


def _write_progress(folder: Path, progress: dict[str, Any]) -> None:
    atomic_write_text(folder / PROGRESS_FILE, json.dumps(progress) + "\n")


def _save_state(strategy: Any, model: Any, target: Path) -> None:
    """The method's state written under a temporary name and renamed into place."""
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    strategy.save_state(model, partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)


def _forget(folder: Path, index: int) -> None:
    """Once task ``index`` is recorded, its checkpoints and the state before it are not needed again."""
    shutil.rmtree(folder / f"task-{index + 1}" / "checkpoints", ignore_errors=True)
    if index > 0:
        shutil.rmtree(folder / f"state-{index}", ignore_errors=True)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _change_interval(before: list[float], after: list[float]) -> list[float] | None:
    from fnapi.measures import paired_change

    if not before or not after or len(before) != len(after):
        return None
    return [float(v) for v in paired_change(before, after).ci95]
