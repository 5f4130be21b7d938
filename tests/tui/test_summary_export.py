"""The Summary's export buttons: the run, merged with its adapter, written into the run folder
through the engine, with the stages shown while it works and the check's result afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Button

from fntui.screens.summary import SummaryScreen
from tests.tui.helpers import TERMINAL, add_random_adapter, make_app, settle, text_of

pytestmark = pytest.mark.anyio


async def test_the_summary_exports_the_run_as_gguf_and_as_a_transformers_folder(drafts):
    import gguf
    from transformers import AutoModelForCausalLM

    from fnapi.events import StageStarted
    from fntui.messages import EngineEvent

    seen: list = []
    app = make_app(drafts, step="run", name="demo", extras={"recipe_path": "demo.yaml"})
    async with app.run_test(size=TERMINAL, message_hook=seen.append) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+n")  # run (fake): the folder gets a recipe and a report
        await settle(pilot)
        run_dir = Path(app.draft.choices.run_dir)
        add_random_adapter(run_dir)  # what a LoRA run leaves
        await pilot.press("ctrl+n")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, SummaryScreen)

        screen.query_one("#export-gguf", Button).press()
        await settle(pilot)
        status = " ".join(text_of(screen.query_one("#export-status")).split())
        file = run_dir / "export" / "demo.f16.gguf"
        assert f"Written: {app.engine.resolve(file)}" in status and "of the run's model" in status, status
        assert gguf.GGUFReader(file).fields["general.architecture"].contents() == "llama"
        stages = {m.event.stage for m in seen if isinstance(m, EngineEvent) and isinstance(m.event, StageStarted)}
        assert {"merge", "write", "verify"} <= stages  # the screen was told what the export was doing
        assert not screen.query_one("#export-gguf", Button).disabled

        screen.query_one("#export-hf", Button).press()
        await settle(pilot)
        assert f"Written: {app.engine.resolve(run_dir / 'export' / 'hf')}" in " ".join(text_of(screen.query_one("#export-status")).split())
        assert AutoModelForCausalLM.from_pretrained(run_dir / "export" / "hf").config.model_type == "llama"


async def test_an_export_that_fails_says_why_and_gives_the_buttons_back(drafts):
    app = make_app(drafts, step="run", name="demo", extras={"recipe_path": "demo.yaml"})
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+n")
        await settle(pilot)
        run_dir = Path(app.draft.choices.run_dir)
        add_random_adapter(run_dir)
        await pilot.press("ctrl+n")
        await settle(pilot)
        screen = app.screen
        (run_dir / "recipe.yaml").write_text("version: 1\nmodel: {name: tiny-llama}\nnot_a_section: 1\n")
        screen.query_one("#export-hf", Button).press()
        await settle(pilot)
        status = " ".join(text_of(screen.query_one("#export-status")).split())
        assert status.startswith("Could not export:") and "not_a_section" in status
        assert not screen.query_one("#export-hf", Button).disabled
        assert not (run_dir / "export").exists()
