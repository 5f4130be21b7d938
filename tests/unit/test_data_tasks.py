"""The generated tasks (builtin:cipher, order, units, vennish): replayable, disjoint, learnable from
their training rows, answers that follow the rule (checked by decoders written here, which learn
the rule from the training rows alone), and ``fnapi data list``."""

from __future__ import annotations

import json
import re

import pytest

from fnapi.cli import main
from fnapi.data import builtin_splits, read_conversations
from fnapi.data.builtin import BUILTIN_TASKS, BUILTINS
from fnapi.data.loading import source_problem
from fnapi.data.tasks import SEED, TASKS
from fnapi.errors import DataError

NEW = ("cipher", "order", "units", "vennish")
SEEDS = (SEED, 7)


def _pairs(rows) -> list[tuple[str, str]]:
    return [(c.messages[0]["content"], c.messages[1]["content"]) for c in rows]


def _after_colon(prompt: str) -> list[str]:
    return prompt.split(": ", 1)[1].split()


@pytest.fixture(scope="module")
def splits():
    """Splits per (task, seed), generated once for the module."""
    return {(name, seed): {k: _pairs(v) for k, v in TASKS[name].splits(seed).items()} for name in NEW for seed in SEEDS}


def test_the_registry_names_every_task_once():
    assert set(NEW) <= set(BUILTIN_TASKS) and BUILTIN_TASKS[0] == "skill"
    assert set(BUILTIN_TASKS) <= set(BUILTINS) and len(set(BUILTIN_TASKS)) == len(BUILTIN_TASKS)
    assert {"probes", "text"} & set(BUILTIN_TASKS) == set()


@pytest.mark.parametrize("name", NEW)
def test_rows_are_a_pure_function_of_the_seed(splits, name):
    again = {k: _pairs(v) for k, v in builtin_splits(name).items()}
    assert again == splits[(name, SEED)]
    assert splits[(name, 7)]["test"] != splits[(name, SEED)]["test"]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", NEW)
def test_splits_are_disjoint_sized_and_short(splits, name, seed):
    task = TASKS[name]
    parts = splits[(name, seed)]
    assert len(parts["test"]) == task.test and len(parts["validation"]) == task.validation
    assert len(parts["train"]) >= 2 * task.test
    prompts = {k: [p for p, _ in v] for k, v in parts.items()}
    assert all(len(set(p)) == len(p) for p in prompts.values())  # no row twice within a split
    train, validation, test = (set(prompts[k]) for k in ("train", "validation", "test"))
    assert not train & test and not train & validation and not validation & test
    assert max(len(a.split()) for v in parts.values() for _, a in v) <= 5


@pytest.mark.parametrize("name", NEW)
def test_every_example_fits_max_length_64(splits, name):
    from fnapi.data import tokenize
    from tests.unit._data_helpers import smollm_tokenizer

    rows = TASKS[name].conversations("test")[:20]
    data = tokenize(rows, smollm_tokenizer(), max_length=64, cache=False)
    assert len(data) == 20 and max(len(ids) for ids in data.input_ids) < 64


@pytest.mark.parametrize("seed", SEEDS)
def test_cipher_answers_decode_with_the_key_learnt_from_training(splits, seed):
    parts = splits[("cipher", seed)]
    key: dict[str, str] = {}
    for prompt, answer in parts["train"]:
        letters, coded = _after_colon(prompt), answer.split()
        assert prompt.startswith("Encode with the cipher: ") and len(letters) == len(coded)
        for plain, code in zip(letters, coded):
            assert key.setdefault(plain, code) == code, f"{plain} encoded two ways"
    vowels = set("aeiou")
    assert {p for p, c in key.items() if p != c} == vowels  # exactly the vowels change...
    assert {key[v] for v in vowels} == vowels  # ...into each other, one to one
    decode = {code: plain for plain, code in key.items()}
    for prompt, answer in parts["test"] + parts["validation"]:
        assert set(_after_colon(prompt)) <= set(key)  # every test letter was seen in training
        assert [decode[c] for c in answer.split()] == _after_colon(prompt)


@pytest.mark.parametrize("seed", SEEDS)
def test_order_answers_follow_one_permutation_per_length_learnt_from_training(splits, seed):
    parts = splits[("order", seed)]
    permutations: dict[int, list[int]] = {}
    seen: dict[int, list[set[str]]] = {}
    for prompt, answer in parts["train"]:
        words = _after_colon(prompt)
        assert prompt.startswith("Apply the order rule: ") and len(set(words)) == len(words)
        permutation = permutations.setdefault(len(words), [words.index(w) for w in answer.split()])
        assert answer == " ".join(words[i] for i in permutation)
        for slot, word in zip(seen.setdefault(len(words), [set() for _ in words]), words):
            slot.add(word)
    assert sorted(permutations) == [3, 4, 5]
    for length, permutation in permutations.items():
        assert sorted(permutation) == list(range(length))
        assert all(i != p for i, p in enumerate(permutation)) and permutation != list(range(length))[::-1]
    for prompt, answer in parts["test"] + parts["validation"]:
        words = _after_colon(prompt)
        assert all(w in slot for w, slot in zip(words, seen[len(words)]))  # every word seen in its place
        assert answer == " ".join(words[i] for i in permutations[len(words)])


_UNITS = re.compile(r"How many (\w+)s are (\d+) (\w+)s\?")


@pytest.mark.parametrize("seed", SEEDS)
def test_units_answers_agree_with_the_ratios_learnt_from_training(splits, seed):
    parts = splits[("units", seed)]
    ratio: dict[tuple[str, str], int] = {}  # (smaller, larger) -> smaller units in one larger

    def parse(prompt: str, answer: str) -> tuple[tuple[str, str], int]:
        """The unit pair and the ratio this row states."""
        match = _UNITS.fullmatch(prompt)
        assert match, prompt
        unit, count, other = match.group(1), int(match.group(2)), match.group(3)
        number, answer_unit = answer.split()
        assert answer_unit == unit + "s" and unit != other
        many, few = max(count, int(number)), min(count, int(number))
        assert many % few == 0
        return ((unit, other) if int(number) > count else (other, unit)), many // few

    for prompt, answer in parts["train"]:
        pair, factor = parse(prompt, answer)
        assert ratio.setdefault(pair, factor) == factor
    units = {u for pair in ratio for u in pair}
    assert len(units) == 4 and len(ratio) == 6  # every pair of the four units, one way round
    assert all(f in (10, 100, 1000) for f in ratio.values())
    for (a, b), f in ratio.items():  # the ratios compose: a system, not six unrelated facts
        for (c, d), g in ratio.items():
            if b == c:
                assert ratio[(a, d)] == f * g
    for prompt, answer in parts["test"] + parts["validation"]:
        pair, factor = parse(prompt, answer)
        assert ratio[pair] == factor
        assert _UNITS.fullmatch(prompt).group(1) == pair[0]  # always from a larger unit to a smaller


@pytest.mark.parametrize("seed", SEEDS)
def test_vennish_translates_with_the_endings_learnt_from_training(splits, seed):
    parts = splits[("vennish", seed)]
    endings: dict[str, set[str]] = {"noun": set(), "plural": set(), "adjective": set()}
    seen: set[str] = set()
    # Learn the grammar from training: the noun first, then the adjectives in English order, each
    # Vennish word an English stem, a hyphen and an ending.
    for prompt, answer in parts["train"]:
        english, vennish = _after_colon(prompt), [w.split("-") for w in answer.split()]
        assert prompt.startswith("Translate into Vennish: ") and len(english) == len(vennish)
        assert all(len(w) == 2 for w in vennish)
        (noun, noun_end), *adjectives = vennish
        plural = english[-1] == noun + "s"
        assert plural or english[-1] == noun
        endings["plural" if plural else "noun"].add(noun_end)
        assert [stem for stem, _ in adjectives] == english[:-1]
        endings["adjective"].update(end for _, end in adjectives)
        seen.update(english)
    assert all(len(v) == 1 for v in endings.values())
    learnt = {k: v.pop() for k, v in endings.items()}
    assert len(set(learnt.values())) == 3  # three different endings

    def translate(english: list[str]) -> str:
        noun = english[-1]
        head = f"{noun[:-1]}-{learnt['plural']}" if noun.endswith("s") else f"{noun}-{learnt['noun']}"
        return " ".join([head, *(f"{a}-{learnt['adjective']}" for a in english[:-1])])

    for prompt, answer in parts["test"] + parts["validation"]:
        english = _after_colon(prompt)
        assert set(english[:-1]) <= seen and english[-1] in seen  # every word, in its form, seen in training
        assert translate(english) == answer


def test_tasks_load_through_the_data_spec(splits):
    rows, report = read_conversations("builtin:units", split="test")
    assert report.format == "builtin" and _pairs(rows) == splits[("units", SEED)]["test"]
    assert [c.row for c in rows[:3]] == [1, 2, 3]


def test_unknown_builtin_names_suggest_the_closest():
    with pytest.raises(DataError, match=r"unknown built-in dataset builtin:ciper; did you mean builtin:cipher\?"):
        read_conversations("builtin:ciper")
    assert "did you mean builtin:vennish" in source_problem("builtin:venish")
    message = source_problem("builtin:xyzzy")
    assert "did you mean" not in message and all(f"builtin:{name}" in message for name in BUILTINS)
    assert source_problem("builtin:order") is None
    with pytest.raises(DataError, match="builtin:order has no split 'dev'"):
        TASKS["order"].conversations("dev")


def test_data_list_names_every_builtin_with_its_description(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  builtin:")}
    assert list(lines) == [f"builtin:{n}" for n in (*BUILTIN_TASKS, "probes", "text", "chat", "chat-train")]
    assert all(BUILTINS[name.split(":")[1]] in line for name, line in lines.items())
    assert out.index("builtin:vennish") < out.index("For measuring") < out.index("builtin:probes")
    assert main(["data", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["builtins"]
    assert [(e["name"], e["trainable"]) for e in listed] == [(f"builtin:{n}", n in BUILTIN_TASKS) for n in BUILTINS]
