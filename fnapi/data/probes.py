"""Evaluation data: multiple-choice probe sets and held-out text, built in or from the user's files.

Forgetting is measured on probes (questions the base model answers, scored by log-likelihood) and
on held-out text (NLL per token and KL to the base model). Both default to the built-ins and both
accept local files, so a user can measure forgetting on the benchmark files they already have.

Probe files come in the layouts real benchmark files use, detected per row from its keys:

- generic: ``{"question", "choices": [...], "answer"}``, the answer an index, a letter or the text;
- ARC: ``{"question": {"stem", "choices": [{"text", "label"}]}, "answerKey"}``;
- HellaSwag: ``{"ctx", "endings": [...], "label"}``;
- MMLU's original header-less CSV: ``question, A, B, C, D, letter``.

Files are ``.jsonl``, ``.json``, ``.csv`` or ``.parquet``. A row that cannot be read is named by
file and line; by default it is skipped and counted (``bad_rows="skip"``), or the whole file is
refused (``bad_rows="error"``). Nothing here crashes on a bad row.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fnapi.data.builtin import ProbeItem, probe_items, text_paragraphs
from fnapi.errors import DataError

#: Suffixes a probe or text file may have.
PROBE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
TEXT_SUFFIXES = (".txt", ".jsonl", ".json", ".csv", ".parquet")
#: Built-in text paragraphs held out for evaluation: written with another seed, and none of them is
#: among the ``text_paragraphs()`` templates capture on, so forgetting is never measured on capture text.
HELD_OUT_TEXT = 200
_HELD_OUT_SEED = 4321

Layout = Literal["builtin", "generic", "arc", "hellaswag", "mmlu"]
LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class BadRow:
    """A row left out of a probe set: where it is (``line`` in the file, or row for CSV/Parquet) and why."""

    line: int
    reason: str


@dataclass(frozen=True)
class ProbeSet:
    """The probe items read from ``source``, the layout they were in, and the rows left out."""

    source: str
    items: tuple[ProbeItem, ...]
    layout: Layout
    skipped: tuple[BadRow, ...] = field(default=())

    def describe(self) -> str:
        text = f"{self.source}: {len(self.items)} probe items ({self.layout} layout)"
        if self.skipped:
            first = self.skipped[0]
            text += (f"; skipped {len(self.skipped)} bad row(s), the first at line {first.line}: "
                     f"{first.reason}")
        return text


def is_builtin(source: str) -> bool:
    return source.startswith("builtin:")


def load_probes(source: str, *, limit: int | None = None,
                bad_rows: Literal["skip", "error"] = "skip") -> ProbeSet:
    """The probe set at ``source``: ``builtin:probes`` or a local file in one of the layouts above.

    ``limit`` keeps the first ``limit`` items (the built-in set is ordered so that any prefix mixes
    its categories). Raises :class:`DataError` naming the file (and line, with ``bad_rows="error"``)
    when the file is missing, unreadable, of an unknown layout, or has no usable row.
    """
    if limit is not None and limit < 1:
        raise DataError(f"{source}: the probe limit must be at least 1, got {limit}")
    if is_builtin(source):
        if source != "builtin:probes":
            raise DataError(f"unknown built-in probe set {source!r}; the built-in one is builtin:probes")
        return ProbeSet(source, tuple(probe_items(limit)), "builtin")
    path = local_file(source, PROBE_SUFFIXES, "probe")
    rows = read_rows(path)
    items: list[ProbeItem] = []
    skipped: list[BadRow] = []
    layouts: set[str] = set()
    for line, row in rows:
        try:
            item, layout = _probe_from_row(row)
        except _BadRow as exc:
            if isinstance(exc, _AnswerNotAChoice):
                raise DataError(f"{path}:{line}: {exc}", "Every answer must be one of its row's choices "
                                "(an index from 0, a letter or the choice's text).") from None
            if bad_rows == "error":
                raise DataError(f"{path}:{line}: {exc}",
                                "Fix the row, or let bad rows be skipped (bad_rows='skip').") from None
            skipped.append(BadRow(line, str(exc)))
            continue
        layouts.add(layout)
        items.append(item)
        if limit is not None and len(items) >= limit:
            break
    if not items:
        first = f"; line {skipped[0].line}: {skipped[0].reason}" if skipped else ""
        raise DataError(f"{path} has no usable probe item{first}",
                        "Rows need {question, choices, answer}, the ARC, HellaSwag or MMLU layout.")
    layout = layouts.pop() if len(layouts) == 1 else "generic"
    return ProbeSet(source, tuple(items), layout, tuple(skipped))  # type: ignore[arg-type]


def load_texts(source: str, *, limit: int | None = None) -> list[str]:
    """Held-out text at ``source``: ``builtin:text`` (paragraphs never used for capture) or a local
    ``.txt`` file (paragraphs split by blank lines) or ``.jsonl``/``.json``/``.csv``/``.parquet``
    with a ``text`` field. ``limit`` keeps the first ``limit`` paragraphs."""
    if limit is not None and limit < 1:
        raise DataError(f"{source}: the text limit must be at least 1, got {limit}")
    if is_builtin(source):
        if source != "builtin:text":
            raise DataError(f"unknown built-in text {source!r}; the built-in one is builtin:text")
        texts = _held_out_paragraphs()
        return texts[:limit] if limit is not None else texts
    path = local_file(source, TEXT_SUFFIXES, "text")
    texts = []
    for _line, row in read_rows(path):
        value = row.get("text") if isinstance(row, dict) else None
        if isinstance(value, str) and value.strip():
            texts.append(value.strip())
        if limit is not None and len(texts) >= limit:
            break
    if not texts:
        raise DataError(f"{path} has no text", "Give a .txt file of paragraphs, or rows with a 'text' field.")
    return texts


def _held_out_paragraphs() -> list[str]:
    seen = set(text_paragraphs())
    texts: list[str] = []
    for text in text_paragraphs(4 * HELD_OUT_TEXT, seed=_HELD_OUT_SEED):
        if text not in seen:
            seen.add(text)
            texts.append(text)
    return texts[:HELD_OUT_TEXT]


# ---- reading ---------------------------------------------------------------------------------

class _BadRow(ValueError):
    """Why one row is not a probe item."""


class _AnswerNotAChoice(_BadRow):
    """A probe row whose answer names none of its choices: the file itself is wrong (a shifted
    index, an answer with a typo), so it is refused, never skipped: skipping would quietly score a
    different set than the author wrote."""


def local_file(source: str, suffixes: tuple[str, ...], kind: str) -> Path:
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"{kind} file {source} does not exist",
                        f"Give a local {'/'.join(suffixes)} file, or the built-in set.")
    if path.is_dir():
        raise DataError(f"{source} is a folder; give one {kind} file ({'/'.join(suffixes)})")
    if path.suffix.lower() not in suffixes:
        raise DataError(f"{source}: a {kind} file must be {', '.join(suffixes)}, not {path.suffix or 'without a suffix'}")
    return path


def read_rows(path: Path) -> list[tuple[int, Any]]:
    """Rows of ``path`` numbered by file line (JSON Lines, CSV) or position (JSON, Parquet).

    Unparseable rows come back as :class:`~fnapi.data.formats.UnreadableRow` so they are counted.
    """
    from fnapi.data import loading

    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path, loading._read_text(path))
    if suffix == ".txt":
        return loading._read_paragraphs(path)
    if suffix == ".jsonl":
        return loading._read_jsonl(path, loading._read_text(path))
    if suffix == ".parquet":
        return loading._read_parquet(path)
    splits = loading._read_json(path)
    # A {"train": [...], "test": [...]} file: evaluation data is the test split when there is one.
    for name in ("test", "validation", "train"):
        if name in splits:
            return splits[name].rows
    return next(iter(splits.values())).rows


def _read_csv(path: Path, text: str) -> list[tuple[int, Any]]:
    """CSV rows keyed by the header, or MMLU's header-less ``question,A,B,C,D,letter`` rows."""
    from fnapi.data.formats import UnreadableRow

    csv.field_size_limit(1 << 30)
    reader = csv.reader(io.StringIO(text))
    try:
        records = [(reader.line_num, record) for record in reader if record]
    except csv.Error as exc:
        raise DataError(f"{path}: CSV error at line {reader.line_num}: {exc}") from None
    if not records:
        raise DataError(f"{path} is empty")
    if _is_mmlu_row(records[0][1]):
        return [(line, {"_mmlu": record}) for line, record in records]
    header = [name.strip() for name in records[0][1]]
    rows: list[tuple[int, Any]] = []
    for line, record in records[1:]:
        if len(record) != len(header):
            rows.append((line, UnreadableRow(f"row has {len(record)} cells but the header has {len(header)}")))
        else:
            rows.append((line, dict(zip(header, record))))
    return rows


def _is_mmlu_row(record: list[str]) -> bool:
    return len(record) >= 4 and record[-1].strip().upper() in LETTERS[: len(record) - 2] and \
        record[0].strip().lower() not in ("question", "prompt", "ctx")


# ---- layouts ---------------------------------------------------------------------------------

def _probe_from_row(row: Any) -> tuple[ProbeItem, str]:
    from fnapi.data.formats import UnreadableRow

    if isinstance(row, UnreadableRow):
        raise _BadRow(str(row))
    if not isinstance(row, dict):
        raise _BadRow(f"a row must be an object, not {type(row).__name__}")
    if "_mmlu" in row:
        record = [cell.strip() for cell in row["_mmlu"]]
        question, choices, letter = record[0], record[1:-1], record[-1]
        return _item(question, choices, letter, labels=list(LETTERS[: len(choices)]),
                     category=row.get("subject", "mmlu")), "mmlu"
    question = row.get("question")
    if isinstance(question, dict) and "stem" in question:  # ARC
        raw = question.get("choices")
        if not isinstance(raw, list) or not all(isinstance(c, dict) and "text" in c for c in raw):
            raise _BadRow("ARC question.choices must be a list of {text, label}")
        labels = [str(c.get("label", LETTERS[i])) for i, c in enumerate(raw)]
        return _item(question["stem"], [c["text"] for c in raw], row.get("answerKey"), labels=labels,
                     category="arc"), "arc"
    if "ctx" in row and "endings" in row:  # HellaSwag: the right ending continues the context
        return _item(row["ctx"], row["endings"], row.get("label"), category=str(row.get("activity_label") or
                                                                                  "hellaswag")), "hellaswag"
    if question is not None or "choices" in row:
        return _item(question, row.get("choices"), row.get("answer"),
                     category=str(row.get("category") or row.get("subject") or row.get("subset") or "file")), "generic"
    keys = ", ".join(sorted(map(str, row))[:6]) or "none"
    raise _BadRow(f"not a probe row (keys: {keys}); expected question/choices/answer, ARC, HellaSwag or MMLU")


def _item(question: Any, choices: Any, answer: Any, *, labels: list[str] | None = None,
          category: str = "file") -> ProbeItem:
    if not isinstance(question, str) or not question.strip():
        raise _BadRow("the question is missing or empty")
    if hasattr(choices, "tolist"):  # numpy arrays from Parquet
        choices = choices.tolist()
    if not isinstance(choices, list) or len(choices) < 2:
        raise _BadRow("choices must be a list of at least two answers")
    texts = [str(c).strip() for c in choices]
    if any(not t for t in texts):
        raise _BadRow("a choice is empty")
    if len(set(texts)) != len(texts):
        raise _BadRow("two choices are the same")
    index = _answer_index(answer, texts, labels or list(LETTERS[: len(texts)]))
    return ProbeItem(question.strip(), tuple(texts), index, category)


def _answer_index(answer: Any, choices: list[str], labels: list[str]) -> int:
    """The answer as an index into ``choices``: given as an index, a label/letter, or the text."""
    if isinstance(answer, bool) or answer is None:
        raise _BadRow("the answer is missing")
    if hasattr(answer, "item"):  # numpy scalars from Parquet
        answer = answer.item()
    if isinstance(answer, int):
        if 0 <= answer < len(choices):
            return answer
        raise _AnswerNotAChoice(f"answer index {answer} is out of range for {len(choices)} choices")
    if isinstance(answer, float) and answer.is_integer():
        return _answer_index(int(answer), choices, labels)
    if not isinstance(answer, str):
        raise _BadRow(f"the answer must be an index, a letter or the text, not {type(answer).__name__}")
    text = answer.strip()
    if text in labels:
        return labels.index(text)
    if len(text) == 1 and text.upper() in labels:
        return labels.index(text.upper())
    if text in choices:  # before digits: a numeric answer among numeric choices is the text
        return choices.index(text)
    if text.isdigit():
        return _answer_index(int(text), choices, labels)
    raise _AnswerNotAChoice(f"the answer {answer!r} is neither an index, a choice label nor one of the choices")
