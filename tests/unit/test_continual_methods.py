"""Each continual method's one characteristic, on a tiny model: what it adds to training, what it
keeps between tasks, and that its state survives a save and a load (resume)."""

from __future__ import annotations

import contextlib
import random

import pytest
import torch

from fnapi.continual_learning.methods import TaskContext, make_strategy
from fnapi.data.formats import Conversation
from fnapi.data.templating import TokenizedData, tokenize
from fnapi.events import ListSink, Metric
from fnapi.masking import frozen_checksums
from fnapi.models.loading import LoadedModel, describe
from fnapi.models.registry import get_adapter
from fnapi.models.tiny import tiny_model, tiny_tokenizer
from fnapi.recipe import ContinualRecipe, TrainSection
from fnapi.training import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORDS = ["red", "blue", "cat", "dog", "sun", "moon", "tree", "fish", "stone", "bird", "milk", "rain"]


def rows(kind: str, n: int = 24, seed: int = 0) -> list[Conversation]:
    """Two small tasks: repeat two words, or say them in reverse."""
    rng = random.Random(f"{kind}-{seed}")
    out = []
    for i in range(n):
        a, b = rng.sample(WORDS, 2)
        answer = f"{a} {b}" if kind == "repeat" else f"{b} {a}"
        out.append(Conversation(messages=[{"role": "user", "content": f"{kind}: {a} {b}"},
                                          {"role": "assistant", "content": answer}], row=i))
    return out


def recipe(method: str | dict) -> ContinualRecipe:
    return ContinualRecipe.model_validate({
        "kind": "continual", "tasks": [{"name": "repeat", "data": "builtin:skill"},
                                       {"name": "reverse", "data": "builtin:skill"}],
        "methods": [method]})


def section(**changes) -> TrainSection:
    return TrainSection(**{"method": "lora", "steps": 4, "batch_size": 4, "learning_rate": 1e-2,
                           "logging_steps": 1, "save_steps": 100, "warmup_ratio": 0.0, **changes})


@pytest.fixture
def loaded():
    model = tiny_model("llama")
    return LoadedModel(model, tiny_tokenizer(), describe(model, "tiny-llama"), get_adapter(model), "test")


def context(loaded, index: int, name: str, sink=None) -> TaskContext:
    data = rows(name)
    return TaskContext(index=index, name=name, train_rows=data, data=recipe("ewc").tasks[0].data,
                       tokenize=lambda r: tokenize(r, loaded.tokenizer, max_length=32, cache=False),
                       loaded=loaded, seed=0, sink=sink or ListSink())


def learn(strategy, model, ctx, tmp_path, **changes):
    """One task as the runner does it: prepare, train with a fresh Trainer, keep."""
    model, plan = strategy.before_task(model, ctx, section(**changes))
    tokens = ctx.tokenize(ctx.train_rows + list(plan.extra_rows))
    with plan.constraint(model) if plan.constraint else contextlib.nullcontext():
        result = train(model, ctx.loaded.tokenizer, tokens, None, plan.train_section, mask=plan.neuron_mask,
                       loss_term=plan.loss_term, output_dir=tmp_path / f"task-{ctx.index}", seed=ctx.index,
                       sink=ctx.sink, save_model=False)
    return strategy.after_task(result.model, ctx), plan, result


# ---- the loss term hook of training --------------------------------------------------------------------

def _data(examples: int = 16) -> TokenizedData:
    ids = [[3 + (start + i) % 40 for i in range(10)] for start in range(examples)]
    return TokenizedData(input_ids=ids, labels=[[-100] * 2 + r[2:] for r in ids], truncated=0, dropped=0,
                         template_used="plain", max_length=16, cache_key="")


@pytest.mark.parametrize("accumulation", [1, 2])
def test_a_loss_term_counts_once_per_optimizer_step_and_stays_out_of_validation(tmp_path, accumulation):
    def constant(model, inputs, outputs):
        return torch.tensor(3.0)

    plain, with_term = ListSink(), ListSink()
    common = dict(steps=3, batch_size=2, gradient_accumulation=accumulation)
    a = train(tiny_model("llama"), tiny_tokenizer(), _data(), _data(4), section(**common), output_dir=tmp_path / "a",
              sink=plain, save_model=False)
    b = train(tiny_model("llama"), tiny_tokenizer(), _data(), _data(4), section(**common), output_dir=tmp_path / "b",
              sink=with_term, save_model=False, loss_term=constant)
    # A constant adds nothing to the gradient: the same trajectory, every logged loss 3 higher.
    for (_, la), (_, lb) in zip(a.losses, b.losses):
        assert lb == pytest.approx(la + 3.0, rel=1e-4)
    assert b.eval_loss == pytest.approx(a.eval_loss, rel=1e-5)
    terms = [e.values["loss_term"] for e in with_term.events if isinstance(e, Metric) and "loss_term" in e.values]
    assert terms and all(t == pytest.approx(3.0) for t in terms)


# ---- each method's characteristic ------------------------------------------------------------------------

def test_ewc_has_no_penalty_on_the_first_task_then_pulls_towards_the_weights_after_it(loaded, tmp_path):
    strategy = make_strategy(recipe({"method": "ewc", "fisher_samples": 6}).methods[0], recipe("ewc"))
    first = context(loaded, 0, "repeat")
    model, plan = strategy.before_task(loaded.model, first, section())
    assert plan.loss_term is None and float(strategy.penalty(model).detach()) == 0.0
    model, _, _ = learn(strategy, model, first, tmp_path)
    assert strategy.fisher and all(f.min() >= 0 for f in strategy.fisher.values())
    assert any(f.sum() > 0 for f in strategy.fisher.values())
    assert float(strategy.penalty(model).detach()) == 0.0  # at the anchor
    second = context(loaded, 1, "reverse")
    model, plan = strategy.before_task(model, second, section())
    assert plan.loss_term is not None
    result = train(model, loaded.tokenizer, second.tokenize(second.train_rows), None, plan.train_section,
                   loss_term=plan.loss_term, output_dir=tmp_path / "task-1", seed=1, save_model=False)
    assert float(strategy.penalty(result.model).detach()) > 0.0  # the second task moved the weights off the anchor
    anchor = {k: v.clone() for k, v in strategy.anchor.items()}
    strategy.after_task(result.model, second)  # the Fisher grows, the anchor moves to the new weights
    assert float(strategy.penalty(result.model).detach()) == 0.0
    assert any(not torch.equal(anchor[k], strategy.anchor[k]) for k in anchor)


def test_lwf_distils_from_the_second_task_on_and_the_term_is_zero_while_nothing_moved(loaded, tmp_path):
    strategy = make_strategy(recipe("lwf").methods[0], recipe("lwf"))
    model, _, _ = learn(strategy, loaded.model, context(loaded, 0, "repeat"), tmp_path)
    ctx = context(loaded, 1, "reverse")
    model, plan = strategy.before_task(model, ctx, section())
    batch = {k: v for k, v in _batch(ctx).items()}
    outputs = model(**batch)
    assert float(plan.loss_term(model, batch, outputs)) == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)
    assert float(plan.loss_term(model, batch, model(**batch))) > 1e-4


def _batch(ctx):
    from fnapi.data.templating import collate

    data = ctx.tokenize(ctx.train_rows[:4])
    return collate([data[i] for i in range(len(data))], pad_token_id=ctx.loaded.tokenizer.pad_token_id)


def test_olora_earlier_adapters_do_not_change_and_the_new_one_is_pushed_off_them(loaded, tmp_path):
    strategy = make_strategy(recipe("olora").methods[0], recipe("olora"))
    first = context(loaded, 0, "repeat")
    model, plan = strategy.before_task(loaded.model, first, section())
    assert plan.loss_term is None  # no earlier adapter yet
    model, _, _ = learn(strategy, model, first, tmp_path)
    from peft import PeftModel

    assert not isinstance(model, PeftModel)  # merged: task 1's adapter now lives in the weights
    merged = {n: p.detach().clone() for n, p in model.named_parameters()}
    subspace = {k: [a.clone() for a in v] for k, v in strategy.subspaces.items()}
    sink = ListSink()
    second = context(loaded, 1, "reverse", sink)
    model, plan = strategy.before_task(model, second, section())
    assert plan.loss_term is not None
    result = train(model, loaded.tokenizer, second.tokenize(second.train_rows), None, plan.train_section,
                   loss_term=plan.loss_term, output_dir=tmp_path / "task-1", seed=1, sink=sink, save_model=False)
    assert any(e.values.get("loss_term", 0) > 0 for e in sink.events if isinstance(e, Metric))
    # Task 2 trained a new adapter only: the weights holding task 1's adapter are bit-identical.
    for name, before in merged.items():
        trained = result.model.get_parameter(_peft_name(result.model, name))
        assert torch.equal(trained, before), name
    strategy.after_task(result.model, second)
    assert all(torch.equal(a, b) for k in subspace for a, b in zip(subspace[k], strategy.subspaces[k][:1]))
    assert all(len(v) == 2 for v in strategy.subspaces.values())


def _peft_name(model, name: str) -> str:
    """The name of a base weight inside a peft model (LoRA layers keep it as base_layer.weight)."""
    full = f"base_model.model.{name}"
    wrapped = full.replace(".weight", ".base_layer.weight")
    names = dict(model.named_parameters())
    return wrapped if wrapped in names else full


def test_cumulative_protect_keeps_every_earlier_tasks_networks_bit_identical(loaded, tmp_path):
    method = {"method": "protect", "template": {"site": "mlp.out", "samples": 12, "max_length": 24,
                                                "components": 3, "runs": 2}, "top_stable": 2}
    strategy = make_strategy(recipe(method).methods[0], recipe(method))
    model, plan, _ = learn(strategy, loaded.model, context(loaded, 0, "repeat"), tmp_path)
    assert plan.neuron_mask is None  # nothing to protect before the first task is learnt
    after_first = strategy.neuron_mask()
    assert after_first is not None and after_first.train == "unselected"
    sums = frozen_checksums(model, after_first)
    down_before = [get_adapter(model).down_proj(model, layer).weight.detach().clone() for layer in (0, 1)]
    for index, name in ((1, "reverse"), (2, "repeat2")):
        ctx = context(loaded, index, name if name != "repeat2" else "repeat")
        ctx.name = name
        model, plan, result = learn(strategy, model, ctx, tmp_path)
        assert plan.neuron_mask is not None and result.frozen_unchanged is True
        assert frozen_checksums(model, after_first) == sums, f"after task {index + 1}"
    moved = [not torch.equal(get_adapter(model).down_proj(model, layer).weight, before)
             for layer, before in zip((0, 1), down_before)]
    assert any(moved)  # the rest of the down-projections did learn
    assert set(strategy.per_task) == {"repeat", "reverse", "repeat2"}


def test_replay_mixes_a_buffer_of_every_earlier_task_into_the_next(loaded, tmp_path):
    strategy = make_strategy(recipe({"method": "replay", "per_task": 5}).methods[0], recipe("replay"))
    model, plan, _ = learn(strategy, loaded.model, context(loaded, 0, "repeat"), tmp_path)
    assert list(plan.extra_rows) == []
    model, plan, _ = learn(strategy, model, context(loaded, 1, "reverse"), tmp_path)
    assert len(plan.extra_rows) == 5 and all(r in rows("repeat") for r in plan.extra_rows)
    assert set(strategy.buffer) == {"repeat", "reverse"}


@pytest.mark.parametrize("method", ["sequential_lora", {"method": "replay", "per_task": 3},
                                    {"method": "ewc", "fisher_samples": 4}, "olora",
                                    {"method": "protect", "template": {"site": "mlp.hidden", "samples": 12,
                                                                       "max_length": 24, "components": 3, "runs": 2},
                                     "top_stable": 1},
                                    {"method": "subspace", "samples": 6}])
def test_a_saved_state_loads_back_to_the_same_model_and_memory(loaded, tmp_path, method):
    strategy = make_strategy(recipe(method).methods[0], recipe(method))
    model, _, _ = learn(strategy, loaded.model, context(loaded, 0, "repeat"), tmp_path)
    strategy.save_state(model, tmp_path / "state")
    expected = {n: p.detach().clone() for n, p in model.named_parameters()}
    fresh_model = tiny_model("llama")
    fresh = LoadedModel(fresh_model, loaded.tokenizer, loaded.info, get_adapter(fresh_model), "test")
    again = make_strategy(recipe(method).methods[0], recipe(method))
    restored = again.load_state(fresh.model, tmp_path / "state", fresh)
    got = dict(restored.named_parameters())
    assert set(got) == set(expected)
    assert all(torch.equal(got[n], expected[n]) for n in expected)
    assert again.memory() == strategy.memory()
    theirs, ours = again.tensors(), strategy.tensors()
    assert set(theirs) == set(ours) and all(torch.equal(theirs[k], ours[k]) for k in ours)


def test_task_shares_are_disjoint_cover_the_mask_and_repeat_with_the_seed():
    from fnapi.continual_learning.methods import task_share
    from fnapi.masking import NeuronMask

    mask = NeuronMask("mlp.out", {0: range(0, 20, 2), 3: range(7)}, train="selected")
    shares = [task_share(mask, i, 3, seed=5) for i in range(3)]
    for layer, channels in mask.neurons.items():
        parts = [set(share.neurons[layer]) for share in shares]
        assert set().union(*parts) == set(channels)
        assert sum(len(p) for p in parts) == len(channels)  # no channel in two shares
        assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1
    assert all(share.train == "selected" for share in shares)
    assert task_share(mask, 1, 3, seed=5) == shares[1]
    assert task_share(mask, 1, 3, seed=6) != shares[1]


def test_disjoint_masked_leaves_an_earlier_tasks_rows_bit_identical(loaded, tmp_path):
    from fnapi.continual_learning.methods import task_share

    method = {"method": "masked", "disjoint": True,
              "template": {"site": "mlp.out", "method": "attribution", "data": ["builtin:text"], "samples": 8,
                           "max_length": 24, "selection": {"rule": "percentile", "value": 50}},
              "mask": {"preset": "target", "components": [1]}, "train": {"method": "full"}}
    strategy = make_strategy(recipe(method).methods[0], recipe(method))
    model, first, result = learn(strategy, loaded.model, context(loaded, 0, "repeat"), tmp_path, method="full")
    assert first.neuron_mask.train == "selected" and result.frozen_unchanged is True
    adapter = get_adapter(model)

    def rows_of(share):
        return {layer: adapter.down_proj(model, layer).weight[list(channels)].detach().clone()
                for layer, channels in share.neurons.items()}

    first_rows = rows_of(first.neuron_mask)
    second_share = task_share(strategy.mask, 1, 2, seed=0)
    second_before = rows_of(second_share)
    model, second, _ = learn(strategy, model, context(loaded, 1, "reverse"), tmp_path, method="full")
    assert second.neuron_mask == second_share
    for layer, channels in first.neuron_mask.neurons.items():
        assert not set(channels) & set(second.neuron_mask.neurons[layer])
    assert all(torch.equal(rows, first_rows[layer]) for layer, rows in rows_of(first.neuron_mask).items())
    assert any(not torch.equal(rows, second_before[layer]) for layer, rows in rows_of(second_share).items())


def test_disjoint_needs_a_mask_that_trains_the_selection():
    with pytest.raises(ValueError, match="disjoint"):
        recipe({"method": "masked", "disjoint": True, "template": {"site": "mlp.out"},
                "mask": {"preset": "protect", "components": [0]}})


# ---- subspace: protected input directions ------------------------------------------------------------

def test_grow_basis_adds_the_fewest_directions_that_hold_the_energy():
    from fnapi.continual_learning.subspace import grow_basis

    rotation, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    covariance = rotation @ torch.diag(torch.tensor([9.0, 4.0, 1.0, 0.0, 0.0], dtype=torch.float64)) @ rotation.T
    one = grow_basis(None, covariance, 0.6)  # 9 / 14 = 0.64
    two = grow_basis(None, covariance, 0.9)  # 13 / 14 = 0.93
    assert one.shape == (5, 1) and two.shape == (5, 2)
    assert torch.allclose(one[:, 0].double().abs(), rotation[:, 0].abs(), atol=1e-5)
    # a task whose energy the basis already holds adds nothing; another one adds only what is new
    assert grow_basis(two, covariance, 0.9).shape == (5, 2)
    other = torch.zeros(5, 5, dtype=torch.float64)
    other[4, 4] = 1.0
    grown = grow_basis(two, other + covariance, 0.9)
    assert grown.shape[1] == 3 and torch.allclose(grown[:, :2], two)
    assert torch.allclose(grown.T.double() @ grown.double(), torch.eye(3, dtype=torch.float64), atol=1e-5)
    assert grow_basis(None, torch.zeros(5, 5), 0.9).shape == (5, 0)


def test_subspace_leaves_an_earlier_tasks_input_directions_mapped_as_they_were(loaded, tmp_path):
    method = {"method": "subspace", "samples": 12, "energy": 0.9}
    strategy = make_strategy(recipe(method).methods[0], recipe(method))
    model, plan, _ = learn(strategy, loaded.model, context(loaded, 0, "repeat"), tmp_path)
    assert plan.constraint is None  # nothing to protect before the first task is learnt
    from peft import PeftModel

    assert not isinstance(model, PeftModel) and strategy.bases
    bases = {name: basis.clone() for name, basis in strategy.bases.items()}
    assert all(0 < b.shape[1] < b.shape[0] for b in bases.values())
    before = {name: module.weight.detach().clone() for name, module in model.named_modules() if name in bases}
    sink = ListSink()
    model, plan, _ = learn(strategy, model, context(loaded, 1, "reverse", sink), tmp_path)
    assert plan.constraint is not None
    assert not any(m._forward_hooks for m in model.modules())  # the hooks went with the task
    moved = 0
    for name, module in model.named_modules():
        if name not in before:
            continue
        change = module.weight.detach() - before[name]
        moved += float(change.norm() > 1e-4)
        # the update is zero on every protected direction of the first task, also after merging
        assert float((change @ bases[name]).norm()) <= 1e-4 * max(float(change.norm()), 1.0), name
    assert moved  # the second task did learn, off the protected directions
    assert all(torch.equal(strategy.bases[n][:, :b.shape[1]], b) for n, b in bases.items())  # grown, not redone


def test_subspace_needs_lora():
    with pytest.raises(ValueError, match="subspace"):
        recipe({"method": "subspace", "train": {"method": "full"}})


def test_training_inside_the_projection_computes_what_the_projected_adapter_computes(loaded):
    from fnapi.continual_learning.subspace import project_adapters, projected_adapters
    from fnapi.training import prepare_model

    torch.manual_seed(0)
    model = prepare_model(loaded.model, section())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained-looking adapter, so A's projection shows in the output
    names = [name for name, _ in model.named_modules() if name.endswith(("q_proj", "down_proj"))
             and not name.split(".")[-1].startswith("lora")]
    layers = {name.removeprefix("base_model.model."): dict(model.named_modules())[name] for name in names}
    bases = {name: torch.linalg.qr(torch.randn(layer.in_features, 3))[0] for name, layer in layers.items()}
    batch = {"input_ids": torch.randint(3, 40, (2, 12))}
    model.eval()
    with torch.no_grad():
        plain = model(**batch).logits
        with projected_adapters(model, bases):
            hooked = model(**batch).logits
        assert not torch.allclose(plain, hooked, atol=1e-4)  # the projection changes what the adapters add
        project_adapters(model, bases)
        written = model(**batch).logits
    assert torch.allclose(hooked, written, atol=1e-5)
