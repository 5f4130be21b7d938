"""Step 5: the training data: what was detected, which rows were kept, and what the model learns.

Enter in the path field (or a change of format or template) reads the data in a worker and shows
the detection report and the first examples rendered as the model sees them, trained tokens
highlighted. Format and field roles can be overridden. Next only goes on once the data as
currently set up has been read without error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Group
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.widget import Widget
from textual.widgets import Input, Select, Static

from fnapi.data.builtin import BUILTIN_TASKS
from fnapi.data.formats import FORMATS, ROLES
from fnapi.data.templating import TEMPLATES
from fnapi.errors import ModelError
from fnapi.recipe import Recipe
from fntui.messages import DataInspected
from fntui.screens.base import CheckBeforeNext, Form, StepScreen, describe_error
from fntui.widgets.fields import Field, PathSuggester

# The trainable tasks first (they are what this screen trains on), then the measuring sets.
BUILTIN_DATA = (*(f"builtin:{name}" for name in BUILTIN_TASKS), "builtin:text", "builtin:probes")
DATA_SUFFIXES = (".json", ".jsonl", ".ndjson", ".csv", ".tsv", ".parquet", ".txt")


def parse_fields(text: str) -> tuple[dict[str, str], str | None]:
    """``"question=user, answer=assistant"`` -> mapping, or an error message.

    >>> parse_fields("q=user, a=assistant")
    ({'q': 'user', 'a': 'assistant'}, None)
    """
    mapping: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        source, sep, role = (s.strip() for s in part.partition("="))
        if not sep or not source or not role:
            return {}, f"{part!r}: write source=role pairs separated by commas"
        if role not in ROLES:
            return {}, f"{part!r}: role {role!r} is not one of {', '.join(ROLES)}"
        mapping[source] = role
    return mapping, None


def fields_text(fields: dict[str, str]) -> str:
    return ", ".join(f"{source}={role}" for source, role in fields.items())


def report_view(preview: Any) -> Group:
    """The detection report: format, field roles, confidence, rows kept and skipped (and why), tokens."""
    report, tokens = preview.report, preview.tokens
    lines = [Text.assemble(("format ", "bold"), f"{report.format}",
                           f" (confidence {report.confidence:.2f}{', set by you' if report.overridden else ''})")]
    if report.fields:
        lines.append(Text.assemble(("fields ", "bold"), fields_text(report.fields).replace("=", " → ")))
    splits = " · ".join(f"{name} {counts['rows_kept']}" for name, counts in report.splits.items())
    lines.append(Text.assemble(("rows ", "bold"), f"{report.rows_kept} kept, {report.rows_skipped} skipped of "
                                                  f"{report.rows_total}" + (f" ({splits})" if splits else "")))
    for reason, count in report.skip_reasons.items():
        lines.append(Text(f"  skipped {count} × {reason}", style="yellow"))
    for example in report.skipped_examples:
        lines.append(Text(f"  row {example['row']}: {example['reason']}", style="yellow"))
    lines.append(Text.assemble(("tokens ", "bold"), f"mean {tokens['mean']}, max {tokens['max']}, "
                                                    f"{tokens['trained']} trained, {tokens['truncated']} cut at "
                                                    f"{preview.max_length}, {tokens['dropped']} left with nothing to train"))
    if 0 < tokens["dropped"] < tokens["rows"]:
        lines.append(Text(f"  {tokens['dropped']} examples lose every trained token at {preview.max_length} tokens "
                          "and will be left out", style="yellow"))
    lines.append(Text.assemble(("chat template ", "bold"), preview.template))
    return Group(*lines)


def preview_view(preview: Any) -> Group:
    """The first examples as the model sees them, trained tokens highlighted."""
    parts: list[Any] = [Text.assemble(("Preview: ", "bold"), ("trained tokens", "bold black on green"),
                                      " are what the model learns; the rest is context.")]
    for number, example in enumerate(preview.examples, start=1):
        where = f"row {example['row']}" if example["row"] is not None else f"example {number}"
        text = Text(f"{where} · {example['tokens']} tokens, {example['trained_tokens']} trained\n", style="bold")
        for segment in example["segments"]:
            text.append(segment["text"].replace("\n", "⏎\n"), style="black on green" if segment["trained"] else "")
        if example["truncated"]:
            text.append(f" … {example['tokens_cut']} more tokens cut at max tokens", style="red")
        parts.append(text)
    return Group(*parts)


class DataScreen(StepScreen):
    STEP = "data"
    TITLE = "Training data"
    HINT = ("A file (.json .jsonl .csv .tsv .parquet .txt), a folder of split files, a hub dataset id, or "
            "builtin:skill. Enter reads it and shows what was detected.")

    def __init__(self) -> None:
        super().__init__()
        self.inspected: str | None = None
        self.previews: dict[str, Any] = {}
        self.reading = CheckBeforeNext(self, group="data", key=self.key, passed=lambda: self.inspected,
                                       run=self.start_inspect)

    def compose_body(self) -> ComposeResult:
        data = self.app.draft.recipe.data
        yield Field("Dataset", Input(data.path, id="data-path", compact=True,
                                     suggester=PathSuggester(extra=BUILTIN_DATA, suffixes=DATA_SUFFIXES)),
                    key="data.path", help="enter reads it · → completes file names and builtin:…")
        yield Field("Format", Select([(f, f) for f in ("auto", *FORMATS)], value=data.format, allow_blank=False,
                                     id="data-format", compact=True), key="data.format")
        yield Field("Field roles", Input(fields_text(data.fields), id="data-fields", compact=True,
                                         placeholder="detected (override: question=user, answer=assistant)"),
                    key="data.fields")
        yield Field("Chat template", Select([(t, t) for t in TEMPLATES], value=data.chat_template,
                                            allow_blank=False, id="chat-template", compact=True),
                    key="data.chat_template")
        yield Field("Max tokens", Input(str(data.max_length), id="max-length", compact=True), key="data.max_length")
        yield Field("Max examples", Input("" if data.max_samples is None else str(data.max_samples),
                                          id="max-samples", compact=True, placeholder="all"),
                    key="data.max_samples")
        yield Static("", id="data-status", markup=False)
        yield Static("", id="data-report")
        yield Static("", id="data-preview")

    def load(self) -> None:
        self.query_one("#data-path", Input).focus()
        self.query_one("#data-preview").display = False
        recipe = self.validate()
        if recipe is not None:
            self.reading.start(recipe)

    @staticmethod
    def key(recipe: Recipe) -> str:
        return recipe.data.model_dump_json() + recipe.model.model_dump_json()

    def changes(self, form: Form) -> dict[str, Any]:
        path = form.text("data-path", required="enter a data file, folder, hub id or builtin:skill")
        if path and not path.startswith("builtin:"):
            if (Path(path).suffix.lower() in DATA_SUFFIXES or path.startswith((".", "/", "~"))) \
                    and not Path(path).expanduser().exists():
                form.fail("data-path", f"no such file or folder: {path}")
        fields, problem = parse_fields(form.text("data-fields") or "")
        if problem:
            form.fail("data-fields", problem)
        max_length = form.integer("max-length", minimum=1)
        loaded = self.app.session.model
        longest = getattr(getattr(loaded, "info", None), "context_length", None)
        if max_length and longest and max_length > longest:
            form.fail("max-length", f"the model reads at most {longest:,} tokens; use {longest:,} or fewer")
        changes = {
            "data.path": path, "data.format": form.raw("data-format"), "data.fields": fields,
            "data.chat_template": form.raw("chat-template"),
            "data.max_length": max_length,
            "data.max_samples": form.integer("max-samples", optional=True, minimum=1),
        }
        return changes

    def known_problems(self, recipe: Recipe) -> dict[str, str]:
        failure = self.reading.problems(recipe)
        if failure:
            return failure
        preview = self.previews.get(self.key(recipe))
        if preview is not None and preview.tokens["rows"] and preview.tokens["dropped"] == preview.tokens["rows"]:
            return {"max-length": f"at {recipe.data.max_length} tokens every example is cut before its answer, "
                                  "so nothing would be learned: raise max tokens"}
        return {}

    def edited(self, control: Widget) -> None:
        if control.id == "data-path":
            # What is shown belongs to the old path: a typo must not sit above another file's preview.
            self.query_one("#data-status", Static).update("")
            self.query_one("#data-report", Static).update("")
            self.query_one("#data-preview").display = False
            return
        if isinstance(control, Select):
            recipe, _ = self.check()
            if recipe is not None:
                self.reading.start(recipe)

    @on(Input.Submitted)
    def _submitted(self) -> None:
        recipe = self.validate(show_all=True)
        if recipe is not None:
            self.reading.start(recipe)

    async def before_next(self, recipe: Recipe) -> Recipe | None:
        return self.reading.before_next(recipe)

    def start_inspect(self, recipe: Recipe) -> None:
        self.query_one("#data-status", Static).update(f"Reading {recipe.data.path}…")
        self.inspect(recipe)

    @work(thread=True, exclusive=True, exit_on_error=False, group="data")
    def inspect(self, recipe: Recipe) -> None:
        engine = self.app.engine
        loaded = engine.load_model(recipe.model)
        self.post_message(DataInspected(engine.inspect_data(recipe.data, loaded.tokenizer), self.key(recipe)))

    @on(DataInspected)
    def _inspected(self, message: DataInspected) -> None:
        recipe = self.reading.current(message.key)
        if recipe is None:
            return
        self.inspected = message.key
        preview = self.previews[message.key] = message.preview
        cap = recipe.data.max_samples
        used = f"; training uses the first {cap}" if cap and cap < preview.report.rows_kept else ""
        self.query_one("#data-status", Static).update(f"✓ {preview.report.rows_kept} examples read from "
                                                     f"{recipe.data.path}{used}")
        self.query_one("#data-report", Static).update(report_view(preview))
        self.query_one("#data-preview", Static).update(preview_view(preview))
        self.query_one("#data-preview").display = True
        self.reading.proceed(self.validate(show_all=True))  # a preview can reveal a problem (all examples cut)

    def work_failed(self, group: str, error: BaseException) -> bool:
        if not self.reading.owns(group, error) or isinstance(error, ModelError):
            return False
        message = describe_error(error)
        chosen = Form(self).raw("data-format")
        if message.startswith("data.fields"):
            target = "data-fields"
        elif "data format" in message or (chosen != "auto" and f" {chosen}" in message):
            target = "data-format"
        else:
            target = "data-path"
        self.query_one("#data-status", Static).update("")
        self.query_one("#data-report", Static).update("")
        self.query_one("#data-preview").display = False
        return self.reading.failed(target, message)
