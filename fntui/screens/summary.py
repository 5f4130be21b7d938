"""Step 10: the forgetting report, where the files are, and the commands that replay the run
(here, or on a SLURM cluster)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Button, Input, Static

from fnapi.events import StageStarted
from fnapi.report import ForgettingReport
from fntui.messages import EngineEvent, MessageSink, RunExported
from fntui.screens.base import StepScreen, describe_error


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def report_view(report: ForgettingReport, estimated_seconds: float | None = None) -> Group:
    """Before/after scores, how much general knowledge was kept, drift and cost (with the time the
    run took beside the time estimated before it started)."""
    from fnapi.timing import format_duration

    scores = Table(box=None, padding=(0, 2), header_style="bold")
    for name, justify in (("measure", "left"), ("before", "right"), ("after", "right"), ("change", "right")):
        scores.add_column(name, justify=justify)
    for label, score in (("task", report.task), ("general questions, open-ended", report.generative),
                         ("probes, choice ranking", report.probes)):
        if score.before is None and score.after is None:
            continue
        scores.add_row(label + (f" (n={score.samples})" if score.samples else ""), _fmt(score.before),
                       _fmt(score.after), _fmt(score.change))
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    warnings = [Text(f"Warning: {warning}", style="bold red") for warning in report.warnings]
    leak = report.format_leak or {}
    if leak.get("flag"):
        warnings.append(Text(f"Warning: {100 * leak['share']:.0f}% of replies to general prompts look like the "
                             f"training task's answers (base model {100 * (leak.get('base_share') or 0):.0f}%): the "
                             "model has stopped answering general questions in its own words. Try a question below.",
                             style="bold red"))
    for label, score in (("open-ended retained", report.generative), ("probes retained (ranking)", report.probes)):
        if score.retained is not None:
            facts.add_row(label, f"{100 * score.retained:.1f}%")
    if report.chat_kl:
        facts.add_row("chat drift", f"{report.chat_kl['value']:.3g} nats/token on the base's replies")
    kl = "n/a" if report.kl_to_base is None else f"{report.kl_to_base:.3g}"
    facts.add_row("KL to base model", f"{kl} nats/token")
    share = f" ({100 * report.trainable_parameters / report.total_parameters:.2f}%)" if report.total_parameters else ""
    facts.add_row("trainable", f"{report.trainable_parameters:,} of {report.total_parameters:,} parameters{share}")
    facts.add_row("training", f"{report.steps} steps, final loss {_fmt(report.final_loss, 4)}")
    if report.total_seconds:
        estimated = "" if estimated_seconds is None else f" (estimated before the start: {format_duration(estimated_seconds)})"
        facts.add_row("time", f"{format_duration(report.total_seconds)}{estimated}")
    mask = report.mask or {}
    if mask.get("preset") not in (None, "none"):
        facts.add_row("mask", f"{mask.get('preset')}: " + (mask.get("in_words") or f"components {mask.get('components')}"))
    if report.frozen_weights_unchanged is not None:
        facts.add_row("frozen weights", "bit-identical after training" if report.frozen_weights_unchanged
                      else Text("CHANGED during training", style="red"))
    return Group(*warnings, scores, Text(""), facts)


def files_view(run_dir: Path) -> Text:
    """The run folder and what it holds."""
    text = Text.assemble(("Files in ", "bold"), (f"{run_dir}/", "bold"), "\n")
    try:
        entries = sorted(run_dir.iterdir(), key=lambda p: p.name)
    except OSError:
        return text.append("(the folder cannot be read)")
    text.append("  ".join(p.name + ("/" if p.is_dir() else "") for p in entries if not p.name.startswith(".")))
    return text


class SummaryScreen(StepScreen):
    STEP = "summary"
    TITLE = "Summary"
    HINT = "What the run changed. The recipe replays headless and gives the same result."

    def compose_body(self) -> ComposeResult:
        choices = self.app.draft.choices
        if choices.run_dir and choices.run_recipe not in (None, self.app.draft.recipe.fingerprint()):
            yield Static(Text("The recipe changed since the last run, so its results are not shown. "
                              "Go back to Run to run this recipe."), id="report")
            return
        run_dir = Path(choices.run_dir or "")
        report = self._report(run_dir)
        saved = choices.run_estimate or {}
        estimated = saved.get("seconds") if saved.get("recipe") == self.app.draft.recipe.fingerprint() else None
        yield Static(report_view(report, estimated) if report else Text("No report found in the run folder."),
                     id="report")
        yield Static(files_view(run_dir), id="files")
        path = (choices.recipe_path or "recipe.yaml")
        yield Static(Text.assemble(("Replay headless: ", "bold"), f"fntui replay {path}",
                                   ("   (or fnapi run ", "dim"), (f"{path}", "dim"), (")", "dim")), id="replay")
        yield Static(Text.assemble(("On a cluster: ", "bold"), f"fnapi slurm {path} --time 04:00:00 --submit",
                                   ("   (SLURM script with torchrun; memory check: fnapi estimate ", "dim"),
                                   (f"{path}", "dim"), (")", "dim")), id="cluster")
        if (run_dir / "adapter").is_dir() or (run_dir / "model").is_dir():
            yield Static(Text("Try it: ask the fine-tuned model and the base the same question", style="bold"),
                         id="try-title")
            with Horizontal(id="try-row"):
                yield Input(placeholder="a question, then Enter", id="try-prompt", compact=True)
                yield Button("Ask", id="try-ask", compact=True)
            yield Static("", id="try-answers", markup=False)
            yield Static(Text("Export it for other tools (into the run folder's export/)", style="bold"),
                         id="export-title")
            with Horizontal(id="export-row"):
                yield Button("Export transformers folder", id="export-hf", compact=True)
                yield Button("Export GGUF (f16)", id="export-gguf", compact=True)
            yield Static("", id="export-status", markup=False)
        yield Button("New run", id="new-run", compact=True)

    def _report(self, run_dir: Path) -> ForgettingReport | None:
        try:
            return ForgettingReport.from_dict(json.loads((run_dir / "report.json").read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            result: Any = self.app.session.run_result
            return getattr(result, "report", None)

    def load(self) -> None:
        self.query_one("#next", Button).display = False
        # Typing goes to the question box, and the view stays on the scores: focusing a widget
        # further down would scroll the before/after table out of an 80x24 screen.
        prompts = self.query("#try-prompt")
        (prompts.first() if prompts else self.query_one("#new-run", Button)).focus(scroll_visible=False)
        self.query_one("#body").scroll_home(animate=False)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "next":
            return False  # the last step
        return super().check_action(action, parameters)

    @on(Input.Submitted, "#try-prompt")
    @on(Button.Pressed, "#try-ask")
    def _ask(self) -> None:
        prompt = self.query_one("#try-prompt", Input).value.strip()
        if not prompt:
            self.query_one("#try-answers", Static).update("Type a question first.")
            return
        self.query_one("#try-answers", Static).update("Asking both models… (greedy, up to 64 tokens)")
        self.query_one("#try-ask", Button).disabled = True
        self.ask(prompt)

    @work(thread=True, exclusive=True, exit_on_error=False, group="ask")
    def ask(self, prompt: str) -> None:
        answers = self.app.engine.ask_run(self.app.draft.choices.run_dir, prompt)
        self.app.call_from_thread(self._answered, answers)

    def _answered(self, answers: Any) -> None:
        self.query_one("#try-ask", Button).disabled = False
        table = Table.grid(padding=(0, 1))
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        table.add_row("fine-tuned", answers.tuned or "(no answer)")
        table.add_row("base", answers.base or "(no answer)")
        self.query_one("#try-answers", Static).update(table)

    @on(Button.Pressed, "#export-hf")
    @on(Button.Pressed, "#export-gguf")
    def _export(self, event: Button.Pressed) -> None:
        to = "hf" if event.button.id == "export-hf" else "gguf"
        self._export_buttons(disabled=True)
        self.query_one("#export-status", Static).update("Exporting… (merging the adapter and mask, writing, "
                                                        "checking against the run)")
        self.export(to)

    def _export_buttons(self, *, disabled: bool) -> None:
        for button in self.query("#export-row Button"):
            button.disabled = disabled

    @work(thread=True, exclusive=True, exit_on_error=False, group="export")
    def export(self, to: str) -> None:
        result = self.app.engine.export(self.app.draft.choices.run_dir, to, sink=MessageSink(self))
        self.post_message(RunExported(result))

    @on(EngineEvent)
    def _export_stage(self, message: EngineEvent) -> None:
        if isinstance(message.event, StageStarted):
            self.query_one("#export-status", Static).update(f"Exporting… {message.event.stage}"
                                                            + (f": {message.event.description}"
                                                               if message.event.description else ""))

    @on(RunExported)
    def _exported(self, message: RunExported) -> None:
        result = message.result
        self._export_buttons(disabled=False)
        self.query_one("#export-status", Static).update(
            f"Written: {result.path} ({result.bytes / 2**20:.1f} MiB in {result.seconds:.0f} s); its logits are within "
            f"{result.max_abs_logit_diff:.2g} of the run's model")

    def work_failed(self, group: str, error: BaseException) -> bool:
        if group == "export":
            self._export_buttons(disabled=False)
            self.query_one("#export-status", Static).update(f"Could not export: {describe_error(error)}")
            return True
        if group != "ask":
            return False
        self.query_one("#try-ask", Button).disabled = False
        self.query_one("#try-answers", Static).update(f"Could not ask: {describe_error(error)}")
        return True

    @on(Button.Pressed, "#new-run")
    def _new_run(self) -> None:
        self.app.new_run()
