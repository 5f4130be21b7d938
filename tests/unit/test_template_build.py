"""Building templates from data: every family through build_template, and `fnapi template build`."""

from __future__ import annotations

import json
import threading

import pytest
from pydantic import ValidationError

from fnapi.cli import main
from fnapi.errors import CancelledError, TemplateError
from fnapi.models.loading import LoadedModel, describe
from fnapi.models.registry import SUPPORTED_FAMILIES, get_adapter
from fnapi.models.tiny import HIDDEN_SIZE, INTERMEDIATE_SIZE, save_tiny, tiny_model, tiny_tokenizer
from fnapi.networks.build import build_template, default_template_path
from fnapi.networks.template import Template
from fnapi.recipe import SelectionSection, TemplateSection

WORDS = "red green blue cat dog bird one two three sun rain snow river hill town road".split()
SMALL = dict(components=3, runs=3, samples=16, max_length=24)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "text.jsonl"
    rows = [{"text": " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(6 + i % 5)) + "."}
            for i in range(30)]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


def _loaded(family: str, num_layers: int = 2) -> LoadedModel:
    model = tiny_model(family, num_layers=num_layers)
    return LoadedModel(model, tiny_tokenizer(), describe(model, f"tiny-{family}"), get_adapter(model), "test")


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_every_family_builds_a_complete_template(family, text_file, tmp_path):
    loaded = _loaded(family)
    template = build_template(loaded, TemplateSection(**SMALL), [str(text_file)], seed=0)
    assert (template.site, template.width, template.num_layers, template.layers) == ("mlp.out", HIDDEN_SIZE, 2, [0, 1])
    assert template.model["name"] == f"tiny-{family}" and template.model["fingerprint"] == loaded.info.fingerprint
    assert template.method["name"] == "ica" and template.method["runs"] == 3 and template.method["seed"] == 0
    assert template.method["selection"] == {"rule": "percentile", "value": 98.0, "sign": "abs"}
    assert template.data["sources"] == [str(text_file)] and template.data["rows"] == 16
    assert template.data["tokens"] > 16 and len(template.data["fingerprint"]) == 12
    assert [c.id for c in template.components] == [0, 1, 2]
    stabilities = [c.stability for c in template.components]
    assert stabilities == sorted(stabilities, reverse=True)
    for component in template.components:
        assert component.size >= 1
        top = component.stats["top_tokens"]
        assert top and {"token", "context", "activation"} <= set(top[0])
        assert [t["activation"] for t in top] == sorted((t["activation"] for t in top), reverse=True)
    template.check_compatible(loaded.info)
    again = Template.load(template.save(tmp_path / "t.json"))
    assert again.components[0].neurons == template.components[0].neurons


def test_hidden_site_per_layer_mode_and_layer_filter(text_file):
    loaded = _loaded("llama", num_layers=3)
    section = TemplateSection(**{**SMALL, "components": 2}, site="mlp.hidden", mode="per_layer", layers="1:",
                              selection=SelectionSection(rule="topk", value=5, sign="positive"))
    template = build_template(loaded, section, [str(text_file)], seed=1)
    assert (template.width, template.layers) == (INTERMEDIATE_SIZE, [1, 2])
    assert [c.stats["layer"] for c in template.components] == [1, 1, 2, 2]
    for component in template.components:
        assert list(component.neurons) == [component.stats["layer"]]
        assert 1 <= component.size <= 5


def test_more_components_than_the_tokens_allow_are_capped_with_a_recorded_warning(text_file):
    from fnapi.events import ListSink

    sink = ListSink()
    section = TemplateSection(**{**SMALL, "samples": 2, "max_length": 8, "components": 50})
    template = build_template(_loaded("llama"), section, [str(text_file)], seed=0, sink=sink)
    tokens = template.data["tokens"]
    assert len(template.components) < 50 and len(template.components) <= tokens - 1
    assert len(template.warnings) == 1 and "asked for 50 components" in template.warnings[0]
    assert f"{tokens} captured token rows allow only {len(template.components)}" in template.warnings[0]
    assert any(getattr(e, "level", None) == "warning" and "asked for 50" in e.message for e in sink.events)
    full = build_template(_loaded("llama"), TemplateSection(**SMALL), [str(text_file)], seed=0)
    assert full.warnings == []


def test_same_seed_gives_the_same_template(text_file):
    loaded = _loaded("qwen2")
    a, b = (build_template(loaded, TemplateSection(**SMALL), [str(text_file)], seed=3) for _ in range(2))
    assert [c.neurons for c in a.components] == [c.neurons for c in b.components]
    assert a.data["fingerprint"] == b.data["fingerprint"]


def test_bad_selection_fails_before_any_work(text_file):
    with pytest.raises(ValidationError, match="selection.value 120.0 is not a percentile"):
        SelectionSection(rule="percentile", value=120.0)  # a recipe cannot even hold it
    unchecked = SelectionSection.model_construct(rule="percentile", value=120.0, sign="abs")
    section = TemplateSection(**SMALL).model_copy(update={"selection": unchecked})
    with pytest.raises(TemplateError, match="selection.value 120.0 is not a percentile"):
        build_template(_loaded("llama"), section, [str(text_file)], seed=0)


def test_cancel_stops_the_build(text_file):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(CancelledError):
        build_template(_loaded("llama"), TemplateSection(**SMALL), [str(text_file)], seed=0, cancel=cancel)


def test_attribution_method_is_delegated(text_file):
    section = TemplateSection(**{**SMALL, "samples": 3, "max_length": 12}, method="attribution",
                              selection=SelectionSection(rule="percentile", value=90.0))
    template = build_template(_loaded("llama"), section, [str(text_file)], seed=0)
    assert template.method["name"] == "attribution"
    assert template.data["sources"] == [str(text_file)]
    with pytest.raises(TemplateError, match="mlp.out only"):
        build_template(_loaded("llama"), TemplateSection(**SMALL, method="attribution", site="mlp.hidden"),
                       [str(text_file)], seed=0)


def test_default_path_names_model_data_and_settings():
    section = TemplateSection(components=7, site="mlp.hidden", mode="per_layer")
    path = default_template_path("HuggingFaceTB/SmolLM2-135M", ["data/my set.jsonl", "builtin:text"], section, 4)
    assert str(path) == "ica_templates/HuggingFaceTB--SmolLM2-135M/my_set+text/ica-mlp.hidden-per_layer-k7-seed4.json"


# ---- the command ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny("gpt2", tmp_path_factory.mktemp("models") / "tiny-gpt2")


def test_cli_builds_and_prints_the_path_last(model_dir, text_file, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["template", "build", "--model", str(model_dir), "--data", str(text_file), "--samples", "12",
                 "--max-length", "24", "--components", "3", "--runs", "2", "--seed", "5", "--site", "mlp.hidden"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    path = captured.out.strip().splitlines()[-1]
    assert path == "ica_templates/tiny-gpt2/text/ica-mlp.hidden-global-k3-seed5.json"
    template = Template.load(tmp_path / path)
    assert (template.site, template.width, template.method["seed"]) == ("mlp.hidden", INTERMEDIATE_SIZE, 5)
    assert "[capture]" in captured.err and "[ica]" in captured.err


def test_a_template_that_cannot_be_written_is_kept_in_a_fallback_file(model_dir, text_file, tmp_path, monkeypatch,
                                                                     capsys):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    target = blocker / "t.json"  # its parent is a file: the save fails after the ICA work is done
    code = main(["template", "build", "--model", str(model_dir), "--data", str(text_file), "--samples", "12",
                 "--max-length", "24", "--components", "2", "--runs", "2", "--out", str(target)])
    err = capsys.readouterr().err
    kept = tmp_path / "tmp" / "fnapi-unsaved-templates" / "t.json"
    assert code == 2 and "Traceback" not in err
    assert str(blocker) in err and f"kept in {kept}" in err and f"cp {kept} {target}" in err
    assert len(Template.load(kept).components) == 2


def test_cli_takes_settings_from_a_recipe(model_dir, text_file, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"version: 1\nname: r\nseed: 2\nmodel: {{name: '{model_dir}'}}\n"
                      f"template: {{data: ['{text_file}'], samples: 10, max_length: 20, components: 2, runs: 2}}\n")
    out = tmp_path / "mine.json"
    assert main(["template", "build", "--recipe", str(recipe), "--out", str(out), "--components", "3"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    template = Template.load(out)
    assert len(template.components) == 3 and template.method["seed"] == 2 and template.data["rows"] == 10


@pytest.mark.parametrize("args, message", [
    (["--data", "{empty}"], "empty"),
    (["--data", "{text}", "--threshold", "0"], "selection.value 0.0 is not a percentile"),
    (["--data", "{text}", "--site", "mlp.in"], "site"),
    (["--data", "{text}", "--layers", "7"], "layer 7 is out of range"),
])
def test_cli_bad_input_exits_2(args, message, model_dir, text_file, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    args = [a.replace("{empty}", str(empty)).replace("{text}", str(text_file)) for a in args]
    code = main(["template", "build", "--model", str(model_dir), "--out", str(tmp_path / "t.json"), *args])
    captured = capsys.readouterr()
    assert code == 2
    assert message in captured.err
    assert captured.out == ""


def test_components_whose_top_tokens_share_one_position_are_named_in_a_warning(text_file, monkeypatch):
    import fnapi.networks.build as build

    real = build.top_tokens

    def first_token_for_component_1(*args, **kwargs):
        tokens = real(*args, **kwargs)
        tokens[1] = [{**entry, "position": 0} for entry in tokens[1]]
        return tokens

    monkeypatch.setattr(build, "top_tokens", first_token_for_component_1)
    template = build_template(_loaded("llama"), TemplateSection(**SMALL), [str(text_file)], seed=0)
    assert template.components[1].one_position == 0
    assert [w for w in template.warnings if "one position" in w] == [
        "component #1: every top token sits at one position (usually the first token); protecting such a "
        "component keeps little knowledge"]


def test_each_neuron_of_a_component_records_its_loading_activation_and_tokens(text_file, tmp_path):
    from fnapi.networks.capture import capture_activations, load_sequences

    loaded = _loaded("llama")
    section = TemplateSection(**SMALL)
    template = build_template(loaded, section, [str(text_file)], seed=0)
    data = load_sequences([str(text_file)], loaded.tokenizer, samples=section.samples, max_length=section.max_length)
    acts = capture_activations(loaded.model, data.sequences, exclude_token_ids=loaded.tokenizer.all_special_ids,
                               max_length=section.max_length)
    for component in template.components:
        detail = component.stats["neuron_detail"]
        assert len(detail["layer"]) == len(detail["loading"]) == len(detail["top_tokens"]) == component.size
        layer, channel = detail["layer"][0], detail["channel"][0]
        assert channel in component.neurons[layer]
        column = acts.layers.index(layer) * acts.width + channel
        values = acts.values[:, column].float()
        found = component.neuron_detail(layer, channel)
        assert found["mean"] == pytest.approx(float(values.mean()), abs=1e-4)
        assert found["std"] == pytest.approx(float(values.std(unbiased=False)), abs=1e-4)
        assert found["loading"] != 0
        counts = [count for _, count in found["top_tokens"]]
        assert counts == sorted(counts, reverse=True) and sum(counts) <= 32
    assert template.components[0].neuron_detail(99, 0) is None
    again = Template.load(template.save(tmp_path / "t.json"))  # the detail survives the file
    first = template.components[0]
    layer, channel = first.stats["neuron_detail"]["layer"][0], first.stats["neuron_detail"]["channel"][0]
    assert again.components[0].neuron_detail(layer, channel) == first.neuron_detail(layer, channel)
