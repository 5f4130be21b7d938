"""Masks: ablation hooks at both sites, training restrictions that keep frozen weights bit-identical."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch.nn.utils import parametrize

from fnapi.errors import TemplateError
from fnapi.masking import (
    NeuronMask,
    bake_lesion,
    from_section,
    from_template,
    frozen_checksums,
    mask,
    plain_state_dict,
    trainable_parameters,
)
from fnapi.models.registry import get_adapter
from fnapi.models.tiny import HIDDEN_SIZE, INTERMEDIATE_SIZE, tiny_model
from fnapi.networks.template import Component, Template
from fnapi.recipe import MASK_PRESETS, MaskSection

SELECTED = {0: [1, 5, 7], 1: [2, 40]}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 400, (2, 9), generator=torch.Generator().manual_seed(seed))


def _capture(model, site: str, layer: int) -> tuple[dict, object]:
    """Record what the down-projection of ``layer`` sees (mlp.hidden) or returns (mlp.out).

    Registered after the mask's hooks, so it observes the masked tensors.
    """
    seen: dict = {}
    module = get_adapter(model).down_proj(model, layer)
    if site == "mlp.out":
        handle = module.register_forward_hook(lambda m, a, out: seen.__setitem__("t", out.detach().clone()))
    else:
        handle = module.register_forward_pre_hook(lambda m, a: seen.__setitem__("t", a[0].detach().clone()))
    return seen, handle


def _site_tensor(model, site: str, layer: int, ids: torch.Tensor, neuron_mask=None) -> torch.Tensor:
    if neuron_mask is None:
        seen, handle = _capture(model, site, layer)
        with torch.no_grad():
            model(ids)
        handle.remove()
        return seen["t"]
    with mask(model, neuron_mask):
        seen, handle = _capture(model, site, layer)
        with torch.no_grad():
            model(ids)
        handle.remove()
    return seen["t"]


def _lora(model, targets=None, nonzero_b: bool = False):
    adapter = get_adapter(model)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=list(targets or adapter.lora_targets), lora_dropout=0.0)
    peft_model = get_peft_model(model, config)
    if nonzero_b:  # a trained adapter: its delta changes the output, so masking it is observable
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    return peft_model


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt", "phi3"])
@pytest.mark.parametrize("site", ["mlp.out", "mlp.hidden"])
@pytest.mark.parametrize("ablate", ["selected", "unselected"])
def test_ablation_zeroes_exactly_the_chosen_channels(family, site, ablate):
    model = tiny_model(family)
    width = HIDDEN_SIZE if site == "mlp.out" else INTERMEDIATE_SIZE
    ids = _ids()
    neuron_mask = NeuronMask(site, SELECTED, ablate=ablate)
    plain = _site_tensor(model, site, 0, ids)
    masked = _site_tensor(model, site, 0, ids, neuron_mask)
    zeroed = neuron_mask.ablated(0, width)
    kept = [c for c in range(width) if c not in set(zeroed)]
    assert len(zeroed) == (3 if ablate == "selected" else width - 3)
    assert torch.all(masked[..., zeroed] == 0)
    # layer 0 sees the same input with and without the mask, so the other channels are untouched
    assert torch.equal(masked[..., kept], plain[..., kept])
    assert plain[..., zeroed].abs().sum() > 0
    # leaving the block restores the model exactly
    assert torch.equal(_site_tensor(model, site, 0, ids), plain)


@pytest.mark.parametrize("site", ["mlp.out", "mlp.hidden"])
def test_peft_lora_delta_is_masked_too(site):
    model = _lora(tiny_model("llama"), nonzero_b=True)
    width = HIDDEN_SIZE if site == "mlp.out" else INTERMEDIATE_SIZE
    ids = _ids()
    neuron_mask = NeuronMask(site, SELECTED, ablate="selected")
    down = get_adapter(model).down_proj(model, 0)
    assert hasattr(down, "lora_B"), "the hook must sit on the LoRA layer"
    masked = _site_tensor(model, site, 0, ids, neuron_mask)
    assert torch.all(masked[..., SELECTED[0]] == 0)
    if site == "mlp.out":
        # with the adapter disabled the output differs: the hooked output includes the delta
        plain = _site_tensor(model, site, 0, ids)
        with model.disable_adapter():
            without_delta = _site_tensor(model, site, 0, ids)
        kept = [c for c in range(width) if c not in SELECTED[0]]
        assert not torch.allclose(plain[..., kept], without_delta[..., kept])
        assert torch.equal(masked[..., kept], plain[..., kept])


def test_everything_is_removed_after_an_exception(llama):
    ids = _ids()
    with torch.no_grad():
        before = llama(ids).logits
    llama.requires_grad_(True)
    flags = {name: p.requires_grad for name, p in llama.named_parameters()}
    neuron_mask = NeuronMask("mlp.out", SELECTED, ablate="selected", train="selected")
    with pytest.raises(RuntimeError, match="boom"):
        with mask(llama, neuron_mask):
            assert parametrize.is_parametrized(get_adapter(llama).down_proj(llama, 0))
            raise RuntimeError("boom")
    for layer in range(2):
        down = get_adapter(llama).down_proj(llama, layer)
        assert not down._forward_hooks and not down._forward_pre_hooks
        assert not parametrize.is_parametrized(down)
    assert {name: p.requires_grad for name, p in llama.named_parameters()} == flags
    with torch.no_grad():
        assert torch.equal(llama(ids).logits, before)


def test_layer_filter_leaves_other_layers_alone(llama):
    ids = _ids()
    neuron_mask = NeuronMask("mlp.out", SELECTED, ablate="unselected")
    plain0 = _site_tensor(llama, "mlp.out", 0, ids)
    with mask(llama, neuron_mask, layers="1:") as applied:
        assert applied.mask.layers == [1]
        seen0, h0 = _capture(llama, "mlp.out", 0)
        seen1, h1 = _capture(llama, "mlp.out", 1)
        with torch.no_grad():
            llama(ids)
        h0.remove(), h1.remove()
    assert torch.equal(seen0["t"], plain0)  # unaffected layer: nothing ablated
    assert torch.count_nonzero(seen1["t"][..., [c for c in range(HIDDEN_SIZE) if c not in SELECTED[1]]]) == 0
    # preserve: a layer no selected network reaches is left as it is, not zeroed whole ...
    with mask(llama, {0: []}, ablate="unselected"):
        seen, handle = _capture(llama, "mlp.out", 0)
        with torch.no_grad():
            llama(ids)
        handle.remove()
    assert torch.equal(seen["t"], plain0)
    # ... unless asked for the old behaviour, where "unselected" is every channel
    with mask(llama, NeuronMask("mlp.out", {0: []}, ablate="unselected", unreached="ablate")):
        seen, handle = _capture(llama, "mlp.out", 0)
        with torch.no_grad():
            llama(ids)
        handle.remove()
    assert torch.count_nonzero(seen["t"]) == 0
    # nothing trains in an unreached layer either way
    assert NeuronMask("mlp.out", {0: []}, ablate="unselected", train="selected").frozen(0, 4) == [0, 1, 2, 3]


def test_preserve_from_a_recipe_keeps_unreached_layers_and_the_option_restores_the_old_way():
    template = Template(site="mlp.out", width=HIDDEN_SIZE, num_layers=2,
                        components=[Component(0, {0: [1, 5]}, stability=0.9)])
    kept = from_section(template, MaskSection(preset="preserve", components=[0]))
    assert kept.ablated(1, HIDDEN_SIZE) == [] and len(kept.ablated(0, HIDDEN_SIZE)) == HIDDEN_SIZE - 2
    silenced = from_section(template, MaskSection(preset="preserve", components=[0], unreached="ablate"))
    assert silenced.ablated(1, HIDDEN_SIZE) == list(range(HIDDEN_SIZE))
    assert NeuronMask.from_dict(silenced.to_dict()) == silenced


def _template(site: str = "mlp.out", width: int = HIDDEN_SIZE) -> Template:
    return Template(site=site, width=width, num_layers=2, components=[
        Component(0, {0: [1, 5], 1: [2]}, stability=0.9),
        Component(1, {0: [7], 1: [40]}, stability=0.5),
        Component(2, {1: [9]}, stability=0.95),
    ])


@pytest.mark.parametrize("preset", ["lesion", "preserve", "protect", "target"])
def test_presets_map_onto_the_two_switches(preset):
    neuron_mask = from_template(_template(), [0, 1], preset=preset)
    assert (neuron_mask.ablate, neuron_mask.train) == MASK_PRESETS[preset]
    assert neuron_mask.neurons == {0: (1, 5, 7), 1: (2, 40)}
    section = MaskSection(preset=preset, components=[0, 1], train="all")
    assert (from_section(_template(), section).ablate, from_section(_template(), section).train) == (
        MASK_PRESETS[preset][0], "all")


def test_expected_preset_table():
    # The documented meaning of each preset, spelled out.
    assert MASK_PRESETS["lesion"] == ("selected", "all")
    assert MASK_PRESETS["preserve"] == ("unselected", "selected")
    assert MASK_PRESETS["protect"] == ("none", "unselected")
    assert MASK_PRESETS["target"] == ("none", "selected")


def test_template_components_stable_and_layers():
    neuron_mask = from_template(_template(), "stable", top_stable=2, preset="lesion", layers="1")
    assert neuron_mask.neurons == {1: (2, 9)}  # components 2 and 0, layer 1 only
    neuron_mask = from_template(_template(), [1], ablate="selected", train="unselected", preset="target")
    assert (neuron_mask.ablate, neuron_mask.train) == ("selected", "unselected")  # explicit switches win


def test_template_of_another_shape_is_refused(llama):
    narrow = Template(site="mlp.out", width=32, num_layers=2, components=[Component(0, {0: [1]})])
    with pytest.raises(TemplateError, match="64"):
        with mask(llama, narrow, components=[0], preset="lesion"):
            pass
    with pytest.raises(TemplateError, match="outside"):
        with mask(llama, {0: [HIDDEN_SIZE]}, ablate="selected"):
            pass
    with pytest.raises(TemplateError, match="components"):
        with mask(llama, _template(), preset="lesion"):
            pass


def test_mask_round_trips_through_json():
    neuron_mask = from_template(_template(), [0], preset="protect")
    again = NeuronMask.from_dict(neuron_mask.to_dict())
    assert again == neuron_mask and again.fingerprint() == neuron_mask.fingerprint()
    assert neuron_mask.with_switches(train="all").fingerprint() != neuron_mask.fingerprint()


def test_trainable_parameter_counts(llama):
    llama.requires_grad_(True)
    total = sum(p.numel() for p in llama.parameters())
    rows = 5  # SELECTED holds 3 + 2 neurons
    protect = NeuronMask("mlp.out", SELECTED, train="unselected")
    target = NeuronMask("mlp.out", SELECTED, train="selected")
    hidden_target = NeuronMask("mlp.hidden", SELECTED, train="selected")
    assert trainable_parameters(llama) == total
    assert trainable_parameters(llama, protect) == total - rows * INTERMEDIATE_SIZE
    assert trainable_parameters(llama, target) == rows * INTERMEDIATE_SIZE
    # down_proj column + gate_proj row + up_proj row per intermediate neuron
    assert trainable_parameters(llama, hidden_target) == rows * 3 * HIDDEN_SIZE
    for neuron_mask in (protect, target, hidden_target):
        expected = trainable_parameters(llama, neuron_mask)
        with mask(llama, neuron_mask) as applied:
            assert applied.trainable_parameters() == expected
    assert trainable_parameters(llama) == total

    lora = _lora(tiny_model("llama"))
    lora_total = trainable_parameters(lora)
    # frozen rows of down_proj's lora_B (r = 4 columns each)
    assert trainable_parameters(lora, protect) == lora_total - rows * 4
    # target: only down_proj's lora_A (shared) and the selected lora_B rows train
    assert trainable_parameters(lora, target) == 2 * (4 * INTERMEDIATE_SIZE) + rows * 4


def _effective_weight(model, layer: int) -> torch.Tensor:
    """The down-projection weight as [out, in], LoRA delta included."""
    down = get_adapter(model).down_proj(model, layer)
    base = getattr(down, "base_layer", down)
    weight = base.weight.detach().clone()
    if type(base).__name__ == "Conv1D":
        weight = weight.T
    if hasattr(down, "lora_B"):
        delta = down.get_delta_weight("default").detach()
        weight = weight + (delta.T if type(base).__name__ == "Conv1D" else delta)
    return weight


def _adamw_steps(model, ids, steps: int = 3):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    for _ in range(steps):
        loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return optimizer


@pytest.mark.parametrize("family,lora,site,train", [
    ("llama", False, "mlp.out", "unselected"),
    ("llama", False, "mlp.out", "selected"),
    ("gpt2", False, "mlp.out", "unselected"),
    ("llama", True, "mlp.out", "unselected"),
    ("gpt2", True, "mlp.out", "selected"),
    ("llama", False, "mlp.hidden", "unselected"),
    ("llama", True, "mlp.hidden", "unselected"),
    ("phi3", True, "mlp.hidden", "selected"),
])
def test_frozen_rows_stay_bit_identical_under_adamw_weight_decay(family, lora, site, train):
    model = tiny_model(family).train()
    model.requires_grad_(True)
    if lora:
        model = _lora(model)
    neuron_mask = NeuronMask(site, SELECTED, train=train)
    width = HIDDEN_SIZE if site == "mlp.out" else INTERMEDIATE_SIZE
    ids = _ids()
    before = [_effective_weight(model, layer) for layer in range(2)]
    with mask(model, neuron_mask) as applied:
        sums = applied.frozen_checksums()
        _adamw_steps(model, ids)
    after = [_effective_weight(model, layer) for layer in range(2)]
    assert frozen_checksums(model, neuron_mask) == sums
    dim = 0 if site == "mlp.out" else 1
    for layer in range(2):
        frozen = torch.tensor(neuron_mask.frozen(layer, width))
        trainable = torch.tensor([c for c in range(width) if c not in set(neuron_mask.frozen(layer, width))])
        assert torch.equal(before[layer].index_select(dim, frozen), after[layer].index_select(dim, frozen))
        assert not torch.equal(before[layer].index_select(dim, trainable), after[layer].index_select(dim, trainable))


def test_full_finetune_optimizer_state_holds_only_trainable_rows():
    model = tiny_model("llama").train()
    model.requires_grad_(True)
    neuron_mask = NeuronMask("mlp.out", SELECTED, train="selected")
    with mask(model, neuron_mask):
        optimizer = _adamw_steps(model, _ids(), steps=1)
        shapes = sorted(tuple(s["exp_avg"].shape) for s in optimizer.state.values())
    assert shapes == [(2, INTERMEDIATE_SIZE), (3, INTERMEDIATE_SIZE)]
    # protect: the down-projections are represented by their trainable rows only
    model.requires_grad_(True)
    with mask(model, NeuronMask("mlp.out", SELECTED, train="unselected")):
        optimizer = _adamw_steps(model, _ids(), steps=1)
        shapes = [tuple(s["exp_avg"].shape) for s in optimizer.state.values()]
    assert (HIDDEN_SIZE, INTERMEDIATE_SIZE) not in shapes
    assert sorted(s for s in shapes if s[1:] == (INTERMEDIATE_SIZE,) and s[0] < HIDDEN_SIZE) == [
        (HIDDEN_SIZE - 3, INTERMEDIATE_SIZE), (HIDDEN_SIZE - 2, INTERMEDIATE_SIZE)]


def test_state_dict_inside_the_mask_uses_plain_names(llama):
    llama.requires_grad_(True)
    plain_keys = list(llama.state_dict())
    with mask(llama, NeuronMask("mlp.out", SELECTED, train="unselected")):
        assert any(".parametrizations." in k for k in llama.state_dict())
        state = plain_state_dict(llama)
        assert sorted(state) == sorted(plain_keys)
        weight = state["model.layers.0.mlp.down_proj.weight"]
        assert torch.equal(weight, get_adapter(llama).down_proj(llama, 0).weight)


@pytest.mark.parametrize("family,site,lora", [
    ("llama", "mlp.out", False), ("gpt2", "mlp.out", False), ("llama", "mlp.hidden", False),
    ("gpt2", "mlp.hidden", True), ("llama", "mlp.out", True),
])
def test_baked_lesion_behaves_like_the_hooks(family, site, lora):
    model = tiny_model(family)
    if lora:
        model = _lora(model, nonzero_b=True)
    ids = _ids()
    neuron_mask = NeuronMask(site, SELECTED, ablate="selected")
    with torch.no_grad():
        plain = model(ids).logits
        with mask(model, neuron_mask):
            hooked = model(ids).logits
        bake_lesion(model, neuron_mask)
        baked = model(ids).logits
    assert not torch.allclose(plain, hooked)
    torch.testing.assert_close(baked, hooked, rtol=0, atol=1e-6)


def test_invalid_masks_are_explained():
    with pytest.raises(TemplateError, match="negative"):
        NeuronMask("mlp.out", {0: [-1]})
    with pytest.raises(TemplateError, match="outside 0-7"):
        NeuronMask("mlp.out", {0: [8]}, width=8)
    with pytest.raises(TemplateError, match="ablate 'all'"):
        NeuronMask("mlp.out", {0: [1]}, ablate="all")
    with pytest.raises(TemplateError, match="site"):
        NeuronMask("attn.out", {0: [1]})


@pytest.mark.parametrize("components, preset, words", [
    ([0], "protect", "1 network, 3 neurons at mlp.out in 1 layer: frozen, so what they hold survives"),
    ([0, 1], "target", "2 networks, 5 neurons at mlp.out in 2 layers: the only weights that train"),
    ("stable", "lesion", "the 1 most stable network, 3 neurons at mlp.out in 1 layer: switched off"),
])
def test_a_mask_says_in_words_what_it_does(components, preset, words):
    template = Template(site="mlp.out", width=8, num_layers=2, components=[
        Component(0, {0: [1, 2, 3]}, 0.9), Component(1, {1: [4, 5]}, 0.5)])
    neuron_mask = from_template(template, components, preset=preset, top_stable=1)
    assert neuron_mask.in_words().startswith(words)
    # Layers a network does not reach are not counted as layers it spans ("3 ... in 2 layers" before).
    count, layers = words.split(", ")[1].split(" neuron")[0], words.split(" in ")[1].split(":")[0]
    assert neuron_mask.describe().startswith(f"mlp.out: {count} selected neuron{'s' if count != '1' else ''} in {layers}, ")


def test_frozen_checksums_keep_one_hash_per_block_when_projections_share_a_type():
    # At mlp.hidden a llama neuron is a down-projection column plus a gate row and an up row; gate
    # and up are both Linear, and a change to either must show in the checksums.
    model = tiny_model("llama")
    neuron_mask = NeuronMask("mlp.hidden", {0: [1, 2]}, train="unselected")
    sums = frozen_checksums(model, neuron_mask)
    assert len(sums) == 3
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[1, 0] += 1.0
    changed = frozen_checksums(model, neuron_mask)
    assert sum(changed[k] != sums[k] for k in sums) == 1
