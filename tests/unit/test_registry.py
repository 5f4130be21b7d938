"""Architecture adapters: every family's blocks, down-projection and widths, also under peft."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from transformers import BloomConfig, BloomForCausalLM
from transformers.pytorch_utils import Conv1D

from fnapi.errors import UnsupportedArchitectureError
from fnapi.models import registry
from fnapi.models.registry import ADAPTERS, SUPPORTED_FAMILIES, get_adapter, unwrap_model
from fnapi.models.tiny import HIDDEN_SIZE, INTERMEDIATE_SIZE, tiny_model, tiny_tokenizer


def _site_widths(model, adapter) -> dict[int, tuple[int, int]]:
    """Per layer: (input width, output width) seen by a forward hook on the down-projection."""
    seen: dict[int, tuple[int, int]] = {}
    handles = []
    for layer in range(adapter.num_layers(model)):
        def hook(module, inputs, output, layer=layer):
            seen[layer] = (inputs[0].shape[-1], output.shape[-1])
        handles.append(adapter.down_proj(model, layer).register_forward_hook(hook))
    try:
        ids = tiny_tokenizer()("The capital of France is Paris.", return_tensors="pt")["input_ids"]
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def test_supported_families_are_the_promised_ten():
    assert set(SUPPORTED_FAMILIES) == {"llama", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "gpt2",
                                       "gpt_neox", "opt", "falcon"}
    assert {"mistral", "llama"} <= set(ADAPTERS["llama"].model_types)


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_adapter_finds_blocks_down_proj_and_widths(family):
    model = tiny_model(family)
    adapter = get_adapter(model)
    assert adapter.family == family
    assert adapter.num_layers(model) == len(adapter.blocks(model)) == 2
    assert adapter.hidden_size(model) == HIDDEN_SIZE
    assert adapter.intermediate_size(model) == INTERMEDIATE_SIZE

    down = adapter.down_proj(model, 1)
    assert down is not adapter.down_proj(model, 0)
    out_dim = adapter.out_dim(down)
    assert out_dim == (1 if family == "gpt2" else 0)
    assert isinstance(down, Conv1D if family == "gpt2" else nn.Linear)
    assert down.weight.shape[out_dim] == HIDDEN_SIZE
    assert down.weight.shape[1 - out_dim] == INTERMEDIATE_SIZE

    assert _site_widths(model, adapter) == {0: (INTERMEDIATE_SIZE, HIDDEN_SIZE), 1: (INTERMEDIATE_SIZE, HIDDEN_SIZE)}


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_lora_targets_cover_every_linear_layer_of_a_block(family):
    model = tiny_model(family)
    adapter = get_adapter(model)
    linear_names = [name for name, module in adapter.blocks(model)[0].named_modules()
                    if isinstance(module, (nn.Linear, Conv1D))]
    assert linear_names
    uncovered = [n for n in linear_names if n.rsplit(".", 1)[-1] not in adapter.lora_targets]
    assert uncovered == []
    unused = [t for t in adapter.lora_targets if not any(n.rsplit(".", 1)[-1] == t for n in linear_names)]
    assert unused == []


def test_num_layers_follows_the_model():
    model = tiny_model("qwen2", num_layers=3)
    adapter = get_adapter(model)
    assert adapter.num_layers(model) == 3
    assert adapter.down_proj(model, -1) is adapter.down_proj(model, 2)
    with pytest.raises(IndexError, match="3 layers"):
        adapter.down_proj(model, 3)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_peft_wrapped_model_is_unwrapped(family):
    from peft import LoraConfig, get_peft_model

    model = tiny_model(family)
    adapter = get_adapter(model)
    config = LoraConfig(r=4, target_modules=list(adapter.lora_targets), fan_in_fan_out=family == "gpt2")
    wrapped = get_peft_model(model, config)

    assert unwrap_model(wrapped) is model
    assert get_adapter(wrapped) is adapter
    assert adapter.num_layers(wrapped) == 2
    down = adapter.down_proj(wrapped, 0)
    assert hasattr(down, "base_layer")  # the LoRA layer, so hooks see LoRA's contribution too
    assert adapter.out_dim(down) == (1 if family == "gpt2" else 0)
    assert (adapter.intermediate_size(wrapped), adapter.hidden_size(wrapped)) == (INTERMEDIATE_SIZE, HIDDEN_SIZE)
    assert _site_widths(wrapped, adapter)[1] == (INTERMEDIATE_SIZE, HIDDEN_SIZE)


def test_unknown_architecture_names_families_and_how_to_add_one():
    model = BloomForCausalLM(BloomConfig(vocab_size=64, hidden_size=32, n_layer=1, n_head=2))
    with pytest.raises(UnsupportedArchitectureError) as info:
        get_adapter(model)
    text = str(info.value)
    assert "'bloom'" in text
    for family in SUPPORTED_FAMILIES:
        assert family in text
    assert "fnapi/models/registry.py" in text
    assert "layers_path" in text and "down_proj_path" in text


def test_a_module_without_config_is_unsupported():
    with pytest.raises(UnsupportedArchitectureError, match="None"):
        get_adapter(nn.Linear(4, 4))


def test_down_proj_path_with_wrong_shape_is_rejected(monkeypatch):
    wrong = dataclasses.replace(ADAPTERS["llama"], down_proj_path="mlp.up_proj")
    monkeypatch.setitem(registry._BY_MODEL_TYPE, "llama", wrong)
    with pytest.raises(UnsupportedArchitectureError) as info:
        get_adapter(tiny_model("llama"))
    text = str(info.value)
    assert "'mlp.up_proj' maps 64 -> 160" in text
    assert "intermediate 160 -> hidden 64" in text


def test_missing_layers_path_is_rejected(monkeypatch):
    wrong = dataclasses.replace(ADAPTERS["llama"], layers_path="model.blocks")
    monkeypatch.setitem(registry._BY_MODEL_TYPE, "llama", wrong)
    with pytest.raises(UnsupportedArchitectureError, match="'model.blocks'"):
        get_adapter(tiny_model("llama"))
