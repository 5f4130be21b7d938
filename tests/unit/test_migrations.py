"""One migration table per file kind: older recipes and template layouts load through it, and
versions it does not know are errors naming the file and the version field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fnapi.errors import FnapiError, RecipeError, TemplateError
from fnapi.migrations import Migrations
from fnapi.networks.template import (
    LOKI,
    PREDECESSOR_BUILDER,
    PREDECESSOR_GUIDE,
    TEMPLATE_FORMAT,
    TEMPLATE_MIGRATIONS,
    Template,
)
from fnapi.recipe import RECIPE_MIGRATIONS, RECIPE_VERSION, Recipe

LEGACY = Path(__file__).resolve().parents[1] / "data" / "legacy"


# ---- the table itself -----------------------------------------------------------------------------

def _counter_table() -> tuple[Migrations, list[int]]:
    calls: list[int] = []
    table = Migrations("note", current=3, field="version", error=FnapiError,
                       read_version=lambda data: data.get("version"), is_newer=lambda v: isinstance(v, int) and v > 3)

    @table.step(1, 2)
    def _one(data, source):
        calls.append(1)
        return {**data, "version": 2, "seen": [*data.get("seen", []), 1]}

    @table.step(2, 3)
    def _two(data, source):
        calls.append(2)
        return {**data, "version": 3, "seen": [*data["seen"], 2]}

    return table, calls


def test_steps_run_in_order_from_the_file_version():
    table, calls = _counter_table()
    assert table.upgrade({"version": 1}, "n.yaml") == {"version": 3, "seen": [1, 2]}
    assert calls == [1, 2]
    assert table.upgrade({"version": 2, "seen": []}, "n.yaml") == {"version": 3, "seen": [2]}
    assert table.upgrade({"version": 3}, "n.yaml") == {"version": 3}
    assert calls == [1, 2, 2]


@pytest.mark.parametrize("version, fragment, hint", [
    (4, "note version 4 is newer than this fnapi reads (3)", "upgrade fnapi"),
    (0, "unsupported note version 0; this fnapi reads 3, 1, 2", None),
    (None, "field missing", "this fnapi also reads 1, 2"),
    ([1], "unsupported note version [1]", None),
])
def test_unknown_versions_name_file_and_field(version, fragment, hint):
    table, _ = _counter_table()
    with pytest.raises(FnapiError) as info:
        table.upgrade({"version": version}, "n.yaml")
    assert info.value.message.startswith("n.yaml: version: ")
    assert fragment in info.value.message
    assert info.value.field == "version"
    assert (hint in info.value.hint) if hint else info.value.hint is None


def test_a_step_that_does_not_reach_its_version_is_caught():
    table = Migrations("note", current=2, field="version", error=FnapiError, read_version=lambda d: d["version"])
    table.step(1, 2)(lambda data, source: dict(data))  # forgets to set the version
    with pytest.raises(RuntimeError, match="upgrade to 2 gave data of version 1"):
        table.upgrade({"version": 1}, "n.yaml")


def test_a_version_has_one_reader():
    table, _ = _counter_table()
    with pytest.raises(ValueError, match="already has a reader"):
        table.step(1, 3)
    with pytest.raises(ValueError, match="already has a reader"):
        table.step(3, 4)


# ---- recipes ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["version: 0\ntrain: {lr: 0.001, max_steps: 12}",
                                  "train: {lr: 0.001, max_steps: 12}"])
def test_recipe_version_0_loads_through_the_table(text):
    assert RECIPE_MIGRATIONS.older_versions == [0]
    recipe = Recipe.from_yaml_text(text)
    assert recipe.version == RECIPE_VERSION
    assert recipe.train.learning_rate == pytest.approx(0.001) and recipe.train.steps == 12
    assert "lr" not in recipe.to_yaml_text()


def test_recipe_version_1_has_only_the_current_spellings():
    with pytest.raises(RecipeError, match="train.lr: unknown key"):
        Recipe.from_yaml_text("version: 1\ntrain: {lr: 0.001}")


def test_future_recipe_version_names_file_and_field(tmp_path):
    path = tmp_path / "new.yaml"
    path.write_text("version: 7\nname: later\n")
    with pytest.raises(RecipeError) as info:
        Recipe.from_yaml(path)
    assert info.value.message == f"{path}: version: recipe version 7 is newer than this fnapi reads (1)"
    assert info.value.field == "version" and "upgrade fnapi" in info.value.hint


# ---- templates --------------------------------------------------------------------------------------

@pytest.mark.parametrize("file, layout", [("global_templates_v1.json", "templates+layout"),
                                          ("guide_layout.json", "components+metadata"),
                                          ("10.json", "loki")])
def test_each_legacy_template_layout_upgrades_to_the_native_format(file, layout):
    data = json.loads((LEGACY / file).read_text())
    assert TEMPLATE_MIGRATIONS.older_versions == [LOKI, PREDECESSOR_BUILDER, PREDECESSOR_GUIDE]
    native = TEMPLATE_MIGRATIONS.upgrade(data, str(LEGACY / file), model_info=None)
    assert native["format"] == TEMPLATE_FORMAT and native["method"]["from"] == layout
    # The upgraded dict is an ordinary native template, and loading the file gives the same one.
    from_native = Template.from_dict(native, "upgraded")
    loaded = Template.load(LEGACY / file)
    assert (from_native.components, from_native.width, from_native.layers) == \
           (loaded.components, loaded.width, loaded.layers)


def test_future_template_format_names_file_and_field(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"format": "fnapi.template/2", "components": []}))
    with pytest.raises(TemplateError) as info:
        Template.load(path)
    assert info.value.message == (f"{path}: format: template version 'fnapi.template/2' is newer than this "
                                  f"fnapi reads ('{TEMPLATE_FORMAT}')")
    assert info.value.field == "format" and "upgrade fnapi" in info.value.hint
