"""KL drift from the base model: zero for the same weights, positive and growing with change."""

from __future__ import annotations

import torch

from fnapi.drift import mean_kl, next_token_logprobs
from fnapi.models.tiny import tiny_model, tiny_tokenizer


def _prompts():
    tok = tiny_tokenizer()
    return [tok("The cat sat on the mat.")["input_ids"], tok("Paris is in France")["input_ids"]]


def test_same_model_has_zero_drift():
    model = tiny_model("llama")
    prompts = _prompts()
    reference = next_token_logprobs(model, prompts)
    assert mean_kl(model, prompts, reference) < 1e-3


def test_drift_grows_with_weight_change():
    model = tiny_model("llama")
    prompts = _prompts()
    reference = next_token_logprobs(model, prompts)
    drifts = []
    for scale in (0.01, 0.5):
        changed = tiny_model("llama")
        torch.manual_seed(0)
        with torch.no_grad():
            for param in changed.parameters():
                param.add_(torch.randn_like(param) * scale)
        drifts.append(mean_kl(changed, prompts, reference))
    assert 0 < drifts[0] < drifts[1]
