"""Recognise a dataset's layout and turn every row into one normalised :class:`Conversation`.

Rows arrive as plain dicts (from JSON, CSV, Parquet, ``datasets``...). :func:`detect_format` looks
at many of them (up to :data:`DETECTION_SAMPLE`, spread over the whole split) and scores every known
layout by the share of rows it can read; :func:`normalise` then converts all rows with the winning
field mapping and records, for each row it drops, why.

A field mapping says which source field plays which role:

- ``user`` / ``assistant`` / ``system``: one turn's text (several fields with the same role are
  joined with a blank line, in mapping order);
- ``context``: extra input appended to the user turn (alpaca ``input``, dolly ``context``);
- ``messages``: a list of ``{"role", "content"}`` dicts (OpenAI / ChatML);
- ``conversations``: a list of ``{"from", "value"}`` dicts (ShareGPT);
- ``text``: plain text for language modelling (every token is trained).

>>> rows = [(1, {"instruction": "Add 2 and 2.", "input": "", "output": "4"})]
>>> report = detect_format(rows, source="toy.jsonl")
>>> report.format, report.fields
('alpaca', {'instruction': 'user', 'input': 'context', 'output': 'assistant'})
>>> conversations, report = normalise(rows, report.format, report.fields, source="toy.jsonl")
>>> conversations[0].messages
[{'role': 'user', 'content': 'Add 2 and 2.'}, {'role': 'assistant', 'content': '4'}]
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from fnapi.errors import DataError

#: Rows examined by detection; larger splits are sampled evenly from start to end.
DETECTION_SAMPLE = 2000
#: How many skipped rows a report lists by number.
SKIPPED_EXAMPLES = 5

ROLES = ("system", "user", "context", "assistant", "text", "messages", "conversations")
_LIST_ROLES = ("messages", "conversations")

#: Known layouts: role -> accepted field names (first match wins), split into required and optional.
#: Field names match case-insensitively.
FORMATS: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {
    "messages": {"required": {"messages": ("messages", "conversations", "conversation", "chat", "dialog")},
                 "optional": {"system": ("system", "system_prompt")}},
    "sharegpt": {"required": {"conversations": ("conversations", "conversation", "messages", "items", "chat")},
                 "optional": {"system": ("system", "system_prompt")}},
    "alpaca": {"required": {"user": ("instruction",), "assistant": ("output",)},
               "optional": {"context": ("input",), "system": ("system",)}},
    "dolly": {"required": {"user": ("instruction",), "assistant": ("response",)},
              "optional": {"context": ("context",), "system": ("system",)}},
    "prompt_completion": {"required": {"user": ("prompt",), "assistant": ("completion",)},
                          "optional": {"system": ("system",)}},
    "prompt_response": {"required": {"user": ("prompt",), "assistant": ("response",)},
                        "optional": {"system": ("system",)}},
    "question_answer": {"required": {"user": ("question",), "assistant": ("answer",)},
                        "optional": {"context": ("context",), "system": ("system",)}},
    "input_output": {"required": {"user": ("input",), "assistant": ("output",)},
                     "optional": {"system": ("system",)}},
    "text": {"required": {"text": ("text", "content", "document", "body", "sentence")}, "optional": {}},
}

#: Other spellings accepted for ``data.format``.
FORMAT_ALIASES = {
    "openai": "messages", "chatml": "messages", "chat": "messages",
    "conversations": "sharegpt", "share_gpt": "sharegpt",
    "completion": "prompt_completion", "prompt-completion": "prompt_completion",
    "prompt-response": "prompt_response", "qa": "question_answer", "question-answer": "question_answer",
    "input-output": "input_output", "plain": "text", "lm": "text",
}

# Role names used inside messages / ShareGPT turns.
_TURN_ROLES = {
    "user": "user", "human": "user", "prompter": "user", "question": "user",
    "assistant": "assistant", "gpt": "assistant", "bot": "assistant", "model": "assistant",
    "chatgpt": "assistant", "ai": "assistant", "answer": "assistant",
    "system": "system",
}


@dataclass
class Conversation:
    """One training example: chat turns (``user``/``assistant``) with an optional system prompt,
    or, for language modelling, plain ``text`` (then ``messages`` is empty).

    ``row`` is the source row number, kept for previews and error messages.
    """

    messages: list[dict[str, str]] = field(default_factory=list)
    system: str | None = None
    text: str | None = None
    row: int | None = None

    @property
    def is_text(self) -> bool:
        return self.text is not None

    def content_key(self) -> dict[str, Any]:
        """What the example says (without its row number): the input of fingerprints."""
        return {"messages": self.messages, "system": self.system, "text": self.text}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DetectionReport:
    """What detection found and what normalisation kept; feeds ``fnapi data inspect`` and the wizard.

    ``fields`` maps source field -> role. ``confidence`` is the share of examined rows that the
    chosen layout can read (lowered when another layout reading different fields fits as well).
    Row numbers are those of the source (see :mod:`fnapi.data.loading`).
    """

    source: str
    format: str
    fields: dict[str, str]
    confidence: float
    rows_total: int = 0
    rows_kept: int = 0
    rows_skipped: int = 0
    skipped_examples: list[dict[str, Any]] = field(default_factory=list)
    skip_reasons: dict[str, int] = field(default_factory=dict)
    columns: list[str] = field(default_factory=list)
    rows_examined: int = 0
    alternatives: list[dict[str, Any]] = field(default_factory=list)
    overridden: bool = False
    split: str = "train"
    splits: dict[str, dict[str, int]] = field(default_factory=dict)
    #: What was done to the rows before detection (unlabelled rows and splits left out, ...).
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line for logs: format, mapping, kept and skipped rows."""
        mapping = ", ".join(f"{k} -> {v}" for k, v in self.fields.items())
        line = (f"{self.source}: {self.format} ({mapping}), confidence {self.confidence:.2f}, "
                f"{self.rows_kept} rows kept, {self.rows_skipped} skipped")
        return "; ".join([line, *self.notes])


Row = tuple[int, Any]  # (row number in the source, the record)


class UnreadableRow(str):
    """Stands in for a row the reader could not parse (a broken JSON line, a CSV row with too many
    cells); its text is the reason reported for skipping it."""


def canonical_format(name: str) -> str:
    """The canonical name of a format (aliases resolved); DataError listing the known ones."""
    key = name.strip().lower()
    key = FORMAT_ALIASES.get(key, key)
    if key != "auto" and key not in FORMATS:
        known = ", ".join(["auto", *FORMATS])
        raise DataError(f"unknown data format {name!r}; known formats: {known}")
    return key


def detect_format(rows: Sequence[Row], *, source: str, format: str = "auto",
                  fields: dict[str, str] | None = None) -> DetectionReport:
    """Choose the layout and field mapping that reads the most rows.

    ``format`` forces a layout (its default field names still resolve against the data);
    ``fields`` (source field -> role) overrides the mapping: a role given there replaces the
    layout's own field for that role. With only ``fields`` and ``format="auto"``, a complete
    mapping is used as is (format ``custom``) when nothing reads more rows.
    """
    format = canonical_format(format)
    overrides = _check_overrides(fields or {})
    sample = _spread_sample(rows, DETECTION_SAMPLE)
    numbered = [(number, record) for number, record in sample if isinstance(record, dict)]
    records = [record for _, record in numbered]
    columns = _columns(records)
    if not records:
        raise DataError(f"{source}: no rows that are objects/records to read (looked at {len(sample)} rows)")

    names = [format] if format != "auto" else list(FORMATS)
    candidates: list[tuple[str, dict[str, str]]] = []
    for name in names:
        mapping = _resolve(name, columns, records, overrides, forced=format != "auto")
        if mapping is not None:
            candidates.append((name, mapping))
    if overrides and format == "auto" and _complete(overrides):
        ordered = dict(sorted(overrides.items(), key=lambda item: ROLES.index(item[1])))
        candidates.append((_format_of_mapping(overrides), ordered))

    scored = []
    for order, (name, mapping) in enumerate(candidates):
        readable = sum(1 for record in records if _row_problem(record, mapping) is None)
        scored.append((readable / len(records), len(mapping), -order, name, mapping))
    scored.sort(reverse=True)

    if not scored or scored[0][0] == 0.0:
        raise DataError(_no_format_message(source, format, columns, numbered, candidates), _FORMAT_HINT)

    score, _, _, name, mapping = scored[0]
    confidence = score
    for other in scored[1:]:
        # A rival that reads the same share of rows from other fields makes the choice a guess.
        if other[0] >= score and not set(other[4]) <= set(mapping):
            confidence *= 0.75
            break
    alternatives = [{"format": s[3], "fields": s[4], "score": round(s[0], 4)} for s in scored[1:] if s[0] > 0]
    return DetectionReport(
        source=source, format=name, fields=mapping, confidence=round(confidence, 4),
        columns=columns, rows_examined=len(sample), alternatives=alternatives[:5],
        overridden=bool(overrides) or format != "auto",
    )


def normalise(rows: Sequence[Row], format: str, fields: dict[str, str], *, source: str,
              report: DetectionReport | None = None) -> tuple[list[Conversation], DetectionReport]:
    """Convert every row with ``fields``; returns the conversations and the report with row counts.

    Rows that cannot be read are skipped; the report counts them by reason and lists the first
    few with their row numbers. No usable row at all is a :class:`DataError` naming the first
    problem.
    """
    report = report or DetectionReport(source=source, format=format, fields=dict(fields), confidence=1.0)
    conversations: list[Conversation] = []
    reasons: Counter[str] = Counter()
    examples: list[dict[str, Any]] = []
    for number, record in rows:
        if isinstance(record, UnreadableRow):
            problem = str(record)
        elif not isinstance(record, dict):
            problem = f"row is {_kind(record)}, expected an object with fields"
        else:
            problem = _row_problem(record, fields)
        if problem is None:
            conversation, problem = _convert(record, fields)
            if conversation is not None:
                conversation.row = number
                conversations.append(conversation)
                continue
        reasons[_reason_kind(problem)] += 1
        if len(examples) < SKIPPED_EXAMPLES:
            examples.append({"row": number, "reason": problem})
    report.rows_total = len(rows)
    report.rows_kept = len(conversations)
    report.rows_skipped = len(rows) - len(conversations)
    report.skipped_examples = examples
    report.skip_reasons = dict(reasons.most_common())
    if not conversations:
        if not rows:
            raise DataError(f"{source}: no rows to read")
        first = examples[0]
        raise DataError(
            f"{source}: none of the {len(rows)} rows is usable as {format} "
            f"({_mapping_text(fields)}); row {first['row']}: {first['reason']}",
            _FORMAT_HINT,
        )
    return conversations, report


# ---- detection details ------------------------------------------------------------------------

_FORMAT_HINT = ("Set data.format (or --format) to one of: " + ", ".join(FORMATS)
                + "; map your own columns with data.fields, e.g. {question: user, best_answer: assistant}.")


def _check_overrides(fields: dict[str, str]) -> dict[str, str]:
    for name, role in fields.items():
        if role not in ROLES:
            raise DataError(f"data.fields: field {name!r} has unknown role {role!r}; roles are {', '.join(ROLES)}")
    return dict(fields)


def _spread_sample(rows: Sequence[Row], limit: int) -> list[Row]:
    if len(rows) <= limit:
        return list(rows)
    step = len(rows) / limit
    return [rows[int(i * step)] for i in range(limit)]


def _columns(records: Iterable[dict]) -> list[str]:
    counts: Counter[str] = Counter()
    for record in records:
        counts.update(str(k) for k in record)
    return [name for name, _ in counts.most_common()]


def _resolve(name: str, columns: list[str], records: list[dict], overrides: dict[str, str],
             forced: bool) -> dict[str, str] | None:
    """The field mapping of layout ``name`` on these columns, with ``overrides`` applied, in role
    order; None when the layout does not fit."""
    layout = FORMATS[name]
    lower = {c.lower(): c for c in reversed(columns)}
    overridden_roles = set(overrides.values())
    mapping: dict[str, str] = {}
    for required, roles in ((True, layout["required"]), (False, layout["optional"])):
        for role, aliases in roles.items():
            if role in overridden_roles:
                continue
            found = _pick_column(role, aliases, lower, records)
            if found is None:
                if required:
                    return None
                continue
            if found not in overrides:
                mapping[found] = role
    if overrides and not mapping and not forced:
        return None  # nothing of this layout is in the data: the overrides alone are "custom"
    mapping.update(overrides)
    if not (_complete(mapping) and _consistent(mapping)):
        return None
    return dict(sorted(mapping.items(), key=lambda item: ROLES.index(item[1])))


def _pick_column(role: str, aliases: tuple[str, ...], lower: dict[str, str], records: list[dict]) -> str | None:
    for alias in aliases:
        column = lower.get(alias)
        if column is None:
            continue
        if role in _LIST_ROLES:
            # The same column name is used by both list layouts; the turn keys decide.
            want = ("role", "content") if role == "messages" else ("from", "value")
            if not any(_turn_keys(record.get(column)) == want for record in records[:200]):
                continue
        return column
    return None


def _turn_keys(value: Any) -> tuple[str, str] | None:
    value = _maybe_json_list(value)
    if not isinstance(value, list) or not value or not isinstance(value[0], dict):
        return None
    if "role" in value[0] and "content" in value[0]:
        return ("role", "content")
    if "from" in value[0] and "value" in value[0]:
        return ("from", "value")
    return None


def _complete(mapping: dict[str, str]) -> bool:
    roles = set(mapping.values())
    return bool(roles & {"text", *_LIST_ROLES}) or {"user", "assistant"} <= roles


def _consistent(mapping: dict[str, str]) -> bool:
    roles = set(mapping.values())
    kinds = sum([bool(roles & {"user", "assistant", "context"}), "text" in roles, bool(roles & set(_LIST_ROLES))])
    return kinds == 1


def _format_of_mapping(mapping: dict[str, str]) -> str:
    roles = set(mapping.values())
    if "messages" in roles:
        return "messages"
    if "conversations" in roles:
        return "sharegpt"
    if "text" in roles:
        return "text"
    return "custom"


def _no_format_message(source: str, format: str, columns: list[str], numbered: list[tuple[int, dict]],
                       candidates: list[tuple[str, dict[str, str]]]) -> str:
    shown = ", ".join(repr(c) for c in columns[:12]) or "(none)"
    if candidates:
        # The layout's fields are there but no row is usable: say why for the first row.
        name, mapping = max(candidates, key=lambda c: len(c[1]))
        number, record = numbered[0]
        return (f"{source}: no row is usable as {name} ({_mapping_text(mapping)}); "
                f"row {number}: {_row_problem(record, mapping)}")
    if format != "auto":
        required = FORMATS[format]["required"]
        wanted = " and ".join(f"{role} ({'/'.join(aliases)})" for role, aliases in required.items())
        return f"{source}: cannot read as {format}: it needs {wanted}; the rows have fields {shown}"
    return f"{source}: unknown data layout; the rows have fields {shown}"


def _mapping_text(fields: dict[str, str]) -> str:
    return ", ".join(f"{k} -> {v}" for k, v in fields.items())


# ---- row conversion ---------------------------------------------------------------------------

def _row_problem(record: dict, mapping: dict[str, str]) -> str | None:
    """Why ``record`` cannot be read with ``mapping`` (``None`` if it can)."""
    for column, role in mapping.items():
        optional = role in ("system", "context")
        if column not in record or record[column] is None:
            if optional:
                continue
            return f"missing field {column!r}"
        value = record[column]
        if role in _LIST_ROLES:
            turns = _maybe_json_list(value)
            want = ("role", "content") if role == "messages" else ("from", "value")
            if not isinstance(turns, list) or not turns:
                return f"field {column!r} is {_kind(value)}, expected a list of {'/'.join(want)} turns"
            if not all(isinstance(t, dict) and want[0] in t and want[1] in t for t in turns):
                bad = next(i for i, t in enumerate(turns)
                           if not (isinstance(t, dict) and want[0] in t and want[1] in t))
                return f"field {column!r}[{bad}] is not a {'/'.join(want)} turn"
            continue
        text = _as_text(value)
        if text is None:
            return f"field {column!r} is {_kind(value)}, expected text"
        if not text.strip() and not optional:
            return f"field {column!r} is empty"
    return None


def _convert(record: dict, mapping: dict[str, str]) -> tuple[Conversation | None, str | None]:
    by_role: dict[str, list[str]] = {}
    for column, role in mapping.items():
        value = record.get(column)
        if value is None:
            continue
        if role in _LIST_ROLES:
            by_role.setdefault(role, []).append(column)
            continue
        text = (_as_text(value) or "").strip()
        if text:
            by_role.setdefault(role, []).append(text)
    system = "\n\n".join(by_role.get("system", [])) or None
    if "text" in by_role:
        return Conversation(text="\n\n".join(by_role["text"]), system=None), None
    for role in _LIST_ROLES:
        if role in by_role:
            column = by_role[role][0]
            return _convert_turns(column, _maybe_json_list(record[column]), role, system)
    user = "\n\n".join(by_role.get("user", []) + by_role.get("context", []))
    assistant = "\n\n".join(by_role.get("assistant", []))
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return Conversation(messages=messages, system=system), None


def _convert_turns(column: str, turns: list[dict], layout: str, system: str | None
                   ) -> tuple[Conversation | None, str | None]:
    role_key, content_key = ("role", "content") if layout == "messages" else ("from", "value")
    messages: list[dict[str, str]] = []
    systems = [system] if system else []
    for index, turn in enumerate(turns):
        where = f"{column}[{index}]"
        raw_role = str(turn.get(role_key, "")).strip()
        role = _TURN_ROLES.get(raw_role.lower())
        if role is None:
            return None, f"{where} has unsupported role {raw_role!r} (use user/assistant/system)"
        content = _turn_text(turn.get(content_key))
        if content is None:
            return None, f"{where} {content_key} is {_kind(turn.get(content_key))}, expected text"
        content = content.strip()
        if role == "system":
            if messages:
                return None, (f"{where} is a system turn after the conversation started "
                              "(only a leading system turn is supported)")
            if content:
                systems.append(content)
            continue
        if not content:
            return None, f"{where} has an empty {role} message"
        expected = "user" if len(messages) % 2 == 0 else "assistant"
        if role != expected:
            return None, (f"{where} is {role!r} where {expected!r} was expected "
                          "(turns must alternate, starting with user)")
        messages.append({"role": role, "content": content})
    # A trailing user turn has no answer to learn from.
    if messages and messages[-1]["role"] == "user":
        messages.pop()
    if not messages:
        return None, f"{column} has no assistant turn"
    return Conversation(messages=messages, system="\n\n".join(systems) or None), None


def _turn_text(value: Any) -> str | None:
    # OpenAI content parts: [{"type": "text", "text": "..."}, ...]
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
        return "".join(str(p.get("text", "")) for p in value)
    return _as_text(value)


def _as_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return str(value)
    return None


def _maybe_json_list(value: Any) -> Any:
    # CSV/TSV cells hold lists as JSON text.
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "text"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


def _reason_kind(problem: str) -> str:
    """Group reasons for the counts: the text without indices, e.g. ``field 'output' is empty``."""
    return re.sub(r"\[\d+\]", "[i]", problem)
