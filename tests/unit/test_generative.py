"""Forgetting a user can see: open-ended scoring, the format-leak flag, chat drift and general prompts."""

from __future__ import annotations

import json

import pytest

from fnapi.data.builtin import chat_prompts, probe_items, skill_conversations, text_paragraphs
from fnapi.errors import DataError
from fnapi.generative import (
    LeakDetector,
    PromptSet,
    load_prompts,
    named_choices,
    open_ended_correct,
    probe_overlap,
)

CHOICES = ["Madrid", "Paris", "Rome", "Berlin"]


@pytest.mark.parametrize(("reply", "expected"), [
    ("The capital of France is Paris.", 1.0),          # right
    ("paris", 1.0),                                      # case does not matter
    ("The capital of France is Madrid.", 0.0),         # wrong
    ("It is either Paris or Rome.", 0.0),              # two choices named
    ("", 0.0),                                           # empty
    ("loxo kazu", 0.0),                                  # the task's language, no choice
    ("Parisian food is famous.", 0.0),                 # a choice inside a longer word is not named
])
def test_open_ended_scoring_on_hand_made_replies(reply, expected):
    assert open_ended_correct(reply, CHOICES, 1) == expected


def test_numbers_spelt_out_and_choices_inside_longer_choices():
    assert open_ended_correct("A spider has eight legs.", ["6", "8", "10"], 1) == 1.0
    assert open_ended_correct("A spider has 18 legs.", ["6", "8", "10"], 1) == 0.0
    # "York" inside "New York" names only "New York" (right or wrong depending on the answer)
    assert named_choices("I went to New York.", ["York", "New York"]) == {1}
    assert open_ended_correct("I went to New York.", ["York", "New York"], 1) == 1.0
    assert open_ended_correct("I went to New York.", ["York", "New York"], 0) == 0.0
    # what a reply copies from the question names nothing
    assert open_ended_correct("1 + 4 = 5", ["3", "4", "5"], 2, "What is 1 + 4?") == 1.0
    assert open_ended_correct("1 + 4 = 5", ["3", "4", "5"], 2) == 0.0
    listed = "Which is the biggest: a horse, a mouse or a cat?"
    assert open_ended_correct("The biggest is a horse.", ["a horse", "a mouse", "a cat"], 0, listed) == 1.0
    assert open_ended_correct("Of a horse, a mouse or a cat, a cat.", ["a horse", "a mouse", "a cat"], 2, listed) == 1.0
    numbers = "Which number is the largest: 12, 18 or 26?"
    assert open_ended_correct("18 is the largest", ["12", "18", "26"], 2, numbers) == 0.0
    assert open_ended_correct("The largest number is 26.", ["12", "18", "26"], 2, numbers) == 1.0
    with pytest.raises(ValueError, match="not one of 2 choices"):
        open_ended_correct("x", ["a", "b"], 2)


def _zorbic_detector() -> LeakDetector:
    answers = [c.messages[-1]["content"] for c in skill_conversations("train")[:300]]
    general = [*chat_prompts(), *text_paragraphs(60), *(i.reply(i.answer) for i in probe_items(200))]
    return LeakDetector().fit(answers, general)


def test_the_leak_detector_tells_task_replies_from_english():
    detector = _zorbic_detector()
    held_out = [c.messages[-1]["content"] for c in skill_conversations("test")[:50]]
    assert sum(detector.is_task_like(a) for a in held_out) >= 45
    english = ["The capital of France is Paris.", "Learning to swim takes patience and a good teacher.",
               "A rainy afternoon is perfect for reading a book by the window.", "Sure! Here is a short story."]
    assert not any(detector.is_task_like(r) for r in english)
    assert not detector.is_task_like("")
    assert "fitted=" in repr(detector) and repr(detector) == repr(_zorbic_detector())  # plans compare by it


def test_the_leak_flag_needs_a_share_and_a_rise_over_the_base():
    assert LeakDetector.flag(0.9, 0.0)
    assert not LeakDetector.flag(0.1, 0.0)      # a few odd replies are not a leak
    assert not LeakDetector.flag(0.5, 0.45)     # the base already answers like that (an English task)
    assert LeakDetector.flag(0.5, None)


def test_builtin_chat_prompts_never_ask_a_probe_question():
    prompts = load_prompts("builtin:chat")
    assert len(prompts.prompts) == len(set(prompts.prompts)) >= 100
    assert probe_overlap(prompts, [("builtin:probes", probe_items())]) is None
    copied = PromptSet("mine.txt", ("Tell me a joke.", "what is the capital of france"))
    assert probe_overlap(copied, [("builtin:probes", probe_items())]) == (
        "builtin:probes", 2, "what is the capital of france")


def test_prompt_files_are_read_and_bad_ones_named(tmp_path):
    (tmp_path / "p.txt").write_text("Say hello.\n\nDescribe a cat.\n")
    assert load_prompts(str(tmp_path / "p.txt")).prompts == ("Say hello.", "Describe a cat.")
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "Say hi."}) + "\n" + json.dumps({"text": "x"}) + "\n")
    with pytest.raises(DataError, match=r"p.jsonl:2: a prompt row needs a non-empty 'prompt' field"):
        load_prompts(str(tmp_path / "p.jsonl"))
    with pytest.raises(DataError, match="does not exist"):
        load_prompts(str(tmp_path / "nope.txt"))
    with pytest.raises(DataError, match="unknown built-in prompt set"):
        load_prompts("builtin:probes")
    assert len(load_prompts("builtin:chat", limit=5).prompts) == 5


def _plan(tokenizer, **kwargs):
    from fnapi.measures import GenerativeRequest, build_plan

    answers = [c.messages[-1]["content"] for c in skill_conversations("train")[:100]]
    return build_plan(tokenizer, probes=["builtin:probes"], probe_samples=6, texts=["builtin:text"], text_samples=2,
                      generative=GenerativeRequest(samples=4, max_new_tokens=5, chat_prompts=3, task_answers=answers),
                      **kwargs)


def test_chat_drift_is_zero_for_the_base_against_itself_and_positive_for_another_model():
    import torch

    from fnapi.measures import compare_measures, evaluate
    from fnapi.models.tiny import tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    plan = _plan(tokenizer)
    assert plan.items == 6 + 4 + 3 + len(plan.texts[0][1])
    model = tiny_model("llama", seed=0)
    base, reference = evaluate(model, tokenizer, plan)
    assert [g.n for g in base.generative] == [4] and len(base.chat.replies) == 3
    assert base.chat.task_like is not None and base.chat.kl is None
    same, _ = evaluate(model, tokenizer, plan, reference=reference, base=base)
    assert same.chat.kl == pytest.approx((0.0, 0.0, 0.0), abs=1e-3)
    pairs = compare_measures(base, same)
    assert pairs["chat_kl"]["value"] == pytest.approx(0.0, abs=1e-3) and pairs["chat_kl"]["prompts"] == 3
    assert pairs["generative"]["change"] == 0.0 and pairs["generative"]["n"] == 4
    assert pairs["format_leak"]["share"] == pairs["format_leak"]["base_share"]
    assert not pairs["format_leak"]["flag"]

    other = tiny_model("llama", seed=0)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    moved, _ = evaluate(other, tokenizer, plan, reference=reference, base=base)
    assert min(moved.chat.kl) > 1e-3
    # the stored form reads back the same
    from fnapi.measures import EvalMeasures

    restored = EvalMeasures.from_dict(json.loads(json.dumps(moved.to_dict())))
    assert restored.generative == moved.generative
    assert restored.chat.reply_ids == moved.chat.reply_ids and restored.chat.task_like == moved.chat.task_like
    assert restored.chat.kl == pytest.approx(moved.chat.kl, abs=1e-6)


def test_a_plan_with_the_same_inputs_describes_the_same_evaluation():
    from fnapi.models.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    assert repr(_plan(tokenizer)) == repr(_plan(tokenizer))  # the base-score cache keys on it


def test_more_questions_can_be_asked_open_ended_than_ranked():
    from fnapi.measures import GenerativeRequest, build_plan
    from fnapi.models.tiny import tiny_tokenizer

    plan = build_plan(tiny_tokenizer(), probes=["builtin:probes"], probe_samples=6,
                      generative=GenerativeRequest(samples=10, chat_prompts=0))
    assert len(plan.probes[0][1]) == 6 and len(plan.generative[0][1]) == 10
    assert plan.generative[0][1][:6] == plan.probes[0][1]  # the same questions where both ask them
    assert plan.chat is None and plan.leak is None


def test_the_leak_flag_fires_on_a_model_tuned_to_answer_everything_in_one_format_and_not_on_its_base(tmp_path):
    from fnapi.data.builtin import chat_train_prompts
    from fnapi.data.formats import Conversation
    from fnapi.data.templating import tokenize
    from fnapi.measures import GenerativeRequest, build_plan, compare_measures, evaluate
    from fnapi.models.tiny import tiny_model, tiny_tokenizer
    from fnapi.recipe import TrainSection
    from fnapi.training import train

    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    answers = ["kami loxo kazu bate", "loxo kami bate kazu", "kazu bate kami loxo"]
    rows = [Conversation(messages=[{"role": "user", "content": prompt},
                                   {"role": "assistant", "content": answers[i % 3]}])
            for i, prompt in enumerate(chat_train_prompts())]
    plan = build_plan(tokenizer, generative=GenerativeRequest(max_new_tokens=8, chat_prompts=12,
                                                              task_answers=answers * 20))
    base, reference = evaluate(model, tokenizer, plan)
    quiet = compare_measures(base, evaluate(model, tokenizer, plan, reference=reference, base=base)[0])
    assert not quiet["format_leak"]["flag"]
    data = tokenize(rows, tokenizer, max_length=48, cache=False)
    section = TrainSection(method="full", steps=60, batch_size=8, learning_rate=3e-3, save_steps=1000,
                           logging_steps=20, validation_samples=None)
    tuned = train(model, tokenizer, data, None, section, output_dir=tmp_path, save_model=False).model
    leaked = compare_measures(base, evaluate(tuned, tokenizer, plan, reference=reference, base=base)[0])
    assert leaked["format_leak"]["flag"], leaked["format_leak"]
    assert leaked["format_leak"]["share"] >= 0.5 and leaked["chat_kl"]["value"] > quiet["chat_kl"]["value"]
