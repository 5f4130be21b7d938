"""Activation capture: shapes per site and layer, padding and special tokens left out, values equal to
a plain hook, no LM head, hooks always removed, cancellation, broken activations."""

from __future__ import annotations

import threading

import pytest
import torch

from fnapi.errors import CancelledError, DataError, TemplateError
from fnapi.events import ListSink, Progress
from fnapi.models.registry import SUPPORTED_FAMILIES, get_adapter
from fnapi.models.tiny import HIDDEN_SIZE, INTERMEDIATE_SIZE, tiny_model, tiny_tokenizer
from fnapi.networks.capture import ActivationOverflowError, batch_plan, capture_activations

TEXTS = ["the cat sat on the mat", "a dog", "numbers one two three four five six seven", "hello"]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def sequences(tokenizer):
    # bos at the start and eos at the end: special tokens the capture must leave out
    return [[tokenizer.bos_token_id, *tokenizer(text).input_ids, tokenizer.eos_token_id] for text in TEXTS]


def _capture(model, sequences, tokenizer, **kwargs):
    return capture_activations(model, sequences, pad_token_id=tokenizer.pad_token_id,
                               exclude_token_ids=tokenizer.all_special_ids, dtype=torch.float32, **kwargs)


def _manual(model, sequences, site, layers):
    """Each sequence alone (no padding), full forward, a plain hook on every chosen down-projection.

    Copies at once: some blocks (Falcon) add the attention output into the MLP output in place.
    """
    adapter = get_adapter(model)
    per_layer = {layer: [] for layer in layers}
    handles = []
    for layer in layers:
        module = adapter.down_proj(model, layer)
        if site == "mlp.out":
            handles.append(module.register_forward_hook(
                lambda m, i, o, layer=layer: per_layer[layer].append(o.reshape(-1, o.shape[-1]).clone())))
        else:
            handles.append(module.register_forward_pre_hook(
                lambda m, i, layer=layer: per_layer[layer].append(i[0].reshape(-1, i[0].shape[-1]).clone())))
    try:
        with torch.no_grad():
            for seq in sequences:
                model(input_ids=torch.tensor([seq]))
    finally:
        for handle in handles:
            handle.remove()
    return {layer: rows for layer, rows in per_layer.items()}


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
@pytest.mark.parametrize("site, width", [("mlp.out", HIDDEN_SIZE), ("mlp.hidden", INTERMEDIATE_SIZE)])
def test_width_rows_and_values_match_a_plain_hook(family, site, width, tokenizer, sequences):
    model = tiny_model(family)
    acts = _capture(model, sequences, tokenizer, site=site, layers=[1])
    kept = [[t for t in seq if t not in tokenizer.all_special_ids] for seq in sequences]
    assert acts.values.shape == (sum(map(len, kept)), width)
    assert acts.layers == [1] and acts.width == width and acts.site == site
    assert not set(acts.token_ids.tolist()) & set(tokenizer.all_special_ids)

    manual = _manual(model, sequences, site, [1])[1]
    for row in range(acts.n_rows):
        seq, pos = int(acts.sequence_index[row]), int(acts.positions[row])
        assert sequences[seq][pos] == int(acts.token_ids[row])
        torch.testing.assert_close(acts.values[row], manual[seq][pos].float(), rtol=1e-4, atol=1e-5)


def test_several_layers_sit_side_by_side(tokenizer, sequences):
    model = tiny_model("llama", num_layers=3)
    acts = _capture(model, sequences, tokenizer, site="mlp.out", layers=[2, 0])
    assert acts.layers == [0, 2]
    assert acts.values.shape[1] == 2 * HIDDEN_SIZE
    manual = _manual(model, sequences, "mlp.out", [0, 2])
    seq, pos = int(acts.sequence_index[0]), int(acts.positions[0])
    torch.testing.assert_close(acts.values[0, HIDDEN_SIZE:], manual[2][seq][pos], rtol=1e-4, atol=1e-5)
    assert acts.layout.split(torch.tensor([HIDDEN_SIZE + 3]).numpy()) == {2: [3]}


def test_padding_is_left_out_and_changes_nothing(tokenizer, sequences):
    model = tiny_model("qwen2")
    batched = _capture(model, sequences, tokenizer, batch_tokens=4096)
    alone = _capture(model, sequences, tokenizer, batch_tokens=1)  # one sequence per batch: no padding
    assert len(batch_plan(sequences, batch_tokens=4096)) == 1
    assert batched.n_rows == alone.n_rows
    order_b = sorted(range(batched.n_rows), key=lambda r: (int(batched.sequence_index[r]), int(batched.positions[r])))
    order_a = sorted(range(alone.n_rows), key=lambda r: (int(alone.sequence_index[r]), int(alone.positions[r])))
    torch.testing.assert_close(batched.values[order_b], alone.values[order_a], rtol=1e-4, atol=1e-5)


def test_max_length_cuts_sequences(tokenizer, sequences):
    acts = _capture(tiny_model("llama"), sequences, tokenizer, max_length=3)
    assert int(acts.positions.max()) <= 2


def test_lm_head_and_later_blocks_never_run(tokenizer, sequences):
    model = tiny_model("llama", num_layers=3)
    adapter = get_adapter(model)

    def boom(*args, **kwargs):
        raise AssertionError("ran past the last captured layer")

    model.get_output_embeddings().register_forward_pre_hook(boom)
    adapter.blocks(model)[2].register_forward_pre_hook(boom)
    acts = _capture(model, sequences, tokenizer, layers=[0, 1])
    assert acts.layers == [0, 1]


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_are_removed_after_cancellation(tokenizer, sequences):
    model = tiny_model("gpt2")
    cancel = threading.Event()
    sink = ListSink()

    class CancelAfterFirst:
        def emit(self, event):
            sink.emit(event)
            if isinstance(event, Progress) and event.completed >= 1:
                cancel.set()

    with pytest.raises(CancelledError):
        _capture(model, sequences, tokenizer, batch_tokens=1, sink=CancelAfterFirst(), cancel=cancel)
    assert _hook_count(model) == 0
    assert [e for e in sink.of_type(Progress)][-1].completed == 1


def test_nan_activations_are_a_clear_error_and_hooks_go(tokenizer, sequences):
    model = tiny_model("llama")
    with torch.no_grad():
        get_adapter(model).down_proj(model, 1).weight[0, 0] = float("nan")
    with pytest.raises(TemplateError, match=r"layer 1 \(mlp.out\) gave NaN"):
        _capture(model, sequences, tokenizer)
    assert _hook_count(model) == 0


def test_float16_overflow_is_reported_as_such(tokenizer, sequences):
    model = tiny_model("llama")
    with torch.no_grad():
        get_adapter(model).down_proj(model, 0).weight.mul_(1e7)
    with pytest.raises(ActivationOverflowError, match="beyond the torch.float16 range"):
        capture_activations(model, sequences, layers=[0], dtype=torch.float16)


def test_nothing_to_capture_is_a_data_error(tokenizer):
    with pytest.raises(DataError, match="nothing to capture"):
        _capture(tiny_model("llama"), [[tokenizer.bos_token_id, tokenizer.eos_token_id]], tokenizer)


def test_unknown_site_and_bad_layers(tokenizer, sequences):
    model = tiny_model("llama")
    with pytest.raises(TemplateError, match="site 'mlp.in'"):
        _capture(model, sequences, tokenizer, site="mlp.in")
    with pytest.raises(TemplateError, match="within 0-1"):
        _capture(model, sequences, tokenizer, layers=[5])


def test_progress_events_per_batch(tokenizer, sequences):
    sink = ListSink()
    _capture(tiny_model("llama"), sequences, tokenizer, batch_tokens=1, sink=sink)
    progress = sink.of_type(Progress)
    assert progress[-1].completed == progress[-1].total == len(sequences)
