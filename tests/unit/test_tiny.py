"""The tiny tokenizer and tiny random models that the unit tests run on."""

from __future__ import annotations

import pytest
import torch

from fnapi.models.registry import SUPPORTED_FAMILIES, get_adapter
from fnapi.models.tiny import tiny_model, tiny_tokenizer

TEXTS = [
    "What is the capital of France? Paris!",
    "Numbers 0123456789, 3.14 and -42; symbols: @#$%^&*()[]{}<>/\\|~`'\"",
    "  leading spaces\ttabs\nnew lines\r\n",
    "Ünïcödé: naïve café, 東京, emoji 🙂",
    "zyxwvq qwertyuiop",  # words the BPE never saw
]


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_round_trips_any_text(text):
    tokenizer = tiny_tokenizer()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_tokenizer_specials_and_size():
    tokenizer = tiny_tokenizer()
    assert 300 <= len(tokenizer) <= 500
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.bos_token == "<|im_start|>"
    assert tokenizer.pad_token == "<pad>"
    assert len({tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id}) == 3
    for token in ("<pad>", "<|im_start|>", "<|im_end|>"):
        assert tokenizer.encode(token, add_special_tokens=False) == [tokenizer.convert_tokens_to_ids(token)]
    # special tokens are not added on their own: the chat template places them
    assert tokenizer("hi")["input_ids"] == tokenizer("hi", add_special_tokens=False)["input_ids"]


def test_tokenizer_merges_common_words():
    tokenizer = tiny_tokenizer()
    assert len(tokenizer.tokenize(" the")) == 1
    assert len(tokenizer.tokenize("What is the capital")) < len("What is the capital")


def test_chat_template_is_chatml_with_generation_prompt():
    tokenizer = tiny_tokenizer()
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "Hello."},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n"
                    "<|im_start|>assistant\nHello.<|im_end|>\n")
    prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n")
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    assert ids.count(tokenizer.eos_token_id) == 3


def test_each_call_returns_an_independent_tokenizer():
    first, second = tiny_tokenizer(), tiny_tokenizer()
    first.padding_side = "left"
    assert second.padding_side == "right"
    assert first.get_vocab() == second.get_vocab()


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_tiny_model_shapes_and_ids(family):
    tokenizer = tiny_tokenizer()
    model = tiny_model(family)
    config = model.config
    assert config.vocab_size == len(tokenizer)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert config.pad_token_id == tokenizer.pad_token_id != config.eos_token_id == tokenizer.eos_token_id
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    adapter = get_adapter(model)
    hidden, intermediate = adapter.hidden_size(model), adapter.intermediate_size(model)
    assert 32 <= hidden <= 64 and 2 * hidden <= intermediate <= 4 * hidden
    ids = tokenizer("Paris is the capital of France.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()


def test_seed_decides_the_weights_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = tiny_model("llama", seed=1).state_dict()
    assert torch.equal(torch.rand(1), expected_next)
    b = tiny_model("llama", seed=1).state_dict()
    c = tiny_model("llama", seed=2).state_dict()
    key = "model.layers.0.mlp.down_proj.weight"
    assert torch.equal(a[key], b[key])
    assert not torch.equal(a[key], c[key])


def test_unknown_family_is_a_value_error():
    with pytest.raises(ValueError, match="bloom.*llama"):
        tiny_model("bloom")
