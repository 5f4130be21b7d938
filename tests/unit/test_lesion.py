"""Lesion study: a planted network hurts far more than random neurons; draws are seeded; bad input fails."""

from __future__ import annotations

import json

import pytest
import torch

from fnapi.cli import main
from fnapi.data.builtin import probe_items
from fnapi.data.templating import collate, encode, resolve_template
from fnapi.errors import TemplateError
from fnapi.lesion import Measure, lesion_study, parse_component_ids, probe_scores, random_neurons
from fnapi.masking import mask
from fnapi.models.loading import LoadedModel, describe
from fnapi.models.registry import get_adapter
from fnapi.models.tiny import HIDDEN_SIZE, save_tiny, tiny_model, tiny_tokenizer
from fnapi.networks.template import Component, Template, model_identity

PLANTED = {0: [3, 17, 30, 50], 1: [5, 21, 40, 60]}
ORDINARY = {0: [1, 2, 8, 9], 1: [10, 11, 12, 13]}
PROBES = 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def planted() -> tuple[LoadedModel, Template]:
    """A tiny model that learned the first probe answers through a few huge MLP output channels.

    The planted channels' down-projection rows are scaled up 100x before training, so they
    dominate the residual stream and the model has to carry what it learns through them.
    """
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = tiny_model("llama", seed=0)
    tokenizer = tiny_tokenizer()
    adapter = get_adapter(model)
    with torch.no_grad():
        for layer, channels in PLANTED.items():
            adapter.down_proj(model, layer).weight[channels] *= 100
    encoded, _ = encode([item.to_conversation() for item in probe_items(PROBES)], tokenizer,
                        resolve_template(tokenizer, "auto"))
    batch = collate([{"input_ids": e.input_ids, "labels": e.labels} for e in encoded], tokenizer.pad_token_id)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(80):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    model.eval()
    info = describe(model, "tiny-planted")
    template = Template(site="mlp.out", width=HIDDEN_SIZE, num_layers=2, model=model_identity(info),
                        components=[Component(0, PLANTED), Component(1, ORDINARY)])
    return LoadedModel(model, tokenizer, info, adapter, "test"), template


@pytest.fixture(scope="module")
def study(planted):
    loaded, template = planted
    return lesion_study(loaded, template, draws=3, probe_samples=PROBES, seed=0)


def test_planted_network_hurts_far_more_than_random_neurons(study):
    assert study.base["accuracy"] >= 0.9  # the model did learn the probes it is scored on
    planted_lesion, ordinary_lesion = study.components
    assert (planted_lesion.size, planted_lesion.per_layer) == (8, {0: 4, 1: 4})
    assert planted_lesion.percent == pytest.approx(100 * 8 / (2 * HIDDEN_SIZE))
    logprob = planted_lesion.logprob
    assert logprob.drop > 2.0
    assert len(logprob.random_drops) == 3 and logprob.drop > 2 * max(logprob.random_drops)
    assert logprob.ratio > 10
    assert ordinary_lesion.logprob.ratio is not None and ordinary_lesion.logprob.ratio < logprob.ratio / 4
    # On 16 items accuracy is coarse: a lesion can lower every choice's logprob alike and leave
    # the argmax in place, so accuracy only has to be hurt at least as much as by random neurons.
    assert planted_lesion.accuracy.drop >= max(planted_lesion.accuracy.random_drops)


def test_scores_and_ratios_come_from_real_measurements(planted, study):
    loaded, template = planted
    items = probe_items(PROBES)
    assert study.base == probe_scores(loaded.model, loaded.tokenizer, items)
    with mask(loaded.model, template, components=[0], ablate="selected"):
        lesioned = probe_scores(loaded.model, loaded.tokenizer, items)
    planted_lesion = study.components[0]
    assert planted_lesion.logprob.score == pytest.approx(lesioned["logprob"])
    assert planted_lesion.logprob.drop == pytest.approx(study.base["logprob"] - lesioned["logprob"])
    draw = random_neurons(planted_lesion.per_layer, HIDDEN_SIZE, seed=0, component=0, draw=1)
    with mask(loaded.model, draw, ablate="selected"):
        random_hit = probe_scores(loaded.model, loaded.tokenizer, items)
    assert planted_lesion.logprob.random_drops[1] == pytest.approx(study.base["logprob"] - random_hit["logprob"])
    m = planted_lesion.logprob
    assert m.ratio == pytest.approx(m.drop / (sum(m.random_drops) / 3))
    summary = study.summary["logprob"]
    drops = [c.logprob.drop for c in study.components]
    randoms = [c.logprob.random_mean for c in study.components]
    assert summary["ratio"] == pytest.approx((sum(drops) / 2) / (sum(randoms) / 2))
    data = json.loads(json.dumps(study.to_dict()))
    assert data["components"][0]["logprob"]["ratio"] == pytest.approx(m.ratio)
    assert data["summary"]["logprob"]["ratio"] == pytest.approx(summary["ratio"])


def test_ratio_is_undefined_when_random_lesions_do_not_hurt():
    assert Measure(score=0.5, drop=0.2, random_drops=[0.0, 0.0]).ratio is None
    assert Measure(score=0.5, drop=0.2, random_drops=[-0.1, 0.05]).ratio is None
    assert Measure(score=0.5, drop=0.2, random_drops=[0.1, 0.3]).ratio == pytest.approx(1.0)


def test_random_draws_are_seeded_and_match_the_component_per_layer():
    per_layer = {0: 4, 1: 3}
    first = random_neurons(per_layer, HIDDEN_SIZE, seed=7, component=2, draw=0)
    assert first == random_neurons(per_layer, HIDDEN_SIZE, seed=7, component=2, draw=0)
    assert {layer: len(ch) for layer, ch in first.items()} == per_layer
    assert all(len(set(ch)) == len(ch) and all(0 <= c < HIDDEN_SIZE for c in ch) for ch in first.values())
    others = [random_neurons(per_layer, HIDDEN_SIZE, seed=7, component=2, draw=1),
              random_neurons(per_layer, HIDDEN_SIZE, seed=8, component=2, draw=0),
              random_neurons(per_layer, HIDDEN_SIZE, seed=7, component=3, draw=0)]
    assert all(other != first for other in others)


def test_a_study_is_deterministic(planted, study):
    loaded, template = planted
    again = lesion_study(loaded, template, components=[0], draws=3, probe_samples=PROBES, seed=0)
    assert again.components[0].to_dict() == study.components[0].to_dict()
    other_seed = lesion_study(loaded, template, components=[0], draws=3, probe_samples=PROBES, seed=1)
    assert other_seed.components[0].logprob.random_drops != study.components[0].logprob.random_drops


def test_unknown_component_and_foreign_template_are_errors(planted):
    loaded, template = planted
    with pytest.raises(TemplateError, match="no component 7"):
        lesion_study(loaded, template, components=[0, 7], probe_samples=2)
    narrow = Template(site="mlp.out", width=32, num_layers=2, components=[Component(0, {0: [1]})])
    with pytest.raises(TemplateError, match="32"):
        lesion_study(loaded, narrow, probe_samples=2)
    with pytest.raises(TemplateError, match="comma"):
        parse_component_ids("0,x")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lesion_cli")
    model_dir = save_tiny("llama", folder / "model")
    template = Template(site="mlp.out", width=HIDDEN_SIZE, num_layers=2,
                        components=[Component(0, {0: [1, 2], 1: [3]}), Component(1, {1: [4, 5, 6]})])
    return model_dir, template.save(folder / "template.json")


def test_cli_json_and_out_file(saved, tmp_path, capsys):
    model_dir, template_file = saved
    out = tmp_path / "lesion.json"
    code = main(["lesion-study", "--model", str(model_dir), "--template", str(template_file), "--components", "1",
                 "--random-draws", "2", "--probe-samples", "4", "--seed", "3", "--json", "--out", str(out)])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert [c["id"] for c in printed["components"]] == [1]
    assert len(printed["components"][0]["logprob"]["random_drops"]) == 2
    assert (printed["probe_samples"], printed["draws"], printed["seed"]) == (4, 2, 3)
    assert json.loads(out.read_text()) == printed


def test_cli_table_and_bad_input(saved, capsys):
    model_dir, template_file = saved
    code = main(["lesion-study", "--model", str(model_dir), "--template", str(template_file),
                 "--random-draws", "2", "--probe-samples", "4"])
    assert code == 0
    out = capsys.readouterr().out
    assert "probe accuracy" in out and "mean log-prob of the right answer" in out and "base" in out
    assert main(["lesion-study", "--model", str(model_dir), "--template", str(template_file), "--components", "9"]) == 2
    assert "no component 9" in capsys.readouterr().err


def test_cli_defaults_are_the_library_defaults():
    import inspect

    from fnapi.cli.study import lesion_study as command
    from fnapi.lesion import DEFAULT_DRAWS, DEFAULT_PROBE_SAMPLES

    options = inspect.signature(command).parameters
    library = inspect.signature(lesion_study).parameters
    assert options["draws"].default.default == library["draws"].default == DEFAULT_DRAWS >= 3
    assert options["probe_samples"].default.default == library["probe_samples"].default == DEFAULT_PROBE_SAMPLES
