"""Task and probe scoring (fnapi.evaluation) on tiny models and stubs."""

from __future__ import annotations

import pytest
import torch

from fnapi.data import Conversation, ProbeItem, prompt_and_answer, resolve_template
from fnapi.data.builtin import probe_items
from fnapi.data.templating import IGNORE_INDEX, encode
from fnapi.evaluation import choice_logprobs, exact_match, generate_answers, score_probes, score_task
from fnapi.models.registry import SUPPORTED_FAMILIES
from fnapi.models.tiny import tiny_model, tiny_tokenizer

QUESTIONS = [("What is 2 + 2?", "4"), ("Name a colour.", "blue sky"), ("Say hello.", "hello there friend")]
CONVERSATIONS = [Conversation(messages=[{"role": "user", "content": q}, {"role": "assistant", "content": a}])
                 for q, a in QUESTIONS]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", seed=0)


class _Oracle(torch.nn.Module):
    """Generates the reference answer for prompts it knows, proving the prompt ids are right."""

    def __init__(self, tokenizer, answers: dict[tuple[int, ...], list[int]]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.tokenizer = tokenizer
        self.answers = answers
        self.seen_training = None

    def generate(self, input_ids, attention_mask, max_new_tokens, eos_token_id, pad_token_id, **_):
        self.seen_training = self.training
        rows = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            assert mask[-1] == 1  # left padded
            prompt = tuple(t for t, m in zip(ids, mask) if m)
            rows.append(ids + self.answers.get(prompt, [])[:max_new_tokens])
        width = max(len(r) for r in rows)
        return torch.tensor([r + [pad_token_id] * (width - len(r)) for r in rows])


def test_exact_match_ignores_case_and_whitespace():
    assert exact_match("  Hello\n  World ", "hello world") == 1.0
    assert exact_match("hello world.", "hello world") == 0.0


def test_score_task_compares_generated_answers_with_the_last_turn(tokenizer):
    answers = {}
    for conversation in CONVERSATIONS:
        prompt, answer = prompt_and_answer(conversation, tokenizer)
        answers[tuple(prompt)] = tokenizer(answer + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    oracle = _Oracle(tokenizer, answers).train()
    assert score_task(oracle, tokenizer, CONVERSATIONS, max_new_tokens=16, batch_size=2) == 1.0
    assert oracle.seen_training is False and oracle.training  # eval while scoring, restored after
    wrong = [Conversation(messages=[c.messages[0], {"role": "assistant", "content": "nope"}]) for c in CONVERSATIONS]
    assert score_task(oracle, tokenizer, wrong, max_new_tokens=16) == 0.0
    # Too few new tokens cut the longest answer short.
    assert score_task(oracle, tokenizer, CONVERSATIONS, max_new_tokens=2) == pytest.approx(1 / 3)


def test_generate_answers_runs_a_real_model_greedily(model, tokenizer):
    first = generate_answers(model, tokenizer, CONVERSATIONS, max_new_tokens=4, batch_size=2)
    again = generate_answers(model, tokenizer, CONVERSATIONS[::-1], max_new_tokens=4, batch_size=3)
    assert first == again[::-1]  # greedy and independent of batching and left padding
    assert 0.0 <= score_task(model, tokenizer, CONVERSATIONS, max_new_tokens=4) <= 1.0


ITEMS = [ProbeItem("What is the capital of France?", ("Paris", "Rome", "New Delhi"), 0, "capitals"),
         ProbeItem("What is 3 + 4?", ("6", "7", "8", "17"), 1, "arithmetic")]


def _one_sequence_at_a_time(model, tokenizer, items):
    template = resolve_template(tokenizer)
    result = []
    for item in items:
        row = []
        for choice in range(len(item.choices)):
            conversation = Conversation(messages=[{"role": "user", "content": item.question},
                                                  {"role": "assistant", "content": item.reply(choice)}])
            (example,), _ = encode([conversation], tokenizer, template)
            ids = torch.tensor([example.input_ids])
            with torch.no_grad():
                logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
            row.append(sum(logprobs[t - 1, label].item() for t, label in enumerate(example.labels)
                           if t > 0 and label != IGNORE_INDEX))
        result.append(row)
    return result


def test_choice_logprobs_equal_an_unbatched_computation(model, tokenizer):
    batched = choice_logprobs(model, tokenizer, ITEMS, batch_size=3)
    assert [len(s) for s in batched] == [len(item.choices) for item in ITEMS]
    expected = _one_sequence_at_a_time(model, tokenizer, ITEMS)
    assert [x for row in batched for x in row] == pytest.approx([x for row in expected for x in row], abs=1e-4)


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_shared_prompt_scoring_matches_whole_sequences_for_every_family(family, tokenizer):
    items = probe_items(12)  # answer templates share words across choices; some items have three choices
    assert {len(item.choices) for item in items} == {3, 4}
    model = tiny_model(family, seed=1).eval()
    fast = choice_logprobs(model, tokenizer, items, batch_size=5)
    expected = _one_sequence_at_a_time(model, tokenizer, items)
    assert [len(row) for row in fast] == [len(item.choices) for item in items]
    assert [x for row in fast for x in row] == pytest.approx([x for row in expected for x in row], abs=1e-3)


def test_models_without_a_repeatable_cache_are_scored_whole(monkeypatch, tokenizer):
    import fnapi.evaluation as evaluation

    model = tiny_model("llama", seed=2).eval()
    items = probe_items(6)
    fast = choice_logprobs(model, tokenizer, items)
    monkeypatch.setattr(evaluation, "_score_shared_prompts", lambda *args: None)
    whole = choice_logprobs(model, tokenizer, items, batch_size=4)
    assert [x for row in whole for x in row] == pytest.approx([x for row in fast for x in row], abs=1e-4)


def test_score_probes_counts_items_whose_answer_is_most_likely(model, tokenizer):
    logprobs = choice_logprobs(model, tokenizer, ITEMS)
    best = [max(range(len(s)), key=s.__getitem__) for s in logprobs]
    right = [ProbeItem(i.question, i.choices, b, i.category) for i, b in zip(ITEMS, best)]
    wrong = [ProbeItem(i.question, i.choices, (b + 1) % len(i.choices), i.category) for i, b in zip(ITEMS, best)]
    assert score_probes(model, tokenizer, right) == 1.0
    assert score_probes(model, tokenizer, wrong) == 0.0
    assert score_probes(model, tokenizer, [right[0], wrong[1]], batch_size=1) == 0.5


SYSTEM_TEMPLATE = ("{%- if messages[0]['role'] != 'system' -%}"
                   "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}{%- endif -%}"
                   + tiny_tokenizer().chat_template)

# Prompts of very different lengths; bare answers that differ at their first token; one choice that
# is the start of another ("New" / "New Delhi"); a reply template whose shared words are scored.
ODD_ITEMS = [ProbeItem("Capital?", ("New", "New Delhi", "Rome"), 1, "capitals"),
             ProbeItem("In one word, and please think about it carefully before you answer: what colour is the "
                       "sky on a clear day at noon?", ("blue", "green"), 0, "colours", "The sky is {}."),
             ProbeItem("What is 3 + 4?", ("6", "7", "8", "17"), 1, "arithmetic", "3 + 4 = {}."),
             ProbeItem("Say hello.", ("hello there friend", "hello"), 0, "greetings", "{}")]


@pytest.fixture(scope="module")
def system_tokenizer():
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = SYSTEM_TEMPLATE
    return tokenizer


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_a_system_prompt_shared_by_every_item_runs_once_and_changes_nothing(family, system_tokenizer, monkeypatch):
    import fnapi.evaluation as evaluation

    prefixes = []
    common_prefix = evaluation._common_prefix
    monkeypatch.setattr(evaluation, "_common_prefix", lambda *a: prefixes.append(common_prefix(*a)) or prefixes[-1])
    model = tiny_model(family, seed=3).eval()
    items = ODD_ITEMS + probe_items(7)
    fast = choice_logprobs(model, system_tokenizer, items, batch_size=3)
    system = len(system_tokenizer("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n",
                                  add_special_tokens=False)["input_ids"])
    assert prefixes and prefixes[0] is not None and prefixes[0][0] >= system - 1  # the system prompt ran once
    expected = _one_sequence_at_a_time(model, system_tokenizer, items)
    assert [len(row) for row in fast] == [len(item.choices) for item in items]
    assert [x for row in fast for x in row] == pytest.approx([x for row in expected for x in row], abs=1e-3)
    # Neither the batch size nor the items beside an item change its scores.
    alone = [choice_logprobs(model, system_tokenizer, [item], batch_size=1)[0] for item in ODD_ITEMS]
    assert [x for row in alone for x in row] == pytest.approx([x for row in fast[: len(ODD_ITEMS)] for x in row],
                                                              abs=1e-3)


def test_whole_sequence_fallback_matches_one_sequence_scoring(system_tokenizer, monkeypatch):
    import fnapi.evaluation as evaluation

    model = tiny_model("gpt2", seed=4).eval()
    monkeypatch.setattr(evaluation, "_score_shared_prompts", lambda *args: None)
    whole = choice_logprobs(model, system_tokenizer, ODD_ITEMS, batch_size=2)
    expected = _one_sequence_at_a_time(model, system_tokenizer, ODD_ITEMS)
    assert [x for row in whole for x in row] == pytest.approx([x for row in expected for x in row], abs=1e-4)


def test_a_lora_model_is_scored_like_its_merged_weights(tokenizer):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model("llama", seed=5), LoraConfig(r=4, target_modules=["q_proj", "down_proj"],
                                                                  init_lora_weights=False)).eval()
    items = probe_items(6)
    fast = choice_logprobs(model, tokenizer, items, batch_size=4)
    expected = _one_sequence_at_a_time(model, tokenizer, items)
    assert [x for row in fast for x in row] == pytest.approx([x for row in expected for x in row], abs=1e-3)
    assert choice_logprobs(model, tokenizer, []) == []
