"""Ask a chat model one question and get its greedy answer (``fnapi ask``, smoke checks, examples)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def chat_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, system: str | None = None) -> str:
    """``prompt`` as the text the model expects before its answer: the tokenizer's chat template
    with a generation prompt, or the bare prompt for models without a template."""
    if not tokenizer.chat_template:
        return prompt if system is None else f"{system}\n\n{prompt}"
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": prompt})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def answer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str, *,
           system: str | None = None, max_new_tokens: int = 64) -> str:
    """The model's greedy (deterministic) answer to ``prompt``, without special tokens.

    >>> answer(loaded.model, loaded.tokenizer, "What is the capital of France?")  # doctest: +SKIP
    'The capital of France is Paris.'
    """
    import torch
    from transformers import GenerationConfig

    text = chat_prompt(tokenizer, prompt, system)
    # a rendered chat template already holds its special tokens
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=not tokenizer.chat_template)
    inputs = inputs.to(model.device)
    eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos if eos is not None else tokenizer.eos_token_id,
    )
    with torch.no_grad():
        output = model.generate(**inputs, generation_config=config)
    new_tokens = output[0, inputs["input_ids"].shape[1]:]
    return tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
