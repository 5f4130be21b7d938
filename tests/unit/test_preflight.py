"""`fnapi validate` finds, without loading weights, what a run would otherwise fail on minutes in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fnapi.cli import main
from fnapi.errors import RecipeError
from fnapi.models.tiny import HIDDEN_SIZE, save_tiny
from fnapi.networks.template import Component, Template
from fnapi.preflight import preflight
from fnapi.recipe import Recipe

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """A tiny Llama saved as a folder: 2 layers, hidden 64 (its config is what preflight reads)."""
    return save_tiny("llama", tmp_path_factory.mktemp("model") / "tiny-llama")


def write_recipe(tmp_path: Path, tiny_folder: Path, **sections) -> Path:
    body = {"version": 1, "name": "check", "model": {"name": str(tiny_folder)}, **sections}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(body), encoding="utf-8")
    return path


def template_file(tmp_path: Path, *, num_layers: int, width: int = HIDDEN_SIZE) -> str:
    path = tmp_path / f"t{num_layers}x{width}.json"
    Template(site="mlp.out", width=width, num_layers=num_layers,
             components=[Component(0, {0: [1, 2]}), Component(3, {1: [4]})], model={"name": "tiny"}).save(path)
    return str(path)


def validate(path: Path, capsys) -> tuple[int, str]:
    code = main(["validate", str(path)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("sections, where, says", [
    ({"data": {"path": "builtin:skill", "format": "bogus"}}, "data.format", "unknown data format 'bogus'"),
    ({"data": {"path": "builtin:skill", "fields": {"q": "asker"}}}, "data.fields.q", "unknown role 'asker'"),
    ({"data": {"path": "nowhere/train.jsonl"}}, "data.path", "data file nowhere/train.jsonl does not exist"),
    ({"data": {"path": "builtin:skil"}}, "data.path", "unknown built-in dataset builtin:skil"),
    ({"eval": {"probes": ["gone.jsonl"]}}, "eval.probes[0]", "file not found: gone.jsonl"),
    ({"template": {"method": "ica", "selection": {"rule": "percentile", "value": 180}}},
     "template.selection", "180.0 is not a percentile"),
    ({"template": {"method": "ica", "layers": "5"}}, "template.layers", "layer 5 is out of range: the model has 2"),
    ({"mask": {"layers": "7:9"}}, "mask.layers", "selects no layer"),
    ({"template": {"path": "missing-template.json"}}, "template.path", "template file not found"),
])
def test_validate_refuses_what_the_run_would_fail_on_later(tmp_path, tiny_folder, capsys, sections, where, says):
    code, err = validate(write_recipe(tmp_path, tiny_folder, **sections), capsys)
    assert code == 2
    line = next(line for line in err.splitlines() if line.strip().startswith(f"{where}:"))
    assert says in line, err


def test_validate_refuses_a_template_built_for_another_shape(tmp_path, tiny_folder, capsys):
    other = template_file(tmp_path, num_layers=3)
    code, err = validate(write_recipe(tmp_path, tiny_folder, template={"path": other},
                                      mask={"preset": "protect", "components": [0]}), capsys)
    assert code == 2
    assert f"template.path: {other}: template was built for 3 layers x {HIDDEN_SIZE}" in err
    assert "the model has 2 layers" in err


def test_validate_names_mask_components_the_template_does_not_have(tmp_path, tiny_folder, capsys):
    fitting = template_file(tmp_path, num_layers=2)
    code, err = validate(write_recipe(tmp_path, tiny_folder, template={"path": fitting},
                                      mask={"preset": "protect", "components": [0, 9]}), capsys)
    assert code == 2
    assert "mask.components: component 9 is not in" in err and "it has 0, 3" in err


def test_validate_accepts_a_recipe_whose_files_and_shapes_fit(tmp_path, tiny_folder, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"instruction": "hi", "output": "there"}) + "\n", encoding="utf-8")
    path = write_recipe(tmp_path, tiny_folder, data={"path": str(data), "format": "alpaca"},
                        template={"path": template_file(tmp_path, num_layers=2)},
                        mask={"preset": "protect", "components": [3], "layers": "0:1"})
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"ok: {path}")


def test_every_problem_is_listed_at_once_each_under_its_path(tmp_path, tiny_folder):
    recipe = Recipe.from_yaml(write_recipe(tmp_path, tiny_folder, data={"path": "a.csv", "format": "nope"},
                                           eval={"text": "b.txt"}))
    assert [p.path for p in preflight(recipe)] == ["data.path", "data.format", "eval.text"]


def test_a_model_whose_config_cannot_be_read_offline_skips_only_the_shape_checks(tmp_path):
    recipe = Recipe.model_validate({"model": {"name": "nobody/not-cached-anywhere"},
                                    "template": {"method": "ica", "layers": "99"},
                                    "data": {"path": "gone.jsonl"}})
    assert [p.path for p in preflight(recipe)] == ["data.path"]


def test_run_refuses_before_it_claims_a_run_folder(tmp_path, tiny_folder):
    from fnapi.runner import run

    recipe = Recipe.from_yaml(write_recipe(tmp_path, tiny_folder, data={"path": "missing.jsonl"},
                                           output={"dir": str(tmp_path / "runs")}))
    with pytest.raises(RecipeError, match="data.path: data file missing.jsonl does not exist"):
        run(recipe)
    assert not (tmp_path / "runs").exists()


def test_every_shipped_recipe_passes_preflight():
    from fnapi.preflight import preflight_continual
    from fnapi.recipe import ContinualRecipe, load_recipe

    recipes = sorted((REPO / "recipes").rglob("*.yaml"))
    assert len(recipes) >= 8
    for path in recipes:
        recipe = load_recipe(path)  # single-run and continual recipes both ship under recipes/
        check = preflight_continual if isinstance(recipe, ContinualRecipe) else preflight
        assert check(recipe) == [], path


def test_validate_refuses_an_architecture_fnapi_cannot_train(tmp_path, capsys):
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(
        tmp_path / "bert")
    code, err = validate(write_recipe(tmp_path, tmp_path / "bert"), capsys)
    assert code == 2
    assert "model.name: model type 'bert' (BertLMHeadModel) is not supported; supported families: llama" in err
