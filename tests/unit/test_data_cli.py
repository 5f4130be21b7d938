"""``fnapi data inspect``: JSON on every format, plain text with trained spans, exit 2 on bad data."""

from __future__ import annotations

import json

import pytest

from fnapi.cli import main
from tests.unit._data_helpers import (
    ALL_FORMATS,
    MESSAGES,
    write_delimited,
    write_json,
    write_jsonl,
    write_parquet,
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A folder holding only the tiny tokenizer (with pad == eos), as --model."""
    from tests.unit._data_helpers import tiny_pad_is_eos

    folder = tmp_path_factory.mktemp("tiny_tok")
    tiny_pad_is_eos().save_pretrained(folder)
    return str(folder)


@pytest.fixture(autouse=True)
def _own_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("FNAPI_CACHE", str(tmp_path / "cache"))


def _inspect_json(capsys, *args) -> dict:
    code = main(["data", "inspect", *args, "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


WRITERS = {
    "jsonl": lambda p, rows: write_jsonl(p.with_suffix(".jsonl"), rows),
    "json": lambda p, rows: write_json(p.with_suffix(".json"), rows),
    "csv": lambda p, rows: write_delimited(p.with_suffix(".csv"), rows),
    "tsv": lambda p, rows: write_delimited(p.with_suffix(".tsv"), rows, "\t"),
    "parquet": lambda p, rows: write_parquet(p.with_suffix(".parquet"), rows),
}


@pytest.mark.parametrize("name", sorted(ALL_FORMATS))
def test_inspect_json_reports_every_format(tmp_path, capsys, model_dir, name):
    path = write_jsonl(tmp_path / f"{name}.jsonl", ALL_FORMATS[name])
    data = _inspect_json(capsys, str(path), "--model", model_dir)
    assert data["format"] == name
    assert data["rows_kept"] == len(ALL_FORMATS[name]) and data["rows_skipped"] == 0
    assert data["skipped_examples"] == [] and data["fields"]
    assert len(data["examples"]) == min(3, len(ALL_FORMATS[name]))
    example = data["examples"][0]
    assert example["row"] == 1 and "⟦" in example["text"] and example["trained_tokens"] > 0
    assert "".join(s["text"] for s in example["segments"]) == example["text"].replace("⟦", "").replace("⟧", "")


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_inspect_json_reads_every_file_type(tmp_path, capsys, model_dir, kind):
    path = WRITERS[kind](tmp_path / "chat", MESSAGES)
    data = _inspect_json(capsys, str(path), "--model", model_dir)
    assert data["format"] == "messages" and data["rows_kept"] == 2
    # Both assistant turns of the first conversation are trained, with their end-of-turn token.
    trained = [s["text"] for s in data["examples"][0]["segments"] if s["trained"]]
    assert trained == ["Hello.<|im_end|>", "4<|im_end|>"]


def test_inspect_marks_the_trained_span_in_plain_text(tmp_path, capsys, model_dir):
    path = write_jsonl(tmp_path / "pc.jsonl", ALL_FORMATS["prompt_completion"])
    assert main(["data", "inspect", str(path), "--model", model_dir, "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert "format      prompt_completion" in out
    assert "<|im_start|>user\nThe opposite of up is<|im_end|>\n<|im_start|>assistant\n⟦down<|im_end|>⟧" in out


def test_inspect_lists_skipped_rows(tmp_path, capsys, model_dir):
    rows = [{"question": "Q1?", "answer": "A1"}, {"question": "Q2?", "answer": ""}, {"question": "Q3?"}]
    data = _inspect_json(capsys, str(write_jsonl(tmp_path / "qa.jsonl", rows)), "--model", model_dir)
    assert data["rows_kept"] == 1 and data["rows_skipped"] == 2
    assert data["skipped_examples"] == [{"row": 2, "reason": "field 'answer' is empty"},
                                        {"row": 3, "reason": "missing field 'answer'"}]


def test_inspect_overrides_format_fields_and_template(tmp_path, capsys, model_dir):
    rows = [{"q": "Capital of Chile?", "a": "Santiago", "instruction": "x", "output": "y"}]
    path = write_jsonl(tmp_path / "o.jsonl", rows)
    data = _inspect_json(capsys, str(path), "--model", model_dir, "--format", "alpaca",
                         "--fields", "q=user,a=assistant", "--template", "alpaca")
    assert data["fields"] == {"q": "user", "a": "assistant"} and data["template"] == "alpaca"
    assert "### Instruction:\nCapital of Chile?" in data["examples"][0]["text"]
    assert "⟦Santiago<|im_end|>⟧" in data["examples"][0]["text"]


def test_inspect_applies_a_system_prompt(tmp_path, capsys, model_dir):
    path = write_jsonl(tmp_path / "pc.jsonl", ALL_FORMATS["prompt_completion"])
    data = _inspect_json(capsys, str(path), "--model", model_dir, "--system-prompt", "Finish the sentence.")
    assert data["examples"][0]["text"].startswith("<|im_start|>system\nFinish the sentence.<|im_end|>")


def test_inspect_reports_truncation(tmp_path, capsys, model_dir):
    rows = [{"prompt": "word " * 40, "completion": "end"}, {"prompt": "short", "completion": "ok"}]
    data = _inspect_json(capsys, str(write_jsonl(tmp_path / "long.jsonl", rows)), "--model", model_dir,
                         "--max-length", "30")
    assert data["tokens"]["truncated"] == 1 and data["tokens"]["dropped"] == 1
    assert data["examples"][0]["truncated"] and data["examples"][0]["tokens"] == 30


def test_inspect_builtin_skill(capsys, model_dir):
    data = _inspect_json(capsys, "builtin:skill", "--model", model_dir, "--split", "test", "-n", "1")
    assert data["format"] == "builtin" and data["rows_kept"] == 200
    assert "Translate into Zorbic" in data["examples"][0]["text"]


@pytest.mark.parametrize("content, name, expected", [
    ('{"prompt": "a", "completion": ""}\n{"prompt": "b", "completion": ""}\n', "blank.jsonl",
     ["blank.jsonl", "row 1", "'completion'"]),
    ("prompt,completion\nhello,world\n", "actually_csv.json", ["actually_csv.json is not valid JSON", "line 1"]),
    (b"\xff\xfe bad bytes", "bad.jsonl", ["bad.jsonl is not UTF-8", "line 1"]),
    ("", "nothing.csv", ["nothing.csv is empty"]),
    ('{"id": 1, "label": "x"}\n', "odd.jsonl", ["odd.jsonl: unknown data layout", "'id'", "'label'"]),
])
def test_inspect_bad_data_exits_2_naming_the_problem(tmp_path, capsys, model_dir, content, name, expected):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    assert main(["data", "inspect", str(path), "--model", model_dir, "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    for piece in expected:
        assert piece in captured.err


def test_inspect_bad_fields_option_exits_2(tmp_path, capsys, model_dir):
    path = write_jsonl(tmp_path / "a.jsonl", ALL_FORMATS["alpaca"])
    assert main(["data", "inspect", str(path), "--model", model_dir, "--fields", "just_a_name"]) == 2
    assert "not SOURCE=ROLE" in capsys.readouterr().err
