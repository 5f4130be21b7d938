"""Turn conversations into token ids and labels that train only what the assistant says.

Every example is first rendered as *segments*: pieces of text that are either trained (an
assistant answer plus the token that ends its turn) or not (system prompt, user turns, role
headers, whitespace between turns). The whole text is then tokenised at once, exactly as any other
tool would tokenise the same chat, and a token is trained when its characters fall in a trained
segment. Labels therefore come from token positions, never from comparing ids with
``pad_token_id``: SmolLM2's pad token *is* its end-of-turn token, which must stay trained so the
model learns to stop.

Templates (``chat_template``):

- ``model``: the tokenizer's own chat template; the assistant spans are found by rendering each
  prefix of the conversation (the template must render prefixes as prefixes of the whole);
- ``chatml``: ``<|im_start|>role\\n...<|im_end|>\\n`` turns; when ``<|im_end|>`` is not a single
  token of the vocabulary, the tokenizer's eos token ends each turn instead;
- ``alpaca``: ``### Instruction:`` / ``### Response:`` blocks, each answer ending with eos;
- ``plain``: user text, a newline, the answer and eos;
- ``auto``: ``model`` when the tokenizer has a chat template that works for every conversation
  (no template error, prefixes rendered as prefixes), ``chatml`` otherwise.

Plain-text rows (``Conversation.text``) are trained on every token, followed by eos, whatever the
template. Tokenised data is cached under ``cache_dir()/tokenized/`` (see :func:`tokenize`).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fnapi.data.formats import Conversation
from fnapi.errors import DataError
from fnapi.events import EventSink, stage
from fnapi.paths import atomic_write_text, cache_dir

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
TEMPLATES = ("auto", "model", "chatml", "alpaca", "plain")
#: Bump when the rendering or the cache layout changes, so old cache entries are not reused.
CACHE_VERSION = 1

_FALLBACK_HINT = "Choose a fallback template: data.chat_template chatml, alpaca or plain."
ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")

Segment = tuple[str, bool]  # (text, trained)


@dataclass
class TokenizedData:
    """Token ids and labels (``-100`` where nothing is learned), one list per example.

    ``truncated`` counts examples cut at ``max_length``; ``dropped`` counts those left without any
    trained token after the cut (they are not in the lists). Indexing gives the dicts that
    :func:`collate` batches, so this works as a torch ``Dataset``.
    """

    input_ids: list[list[int]]
    labels: list[list[int]]
    truncated: int
    dropped: int
    template_used: str
    max_length: int
    cache_key: str
    cache_hit: bool = False

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return {"input_ids": self.input_ids[index], "labels": self.labels[index]}

    @property
    def num_tokens(self) -> int:
        return sum(len(ids) for ids in self.input_ids)

    @property
    def trained_tokens(self) -> int:
        return sum(sum(1 for label in labels if label != IGNORE_INDEX) for labels in self.labels)

    def summary(self) -> dict[str, Any]:
        """Counts for logs and run reports."""
        return {"examples": len(self), "tokens": self.num_tokens, "trained_tokens": self.trained_tokens,
                "truncated": self.truncated, "dropped": self.dropped, "template": self.template_used,
                "max_length": self.max_length, "cache_hit": self.cache_hit}


@dataclass
class Encoded:
    """One example before truncation."""

    input_ids: list[int]
    labels: list[int]


def tokenize(conversations: Sequence[Conversation], tokenizer: PreTrainedTokenizerBase, *,
             chat_template: str = "auto", max_length: int, cache: bool = True,
             sink: EventSink | None = None, cancel: threading.Event | None = None) -> TokenizedData:
    """Render, tokenise and label ``conversations``; long examples are cut to ``max_length``.

    With ``cache`` the result is stored under ``cache_dir()/tokenized/<key>.json``. The key hashes
    everything the result depends on: the normalised conversations (so the source content, the
    format and the field mapping, which all shape them), the tokenizer (vocabulary, special
    tokens, chat template), the template choice and ``max_length``.

    >>> data = tokenize(conversations, tokenizer, max_length=256)  # doctest: +SKIP
    >>> data.summary()["trained_tokens"]                             # doctest: +SKIP
    """
    template = resolve_template(tokenizer, chat_template)
    key = cache_key(conversations, tokenizer, template, max_length)
    path = cache_dir() / "tokenized" / f"{key}.json"
    if cache:
        hit = _read_cache(path)
        if hit is not None:
            return TokenizedData(**hit, cache_key=key, cache_hit=True)
    with stage(sink, "tokenize", total=len(conversations), unit="example", cancel=cancel) as progress:
        encoded, template = encode(conversations, tokenizer, template, progress=progress)
        input_ids, labels, truncated, dropped = [], [], 0, 0
        for example in encoded:
            ids, labs = example.input_ids, example.labels
            if len(ids) > max_length:
                truncated += 1
                ids, labs = ids[:max_length], labs[:max_length]
            if all(label == IGNORE_INDEX for label in labs):
                dropped += 1
                continue
            input_ids.append(ids)
            labels.append(labs)
        progress.summary.update(examples=len(input_ids), truncated=truncated, dropped=dropped, template=template)
        if truncated:
            progress.log(f"{truncated} of {len(encoded)} examples were longer than {max_length} tokens and were cut"
                         + (f"; {dropped} lost every trained token and were dropped" if dropped else ""),
                         level="warning")
    result = TokenizedData(input_ids=input_ids, labels=labels, truncated=truncated, dropped=dropped,
                           template_used=template, max_length=max_length, cache_key=key)
    if cache:
        payload = {"version": CACHE_VERSION, "input_ids": input_ids, "labels": labels, "truncated": truncated,
                   "dropped": dropped, "template_used": template, "max_length": max_length}
        atomic_write_text(path, json.dumps(payload, separators=(",", ":")))
    return result


def encode(conversations: Sequence[Conversation], tokenizer: PreTrainedTokenizerBase, template: str,
           *, progress=None) -> tuple[list[Encoded], str]:
    """Full-length ids and labels for each conversation, and the template actually used.

    ``template`` is a resolved name (see :func:`resolve_template`). When the model's own template
    came from ``auto`` and cannot be used for some conversation, everything is encoded with
    ``chatml`` instead; an explicit ``model`` choice raises :class:`DataError` then.
    """
    try:
        rendered = [render_segments(c, tokenizer, template) for c in conversations]
    except _ModelTemplateUnusable as exc:
        if template != "model:auto":
            raise DataError(str(exc), _FALLBACK_HINT) from None
        template = "chatml"
        rendered = [render_segments(c, tokenizer, template) for c in conversations]
    prefix = _special_prefix(tokenizer)
    encoded = []
    for ids, trained in _tokenize_segments(rendered, tokenizer):
        if prefix and ids[: len(prefix)] != prefix:
            ids, trained = list(prefix) + ids, [False] * len(prefix) + trained
        encoded.append(Encoded(input_ids=ids, labels=[i if t else IGNORE_INDEX for i, t in zip(ids, trained)]))
        if progress is not None:
            progress.advance()
    return encoded, template.split(":")[0]


def _tokenize_segments(rendered: list[list[Segment]], tokenizer) -> list[tuple[list[int], list[bool]]]:
    """Ids of each rendered text and, per token, whether it is trained.

    A fast tokenizer encodes the whole text at once (the ids any other tool gets from the same
    chat), and a token is trained when its characters overlap a trained segment. Slow tokenizers
    have no character offsets, so each segment is encoded on its own instead.
    """
    texts = ["".join(text for text, _ in segments) for segments in rendered]
    if not texts:
        return []
    if not getattr(tokenizer, "is_fast", False):
        pieces = [text for segments in rendered for text, _ in segments]
        ids_per_piece = iter(tokenizer(pieces, add_special_tokens=False)["input_ids"])
        result = []
        for segments in rendered:
            ids, trained = [], []
            for _, flag in segments:
                piece = list(next(ids_per_piece))
                ids += piece
                trained += [flag] * len(piece)
            result.append((ids, trained))
        return result
    batch = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    result = []
    for segments, ids, offsets in zip(rendered, batch["input_ids"], batch["offset_mapping"]):
        spans, cursor = [], 0
        for text, flag in segments:
            if flag:
                spans.append((cursor, cursor + len(text)))
            cursor += len(text)
        trained = [any(start < span_end and span_start < end for span_start, span_end in spans)
                   for start, end in offsets]
        result.append((list(ids), trained))
    return result


def prompt_and_answer(conversation: Conversation, tokenizer: PreTrainedTokenizerBase,
                      chat_template: str = "auto") -> tuple[list[int], str]:
    """The ids a model generates its last answer from, and that answer's text (for scoring).

    The prompt is the encoded conversation up to the first token of its last answer.
    """
    if conversation.is_text or not conversation.messages:
        raise DataError(f"row {conversation.row}: plain text has no answer to score")
    (example,), _ = encode([conversation], tokenizer, resolve_template(tokenizer, chat_template))
    start = max(i for i, label in enumerate(example.labels) if label != IGNORE_INDEX)
    while start > 0 and example.labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return example.input_ids[:start], conversation.messages[-1]["content"]


def collate(features: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: ``input_ids`` with ``pad_token_id``, ``labels`` with -100,
    ``attention_mask`` 1 on real tokens. Padding is never trained, whatever its id.

    Use ``functools.partial(collate, pad_token_id=tokenizer.pad_token_id)`` as a data collator.
    """
    import torch

    width = max(len(f["input_ids"]) for f in features)
    input_ids = torch.full((len(features), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(features), width), dtype=torch.long)
    for row, feature in enumerate(features):
        ids = torch.as_tensor(feature["input_ids"], dtype=torch.long)
        input_ids[row, : len(ids)] = ids
        labels[row, : len(ids)] = torch.as_tensor(feature["labels"], dtype=torch.long)
        attention[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


# ---- templates -------------------------------------------------------------------------------

def resolve_template(tokenizer: PreTrainedTokenizerBase, choice: str = "auto") -> str:
    """The template to render with: ``model``, ``chatml``, ``alpaca`` or ``plain``.

    ``auto`` gives ``model:auto`` when the tokenizer has a chat template (``model`` that may still
    fall back to ``chatml``, see :func:`encode`), else ``chatml``.
    """
    if choice not in TEMPLATES:
        raise DataError(f"data.chat_template {choice!r} is not one of {', '.join(TEMPLATES)}")
    has_own = bool(getattr(tokenizer, "chat_template", None))
    if choice == "auto":
        return "model:auto" if has_own else "chatml"
    if choice == "model" and not has_own:
        raise DataError("data.chat_template is 'model' but the tokenizer has no chat template (a base model?)",
                        "Use chatml, alpaca or plain, or auto to pick one.")
    return choice


def render_segments(conversation: Conversation, tokenizer: PreTrainedTokenizerBase, template: str) -> list[Segment]:
    """The conversation as (text, trained) pieces under ``template`` (a resolved name)."""
    eos = tokenizer.eos_token
    if not eos:
        raise DataError("the tokenizer has no eos token, so a model trained with it could not learn to stop")
    if conversation.is_text:
        return [(conversation.text + eos, True)]
    name = template.split(":")[0]
    if name == "model":
        return _model_segments(conversation, tokenizer)
    if name == "chatml":
        end = "<|im_end|>" if _is_single_token(tokenizer, "<|im_end|>") else eos
        return _turn_segments(conversation, system=lambda s: f"<|im_start|>system\n{s}{end}\n",
                              user=lambda u: f"<|im_start|>user\n{u}{end}\n<|im_start|>assistant\n",
                              end=end, between="\n")
    if name == "alpaca":
        preamble = conversation.system or ALPACA_PREAMBLE
        return _turn_segments(conversation, system=lambda s: "",
                              user=lambda u: f"### Instruction:\n{u}\n\n### Response:\n",
                              end=eos, between="\n\n", first=f"{preamble}\n\n")
    if name == "plain":
        return _turn_segments(conversation, system=lambda s: f"{s}\n\n", user=lambda u: f"{u}\n",
                              end=eos, between="\n")
    raise DataError(f"unknown chat template {template!r}; use one of {', '.join(TEMPLATES)}")


def _turn_segments(conversation: Conversation, *, system, user, end: str, between: str,
                   first: str = "") -> list[Segment]:
    prompt = first + (system(conversation.system) if conversation.system else "")
    segments: list[Segment] = []
    for message in conversation.messages:
        if message["role"] == "user":
            prompt += user(message["content"])
        else:
            segments.append((prompt, False))
            segments.append((message["content"] + end, True))
            prompt = between
    return [(text, trained) for text, trained in segments if text]


class _ModelTemplateUnusable(Exception):
    """The model's chat template fails on a conversation, or renders a prefix of it differently
    from the start of the whole, so the answers cannot be located."""


def _model_segments(conversation: Conversation, tokenizer: PreTrainedTokenizerBase) -> list[Segment]:
    messages = ([{"role": "system", "content": conversation.system}] if conversation.system else []) + \
        list(conversation.messages)
    offset = 1 if conversation.system else 0
    full = _apply(tokenizer, messages, generation_prompt=False, row=conversation.row)
    segments: list[Segment] = []
    cursor = 0
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(_checked_prefix(tokenizer, messages[:index], True, full, conversation.row))
        end_text = _checked_prefix(tokenizer, messages[: index + 1], False, full, conversation.row)
        # Whitespace after the end-of-turn token is layout between turns, not something to learn.
        end = len(end_text.rstrip())
        if not (cursor <= start < end):
            raise _ModelTemplateUnusable(f"row {conversation.row}: the model's chat template puts no text for "
                                  f"assistant turn {index - offset + 1}")
        segments.append((full[cursor:start], False))
        segments.append((full[start:end], True))
        cursor = end
    segments.append((full[cursor:], False))
    return [(text, trained) for text, trained in segments if text]


def _checked_prefix(tokenizer, messages, generation_prompt: bool, full: str, row: int | None) -> str:
    text = _apply(tokenizer, messages, generation_prompt=generation_prompt, row=row)
    if not full.startswith(text):
        raise _ModelTemplateUnusable(
            f"row {row}: the model's chat template renders the first {len(messages)} messages differently "
            "from the start of the whole conversation, so the answer tokens cannot be located")
    return text


def _apply(tokenizer, messages: list[dict[str, str]], *, generation_prompt: bool, row: int | None) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as exc:  # jinja raises TemplateError and friends from inside the template
        raise _ModelTemplateUnusable(
            f"row {row}: the model's chat template failed: {type(exc).__name__}: {exc}") from None


def _is_single_token(tokenizer, text: str) -> bool:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) == 1


def _special_prefix(tokenizer) -> list[int]:
    """Ids the tokenizer puts before text on its own (a bos token, for most Llama-style models)."""
    probe = "a"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start: start + len(plain)] == plain:
            return list(full[:start])
    return []


# ---- caching ---------------------------------------------------------------------------------

def cache_key(conversations: Sequence[Conversation], tokenizer: PreTrainedTokenizerBase, template: str,
              max_length: int) -> str:
    """Hash of everything that changes a tokenisation result (see :func:`tokenize`)."""
    blob = json.dumps({"version": CACHE_VERSION, "data": conversations_fingerprint(conversations),
                       "tokenizer": tokenizer_fingerprint(tokenizer), "template": template,
                       "max_length": max_length}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def conversations_fingerprint(conversations: Sequence[Conversation]) -> str:
    """Short hash of the normalised content (row numbers excluded)."""
    digest = hashlib.sha256()
    for conversation in conversations:
        digest.update(json.dumps(conversation.content_key(), sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Short hash of what decides a tokenizer's output: its model and normaliser (or vocabulary),
    special tokens and chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    core = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    parts = [type(tokenizer).__name__, core, str(getattr(tokenizer, "chat_template", None)),
             json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str),
             json.dumps(_special_prefix(tokenizer))]
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _read_cache(path) -> dict[str, Any] | None:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if payload.get("version") != CACHE_VERSION:
        return None
    payload.pop("version")
    return payload
