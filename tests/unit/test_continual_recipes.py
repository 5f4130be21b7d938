"""The shipped continual recipes validate offline; labelled tasks are checked in the recipe and read by the runner."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from fnapi.cli import main
from fnapi.errors import RecipeError
from fnapi.recipe import ContinualRecipe, load_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "continual"
CONTINUAL_RECIPES = sorted(RECIPES.glob("*.yaml"))

ORDERS_STANDARD = [["dbpedia", "amazon", "yahoo", "ag_news"],
                   ["dbpedia", "amazon", "ag_news", "yahoo"],
                   ["yahoo", "amazon", "ag_news", "dbpedia"]]
ORDERS_LONG = [
    "mnli cb wic copa qqp boolq rte imdb yelp amazon sst2 dbpedia ag_news multirc yahoo".split(),
    "multirc boolq wic mnli cb copa qqp rte imdb sst2 dbpedia ag_news yelp amazon yahoo".split(),
    "yelp amazon mnli cb copa qqp rte imdb sst2 dbpedia ag_news yahoo multirc boolq wic".split(),
]
METHODS = ["sequential_lora", "replay", "ewc", "lwf", "olora", "protect", "subspace", "masked"]


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to reach the hub (a socket, the hub probe, a dataset download) is recorded and refused."""
    import datasets

    from fnapi import auth

    attempts: list[str] = []

    def refuse(what):
        def refused(*args, **kwargs):
            attempts.append(what)
            raise OSError(f"network disabled in tests ({what})")
        return refused

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(auth, "hub_reachable", refuse("hub_reachable"))
    monkeypatch.setattr(datasets, "load_dataset", refuse("load_dataset"))
    return attempts


def test_the_doc_recipes_are_shipped():
    assert {p.name for p in CONTINUAL_RECIPES} >= {"doc-standard.yaml", "doc-long.yaml"}


@pytest.mark.parametrize("path", CONTINUAL_RECIPES, ids=lambda p: p.name)
def test_every_continual_recipe_loads(path):
    recipe = load_recipe(path)
    assert isinstance(recipe, ContinualRecipe)
    assert path.read_text().startswith("#")  # says what it is before the settings


@pytest.mark.parametrize("path", CONTINUAL_RECIPES, ids=lambda p: p.name)
def test_fnapi_validate_checks_every_continual_recipe_without_the_network(path, no_network, capsys):
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
    assert no_network == []


def test_the_standard_recipe_is_the_doc_protocol():
    recipe = load_recipe(RECIPES / "doc-standard.yaml")
    assert recipe.task_orders == ORDERS_STANDARD
    assert [m.method for m in recipe.methods] == METHODS
    classes = {task.name: len(task.labels) for task in recipe.tasks}
    assert classes == {"dbpedia": 14, "amazon": 5, "yahoo": 10, "ag_news": 4}
    for task in recipe.tasks:
        assert task.shuffle and task.data.max_samples == 1000, task.name
    assert "network" in (RECIPES / "doc-standard.yaml").read_text().split("version:")[0].lower()


def test_the_long_recipe_has_the_fifteen_tasks_in_orders_four_to_six():
    recipe = load_recipe(RECIPES / "doc-long.yaml")
    assert recipe.task_orders == ORDERS_LONG
    assert [m.method for m in recipe.methods] == METHODS
    assert all(task.labels for task in recipe.tasks)
    configs = {task.name: task.data.path for task in recipe.tasks}
    assert configs["mnli"] == "nyu-mll/glue:mnli" and configs["cb"] == "aps/super_glue:cb"
    assert "network" in (RECIPES / "doc-long.yaml").read_text().split("version:")[0].lower()


def test_the_two_recipes_label_their_shared_tasks_alike():
    standard = {t.name: t for t in load_recipe(RECIPES / "doc-standard.yaml").tasks}
    long = {t.name: t for t in load_recipe(RECIPES / "doc-long.yaml").tasks}
    for name, task in standard.items():
        assert long[name] == task, name


# ---- labelled tasks in a recipe ----------------------------------------------------------------------

def _recipe(task: dict, **more) -> dict:
    return {"kind": "continual", "tasks": [task, {"name": "b", "data": "builtin:skill"}], "methods": ["ewc"], **more}


@pytest.mark.parametrize(("task", "message"), [
    ({"labels": ["only"]}, "at least two class names"),
    ({"labels": ["a", "a", "b"]}, "'a' is listed more than once"),
    ({"labels": ["a", " "]}, "non-empty"),
    ({"instruction": "Classify."}, "instruction only applies with labels"),
    ({"label_field": "topic"}, "label_field only applies with labels"),
    ({"labels": ["a", "b"], "data": "builtin:text"}, "builtin:text holds conversations"),
    ({"labels": ["a", "b"], "data": {"path": "x.jsonl", "format": "alpaca"}}, "leave data.format and data.fields"),
    ({"labels": ["a", "b"], "text_fields": []}, "text_fields"),
    ({"labels": ["a", "b"], "metric": "bleu"}, "metric"),
])
def test_bad_labelled_tasks_are_refused_naming_the_field(task, message):
    with pytest.raises(RecipeError) as info:
        ContinualRecipe.from_dict(_recipe({"name": "a", "data": "x.jsonl", **task}), source="doc.yaml")
    assert message in info.value.message
    assert "doc.yaml" in info.value.message and "tasks[0]" in info.value.message


def test_the_runner_reads_a_labelled_task_as_prompts_and_class_names(tmp_path):
    from fnapi.continual_learning.runner import _read_tasks

    rows = [{"idx": i, "title": f"T{i}", "content": f"C{i}", "label": i % 2} for i in range(40)]
    rows[5]["label"] = -1
    path = tmp_path / "topics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = ContinualRecipe.from_dict(_recipe(
        {"name": "topics", "data": {"path": str(path), "max_samples": 10}, "shuffle": True,
         "labels": ["Company", "Artist"], "instruction": "Topic?"}))
    tasks = _read_tasks(recipe, seed=0)
    topics = tasks["topics"]
    assert len(topics.train) == 10 and topics.scored
    for conversation in topics.train + topics.scored:
        number = conversation.row - 1
        assert number != 5  # the unlabelled row is left out
        assert conversation.messages == [
            {"role": "user", "content": f"Topic?\n\ntitle: T{number}\ncontent: C{number}"},
            {"role": "assistant", "content": ["Company", "Artist"][number % 2]}]
    assert [c.row for c in topics.train] != list(range(1, 11))  # shuffled before max_samples
    assert tasks["b"].train  # an unlabelled task is read as before


# ---- one output folder, one experiment: more methods or seeds join it ----------------------------------

def _experiment(methods: list, seeds: list[int]) -> ContinualRecipe:
    return ContinualRecipe.model_validate({
        "kind": "continual", "seeds": seeds, "tasks": [{"name": "a", "data": "builtin:skill"},
                                                       {"name": "b", "data": "builtin:order"}],
        "methods": methods})


def test_a_recipe_with_more_methods_and_seeds_extends_the_earlier_one():
    earlier = _experiment(["sequential_lora", {"method": "ewc", "strength": 10.0}], [0, 1])
    later = _experiment(["sequential_lora", "lwf"], [1, 2])
    union = later.extends(earlier)
    assert [m.label for m in union.methods] == ["sequential_lora", "ewc", "lwf"]
    assert union.seeds == [0, 1, 2]
    assert union.methods[1].strength == 10.0  # the earlier method is kept as it was run
    assert earlier.extends(union).fingerprint() == union.fingerprint()  # the earlier recipe still fits


def test_a_changed_method_under_the_same_name_does_not_extend():
    earlier = _experiment([{"method": "ewc", "strength": 10.0}], [0])
    with pytest.raises(ValueError, match="method 'ewc' differs"):
        _experiment([{"method": "ewc", "strength": 20.0}], [0]).extends(earlier)


def test_a_changed_experiment_does_not_extend():
    earlier = _experiment(["sequential_lora"], [0])
    later = earlier.replace(**{"train.learning_rate": 5e-4})
    with pytest.raises(ValueError, match="train differ"):
        later.extends(earlier)


def test_orders_added_at_the_end_extend_and_reordered_ones_do_not():
    earlier = _experiment(["sequential_lora"], [0])  # no orders: the tasks as listed, order 1
    later = earlier.replace(orders=[["a", "b"], ["b", "a"]])
    union = later.extends(earlier)
    assert union.task_orders == [["a", "b"], ["b", "a"]]
    assert earlier.extends(union).fingerprint() == union.fingerprint()  # the first order alone still fits
    assert union.extends(union).fingerprint() == union.fingerprint()
    swapped = earlier.replace(orders=[["b", "a"], ["a", "b"]])
    with pytest.raises(ValueError, match="orders differ"):
        swapped.extends(earlier)  # order 1 would name another sequence in the folder
