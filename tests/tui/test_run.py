"""The run step: live panes fed from a worker thread, coalesced progress, keys answered while the
run works, cancel at the next step, and the summary afterwards."""

from __future__ import annotations

import asyncio
import re
import threading
import time

import pytest
from textual import events
from textual.widgets import Button, DataTable, Input

from fnapi.events import Metric, Progress
from fntui.messages import EngineEvent
from fntui.screens.recipe_preview import RecipePreviewScreen
from fntui.screens.summary import SummaryScreen
from fntui.widgets.loss_plot import LossPlot
from tests.tui.helpers import TERMINAL, FakeRun, make_app, settle, text_of

pytestmark = pytest.mark.anyio


def test_progress_messages_of_one_stage_coalesce_but_metrics_never_do():
    progress = EngineEvent(Progress(stage="train", completed=1, total=4))
    assert progress.can_replace(EngineEvent(Progress(stage="train", completed=2, total=4)))
    assert not progress.can_replace(EngineEvent(Progress(stage="capture", completed=2, total=4)))
    assert not EngineEvent(Metric(stage="train", values={"loss": 1.0}, step=1)).can_replace(
        EngineEvent(Metric(stage="train", values={"loss": 0.9}, step=2)))


async def test_run_fills_the_panes_and_the_summary(drafts):
    seen: list = []
    app = make_app(drafts, step="run", name="demo", extras={"recipe_path": "demo.yaml"})
    async with app.run_test(size=TERMINAL, message_hook=seen.append) as pilot:
        await settle(pilot)
        # The time estimate (fixed here: 20 + 50 + 20 s) is shown before Start and kept with the draft
        assert text_of(app.screen.query_one("#run-estimate")).strip() == (
            "Estimated time on this machine: about 1 min 30 s (train 50 s, baseline 20 s, evaluate 20 s)")
        assert app.draft.choices.run_estimate["seconds"] == 90.0
        await pilot.press("ctrl+n")
        await settle(pilot)
        screen = app.screen
        assert screen.state == "finished"
        assert screen.query_one(LossPlot).points == [(1.0, 3.0), (2.0, 1.5), (3.0, 1.0), (4.0, 0.75)]
        table = screen.query_one("#metrics", DataTable)
        assert table.get_row("train/loss") == ["loss", "0.75", "4"]
        metrics = [m.event for m in seen if isinstance(m, EngineEvent) and isinstance(m.event, Metric)]
        assert len(metrics) == 4  # every metric reached the screen
        assert app.draft.choices.run_dir == "runs/demo"
        assert drafts.load(app.draft.id).choices.run_dir == "runs/demo"  # saved: a resume shows the summary

        await pilot.press("ctrl+n")
        await settle(pilot)
        assert isinstance(app.screen, SummaryScreen)
        report = text_of(app.screen.query_one("#report"))
        assert "0.100" in report and "0.800" in report and "96.7%" in report
        assert re.search(r"time +1 min 15 s \(estimated before the start: 1 min 30 s\)", report)  # beside the actual
        assert "fntui replay demo.yaml" in text_of(app.screen.query_one("#replay"))


async def test_a_flood_of_progress_coalesces_and_keys_are_answered_within_200_ms(drafts):
    seen: list = []
    gate = threading.Event()
    fake = FakeRun(steps=1000, flood=400, busy=0.03, gate=gate)  # runs until cancelled below
    app = make_app(drafts, step="run", run_fn=fake)
    async with app.run_test(size=TERMINAL, message_hook=seen.append) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+n")
        gate.set()
        await asyncio.sleep(0.3)  # the run is flooding the screen now
        assert app.screen.state == "running"
        latencies = []
        for _ in range(3):  # the best of three: the OS may pause any process on a busy machine
            started = time.perf_counter()
            app._driver.send_message(events.Key("ctrl+r", None))  # as the terminal would deliver it
            while not isinstance(app.screen, RecipePreviewScreen):
                await asyncio.sleep(0.005)
            latencies.append(time.perf_counter() - started)
            app._driver.send_message(events.Key("escape", None))
            while isinstance(app.screen, RecipePreviewScreen):
                await asyncio.sleep(0.005)
        assert app.screen.state == "running"  # all of it happened while the run was working
        await pilot.press("escape")
        await settle(pilot)
        assert app.screen.state == "cancelled"
    handled = sum(1 for m in seen if isinstance(m, EngineEvent) and isinstance(m.event, Progress))
    assert min(latencies) < 0.2, f"keys took {[round(t * 1000) for t in latencies]} ms while the run flooded the screen"
    assert handled < fake.progress_sent  # superseded progress messages were dropped, not queued


async def test_cancel_stops_at_the_next_step_and_start_resumes(drafts):
    gate = threading.Event()
    fake = FakeRun(steps=4, gate=gate)
    app = make_app(drafts, step="run", run_fn=fake, extras={"recipe_path": "demo.yaml", "train_prefilled": True})
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert app.screen.state == "running"
        await pilot.press("ctrl+b")  # Back is refused while running
        assert app.draft.step == "run"
        await pilot.press("escape")
        assert app.screen.state == "cancelling"
        await pilot.pause()
        button = app.screen.query_one("#next", Button)
        assert str(button.label) == "Cancelling…" and button.size.width >= len("Cancelling…")  # not cut
        gate.set()
        await settle(pilot)
        assert app.screen.state == "cancelled"
        assert "Next resumes" in str(app.screen.query_one(".progress-stage").render())
        assert app.draft.choices.run_dir is None

        await pilot.press("ctrl+n")  # resume
        await settle(pilot)
        assert app.screen.state == "finished" and len(fake.calls) == 2


async def test_a_changed_recipe_does_not_show_the_old_run_as_its_result(drafts):
    app = make_app(drafts, step="run", name="demo", extras={"recipe_path": "demo.yaml"})
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+n")  # run
        await settle(pilot)
        assert app.screen.state == "finished"
        await pilot.press("ctrl+b")  # back to Training: another method and name
        await settle(pilot)
        assert app.draft.step == "training"
        app.screen.query_one("#run-name", Input).value = "other"
        await settle(pilot)
        await pilot.press("ctrl+n")
        await settle(pilot)
        assert app.draft.step == "run" and app.draft.recipe.name == "other"
        assert app.screen.state == "ready" and str(app.screen.query_one("#next", Button).label) == "Start ▶"
        assert app.draft.choices.run_dir is None


async def test_ctrl_q_during_a_run_asks_first_then_stops_it_and_says_the_draft_is_saved(drafts):
    gate = threading.Event()
    fake = FakeRun(steps=4, gate=gate)
    app = make_app(drafts, step="run", run_fn=fake, extras={"recipe_path": "demo.yaml", "train_prefilled": True})
    messages: list = []
    exit_app = app.exit
    app.exit = lambda *args, **kwargs: (messages.append(kwargs.get("message")), exit_app(*args, **kwargs))
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert app.screen.state == "running"
        await pilot.press("ctrl+q")  # only asks
        await pilot.pause()
        assert app.is_running and app.screen.state == "running" and not app.screen.cancel.is_set()
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert app.screen.cancel.is_set()
        gate.set()
    assert messages and "Draft saved" in str(messages[0]) and "fntui --resume" in str(messages[0])
    assert drafts.load(app.draft.id).step == "run"


async def test_a_stopped_run_of_this_recipe_is_offered_as_a_resume_from_its_step(drafts):
    from pathlib import Path

    app = make_app(drafts, step="run", name="demo", extras={"recipe_path": "demo.yaml"})
    recipe = app.draft.recipe
    folder = Path("runs/demo")
    (folder / "checkpoints" / "checkpoint-7").mkdir(parents=True)
    (folder / "checkpoints" / "checkpoint-7" / "fnapi_state.json").write_text(
        '{"format": "fnapi.train-state/1", "step": 7, "seed": 0, "losses": [[5, 2.5], [7, 2.0]]}')
    (folder / "checkpoints" / "checkpoint-9").mkdir()  # cut off before its state file: not a resume point
    recipe.replace(**{"output.dir": str(folder)}).to_yaml(folder / "recipe.yaml")
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        assert app.screen.state == "cancelled"
        assert str(app.screen.query_one("#next", Button).label) == "Resume ▶"
        note = str(app.screen.query_one(".progress-stage").render())
        assert f"Resume from step 7 of {recipe.train.steps}" in note and "runs/demo" in note
        assert app.screen.query_one(LossPlot).points == [(5.0, 2.5), (7.0, 2.0)]  # the curve so far


async def test_the_summary_asks_the_fine_tuned_model_and_the_base_side_by_side(drafts):
    from pathlib import Path

    from fnapi.eval_target import ask_run
    from tests.tui.helpers import add_random_adapter

    app = make_app(drafts, step="run", name="demo", extras={"recipe_path": "demo.yaml"})
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+n")  # run (fake): the folder gets a recipe and a report
        await settle(pilot)
        add_random_adapter(Path(app.draft.choices.run_dir))  # what a LoRA run leaves
        await pilot.press("ctrl+n")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, SummaryScreen)
        await pilot.click("#try-ask")  # nothing typed yet
        await settle(pilot)
        assert text_of(screen.query_one("#try-answers")).strip() == "Type a question first."
        prompt = screen.query_one("#try-prompt", Input)
        prompt.focus()
        prompt.value = "What is two plus two?"
        await pilot.press("enter")
        await settle(pilot)
        expected = ask_run(app.draft.choices.run_dir, "What is two plus two?")
        shown = text_of(screen.query_one("#try-answers"))
        assert f"fine-tuned {expected.tuned}".strip() in " ".join(shown.split())
        assert f"base {expected.base}".strip() in " ".join(shown.split())
        assert not screen.query_one("#try-ask", Button).disabled


async def test_at_80x24_the_summary_opens_on_its_scores_with_typing_going_to_the_question_box(drafts):
    """Focus on 'New run' scrolled the scores out of an 80x24 view, and a question typed at once
    went nowhere until Enter pressed 'New run' and left the summary."""
    from pathlib import Path

    from tests.tui.helpers import add_random_adapter

    app = make_app(drafts, step="run", name="demo", extras={"recipe_path": "demo.yaml"})
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+n")
        await settle(pilot)
        add_random_adapter(Path(app.draft.choices.run_dir))
        await pilot.press("ctrl+n")
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, SummaryScreen)
        assert screen.query_one("#body").scroll_y == 0  # the before/after table is on screen
        assert app.focused is screen.query_one("#try-prompt", Input)
        await pilot.press("h", "i", "enter")
        await settle(pilot)
        assert app.screen is screen and screen.query_one("#try-prompt", Input).value == "hi"
        assert text_of(screen.query_one("#try-answers")).strip() != ""


async def test_the_run_estimate_is_measured_on_the_loaded_model_when_no_timer_is_given(drafts, tmp_path):
    from fntui.engine import Engine

    app = make_app(drafts, step="run", name="timed", **{"train.steps": 3, "eval.task_samples": 4,
                                                         "eval.probe_samples": 8, "eval.kl_prompts": 2,
                                                         "data.max_samples": 40})
    app.engine = Engine(run_fn=FakeRun(), hardware=app.engine.detect_hardware())  # the real timer
    async with app.run_test(size=TERMINAL) as pilot:
        await settle(pilot)
        line = text_of(app.screen.query_one("#run-estimate"))
        assert line.startswith("Estimated time on this machine: about "), line
        saved = app.draft.choices.run_estimate
        assert {s["stage"] for s in saved["stages"]} == {"baseline", "train", "validate", "evaluate"}
        assert next(s for s in saved["stages"] if s["stage"] == "train")["detail"].startswith("3 steps of ")


async def test_the_estimate_counts_its_seconds_and_gives_way_to_the_run(drafts):
    release = threading.Event()
    app = make_app(drafts, step="run", name="hurry")

    def slow_timer(recipe):
        release.wait(10)
        raise AssertionError("unreachable: the run started first")

    app.engine._timer = slow_timer
    async with app.run_test(size=TERMINAL) as pilot:
        await pilot.pause(1.2)
        line = app.screen.query_one("#run-estimate")
        assert re.match(r"Estimated time: measuring this machine's speed on the recipe's sizes… [1-9] s",
                        text_of(line).strip())
        await pilot.press("ctrl+n")  # start before the estimate is done
        await pilot.pause()
        assert text_of(line).strip() == "Estimated time: not measured (the run started first)"
        release.set()
        await settle(pilot)
        assert app.screen.state == "finished"
        assert text_of(line).strip() == "Estimated time: not measured (the run started first)"
