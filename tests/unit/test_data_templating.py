"""Labels train only assistant tokens (end-of-turn included, even when pad == eos), and the cache."""

from __future__ import annotations

import functools

import pytest

from fnapi.data import IGNORE_INDEX, Conversation, collate, encode, prompt_and_answer, resolve_template, tokenize
from fnapi.data.templating import render_segments
from fnapi.errors import DataError
from tests.unit._data_helpers import smollm_tokenizer, tiny_pad_is_eos

TWO_TURNS = Conversation(
    messages=[{"role": "user", "content": "What is two plus two?"}, {"role": "assistant", "content": "four"},
              {"role": "user", "content": "And three plus three?"}, {"role": "assistant", "content": "six"}],
    system="Answer with one word.",
)
ONE_TURN = Conversation(messages=[{"role": "user", "content": "Say yes."}, {"role": "assistant", "content": "yes"}])

TOKENIZERS = {"tiny-pad-is-eos": tiny_pad_is_eos, "smollm": smollm_tokenizer}


@pytest.fixture(params=sorted(TOKENIZERS), scope="module")
def tokenizer(request):
    return TOKENIZERS[request.param]()


@pytest.fixture(autouse=True)
def _own_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("FNAPI_CACHE", str(tmp_path / "cache"))


def _trained_text(tokenizer, ids, labels) -> list[str]:
    """Decoded runs of consecutive trained tokens."""
    runs, current = [], []
    for token, label in zip(ids, labels):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def test_pad_is_eos_in_the_fixtures(tokenizer):
    assert tokenizer.pad_token_id == tokenizer.eos_token_id


@pytest.mark.parametrize("template", ["auto", "chatml", "alpaca", "plain"])
def test_only_assistant_answers_and_their_end_token_are_trained(tokenizer, template):
    data = tokenize([TWO_TURNS], tokenizer, chat_template=template, max_length=512, cache=False)
    ids, labels = data.input_ids[0], data.labels[0]
    eos = tokenizer.eos_token
    assert _trained_text(tokenizer, ids, labels) == [f"four{eos}", f"six{eos}"]
    # The end-of-turn id (== pad id) appears untrained in the prompt too: labels follow positions, not ids.
    eos_positions = [i for i, t in enumerate(ids) if t == tokenizer.eos_token_id]
    assert any(labels[i] == IGNORE_INDEX for i in eos_positions) or template in ("alpaca", "plain")
    assert sum(1 for i in eos_positions if labels[i] != IGNORE_INDEX) == 2


def test_system_and_user_text_are_never_trained(tokenizer):
    (example,), _ = encode([TWO_TURNS], tokenizer, resolve_template(tokenizer, "auto"))
    prompt_text = tokenizer.decode([t for t, label in zip(example.input_ids, example.labels) if label == IGNORE_INDEX])
    for piece in ("Answer with one word.", "What is two plus two?", "And three plus three?"):
        assert piece in prompt_text
    trained_text = tokenizer.decode([t for t in example.labels if t != IGNORE_INDEX])
    assert "two plus two" not in trained_text and "one word" not in trained_text


def test_model_template_is_used_when_the_tokenizer_has_one(tokenizer):
    data = tokenize([ONE_TURN], tokenizer, max_length=512, cache=False)
    assert data.template_used == "model"
    rendered = tokenizer.apply_chat_template(ONE_TURN.messages, tokenize=False)
    assert tokenizer.decode(data.input_ids[0]) == rendered


def test_tokenizer_without_chat_template_falls_back_to_chatml():
    tokenizer = tiny_pad_is_eos()
    tokenizer.chat_template = None
    assert resolve_template(tokenizer, "auto") == "chatml"
    with pytest.raises(DataError, match="no chat template"):
        resolve_template(tokenizer, "model")


def test_template_that_does_not_render_prefixes_falls_back_under_auto_only():
    tokenizer = tiny_pad_is_eos()
    # Renders the last assistant turn differently from earlier ones (as "thinking" templates do).
    tokenizer.chat_template = (
        "{% for m in messages %}{% if loop.last and m['role'] == 'assistant' %}<|im_start|>final\n"
        "{% else %}<|im_start|>{{ m['role'] }}\n{% endif %}{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    assert tokenize([TWO_TURNS], tokenizer, max_length=512, cache=False).template_used == "chatml"
    with pytest.raises(DataError, match="renders the first"):
        tokenize([TWO_TURNS], tokenizer, chat_template="model", max_length=512, cache=False)


def test_template_that_rejects_system_turns_falls_back_under_auto():
    tokenizer = tiny_pad_is_eos()
    tokenizer.chat_template = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        + tokenizer.chat_template)
    assert tokenize([ONE_TURN], tokenizer, max_length=512, cache=False).template_used == "model"
    assert tokenize([ONE_TURN, TWO_TURNS], tokenizer, max_length=512, cache=False).template_used == "chatml"
    with pytest.raises(DataError, match="System role not supported"):
        tokenize([TWO_TURNS], tokenizer, chat_template="model", max_length=512, cache=False)


class _SlowTokenizer:
    """A tokenizer without character offsets (as the few remaining slow tokenizers are)."""

    is_fast = False

    def __init__(self, inner) -> None:
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __call__(self, *args, **kwargs):
        assert "return_offsets_mapping" not in kwargs
        return self._inner(*args, **kwargs)


def test_slow_tokenizers_label_segment_by_segment():
    fast = tiny_pad_is_eos()
    template = resolve_template(fast, "auto")
    expected, _ = encode([TWO_TURNS, ONE_TURN], fast, template)
    got, _ = encode([TWO_TURNS, ONE_TURN], _SlowTokenizer(fast), template)
    assert [(e.input_ids, e.labels) for e in got] == [(e.input_ids, e.labels) for e in expected]


def test_plain_text_rows_train_every_token_and_end_with_eos(tokenizer):
    data = tokenize([Conversation(text="the river is long")], tokenizer, max_length=64, cache=False)
    ids, labels = data.input_ids[0], data.labels[0]
    assert ids[-1] == tokenizer.eos_token_id and labels[-1] == tokenizer.eos_token_id
    assert [x for x in labels if x != IGNORE_INDEX] == [t for t, x in zip(ids, labels) if x != IGNORE_INDEX]
    assert tokenizer.decode([t for t, x in zip(ids, labels) if x != IGNORE_INDEX]).startswith("the river is long")


def test_collate_pads_with_minus_100_and_masks_attention():
    tokenizer = tiny_pad_is_eos()
    data = tokenize([ONE_TURN, TWO_TURNS], tokenizer, max_length=512, cache=False)
    batch = collate([data[0], data[1]], pad_token_id=tokenizer.pad_token_id)
    short = len(data.input_ids[0])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["attention_mask"][0, :short].eq(1).all() and batch["attention_mask"][0, short:].eq(0).all()
    assert batch["labels"][0, short:].eq(IGNORE_INDEX).all()
    assert batch["input_ids"][0, short:].eq(tokenizer.pad_token_id).all()
    # The trained eos before the padding keeps its label although its id equals the pad id.
    last_trained = max(i for i, label in enumerate(data.labels[0]) if label != IGNORE_INDEX)
    assert batch["labels"][0, last_trained] == tokenizer.eos_token_id == tokenizer.pad_token_id


def test_truncation_is_counted_and_empty_examples_dropped():
    tokenizer = tiny_pad_is_eos()
    full = tokenize([TWO_TURNS], tokenizer, max_length=1024, cache=False)
    length = len(full.input_ids[0])
    first_trained = full.labels[0].index(next(x for x in full.labels[0] if x != IGNORE_INDEX))
    cut = tokenize([TWO_TURNS, ONE_TURN], tokenizer, max_length=length - 3, cache=False)
    assert cut.truncated == 1 and cut.dropped == 0 and len(cut.input_ids[0]) == length - 3
    gone = tokenize([TWO_TURNS], tokenizer, max_length=first_trained, cache=False)
    assert gone.truncated == 1 and gone.dropped == 1 and len(gone) == 0


def test_prompt_and_answer_stop_where_the_last_answer_starts(tokenizer):
    prompt, answer = prompt_and_answer(TWO_TURNS, tokenizer)
    (example,), _ = encode([TWO_TURNS], tokenizer, resolve_template(tokenizer, "auto"))
    assert answer == "six"
    assert example.input_ids[: len(prompt)] == prompt
    assert example.labels[len(prompt)] != IGNORE_INDEX and example.labels[len(prompt) - 1] == IGNORE_INDEX


def test_fallback_templates_render_roles():
    tokenizer = tiny_pad_is_eos()
    eos = tokenizer.eos_token
    assert render_segments(ONE_TURN, tokenizer, "alpaca") == [
        ("Below is an instruction that describes a task. Write a response that appropriately completes "
         "the request.\n\n### Instruction:\nSay yes.\n\n### Response:\n", False), (f"yes{eos}", True)]
    assert render_segments(ONE_TURN, tokenizer, "plain") == [("Say yes.\n", False), (f"yes{eos}", True)]
    assert render_segments(ONE_TURN, tokenizer, "chatml")[0] == (
        "<|im_start|>user\nSay yes.<|im_end|>\n<|im_start|>assistant\n", False)


def test_unknown_template_is_an_error():
    with pytest.raises(DataError, match="not one of auto, model, chatml, alpaca, plain"):
        resolve_template(tiny_pad_is_eos(), "vicuna")


# ---- cache ------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _tiny():
    return tiny_pad_is_eos()


def test_cache_hits_on_the_same_input_and_misses_on_any_change(tmp_path):
    tokenizer = _tiny()
    data = [ONE_TURN, TWO_TURNS]
    first = tokenize(data, tokenizer, max_length=64)
    assert not first.cache_hit and (tmp_path / "cache" / "tokenized" / f"{first.cache_key}.json").is_file()
    again = tokenize([Conversation(**{**c.to_dict(), "row": 99}) for c in data], tokenizer, max_length=64)
    assert again.cache_hit and again.input_ids == first.input_ids and again.labels == first.labels
    assert again.template_used == first.template_used and again.truncated == first.truncated

    changed_content = [ONE_TURN, Conversation(messages=[*TWO_TURNS.messages[:3], {"role": "assistant", "content": "6"}],
                                              system=TWO_TURNS.system)]
    variants = {
        "content": lambda: tokenize(changed_content, tokenizer, max_length=64),
        "max_length": lambda: tokenize(data, tokenizer, max_length=32),
        "template": lambda: tokenize(data, tokenizer, max_length=64, chat_template="alpaca"),
        "tokenizer": lambda: tokenize(data, _with_template(tokenizer), max_length=64),
    }
    keys = {first.cache_key}
    for name, make in variants.items():
        result = make()
        assert not result.cache_hit, name
        keys.add(result.cache_key)
    assert len(keys) == 5


def _with_template(tokenizer):
    copy = tiny_pad_is_eos()
    copy.chat_template = tokenizer.chat_template + "{# a different template #}"
    return copy


def test_field_mapping_changes_the_cache_key(tmp_path):
    from fnapi.data import read_conversations
    from tests.unit._data_helpers import write_jsonl

    path = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "i", "output": "o", "note": "n"}])
    default, _ = read_conversations(str(path))
    remapped, _ = read_conversations(str(path), fields={"note": "assistant"})
    a = tokenize(default, _tiny(), max_length=64)
    b = tokenize(remapped, _tiny(), max_length=64)
    assert a.cache_key != b.cache_key and not b.cache_hit


def test_cache_can_be_turned_off(tmp_path):
    tokenize([ONE_TURN], _tiny(), max_length=64, cache=False)
    assert not (tmp_path / "cache" / "tokenized").exists()


def test_a_corrupt_cache_entry_is_rebuilt(tmp_path):
    first = tokenize([ONE_TURN], _tiny(), max_length=64)
    (tmp_path / "cache" / "tokenized" / f"{first.cache_key}.json").write_text("{broken", encoding="utf-8")
    again = tokenize([ONE_TURN], _tiny(), max_length=64)
    assert not again.cache_hit and again.input_ids == first.input_ids
