"""What a recipe can be checked for before any weights load.

The recipe schema checks each field on its own. This module checks what needs the world outside
the file: that data and evaluation files exist, that the data format and field roles are known,
that the experiment trackers asked for are installed, that a template file can be read, and, when
the model's config can be read offline, that layer filters, the template's shape and the mask's
components fit that model.

``fnapi validate`` reports these problems and ``fnapi run`` refuses a recipe that has any before
it loads the model, so a run never fails on them minutes in.

>>> from fnapi.recipe import Recipe
>>> [p.path for p in preflight(Recipe.model_validate({"data": {"path": "missing.jsonl"}}))]  # doctest: +SKIP
['data.path']
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fnapi.errors import FnapiError, Problem, RecipeError

if TYPE_CHECKING:
    from fnapi.estimate import ModelShape
    from fnapi.networks.template import Template
    from fnapi.recipe import ContinualRecipe, Recipe


def preflight(recipe: Recipe) -> list[Problem]:
    """Every problem found in ``recipe`` without loading weights (an empty list: none found).

    The model's config is read (offline, no weights) to check layer filters and the template
    against the model's shape; a config that cannot be read offline skips those checks.
    """
    problems = (_model_problems(recipe) + _data_problems(recipe) + _evaluation_problems(recipe)
                + _tracker_problems(recipe) + _benchmark_problems(recipe) + _replay_problems(recipe))
    template = None
    if recipe.template is not None and recipe.template.path:
        template, problem = _read_template(recipe.template.path)
        if problem:
            problems.append(problem)
    elif recipe.template is not None and recipe.template.method == "loki":
        if not recipe.template.data:
            problems.append(Problem("template.data", "method loki attributes over multiple-choice items: name "
                                                     "them (builtin:probes or a probe file in any eval.probes layout)"))
        problems += _probe_file_problems(recipe.template.data, "template.data")
    elif recipe.template is not None:
        for index, data_spec in enumerate(recipe.template.data):
            problems += _source(f"template.data[{index}]", data_spec)
    shape, unsupported = _model_shape(recipe)
    problems += unsupported
    if shape is not None:
        problems += _shape_problems(recipe, shape, template)
    if template is not None:
        problems += _component_problems(recipe, template)
    return problems


def check_recipe(recipe: Recipe, source: str = "<recipe>") -> None:
    """Raise :class:`RecipeError` naming ``source`` and every problem :func:`preflight` finds."""
    problems = preflight(recipe)
    if problems:
        raise RecipeError.invalid(source, problems)


# ---- the checks ------------------------------------------------------------------------------------

def _model_problems(recipe: Recipe) -> list[Problem]:
    from fnapi.models.source import ModelSource

    try:
        ModelSource.parse(recipe.model.name).require_model_folder()
    except FnapiError as exc:
        return [Problem("model.name", exc.message)]
    return []


def _data_problems(recipe: Recipe) -> list[Problem]:
    from fnapi.data.formats import ROLES, canonical_format

    data = recipe.data
    problems = _source("data.path", data.path)
    if data.validation_path:
        problems += _source("data.validation_path", data.validation_path)
    try:
        canonical_format(data.format)
    except FnapiError as exc:
        problems.append(Problem("data.format", exc.message))
    for name, role in data.fields.items():
        if role not in ROLES:
            problems.append(Problem(f"data.fields.{name}", f"unknown role {role!r}; roles are {', '.join(ROLES)}"))
    return problems


def _source(where: str, data_spec: str) -> list[Problem]:
    from fnapi.data.loading import source_problem

    problem = source_problem(data_spec)
    return [Problem(where, problem)] if problem else []


def _evaluation_problems(recipe: Recipe) -> list[Problem]:
    problems = [Problem(where, f"file not found: {value}") for where, value in recipe.evaluation_files()
                if not Path(value).expanduser().exists()]
    if problems or not recipe.eval.enabled:
        return problems
    return _probe_file_problems(recipe.eval.probes) + _prompt_problems(recipe.eval.generative, "eval.generative")


def _probe_file_problems(sources: list[str], where: str = "eval.probes") -> list[Problem]:
    """Probe files are read (no model needed): a row whose answer is none of its choices is named."""
    from fnapi.data.probes import is_builtin, load_probes

    problems = []
    for index, source in enumerate(sources):
        if is_builtin(source):
            continue
        try:
            load_probes(source)
        except FnapiError as exc:
            problems.append(Problem(f"{where}[{index}]", exc.message))
    return problems


def _replay_problems(recipe: Recipe) -> list[Problem]:
    """``train.replay`` and ``train.kl_to_base``: their prompts can be read and none is a question of a
    probe set the run scores."""
    from fnapi.data.probes import load_probes
    from fnapi.replay import check_prompts

    sections = [(name, getattr(recipe.train, name)) for name in ("replay", "kl_to_base")
                if getattr(recipe.train, name) is not None]
    if not sections:
        return []
    sets = []
    for source in recipe.eval.probes:
        try:
            sets.append((source, load_probes(source).items))
        except FnapiError:  # named under eval.probes
            continue
    problems = []
    for name, section in sections:
        where = f"train.{name}.prompts"
        try:
            check_prompts(section, sets, where)
        except FnapiError as exc:
            problems.append(Problem(where, exc.message.removeprefix(f"{where}: ")))
    return problems


def _prompt_problems(section, where: str) -> list[Problem]:
    """The general prompts of an ``eval.generative`` section can be read."""
    from fnapi.generative import load_prompts

    if not section.enabled or not section.chat_prompts:
        return []
    try:
        load_prompts(section.prompts, limit=section.chat_prompts)
    except FnapiError as exc:
        return [Problem(f"{where}.prompts", exc.message)]
    return []


def _tracker_problems(recipe: Recipe) -> list[Problem]:
    from fnapi.trackers import missing

    return [Problem(f"train.report_to[{index}]", problem) for index, name in enumerate(recipe.train.report_to)
            if (problem := missing(name))]


def _benchmark_problems(recipe: Recipe) -> list[Problem]:
    """``eval.lm_eval``: lm-eval installed, the include folder there, every task name known to lm-eval
    (its task index is read from disk: no data, no network)."""
    from fnapi import lm_eval_bridge

    section = recipe.eval.lm_eval
    if section is None or not recipe.eval.enabled:
        return []
    if not lm_eval_bridge.installed():
        return [Problem("eval.lm_eval", f"lm-eval is not installed. {lm_eval_bridge.INSTALL_HINT}")]
    return lm_eval_bridge.task_problems(section.tasks, section.include, tasks_at="eval.lm_eval.tasks",
                                        include_at="eval.lm_eval.include")


def _read_template(path: str) -> tuple[Template | None, Problem | None]:
    from fnapi.networks.template import Template

    try:
        return Template.load(path), None
    except FnapiError as exc:
        return None, Problem("template.path", exc.message)


def _model_shape(recipe: Recipe) -> tuple[ModelShape | None, list[Problem]]:
    """The model's shape from its config, and the problem when its architecture is one fnapi cannot
    train; no shape (and no problem) when the config cannot be read offline: loading will say why."""
    from fnapi.errors import UnsupportedArchitectureError
    from fnapi.estimate import model_shape

    try:
        return model_shape(recipe.model.name, trust_remote_code=recipe.model.trust_remote_code), []
    except UnsupportedArchitectureError as exc:
        return None, [Problem("model.name", exc.message)]
    except (FnapiError, ValueError, KeyError, OSError):  # transformers cannot build it from the config
        return None, []


def _shape_problems(recipe: Recipe, shape: ModelShape, template: Template | None) -> list[Problem]:
    from fnapi.recipe import parse_layers

    problems = []
    filters = [("mask.layers", recipe.mask.layers)]
    if recipe.template is not None:
        filters.insert(0, ("template.layers", recipe.template.layers))
    for where, layer_filter in filters:
        try:
            if not parse_layers(layer_filter, shape.num_layers):
                problems.append(Problem(where, f"layer filter {layer_filter!r} selects no layer of {shape.name} "
                                               f"({shape.num_layers} layers)"))
        except RecipeError as exc:
            problems.append(Problem(where, f"{exc.message} ({shape.name})"))
    if template is not None:
        info = {"num_layers": shape.num_layers, "hidden_size": shape.hidden,
                "intermediate_size": shape.intermediate, "name": shape.name}
        try:
            template.check_compatible(info)
        except FnapiError as exc:
            problems.append(Problem("template.path", f"{recipe.template.path}: {exc.message}"))
    return problems


def _component_problems(recipe: Recipe, template: Template) -> list[Problem]:
    components = recipe.mask.components
    if not isinstance(components, list):
        return []
    known = {component.id for component in template.components}
    missing = [c for c in components if c not in known]
    if not missing:
        return []
    return [Problem("mask.components", f"component {', '.join(map(str, missing))} is not in "
                                       f"{recipe.template.path}; it has {', '.join(map(str, sorted(known)))}")]


def preflight_continual(recipe: ContinualRecipe) -> list[Problem]:
    """Every problem found in a continual recipe without loading weights: each task's data, the
    probe files, the methods' template data and files, the trackers, the model."""
    from fnapi.recipe import Masked

    problems = _model_problems(recipe)  # type: ignore[arg-type]
    for index, task in enumerate(recipe.tasks):
        problems += _source(f"tasks[{index}].data.path", task.data.path)
        if task.data.validation_path:
            problems += _source(f"tasks[{index}].data.validation_path", task.data.validation_path)
    problems += [Problem(f"eval.probes[{index}]", f"file not found: {value}")
                 for index, value in enumerate(recipe.eval.probes)
                 if not value.startswith("builtin:") and not Path(value).expanduser().exists()]
    problems += [Problem(f"train.report_to[{index}]", problem) for index, name in enumerate(recipe.train.report_to)
                 if (problem := _missing_tracker(name))]
    for index, method in enumerate(recipe.methods):
        template = getattr(method, "template", None)
        if template is None:
            continue
        if template.path:
            _, problem = _read_template(template.path)
            if problem:
                problems.append(Problem(f"methods[{index}].template.path", problem.message))
        for number, data_spec in enumerate(template.data):
            problems += _source(f"methods[{index}].template.data[{number}]", data_spec)
        if isinstance(method, Masked) and method.mask.switches() == ("none", "all"):
            problems.append(Problem(f"methods[{index}].mask", "the mask changes nothing (preset none); use "
                                                              "sequential_lora for an unmasked method"))
    return problems


def check_continual(recipe: ContinualRecipe, source: str = "<recipe>") -> None:
    """Raise :class:`RecipeError` naming ``source`` and every problem :func:`preflight_continual` finds."""
    problems = preflight_continual(recipe)
    if problems:
        raise RecipeError.invalid(source, problems)


def _missing_tracker(name: str) -> str | None:
    from fnapi.trackers import missing

    return missing(name)
