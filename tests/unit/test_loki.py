"""LoKI's selection rule and its template, on hand-made scores and a tiny model."""

from __future__ import annotations

import numpy as np
import pytest

from fnapi.errors import TemplateError
from fnapi.networks.loki import kva_prompt, kva_scores, loki_rows_per_layer, select_loki_rows


def test_quota_split_is_lokis():
    assert loki_rows_per_layer(20, 30, 576) == 115  # LoKI's own file for SmolLM2-135M holds 115 a layer
    assert loki_rows_per_layer(10, 32, 4096) == 409


def test_the_rule_keeps_the_lowest_signed_scores_not_those_near_zero():
    # per item, rows 0-1 strongly negative, 2-3 near zero, 4-9 positive
    scores = np.array([[[-5.0, -4.0, 0.01, -0.01, 1, 2, 3, 4, 5, 6]]] * 3, dtype=np.float16)
    rows = select_loki_rows(scores, 20, [7])
    assert rows == {7: [0, 1]}


def test_votes_across_items_decide():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(5, 2, 50)).astype(np.float16)
    scores[:, :, 3] = -100  # always the lowest
    rows = select_loki_rows(scores, 10, [0, 1])
    assert all(3 in chosen and len(chosen) == 5 for chosen in rows.values())
    with pytest.raises(TemplateError, match="quota"):
        select_loki_rows(scores, 0, [0, 1])


def test_prompt_is_lokis_mmlu_prompt():
    from fnapi.data.builtin import ProbeItem

    item = ProbeItem("What is 2 + 2?", ("3", "4"), 1, "elementary_mathematics")
    text = kva_prompt(item)[0]["content"]
    assert text.startswith("There is a single choice question about Elementary Mathematics.")
    assert "Question: What is 2 + 2?\nChoices:\nA. 3\nB. 4\nAnswer: \n" in text


def test_kva_scores_on_a_tiny_model_and_the_template_is_one_component():
    from fnapi.data.builtin import probe_items
    from fnapi.models.tiny import tiny_model, tiny_tokenizer
    from fnapi.networks.loki import loki_template

    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    before = [p.detach().clone() for p in model.parameters()]
    prompts = [[5, 6, 7, 8], [9, 10, 11]]
    scores = kva_scores(model, prompts, steps=3)
    assert scores.shape == (2, 2, 64) and scores.dtype == np.float16
    assert np.abs(scores.astype(np.float32)).sum() > 0
    assert all(p.requires_grad for p in model.parameters())  # restored
    assert all((a == b).all() for a, b in zip(before, model.parameters()))

    class Loaded:
        pass

    loaded = Loaded()
    loaded.model, loaded.tokenizer = model, tokenizer
    from fnapi.models.loading import describe

    loaded.info = describe(model, "tiny")
    if not getattr(tokenizer, "chat_template", None):
        with pytest.raises(TemplateError, match="chat template"):
            loki_template(loaded, probe_items(3), quota_percent=25, steps=2)
        tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    template = loki_template(loaded, probe_items(3), quota_percent=25, steps=2)
    assert [c.id for c in template.components] == [0]
    assert all(len(rows) == 16 for rows in template.components[0].neurons.values())
    assert template.method["name"] == "loki" and template.neuron_sets("all") == template.neuron_sets([0])
