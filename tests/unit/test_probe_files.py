"""Probe sets and held-out text from the user's files: every layout reads the same items."""

from __future__ import annotations

import csv
import json

import pytest

from fnapi.data.builtin import text_paragraphs
from fnapi.data.probes import HELD_OUT_TEXT, load_probes, load_texts
from fnapi.errors import DataError
from fnapi.evaluation import choice_logprobs
from fnapi.models.tiny import tiny_model, tiny_tokenizer

QUESTIONS = [
    ("What is the capital of France?", ["Berlin", "Paris", "Rome", "Madrid"], 1),
    ("How many legs does a spider have?", ["8", "6", "4", "2"], 0),
    ("Which planet is largest?", ["Mars", "Venus", "Earth", "Jupiter"], 3),
    ("What colour is grass?", ["red", "blue", "green", "white"], 2),
]


def _generic(path, answer_as="index"):
    with path.open("w") as f:
        for q, choices, answer in QUESTIONS:
            value = {"index": answer, "letter": "ABCD"[answer], "text": choices[answer]}[answer_as]
            f.write(json.dumps({"question": q, "choices": choices, "answer": value}) + "\n")
    return path


def _arc(path):
    rows = [{"id": str(i), "question": {"stem": q, "choices": [{"text": c, "label": label}
                                                               for c, label in zip(choices, "ABCD")]},
             "answerKey": "ABCD"[answer]} for i, (q, choices, answer) in enumerate(QUESTIONS)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _mmlu(path):
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        for q, choices, answer in QUESTIONS:
            writer.writerow([q, *choices, "ABCD"[answer]])
    return path


def _hellaswag(path):
    rows = [{"ctx": q, "endings": choices, "label": str(answer), "activity_label": "facts"}
            for q, choices, answer in QUESTIONS]
    path.write_text(json.dumps(rows))
    return path


def _key(items):
    return [(item.question, item.choices, item.answer) for item in items]


def test_every_layout_reads_the_same_items(tmp_path):
    expected = [(q, tuple(c), a) for q, c, a in QUESTIONS]
    sets = {
        "generic-index": load_probes(str(_generic(tmp_path / "a.jsonl"))),
        "generic-letter": load_probes(str(_generic(tmp_path / "b.jsonl", "letter"))),
        "generic-text": load_probes(str(_generic(tmp_path / "c.jsonl", "text"))),
        "arc": load_probes(str(_arc(tmp_path / "arc.jsonl"))),
        "mmlu": load_probes(str(_mmlu(tmp_path / "mmlu.csv"))),
        "hellaswag": load_probes(str(_hellaswag(tmp_path / "hs.json"))),
    }
    for name, probe_set in sets.items():
        assert _key(probe_set.items) == expected, name
        assert not probe_set.skipped
    assert [sets[k].layout for k in ("generic-index", "arc", "mmlu", "hellaswag")] == \
        ["generic", "arc", "mmlu", "hellaswag"]


def test_the_same_items_in_three_layouts_score_identically(tmp_path):
    model, tokenizer = tiny_model("llama", seed=0), tiny_tokenizer()
    scores = [choice_logprobs(model, tokenizer, load_probes(str(path)).items, chat_template="chatml")
              for path in (_generic(tmp_path / "g.jsonl"), _arc(tmp_path / "arc.jsonl"), _mmlu(tmp_path / "m.csv"))]
    assert scores[0] == scores[1] == scores[2]
    assert len(scores[0]) == 4 and all(len(row) == 4 for row in scores[0])


def test_parquet_and_headed_csv_are_read(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")  # a core dependency; importorskip only names it
    import pyarrow.parquet as pq

    table = pyarrow.table({"question": [q for q, _, _ in QUESTIONS], "choices": [c for _, c, _ in QUESTIONS],
                           "answer": [a for _, _, a in QUESTIONS]})
    pq.write_table(table, tmp_path / "p.parquet")
    assert _key(load_probes(str(tmp_path / "p.parquet")).items) == [(q, tuple(c), a) for q, c, a in QUESTIONS]
    with (tmp_path / "h.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["question", "choices", "answer"])
        writer.writerow(["Which?", "x", "0"])  # choices is not a list in a flat CSV: a bad row
    with pytest.raises(DataError, match="h.csv has no usable probe item; line 2: choices must be a list"):
        load_probes(str(tmp_path / "h.csv"))


def test_bad_rows_are_named_and_skipped_or_refused(tmp_path):
    path = _generic(tmp_path / "probes.jsonl")
    with path.open("a") as f:
        f.write("{not json\n")
        f.write(json.dumps({"question": "Q?", "choices": ["a", "a"], "answer": 0}) + "\n")
        f.write(json.dumps({"prompt": "nothing we know"}) + "\n")
    probe_set = load_probes(str(path))
    assert len(probe_set.items) == 4
    assert [bad.line for bad in probe_set.skipped] == [5, 6, 7]
    assert "the same" in probe_set.skipped[1].reason
    assert "skipped 3 bad row(s), the first at line 5" in probe_set.describe()
    with pytest.raises(DataError, match=r"probes.jsonl:5: line 5 is not valid JSON"):
        load_probes(str(path), bad_rows="error")


@pytest.mark.parametrize("answer", [5, "Lyon"])
def test_an_answer_that_is_not_a_choice_is_refused_naming_the_line(tmp_path, answer):
    # skipping it would score a set other than the one the file's author wrote
    path = _generic(tmp_path / "probes.jsonl")
    with path.open("a") as f:
        f.write(json.dumps({"question": "Capital of France?", "choices": ["Paris", "Rome"], "answer": answer}) + "\n")
    with pytest.raises(DataError, match=r"probes.jsonl:5: .*(out of range|neither an index)"):
        load_probes(str(path))


def test_limits_and_missing_files(tmp_path):
    assert len(load_probes(str(_generic(tmp_path / "g.jsonl")), limit=2).items) == 2
    assert len(load_probes("builtin:probes", limit=30).items) == 30
    with pytest.raises(DataError, match="does not exist"):
        load_probes(str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match="must be .jsonl, .json, .csv, .parquet"):
        (tmp_path / "x.xml").write_text("<a/>")
        load_probes(str(tmp_path / "x.xml"))
    with pytest.raises(DataError, match="unknown built-in probe set"):
        load_probes("builtin:mmlu")


def test_texts_from_the_builtin_are_held_out_from_capture_and_files_are_read(tmp_path):
    held_out = load_texts("builtin:text")
    assert len(held_out) == HELD_OUT_TEXT
    assert not set(held_out) & set(text_paragraphs())  # capture uses the first paragraphs
    assert load_texts("builtin:text", limit=5) == held_out[:5]
    (tmp_path / "t.txt").write_text("First paragraph here.\n\nSecond one.\n")
    assert load_texts(str(tmp_path / "t.txt")) == ["First paragraph here.", "Second one."]
    (tmp_path / "t.jsonl").write_text(json.dumps({"text": "A line."}) + "\n" + json.dumps({"x": 1}) + "\n")
    assert load_texts(str(tmp_path / "t.jsonl")) == ["A line."]
    with pytest.raises(DataError, match="has no text"):
        (tmp_path / "e.jsonl").write_text(json.dumps({"x": 1}) + "\n")
        load_texts(str(tmp_path / "e.jsonl"))
