"""The Site type owns a site's width, which hook sees it, and which side of the down-projection it is."""

from __future__ import annotations

import typing

import pytest
import torch

from fnapi.errors import TemplateError
from fnapi.models.registry import get_adapter
from fnapi.models.tiny import HIDDEN_SIZE, INTERMEDIATE_SIZE, tiny_model
from fnapi.recipe import TemplateSection
from fnapi.sites import SITE_NAMES, SITES, site


def test_the_recipe_offers_exactly_the_sites_there_are():
    assert typing.get_args(TemplateSection.model_fields["site"].annotation) == SITE_NAMES == tuple(SITES)


@pytest.mark.parametrize("name, width", [("mlp.out", HIDDEN_SIZE), ("mlp.hidden", INTERMEDIATE_SIZE)])
def test_width_is_read_from_any_model_description(name, width):
    from fnapi.estimate import shape_of
    from fnapi.models.loading import describe

    model = tiny_model("llama")
    described = {"hidden_size": HIDDEN_SIZE, "intermediate_size": INTERMEDIATE_SIZE}
    assert site(name).width(described) == width
    assert site(name).width(describe(model, "tiny")) == width  # a ModelInfo
    assert site(name).width(shape_of(model, "tiny")) == width  # a ModelShape
    down = get_adapter(model).down_proj(model, 0)
    assert site(name).width_of(down.in_features, down.out_features) == width


def test_an_unknown_site_names_the_sites():
    with pytest.raises(TemplateError, match=r"site 'mlp\.mid' is unknown; use mlp\.out \(.*\), mlp\.hidden"):
        site("mlp.mid")


@pytest.mark.parametrize("name, width", [("mlp.out", HIDDEN_SIZE), ("mlp.hidden", INTERMEDIATE_SIZE)])
def test_observe_sees_the_site_and_can_replace_it(name, width):
    model = tiny_model("llama")
    down = get_adapter(model).down_proj(model, 0)
    ids = torch.tensor([[3, 4, 5]])
    seen = []
    handle = site(name).observe(down, lambda t: seen.append(t.shape[-1]))
    try:
        plain = model(ids).logits
    finally:
        handle.remove()
    assert seen == [width]
    handle = site(name).observe(down, torch.zeros_like)  # switch every neuron of the site off
    try:
        silenced = model(ids).logits
    finally:
        handle.remove()
    assert not torch.allclose(plain, silenced)
    assert torch.allclose(model(ids).logits, plain)  # removed: the model is as it was
