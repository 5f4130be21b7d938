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

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from fnapi.data.formats import Conversation
from fnapi.data.templating import IGNORE_INDEX, collate, encode, prompt_and_answer, resolve_template
from fnapi.errors import DataError
from fnapi.models.runtime import eval_mode, pad_id

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


def contains(prediction: str, reference: str) -> float:
    """1.0 when the reference appears in the answer, both after :func:`normalise_answer` (for labels
    a model may wrap in words: ``The topic is sports.``), else 0.0."""
    return float(normalise_answer(reference) in normalise_answer(prediction))


#: Task metrics by the name recipes use (``tasks[].metric``).
SCORERS: dict[str, Scorer] = {"exact_match": exact_match, "contains": contains}


# ---- task accuracy ---------------------------------------------------------------------------

def generate_answers(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                     conversations: Sequence[Conversation], *, max_new_tokens: int = 24, batch_size: int = 8,
                     chat_template: str = "auto", on_items: Callable[[int], None] | None = None) -> list[str]:
    """Greedy answers to the last user turn of each conversation (its last answer is left out).
    ``on_items`` is called with the number of conversations answered after every batch."""
    prompts = [prompt_and_answer(c, tokenizer, chat_template)[0] for c in conversations]
    replies = generate_ids(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           on_items=on_items)
    return [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in replies]


def generate_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Sequence[int]], *,
                 max_new_tokens: int = 24, batch_size: int = 8,
                 on_items: Callable[[int], None] | None = None) -> list[list[int]]:
    """Greedy continuations of each prompt (token ids), each cut after its first end-of-answer token
    (which it keeps, so a teacher-forced pass over prompt + reply scores where the reply stops)."""
    import torch

    pad = pad_id(tokenizer)
    stop_ids = _stop_ids(model, tokenizer)
    device = _device(model)
    replies: list[list[int]] = [[] for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths pad less
    with eval_mode(model), torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = order[start: start + batch_size]
            width = max(len(prompts[i]) for i in batch)
            # Left padding: every prompt ends at the last column, where generation continues.
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                input_ids[row, width - len(prompts[i]):] = torch.tensor(list(prompts[i]))
                attention[row, width - len(prompts[i]):] = 1
            output = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                    max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                    eos_token_id=stop_ids, pad_token_id=pad,
                                    temperature=None, top_p=None, top_k=None)
            for row, i in enumerate(batch):
                ids = output[row, width:].tolist()
                end = next((k for k, token in enumerate(ids) if token in stop_ids), None)
                replies[i] = ids if end is None else ids[: end + 1]
            if on_items is not None:
                on_items(len(batch))
    return replies


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
                    batch_size: int = 16, chat_template: str = "auto",
                    on_items: Callable[[int], None] | None = None) -> list[list[float]]:
    """Summed log-probability of each choice of each item (answer tokens and end-of-turn token).

    Almost every token of every choice is shared, so each shared piece runs once:

    - the *common prefix* of every item in the call (the chat template's system prompt and the
      user-turn header) runs once per call, and its key/value cache is repeated for each batch;
    - the rest of each item's *shared prompt* (question, assistant header and the reply's words that
      every choice starts with, such as "The capital of Peru is") runs once per item, right-aligned
      after the prefix so that its last position predicts the first token where the choices differ;
      log-probabilities of answer tokens inside it count once for every choice;
    - that cache is repeated for each choice and only the tokens where choices differ run again, up
      to the last scored token (the end-of-turn token is a target, never an input).

    Only the positions that predict a scored token get log-probabilities (a log-sum-exp over the
    vocabulary and one gathered logit each), and the shared prompt keeps only the logits it needs.
    The result equals scoring each choice as one whole sequence (up to float rounding).
    ``batch_size`` counts items. Models whose cache cannot be repeated per choice are scored one
    whole sequence per choice instead.
    """
    import torch

    if not items:
        return []
    template = resolve_template(tokenizer, chat_template)
    conversations = [Conversation(messages=[{"role": "user", "content": item.question},
                                            {"role": "assistant", "content": item.reply(c)}])
                     for item in items for c in range(len(item.choices))]
    encoded, _ = encode(conversations, tokenizer, template)
    groups, start = [], 0
    for item in items:
        group = encoded[start: start + len(item.choices)]
        start += len(item.choices)
        groups.append(_Plan(group))
    pad, device = pad_id(tokenizer), _device(model)
    # Items of similar lengths share a batch, so little padding runs through the model.
    order = sorted(range(len(groups)), key=lambda i: (groups[i].rest_width, groups[i].shared))
    result: list[list[float]] = [[] for _ in groups]
    shared_prompts = all(plan.shared > 0 for plan in groups)
    with eval_mode(model), torch.no_grad():
        prefix = _common_prefix(model, groups, device) if shared_prompts else None
        for first in range(0, len(order), batch_size):
            batch = [groups[i] for i in order[first: first + batch_size]]
            sums = None
            if shared_prompts:
                sums = _score_shared_prompts(model, batch, prefix, pad, device)
                shared_prompts = sums is not None  # the model showed that its cache cannot be repeated
            if sums is None:
                sums = _score_full_sequences(model, [e for plan in batch for e in plan.encodings], pad, device)
            for i, plan in zip(order[first: first + batch_size], batch):
                result[i] = sums[: len(plan.encodings)]
                sums = sums[len(plan.encodings):]
            if on_items is not None:
                on_items(len(batch))
    return result


class _Plan:
    """How one item's choices split into a shared prompt and the tokens where they differ.

    ``shared``: tokens (ids and labels) every choice starts with, at most each choice's last scored
    position (0 when a choice has nothing to score). ``keep``: the first position of the shared
    prompt whose logits are needed (it predicts the first scored token, or the first token after the
    shared prompt). ``ends``: per choice, the position of its last scored token.
    """

    def __init__(self, encodings: Sequence) -> None:
        self.encodings = list(encodings)
        scored = [[i for i, label in enumerate(e.labels) if label != IGNORE_INDEX and i > 0] for e in self.encodings]
        if not all(scored):
            self.shared = self.keep = self.rest_width = 0
            self.ends = []
            return
        self.ends = [positions[-1] for positions in scored]
        first = min(positions[0] for positions in scored)
        head = self.encodings[0]
        common = min(len(e.input_ids) for e in self.encodings)
        for e in self.encodings[1:]:
            pairs = zip(zip(head.input_ids, head.labels), zip(e.input_ids, e.labels))
            common = min(common, next((i for i, (a, b) in enumerate(pairs) if a != b), common))
        self.shared = min(common, *self.ends)
        self.keep = min(first, self.shared) - 1
        self.rest_width = max(end - self.shared for end in self.ends)


def _forward_parameters(model) -> set[str]:
    """Names ``model.forward`` accepts (a PEFT wrapper passes its keywords on to the base model)."""
    import inspect

    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return set(inspect.signature(target.forward).parameters)
    except (TypeError, ValueError):
        return set()


def _run(model, *, cache=None, keep: int = 0, **inputs):
    """``model(**inputs)`` with a key/value cache in and out, keeping only the last ``keep`` logits
    (all when ``keep`` is 0 or the model cannot keep fewer). Returns ``(logits, cache)``."""
    accepted = _forward_parameters(model)
    cache_name = "cache" if "cache" in accepted else "past_key_values"
    if cache is not None:
        inputs[cache_name] = cache
    if keep and "logits_to_keep" in accepted:
        inputs["logits_to_keep"] = keep
    out = model(**inputs, use_cache=True)
    logits = out.logits if not keep else out.logits[:, -keep:]
    cache = getattr(out, "cache", None)
    if cache is None:
        cache = getattr(out, "past_key_values", None)
    return logits, cache


def _repeatable(cache) -> bool:
    return cache is not None and hasattr(cache, "batch_select_indices") and hasattr(cache, "batch_repeat_interleave")


def _common_prefix(model, plans: Sequence[_Plan], device):
    """``(length, cache)`` of the tokens every item starts with (the system prompt), run once, or
    ``None`` when there is none (or the model's cache cannot be repeated)."""
    import torch

    head = plans[0].encodings[0].input_ids
    length = min(plan.keep for plan in plans)
    for plan in plans:
        ids = plan.encodings[0].input_ids
        length = next((i for i in range(length) if ids[i] != head[i]), length)
    if length < 1:
        return None
    ids = torch.tensor([head[:length]], device=device)
    _, cache = _run(model, keep=1, input_ids=ids, attention_mask=torch.ones_like(ids),
                    position_ids=torch.arange(length, device=device).unsqueeze(0))
    return (length, cache) if _repeatable(cache) else None


def _add_logprobs(totals, logits, picks: Sequence[tuple[int, int, int, int]]) -> None:
    """For each ``(total, row, column, target)``: ``totals[total] += log p(target)`` at ``logits[row,
    column]``, computed as the gathered logit minus the log-sum-exp over the vocabulary (no full
    log-softmax)."""
    import torch

    if not picks:
        return
    into, rows, columns, targets = torch.tensor(picks, device=totals.device).unbind(1)
    selected = logits[rows, columns].float()
    picked = selected.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(selected, dim=-1)
    totals.index_add_(0, into, picked.double())


def _score_shared_prompts(model, batch: Sequence[_Plan], prefix, pad: int, device) -> list[float] | None:
    """Summed answer log-probabilities of a batch of items (every ``shared`` at least 1), the
    choices in order, or ``None`` when the model's cache cannot be repeated per choice. ``prefix``
    is ``(length, cache)`` from :func:`_common_prefix` or ``None``."""
    import copy

    import torch

    start = 0 if prefix is None else prefix[0]
    width = max(plan.shared - start for plan in batch)
    keep = max(plan.shared - plan.keep for plan in batch)
    rows = len(batch)
    prompt_ids = torch.full((rows, width), pad, dtype=torch.long)
    prompt_mask = torch.zeros((rows, start + width), dtype=torch.long)
    prompt_mask[:, :start] = 1
    positions = torch.zeros((rows, width), dtype=torch.long)
    for row, plan in enumerate(batch):  # right-aligned after the common prefix, padding in between
        n = plan.shared - start
        prompt_ids[row, width - n:] = torch.tensor(plan.encodings[0].input_ids[start: plan.shared])
        prompt_mask[row, start + width - n:] = 1
        positions[row, width - n:] = torch.arange(start, plan.shared)
    cache = None
    if prefix is not None:
        cache = copy.deepcopy(prefix[1])
        cache.batch_repeat_interleave(rows)
    logits, cache = _run(model, cache=cache, keep=keep, input_ids=prompt_ids.to(device),
                         attention_mask=prompt_mask.to(device), position_ids=positions.to(device))
    if not _repeatable(cache):
        return None
    owners = [row for row, plan in enumerate(batch) for _ in plan.encodings]
    choices = [(plan, e, end) for plan in batch for e, end in zip(plan.encodings, plan.ends)]
    # Kept column k of a row is position shared - keep + k, which predicts token shared - keep + k + 1.
    # Scored tokens inside the shared prompt count once per item, then once for each of its choices.
    shared_totals = torch.zeros(rows, dtype=torch.float64, device=device)
    _add_logprobs(shared_totals, logits, [
        (row, row, position - plan.shared + keep, plan.encodings[0].labels[position + 1])
        for row, plan in enumerate(batch) for position in range(plan.keep, plan.shared - 1)
        if plan.encodings[0].labels[position + 1] != IGNORE_INDEX])
    totals = shared_totals[torch.tensor(owners, device=device)]
    # The shared prompt's last position predicts each choice's first token after it.
    _add_logprobs(totals, logits, [(n, owners[n], keep - 1, e.labels[plan.shared])
                                   for n, (plan, e, _) in enumerate(choices) if e.labels[plan.shared] != IGNORE_INDEX])
    rest_width = max(end - plan.shared for plan, _, end in choices)
    if rest_width == 0:
        return totals.tolist()
    # Each choice's own tokens, up to (not including) its last scored token, after its item's cache.
    cache.batch_select_indices(torch.tensor(owners, device=device))
    rest_ids = torch.full((len(choices), rest_width), pad, dtype=torch.long)
    rest_mask = torch.zeros((len(choices), rest_width), dtype=torch.long)
    for n, (plan, e, end) in enumerate(choices):
        rest_ids[n, : end - plan.shared] = torch.tensor(e.input_ids[plan.shared: end])
        rest_mask[n, : end - plan.shared] = 1
    rest_positions = torch.tensor([plan.shared for plan, _, _ in choices]).unsqueeze(1) + torch.arange(rest_width)
    logits, _ = _run(model, cache=cache, input_ids=rest_ids.to(device),
                     attention_mask=torch.cat([prompt_mask[torch.tensor(owners)], rest_mask], dim=1).to(device),
                     position_ids=rest_positions.to(device))
    # Rest column t predicts token shared + t + 1.
    _add_logprobs(totals, logits, [(n, n, t, e.labels[plan.shared + t + 1])
                                   for n, (plan, e, end) in enumerate(choices) for t in range(end - plan.shared)
                                   if e.labels[plan.shared + t + 1] != IGNORE_INDEX])
    return totals.tolist()


def _score_full_sequences(model, encodings: Sequence, pad: int, device) -> list[float]:
    """Summed answer log-probabilities, one whole sequence per encoding (cut after its last scored token)."""
    import torch

    features = []
    for e in encodings:
        end = max((i for i, label in enumerate(e.labels) if label != IGNORE_INDEX), default=0) + 1
        features.append({"input_ids": e.input_ids[:end], "labels": e.labels[:end]})
    tensors = collate(features, pad)
    logits = model(input_ids=tensors["input_ids"].to(device),
                   attention_mask=tensors["attention_mask"].to(device)).logits
    # Position t predicts token t+1.
    labels = tensors["labels"].tolist()
    totals = torch.zeros(len(encodings), dtype=torch.float64, device=device)
    _add_logprobs(totals, logits, [(n, n, t - 1, label) for n, row in enumerate(labels)
                                   for t, label in enumerate(row) if t > 0 and label != IGNORE_INDEX])
    return totals.tolist()


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
