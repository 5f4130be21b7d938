"""Drafts: saved after every step, so quitting loses nothing; ``fntui --resume`` reopens them."""

from __future__ import annotations

import pytest
from textual.widgets import Input

from fntui import cli
from fntui.app import FntuiApp
from fntui.drafts import DraftError, DraftStore
from fntui.screens.training import TrainingScreen
from tests.tui.helpers import TERMINAL, make_app, settle

pytestmark = pytest.mark.anyio


async def test_each_next_saves_the_draft_with_its_step_and_recipe(drafts):
    app = make_app(drafts)
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        assert drafts.list() == []  # nothing chosen yet, nothing written
        saved_steps = []
        for _ in ("hardware", "auth", "model"):
            await pilot.press("ctrl+n")
            await settle(pilot)
            saved = drafts.load(app.draft.id)
            saved_steps.append(saved.step)
            assert saved.recipe == app.draft.recipe
        assert saved_steps == ["hardware", "auth", "model"]
        # the hardware step applied the fixed machine's recommendation to the saved recipe
        assert drafts.load(app.draft.id).recipe.model.device == "cpu"
        await pilot.press("ctrl+b")
        await settle(pilot)
        assert drafts.load(app.draft.id).step == "auth"


async def test_quitting_keeps_the_draft_and_resume_reopens_it_with_its_fields(drafts):
    app = make_app(drafts, step="training", **{"train.steps": 7, "name": "kept"})
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+q")
    draft = cli.choose_draft(DraftStore())
    assert (draft.id, draft.step, draft.recipe.train.steps, draft.recipe.name) == (app.draft.id, "training", 7, "kept")

    again = FntuiApp(engine=app.engine, drafts=drafts, draft=draft)
    async with again.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        assert isinstance(again.screen, TrainingScreen)
        assert again.screen.query_one("#steps", Input).value == "7"
        assert again.screen.query_one("#run-name", Input).value == "kept"


def test_resume_flag_opens_the_latest_draft_and_asks_when_there_are_several(drafts, monkeypatch):
    first = drafts.new()
    first.step = "data"
    drafts.save(first)
    opened = []
    monkeypatch.setattr(FntuiApp, "run", lambda self: opened.append(self.draft))
    assert cli.main(["--resume"]) == 0
    assert [(d.id, d.step) for d in opened] == [(first.id, "data")]

    second = drafts.new()
    second.step = "model"
    drafts.save(second)
    asked = []
    picked = cli.choose_draft(drafts, ask=lambda choices: asked.append([d.id for d in choices]) or choices[-1])
    assert len(asked[0]) == 2 and picked.id in asked[0]


def test_a_damaged_draft_is_reported_by_name(drafts):
    draft = drafts.new()
    drafts.save(draft)
    drafts.recipe_path(draft.id).write_text("train: {steps: -1}\n")
    with pytest.raises(DraftError, match=draft.id):
        drafts.load(draft.id)
    assert drafts.list() == []


def test_wizard_choices_are_typed_and_saved_with_the_draft(tmp_path):
    from pydantic import ValidationError

    from fntui.drafts import WizardChoices

    store = DraftStore(root=tmp_path)
    draft = store.new()
    draft.choices.template_mode = "load"
    draft.choices.run_dir = "runs/demo"
    with pytest.raises(ValidationError):
        draft.choices.template_mode = "sideways"  # checked on assignment, not when the file is read back
    store.save(draft)
    assert store.load(draft.id).choices == WizardChoices(template_mode="load", run_dir="runs/demo")
    state = store.state_path(draft.id)
    state.write_text(state.read_text().replace('"run_dir": "runs/demo"', '"run_dir": 7'))
    with pytest.raises(DraftError, match=r"invalid draft\n  extras.run_dir: Input should be a valid string"):
        store.load(draft.id)
