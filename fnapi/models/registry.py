"""Where each supported architecture keeps its decoder blocks and its MLP down-projection.

Every hook-based feature (activation capture, masks) works on one module per decoder block: the
**down-projection**, which maps the intermediate width back to the hidden width. Its output is the
``mlp.out`` site (width = hidden size) and its input is the ``mlp.hidden`` site (width =
intermediate size). An :class:`ArchitectureAdapter` is only data, two attribute paths and the LoRA
target names, so adding a family is one entry in :data:`ADAPTERS`:

>>> adapter = ADAPTERS["llama"]
>>> adapter.layers_path, adapter.down_proj_path
('model.layers', 'mlp.down_proj')
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING

from fnapi.errors import UnsupportedArchitectureError

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class ArchitectureAdapter:
    """How to find the decoder blocks and the down-projection of one model family.

    ``layers_path`` is the attribute path from the base causal-LM (not a peft wrapper) to the
    list of decoder blocks; ``down_proj_path`` the path inside one block to the module that maps
    intermediate -> hidden (``nn.Linear``, or transformers ``Conv1D`` for GPT-2).
    ``lora_targets`` are the module-name suffixes of every attention and MLP linear layer, used
    when a recipe asks for LoRA target modules ``auto``.
    """

    family: str
    model_types: tuple[str, ...]
    layers_path: str
    down_proj_path: str
    lora_targets: tuple[str, ...]

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        """The decoder blocks, first to last (peft wrappers are looked through)."""
        return list(attrgetter(self.layers_path)(unwrap_model(model)))

    def num_layers(self, model: nn.Module) -> int:
        """Number of decoder blocks."""
        return len(self.blocks(model))

    def down_proj(self, model: nn.Module, layer: int) -> nn.Module:
        """The module of block ``layer`` that maps intermediate -> hidden.

        With a LoRA adapter on it this is the peft layer; its ``base_layer`` holds the weight.
        """
        blocks = self.blocks(model)
        if not -len(blocks) <= layer < len(blocks):
            raise IndexError(f"layer {layer} out of range: the model has {len(blocks)} layers")
        return attrgetter(self.down_proj_path)(blocks[layer])

    def out_dim(self, module: nn.Module) -> int:
        """The dimension of ``module.weight`` that indexes OUTPUT channels.

        0 for ``nn.Linear`` (weight is ``[out, in]``), 1 for transformers ``Conv1D`` (weight is
        ``[in, out]``). peft LoRA layers answer for their ``base_layer``.
        """
        from transformers.pytorch_utils import Conv1D

        return 1 if isinstance(_base_layer(module), Conv1D) else 0

    def in_out_features(self, module: nn.Module) -> tuple[int, int]:
        """``(in_features, out_features)`` of a Linear or Conv1D module (or a LoRA layer on one)."""
        base = _base_layer(module)
        if hasattr(base, "in_features") and hasattr(base, "out_features"):
            # Linear-like layers say it themselves; quantized ones pack their weight into another shape
            return int(base.in_features), int(base.out_features)
        weight = base.weight
        out_dim = self.out_dim(module)
        return int(weight.shape[1 - out_dim]), int(weight.shape[out_dim])

    def hidden_size(self, model: nn.Module) -> int:
        """Width of the ``mlp.out`` site: the output width of the down-projection."""
        return self.in_out_features(self.down_proj(model, 0))[1]

    def intermediate_size(self, model: nn.Module) -> int:
        """Width of the ``mlp.hidden`` site: the input width of the down-projection."""
        return self.in_out_features(self.down_proj(model, 0))[0]


_LLAMA_LIKE_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_FUSED_QKV_TARGETS = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")

ADAPTERS: dict[str, ArchitectureAdapter] = {
    adapter.family: adapter
    for adapter in (
        # SmolLM and SmolLM2 are llama; mistral and smollm3 share the llama block layout.
        ArchitectureAdapter("llama", ("llama", "mistral", "smollm3"), "model.layers", "mlp.down_proj",
                            _LLAMA_LIKE_TARGETS),
        ArchitectureAdapter("qwen2", ("qwen2",), "model.layers", "mlp.down_proj", _LLAMA_LIKE_TARGETS),
        ArchitectureAdapter("qwen3", ("qwen3",), "model.layers", "mlp.down_proj", _LLAMA_LIKE_TARGETS),
        ArchitectureAdapter("gemma", ("gemma",), "model.layers", "mlp.down_proj", _LLAMA_LIKE_TARGETS),
        ArchitectureAdapter("gemma2", ("gemma2",), "model.layers", "mlp.down_proj", _LLAMA_LIKE_TARGETS),
        ArchitectureAdapter("phi3", ("phi3",), "model.layers", "mlp.down_proj",
                            ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")),
        # GPT-2's "c_proj" names both the attention output and the MLP down-projection.
        ArchitectureAdapter("gpt2", ("gpt2",), "transformer.h", "mlp.c_proj", ("c_attn", "c_proj", "c_fc")),
        ArchitectureAdapter("gpt_neox", ("gpt_neox",), "gpt_neox.layers", "mlp.dense_4h_to_h", _FUSED_QKV_TARGETS),
        ArchitectureAdapter("opt", ("opt",), "model.decoder.layers", "fc2",
                            ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")),
        ArchitectureAdapter("falcon", ("falcon",), "transformer.h", "mlp.dense_4h_to_h", _FUSED_QKV_TARGETS),
    )
}

SUPPORTED_FAMILIES: tuple[str, ...] = tuple(ADAPTERS)

# config.model_type -> adapter
_BY_MODEL_TYPE = {model_type: adapter for adapter in ADAPTERS.values() for model_type in adapter.model_types}

# config attributes that hold the MLP width, by family naming convention
_INTERMEDIATE_ATTRS = ("intermediate_size", "ffn_dim", "n_inner", "ffn_hidden_size")


def linear_module_names(model: nn.Module) -> set[str]:
    """The last name part of every Linear or Conv1D layer except the output head: what LoRA's
    ``target_modules`` can name."""
    import torch
    from transformers.pytorch_utils import Conv1D

    return {name.rsplit(".", 1)[-1] for name, module in unwrap_model(model).named_modules()
            if isinstance(module, (torch.nn.Linear, Conv1D))} - {"lm_head"}


def unwrap_model(model: nn.Module) -> nn.Module:
    """The base causal-LM inside peft wrappers (``PeftModel`` -> ``LoraModel`` -> model).

    Any other model is returned as it is.
    """
    if "peft" not in sys.modules:  # a peft wrapper cannot exist before peft is imported
        return model
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTuner

    while True:
        if isinstance(model, PeftModel):
            model = model.base_model
        elif isinstance(model, BaseTuner):
            model = model.model
        else:
            return model


def get_adapter(model: nn.Module) -> ArchitectureAdapter:
    """The adapter for ``model`` (peft wrappers are looked through), after checking its shapes.

    Raises :class:`UnsupportedArchitectureError` when the family is unknown or when the module
    found at ``down_proj_path`` does not map intermediate -> hidden.
    """
    base = unwrap_model(model)
    config = getattr(base, "config", None)
    model_type = getattr(config, "model_type", None)
    adapter = _BY_MODEL_TYPE.get(model_type)
    if adapter is None:
        raise UnsupportedArchitectureError(
            f"model type {model_type!r} ({type(base).__name__}) is not supported; supported families: "
            f"{_families_text()}",
            hint="To add one, put an ArchitectureAdapter entry in ADAPTERS in fnapi/models/registry.py "
            "with its model_types, layers_path (attribute path from the causal-LM to the list of decoder "
            "blocks, e.g. 'model.layers') and down_proj_path (the module in one block that maps the "
            "intermediate width to the hidden width, e.g. 'mlp.down_proj').",
        )
    _check_shapes(adapter, base)
    return adapter


def _check_shapes(adapter: ArchitectureAdapter, model: nn.Module) -> None:
    """Fail clearly if the adapter's paths do not lead to a hidden <- intermediate projection."""
    where = f"{adapter.family} adapter ({type(model).__name__})"
    try:
        blocks = adapter.blocks(model)
        module = adapter.down_proj(model, 0) if blocks else None
    except AttributeError as exc:
        raise UnsupportedArchitectureError(
            f"{where}: path {adapter.layers_path!r} / {adapter.down_proj_path!r} not found in the model: {exc}",
            hint="The model's module layout differs from its family's; fix layers_path or down_proj_path "
            "in fnapi/models/registry.py.",
        ) from exc
    if module is None:
        raise UnsupportedArchitectureError(f"{where}: the model has no decoder blocks at {adapter.layers_path!r}")
    if not hasattr(_base_layer(module), "weight"):
        raise UnsupportedArchitectureError(
            f"{where}: {adapter.down_proj_path!r} is a {type(module).__name__} without a weight, "
            "not a linear projection"
        )
    text_config = model.config.get_text_config()
    hidden = getattr(text_config, "hidden_size", None)
    intermediate = next(
        (value for attr in _INTERMEDIATE_ATTRS if (value := getattr(text_config, attr, None)) is not None), None
    )
    in_features, out_features = adapter.in_out_features(module)
    if (hidden is not None and out_features != hidden) or (intermediate is not None and in_features != intermediate):
        raise UnsupportedArchitectureError(
            f"{where}: {adapter.down_proj_path!r} maps {in_features} -> {out_features}, but the config says "
            f"intermediate {intermediate} -> hidden {hidden}",
            hint="down_proj_path in fnapi/models/registry.py must name the MLP's intermediate -> hidden "
            "projection.",
        )


def _base_layer(module: nn.Module) -> nn.Module:
    # peft LoRA layers wrap the original Linear/Conv1D as ``base_layer``
    return getattr(module, "base_layer", module)


def _families_text() -> str:
    parts = []
    for adapter in ADAPTERS.values():
        others = [t for t in adapter.model_types if t != adapter.family]
        parts.append(f"{adapter.family} ({', '.join(others)})" if others else adapter.family)
    return ", ".join(parts)
