"""A picture of every screen (SVG snapshots under __snapshots__/).

Update them after an intended change with ``pytest tests/tui/test_snapshots.py --snapshot-update``
and look at the report. Everything shown is fixed: the machine (a fixed hardware report), the
clock (draft ids), paths (relative, in a fresh working folder) and the run (a fake with fixed
events), and cursors do not blink.
"""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Input

from fntui.app import FntuiApp
from fntui.engine import Engine
from tests.tui.helpers import TERMINAL, make_app, settle

NARROW = (80, 24)
WIDE = (140, 40)


def test_welcome(snap_compare, drafts):
    assert snap_compare(make_app(drafts), terminal_size=TERMINAL, run_before=settle)


def test_welcome_open_recipe_at_80x24(snap_compare, drafts):
    async def run_before(pilot):
        pilot.app.screen.query_one("#start").focus()
        await pilot.press("down", "enter")
        await settle(pilot)

    assert snap_compare(make_app(drafts), terminal_size=NARROW, run_before=run_before)


def test_hardware(snap_compare, drafts):
    assert snap_compare(make_app(drafts, step="hardware"), terminal_size=TERMINAL, run_before=settle)


def test_auth_offline(snap_compare, drafts):
    assert snap_compare(make_app(drafts, step="auth"), terminal_size=TERMINAL, run_before=settle)


def test_model_checked(snap_compare, drafts):
    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("enter")  # load and check the tiny model
        await settle(pilot)

    assert snap_compare(make_app(drafts, step="model"), terminal_size=TERMINAL, run_before=run_before)


def test_data_preview(snap_compare, drafts):
    app = make_app(drafts, step="data", **{"data.path": "data/sums.jsonl", "data.max_length": 40})
    assert snap_compare(app, terminal_size=WIDE, run_before=settle)


def test_template_loaded(snap_compare, drafts):
    app = make_app(drafts, step="template", extras={"template_mode": "load"},
                   **{"template.path": "templates/demo.json"})
    assert snap_compare(app, terminal_size=TERMINAL, run_before=settle)


def test_template_build_settings_at_80x24(snap_compare, drafts):
    settings = {"template.components": 10, "template.samples": 64, "template.max_length": 128, "template.runs": 5}
    assert snap_compare(make_app(drafts, step="template", **settings), terminal_size=NARROW, run_before=settle)


def test_networks_picked(snap_compare, drafts):
    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("down", "down", "space")  # pick #1
        await settle(pilot)

    app = make_app(drafts, step="networks", **{"template.path": "templates/demo.json"})
    assert snap_compare(app, terminal_size=TERMINAL, run_before=run_before)


def test_training_with_inline_errors(snap_compare, drafts):
    async def run_before(pilot):
        await settle(pilot)
        steps = pilot.app.screen.query_one("#steps", Input)
        steps.focus()
        steps.value = "ten"
        await settle(pilot)

    assert snap_compare(make_app(drafts, step="training"), terminal_size=TERMINAL, run_before=run_before)


def test_training_prefilled_at_80x24(snap_compare, drafts):
    app = make_app(drafts, step="training", extras={}, **{"template.path": "templates/demo.json",
                                                          "mask.components": [0, 1], "mask.preset": "protect"})
    assert snap_compare(app, terminal_size=NARROW, run_before=settle)


def test_training_advanced_open_at_80x24(snap_compare, drafts):
    async def run_before(pilot):
        await settle(pilot)
        fold = pilot.app.screen.query_one("#advanced")
        fold.collapsed = False
        await settle(pilot)
        pilot.app.screen.query_one("#seed", Input).focus()  # scrolls the fold's last field into view
        await settle(pilot)

    app = make_app(drafts, step="training", **{"train.steps": 15})
    assert snap_compare(app, terminal_size=NARROW, run_before=run_before)


def test_run_finished(snap_compare, drafts):
    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("ctrl+n")
        await settle(pilot)

    app = make_app(drafts, step="run", name="demo", extras={"recipe_path": "demo.yaml"})
    assert snap_compare(app, terminal_size=TERMINAL, run_before=run_before)


def test_summary(snap_compare, drafts):
    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("ctrl+n")  # run (fake)
        await settle(pilot)
        await pilot.press("ctrl+n")  # summary
        await settle(pilot)

    app = make_app(drafts, step="run", name="demo", extras={"recipe_path": "demo.yaml"})
    assert snap_compare(app, terminal_size=TERMINAL, run_before=run_before)


def test_recipe_preview(snap_compare, drafts):
    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("ctrl+r")
        await settle(pilot)

    app = make_app(drafts, step="model", **{"name": "preview", "train.steps": 3})
    assert snap_compare(app, terminal_size=TERMINAL, run_before=run_before)


def test_browser_component(snap_compare, workdir):
    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("down", "enter")
        await settle(pilot)

    app = FntuiApp(engine=Engine(), browse=Path("templates/demo.json"))
    assert snap_compare(app, terminal_size=TERMINAL, run_before=run_before)


def test_compare(snap_compare, workdir):
    app = FntuiApp(engine=Engine(), browse=Path("templates/demo.json"), compare=Path("templates/other.json"))
    assert snap_compare(app, terminal_size=TERMINAL, run_before=settle)
