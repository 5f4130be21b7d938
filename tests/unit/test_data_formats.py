"""Format detection and normalisation: every layout, overrides, bad rows with reasons and row numbers."""

from __future__ import annotations

import json

import pytest

from fnapi.data import detect_format, normalise, read_conversations
from fnapi.errors import DataError
from tests.unit._data_helpers import ALL_FORMATS, ALPACA, MESSAGES, SHAREGPT, write_delimited, write_jsonl

EXPECTED_FIELDS = {
    "alpaca": {"instruction": "user", "input": "context", "output": "assistant"},
    "dolly": {"instruction": "user", "context": "context", "response": "assistant"},
    "prompt_completion": {"prompt": "user", "completion": "assistant"},
    "prompt_response": {"prompt": "user", "response": "assistant"},
    "question_answer": {"question": "user", "answer": "assistant"},
    "input_output": {"input": "user", "output": "assistant"},
    "messages": {"messages": "messages"},
    "sharegpt": {"conversations": "conversations"},
    "text": {"text": "text"},
}


@pytest.mark.parametrize("name", sorted(ALL_FORMATS))
def test_every_format_is_detected_from_a_jsonl_file(tmp_path, name):
    path = write_jsonl(tmp_path / f"{name}.jsonl", ALL_FORMATS[name])
    conversations, report = read_conversations(str(path))
    assert report.format == name
    assert report.fields == EXPECTED_FIELDS[name]
    assert report.confidence == 1.0
    assert report.rows_kept == len(ALL_FORMATS[name]) and report.rows_skipped == 0
    assert [c.row for c in conversations] == list(range(1, len(conversations) + 1))


def test_alpaca_input_is_appended_to_the_instruction(tmp_path):
    conversations, _ = read_conversations(str(write_jsonl(tmp_path / "a.jsonl", ALPACA)))
    assert conversations[0].messages == [{"role": "user", "content": "Name a fruit that is yellow."},
                                         {"role": "assistant", "content": "A banana is yellow."}]
    assert conversations[1].messages[0]["content"] == "Add the two numbers.\n\n12 and 30"


def test_messages_keep_every_turn_and_the_system_prompt(tmp_path):
    conversations, _ = read_conversations(str(write_jsonl(tmp_path / "chat.jsonl", MESSAGES)))
    first = conversations[0]
    assert first.system == "You answer briefly."
    assert [m["role"] for m in first.messages] == ["user", "assistant", "user", "assistant"]
    assert first.messages[-1]["content"] == "4"


def test_sharegpt_roles_are_mapped_and_multi_turn_kept(tmp_path):
    conversations, _ = read_conversations(str(write_jsonl(tmp_path / "sg.jsonl", SHAREGPT)))
    assert conversations[0].messages == [
        {"role": "user", "content": "Tell me a colour."}, {"role": "assistant", "content": "Green."},
        {"role": "user", "content": "Another one?"}, {"role": "assistant", "content": "Purple."}]
    assert conversations[1].system == "Be kind."


def test_plain_text_rows_become_text_conversations(tmp_path):
    conversations, report = read_conversations(str(write_jsonl(tmp_path / "t.jsonl", ALL_FORMATS["text"])))
    assert report.format == "text"
    assert conversations[0].is_text and conversations[0].messages == []


def test_extra_columns_are_ignored_and_listed(tmp_path):
    rows = [{**r, "id": i, "lang": "en", "score": 0.5} for i, r in enumerate(ALL_FORMATS["prompt_response"])]
    _, report = read_conversations(str(write_jsonl(tmp_path / "x.jsonl", rows)))
    assert report.format == "prompt_response"
    assert {"id", "lang", "score"} <= set(report.columns)


def test_columns_match_case_insensitively():
    rows = [(1, {"Instruction": "Say hi.", "Output": "Hi."})]
    report = detect_format(rows, source="caps.csv")
    assert report.format == "alpaca" and report.fields == {"Instruction": "user", "Output": "assistant"}


def test_mixed_bad_rows_are_skipped_with_reasons_and_row_numbers(tmp_path):
    rows = [
        {"instruction": "Good row.", "output": "Fine."},                 # 1
        {"instruction": "No answer.", "output": ""},                     # 2: empty
        {"instruction": "Missing answer."},                              # 3: missing
        {"instruction": "Wrong type.", "output": ["a", "list"]},         # 4: list
        {"instruction": "Another good row.", "output": "Also fine."},    # 5
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n", encoding="utf-8")  # line 6 broken
    conversations, report = read_conversations(str(path))
    assert report.format == "alpaca"
    assert report.rows_total == 6 and report.rows_kept == 2 and report.rows_skipped == 4
    assert [c.row for c in conversations] == [1, 5]
    reasons = {e["row"]: e["reason"] for e in report.skipped_examples}
    assert reasons[2] == "field 'output' is empty"
    assert reasons[3] == "missing field 'output'"
    assert "list, expected text" in reasons[4]
    assert "line 6 is not valid JSON" in reasons[6]
    assert report.skip_reasons["field 'output' is empty"] == 1
    assert report.confidence < 1.0


def test_skipped_examples_list_only_the_first_few(tmp_path):
    rows = [{"prompt": f"p{i}", "completion": "" if i % 2 else "c"} for i in range(40)]
    _, report = read_conversations(str(write_jsonl(tmp_path / "many.jsonl", rows)))
    assert report.rows_skipped == 20
    assert len(report.skipped_examples) == 5
    assert [e["row"] for e in report.skipped_examples] == [2, 4, 6, 8, 10]


def test_bad_turns_are_skipped_with_the_turn_index(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
        {"messages": [{"role": "user", "content": "a"}, {"role": "tool", "content": "{}"}]},
        {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "again"},
                      {"role": "assistant", "content": "b"}]},
        {"messages": [{"role": "user", "content": "only a question"}]},
    ]
    _, report = read_conversations(str(write_jsonl(tmp_path / "turns.jsonl", rows)))
    reasons = {e["row"]: e["reason"] for e in report.skipped_examples}
    assert reasons[2].startswith("messages[1] has unsupported role 'tool'")
    assert reasons[3].startswith("messages[1] is 'user' where 'assistant' was expected")
    assert reasons[4] == "messages has no assistant turn"


def test_detection_looks_past_the_first_rows():
    # 30 text-only rows first, then 300 alpaca rows: a five-row peek would call this "text".
    rows = [(i, {"text": f"note {i}"}) for i in range(1, 31)]
    rows += [(i, {"instruction": f"q{i}", "output": f"a{i}"}) for i in range(31, 331)]
    report = detect_format(rows, source="big.jsonl")
    assert report.format == "alpaca"
    assert report.rows_examined == 330
    assert report.confidence == pytest.approx(300 / 330, abs=1e-3)
    assert any(a["format"] == "text" for a in report.alternatives)


def test_large_splits_are_sampled_over_their_whole_length():
    rows = [(i, {"prompt": "p", "completion": "c"}) for i in range(1, 5001)]
    rows += [(i, {"question": "q", "answer": "a"}) for i in range(5001, 20001)]
    report = detect_format(rows, source="huge.jsonl")
    assert report.rows_examined == 2000
    assert report.format == "question_answer"


def test_format_override_forces_a_layout():
    rows = [(1, {"instruction": "i", "input": "x", "output": "o"})]
    report = detect_format(rows, source="r.jsonl", format="input_output")
    assert report.format == "input_output" and report.fields == {"input": "user", "output": "assistant"}
    assert report.overridden


def test_format_aliases_are_accepted():
    rows = [(1, {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})]
    assert detect_format(rows, source="r", format="openai").format == "messages"


def test_field_override_maps_unknown_columns(tmp_path):
    rows = [{"q_text": "Capital of Peru?", "best": "Lima", "notes": "geo"}]
    path = write_jsonl(tmp_path / "custom.jsonl", rows)
    with pytest.raises(DataError) as excinfo:
        read_conversations(str(path))
    assert "custom.jsonl" in excinfo.value.message and "'q_text'" in excinfo.value.message
    conversations, report = read_conversations(str(path), fields={"q_text": "user", "best": "assistant"})
    assert report.format == "custom" and report.fields == {"q_text": "user", "best": "assistant"}
    assert conversations[0].messages[1]["content"] == "Lima"


def test_field_override_replaces_one_role_of_a_detected_format():
    rows = [(1, {"instruction": "Sum.", "input": "1 2", "output": "3", "explanation": "1+2=3"})]
    report = detect_format(rows, source="r", fields={"explanation": "assistant"})
    assert report.format == "alpaca"
    assert report.fields == {"instruction": "user", "input": "context", "explanation": "assistant"}
    conversations, _ = normalise(rows, report.format, report.fields, source="r")
    assert conversations[0].messages[1]["content"] == "1+2=3"


def test_unknown_role_in_override_is_an_error():
    with pytest.raises(DataError, match="unknown role 'answer'"):
        detect_format([(1, {"a": "b"})], source="r", fields={"a": "answer"})


def test_unknown_format_name_is_an_error():
    with pytest.raises(DataError, match="unknown data format 'yaml'"):
        detect_format([(1, {"a": "b"})], source="r", format="yaml")


def test_zero_usable_rows_names_the_file_row_and_field(tmp_path):
    rows = [{"prompt": "p1", "completion": ""}, {"prompt": "p2", "completion": "   "}]
    path = write_jsonl(tmp_path / "empty_answers.jsonl", rows)
    with pytest.raises(DataError) as excinfo:
        read_conversations(str(path))
    message = excinfo.value.message
    assert "empty_answers.jsonl" in message and "row 1" in message and "'completion'" in message


def test_forced_format_that_does_not_fit_names_the_needed_fields(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", ALL_FORMATS["question_answer"])
    with pytest.raises(DataError, match=r"qa.jsonl: cannot read as dolly: it needs user \(instruction\)"):
        read_conversations(str(path), format="dolly")


def test_lists_in_csv_cells_are_read_as_json(tmp_path):
    path = write_delimited(tmp_path / "chat.csv", MESSAGES)
    conversations, report = read_conversations(str(path))
    assert report.format == "messages"
    assert len(conversations[0].messages) == 4


def test_ambiguous_layouts_lower_the_confidence():
    rows = [(i, {"text": "t", "messages": [{"role": "user", "content": "a"},
                                           {"role": "assistant", "content": "b"}]}) for i in range(10)]
    report = detect_format(rows, source="r")
    assert report.format == "messages"
    assert report.confidence < 1.0


def test_report_to_dict_is_json_serialisable(tmp_path):
    _, report = read_conversations(str(write_jsonl(tmp_path / "a.jsonl", ALPACA)))
    data = json.loads(json.dumps(report.to_dict()))
    assert data["format"] == "alpaca" and data["rows_kept"] == 3 and "skipped_examples" in data
    assert report.describe().endswith("alpaca (instruction -> user, input -> context, output -> assistant), "
                                      "confidence 1.00, 3 rows kept, 0 skipped")
