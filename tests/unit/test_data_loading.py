"""Data sources and splits: every file type, folders, save_to_disk, hub checks, broken files."""

from __future__ import annotations

import time

import pytest

from fnapi.data import load_data, read_conversations, read_rows, split_validation
from fnapi.data.formats import Conversation
from fnapi.errors import DataError, OfflineError
from fnapi.recipe import DataSection
from tests.unit._data_helpers import (
    ALPACA,
    DOLLY,
    MESSAGES,
    QUESTION_ANSWER,
    SHAREGPT,
    write_delimited,
    write_json,
    write_jsonl,
    write_parquet,
)


def _rows(n: int) -> list[dict]:
    return [{"prompt": f"Question number {i}?", "completion": f"Answer {i}."} for i in range(n)]


def test_json_list(tmp_path):
    conversations, report = read_conversations(str(write_json(tmp_path / "d.json", DOLLY)))
    assert report.format == "dolly" and len(conversations) == 2
    assert conversations[0].messages[0]["content"].endswith("The bridge opened to traffic in 1932.")


def test_json_with_splits(tmp_path):
    path = write_json(tmp_path / "s.json", {"train": _rows(5), "validation": _rows(2), "test": _rows(3)})
    rows = read_rows(str(path))
    assert set(rows) == {"train", "validation", "test"}
    test, report = read_conversations(str(path), split="test")
    assert len(test) == 3 and report.splits["validation"]["rows_kept"] == 2


def test_json_split_aliases_and_wrapper_key(tmp_path):
    path = write_json(tmp_path / "dev.json", {"train": _rows(3), "dev": _rows(1)})
    assert set(read_rows(str(path))) == {"train", "validation"}
    wrapped = write_json(tmp_path / "wrapped.json", {"version": 2, "data": _rows(4)})
    conversations, _ = read_conversations(str(wrapped))
    assert len(conversations) == 4


def test_json_that_is_really_jsonl_is_read(tmp_path):
    path = write_jsonl(tmp_path / "lines.json", ALPACA)
    conversations, report = read_conversations(str(path))
    assert report.format == "alpaca" and len(conversations) == 3


def test_json_that_is_really_csv_is_an_error(tmp_path):
    path = write_delimited(tmp_path / "data.json", ALPACA)
    with pytest.raises(DataError) as excinfo:
        read_conversations(str(path))
    assert "data.json is not valid JSON" in excinfo.value.message and "line 1" in excinfo.value.message
    assert "CSV" in excinfo.value.hint


def test_csv_that_is_really_json_is_an_error(tmp_path):
    path = write_json(tmp_path / "data.csv", ALPACA)
    with pytest.raises(DataError, match="data.csv is not CSV"):
        read_conversations(str(path))


def test_jsonl_that_is_really_csv_is_an_error(tmp_path):
    path = write_delimited(tmp_path / "data.jsonl", ALPACA)
    with pytest.raises(DataError, match=r"data.jsonl is not JSON Lines: line 1"):
        read_conversations(str(path))


def test_csv_and_tsv(tmp_path):
    csv_rows, csv_report = read_conversations(str(write_delimited(tmp_path / "qa.csv", QUESTION_ANSWER)))
    tsv_rows, tsv_report = read_conversations(str(write_delimited(tmp_path / "qa.tsv", QUESTION_ANSWER, "\t")))
    assert csv_report.format == tsv_report.format == "question_answer"
    assert csv_rows[0].messages == tsv_rows[0].messages
    assert csv_rows[0].messages[1]["content"] == "100 degrees Celsius"


def test_tsv_named_csv_gets_a_rename_hint(tmp_path):
    path = write_delimited(tmp_path / "tabs.csv", QUESTION_ANSWER, "\t")
    with pytest.raises(DataError) as excinfo:
        read_conversations(str(path))
    assert "tabs.csv" in excinfo.value.message and ".tsv" in excinfo.value.hint


@pytest.mark.parametrize("delimiter", [";", "|"])
def test_csv_with_semicolons_or_pipes_is_read_with_the_delimiter_it_uses(tmp_path, delimiter):
    path = write_delimited(tmp_path / "excel.csv", QUESTION_ANSWER, delimiter)
    rows, report = read_conversations(str(path))
    plain, _ = read_conversations(str(write_delimited(tmp_path / "plain.csv", QUESTION_ANSWER, ",")))
    assert report.format == "question_answer" and len(rows) == len(QUESTION_ANSWER)
    assert [r.messages for r in rows] == [r.messages for r in plain]


def test_one_column_csv_with_semicolons_in_its_text_stays_one_column(tmp_path):
    path = tmp_path / "notes.csv"
    path.write_text("text\nfirst; then more\nsecond; and so on\n", encoding="utf-8")
    rows, report = read_conversations(str(path))
    assert report.columns == ["text"] and [r.text for r in rows] == ["first; then more", "second; and so on"]


def test_a_folder_without_data_files_is_refused_and_readme_is_not_data(tmp_path):
    folder = tmp_path / "dataset"
    folder.mkdir()
    (folder / "README.txt").write_text("About this dataset.\n\nIt has answers.\n", encoding="utf-8")
    (folder / "LICENSE").write_text("MIT\n", encoding="utf-8")
    with pytest.raises(DataError, match="holds no data files.*LICENSE, README.txt"):
        read_conversations(str(folder))
    write_jsonl(folder / "train.jsonl", _rows(3))
    rows, _ = read_conversations(str(folder))
    assert len(rows) == 3


def test_the_data_log_counts_the_rows_kept_after_max_samples(tmp_path):
    loaded = load_data(DataSection(path=str(write_jsonl(tmp_path / "t.jsonl", _rows(50))), max_samples=8), seed=0)
    line = loaded.describe()
    assert "50 rows kept" in line and line.endswith("using 8 training and 5 validation rows (max_samples 8)")


def test_csv_row_with_too_many_cells_is_skipped_with_its_number(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text("prompt,completion\nhello,world\nbad,row,extra\nfine,yes\n", encoding="utf-8")
    conversations, report = read_conversations(str(path))
    assert len(conversations) == 2
    assert report.skipped_examples == [{"row": 2, "reason": "row has 3 cells but the header has 2"}]


def test_parquet(tmp_path):
    path = write_parquet(tmp_path / "chat.parquet", SHAREGPT)
    conversations, report = read_conversations(str(path))
    assert report.format == "sharegpt" and len(conversations[0].messages) == 4


def test_text_file_paragraphs(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("First paragraph\nstill first.\n\nSecond one.\n\n\n", encoding="utf-8")
    conversations, report = read_conversations(str(path))
    assert report.format == "text"
    assert [c.text for c in conversations] == ["First paragraph\nstill first.", "Second one."]


def test_split_folder(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", _rows(6))
    write_delimited(tmp_path / "validation.csv", _rows(2))
    write_json(tmp_path / "test.json", _rows(3))
    (tmp_path / "README.md").write_text("not data", encoding="utf-8")
    loaded = load_data(DataSection(path=str(tmp_path)), seed=0)
    assert (len(loaded.train), len(loaded.validation), len(loaded.test)) == (6, 2, 3)
    assert loaded.report.splits["validation"]["rows_kept"] == 2


def test_sharded_split_folder_continues_row_numbers(tmp_path):
    write_parquet(tmp_path / "train-00000-of-00002.parquet", _rows(3))
    write_parquet(tmp_path / "train-00001-of-00002.parquet", _rows(2))
    conversations, report = read_conversations(str(tmp_path))
    assert [c.row for c in conversations] == [1, 2, 3, 4, 5]
    assert "2 files" in report.source


def test_folder_without_split_files_is_an_error(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", _rows(2))
    write_jsonl(tmp_path / "b.jsonl", _rows(2))
    with pytest.raises(DataError, match="has no split files"):
        read_conversations(str(tmp_path))


def test_save_to_disk_folder(tmp_path):
    import datasets

    dataset = datasets.DatasetDict({
        "train": datasets.Dataset.from_list(MESSAGES * 3),
        "test": datasets.Dataset.from_list(MESSAGES),
    })
    dataset.save_to_disk(str(tmp_path / "saved"))
    rows = read_rows(str(tmp_path / "saved"))
    assert set(rows) == {"train", "test"}
    conversations, report = read_conversations(str(tmp_path / "saved"), split="test")
    assert report.format == "messages" and len(conversations) == 2


def test_non_utf8_file_names_the_byte_and_line(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError) as excinfo:
        read_conversations(str(path))
    assert "latin.jsonl is not UTF-8" in excinfo.value.message and "line 2" in excinfo.value.message


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffprompt,completion\nhi,there\n".encode("utf-8"))
    conversations, _ = read_conversations(str(path))
    assert conversations[0].messages[0]["content"] == "hi"


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.json", "empty.csv"])
def test_empty_file_is_an_error(tmp_path, name):
    path = tmp_path / name
    path.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(DataError, match=f"{name} is empty"):
        read_conversations(str(path))


def test_missing_file_is_an_error():
    with pytest.raises(DataError, match="does not exist"):
        read_conversations("no/such/file.jsonl")


def test_unreachable_hub_fails_fast(monkeypatch):
    from fnapi import auth

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(auth, "hub_reachable", lambda timeout=2.0: "huggingface.co:443 not reachable (timed out)")
    started = time.monotonic()
    with pytest.raises(OfflineError, match="not reachable"):
        read_conversations("some-org/some-dataset")
    assert time.monotonic() - started < 2


def test_offline_flag_gives_an_offline_error(monkeypatch):
    from fnapi import auth

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(auth, "hub_reachable", lambda timeout=2.0: pytest.fail("probed the hub while offline"))
    with pytest.raises(OfflineError, match="HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set"):
        read_conversations("some-org/some-dataset")


def test_missing_validation_is_split_off_seeded_and_shuffled(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", _rows(100))
    first = load_data(DataSection(path=str(path), validation_split=0.2), seed=3)
    again = load_data(DataSection(path=str(path), validation_split=0.2), seed=3)
    other = load_data(DataSection(path=str(path), validation_split=0.2), seed=4)
    assert (len(first.train), len(first.validation)) == (80, 20)
    rows = [c.row for c in first.validation]
    assert rows == [c.row for c in again.validation] != [c.row for c in other.validation]
    assert rows != list(range(rows[0], rows[0] + 20))  # shuffled, not a block
    assert not {c.row for c in first.train} & set(rows)


def test_existing_validation_split_is_used(tmp_path):
    path = write_json(tmp_path / "s.json", {"train": _rows(10), "validation": _rows(3)})
    loaded = load_data(DataSection(path=str(path), validation_split=0.5), seed=0)
    assert (len(loaded.train), len(loaded.validation)) == (10, 3)


def test_validation_path_and_no_split(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", _rows(10))
    val = write_jsonl(tmp_path / "held.jsonl", _rows(4))
    loaded = load_data(DataSection(path=str(train), validation_path=str(val)), seed=0)
    assert (len(loaded.train), len(loaded.validation)) == (10, 4)
    none = load_data(DataSection(path=str(train), validation_split=0.0), seed=0)
    assert (len(none.train), none.validation, none.test) == (10, [], None)


def test_max_samples_and_system_prompt(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", _rows(50))
    loaded = load_data(DataSection(path=str(path), max_samples=8, system_prompt="Answer briefly."), seed=0)
    assert len(loaded.train) == 8 and len(loaded.validation) == 5
    assert all(c.system == "Answer briefly." for c in loaded.train)


def test_builtin_data_loads_through_load_data():
    loaded = load_data(DataSection(path="builtin:skill", max_samples=50), seed=0)
    assert loaded.name == "skill" and len(loaded.train) == 50 and len(loaded.test) == 50
    with pytest.raises(DataError, match="unknown built-in dataset builtin:nope"):
        read_conversations("builtin:nope")


def test_split_validation_keeps_at_least_one_row_each_side():
    rows = [Conversation(text=str(i), row=i) for i in range(3)]
    train, validation = split_validation(rows, 0.01, seed=0)
    assert (len(train), len(validation)) == (2, 1)
    train, validation = split_validation(rows, 0.99, seed=0)
    assert (len(train), len(validation)) == (1, 2)


def test_unknown_split_lists_the_available_ones(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", _rows(3))
    with pytest.raises(DataError, match="has no 'test' split; it has train"):
        read_conversations(str(path), split="test")
