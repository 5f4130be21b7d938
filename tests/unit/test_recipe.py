"""Recipes: strict validation with YAML-path errors, round-trips, atomic writes, no secrets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from fnapi.errors import RecipeError
from fnapi.recipe import MASK_PRESETS, Recipe, parse_layers

REPO = Path(__file__).resolve().parents[2]


def test_defaults_round_trip_through_yaml(tmp_path):
    recipe = Recipe(name="demo", seed=3)
    path = recipe.to_yaml(tmp_path / "r.yaml")
    again = Recipe.from_yaml(path)
    assert again == recipe
    assert again.fingerprint() == recipe.fingerprint()


def test_full_recipe_round_trip_preserves_meaning(tmp_path):
    text = """
version: 1
name: masked-run
seed: 7
model: {name: ./my-model, dtype: float32}
data: {path: data/train.jsonl, format: alpaca, fields: {instruction: user}, max_length: 64}
template: {method: ica, site: mlp.hidden, layers: "0:4,9:", components: 6, selection: {rule: topk, value: 5}}
mask: {preset: protect, components: [0, 2]}
train: {method: full, steps: 10, learning_rate: 1e-4, weight_decay: 0.01}
"""
    recipe = Recipe.from_yaml_text(text)
    assert recipe.train.learning_rate == pytest.approx(1e-4)
    assert isinstance(recipe.train.learning_rate, float)
    assert recipe.template.selection.rule == "topk"
    assert recipe.mask.switches() == ("none", "unselected")
    again = Recipe.from_yaml(recipe.to_yaml(tmp_path / "again.yaml"))
    assert again == recipe


@pytest.mark.parametrize("literal", ["1e-4", "1E-4", "+1e-4", "1.0e-4", ".0001"])
def test_scientific_notation_reads_as_float(literal):
    recipe = Recipe.from_yaml_text(f"train: {{learning_rate: {literal}}}")
    assert recipe.train.learning_rate == pytest.approx(1e-4)


def test_unknown_key_names_path_and_suggests():
    with pytest.raises(RecipeError) as info:
        Recipe.from_yaml_text("train:\n  learnig_rate: 0.1\n", source="r.yaml")
    message = str(info.value)
    assert "r.yaml" in message
    assert "train.learnig_rate" in message
    assert "did you mean 'learning_rate'" in message


def test_wrong_type_names_path_and_value():
    with pytest.raises(RecipeError) as info:
        Recipe.from_yaml_text("train: {learning_rate: fast}")
    assert "train.learning_rate" in str(info.value)
    assert "'fast'" in str(info.value)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("train: {steps: 1.5}", "train.steps"),
        ("train: {batch_size: 0}", "train.batch_size"),
        ("train: {batch_size: '4'}", "train.batch_size"),
        ("mask: {preset: shield}", "mask.preset"),
        ("version: 2", "version"),
        ("name: 'has space'", "name"),
        ("mask: {preset: protect}", "needs components"),
        ("mask: {preset: protect, components: [1]}", "template section"),
        ("- just\n- a list", "mapping of sections"),
        ("train: [1", "not valid YAML"),
    ],
)
def test_bad_recipes_explain_themselves(text, fragment):
    with pytest.raises(RecipeError) as info:
        Recipe.from_yaml_text(text)
    assert fragment in str(info.value)


def test_missing_file_is_a_recipe_error(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        Recipe.from_yaml(tmp_path / "nope.yaml")


def test_recipes_are_frozen():
    recipe = Recipe()
    with pytest.raises(ValidationError, match="frozen"):
        recipe.seed = 5  # type: ignore[misc]


def test_replace_validates_dotted_changes():
    recipe = Recipe().replace(**{"train.steps": 3, "seed": 9})
    assert recipe.train.steps == 3 and recipe.seed == 9
    with pytest.raises(RecipeError, match="train.steps"):
        Recipe().replace(**{"train.steps": -1})


def test_a_recipe_field_holding_a_token_is_refused_without_quoting_it(tmp_path):
    token = "hf_" + "Q" * 34
    path = tmp_path / "secret.yaml"
    path.write_text(f"version: 1\nmodel: {{name: org/model-{token}}}\n")
    with pytest.raises(RecipeError, match="model.name holds what looks like a Hugging Face token") as refused:
        Recipe.from_yaml(path)
    assert token not in str(refused.value) and str(path) in str(refused.value)


@pytest.mark.parametrize("value", ["/some/where/hf_myDatasetsForFinetuning2024",  # hf_ + 27 characters
                                   "data/hf_" + "a1" * 12, "org/hf_" + "B" * 40])
def test_values_that_only_resemble_tokens_are_saved_exactly(tmp_path, value):
    recipe = Recipe().replace(**{"data.path": value, "model.revision": value.rsplit("/", 1)[-1]})
    saved = Recipe.from_yaml(recipe.to_yaml(tmp_path / "r.yaml"))
    assert saved.data.path == value and saved == recipe and saved.fingerprint() == recipe.fingerprint()
    # The saved copy is what a rerun compares against: the same command resumes the folder.
    from fnapi.rundir import claim_run_dir

    claim_run_dir(recipe, tmp_path / "run").release()
    again = claim_run_dir(Recipe.from_yaml(tmp_path / "r.yaml"), tmp_path / "run")
    assert again.resumed
    again.release()


def test_empty_recipe_files_are_refused(tmp_path):
    for text in ("", "# nothing yet\n", "---\n"):
        path = tmp_path / "empty.yaml"
        path.write_text(text)
        with pytest.raises(RecipeError, match="empty.yaml: the recipe is empty"):
            Recipe.from_yaml(path)


@pytest.mark.parametrize("seed", [-1, 2**32, 10**30])
def test_seeds_outside_what_the_random_generators_take_are_refused(seed):
    with pytest.raises(RecipeError, match="seed"):
        Recipe().replace(seed=seed)


def test_setting_inside_a_value_names_the_value():
    with pytest.raises(RecipeError, match="cannot set train.steps.x: train.steps is a value"):
        Recipe().replace(**{"train.steps.x": 1})


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    target = tmp_path / "r.yaml"
    Recipe(name="first").to_yaml(target)
    before = target.read_text()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        Recipe(name="second").to_yaml(target)
    assert target.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


def test_presets_map_onto_switches():
    assert MASK_PRESETS["lesion"] == ("selected", "all")
    assert MASK_PRESETS["preserve"] == ("unselected", "selected")
    assert MASK_PRESETS["protect"] == ("none", "unselected")
    assert MASK_PRESETS["target"] == ("none", "selected")
    explicit = Recipe.from_yaml_text(
        "template: {}\nmask: {preset: protect, components: [0], ablate: selected}"
    )
    assert explicit.mask.switches() == ("selected", "unselected")


def test_parse_layers():
    assert parse_layers(None, 4) == [0, 1, 2, 3]
    assert parse_layers("0:2,5:", 7) == [0, 1, 5, 6]
    assert parse_layers("-1", 5) == [4]
    assert parse_layers(":2", 5) == [0, 1]
    with pytest.raises(RecipeError, match="out of range"):
        parse_layers("9", 4)
    with pytest.raises(RecipeError, match="cannot read"):
        parse_layers("a:b", 4)
    with pytest.raises(RecipeError, match="selects no layer"):
        parse_layers("3:3", 4)


def test_every_shipped_recipe_validates(monkeypatch):
    from fnapi.preflight import preflight, preflight_continual
    from fnapi.recipe import ContinualRecipe, load_recipe

    monkeypatch.chdir(REPO)  # recipes name their data files from the repository root
    recipes = sorted((REPO / "recipes").rglob("*.yaml"))
    assert len(recipes) >= 10, "recipes/ ships example recipes"
    for path in recipes:
        recipe = load_recipe(path)
        if "doc-" in path.name:  # hub data sets: their checks need the network
            continue
        check = preflight_continual if isinstance(recipe, ContinualRecipe) else preflight
        assert check(recipe) == [], path


@pytest.mark.parametrize("argv, message", [
    (["nosuch"], "No such command 'nosuch'"),
    (["run", "--bogus", "x.yaml"], "No such option: --bogus"),
    (["template", "build", "--components", "zero"], "Invalid value for '--components'"),
])
def test_command_line_usage_errors_exit_2_with_click_s_message(argv, message, capsys):
    from fnapi.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "bug in fnapi" not in err


@pytest.mark.parametrize("value", ["1e19", "2.5", "true", "'7'"])
def test_component_counts_are_whole_numbers_exactly(tmp_path, value):
    path = tmp_path / "r.yaml"
    path.write_text(f"version: 1\ntemplate: {{components: {value}}}\n", encoding="utf-8")
    with pytest.raises(RecipeError, match="template.components"):
        Recipe.from_yaml(path)


@pytest.mark.parametrize("value", ["1e400", ".inf", ".nan", "-.inf"])
def test_infinite_or_nan_numbers_are_refused_by_field(tmp_path, value):
    path = tmp_path / "r.yaml"
    path.write_text(f"version: 1\ntrain: {{learning_rate: {value}}}\n", encoding="utf-8")
    with pytest.raises(RecipeError, match="train.learning_rate"):
        Recipe.from_yaml(path)


@pytest.mark.parametrize("section", ["template", "mask"])
def test_a_layer_filter_that_cannot_be_read_is_refused_when_validated(section):
    with pytest.raises(RecipeError, match=f"{section}.layers: layer filter '0:99,foo': cannot read 'foo'"):
        Recipe().replace(**{f"{section}.layers": "0:99,foo"})
    assert getattr(Recipe().replace(**{f"{section}.layers": "0:4,-2"}), section).layers == "0:4,-2"


def test_set_errors_name_the_recipe_file_and_the_option(tmp_path, capsys):
    from fnapi.cli import main

    recipe = tmp_path / "mine.yaml"
    recipe.write_text("version: 1\n", encoding="utf-8")
    assert main(["run", str(recipe), "--set", "seed=-1", "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{recipe} with --set: invalid recipe" in err and "seed: Input should be greater than or equal to 0" in err


def test_recipe_errors_carry_each_problem_with_its_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("version: 1\ntrain: {stepz: 3, learning_rate: -1}\n", encoding="utf-8")
    with pytest.raises(RecipeError) as caught:
        Recipe.from_yaml(path)
    problems = {p.path: p.message for p in caught.value.problems}
    assert problems == {"train.learning_rate": "Input should be greater than 0 (got -1)",
                        "train.stepz": "unknown key; did you mean 'steps'?"}
    assert caught.value.field == "train.learning_rate"
    assert caught.value.message.splitlines()[0] == f"{path}: invalid recipe"


def test_set_errors_carry_the_recipe_file_and_the_field():
    with pytest.raises(RecipeError) as caught:
        Recipe().replace("run.yaml with --set", **{"train.batch_size": 0})
    assert caught.value.field == "train.batch_size"
    assert caught.value.message.startswith("run.yaml with --set: invalid recipe")
