"""Classification rows with integer labels become prompt/answer conversations; hub specs with a config."""

from __future__ import annotations

import json

import pytest

from fnapi.data import load_data
from fnapi.data.labels import ClassLabels, default_instruction, label_data
from fnapi.data.loading import RawSplit, dataset_name, hub_spec, source_problem
from fnapi.errors import DataError
from fnapi.recipe import DataSection

NLI = ["entailment", "neutral", "contradiction"]


def _split(*records: dict, source: str = "nli.jsonl") -> RawSplit:
    return RawSplit(source, [(number, record) for number, record in enumerate(records, start=1)])


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# ---- label_data ------------------------------------------------------------------------------------

def test_each_row_becomes_the_instruction_its_text_fields_and_the_class_name():
    splits = {"train": _split({"premise": "A man sleeps.", "hypothesis": "A man is awake.", "label": 2},
                              {"premise": "It rains.", "hypothesis": "It is wet.", "label": 0})}
    labelled, notes = label_data(splits, NLI, "Does the premise entail the hypothesis?", source="nli.jsonl")
    assert notes == []
    assert labelled["train"].rows == [
        (1, {"prompt": "Does the premise entail the hypothesis?\n\npremise: A man sleeps.\nhypothesis: A man is awake.",
             "response": "contradiction"}),
        (2, {"prompt": "Does the premise entail the hypothesis?\n\npremise: It rains.\nhypothesis: It is wet.",
             "response": "entailment"})]


def test_text_fields_follow_the_source_column_order_and_skip_labels_ids_and_non_text():
    # wic-like and multirc-like rows: ints, dicts, the label, its text and identifiers are no prompt text
    row = {"idx": {"paragraph": 0, "question": 1}, "guid": "x-1", "doc_id": "d7", "paragraph": "P.",
           "question": "Q?", "answer": "A.", "start1": 3, "label": 1, "label_text": "yes"}
    labelled, _ = label_data({"train": _split(row)}, ["no", "yes"], "Correct?", source="multirc")
    assert labelled["train"].rows[0][1]["prompt"] == "Correct?\n\nparagraph: P.\nquestion: Q?\nanswer: A."
    swapped = {"answer": "A.", "label": 0, "question": "Q?", "paragraph": "P."}
    labelled, _ = label_data({"train": _split(swapped)}, ["no", "yes"], "Correct?", source="multirc")
    assert labelled["train"].rows[0][1]["prompt"] == "Correct?\n\nanswer: A.\nquestion: Q?\nparagraph: P."


def test_one_text_field_is_given_bare_and_named_text_fields_set_the_order():
    rows = {"train": _split({"label": 1, "text": "Great film.", "title": "Review"})}
    labelled, _ = label_data(rows, ["negative", "positive"], "Sentiment?", source="imdb", text_fields=["text"])
    assert labelled["train"].rows[0][1] == {"prompt": "Sentiment?\n\nGreat film.", "response": "positive"}
    labelled, _ = label_data(rows, ["negative", "positive"], "Sentiment?", source="imdb",
                             text_fields=["text", "title"])
    assert labelled["train"].rows[0][1]["prompt"] == "Sentiment?\n\ntext: Great film.\ntitle: Review"
    with pytest.raises(DataError, match="imdb: text field 'body' is in no row"):
        label_data(rows, ["negative", "positive"], source="imdb", text_fields=["body"])


def test_without_an_instruction_the_prompt_lists_the_answers():
    labelled, _ = label_data({"train": _split({"text": "Goal!", "label": 1})}, ["World", "Sports"], source="news")
    assert labelled["train"].rows[0][1]["prompt"] == "Answer with one of: World, Sports.\n\nGoal!"
    assert default_instruction(["a", "b"]) == "Answer with one of: a, b."


def test_a_named_label_field_is_read_and_left_out_of_the_prompt():
    row = {"id": 7, "topic": 2, "question_title": "Why?", "question_content": "", "best_answer": "Because."}
    labelled, _ = label_data({"train": _split(row)}, ["a", "b", "Health"], "Topic?", source="yahoo",
                             label_field="topic")
    # an empty field is left out of that row's prompt
    assert labelled["train"].rows[0][1] == {"prompt": "Topic?\n\nquestion_title: Why?\nbest_answer: Because.",
                                            "response": "Health"}


def test_unlabelled_rows_are_left_out_and_an_unlabelled_split_is_dropped_with_a_note():
    splits = {"train": _split({"text": "a", "label": 0}, {"text": "b", "label": -1}, {"text": "c", "label": 1}),
              "test": _split({"text": "d", "label": -1}, {"text": "e", "label": -1})}
    labelled, notes = label_data(splits, ["x", "y"], source="glue")
    assert list(labelled) == ["train"]
    assert [number for number, _ in labelled["train"].rows] == [1, 3]
    assert notes == ["1 unlabelled rows (label -1) of the train split left out",
                     "the test split is left out: every row is unlabelled (label -1)"]


def test_a_label_outside_the_list_names_the_source_split_field_and_row():
    splits = {"validation": _split({"text": "a", "label": 0}, {"text": "b", "label": 3})}
    with pytest.raises(DataError) as info:
        label_data(splits, ["x", "y", "z"], source="hub:fancyzhx/ag_news")
    assert info.value.message == ("hub:fancyzhx/ag_news, validation split, row 2: field 'label' is 3, "
                                  "outside the 3 labels (0-2)")


@pytest.mark.parametrize("value", ["two", True, 1.5, None, [1]])
def test_a_label_that_is_no_integer_is_an_error_naming_the_row(value):
    with pytest.raises(DataError, match=r"data.csv, train split, row 1: field 'label' is .* not an integer"):
        label_data({"train": _split({"text": "a", "label": value})}, ["x", "y"], source="data.csv")


def test_integer_labels_written_as_text_or_floats_are_read():
    splits = {"train": _split({"text": "a", "label": " 1 "}, {"text": "b", "label": 0.0})}
    labelled, _ = label_data(splits, ["x", "y"], source="data.csv")
    assert [row["response"] for _, row in labelled["train"].rows] == ["y", "x"]


def test_a_missing_label_field_names_the_row_and_the_fields_it_has():
    with pytest.raises(DataError, match=r"yahoo, train split, row 1: no label field 'label' \(the row has topic, text\)"):
        label_data({"train": _split({"topic": 1, "text": "a"})}, ["x", "y"], source="yahoo")


def test_rows_without_text_and_unreadable_rows_are_kept_for_normalising_to_report():
    from fnapi.data.formats import UnreadableRow

    splits = {"train": RawSplit("f.jsonl", [(1, UnreadableRow("line 1 is not valid JSON")),
                                            (2, {"text": "  ", "label": 0}), (3, {"text": "ok", "label": 1})])}
    labelled, _ = label_data(splits, ["x", "y"], source="f.jsonl")
    rows = labelled["train"].rows
    assert rows[0] == (1, "line 1 is not valid JSON") and isinstance(rows[1][1], UnreadableRow)
    assert "no text in text" in rows[1][1]
    assert rows[2] == (3, {"prompt": "Answer with one of: x, y.\n\nok", "response": "y"})


@pytest.mark.parametrize("names", [["only"], ["a", "a"], ["a", ""]])
def test_class_names_need_two_distinct_non_empty_names(names):
    with pytest.raises(DataError, match="labels: "):
        label_data({"train": _split({"text": "a", "label": 0})}, names, source="s")
    with pytest.raises(DataError, match="labels: "):
        ClassLabels(tuple(names))


def test_a_source_with_no_text_field_says_which_fields_it_has():
    with pytest.raises(DataError, match=r"s: no text field besides the label 'label' \(fields: idx, label\)"):
        label_data({"train": _split({"idx": 1, "label": 0})}, ["x", "y"], source="s")


# ---- load_data with labels and shuffle -------------------------------------------------------------

def _sorted_by_label(tmp_path, n=60):
    # like many hub sets: the rows come grouped by class
    rows = [{"sentence": f"row {i}", "label": i * 3 // n} for i in range(n)]
    return _write_jsonl(tmp_path / "train.jsonl", rows)


def test_load_data_with_labels_gives_prompt_and_answer_conversations(tmp_path):
    path = _sorted_by_label(tmp_path)
    data = load_data(DataSection(path=str(path), validation_split=0.0), seed=0,
                     labels=ClassLabels(("low", "mid", "high"), "Which third?"))
    assert data.report.format == "prompt_response"
    first = data.train[0]
    assert first.messages == [{"role": "user", "content": "Which third?\n\nrow 0"},
                              {"role": "assistant", "content": "low"}]
    assert first.row == 1
    assert {c.messages[-1]["content"] for c in data.train} == {"low", "mid", "high"}


def test_shuffle_samples_max_samples_from_the_whole_source_the_same_way_for_a_seed(tmp_path):
    path = _sorted_by_label(tmp_path)
    section = DataSection(path=str(path), max_samples=12, validation_split=0.0)
    labels = ClassLabels(("low", "mid", "high"))
    first_rows = load_data(section, seed=0, labels=labels)
    assert {c.messages[-1]["content"] for c in first_rows.train} == {"low"}  # the first 12 rows: one class
    sample = load_data(section, seed=0, shuffle=True, labels=labels)
    again = load_data(section, seed=0, shuffle=True, labels=labels)
    other = load_data(section, seed=1, shuffle=True, labels=labels)
    assert len(sample.train) == 12
    assert {c.messages[-1]["content"] for c in sample.train} == {"low", "mid", "high"}
    assert [c.row for c in sample.train] == [c.row for c in again.train] != [c.row for c in other.train]


def test_the_unlabelled_test_split_is_noted_in_the_report_and_scoring_uses_validation(tmp_path):
    path = tmp_path / "glue.json"
    path.write_text(json.dumps({"train": [{"sentence": "good", "label": 1}, {"sentence": "bad", "label": 0}],
                                "validation": [{"sentence": "fine", "label": 1}],
                                "test": [{"sentence": "hidden", "label": -1}]}))
    data = load_data(DataSection(path=str(path)), seed=0, labels=ClassLabels(("negative", "positive")))
    assert data.test is None and len(data.validation) == 1
    assert "the test split is left out: every row is unlabelled (label -1)" in data.report.describe()


def test_labels_on_a_builtin_dataset_are_refused():
    with pytest.raises(DataError, match="builtin:text holds conversations, not rows with integer class labels"):
        load_data(DataSection(path="builtin:text"), seed=0, labels=ClassLabels(("a", "b")))


# ---- hub specs -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "parsed"), [
    ("nyu-mll/glue:mnli", ("nyu-mll/glue", "mnli")),
    ("aps/super_glue:wsc.fixed", ("aps/super_glue", "wsc.fixed")),
    ("fancyzhx/ag_news", ("fancyzhx/ag_news", None)),
    ("imdb", ("imdb", None)),
])
def test_hub_spec_splits_off_the_config(spec, parsed):
    assert hub_spec(spec) == parsed
    assert source_problem(spec) is None  # a hub spec passes the offline check as it is


@pytest.mark.parametrize("spec", ["builtin:text", "org/name:", "a/b/c", "org/name:cfg:more", "org name"])
def test_anything_else_is_not_a_hub_spec(spec):
    with pytest.raises(DataError, match="is not a hub dataset id"):
        hub_spec(spec)


def test_a_hub_config_names_the_dataset():
    assert dataset_name("nyu-mll/glue:mnli") == "glue-mnli"
    assert dataset_name("fancyzhx/ag_news") == "ag_news"


def test_a_hub_config_reaches_the_datasets_library_and_glue_splits_are_read(monkeypatch):
    """The loader asks datasets for (repo, config); MNLI's matched splits are its validation and
    test splits; the hidden (-1) test labels are left out. Nothing is downloaded: load_dataset is
    replaced by an in-memory dataset."""
    import datasets

    from fnapi import auth

    calls = []

    def fake_load_dataset(repo, config=None, **kwargs):
        calls.append((repo, config))
        row = {"premise": ["P."], "hypothesis": ["H."], "label": [0], "idx": [0]}
        hidden = {**row, "label": [-1]}
        return datasets.DatasetDict({
            "train": datasets.Dataset.from_dict({**row, "label": [1]}),
            "validation_matched": datasets.Dataset.from_dict(row),
            "validation_mismatched": datasets.Dataset.from_dict({**row, "label": [2]}),
            "test_matched": datasets.Dataset.from_dict(hidden),
            "test_mismatched": datasets.Dataset.from_dict(hidden)})

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(auth, "hub_problem", lambda *a, **k: None)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = load_data(DataSection(path="nyu-mll/glue:mnli"), seed=0, labels=ClassLabels(tuple(NLI)))
    assert calls == [("nyu-mll/glue", "mnli")]
    assert data.test is None
    assert [c.messages[-1]["content"] for c in data.train] == ["neutral"]
    assert [c.messages[-1]["content"] for c in data.validation] == ["entailment"]  # matched, not mismatched
    assert data.report.splits.keys() == {"train", "validation", "validation_mismatched"}


def test_a_shuffled_hub_split_is_read_as_a_random_pool_numbered_by_source_row(monkeypatch):
    """A split of millions of rows is not read whole to keep max_samples of it: with shuffle, each
    split is read as a seeded pool of HUB_POOL_FACTOR x max_samples rows drawn over the whole split."""
    import datasets

    from fnapi import auth
    from fnapi.data.loading import HUB_POOL_FACTOR

    big = 5000

    def fake_load_dataset(repo, config=None, **kwargs):
        # sorted by class, as many hub sets are
        return datasets.DatasetDict({"train": datasets.Dataset.from_dict(
            {"text": [f"row {i}" for i in range(big)], "label": [i * 4 // big for i in range(big)]})})

    monkeypatch.setattr(auth, "hub_problem", lambda *a, **k: None)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    section = DataSection(path="org/big", max_samples=20)
    labels = ClassLabels(("a", "b", "c", "d"))
    data = load_data(section, seed=0, shuffle=True, labels=labels)
    assert data.report.splits["train"]["rows_total"] == 20 * HUB_POOL_FACTOR < big
    assert len(data.train) == 20 and len(data.validation) == 20
    for conversation in data.train:  # the number is the source row: its text says which
        assert conversation.messages[0]["content"].endswith(f"row {conversation.row - 1}")
    assert {c.messages[-1]["content"] for c in data.train} == {"a", "b", "c", "d"}
    assert [c.row for c in load_data(section, seed=0, shuffle=True, labels=labels).train] == [c.row for c in data.train]
    assert [c.row for c in load_data(section, seed=1, shuffle=True, labels=labels).train] != [c.row for c in data.train]
    whole = load_data(section, seed=0, labels=labels)  # without shuffle: the first rows of the whole split
    assert whole.report.splits["train"]["rows_total"] == big
