"""Turn classification rows (text fields and an integer class label) into prompt/answer conversations.

Most hub classification sets store the class as an integer (``{"title": ..., "content": ...,
"label": 3}``); a language model is trained and scored on text. :func:`label_data` writes each row
as a prompt (the instruction, then the row's text fields) and the class name as the answer::

    Which topic is this article about? Answer with one of: World, Sports, Business, Sci/Tech.

    title: Wall St. Bears Claw Back Into the Black
    content: Reuters - Short-sellers, Wall Street's dwindling band ...

    -> Business

The text fields, unless named, are the row's string fields in the source's own column order (the
order is the dataset's, so every row and split reads the same way), except the label field, the
label's own text (``label_text``, ``label_name``: the answer itself) and identifiers (``id``,
``idx``, ``guid``, ``*_id``). One text field is given bare; several are given as ``name: value``
lines, since the names (premise, hypothesis, question, passage) tell the model what each part is.

Label -1 marks an unlabelled row (GLUE and SuperGLUE test splits, IMDB's ``unsupervised`` split):
such rows are left out, and a split with no labelled row at all is left out with a note.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fnapi.data.formats import UnreadableRow
from fnapi.data.loading import RawSplit
from fnapi.errors import DataError

#: The label value of an unlabelled row.
UNLABELLED = -1

_IDENTIFIER = re.compile(r"(id|idx|uid|guid|.*_id)", re.IGNORECASE)


@dataclass(frozen=True)
class ClassLabels:
    """How a source's integer labels become answers: ``names[i]`` answers label ``i``."""

    names: tuple[str, ...]
    instruction: str | None = None
    field: str = "label"
    text_fields: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        problem = labels_problem(self.names)
        if problem:
            raise DataError(f"labels: {problem}")


def labels_problem(names: Sequence[str]) -> str | None:
    """Why ``names`` cannot be a list of class names (None: it can)."""
    if any(not isinstance(name, str) or not name.strip() for name in names):
        return "every class name must be a non-empty string"
    if len(set(names)) < 2:
        return f"at least two distinct class names are needed (got {list(names)})"
    repeated = sorted({name for name in names if list(names).count(name) > 1})
    if repeated:
        return f"{', '.join(repr(n) for n in repeated)} is listed more than once; an answer must name one class"
    return None


def default_instruction(names: Sequence[str]) -> str:
    """The instruction used when none is given: the allowed answers."""
    return f"Answer with one of: {', '.join(names)}."


def label_data(splits: dict[str, RawSplit], labels: Sequence[str], instruction: str | None = None, *,
               source: str, label_field: str = "label", text_fields: Sequence[str] | None = None
               ) -> tuple[dict[str, RawSplit], list[str]]:
    """Prompt/response rows (``{"prompt", "response"}``, same row numbers) of every split, and notes
    on what was left out.

    ``labels`` maps label ``i`` to its answer ``labels[i]``; ``instruction`` opens every prompt (default:
    :func:`default_instruction`). ``text_fields`` names the fields the prompt shows, in that order
    (default: see the module). Rows labelled -1 are left out; a split left empty by that is dropped.
    A row whose label is missing, not an integer or outside ``labels`` raises :class:`DataError`
    naming ``source``, the split, the field and the row. Unreadable rows stay unreadable (normalising
    skips them with their reason); rows with no text get such a reason too.
    """
    problem = labels_problem(labels)
    if problem:
        raise DataError(f"{source}: labels: {problem}")
    fields = list(text_fields) if text_fields else _text_fields(splits, label_field)
    if text_fields:
        _check_named(splits, fields, source)
    elif not fields:
        columns = _columns(splits)
        raise DataError(f"{source}: no text field besides the label {label_field!r} (fields: "
                        f"{', '.join(columns) or 'none'})", "name them with text_fields")
    opening = instruction if instruction is not None else default_instruction(labels)
    labelled: dict[str, RawSplit] = {}
    notes: list[str] = []
    for split, part in splits.items():
        rows, unlabelled = [], 0
        for number, record in part.rows:
            if not isinstance(record, dict):  # an UnreadableRow, or no record: normalising reports it
                rows.append((number, record))
                continue
            index = _label_index(record, label_field, len(labels), f"{source}, {split} split, row {number}")
            if index == UNLABELLED:
                unlabelled += 1
                continue
            prompt = _prompt(record, fields, opening)
            if prompt is None:
                rows.append((number, UnreadableRow(f"no text in {', '.join(fields)}")))
                continue
            rows.append((number, {"prompt": prompt, "response": labels[index]}))
        if unlabelled and not rows:
            notes.append(f"the {split} split is left out: every row is unlabelled ({label_field} -1)")
            continue
        if unlabelled:
            notes.append(f"{unlabelled} unlabelled rows ({label_field} -1) of the {split} split left out")
        labelled[split] = RawSplit(part.source, rows)
    return labelled, notes


def _label_index(record: dict[str, Any], field: str, count: int, where: str) -> int:
    """The class index of a row (-1: unlabelled); DataError naming ``where`` when it is unusable."""
    if field not in record:
        raise DataError(f"{where}: no label field {field!r} (the row has {', '.join(map(str, record)) or 'no fields'})",
                        "name the label field with label_field")
    value = record[field]
    index: int | None = None
    if isinstance(value, bool):
        index = None  # True/False are no class numbers, whatever Python says
    elif isinstance(value, int):
        index = value
    elif isinstance(value, float) and value.is_integer():
        index = int(value)  # a Parquet column with missing values stores integers as floats
    elif isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        index = int(value)  # CSV cells are text
    if index is None:
        raise DataError(f"{where}: field {field!r} is {value!r}, not an integer class label",
                        "labels map integer labels (0, 1, ...) to answers; rows with text answers need no labels")
    if index != UNLABELLED and not 0 <= index < count:
        raise DataError(f"{where}: field {field!r} is {index}, outside the {count} labels (0-{count - 1})",
                        "list one class name per label value, in label order")
    return index


def _prompt(record: dict[str, Any], fields: list[str], opening: str) -> str | None:
    present = [(name, str(record[name]).strip()) for name in fields if record.get(name) is not None]
    present = [(name, value) for name, value in present if value]
    if not present:
        return None
    body = present[0][1] if len(fields) == 1 else "\n".join(f"{name}: {value}" for name, value in present)
    return f"{opening}\n\n{body}" if opening else body


def _columns(splits: dict[str, RawSplit]) -> list[str]:
    """Every field name in first-seen order over all rows of all splits."""
    seen: dict[str, None] = {}
    for part in splits.values():
        for _, record in part.rows:
            if isinstance(record, dict):
                seen.update(dict.fromkeys(record))
    return list(seen)


def _text_fields(splits: dict[str, RawSplit], label_field: str) -> list[str]:
    """The fields holding text in every row that has them (see the module), in column order."""
    text: dict[str, bool] = {}
    for part in splits.values():
        for _, record in part.rows:
            if not isinstance(record, dict):
                continue
            for name, value in record.items():
                if value is None:
                    continue
                text[name] = text.get(name, True) and isinstance(value, str)
    return [name for name, is_text in text.items()
            if is_text and name != label_field and not name.startswith(f"{label_field}_")
            and not _IDENTIFIER.fullmatch(name)]


def _check_named(splits: dict[str, RawSplit], fields: list[str], source: str) -> None:
    columns = _columns(splits)
    missing = [name for name in fields if name not in columns]
    if missing:
        raise DataError(f"{source}: text field {', '.join(repr(m) for m in missing)} is in no row "
                        f"(fields: {', '.join(columns) or 'none'})")
