"""Datasets: read any source, detect its layout, normalise rows, tokenise with trained-span labels.

>>> from fnapi.data import read_conversations, tokenize            # doctest: +SKIP
>>> conversations, report = read_conversations("train.jsonl")       # doctest: +SKIP
>>> data = tokenize(conversations, tokenizer, max_length=256)       # doctest: +SKIP

See :mod:`fnapi.data.formats` (detection), :mod:`fnapi.data.loading` (sources and splits),
:mod:`fnapi.data.templating` (chat templates, labels, cache), :mod:`fnapi.data.builtin`
(``builtin:skill``, ``builtin:probes``, ``builtin:text``), :mod:`fnapi.data.tasks` (``builtin:cipher``,
``builtin:order``, ``builtin:units``, ``builtin:vennish``) and :mod:`fnapi.data.inspect` (preview).
"""

from fnapi.data.builtin import (
    BUILTIN_TASKS,
    BUILTINS,
    ProbeItem,
    builtin_splits,
    probe_categories,
    probe_items,
    skill_conversations,
    skill_lexicon,
    text_paragraphs,
)
from fnapi.data.formats import FORMATS, Conversation, DetectionReport, detect_format, normalise
from fnapi.data.inspect import DataPreview, inspect_data, preview_examples, render_text
from fnapi.data.loading import (
    LoadedData,
    apply_system_prompt,
    load_data,
    read_conversations,
    read_rows,
    split_validation,
)
from fnapi.data.templating import (
    IGNORE_INDEX,
    TEMPLATES,
    TokenizedData,
    collate,
    encode,
    prompt_and_answer,
    resolve_template,
    tokenize,
)
from fnapi.models.source import load_tokenizer

__all__ = [
    "BUILTIN_TASKS", "BUILTINS", "FORMATS", "IGNORE_INDEX", "TEMPLATES", "apply_system_prompt",
    "Conversation", "DataPreview", "DetectionReport", "LoadedData", "ProbeItem", "TokenizedData",
    "builtin_splits", "collate", "detect_format", "encode", "inspect_data", "load_data", "load_tokenizer",
    "normalise", "preview_examples", "probe_categories", "probe_items", "prompt_and_answer", "read_conversations", "read_rows",
    "render_text", "resolve_template", "skill_conversations", "skill_lexicon", "split_validation",
    "text_paragraphs", "tokenize",
]
