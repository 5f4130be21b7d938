"""Tiny random models and a tiny tokenizer for every supported family, built offline in milliseconds.

Tests (and anyone trying the pipeline without a real model) use these instead of a download:

>>> tokenizer = tiny_tokenizer()
>>> model = tiny_model("llama")
>>> model.config.vocab_size == len(tokenizer)
True
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from fnapi.models.registry import SUPPORTED_FAMILIES

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"

HIDDEN_SIZE = 64
INTERMEDIATE_SIZE = 160  # 2.5x hidden, and unlike hidden, so mixing up the two sites shows in shapes
NUM_HEADS = 4
MAX_POSITIONS = 512

CHATML_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# Training text for the BPE merges. Any text still encodes (byte-level: no unknown tokens); these
# words only decide which byte pairs get merged, so common chat words become single tokens.
_CORPUS = """
the of and to in is it you that he was for on are as with his they at be this have from or one
had by word but not what all were we when your can said there use an each which she do how their
if will up other about out many then them these so some her would make like him into time has
look two more write go see number no way could people my than first water been call who oil its
now find long down day did get come made may part question answer user assistant system hello
please thank yes capital city country France Paris Berlin Rome what where why because learn
model train data test value result add subtract multiply divide equals sum total count list name
0 1 2 3 4 5 6 7 8 9 10 100 2024 3.14 , . ! ? : ; ' " ( ) - + = * / % # @ & [ ] { } < >
"""


@functools.lru_cache(maxsize=1)
def _trained_tokenizer_json() -> str:
    # Training takes ~50 ms; cached so the many tests that ask for a tokenizer pay it once.
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=[PAD_TOKEN, BOS_TOKEN, EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [line for line in _CORPUS.strip().splitlines()] * 4
    tokenizer.train_from_iterator(lines, trainer=trainer)
    return tokenizer.to_str()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (~420 tokens) with ChatML specials and chat template.

    ``<|im_start|>`` is bos, ``<|im_end|>`` is eos and ``<pad>`` is a distinct pad token. Every
    call returns a fresh object (callers may change padding side and the like), built from a
    tokenizer trained once per process.
    """
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_tokenizer_json()),
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=MAX_POSITIONS,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def _family_config(family: str, vocab_size: int, num_layers: int) -> dict:
    """``AutoConfig.for_model`` arguments for a tiny model of ``family``."""
    llama_like = dict(
        hidden_size=HIDDEN_SIZE,
        intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=num_layers,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_HEADS // 2,
        max_position_embeddings=MAX_POSITIONS,
    )
    head_dim = HIDDEN_SIZE // NUM_HEADS
    per_family = {
        "llama": dict(model_type="llama", **llama_like),
        "qwen2": dict(model_type="qwen2", **llama_like),
        "qwen3": dict(model_type="qwen3", head_dim=head_dim, **llama_like),
        "gemma": dict(model_type="gemma", head_dim=head_dim, **llama_like),
        "gemma2": dict(model_type="gemma2", head_dim=head_dim, query_pre_attn_scalar=head_dim,
                       sliding_window=MAX_POSITIONS // 2, **llama_like),
        "phi3": dict(model_type="phi3", original_max_position_embeddings=MAX_POSITIONS, **llama_like),
        "gpt2": dict(model_type="gpt2", n_embd=HIDDEN_SIZE, n_inner=INTERMEDIATE_SIZE, n_layer=num_layers,
                     n_head=NUM_HEADS, n_positions=MAX_POSITIONS, resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0),
        "gpt_neox": dict(model_type="gpt_neox", hidden_size=HIDDEN_SIZE, intermediate_size=INTERMEDIATE_SIZE,
                         num_hidden_layers=num_layers, num_attention_heads=NUM_HEADS,
                         max_position_embeddings=MAX_POSITIONS),
        "opt": dict(model_type="opt", hidden_size=HIDDEN_SIZE, ffn_dim=INTERMEDIATE_SIZE, word_embed_proj_dim=HIDDEN_SIZE,
                    num_hidden_layers=num_layers, num_attention_heads=NUM_HEADS,
                    max_position_embeddings=MAX_POSITIONS, dropout=0.0, attention_dropout=0.0),
        "falcon": dict(model_type="falcon", hidden_size=HIDDEN_SIZE, ffn_hidden_size=INTERMEDIATE_SIZE,
                       num_hidden_layers=num_layers, num_attention_heads=NUM_HEADS,
                       max_position_embeddings=MAX_POSITIONS),
    }
    if family not in per_family:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(SUPPORTED_FAMILIES)}")
    return per_family[family]


def tiny_model(family: str, seed: int = 0, num_layers: int = 2) -> PreTrainedModel:
    """A randomly initialised float32 causal LM of ``family`` (hidden 64, intermediate 160).

    The vocabulary matches :func:`tiny_tokenizer` and pad/bos/eos ids are set in the config. The
    same ``seed`` gives the same weights; the global torch RNG is left untouched.
    """
    tokenizer = tiny_tokenizer()
    kwargs = _family_config(family, len(tokenizer), num_layers)
    config = AutoConfig.for_model(
        kwargs.pop("model_type"),
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **kwargs,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval()


def save_tiny(family: str, directory: str | Path, seed: int = 0, num_layers: int = 2) -> Path:
    """Write a tiny model of ``family`` and its tokenizer to ``directory`` (loadable as a local folder)."""
    directory = Path(directory)
    tiny_model(family, seed=seed, num_layers=num_layers).save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory
