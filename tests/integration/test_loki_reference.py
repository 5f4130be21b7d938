"""`template.method: loki` picks the rows LoKI's own code picks on the embedded model.

tests/data/loki-reference/ holds what LoKI's code produced on SmolLM2-135M-Instruct: its MMLU prompt
ids and predicted token for 12 items, and its position file at a 20% quota (115 rows per layer).
LoKI's layer-balanced rule treats every layer on its own, so a spread of layers checks the rule and
the attribution in a fraction of the time all 30 take.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fnapi.data.probes import load_probes
from fnapi.models.loading import EMBEDDED_MODEL, load_model
from fnapi.networks.loki import kva_prompt_ids, kva_scores, select_loki_rows
from fnapi.networks.template import Template

pytestmark = pytest.mark.slow

REFERENCE = Path(__file__).parent.parent / "data" / "loki-reference"
LAYERS = [0, 6, 12, 18, 24, 29]


@pytest.fixture(scope="module")
def loaded():
    return load_model(EMBEDDED_MODEL)


@pytest.fixture(scope="module")
def reference():
    tokens = json.loads((REFERENCE / "items_tokens.json").read_text())
    items = load_probes(str(REFERENCE / "items.json")).items[: len(tokens)]
    return items, tokens, json.loads((REFERENCE / "loki-20.json").read_text())


def _jaccard(a, b) -> float:
    a, b = set(a), set(b)
    return len(a & b) / len(a | b)


def test_prompts_and_predictions_are_lokis(loaded, reference):
    items, tokens, _ = reference
    for item, expected in zip(items, tokens):
        ids = kva_prompt_ids(loaded.tokenizer, item)
        assert ids == expected["input_ids"]
    import torch

    with torch.no_grad():
        logits = loaded.model(input_ids=torch.tensor([tokens[0]["input_ids"]])).logits
    assert int(logits[0, -1].argmax()) == tokens[0]["pred"]


def test_loki_rows_match_lokis_position_file(loaded, reference):
    items, tokens, positions = reference
    prompts = [kva_prompt_ids(loaded.tokenizer, item) for item in items]
    scores = kva_scores(loaded.model, prompts, layers=LAYERS)
    assert scores.dtype == np.float16 and scores.shape == (12, len(LAYERS), 576)
    rows = select_loki_rows(scores, 20, LAYERS)
    overlaps = [_jaccard(rows[layer], positions[layer]) for layer in LAYERS]
    assert all(len(rows[layer]) == 115 for layer in LAYERS)
    assert float(np.mean(overlaps)) >= 0.8, overlaps
    # keeping the rows of lowest |score| instead (the `attribution` method's rule) picks another set
    near_zero = select_loki_rows(np.abs(scores.astype(np.float32)), 20, LAYERS)
    assert float(np.mean([_jaccard(near_zero[layer], positions[layer]) for layer in LAYERS])) < 0.2


def test_an_imported_loki_file_is_component_0_like_our_loki_template():
    imported = Template.load(REFERENCE / "loki-20.json")
    assert [c.id for c in imported.components] == [0]
    assert sorted(imported.components[0].neurons[3]) == sorted(json.loads((REFERENCE / "loki-20.json").read_text())[3])
