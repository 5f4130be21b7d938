"""Step 6: the template: build one from activations with live progress, load a file, or go without.

A built template is saved under ``ica_templates/`` and the recipe records its path (with the
settings that built it), so replaying the recipe uses exactly the networks picked next. Building
runs in a worker; escape cancels it at the next step.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widget import Widget
from textual.widgets import Button, Input, RadioButton, RadioSet, Select, Static

from fnapi.errors import CancelledError, ModelError
from fnapi.events import Log
from fnapi.recipe import Recipe
from fntui.messages import EngineEvent, MessageSink, TemplateReady
from fntui.screens.base import CheckBeforeNext, Form, StepScreen, describe_error
from fntui.widgets.fields import Field, PathSuggester
from fntui.widgets.progress_pane import ProgressPane
from fntui.widgets.template_view import visible

MODES = (("build", "Build one from activations (ICA)"), ("load", "Load a template file"),
         ("none", "No template: train without masks"))
TOKENS_SHOWN = 4


def components_table(template: Any) -> Table:
    """One row per component, most stable first: id, neurons, stability, top tokens."""
    table = Table(box=None, padding=(0, 2), header_style="bold")
    for name, justify in (("id", "right"), ("neurons", "right"), ("stability", "right"), ("top tokens", "left")):
        table.add_column(name, justify=justify)
    for component in template.components_by_stability():
        tokens = [str(t.get("token", "")) if isinstance(t, dict) else str(t)
                  for t in component.stats.get("top_tokens", [])[:TOKENS_SHOWN]]
        stability = "n/a" if component.stability is None else f"{component.stability:.2f}"
        table.add_row(f"#{component.id}", str(component.size), stability,
                      Text("  ".join(visible(t) for t in tokens), style="dim"))
    return table


class TemplateScreen(StepScreen):
    STEP = "template"
    TITLE = "Template: the functional networks"
    HINT = ("Networks are groups of MLP neurons that fire together, found by ICA over activations. Next builds "
            "or loads the template; check the stability column, then Next again to pick networks.")

    BINDINGS = [Binding("escape", "cancel", "Cancel build")]

    def __init__(self) -> None:
        super().__init__()
        self.cancel = threading.Event()
        self.estimating = threading.Event()  # set to stop a build-time estimate
        self._estimate_timer: Any = None
        self.building = CheckBeforeNext(self, group="template", key=self.key,
                                        passed=lambda: self.app.session.template_key, run=self.start)

    def compose_body(self) -> ComposeResult:
        recipe = self.app.draft.recipe
        section = recipe.template
        mode = self.app.draft.choices.template_mode or ("load" if section and section.path else "build")
        with RadioSet(id="template-mode"):
            for name, label in MODES:
                yield RadioButton(label, name=name, value=name == mode)
        from fnapi.recipe import TemplateSection

        build = section if section is not None else TemplateSection()
        with Vertical(id="build-settings"):
            yield Field("Capture data", Input(", ".join(build.data) or "builtin:text", id="tpl-data", compact=True,
                                              suggester=PathSuggester(extra=("builtin:text", "builtin:skill"))),
                        key="template.data", help="datasets to read activations from, comma-separated")
            yield Field("Components", Input(str(build.components), id="tpl-components", compact=True),
                        key="template.components")
            yield Field("Samples", Input(str(build.samples), id="tpl-samples", compact=True),
                        key="template.samples", help="rows read from each dataset")
            yield Field("Max tokens", Input(str(build.max_length), id="tpl-max-length", compact=True),
                        key="template.max_length")
            yield Field("ICA runs", Input(str(build.runs), id="tpl-runs", compact=True), key="template.runs",
                        help="more runs give a steadier stability score")
            yield Field("Site", Select([("mlp.out (MLP output channels)", "mlp.out"),
                                        ("mlp.hidden (intermediate neurons)", "mlp.hidden")],
                                       value=build.site, allow_blank=False, id="tpl-site", compact=True),
                        key="template.site")
            yield Field("Layers", Input(build.layers or "", id="tpl-layers", compact=True, placeholder="all"),
                        key="template.layers", help="for example 0:4,9: (empty: every layer)")
            yield Static("", id="tpl-estimate", markup=False)
        with Vertical(id="load-settings"):
            yield Field("Template file", Input(section.path if section and section.path else "", id="tpl-path",
                                               compact=True, suggester=PathSuggester(suffixes=(".json",))),
                        key="template.path", help="→ completes the name")
        yield ProgressPane(idle="", id="tpl-progress")
        yield Button("Cancel build (esc)", id="cancel-build", compact=True)
        yield Static("", id="tpl-status", markup=False)
        yield Static("", id="tpl-components-table")

    def load(self) -> None:
        self.query_one("#template-mode", RadioSet).focus()
        self.query_one("#cancel-build").display = False
        self._show_mode()
        session = self.app.session
        recipe, _ = self.check()
        if session.template is not None and recipe is not None and session.template_key == self.key(recipe):
            self._show_template(session.template, session.template_warnings)
        elif recipe is not None and self.recipe.template is not None and self.recipe.template.path:
            self.building.start(recipe, existing=self.recipe.template.path)
        else:
            self._estimate_soon(delay=0.0)

    # ---- the build's time estimate ------------------------------------------------------------
    def _estimate_soon(self, delay: float = 0.8) -> None:
        """Estimate the build time once the settings stop changing (timed on the loaded model)."""
        if self._estimate_timer is not None:
            self._estimate_timer.stop()
        if self._mode() != "build" or self.building.running is not None:
            return
        self._estimate_timer = self.set_timer(delay, self._estimate_now) if delay else None
        if not delay:
            self._estimate_now()

    def _estimate_now(self) -> None:
        self._estimate_timer = None
        recipe, errors = self.check()
        line = self.query_one("#tpl-estimate", Static)
        if recipe is None or recipe.template is None or errors:
            line.update("")
            return
        line.update("Build time: measuring this machine's speed…")
        self.estimating.set()
        self.estimating = threading.Event()
        self.estimate_build(recipe, self.estimating)

    @work(thread=True, exclusive=True, exit_on_error=False, group="estimate")
    def estimate_build(self, recipe: Recipe, cancel: threading.Event) -> None:
        estimate = self.app.engine.template_time(recipe, cancel=cancel)
        self.app.call_from_thread(self._estimated, estimate, cancel)

    def _estimated(self, estimate: Any, cancel: threading.Event) -> None:
        if not cancel.is_set():
            self.query_one("#tpl-estimate", Static).update(f"Build time on this machine: {estimate.describe()}")

    def _mode(self) -> str:
        return Form(self).raw("template-mode") or "build"

    def _show_mode(self) -> None:
        mode = self._mode()
        self.query_one("#build-settings").display = mode == "build"
        self.query_one("#load-settings").display = mode == "load"
        self.query_one("#tpl-progress").display = mode == "build"

    def edited(self, control: Widget) -> None:
        if control.id == "template-mode":
            self._show_mode()
        self._estimate_soon()
        ready = self.app.session.template_key
        recipe, _ = self.check()
        if recipe is None or self.key(recipe) != ready:
            self.query_one("#tpl-components-table", Static).update("")
            self.query_one("#tpl-status", Static).update("")

    # ---- recipe changes ---------------------------------------------------------------------
    def key(self, recipe: Recipe) -> str | None:
        """What the current template must have been made from (None without a template)."""
        section = recipe.template
        if section is None:
            return None
        settings = section.model_dump(mode="json", exclude={"path"}) if self._mode() == "build" else section.path
        return json.dumps([self._mode(), settings, recipe.seed, recipe.model.model_dump(mode="json")], sort_keys=True)

    def changes(self, form: Form) -> dict[str, Any]:
        mode = form.raw("template-mode") or "build"
        if mode == "none":
            return {"template": None, "mask.preset": "none", "mask.components": []}
        if mode == "load":
            path = form.text("tpl-path", required="enter the template file to load")
            if path and not Path(path).expanduser().is_file():
                form.fail("tpl-path", f"no such file: {path}")
            return {"template": {"path": path}}
        data = [d.strip() for d in (form.text("tpl-data") or "").split(",") if d.strip()]
        if not data:
            form.fail("tpl-data", "enter at least one dataset, for example builtin:text")
        section = {
            "data": data,
            "components": form.integer("tpl-components", minimum=1),
            "samples": form.integer("tpl-samples", minimum=1),
            "max_length": form.integer("tpl-max-length", minimum=1),
            "runs": form.integer("tpl-runs", minimum=1),
            "site": form.raw("tpl-site"),
            "layers": form.text("tpl-layers"),
        }
        return {"template": section}

    def check(self) -> tuple[Recipe | None, dict[str, str]]:
        recipe, errors = super().check()
        # A template built (or loaded) for exactly these settings goes into the recipe by path.
        session = self.app.session
        if recipe is not None and self._mode() == "build" and session.template_key == self.key(recipe):
            recipe = recipe.replace(**{"template.path": self.app.draft.choices.template_path})
        return recipe, errors

    def known_problems(self, recipe: Recipe) -> dict[str, str]:
        return self.building.problems(recipe)

    # ---- building and loading ---------------------------------------------------------------
    async def before_next(self, recipe: Recipe) -> Recipe | None:
        if recipe.template is None:
            self.app.session.template = None
            self.app.draft.choices.template_mode = "none"
            return recipe
        if self.building.running is not None and self.building.passed() != self.key(recipe):
            return None  # the build under way answers first
        # The template is shown when it is ready, so Next is pressed again to go on.
        recipe = self.building.before_next(recipe, advance=False)
        if recipe is not None:
            self.app.draft.choices.template_mode = self._mode()
        return recipe

    def start(self, recipe: Recipe, existing: str | None = None) -> None:
        self.estimating.set()  # the build needs the cores
        self.cancel = threading.Event()
        mode = "load" if existing or self._mode() == "load" else "build"
        self.query_one("#tpl-status", Static).update("Loading the template…" if mode == "load" else "")
        if mode == "build":
            self.query_one("#cancel-build").display = True
            self.query_one(ProgressPane).reset("loading the model…")
        self.refresh_bindings()
        self.make_template(recipe, existing or (recipe.template.path if mode == "load" else None))

    @work(thread=True, exclusive=True, exit_on_error=False, group="template")
    def make_template(self, recipe: Recipe, path: str | None) -> None:
        engine = self.app.engine
        sink = MessageSink(self)
        key = self.key(recipe)
        info = self.app.session.model.info if self.app.session.model is not None else None
        if path is not None:
            template, warnings = engine.load_template(path, info)
            self.post_message(TemplateReady(template, Path(path), list(warnings), key))
            return
        loaded = engine.load_model(recipe.model, sink=sink, cancel=self.cancel)
        section = recipe.template
        template, saved = engine.build_template(loaded, section, section.data, seed=recipe.seed, sink=sink,
                                                cancel=self.cancel)
        self.post_message(TemplateReady(template, saved, list(template.warnings), key))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel":
            return self.building.running is not None
        return super().check_action(action, parameters)

    def action_cancel(self) -> None:
        if self.building.running is not None:
            self.cancel.set()
            self.query_one("#tpl-status", Static).update("Cancelling at the next step…")

    @on(Button.Pressed, "#cancel-build")
    def _cancel_pressed(self) -> None:
        self.action_cancel()

    @on(EngineEvent)
    def _progress(self, message: EngineEvent) -> None:
        event = message.event
        if isinstance(event, Log):
            self.query_one("#tpl-status", Static).update(event.message)
        else:
            self.query_one(ProgressPane).show(event)

    @on(TemplateReady)
    def _ready(self, message: TemplateReady) -> None:
        self.building.running = None
        self.refresh_bindings()
        self.query_one("#cancel-build").display = False
        template, path, warnings = message.template, message.path, message.warnings
        session = self.app.session
        session.template, session.template_key, session.template_warnings = template, message.key, tuple(warnings)
        self.app.draft.choices.template_path = str(path)
        self._show_template(template, warnings)
        self.validate()

    def _show_template(self, template: Any, warnings: tuple[str, ...] | list[str]) -> None:
        path = (self.app.draft.choices.template_path or "")
        scored = [c.stability for c in template.components if c.stability is not None]
        stable = f"; {sum(s >= 0.8 for s in scored)} with stability ≥ 0.8" if scored else ""
        lines = [f"✓ {len(template.components)} components in {path}{stable}. Next: pick networks."]
        lines += [f"! {w}" for w in warnings]
        self.query_one("#tpl-status", Static).update("\n".join(lines))
        table = self.query_one("#tpl-components-table", Static)
        table.update(components_table(template))
        self.call_after_refresh(table.scroll_visible, animate=False)

    def work_failed(self, group: str, error: BaseException) -> bool:
        if group == "estimate":
            if not isinstance(error, CancelledError):
                self.query_one("#tpl-estimate", Static).update(f"Build time: not available ({describe_error(error)})")
            return True
        if group != "template":
            return False
        shown = self.building.owns(group, error) and not isinstance(error, (CancelledError, ModelError))
        if shown:
            self.query_one("#tpl-status", Static).update("")
            self.building.failed("tpl-path" if self._mode() == "load" else "", describe_error(error))
        self.building.running = None
        self.refresh_bindings()
        self.query_one("#cancel-build").display = False
        if isinstance(error, CancelledError):
            self.query_one(ProgressPane).reset("build cancelled")
            self.query_one("#tpl-status", Static).update("Cancelled. Next starts the build again.")
            return True
        return shown

    def on_unmount(self) -> None:
        self.cancel.set()
        self.estimating.set()
