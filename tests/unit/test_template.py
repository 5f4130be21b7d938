"""Template format: save/load, strict errors, legacy import, compatibility, neuron sets, IoU, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fnapi.cli import main
from fnapi.errors import TemplateError
from fnapi.networks.template import (
    TEMPLATE_FORMAT,
    UNKNOWN_MODEL_WARNING,
    Component,
    Template,
    compare,
    iou,
    model_identity,
)

LEGACY = Path(__file__).resolve().parents[1] / "data" / "legacy"

INFO = {"name": "tiny-llama", "architecture": "LlamaForCausalLM", "num_layers": 2, "hidden_size": 64,
        "intermediate_size": 128, "fingerprint": "abc123"}


def make_template(**overrides) -> Template:
    fields = dict(
        site="mlp.out", width=64, num_layers=2,
        components=[
            Component(0, {0: [5, 1, 1], 1: [7]}, 0.91,
                      {"top_tokens": [{"token": " the", "context": "of the [1,2]", "activation": 2.5}]}),
            Component(1, {1: [7, 8, 9]}, 0.42),
            Component(2, {0: [1, 2]}, 0.77),
        ],
        model=model_identity(INFO),
        method={"name": "ica", "components": 3, "runs": 5, "seed": 0},
        data={"sources": ["builtin:text"], "rows": 64, "tokens": 4096, "fingerprint": "d00d"},
    )
    fields.update(overrides)
    return Template(**fields)


# ---- save / load ---------------------------------------------------------------------------------

def test_round_trip_is_equal_and_leaves_no_temp_files(tmp_path):
    template = make_template()
    path = template.save(tmp_path / "t.json")
    assert Template.load(path) == template
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]


def test_json_is_readable_with_neuron_lists_on_one_line(tmp_path):
    text = make_template().save(tmp_path / "t.json").read_text()
    assert json.loads(text)["format"] == TEMPLATE_FORMAT
    assert '"1": [7, 8, 9]' in text
    assert '"context": "of the [1,2]"' in text  # strings are never reformatted
    assert text.count("\n") > 30  # indented, not one long line
    stats = json.loads(text)["components"][1]["stats"]
    assert stats["size"] == 3 and stats["per_layer"] == {"1": 3}


def test_neurons_are_normalised():
    component = Component(3, {"1": [9, 2, 2], 0: [], 2: [4]})
    assert component.neurons == {1: [2, 9], 2: [4]}
    assert component.size == 3 and component.per_layer == {1: 2, 2: 1}


def _write(tmp_path, data) -> Path:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.update(site="mlp.in"), "site"),
    (lambda d: d.update(width=0), "width"),
    (lambda d: d.update(widht=3), "widht"),
    (lambda d: d.pop("components"), "components"),
    (lambda d: d.update(format="fnapi.template/9"), "format"),
    (lambda d: d["components"][1].update(id="one"), "components[1].id"),
    (lambda d: d["components"][0]["neurons"].update({"0": [1, "x"]}), "components[0].neurons.0[1]"),
    (lambda d: d["components"][0]["neurons"].update({"0": [64]}), "components[0].neurons.0"),
    (lambda d: d["components"][0]["neurons"].update({"layer": [1]}), "components[0].neurons.layer"),
    (lambda d: d["components"][0].update(stability="high"), "components[0].stability"),
    (lambda d: d["components"][2].update(id=0), "components[2].id"),
    (lambda d: d["components"][0].update(neurons_=1), "components[0].neurons_"),
    (lambda d: d["model"].update(hidden_size=32), "model.hidden_size"),
    (lambda d: d.update(layers=[0, 5]), "layers"),
])
def test_strict_errors_name_file_and_field(tmp_path, mutate, field):
    data = make_template().to_dict()
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(TemplateError) as info:
        Template.load(path)
    message = info.value.message
    assert str(path) in message
    # "file: field: why" for one problem, or "file: invalid template" then one "  field: why" line each
    assert f"{path}: {field}:" in message or f"\n  {field}:" in message, message


def test_unreadable_files_are_template_errors(tmp_path):
    with pytest.raises(TemplateError, match="not found"):
        Template.load(tmp_path / "missing.json")
    with pytest.raises(TemplateError, match=r"not valid JSON.*line 1"):
        Template.load(_write(tmp_path, "{nope"))
    with pytest.raises(TemplateError, match="not a known legacy layout"):
        Template.load(_write(tmp_path, {"hello": 1}))


# ---- legacy layouts ------------------------------------------------------------------------------

def test_predecessor_templates_layout_imports_with_warning():
    template = Template.load(LEGACY / "global_templates_v1.json")
    assert template.method["name"] == "imported" and template.method["from"] == "templates+layout"
    assert (template.site, template.width, template.layers) == ("mlp.out", 64, [0, 1, 2])
    assert template.component(0).neurons == {0: [12, 40], 2: [7]}
    assert template.component_ids == [0, 1, 2]
    assert UNKNOWN_MODEL_WARNING in template.warnings


def test_predecessor_guide_layout_imports_with_layer_keys():
    template = Template.load(LEGACY / "guide_layout.json")
    assert template.component(0).neurons == {0: [23, 45], 1: [34]}
    assert template.component(1).neurons == {3: [5]}
    assert template.width == 46  # inferred: largest index + 1
    assert template.model["name"] == "meta-llama/Llama-3.2-1B-Instruct"
    assert template.method["percentile"] == 98.0
    assert any("inferred" in w for w in template.warnings)


def test_loki_list_imports_as_one_component_with_quota():
    template = Template.load(LEGACY / "10.json")
    assert template.method == {"name": "imported", "from": "loki", "quota": 10.0, "inferred": ["width"]}
    assert template.num_layers == 4 and template.layers == [0, 1, 2, 3]
    assert template.component_ids == [0]
    assert template.component(0).neurons == {0: [5, 17, 30], 1: [2, 8], 3: [41]}
    assert UNKNOWN_MODEL_WARNING in template.warnings


def test_legacy_import_takes_shape_from_model_info(tmp_path):
    path = tmp_path / "pos.json"
    path.write_text("[[1, 2], [63]]")
    template = Template.load(path, model_info=INFO)
    assert (template.width, template.num_layers, template.model["name"]) == (64, 2, "tiny-llama")
    assert "quota" not in template.method
    assert template.check_compatible(INFO) == []
    path.write_text("[[1], [2], [3]]")
    with pytest.raises(TemplateError, match="3 per-layer lists but the model has 2 layers"):
        Template.load(path, model_info=INFO)


def test_legacy_errors_name_the_field(tmp_path):
    path = _write(tmp_path, {"components": {"0": {"lyr_0": [1]}}, "metadata": {}})
    with pytest.raises(TemplateError, match=r"components\.0\.lyr_0: layer key must look like 'layer_3'"):
        Template.load(path)
    path = _write(tmp_path, [[1, 2], [-3]])
    with pytest.raises(TemplateError, match=r"\[1\]\[0\]"):
        Template.load(path)


def test_imported_template_saves_as_native(tmp_path):
    template = Template.load(LEGACY / "global_templates_v1.json")
    again = Template.load(template.save(tmp_path / "native.json"))
    assert again == template


# ---- compatibility ------------------------------------------------------------------------------

def test_check_compatible_names_both_shapes():
    template = make_template()
    assert template.check_compatible(INFO) == []
    other = {**INFO, "num_layers": 30, "hidden_size": 576}
    with pytest.raises(TemplateError) as info:
        template.check_compatible(other)
    assert "template was built for 2 layers x 64 (mlp.out) but the model has 30 layers x 576" in info.value.message


def test_check_compatible_uses_the_site_width():
    hidden = make_template(site="mlp.hidden", width=128, model={})
    assert hidden.check_compatible(INFO) == [UNKNOWN_MODEL_WARNING]
    with pytest.raises(TemplateError, match=r"2 layers x 128 \(mlp.hidden\) but the model has 2 layers x 256"):
        hidden.check_compatible({**INFO, "intermediate_size": 256})


def test_fingerprint_mismatch_on_same_shape_is_a_warning():
    warnings = make_template().check_compatible({**INFO, "fingerprint": "fff000"})
    assert len(warnings) == 1 and "abc123" in warnings[0] and "fff000" in warnings[0]


@pytest.mark.parametrize("recorded, loaded, other", [
    ({"fingerprint": "abc123"}, {"fingerprint": "abc123", "name": "renamed-copy"}, False),  # weights decide
    ({"fingerprint": "abc123"}, {"fingerprint": "fff000"}, True),
    ({"fingerprint": None, "name": "HuggingFaceTB/SmolLM2-135M-Instruct"},
     {"fingerprint": None, "name": "/cache/SmolLM2-135M-Instruct.Q4_1.gguf"}, False),  # the same model, spelled otherwise
    ({"fingerprint": None, "name": "meta-llama/Llama-3.2-1B"}, {"fingerprint": "fff000", "name": "tiny-llama"}, True),
    ({"fingerprint": None, "name": None}, {"fingerprint": "fff000"}, False),  # unknown: a warning, not a verdict
])
def test_other_model_is_decided_by_weights_then_by_name(recorded, loaded, other):
    template = make_template(model={**model_identity(INFO), **recorded})
    reason = template.other_model({**INFO, **loaded})
    assert (reason is not None) == other
    if other:
        assert reason in template.check_compatible({**INFO, **loaded})


def test_imported_template_fits_any_wider_model():
    template = Template.load(LEGACY / "10.json")  # 4 layers, width inferred as 42
    template.check_compatible({**INFO, "num_layers": 4, "hidden_size": 576})
    with pytest.raises(TemplateError, match="4 layers x 42"):
        template.check_compatible({**INFO, "num_layers": 5, "hidden_size": 576})


# ---- components and neuron sets -------------------------------------------------------------------

def test_unknown_component_lists_existing_ids():
    with pytest.raises(TemplateError, match="no component 7; it has components 0, 1, 2"):
        make_template().component(7)
    with pytest.raises(TemplateError, match="no component 9"):
        make_template().neuron_sets([0, 9])


def test_neuron_sets_union_per_layer_and_layer_filter():
    template = make_template()
    assert template.neuron_sets([0, 2]) == {0: [1, 2, 5], 1: [7]}
    assert template.neuron_sets([0, 1], layers=[1]) == {1: [7, 8, 9]}
    assert template.neuron_sets([2]) == {0: [1, 2], 1: []}


def test_stable_takes_the_most_stable_components():
    template = make_template()
    assert [c.id for c in template.components_by_stability()] == [0, 2, 1]
    assert template.neuron_sets("stable", top_stable=2) == template.neuron_sets([0, 2])
    unscored = Template.load(LEGACY / "10.json")
    with pytest.raises(TemplateError, match="no stability scores"):
        unscored.neuron_sets("stable")


def test_summary_rows():
    rows = make_template().summary_rows()
    assert rows[0]["id"] == 0 and rows[0]["size"] == 3 and rows[0]["top_tokens"] == [" the"]
    assert rows[0]["percent"] == pytest.approx(100 * 3 / 128)
    assert rows[1]["per_layer"] == {1: 3}


# ---- IoU and comparison -------------------------------------------------------------------------

def test_iou_is_layer_aware():
    assert iou({0: [1, 2, 3]}, {0: [2, 3, 4]}) == pytest.approx(2 / 4)
    assert iou({0: [1]}, {1: [1]}) == 0.0  # same channel, different layer
    assert iou({0: [1], 1: [1]}, {0: [1], 1: [1]}) == 1.0
    assert iou({}, {}) == 0.0


def test_compare_matrix_and_best_matches():
    a = make_template()
    b = make_template(components=[Component(10, {0: [1, 2], 1: [8]}), Component(11, {1: [7, 8, 9, 10]})])
    result = compare(a, b)
    assert result.ids_a == [0, 1, 2] and result.ids_b == [10, 11]
    expected = [[1 / 5, 1 / 6], [1 / 5, 3 / 4], [2 / 3, 0.0]]
    assert result.iou == [pytest.approx(row) for row in expected]
    assert [(m["component"], m["match"]) for m in result.best_matches] == [(0, 10), (1, 11), (2, 10)]
    assert result.mean_best_iou == pytest.approx((1 / 5 + 3 / 4 + 2 / 3) / 3)


def test_compare_refuses_different_site_or_width():
    with pytest.raises(TemplateError, match="mlp.out x 64.*mlp.hidden x 128"):
        compare(make_template(), make_template(site="mlp.hidden", width=128, model={}))
    with pytest.raises(TemplateError, match="different sites or widths"):
        compare(make_template(), make_template(width=32, model={}))


# ---- CLI ----------------------------------------------------------------------------------------

def test_cli_show_json(tmp_path, capsys):
    path = make_template().save(tmp_path / "t.json")
    assert main(["template", "show", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["site"] == "mlp.out" and [c["id"] for c in out["components"]] == [0, 1, 2]
    assert out["components"][1]["per_layer"] == {"1": 3}


def test_cli_show_table(tmp_path, capsys):
    assert main(["template", "show", str(LEGACY / "guide_layout.json")]) == 0
    out = capsys.readouterr().out
    assert "meta-llama/Llama-3.2-1B-Instruct" in out and "L3:1" in out and "warning" in out


def test_cli_compare_json(tmp_path, capsys):
    a = make_template().save(tmp_path / "a.json")
    b = make_template(components=[Component(4, {0: [1, 5]})]).save(tmp_path / "b.json")
    assert main(["template", "compare", str(a), str(b), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["iou"] == [[pytest.approx(2 / 3)], [0.0], [pytest.approx(1 / 3)]]
    assert out["best_matches"][0] == {"component": 0, "match": 4, "iou": pytest.approx(2 / 3)}
    assert out["mean_best_iou"] == pytest.approx(1 / 3)
    assert main(["template", "compare", str(a), str(b)]) == 0
    assert "mean best IoU 0.333" in capsys.readouterr().out


def test_cli_broken_file_exits_2(tmp_path, capsys):
    path = _write(tmp_path, "[[1, 2], {}]")
    assert main(["template", "show", str(path)]) == 2
    assert str(path) in capsys.readouterr().err
    assert main(["template", "compare", str(path), str(LEGACY / "10.json")]) == 2


def test_one_position_names_the_position_all_top_tokens_share():
    def component(positions):
        top = [{"token": "x", "context": "x", "activation": 1.0, "position": p} for p in positions]
        return Component(0, {0: [1]}, 0.9, {"top_tokens": top})

    assert component([0, 0, 0]).one_position == 0
    assert component([4, 4, 4, 4]).one_position == 4
    assert component([0, 0, 1]).one_position is None
    assert component([0, 0]).one_position is None  # two tokens say too little
    assert Component(0, {0: [1]}, 0.9, {"top_tokens": [{"token": "x"}] * 3}).one_position is None  # no positions


def test_overlaps_list_every_pair_that_shares_neurons_most_shared_first():
    template = Template(site="mlp.out", width=8, num_layers=2, components=[
        Component(0, {0: [1, 2, 3], 1: [4]}), Component(1, {0: [2, 3], 1: [4, 5]}), Component(2, {1: [5]}),
        Component(3, {0: [7]})])
    assert template.overlaps() == [(0, 1, 3, 3 / 5), (1, 2, 1, 1 / 4)]


def test_template_errors_carry_every_problem_with_its_path(tmp_path):
    data = make_template().to_dict()
    data["widht"] = 3
    data["components"][0]["neurons"]["x"] = [1]
    data["components"][1]["stability"] = "high"
    with pytest.raises(TemplateError) as info:
        Template.load(_write(tmp_path, data))
    paths = [problem.path for problem in info.value.problems]
    assert sorted(paths) == ["components[0].neurons.x", "components[1].stability", "widht"]
    assert "did you mean 'width'?" in info.value.message
