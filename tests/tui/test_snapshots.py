"""A picture of every screen at both supported sizes, 80x24 and 120x36 (SVG snapshots under
__snapshots__/).

Update them after an intended change with ``pytest tests/tui/test_snapshots.py --snapshot-update``
and look at the report. Everything shown is fixed: the machine (a fixed hardware report), the
clock (draft ids), paths (relative, in a fresh working folder) and the run (a fake with fixed
events), and cursors do not blink.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Input

from fntui.app import FntuiApp
from fntui.engine import Engine
from tests.tui.helpers import make_app, settle

#: The sizes every screen is pictured at: the smallest supported terminal and a common large one.
SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((120, 36), id="120x36")]


@pytest.mark.parametrize("size", SIZES)
def test_welcome(snap_compare, drafts, size):
    assert snap_compare(make_app(drafts), terminal_size=size, run_before=settle)


@pytest.mark.parametrize("size", SIZES)
def test_welcome_open_recipe(snap_compare, drafts, size):
    async def run_before(pilot):
        pilot.app.screen.query_one("#start").focus()
        await pilot.press("down", "enter")
        await settle(pilot)

    assert snap_compare(make_app(drafts), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_hardware(snap_compare, drafts, size):
    assert snap_compare(make_app(drafts, step="hardware"), terminal_size=size, run_before=settle)


@pytest.mark.parametrize("size", SIZES)
def test_auth_offline(snap_compare, drafts, size):
    assert snap_compare(make_app(drafts, step="auth"), terminal_size=size, run_before=settle)


@pytest.mark.parametrize("size", SIZES)
def test_model_checked(snap_compare, drafts, size):
    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("enter")  # load and check the tiny model
        await settle(pilot)

    assert snap_compare(make_app(drafts, step="model"), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_data_preview(snap_compare, drafts, size):
    app = make_app(drafts, step="data", **{"data.path": "data/sums.jsonl", "data.max_length": 40})
    assert snap_compare(app, terminal_size=size, run_before=settle)


@pytest.mark.parametrize("size", SIZES)
def test_template_loaded(snap_compare, drafts, size):
    app = make_app(drafts, step="template", extras={"template_mode": "load"},
                   **{"template.path": "templates/demo.json"})
    assert snap_compare(app, terminal_size=size, run_before=settle)


@pytest.mark.parametrize("size", SIZES)
def test_template_build_settings(snap_compare, drafts, size):
    settings = {"template.components": 10, "template.samples": 64, "template.max_length": 128, "template.runs": 5}
    assert snap_compare(make_app(drafts, step="template", **settings), terminal_size=size, run_before=settle)


@pytest.mark.parametrize("size", SIZES)
def test_networks_picked(snap_compare, drafts, size):
    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("down", "down", "space")  # pick #1
        await settle(pilot)

    app = make_app(drafts, step="networks", **{"template.path": "templates/demo.json"})
    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_training_with_inline_errors(snap_compare, drafts, size):
    async def run_before(pilot):
        await settle(pilot)
        steps = pilot.app.screen.query_one("#steps", Input)
        steps.focus()
        steps.value = "ten"
        await settle(pilot)

    assert snap_compare(make_app(drafts, step="training"), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_training_prefilled(snap_compare, drafts, size):
    app = make_app(drafts, step="training", extras={}, **{"template.path": "templates/demo.json",
                                                          "mask.components": [0, 1], "mask.preset": "protect"})
    assert snap_compare(app, terminal_size=size, run_before=settle)


@pytest.mark.parametrize("size", SIZES)
def test_training_advanced_open(snap_compare, drafts, size):
    async def run_before(pilot):
        await settle(pilot)
        fold = pilot.app.screen.query_one("#advanced")
        fold.collapsed = False
        await settle(pilot)
        pilot.app.screen.query_one("#seed", Input).focus()  # scrolls the fold's last field into view
        await settle(pilot)

    app = make_app(drafts, step="training", **{"train.steps": 15})
    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_run_finished(snap_compare, drafts, size):
    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("ctrl+n")
        await settle(pilot)

    app = make_app(drafts, step="run", name="demo", extras={"recipe_path": "demo.yaml"})
    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_summary(snap_compare, drafts, size):
    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("ctrl+n")  # run (fake)
        await settle(pilot)
        await pilot.press("ctrl+n")  # summary
        await settle(pilot)

    app = make_app(drafts, step="run", name="demo", extras={"recipe_path": "demo.yaml"})
    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_recipe_preview(snap_compare, drafts, size):
    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("ctrl+r")
        await settle(pilot)

    app = make_app(drafts, step="model", **{"name": "preview", "train.steps": 3})
    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_browser_component(snap_compare, workdir, size):
    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("down", "enter")
        await settle(pilot)

    app = FntuiApp(engine=Engine(), browse=Path("templates/demo.json"))
    assert snap_compare(app, terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_compare(snap_compare, workdir, size):
    app = FntuiApp(engine=Engine(), browse=Path("templates/demo.json"), compare=Path("templates/other.json"))
    assert snap_compare(app, terminal_size=size, run_before=settle)


@pytest.mark.parametrize("size", SIZES)
def test_browser_neuron(snap_compare, workdir, size):
    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("down", "enter", "down", "enter", "down")  # #0, layer 0, its first neuron
        await settle(pilot)

    app = FntuiApp(engine=Engine(), browse=Path("templates/demo.json"))
    assert snap_compare(app, terminal_size=size, run_before=run_before)




@pytest.mark.parametrize("size", SIZES)
def test_compare_prompt(snap_compare, workdir, size):
    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("c")  # asks which template to compare with
        await settle(pilot)

    app = FntuiApp(engine=Engine(), browse=Path("templates/demo.json"))
    assert snap_compare(app, terminal_size=size, run_before=run_before)
