"""The recipe preview: one key (ctrl+r) from anywhere in the wizard."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Static

from fnapi.recipe import Recipe
from fntui.widgets.recipe_preview import RecipePreview


class RecipePreviewScreen(ModalScreen[None]):
    """Shows the recipe as this step would save it; escape (or ctrl+r again) closes it."""

    BINDINGS = [Binding("escape", "close", "Close")]

    def __init__(self, recipe: Recipe, draft_id: str) -> None:
        super().__init__()
        self.recipe = recipe
        self.draft_id = draft_id

    def compose(self) -> ComposeResult:
        with Vertical(id="recipe-dialog", classes="dialog"):
            yield Static(f"Recipe so far · draft {self.draft_id} · saved after every step", classes="dialog-title",
                         markup=False)
            with VerticalScroll():
                yield RecipePreview(self.recipe, id="recipe-yaml")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(VerticalScroll).focus()  # arrows and page keys scroll the recipe

    def action_close(self) -> None:
        self.dismiss(None)
