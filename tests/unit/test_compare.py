"""`fnapi compare`: runs recipes, shares one template between them, prints and writes one table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fnapi.cli import main
from fnapi.comparison import _differences, _template_key, compare_recipes
from fnapi.errors import RecipeError
from fnapi.models.tiny import save_tiny
from fnapi.recipe import Recipe

REPO = Path(__file__).resolve().parents[2]

RECIPE = """
version: 1
name: {name}
model: {{name: {model}}}
data: {{path: {data}, max_length: 40}}
template: {{data: [builtin:text], samples: 8, max_length: 24, components: 3, runs: 2}}
mask: {{preset: {preset}, components: stable, top_stable: 1}}
train: {{steps: 2, batch_size: 4, logging_steps: 1, save_steps: 10, learning_rate: 1e-3}}
eval: {{task_samples: 3, probe_samples: 4, kl_prompts: 2, max_new_tokens: 3}}
"""


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def recipes(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("compare")
    model = save_tiny("llama", folder / "tiny-llama")
    data = folder / "pairs.jsonl"
    rows = [{"instruction": f"Say the number {i}", "output": f"number {i}"} for i in range(40)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    paths = []
    for name, preset in (("protect", "protect"), ("target", "target")):
        path = folder / f"{name}.yaml"
        path.write_text(RECIPE.format(name=name, model=model, data=data, preset=preset))
        paths.append(path)
    return paths


def test_compare_prints_one_row_per_recipe_and_writes_both_files(recipes, tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", *map(str, recipes), "--output", str(out), "--set", "eval.kl_prompts=1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "protect (lora, protect)" in printed and "target (lora, target)" in printed
    assert "probes retained" in printed
    data = json.loads((out / "comparison.json").read_text())
    assert [row["name"] for row in data["rows"]] == ["protect", "target"]
    for row in data["rows"]:
        report = json.loads((Path(row["run_dir"]) / "report.json").read_text())
        assert row["trainable_parameters"] == report["trainable_parameters"] > 0
        assert row["probes_retained"] == report["probes"]["retained"]
        assert row["kl_to_base"] == report["kl_to_base"]
        assert Recipe.from_yaml(Path(row["run_dir"]) / "recipe.yaml").eval.kl_prompts == 1  # --set reached it
    protect, target = data["rows"]
    assert target["trainable_parameters"] < protect["trainable_parameters"]  # target trains only the network
    markdown = (out / "comparison.md").read_text()
    assert markdown.count("\n| protect") == 1 and markdown.count("\n| target") == 1
    # The first recipe built the template; the second loaded that very file instead of building again.
    assert data["template"] == str((out / "protect" / "template.json").resolve())
    replayed = Recipe.from_yaml(out / "target" / "recipe.yaml")
    assert replayed.template.path == data["template"]
    events = [json.loads(line) for line in (out / "target" / "events.jsonl").read_text().splitlines()]
    assert not any(e.get("stage") == "capture" for e in events)
    assert json.loads((out / "target" / "template.json").read_text()) == json.loads(
        (out / "protect" / "template.json").read_text())


def test_recipes_need_distinct_names(recipes):
    recipe = Recipe.from_yaml(recipes[0])
    with pytest.raises(RecipeError, match="protect appears more than once"):
        compare_recipes([recipe, recipe], "unused")


def test_shipped_comparison_recipes_are_like_for_like():
    paths = sorted((REPO / "recipes" / "compare").glob("*.yaml"))
    recipes = {p.stem: Recipe.from_yaml(p) for p in paths}
    assert set(recipes) == {"lora", "full", "protect", "target"}
    assert {name: r.name for name, r in recipes.items()} == {name: name for name in recipes}
    assert _differences(list(recipes.values())) == []
    assert recipes["lora"].template is None and recipes["full"].train.method == "full"
    assert (recipes["protect"].mask.preset, recipes["target"].mask.preset) == ("protect", "target")
    assert _template_key(recipes["protect"]) == _template_key(recipes["target"]) is not None
