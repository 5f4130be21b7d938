"""Attribution templates (LoKI): integrated gradients at mlp.out and the layer-balanced selection."""

from __future__ import annotations

import threading

import pytest
import torch

from fnapi.errors import CancelledError, DataError, TemplateError
from fnapi.events import ListSink, Progress
from fnapi.models.loading import LoadedModel, describe
from fnapi.models.registry import get_adapter
from fnapi.models.tiny import tiny_model, tiny_tokenizer
from fnapi.networks.attribution import attribution_scores, attribution_template, select_layer_balanced
from fnapi.networks.template import Template

PLANTED = 17


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def examples(tokenizer):
    def example(question: str, answer: str) -> dict:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                               add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
        return {"input_ids": prompt_ids + answer_ids, "labels": [-100] * len(prompt_ids) + answer_ids}

    return [example("what is the capital of France", "Paris"), example("add 2 and 3", "5"),
            example("hello", "hello there")]


def info(model):
    return describe(model, "tiny")


def planted(family: str, layer: int):
    """A tiny model whose down-projection output channel PLANTED in ``layer`` is scaled up 20x."""
    model = tiny_model(family)
    adapter = get_adapter(model)
    module = adapter.down_proj(model, layer)
    with torch.no_grad():
        module.weight.select(adapter.out_dim(module), PLANTED).mul_(20)
    return model


def test_template_shape_and_exact_quota_per_layer(tokenizer, examples, tmp_path):
    model = tiny_model("llama")
    template = attribution_template((model, tokenizer, info(model)), examples, quota_percent=25.0, steps=3,
                                    sources=["inline"])
    assert (template.site, template.width, template.num_layers, template.layers) == ("mlp.out", 64, 2, [0, 1])
    assert template.method["name"] == "attribution" and template.method["steps"] == 3
    assert template.method["quota"] == 25.0 and template.method["per_layer"] == 16
    assert [c.stats["selection"] for c in template.components] == ["most", "least"]
    for component in template.components:
        assert component.per_layer == {0: 16, 1: 16}
        assert len(component.stats["top_tokens"]) > 0
        assert set(component.stats["top_tokens"][0]) == {"token", "context", "activation"}
    assert template.data["rows"] == 3 and template.data["sources"] == ["inline"]
    assert template.data["answer_tokens"] == sum(sum(t != -100 for t in e["labels"][1:]) for e in examples)
    assert Template.load(template.save(tmp_path / "attr.json")) == template
    template.check_compatible(info(model))


def test_scores_are_deterministic_and_leave_the_model_as_it_was(examples):
    model = tiny_model("gpt2").train()
    first = attribution_scores(model, examples, steps=3)
    second = attribution_scores(model, examples, steps=3)
    assert first.shape == (3, 2, 64)
    assert torch.equal(first, second)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert not get_adapter(model).down_proj(model, 0)._forward_hooks


def test_attributions_add_up_to_the_objective_change(examples):
    """Completeness: the sum over all (layer, channel) equals f(all gates 1) - f(all gates 0)."""
    model = tiny_model("llama")
    adapter = get_adapter(model)
    ids, labels = examples[0]["input_ids"], examples[0]["labels"]
    total = attribution_scores(model, [examples[0]], steps=24)[0].sum()

    def answer_log_prob() -> float:
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
        targets = torch.tensor(labels[1:])
        keep = targets != -100
        return torch.log_softmax(logits[keep], -1).gather(-1, targets[keep].unsqueeze(-1)).mean().item()

    with torch.no_grad():
        full = answer_log_prob()
        handles = [adapter.down_proj(model, layer).register_forward_hook(lambda m, i, o: o * 0) for layer in (0, 1)]
        try:
            zeroed = answer_log_prob()
        finally:
            for handle in handles:
                handle.remove()
    assert abs(full - zeroed) > 1e-3
    assert total.item() == pytest.approx(full - zeroed, rel=0.02)


@pytest.mark.parametrize("family, layer", [("llama", 1), ("gpt2", 0)])
def test_planted_channel_ranks_most_important(tokenizer, examples, family, layer):
    model = planted(family, layer)
    scores = attribution_scores(model, examples, steps=3)
    assert scores.abs().mean(0)[layer].argmax().item() == PLANTED
    template = attribution_template((model, tokenizer, info(model)), examples, steps=3)
    most, least = template.components
    assert PLANTED in most.neurons[layer]
    assert PLANTED not in least.neurons[layer]


def test_accepts_a_loaded_model_or_model_and_tokenizer(tokenizer, examples):
    model = tiny_model("qwen2")
    loaded = LoadedModel(model=model, tokenizer=tokenizer, info=describe(model, "tiny-qwen2"),
                         adapter=get_adapter(model), source="test")
    from_loaded = attribution_template(loaded, examples, steps=2)
    assert from_loaded.model["name"] == "tiny-qwen2"
    assert from_loaded.model["fingerprint"] == loaded.info.fingerprint
    from_pair = attribution_template((model, tokenizer), examples, steps=2)
    assert from_pair.model["fingerprint"] == loaded.info.fingerprint
    assert from_pair.components == from_loaded.components
    from_loaded.check_compatible(loaded.info)


def test_layer_subset(tokenizer, examples):
    model = planted("llama", 1)
    template = attribution_template((model, None, info(model)), examples, steps=2, layers=[1], select=["most"])
    assert template.layers == [1] and template.num_layers == 2
    assert [c.id for c in template.components] == [0]
    assert list(template.component(0).neurons) == [1] and PLANTED in template.component(0).neurons[1]
    assert "top_tokens" not in template.component(0).stats  # no tokenizer given


def test_layer_balanced_selection_counts_votes():
    # 3 samples, 1 layer, 5 channels; |score| decides, sign does not
    scores = torch.tensor([[[5.0, -4.0, 0.1, 0.2, 3.0]],
                           [[4.0, 0.3, -5.0, 0.1, 3.0]],
                           [[-5.0, 4.0, 0.2, 0.1, 3.0]]])
    # k = 40% of 5 = 2. most: votes 0:3, 1:2, 2:1 -> {0, 1}; least: 3:3, 2:2, 1:1 -> {2, 3}
    assert select_layer_balanced(scores, 40.0, "most", [7]) == {7: [0, 1]}
    assert select_layer_balanced(scores, 40.0, "least", [7]) == {7: [2, 3]}
    # k = 1 over the first two samples: channels 0 and 2 get one vote each; the tie goes to the
    # higher mean |score| (channel 0: 4.5, channel 2: 2.55)
    assert select_layer_balanced(scores[:2], 20.0, "most", [0]) == {0: [0]}
    with pytest.raises(TemplateError, match="selection"):
        select_layer_balanced(scores, 40.0, "random", [0])
    with pytest.raises(TemplateError, match="quota"):
        select_layer_balanced(scores, 0.0, "most", [0])


def test_bad_inputs_are_user_errors(examples):
    model = tiny_model("llama")
    with pytest.raises(TemplateError, match="at least 2"):
        attribution_scores(model, examples, steps=1)
    no_answer = [{"input_ids": [1, 2, 3], "labels": [-100, -100, -100]}]
    with pytest.raises(DataError, match="answer tokens"):
        attribution_scores(model, no_answer, steps=2)
    with pytest.raises(DataError, match="example 0"):
        attribution_scores(model, [{"input_ids": [1, 2, 3]}], steps=2)
    with pytest.raises(TemplateError, match="within 0-1"):
        attribution_scores(model, examples, steps=2, layers=[2])
    with pytest.raises(TemplateError, match="select"):
        attribution_template((model, None, info(model)), examples, select=["most", "middle"])
    with pytest.raises(TemplateError, match="quota"):
        attribution_template((model, None, info(model)), examples, quota_percent=150)


def test_cancellation_stops_and_removes_hooks(tokenizer, examples):
    model = tiny_model("llama")
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(CancelledError):
        attribution_template((model, tokenizer, info(model)), examples, steps=2, cancel=cancel)

    class CancelAfterFirstSample(ListSink):
        def emit(self, event):
            super().emit(event)
            if isinstance(event, Progress):
                cancel.set()

    cancel.clear()
    sink = CancelAfterFirstSample()
    with pytest.raises(CancelledError, match="after 1 sample"):
        attribution_scores(model, examples, steps=2, sink=sink, cancel=cancel)
    assert len(sink.of_type(Progress)) == 1
    assert not get_adapter(model).down_proj(model, 1)._forward_hooks
    assert all(p.requires_grad for p in model.parameters())
