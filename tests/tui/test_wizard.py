"""The whole wizard, driven by keys on a tiny model and built-in data, then replayed headless.

The wizard builds a template, picks a network, writes the recipe and runs it with the real fnapi
runner; ``fntui replay`` then runs the written recipe again and must give the same template and
the same final loss.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from textual.widgets import Input

from fnapi.networks.template import Template
from fnapi.recipe import Recipe
from fntui.app import FntuiApp
from fntui.cli import main
from fntui.engine import Engine
from tests.tui.helpers import TERMINAL, TINY_MODEL, fixed_hardware, settle, text_of

pytestmark = pytest.mark.anyio


async def type_into(pilot, selector: str, text: str, *, by_keys: bool = False) -> None:
    """Focus a field and replace its text (``by_keys``: clear it and type key by key)."""
    field = pilot.app.screen.query_one(selector, Input)
    field.focus()
    if by_keys:
        await pilot.press("ctrl+u", *text)
    else:
        field.value = text
    await settle(pilot)


async def next_step(pilot, expected: str) -> None:
    await pilot.press("ctrl+n")
    await settle(pilot)
    assert pilot.app.draft.step == expected, text_of(pilot.app.screen.query_one("#banner"))


async def test_wizard_writes_a_recipe_that_replays_to_the_same_template_and_loss(drafts, workdir, capsys):
    app = FntuiApp(engine=Engine(hardware=fixed_hardware()), drafts=drafts)  # the real fnapi runner
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        await next_step(pilot, "hardware")
        await next_step(pilot, "auth")
        await next_step(pilot, "model")

        await type_into(pilot, "#model-spec", TINY_MODEL, by_keys=True)
        await next_step(pilot, "data")  # Next loads and checks the model, then goes on
        assert app.session.model.info.num_layers == 2

        await type_into(pilot, "#data-path", "builtin:skill")
        await type_into(pilot, "#max-length", "64")
        await type_into(pilot, "#max-samples", "24")
        await next_step(pilot, "template")

        await type_into(pilot, "#tpl-components", "3")
        await type_into(pilot, "#tpl-samples", "8")
        await type_into(pilot, "#tpl-max-length", "32")
        await type_into(pilot, "#tpl-runs", "2")
        await pilot.press("ctrl+n")  # builds the template and stays to show it
        await settle(pilot)
        assert app.draft.step == "template" and app.session.template is not None
        await next_step(pilot, "networks")

        app.screen.query_one("TemplateTree").focus()
        await pilot.press("down", "space")  # the cursor starts on the template: down to #0, space picks it
        await settle(pilot)
        await next_step(pilot, "training")

        await type_into(pilot, "#steps", "3")
        await type_into(pilot, "#batch-size", "2")
        await type_into(pilot, "#grad-accum", "1")
        await type_into(pilot, "#task-samples", "4")
        await type_into(pilot, "#probe-samples", "8")
        await type_into(pilot, "#logging-steps", "1")
        app.screen.query_one("#preset").focus()
        await pilot.press("down", "enter")  # none -> protect
        await type_into(pilot, "#run-name", "wizard-run")
        assert app.screen.query_one("#recipe-path", Input).value == "wizard-run.yaml"  # follows the name
        await next_step(pilot, "run")

        await pilot.press("ctrl+n")  # start
        await settle(pilot)
        assert app.screen.state == "finished", text_of(app.screen.query_one("#banner"))
        assert [step for step, _ in app.screen.query_one("LossPlot").points] == [1.0, 2.0, 3.0]
        await next_step(pilot, "summary")
        wizard_run = Path(app.draft.choices.run_dir)

    written = Recipe.from_yaml("wizard-run.yaml")
    template_path = written.template.path
    assert Path(template_path).is_file() and template_path.startswith("ica_templates/")
    expected = {
        "name": "wizard-run", "model.name": TINY_MODEL, "data.path": "builtin:skill", "data.max_length": 64,
        "data.max_samples": 24, "template.components": 3, "template.samples": 8, "template.runs": 2,
        "template.max_length": 32, "template.data": ["builtin:text"], "mask.preset": "protect",
        "mask.components": [0], "train.steps": 3, "train.logging_steps": 1, "train.batch_size": 2,
        "train.gradient_accumulation": 1, "train.save_steps": 1,  # follows the 3 steps: two checkpoints
        "eval.task_samples": 4, "eval.probe_samples": 8, "model.device": "cpu", "model.dtype": "float32",
    }
    assert written == Recipe().replace(**expected, **{"template.path": template_path})

    assert main(["replay", "wizard-run.yaml", "--output", "runs/replayed"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "runs/replayed"
    first = json.loads((wizard_run / "report.json").read_text())
    again = json.loads(Path("runs/replayed/report.json").read_text())
    assert again["final_loss"] == pytest.approx(first["final_loss"], rel=1e-6)
    assert first["steps"] == again["steps"] == 3
    used_by_wizard = Template.load(wizard_run / "template.json")
    used_by_replay = Template.load("runs/replayed/template.json")
    assert [c.neurons for c in used_by_replay.components] == [c.neurons for c in used_by_wizard.components]
    assert [c.neurons for c in used_by_wizard.components] == [c.neurons for c in Template.load(template_path).components]
