"""The embedded model lacks the built-in skill and knows most probes (small samples of each).

Measured on the full sets (benchmarks/builtin_base_scores.py): skill exact match 0.0 on the 200
test phrases; probes 0.795 (175 of 220), and 0.725 on the first 40 items used here.
"""

from __future__ import annotations

import pytest

from fnapi.data import probe_items, skill_conversations
from fnapi.evaluation import score_probes, score_task

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embedded():
    from fnapi.models.loading import load_model

    return load_model("smollm2-135m-instruct")


def test_base_model_cannot_do_the_skill(embedded):
    score = score_task(embedded.model, embedded.tokenizer, skill_conversations("test")[:20],
                       max_new_tokens=12, batch_size=10)
    assert score < 0.2


def test_base_model_knows_most_probes(embedded):
    score = score_probes(embedded.model, embedded.tokenizer, probe_items(40), batch_size=16)
    assert score > 0.6
