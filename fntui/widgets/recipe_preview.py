"""The draft recipe as YAML, exactly as it would be saved."""

from __future__ import annotations

from rich.syntax import Syntax
from textual.widgets import Static

from fnapi.recipe import Recipe


class RecipePreview(Static):
    """Shows ``recipe.to_yaml_text()`` with YAML highlighting."""

    def __init__(self, recipe: Recipe, **kwargs) -> None:
        super().__init__(**kwargs)
        self.show(recipe)

    def show(self, recipe: Recipe) -> None:
        self.yaml_text = recipe.to_yaml_text()
        self.update(Syntax(self.yaml_text, "yaml", theme="ansi_dark", background_color="default", word_wrap=True))
