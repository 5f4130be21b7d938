"""Picking networks gives a mask the user cannot miss: protect by default, said in words, none only by choice."""

from __future__ import annotations

import pytest
from textual.widgets import Checkbox

from fnapi.recipe import Recipe
from tests.tui.helpers import TERMINAL, make_app, settle, text_of

pytestmark = pytest.mark.anyio


async def _pick_first_network_and_go_on(pilot) -> None:
    await settle(pilot)
    pilot.app.screen.query_one("TemplateTree").focus()
    await pilot.press("down", "space")  # the cursor starts on the template: down to #0, space picks it
    await settle(pilot)
    await pilot.press("ctrl+n")
    await settle(pilot)


async def test_networks_picked_and_training_left_as_it_is_gives_a_protect_mask(drafts):
    app = make_app(drafts, step="networks", **{"template.path": "templates/demo.json"})
    async with app.run_test(size=TERMINAL) as pilot:
        await _pick_first_network_and_go_on(pilot)
        assert app.draft.step == "training"
        assert app.draft.recipe.mask.preset == "protect" and app.draft.recipe.mask.components == [0]
        words = text_of(app.screen.query_one("#mask-words"))
        assert "1 network, 5 neurons at mlp.out in 2 layers: frozen" in words
        await pilot.press("ctrl+n")  # the Training step as it is
        await settle(pilot)
        assert app.draft.step == "run"
    written = Recipe.from_yaml(app.draft.choices.recipe_path)
    assert (written.mask.preset, written.mask.components) == ("protect", [0])


async def test_most_stable_also_sets_protect(drafts):
    app = make_app(drafts, step="networks", **{"template.path": "templates/demo.json"})
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        app.screen.query_one("#use-stable", Checkbox).value = True
        await settle(pilot)
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.draft.recipe.mask.preset == "protect" and app.draft.recipe.mask.components == "stable"
        assert "the 3 most stable networks, 13 neurons at mlp.out in 2 layers: frozen" in text_of(
            app.screen.query_one("#mask-words"))


async def test_none_is_kept_when_chosen_and_says_that_nothing_is_masked(drafts):
    app = make_app(drafts, step="networks", **{"template.path": "templates/demo.json"})
    async with app.run_test(size=TERMINAL) as pilot:
        await _pick_first_network_and_go_on(pilot)
        none = next(b for b in app.screen.query("#preset RadioButton") if b.name == "none")
        await pilot.click(none)  # protect -> none, on purpose
        await settle(pilot)
        assert "Networks are picked, but this trains the whole model without a mask" in text_of(
            app.screen.query_one("#mask-words"))
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.draft.recipe.mask.preset == "none"
        await pilot.press("ctrl+b", "ctrl+b")  # back to Networks, then Next again
        await settle(pilot)
        assert app.draft.step == "networks"
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.draft.step == "training" and app.draft.recipe.mask.preset == "none"


async def test_the_tree_ticks_the_most_stable_components_while_that_box_is_ticked(drafts):
    from textual.widgets import Input

    app = make_app(drafts, step="networks", **{"template.path": "templates/demo.json",
                                               "mask.components": [2]})
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        view = app.screen.query_one("TemplateView")
        assert view.selected == {2}
        app.screen.query_one("#use-stable", Checkbox).value = True
        app.screen.query_one("#top-stable", Input).value = "2"
        await settle(pilot)
        assert view.selected == {0, 1}  # stabilities 0.95 and 0.81
        app.screen.query_one("#use-stable", Checkbox).value = False
        await settle(pilot)
        assert view.selected == {2}  # the hand-picked set comes back
