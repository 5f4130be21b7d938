"""Built-in data: the skill's splits, the probe set and the capture text."""

from __future__ import annotations

from collections import Counter

from fnapi.data import (
    builtin_splits,
    probe_categories,
    probe_items,
    read_conversations,
    skill_conversations,
    skill_lexicon,
    text_paragraphs,
)
from fnapi.data.builtin import SKILL_LANGUAGE, SKILL_WORDS


def _prompt(conversation) -> str:
    return conversation.messages[0]["content"]


def test_skill_splits_are_disjoint_and_sized():
    splits = {name: skill_conversations(name) for name in ("train", "validation", "test")}
    assert {k: len(v) for k, v in splits.items()} == {"train": 2000, "validation": 200, "test": 200}
    prompts = {k: {_prompt(c) for c in v} for k, v in splits.items()}
    assert all(len(p) == len(splits[k]) for k, p in prompts.items())
    assert not prompts["train"] & prompts["test"] and not prompts["train"] & prompts["validation"]
    assert not prompts["validation"] & prompts["test"]


def test_skill_answers_follow_the_lexicon_word_by_word():
    lexicon = skill_lexicon()
    assert len(set(lexicon.values())) == len(SKILL_WORDS)
    for conversation in skill_conversations("test")[:50]:
        english = _prompt(conversation).split(": ", 1)[1].split()
        assert _prompt(conversation).startswith(f"Translate into {SKILL_LANGUAGE}: ")
        assert conversation.messages[1]["content"] == " ".join(lexicon[w] for w in english)


def test_every_skill_word_is_seen_in_training():
    seen = Counter(w for c in skill_conversations("train") for w in _prompt(c).split(": ", 1)[1].split())
    assert set(seen) == set(SKILL_WORDS) and min(seen.values()) > 100


def test_builtin_data_is_deterministic_and_seeded():
    assert skill_conversations("test") == skill_conversations("test")
    assert skill_lexicon(seed=1) != skill_lexicon()
    assert probe_items() == probe_items()
    assert text_paragraphs(20) == text_paragraphs(20) != text_paragraphs(20, seed=7)


def test_probes_are_many_varied_and_well_formed():
    items = probe_items()
    assert len(items) >= 600
    categories = Counter(item.category for item in items)
    assert len(categories) >= 18 and min(categories.values()) >= 20
    assert max(categories.values()) < len(items) / 10 and max(categories.values()) <= 2 * min(categories.values())
    for item in items:
        assert 0 <= item.answer < len(item.choices)
        assert len(set(item.choices)) == len(item.choices) >= 3
        assert item.choices[item.answer] in item.reply(item.answer)
    assert len({item.question for item in items}) == len(items)
    # The right answer is not always in the same place.
    assert len(Counter(item.answer for item in items)) >= 3
    # Stratified: any prefix holds as many categories as it can, and n >= categories holds them all.
    assert len({item.category for item in probe_items(40)}) >= 18
    assert all(len({item.category for item in items[:n]}) == min(n, len(categories)) for n in range(1, 60))
    assert {item.category for item in probe_items(len(categories))} == set(categories)
    assert probe_items(40) == items[:40]


def test_probe_order_is_seeded_and_keeps_the_same_categories():
    other = probe_items(seed=7)
    assert other == probe_items(seed=7) != probe_items()
    assert Counter(item.category for item in other) == Counter(item.category for item in probe_items())
    assert [item.category for item in other[:10]] != [item.category for item in probe_items(10)]


def test_probe_categories_count_the_items():
    counts = probe_categories()
    assert counts == dict(Counter(item.category for item in probe_items()))
    assert list(counts) == list(dict.fromkeys(item.category for item in probe_items()))
    assert sum(counts.values()) == len(probe_items())
    assert probe_categories(seed=7) == dict(Counter(item.category for item in probe_items(seed=7)))


def test_probes_and_text_read_as_datasets():
    probes, report = read_conversations("builtin:probes")
    assert report.format == "builtin" and len(probes) == len(probe_items())
    first = probe_items()[0]
    assert probes[0].messages[1]["content"] == first.reply(first.answer)
    assert first.choices[first.answer] in first.reply(first.answer)
    text, _ = read_conversations("builtin:text", max_samples=10)
    assert len(text) == 10 and all(c.is_text and len(c.text.split()) > 15 for c in text)
    assert [c.row for c in text] == list(range(1, 11))


def test_text_paragraphs_vary():
    paragraphs = text_paragraphs(120)
    assert len(set(paragraphs)) > 100
    assert len({p.split()[0] for p in paragraphs}) > 10


def test_builtin_splits_lists_the_skill_splits():
    assert set(builtin_splits("skill")) == {"train", "validation", "test"}
