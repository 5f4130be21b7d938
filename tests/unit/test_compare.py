"""`fnapi compare`: runs recipes, shares one template between them, prints and writes one table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fnapi.cli import main
from fnapi.comparison import _differences, _template_key, compare_recipes, expand_runs, run_dir_for, write_comparison
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


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
    code = main(["compare", *map(str, recipes), "--output", str(out), "--set", "eval.kl_prompts=1", "--no-controls"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "protect (lora, protect)" in printed and "target (lora, target)" in printed
    assert "probes retained" in printed
    data = json.loads((out / "comparison.json").read_text())
    assert [row["name"] for row in data["rows"]] == ["protect", "target"]
    assert set(data["methods"]) == {"protect", "target"} and (out / "pareto.png").stat().st_size > 1000
    for row in data["rows"]:
        report = json.loads((Path(row["run_dir"]) / "report.json").read_text())
        assert row["trainable_parameters"] == report["trainable_parameters"] > 0
        assert row["probes_retained"] == report["probes"]["retained"]
        assert row["kl_to_base"] == report["kl_to_base"]
        assert Recipe.from_yaml(Path(row["run_dir"]) / "recipe.yaml").eval.kl_prompts == 1  # --set reached it
    protect, target = data["rows"]
    assert target["trainable_parameters"] < protect["trainable_parameters"]  # target trains only the network
    markdown = (out / "comparison.md").read_text()
    assert markdown.count("\n| protect (lora, protect)") == 1 and markdown.count("\n| target (lora, target)") == 1
    assert "![task score against probe retention](pareto.png)" in markdown
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
    assert set(recipes) == {"lora", "full", "protect", "target", "loki", "attr-rows"}
    assert {name: r.name for name, r in recipes.items()} == {name: name for name in recipes}
    assert _differences(list(recipes.values())) == []
    assert recipes["lora"].template is None and recipes["full"].train.method == "full"
    assert (recipes["protect"].mask.preset, recipes["target"].mask.preset) == ("protect", "target")
    assert _template_key(recipes["protect"]) == _template_key(recipes["target"]) is not None
    # LoKI: its own rule picks the rows (one component), and only they train; attr-rows: fnapi's rule
    # (lowest absolute attribution), one component made with select [least]
    loki, rows = recipes["loki"], recipes["attr-rows"]
    assert (loki.template.method, loki.template.site, loki.mask.preset, loki.mask.components,
            loki.train.method) == ("loki", "mlp.out", "target", "all", "full")
    assert (rows.template.method, rows.template.select, rows.mask.components) == ("attribution", ["least"], "all")


def test_seeds_and_controls_expand_into_runs():
    protect = Recipe.from_yaml_text(RECIPE.format(name="protect", model="m", data="d.jsonl", preset="protect"))
    lora = protect.replace(**{"name": "lora", "mask.preset": "none", "mask.components": [], "template": None})
    runs = expand_runs([lora, protect], seeds=3, task_target=0.9)
    assert [(r.name, r.seed) for r in runs] == [
        ("lora", 0), ("lora", 1), ("lora", 2), ("protect", 0), ("protect", 1), ("protect", 2),
        ("protect-random", 0), ("protect-random", 1), ("protect-random", 2)]
    assert {r.train.task_target for r in runs} == {0.9}
    assert [r.mask.control for r in runs if r.name.startswith("protect")] == ["none"] * 3 + ["random"] * 3
    assert run_dir_for(Path("o"), runs[4], seeds=3) == Path("o/protect/seed-1")
    assert len(expand_runs([lora, protect], controls=False)) == 2
    with pytest.raises(RecipeError, match="at least 1"):
        expand_runs([lora], seeds=0)


def test_random_control_keeps_each_layers_count_and_follows_the_seed():
    from fnapi.masking import NeuronMask, random_like

    neuron_mask = NeuronMask("mlp.out", {0: [1, 2, 3], 2: [5], 3: []}, train="unselected", width=64)
    control = random_like(neuron_mask, 64, seed=4)
    assert {layer: len(c) for layer, c in control.neurons.items()} == {0: 3, 2: 1, 3: 0}
    assert (control.ablate, control.train) == (neuron_mask.ablate, neuron_mask.train)
    assert control.neurons != neuron_mask.neurons
    assert random_like(neuron_mask, 64, seed=4).neurons == control.neurons
    assert random_like(neuron_mask, 64, seed=5).neurons != control.neurons
    assert all(0 <= c < 64 for channels in control.neurons.values() for c in channels)


def test_paired_difference_sees_a_real_gap_and_not_a_null_one():
    from fnapi.comparison import paired_difference
    from fnapi.measures import EvalMeasures, ProbeMeasure

    rng = np.random.default_rng(0)
    base = (rng.random(400) < 0.8).astype(float)

    def runs(keep: float, seeds: int = 3) -> list:
        out = []
        for s in range(seeds):
            after = base * (np.random.default_rng([s, int(keep * 100)]).random(400) < keep)
            out.append((EvalMeasures(probes=(ProbeMeasure("p", tuple(base), (0.0,) * 400),)),
                        EvalMeasures(probes=(ProbeMeasure("p", tuple(after), (0.0,) * 400),))))
        return out

    gap = paired_difference(runs(0.95), runs(0.80), [0, 1, 2], [0, 1, 2])
    assert gap["diff"] == pytest.approx(0.15, abs=0.04) and gap["ci95"][0] > 0
    same = paired_difference(runs(0.9), runs(0.9), [0, 1, 2], [0, 1, 2])
    assert same["ci95"][0] <= 0 <= same["ci95"][1]
    assert paired_difference(runs(0.9), runs(0.9), [0, 1, 2], [5, 6, 7]) is None


def test_paired_difference_covers_held_out_text_when_both_sides_scored_it():
    from fnapi.comparison import paired_difference
    from fnapi.measures import EvalMeasures, ProbeMeasure, TextMeasure

    rng = np.random.default_rng(1)
    probes = ProbeMeasure("p", tuple((rng.random(50) < 0.7).astype(float)), (0.0,) * 50)
    base_nll = rng.uniform(2.0, 4.0, 40)
    tokens = tuple(int(t) for t in rng.integers(5, 60, 40))

    def runs(drift: float, kl: float, seeds: int = 3, paragraph_tokens: tuple = tokens) -> list:
        out = []
        for s in range(seeds):
            noise = np.random.default_rng([s, int(drift * 100)]).normal(0, 0.05, 40)
            before = TextMeasure("t", tuple(base_nll), paragraph_tokens)
            after = TextMeasure("t", tuple(base_nll + drift + noise), paragraph_tokens,
                                tuple(np.abs(kl + noise / 10)))
            out.append((EvalMeasures(probes=(probes,), texts=(before,)),
                        EvalMeasures(probes=(probes,), texts=(after,))))
        return out

    less = paired_difference(runs(0.1, 0.05), runs(0.3, 0.2), [0, 1, 2], [0, 1, 2])
    assert less["text_nll_change"]["diff"] == pytest.approx(-0.2, abs=0.03)
    assert less["text_nll_change"]["ci95"][1] < 0
    assert less["kl_to_base"]["diff"] == pytest.approx(-0.15, abs=0.02) and less["kl_to_base"]["ci95"][1] < 0
    same = paired_difference(runs(0.2, 0.1), runs(0.2, 0.1), [0, 1, 2], [0, 1, 2])
    assert same["text_nll_change"]["ci95"][0] <= 0 <= same["text_nll_change"]["ci95"][1]
    # Different paragraphs cannot be paired: the probe difference stays, the text ones are left out.
    other_paragraphs = runs(0.3, 0.2, paragraph_tokens=tuple(t + 1 for t in tokens))
    unpaired = paired_difference(runs(0.1, 0.05), other_paragraphs, [0, 1, 2], [0, 1, 2])
    assert "diff" in unpaired and "text_nll_change" not in unpaired and "kl_to_base" not in unpaired


def test_compare_with_seeds_controls_and_task_target_resumes_finished_runs(recipes, tmp_path):
    out = tmp_path / "cmp"
    protect = Recipe.from_yaml(recipes[0]).replace(**{"eval.kl_prompts": 1, "train.steps": 4,
                                                      "train.task_check_every": 2, "train.task_check_samples": 2})
    lora = protect.replace(**{"name": "lora", "mask.preset": "none", "mask.components": [], "template": None})
    result = compare_recipes([lora, protect], out, seeds=2, task_target=0.01)
    write_comparison(result, out)
    data = json.loads((out / "comparison.json").read_text())
    assert list(data["methods"]) == ["lora", "protect", "protect-random"]
    assert data["baseline"] == "lora" and data["task_target"] == 0.01
    for name, method in data["methods"].items():
        assert method["seeds"] == [0, 1]
        for key in ("task", "probes_retained", "kl_to_base", "steps"):
            assert set(method[key]) >= {"mean", "ci95"}
        assert (method["vs_lora"] is None) == (name == "lora")
        assert method["control"] == (name == "protect-random")
    assert data["methods"]["protect"]["vs_control"] is not None
    assert set(data["methods"]["protect"]["vs_control"]) >= {"diff", "ci95", "text_nll_change", "kl_to_base"}
    assert "| protect | " in (out / "comparison.md").read_text().split("Paired differences")[1]
    # Each run's control drew as many neurons per layer as its method froze.
    for seed in (0, 1):
        masked = json.loads((out / "protect" / f"seed-{seed}" / "report.json").read_text())["mask"]
        control = json.loads((out / "protect-random" / f"seed-{seed}" / "report.json").read_text())["mask"]
        assert masked["per_layer"] == control["per_layer"] and masked["neurons"] > 0
        assert control["control"] == "random"
    # The target (0.01 on exact match) is reached at the first check or never: runs stop at step 2 or train to 4.
    assert {row["steps"] for row in data["rows"]} <= {2, 4}
    # Again: every run is read back, none is trained again.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("report.json")}
    again = compare_recipes([lora, protect], out, seeds=2, task_target=0.01)
    assert [r.run_dir for r in again.rows] == [r.run_dir for r in result.rows]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("report.json")} == before
