"""The command palette lists the main actions."""

from __future__ import annotations

import pytest

from fntui.screens.data import DataScreen
from fntui.screens.recipe_preview import RecipePreviewScreen
from tests.tui.helpers import TERMINAL, make_app, settle

pytestmark = pytest.mark.anyio


async def test_palette_offers_the_main_actions_and_runs_them(drafts):
    app = make_app(drafts, step="template")
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        titles = [command.title for command in app.get_system_commands(app.screen)]
        for title in ("Show the recipe", "Browse a template", "Save the draft", "Next step", "Previous step",
                      "Go to step: Data", "Cancel"):
            assert title in titles
        assert "Go to step: Networks" not in titles  # only steps already reached

        await pilot.press("ctrl+p", *"show the recipe")
        await settle(pilot)  # the palette searches in a worker
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, RecipePreviewScreen)
        await pilot.press("escape")

        await pilot.press("ctrl+p", *"go to step: data")
        await settle(pilot)
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, DataScreen) and app.draft.step == "data"
