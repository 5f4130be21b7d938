"""The embedded SmolLM2-135M-Instruct: converted once per machine, then loaded from the cache.

Uses the user's real fnapi cache (``FNAPI_CACHE`` or ``~/.cache/fnapi``) on purpose, so the slow
GGUF conversion happens once per machine rather than once per test run.
"""

from __future__ import annotations

import time

import pytest

from fnapi.models.generation import answer
from fnapi.models.loading import (
    CACHE_MARKER,
    EMBEDDED_MODEL,
    embedded_cache_dir,
    embedded_gguf_path,
    load_model,
    weight_fingerprint,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def loaded():
    return load_model(EMBEDDED_MODEL)


def test_embedded_model_is_smollm2(loaded):
    info = loaded.info
    assert (info.name, info.family, info.architecture) == (EMBEDDED_MODEL, "llama", "LlamaForCausalLM")
    assert (info.num_layers, info.hidden_size, info.intermediate_size) == (30, 576, 1536)
    assert 130_000_000 < info.num_parameters < 140_000_000
    assert info.dtype == "float32"
    assert loaded.source == f"embedded:{embedded_cache_dir()}"
    assert (embedded_cache_dir() / CACHE_MARKER).is_file()
    # SmolLM2 pads with its eos token; data code must rely on the attention mask
    assert loaded.tokenizer.eos_token == "<|im_end|>" and loaded.pad_is_eos


def test_answers_a_general_knowledge_question(loaded):
    reply = answer(loaded.model, loaded.tokenizer, "What is the capital of France?", max_new_tokens=20)
    assert "Paris" in reply


def test_cached_load_is_fast_and_fingerprint_stable(loaded, record_property):
    start = time.monotonic()
    again = load_model(EMBEDDED_MODEL)
    seconds = time.monotonic() - start
    record_property("cached_load_seconds", round(seconds, 2))
    print(f"cached load of {EMBEDDED_MODEL}: {seconds:.2f} s")
    assert seconds < 5
    assert again.info.fingerprint == loaded.info.fingerprint == weight_fingerprint(loaded.model)


def test_gguf_file_loads_to_the_same_weights_as_the_cache(loaded):
    gguf = embedded_gguf_path()
    direct = load_model(str(gguf))
    assert direct.source == f"gguf:{gguf.resolve()}"
    assert not getattr(direct.model, "hf_quantizer", None)  # de-quantized: trainable and saveable
    assert direct.info.fingerprint == loaded.info.fingerprint
