"""Preview a dataset the way training will see it: detection report, token counts, and examples
with the trained spans marked. ``fnapi data inspect`` prints it; the wizard shows the same object.

In plain text a trained span is wrapped in ``⟦`` and ``⟧``; everything outside the brackets is
context only (label -100). The text is decoded from the token ids actually fed to the model, so
truncation shows as a cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import groupby
from typing import TYPE_CHECKING, Any

from fnapi.data.formats import Conversation, DetectionReport
from fnapi.data.loading import apply_system_prompt, read_conversations
from fnapi.data.templating import IGNORE_INDEX, encode, resolve_template

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TRAINED_OPEN = "⟦"
TRAINED_CLOSE = "⟧"
#: Token statistics cover at most this many rows (rendering every row of a large set is slow).
STATS_ROWS = 2000


@dataclass
class DataPreview:
    """A detection report plus what the loss sees on a few examples."""

    report: DetectionReport
    tokenizer: str
    template: str
    max_length: int
    examples: list[dict[str, Any]] = field(default_factory=list)
    tokens: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The report's keys, then ``tokenizer``, ``template``, ``max_length``, ``tokens`` (counts
        over up to :data:`STATS_ROWS` rows) and ``examples`` (``row``, ``text`` with trained spans
        in brackets, ``segments``, token counts, ``truncated``)."""
        return {**self.report.to_dict(), "tokenizer": self.tokenizer, "template": self.template,
                "max_length": self.max_length, "tokens": self.tokens, "examples": self.examples}


def inspect_data(data_spec: str, tokenizer: PreTrainedTokenizerBase, *, tokenizer_name: str = "",
                 format: str = "auto", fields: dict[str, str] | None = None, split: str = "train",
                 chat_template: str = "auto", max_length: int = 256, examples: int = 3,
                 system_prompt: str | None = None) -> DataPreview:
    """Detect, normalise and render ``data_spec`` without training anything (``system_prompt`` as in
    ``data.system_prompt``: given to examples that have none).

    >>> preview = inspect_data("train.jsonl", tokenizer)  # doctest: +SKIP
    >>> print(render_text(preview))                       # doctest: +SKIP
    """
    conversations, report = read_conversations(data_spec, split=split, format=format, fields=fields)
    if system_prompt:
        apply_system_prompt(conversations, system_prompt)
    template = resolve_template(tokenizer, chat_template)
    sample = conversations[:STATS_ROWS]
    encoded, used = encode(sample, tokenizer, template)
    lengths = [len(e.input_ids) for e in encoded]
    trained = [sum(1 for label in e.labels[:max_length] if label != IGNORE_INDEX) for e in encoded]
    tokens = {
        "rows": len(sample),
        "mean": round(sum(lengths) / len(lengths), 1),
        "max": max(lengths),
        "trained": sum(trained),
        "truncated": sum(1 for n in lengths if n > max_length),
        "dropped": sum(1 for n in trained if n == 0),
    }
    shown = [_example(c, e, tokenizer, max_length) for c, e in zip(sample[:examples], encoded[:examples])]
    return DataPreview(report=report, tokenizer=tokenizer_name or type(tokenizer).__name__, template=used,
                       max_length=max_length, examples=shown, tokens=tokens)


def preview_examples(conversations: Sequence[Conversation], tokenizer: PreTrainedTokenizerBase, *,
                     chat_template: str = "auto", max_length: int = 256) -> list[dict[str, Any]]:
    """Rendered examples (as in :meth:`DataPreview.to_dict`) for conversations already in hand."""
    encoded, _ = encode(conversations, tokenizer, resolve_template(tokenizer, chat_template))
    return [_example(c, e, tokenizer, max_length) for c, e in zip(conversations, encoded)]


def _example(conversation: Conversation, encoded, tokenizer, max_length: int) -> dict[str, Any]:
    ids, labels = encoded.input_ids[:max_length], encoded.labels[:max_length]
    segments = [
        {"text": tokenizer.decode([token for token, _ in run], skip_special_tokens=False), "trained": trained}
        for trained, run in ((flag, list(group)) for flag, group in
                             groupby(zip(ids, labels), key=lambda pair: pair[1] != IGNORE_INDEX))
    ]
    text = "".join(f"{TRAINED_OPEN}{s['text']}{TRAINED_CLOSE}" if s["trained"] else s["text"] for s in segments)
    return {
        "row": conversation.row,
        "text": text,
        "segments": segments,
        "tokens": len(ids),
        "trained_tokens": sum(1 for label in labels if label != IGNORE_INDEX),
        "truncated": len(encoded.input_ids) > max_length,
        "tokens_cut": max(0, len(encoded.input_ids) - max_length),
    }


def render_text(preview: DataPreview) -> str:
    """The preview as plain text: report lines, then each example with ⟦trained⟧ spans."""
    report = preview.report
    lines = [
        f"source      {report.source}",
        f"format      {report.format} (confidence {report.confidence:.2f})",
        "fields      " + (", ".join(f"{k} -> {v}" for k, v in report.fields.items()) or "(built in)"),
        f"rows        {report.rows_kept} kept, {report.rows_skipped} skipped of {report.rows_total}",
    ]
    for name, counts in report.splits.items():
        lines.append(f"  {name + ':':<12}{counts['rows_kept']} kept, {counts['rows_skipped']} skipped")
    for reason, count in report.skip_reasons.items():
        lines.append(f"  skipped {count} x {reason}")
    for example in report.skipped_examples:
        lines.append(f"  row {example['row']}: {example['reason']}")
    tokens = preview.tokens
    lines.append(f"template    {preview.template} ({preview.tokenizer}), max_length {preview.max_length}")
    lines.append(f"tokens      mean {tokens['mean']}, max {tokens['max']}, {tokens['trained']} trained; "
                 f"{tokens['truncated']} truncated, {tokens['dropped']} with nothing left to train "
                 f"(first {tokens['rows']} rows)")
    lines.append(f"Trained tokens are inside {TRAINED_OPEN} {TRAINED_CLOSE}; the rest is context (label -100).")
    for example in preview.examples:
        cut = f", cut by {example['tokens_cut']} tokens" if example["truncated"] else ""
        lines.append("")
        lines.append(f"--- row {example['row']}: {example['tokens']} tokens, "
                     f"{example['trained_tokens']} trained{cut} ---")
        lines.append(example["text"])
    return "\n".join(lines)
