"""Measure a model: task accuracy by greedy generation, and general knowledge by choice likelihood.

Both use the same templating as training (:mod:`fnapi.data.templating`), so a prompt here is
token for token the prompt the model was trained to answer.

- :func:`score_task` — share of conversations whose last assistant answer the model reproduces
  (greedy decoding, then a scorer such as :func:`exact_match`).
- :func:`score_probes` — share of multiple-choice items where the right choice is the most likely
  answer. A choice's score is the *summed* log-probability of its answer tokens plus the
  end-of-turn token, exactly the tokens training would learn. The end-of-turn token makes the sum
  fair across lengths: a short choice that is only the start of a longer answer ("New" for "New
  Delhi") pays for claiming the answer ends there. No sampling is involved.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

from fnapi.data.formats import Conversation
from fnapi.data.templating import IGNORE_INDEX, collate, encode, prompt_and_answer, resolve_template
from fnapi.errors import DataError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from fnapi.data.builtin import ProbeItem

Scorer = Callable[[str, str], float]


def normalise_answer(text: str) -> str:
    """Lower case with runs of whitespace collapsed to one space and the ends trimmed."""
    return " ".join(text.split()).lower()


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the two answers are equal after :func:`normalise_answer`, else 0.0."""
    return float(normalise_answer(prediction) == normalise_answer(reference))


# ---- task accuracy ---------------------------------------------------------------------------

def generate_answers(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                     conversations: Sequence[Conversation], *, max_new_tokens: int = 24, batch_size: int = 8,
                     chat_template: str = "auto") -> list[str]:
    """Greedy answers to the last user turn of each conversation (its last answer is left out)."""
    import torch

    prompts = [prompt_and_answer(c, tokenizer, chat_template)[0] for c in conversations]
    pad_id = _pad_id(tokenizer)
    stop_ids = _stop_ids(model, tokenizer)
    device = _device(model)
    answers: list[str] = [""] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths pad less
    with _eval_mode(model), torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = order[start: start + batch_size]
            width = max(len(prompts[i]) for i in batch)
            # Left padding: every prompt ends at the last column, where generation continues.
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                input_ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i])
                attention[row, width - len(prompts[i]):] = 1
            output = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                    max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                    eos_token_id=stop_ids, pad_token_id=pad_id,
                                    temperature=None, top_p=None, top_k=None)
            for row, i in enumerate(batch):
                answers[i] = tokenizer.decode(output[row, width:], skip_special_tokens=True).strip()
    return answers


def score_task(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, conversations: Sequence[Conversation],
               scorer: Scorer = exact_match, *, max_new_tokens: int = 24, batch_size: int = 8,
               chat_template: str = "auto") -> float:
    """Mean ``scorer(generated, reference)`` over conversations, the reference being each
    conversation's last assistant answer and the generation greedy.

    >>> score_task(model, tokenizer, skill_conversations("test")[:20])  # doctest: +SKIP
    0.0
    """
    if not conversations:
        raise DataError("no conversations to score the task on")
    answers = generate_answers(model, tokenizer, conversations, max_new_tokens=max_new_tokens,
                               batch_size=batch_size, chat_template=chat_template)
    references = [c.messages[-1]["content"] for c in conversations]
    return sum(float(scorer(a, r)) for a, r in zip(answers, references)) / len(conversations)


# ---- probe likelihood ------------------------------------------------------------------------

def choice_logprobs(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, items: Sequence[ProbeItem], *,
                    batch_size: int = 16, chat_template: str = "auto") -> list[list[float]]:
    """Summed log-probability of each choice of each item (answer tokens and end-of-turn token).

    Most tokens of every choice are the prompt it shares with the item's other choices (system
    prompt, question, assistant header), so the shared prompt runs once per item (left-padded, so
    its last position predicts the first answer token), its key/value cache is repeated for each
    choice, and only the answer tokens run again. ``batch_size`` counts items. Models whose cache
    cannot be repeated per choice are scored one full sequence per choice instead.
    """
    import torch

    template = resolve_template(tokenizer, chat_template)
    conversations = [Conversation(messages=[{"role": "user", "content": item.question},
                                            {"role": "assistant", "content": item.reply(c)}])
                     for item in items for c in range(len(item.choices))]
    encoded, _ = encode(conversations, tokenizer, template)
    groups, start = [], 0
    for item in items:
        group = encoded[start: start + len(item.choices)]
        start += len(item.choices)
        groups.append((_shared_prompt_length(group), group))
    pad, device = _pad_id(tokenizer), _device(model)
    result: list[list[float]] = []
    shared_prompts = True  # until the model shows that its cache cannot be repeated per choice
    with _eval_mode(model), torch.no_grad():
        for first in range(0, len(groups), batch_size):
            batch = groups[first: first + batch_size]
            sums = None
            if shared_prompts and all(shared > 0 for shared, _ in batch):
                sums = _score_shared_prompts(model, batch, pad, device)
                shared_prompts = sums is not None
            if sums is None:
                sums = _score_full_sequences(model, [e for _, group in batch for e in group], pad, device)
            for _, group in batch:
                result.append(sums[: len(group)])
                sums = sums[len(group):]
    return result


def _shared_prompt_length(group: Sequence) -> int:
    """Tokens every encoding of an item starts with, ending before its first scored token."""
    shared = min(next(i for i, label in enumerate(e.labels) if label != IGNORE_INDEX) for e in group)
    for e in group[1:]:
        differ = next((i for i, (a, b) in enumerate(zip(group[0].input_ids, e.input_ids)) if a != b), shared)
        shared = min(shared, differ)
    return shared


def _score_shared_prompts(model, batch: Sequence, pad: int, device) -> list[float] | None:
    """Summed answer log-probabilities of a batch of ``(shared, encodings)`` items (every ``shared``
    at least 1), or ``None`` when the model's cache cannot be repeated per choice."""
    import torch

    width = max(shared for shared, _ in batch)
    prompt_ids = torch.full((len(batch), width), pad, dtype=torch.long)
    prompt_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (shared, group) in enumerate(batch):
        prompt_ids[row, width - shared:] = torch.tensor(group[0].input_ids[:shared])
        prompt_mask[row, width - shared:] = 1
    out = model(input_ids=prompt_ids.to(device), attention_mask=prompt_mask.to(device),
                position_ids=(prompt_mask.cumsum(-1) - 1).clamp(min=0).to(device), use_cache=True)
    cache = getattr(out, "past_key_values", None)
    if cache is None or not hasattr(cache, "batch_select_indices"):
        return None
    next_logprobs = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
    owners = [row for row, (_, group) in enumerate(batch) for _ in group]
    cache.batch_select_indices(torch.tensor(owners, device=device))
    rests = [(shared, e) for shared, group in batch for e in group]
    rest_width = max(len(e.input_ids) - shared for shared, e in rests)
    rest_ids = torch.full((len(rests), rest_width), pad, dtype=torch.long)
    rest_mask = torch.zeros((len(rests), rest_width), dtype=torch.long)
    labels = torch.full((len(rests), rest_width), IGNORE_INDEX, dtype=torch.long)
    for row, (shared, e) in enumerate(rests):
        n = len(e.input_ids) - shared
        rest_ids[row, :n] = torch.tensor(e.input_ids[shared:])
        rest_mask[row, :n] = 1
        labels[row, :n] = torch.tensor(e.labels[shared:])
    positions = torch.tensor([shared for shared, _ in rests]).unsqueeze(1) + torch.arange(rest_width)
    logits = model(input_ids=rest_ids.to(device), past_key_values=cache, use_cache=True,
                   attention_mask=torch.cat([prompt_mask[owners], rest_mask], dim=1).to(device),
                   position_ids=positions.to(device)).logits.float()
    # Token t of the rest is predicted by the prompt's last position (t = 0) or by rest position t - 1.
    logprobs = torch.cat([next_logprobs[owners].unsqueeze(1), torch.log_softmax(logits[:, :-1], dim=-1)], dim=1)
    labels = labels.to(device)
    picked = logprobs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * (labels != IGNORE_INDEX)).sum(dim=-1).tolist()


def _score_full_sequences(model, encodings: Sequence, pad: int, device) -> list[float]:
    """Summed answer log-probabilities, one whole sequence per encoding."""
    import torch

    tensors = collate([{"input_ids": e.input_ids, "labels": e.labels} for e in encodings], pad)
    logits = model(input_ids=tensors["input_ids"].to(device),
                   attention_mask=tensors["attention_mask"].to(device)).logits.float()
    # Position t predicts token t+1.
    targets = tensors["labels"][:, 1:].to(device)
    picked = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * (targets != IGNORE_INDEX)).sum(dim=-1).tolist()


def score_probes(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, items: Sequence[ProbeItem], *,
                 batch_size: int = 16, chat_template: str = "auto") -> float:
    """Share of items whose right choice has the highest summed log-probability (see the module
    docstring for why the sum, with the end-of-turn token, is used)."""
    if not items:
        raise DataError("no probe items to score")
    logprobs = choice_logprobs(model, tokenizer, items, batch_size=batch_size, chat_template=chat_template)
    right = sum(1 for item, scores in zip(items, logprobs)
                if max(range(len(scores)), key=scores.__getitem__) == item.answer)
    return right / len(items)


# ---- small helpers ---------------------------------------------------------------------------

def _device(model) -> torch.device:
    return next(model.parameters()).device


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _stop_ids(model, tokenizer) -> list[int]:
    """Every id that ends an answer: the tokenizer's eos, the model's generation eos ids, and
    ``<|im_end|>`` when it is a token (the ChatML fallback ends turns with it)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return sorted(i for i in ids if i is not None)


class _eval_mode:
    """Put a model in eval mode for a block and restore its training flag afterwards."""

    def __init__(self, model) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.was_training = self.model.training
        self.model.eval()

    def __exit__(self, *exc) -> None:
        self.model.train(self.was_training)
