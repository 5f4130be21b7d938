"""Step 9: run the recipe with live panes: progress with ETA, loss curve, metrics, log, cancel.

The run happens in a worker thread that calls fnapi's runner with a sink posting messages here;
progress messages coalesce, so keys are answered while training runs. Escape sets the cancel
event: fnapi stops at its next step and keeps a checkpoint, and starting again resumes.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import Button, DataTable, RichLog, Static

from fnapi.errors import CancelledError, FnapiError
from fnapi.events import Log, Metric, RunCancelled, RunFailed, RunFinished, RunStarted
from fnapi.recipe import Recipe
from fntui.messages import EngineEvent, MessageSink, RunEnded
from fntui.screens.base import StepScreen, describe_error
from fntui.widgets.loss_plot import LossPlot
from fntui.widgets.progress_pane import ProgressPane


def format_metric(value: float) -> str:
    return f"{value:.4g}"


class RunScreen(StepScreen):
    STEP = "run"
    TITLE = "Run"
    HINT = "Next starts the run. esc cancels at the next step; starting again resumes from the last checkpoint."

    BINDINGS = [Binding("escape", "cancel", "Cancel run")]

    def __init__(self) -> None:
        super().__init__()
        self.cancel = threading.Event()
        self.estimating = threading.Event()  # set to stop the time estimate (a run is starting)
        self.state = "ready"  # ready | running | cancelling | finished | cancelled | failed

    def compose_body(self) -> ComposeResult:
        path = (self.app.draft.choices.recipe_path or "recipe.yaml")
        yield Static(f"Recipe {path} · replay it headless any time: fntui replay {path}", id="run-recipe",
                     markup=False)
        yield Static("", id="run-estimate", markup=False)
        yield ProgressPane(idle="Not started: press Next (ctrl+n) to run.", id="run-progress")
        with Horizontal(id="run-panes"):
            yield LossPlot(id="loss-plot")
            yield DataTable(id="metrics", show_cursor=False, zebra_stripes=True)
        yield RichLog(id="run-log", wrap=True, markup=False, max_lines=2000)

    def load(self) -> None:
        table = self.query_one("#metrics", DataTable)
        table.add_column("metric", key="metric")
        table.add_column("value", key="value")
        table.add_column("step", key="step")
        self.query_one("#loss-plot", LossPlot).border_title = "training loss"
        choices = self.app.draft.choices
        if choices.run_dir:
            if choices.run_recipe == self.app.draft.recipe.fingerprint():
                self.state = "finished"
            else:  # the recipe changed since that run: its results are not this recipe's
                choices.run_dir = None
                choices.run_recipe = None
        if self.state == "ready":
            self._show_resume_point()
        self._show_state()
        if self.state in ("ready", "cancelled"):
            self._measuring_since = time.monotonic()
            self._measuring = self.set_interval(1.0, self._show_measuring)
            self._show_measuring()
            self.estimate_time(self.app.draft.recipe)
        else:
            self._show_saved_estimate()

    def _show_measuring(self) -> None:
        seconds = int(time.monotonic() - self._measuring_since)
        self.query_one("#run-estimate", Static).update(
            f"Estimated time: measuring this machine's speed on the recipe's sizes… {seconds} s")

    def _stop_measuring(self) -> None:
        if getattr(self, "_measuring", None) is not None:
            self._measuring.stop()
            self._measuring = None

    @work(thread=True, exclusive=True, exit_on_error=False, group="estimate")
    def estimate_time(self, recipe: Recipe) -> None:
        estimate = self.app.engine.time_estimate(recipe, cancel=self.estimating)
        self.app.call_from_thread(self._estimated, recipe, estimate)

    def _estimated(self, recipe: Recipe, estimate: Any) -> None:
        self._stop_measuring()
        if self.estimating.is_set():  # the run started first: its line says so
            return
        self.app.draft.choices.run_estimate = {"recipe": recipe.fingerprint(), **estimate.to_dict()}
        self.app.save_draft()
        self._show_saved_estimate()

    def _show_saved_estimate(self) -> None:
        saved = self.app.draft.choices.run_estimate or {}
        if saved.get("recipe") == self.app.draft.recipe.fingerprint():
            from fnapi.timing import TimeEstimate

            self.query_one("#run-estimate", Static).update(
                f"Estimated time on this machine: {TimeEstimate.from_dict(saved).describe()}")

    def _show_resume_point(self) -> None:
        """A stopped run of this recipe is resumed, not started: say so, and from where."""
        from fnapi.rundir import resume_point

        recipe = self.app.draft.recipe
        try:
            found = resume_point(recipe)
        except OSError:
            return
        if found is None:
            return
        folder, step = found
        total = f" of {recipe.train.steps}" if recipe.train.steps else ""
        self.state = "cancelled"
        # The curve so far, from the checkpoint's own record: the resumed run only reports new steps.
        from fnapi.rundir import read_checkpoint_state

        try:
            saved = read_checkpoint_state(folder / "checkpoints" / f"checkpoint-{step}")
            losses = [(float(s), float(v)) for s, v in saved.get("losses", [])]
        except (OSError, ValueError, TypeError, FnapiError):
            losses = []
        plot = self.query_one("#loss-plot", LossPlot)
        for point_step, value in losses:
            plot.add(point_step, value)
        self.query_one(ProgressPane).note(f"Resume from step {step}{total}: a checkpoint of this recipe is saved "
                                          f"in {folder}. Next resumes it.")

    def _show_state(self) -> None:
        next_button = self.query_one("#next", Button)
        next_button.label = {"finished": "Summary ▶", "cancelled": "Resume ▶", "failed": "Retry ▶",
                             "running": "Running…", "cancelling": "Cancelling…"}.get(self.state, "Start ▶")
        next_button.disabled = self.state in ("running", "cancelling")
        self.query_one("#back", Button).disabled = self.state in ("running", "cancelling")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("back", "next") and self.state in ("running", "cancelling"):
            return False
        if action == "cancel":
            return self.state == "running"
        return super().check_action(action, parameters)

    async def before_next(self, recipe: Recipe) -> Recipe | None:
        if self.state == "finished":
            return recipe
        self.start(recipe)
        return None

    def start(self, recipe: Recipe) -> None:
        if self.state != "cancelled":  # a resumed run continues the curve it had drawn
            self.query_one("#loss-plot", LossPlot).clear()
            self.query_one("#metrics", DataTable).clear()
        self.estimating.set()  # the run needs both cores
        if getattr(self, "_measuring", None) is not None:
            self._stop_measuring()
            self.query_one("#run-estimate", Static).update("Estimated time: not measured (the run started first)")
        self.cancel = threading.Event()
        self.state = "running"
        self.show_banner(None)
        self.query_one(ProgressPane).reset("starting…")
        self._show_state()
        self.refresh_bindings()
        self.run_recipe(recipe)

    @work(thread=True, exclusive=True, exit_on_error=False, group="run")
    def run_recipe(self, recipe: Recipe) -> None:
        engine = self.app.engine
        engine.release_model()  # the run loads its own copy; do not hold two in memory
        result = engine.run(recipe, sink=MessageSink(self), cancel=self.cancel)
        self.post_message(RunEnded(result))

    def action_cancel(self) -> None:
        if self.state == "running":
            self.cancel.set()
            self.state = "cancelling"
            self.query_one(ProgressPane).note("Cancelling at the next step…")
            self._show_state()

    @on(EngineEvent)
    def _event(self, message: EngineEvent) -> None:
        event = message.event
        log = self.query_one("#run-log", RichLog)
        if isinstance(event, Metric):
            table = self.query_one("#metrics", DataTable)
            step = "" if event.step is None else str(event.step)
            for name, value in event.values.items():
                row = f"{event.stage}/{name}"  # the key; the name alone is shown (it says enough)
                if row in table.rows:
                    table.update_cell(row, "value", format_metric(value))
                    table.update_cell(row, "step", step)
                else:
                    table.add_row(name, format_metric(value), step, key=row)
            if "loss" in event.values and event.step is not None:
                self.query_one("#loss-plot", LossPlot).add(event.step, event.values["loss"])
        elif isinstance(event, Log):
            if event.level != "debug":
                where = f"[{event.stage}] " if event.stage else ""
                log.write(f"{where}{'' if event.level == 'info' else event.level + ': '}{event.message}")
        elif isinstance(event, RunStarted):
            log.write(f"run {event.name} started" + (f" in {event.run_dir}" if event.run_dir else ""))
        elif isinstance(event, RunFinished):
            log.write(f"run {event.name} finished in {event.seconds:.1f} s")
        elif isinstance(event, RunFailed):
            log.write(f"run failed{f' in {event.stage}' if event.stage else ''}: {event.error}")
        elif isinstance(event, RunCancelled):
            log.write(f"run stopped{f' in {event.stage}' if event.stage else ''}: {event.reason}")
        else:
            self.query_one(ProgressPane).show(event)

    @on(RunEnded)
    def _finished(self, message: RunEnded) -> None:
        result = message.result
        self.app.session.run_result = result
        self.app.draft.choices.run_dir = str(result.run_dir)
        self.app.draft.choices.run_recipe = self.app.draft.recipe.fingerprint()
        self.app.save_draft()
        self.state = "finished"
        self.query_one(ProgressPane).note(f"Finished: results in {result.run_dir}. Next shows the summary.")
        self._show_state()
        self.refresh_bindings()

    def work_failed(self, group: str, error: BaseException) -> bool:
        if group == "estimate":
            self._stop_measuring()
            if not isinstance(error, CancelledError) and not self.estimating.is_set():
                self.query_one("#run-estimate", Static).update(f"Estimated time: not available "
                                                              f"({describe_error(error)})")
            return True
        if group != "run":
            return False
        if isinstance(error, CancelledError):
            self.state = "cancelled"
            path = (self.app.draft.choices.recipe_path or "recipe.yaml")
            self.query_one(ProgressPane).note(
                f"Cancelled: {error.message}. Next resumes from there, or later: fntui replay {path}")
            handled = True
        else:
            self.state = "failed"
            self.query_one(ProgressPane).note("The run stopped with an error (see above).")
            handled = False
        self._show_state()
        self.refresh_bindings()
        return handled

    def on_unmount(self) -> None:
        self.cancel.set()
        self.estimating.set()
