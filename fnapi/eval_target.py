"""Score a model or a finished run on any evaluation data: what ``fnapi eval TARGET`` does.

``TARGET`` is a model spec (embedded name, local folder, ``.gguf`` file or hub id) or a run
directory. A run is scored as it was trained: its saved full model, or its base model with the
saved LoRA adapter, with the forward-pass part of its mask (ablation) in place; its base model is
scored too, so every measure comes with the paired change and its interval.

Defaults: for a run, the run's own task, probe sets, held-out text and lm-eval benchmarks
(``eval`` section of its recipe); for a model, ``builtin:probes`` and ``builtin:text``. Asking for
lm-eval benchmarks alone scores only them.

>>> result = evaluate_target("runs/quickstart", probes=["my_arc.jsonl"])  # doctest: +SKIP
>>> result.to_dict()["change"]["probe_sets"][1]["accuracy"]["change_ci95"]    # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fnapi.errors import DataError, RecipeError
from fnapi.events import EventSink, NullSink, stage
from fnapi.lm_eval_bridge import LmEvalRequest
from fnapi.measures import EvalMeasures, GenerativeRequest, build_plan, compare_measures, evaluate, read_sources
from fnapi.recipe import DataSection, Recipe

if TYPE_CHECKING:
    from fnapi.models.loading import LoadedModel


@dataclass
class TargetEvaluation:
    """The measures of a target, and for a run those of its base model and the paired changes."""

    target: str
    kind: str  # "model" or "run"
    measures: EvalMeasures
    base: EvalMeasures | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"target": self.target, "kind": self.kind, **self.measures.summary()}
        if self.base is not None:
            out["base"] = self.base.summary()
            out["change"] = compare_measures(self.base, self.measures)
        return out


def is_run_dir(target: str | Path) -> bool:
    """True when ``target`` is a folder holding a run's recipe."""
    from fnapi.rundir import RECIPE_FILE

    path = Path(target)
    return path.is_dir() and (path / RECIPE_FILE).is_file()


def evaluate_target(target: str | Path, *, probes: Sequence[str] | None = None, texts: Sequence[str] | None = None,
                    tasks: Sequence[str] | None = None, probe_samples: int | None = None, text_samples: int = 32,
                    task_samples: int = 50, lm_eval: LmEvalRequest | None = None,
                    generative: GenerativeRequest | None = None, sink: EventSink | None = None,
                    cancel: threading.Event | None = None) -> TargetEvaluation:
    """Score ``target`` (see the module docstring); ``None`` for a source list means its default.
    ``lm_eval`` adds lm-eval benchmarks (checked, data and all, before any weights load);
    ``generative`` asks the probe questions open-ended and the general prompts (for a run, its
    training answers are what the format-leak flag compares replies with)."""
    from fnapi.models.loading import load_model

    sink = sink if sink is not None else NullSink()
    run = is_run_dir(target)
    recipe = run_recipe(Path(target)) if run else None
    if lm_eval is not None and probes is None and texts is None and tasks is None:
        probes, texts, tasks = [], [], []  # the benchmarks alone were asked for
    elif lm_eval is None and recipe is not None and recipe.eval.lm_eval is not None:
        lm_eval = LmEvalRequest.from_section(recipe.eval.lm_eval)
    if recipe is not None:
        probes = list(recipe.eval.probes) if probes is None else list(probes)
        texts = ([recipe.eval.text] if recipe.eval.text else []) if texts is None else list(texts)
        tasks = [recipe.data.path] if tasks is None else list(tasks)
        task_samples = recipe.eval.task_samples if tasks == [recipe.data.path] else task_samples
        chat_template = recipe.data.chat_template
    else:
        probes = ["builtin:probes"] if probes is None else list(probes)
        texts = ["builtin:text"] if texts is None else list(texts)
        tasks = [] if tasks is None else list(tasks)
        chat_template = "auto"
    if generative is not None and not probes and not generative.chat_prompts:
        raise DataError("--generative asks probe questions open-ended and general prompts: give --probes or "
                        "--chat-prompts above 0")
    if not (probes or texts or tasks or lm_eval or generative):
        raise DataError("nothing to evaluate: give --probes, --text, --task, --lm-eval or --generative")
    if lm_eval is not None:
        from fnapi.lm_eval_bridge import check_tasks

        with stage(sink, "benchmarks", description="lm-eval tasks and their data") as progress:
            check_tasks(lm_eval)
            progress.log(f"lm-eval tasks ready: {', '.join(lm_eval.tasks)}")
    # Data sources are read before any weights load, so a bad file fails at once.
    conversations = [(source, _task_conversations(source, task_samples, recipe)) for source in tasks]
    sources = read_sources(probes=probes, probe_samples=probe_samples, texts=texts, text_samples=text_samples,
                           sink=sink)
    if generative is not None:
        from fnapi.generative import load_prompts

        if generative.chat_prompts:
            load_prompts(generative.prompts, limit=generative.chat_prompts)  # a bad file fails before the weights load
        if recipe is not None and not generative.task_answers:
            generative = replace(generative, task_answers=tuple(_training_answers(recipe)))
    loaded = load_model(recipe.model if recipe is not None else str(target), sink=sink, cancel=cancel)
    plan = build_plan(loaded.tokenizer, tasks=conversations, chat_template=chat_template, sources=sources,
                      lm_eval=lm_eval, generative=generative)
    if recipe is None:
        with stage(sink, "evaluate", total=plan.items, unit="item", cancel=cancel,
                   description=f"scores of {target}") as progress:
            measures, _ = evaluate(loaded.model, loaded.tokenizer, plan, progress=progress)
        return TargetEvaluation(str(target), "model", measures)
    with stage(sink, "baseline", total=plan.items, unit="item", cancel=cancel,
               description="scores of the base model") as progress:
        base, reference = evaluate(loaded.model, loaded.tokenizer, plan, progress=progress)
    with _trained(Path(target), recipe, loaded, sink, cancel) as model, \
            stage(sink, "evaluate", total=plan.items, unit="item", cancel=cancel,
                  description=f"scores of the run {target}") as progress:
        measures, _ = evaluate(model, loaded.tokenizer, plan, reference=reference, base=base, progress=progress)
    return TargetEvaluation(str(target), "run", measures, base)


def _training_answers(recipe: Recipe) -> list[str]:
    """The answers a run trained on (what the format-leak flag compares replies with)."""
    from fnapi.data.loading import load_data
    from fnapi.runner import task_answers

    return task_answers(load_data(recipe.data, seed=recipe.seed).train)


@dataclass(frozen=True)
class RunAnswers:
    """One prompt answered greedily by a run's model as trained and by its base model."""

    prompt: str
    tuned: str
    base: str


def ask_run(folder: str | Path, prompt: str, *, loaded: LoadedModel | None = None, max_new_tokens: int = 64,
            sink: EventSink | None = None) -> RunAnswers:
    """Ask the run in ``folder`` and its base model the same question. ``loaded`` is the base
    model already in memory (loaded from the run's recipe otherwise); it is left as it was."""
    from fnapi.models.generation import answer
    from fnapi.models.loading import load_model

    sink = sink if sink is not None else NullSink()
    folder = Path(folder)
    recipe = run_recipe(folder)
    loaded = loaded if loaded is not None else load_model(recipe.model, sink=sink)
    base = answer(loaded.model, loaded.tokenizer, prompt, max_new_tokens=max_new_tokens)
    with _trained(folder, recipe, loaded, sink, None) as model:
        tuned = answer(model, loaded.tokenizer, prompt, max_new_tokens=max_new_tokens)
    return RunAnswers(prompt, tuned, base)


def _task_conversations(source: str, samples: int, recipe: Recipe | None) -> list:
    """Held-out conversations of a task source: its test split, else its validation split."""
    from fnapi.data.loading import load_data

    section = recipe.data if recipe is not None and source == recipe.data.path else DataSection(path=source)
    data = load_data(section, seed=recipe.seed if recipe is not None else 0)
    pool = data.test if data.test else data.validation
    if not pool:
        raise DataError(f"--task {source}: no test or validation rows to score")
    return list(pool[:samples])


@dataclass
class TrainedRun:
    """A run's model as trained: its saved full model, or its base model wrapped with the saved LoRA
    adapter (``adapter`` True), with the tokenizer it trained with and ``ablation``, the mask whose
    forward-pass part (the neurons it switches off) the run carries; None when it ablates nothing."""

    recipe: Recipe
    model: Any
    tokenizer: Any
    ablation: Any  # NeuronMask | None
    adapter: bool


def run_recipe(folder: str | Path) -> Recipe:
    """The recipe a run folder recorded; a :class:`RecipeError` naming the folder when it is not a run."""
    from fnapi.rundir import RECIPE_FILE

    folder = Path(folder)
    if not is_run_dir(folder):
        raise RecipeError(f"{folder} is not a run directory (no {RECIPE_FILE} in it)",
                          "give the folder `fnapi run` wrote (it prints it last)")
    return Recipe.from_yaml(folder / RECIPE_FILE)


def trained_weights(folder: str | Path) -> Path:
    """The folder holding a run's trained weights: ``model/`` (full model, preferred) or ``adapter/``."""
    folder = Path(folder)
    for name in ("model", "adapter"):
        if (folder / name).is_dir():
            return folder / name
    raise RecipeError(f"run {folder} has no trained weights (no model/ or adapter/ folder)",
                      "the run may not have finished, or ran with output.save_model: false")


def load_trained(folder: str | Path, *, recipe: Recipe | None = None, loaded: Any = None,
                 sink: EventSink | None = None, cancel: threading.Event | None = None) -> TrainedRun:
    """Load the run in ``folder`` as it was trained (see :class:`TrainedRun`): the one place that
    knows how a run folder keeps its weights and mask. ``loaded`` is the base model already in
    memory (loaded from the recipe when a LoRA run needs it); a LoRA adapter is put into it."""
    from fnapi.masking import from_section
    from fnapi.models.loading import load_model
    from fnapi.networks.template import Template

    folder = Path(folder)
    recipe = recipe if recipe is not None else run_recipe(folder)
    weights = trained_weights(folder)
    neuron_mask = None
    if recipe.mask.switches()[0] != "none":
        template_file = folder / "template.json"
        if not template_file.is_file():
            raise RecipeError(f"run {folder} ablates neurons but has no template.json to say which")
        neuron_mask = from_section(Template.load(template_file), recipe.mask, seed=recipe.seed)
    if weights.name == "model":
        full = load_model(str(weights), dtype=recipe.model.dtype, device=recipe.model.device, sink=sink, cancel=cancel)
        return TrainedRun(recipe, full.model, full.tokenizer, neuron_mask, adapter=False)
    from peft import PeftModel

    loaded = loaded if loaded is not None else load_model(recipe.model, sink=sink, cancel=cancel)
    model = PeftModel.from_pretrained(loaded.model, str(weights))
    return TrainedRun(recipe, model, loaded.tokenizer, neuron_mask, adapter=True)


@contextlib.contextmanager
def _trained(folder: Path, recipe: Recipe, loaded: Any, sink: EventSink,
             cancel: threading.Event | None) -> Iterator[Any]:
    """The run's model as trained (full model, or base + adapter), with its ablation in place."""
    from fnapi.masking import mask
    from fnapi.runner import adapter_merged

    trained = load_trained(folder, recipe=recipe, loaded=loaded, sink=sink, cancel=cancel)
    context = mask(trained.model, trained.ablation, train="all") if trained.ablation is not None \
        else contextlib.nullcontext()
    # a LoRA run is scored with its adapter merged into the weights, as the run scored it
    merged = adapter_merged(trained.model) if trained.adapter else contextlib.nullcontext()
    try:
        with merged, context:
            yield trained.model
    finally:
        if trained.adapter:
            trained.model.unload()  # the base model the caller loaded is plain again
