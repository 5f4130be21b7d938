"""Step 1: start a new run, open a recipe file to walk through, or browse a template."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual.app import ComposeResult
from textual.widget import Widget
from textual.widgets import Input, RadioButton, RadioSet, Static

from fnapi.errors import RecipeError
from fnapi.recipe import Recipe
from fntui.screens.base import Form, StepScreen
from fntui.widgets.fields import Field, PathSuggester


class WelcomeScreen(StepScreen):
    STEP = "welcome"
    TITLE = "Fine-tune a model with functional-network masks"
    HINT = ("Each step edits one recipe, saved as you go (ctrl+r shows it; fntui --resume reopens it). "
            "The finished recipe replays headless with fntui replay or fnapi run.")

    def __init__(self) -> None:
        super().__init__()
        self.opened: Recipe | None = None

    def compose_body(self) -> ComposeResult:
        with RadioSet(id="start"):
            yield RadioButton("Start a new run", name="new", value=True)
            yield RadioButton("Open a recipe file", name="open")
            yield RadioButton("Browse a template", name="browse")
        yield Field("Recipe file", Input(id="recipe-file", compact=True, placeholder="recipes/quickstart.yaml",
                                         suggester=PathSuggester(suffixes=(".yaml", ".yml"))),
                    help="→ completes the name; its settings fill every step", id="recipe-file-field")
        yield Field("Template file", Input(id="template-file", compact=True, placeholder="ica_templates/…/….json",
                                           suggester=PathSuggester(suffixes=(".json",))),
                    help="→ completes the name; the browser opens on Next", id="template-file-field")
        yield Static("Keys: tab moves between fields, ctrl+n is Next, ctrl+b is Back, ctrl+p opens the "
                     "command palette, ctrl+q quits (the draft is kept).", classes="note", markup=False)

    def load(self) -> None:
        self.query_one("#start", RadioSet).focus()
        self._show_fields("new")

    def _show_fields(self, choice: str | None) -> None:
        self.query_one("#recipe-file-field").display = choice == "open"
        self.query_one("#template-file-field").display = choice == "browse"

    def edited(self, control: Widget) -> None:
        if control.id == "start":
            self._show_fields(Form(self).raw("start"))

    def changes(self, form: Form) -> dict[str, Any]:
        choice = form.raw("start")
        self.opened = None
        if choice == "open":
            path = form.text("recipe-file", required="enter the recipe file to open")
            if path:
                try:
                    self.opened = Recipe.from_yaml(Path(path).expanduser())
                except RecipeError as exc:
                    form.fail("recipe-file", exc.message)
        elif choice == "browse":
            path = form.text("template-file", required="enter the template file to browse")
            if path and not Path(path).expanduser().is_file():
                form.fail("template-file", f"no such file: {path}")
        return {}

    async def before_next(self, recipe: Recipe) -> Recipe | None:
        choice = Form(self).raw("start")
        if choice == "browse":
            from fntui.screens.browser import BrowserScreen

            self.app.push_screen(BrowserScreen(Path(self.query_one("#template-file", Input).value.strip())))
            return None
        if choice == "open" and self.opened is not None:
            self.choices.recipe_path = self.query_one("#recipe-file", Input).value.strip()
            return self.opened
        return recipe
