"""Templates on the embedded SmolLM2-135M-Instruct with builtin:text.

The main check is the promise of the default settings: the five most stable components of two
builds that differ only in seed share their neurons (IoU >= 0.8 at the 98th percentile).
"""

from __future__ import annotations

import pytest

from fnapi.cli import main
from fnapi.models.loading import EMBEDDED_MODEL, load_model
from fnapi.networks.build import build_template
from fnapi.networks.template import Template, iou
from fnapi.recipe import TemplateSection

pytestmark = pytest.mark.slow

DATA = ["builtin:text"]


@pytest.fixture(scope="module")
def loaded():
    return load_model(EMBEDDED_MODEL)


@pytest.fixture(scope="module")
def two_seeds(loaded):
    section = TemplateSection()  # the defaults: 64 rows x 128 tokens, 10 components, 10 runs, mlp.out
    return [build_template(loaded, section, DATA, seed=seed) for seed in (0, 1)]


def test_default_template_describes_the_model_and_data(loaded, two_seeds):
    template = two_seeds[0]
    assert (template.site, template.width, template.num_layers, len(template.layers)) == ("mlp.out", 576, 30, 30)
    assert template.model["name"] == EMBEDDED_MODEL and template.model["fingerprint"] == loaded.info.fingerprint
    assert template.method["runs"] == 10 and template.method["components"] == 10
    assert template.data["rows"] == 64 and template.data["tokens"] > 1000
    assert len(template.components) == 10
    for component in template.components:
        # the 98th percentile of 17,280 neurons
        assert 340 <= component.size <= 350
        assert component.stats["top_tokens"][0]["context"].strip()
    template.check_compatible(loaded.info)


def test_five_most_stable_components_survive_a_change_of_seed(two_seeds):
    a, b = (t.components_by_stability()[:5] for t in two_seeds)
    assert all(c.stability is not None and c.stability > 0.5 for c in a + b)
    best = [max(iou(x.neurons, y.neurons) for y in b) for x in a]
    assert min(best) >= 0.8, best


def test_cli_builds_on_the_embedded_model_by_default(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["template", "build", "--samples", "12", "--max-length", "48", "--components", "4", "--runs", "2",
                 "--layers", "20:"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    path = captured.out.strip().splitlines()[-1]
    assert path == f"ica_templates/{EMBEDDED_MODEL}/text/ica-mlp.out-global-k4-seed0.json"
    template = Template.load(tmp_path / path)
    assert template.layers == list(range(20, 30)) and len(template.components) == 4
