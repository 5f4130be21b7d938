"""A small dialog asking for a file path, checked before it closes."""

from __future__ import annotations

from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from fntui.widgets.fields import Field, PathSuggester


class PathPrompt(ModalScreen[str | None]):
    """Ask for an existing file; returns the path typed, or None on escape."""

    BINDINGS = [Binding("escape", "close", "Cancel")]

    def __init__(self, title: str, *, suffixes: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.title_text = title
        self.suffixes = suffixes

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog prompt-dialog"):
            yield Static(self.title_text, classes="dialog-title", markup=False)
            yield Field("Path", Input(id="prompt-path", compact=True, suggester=PathSuggester(suffixes=self.suffixes)),
                        help="→ completes the name · enter opens · esc cancels")

    @on(Input.Submitted, "#prompt-path")
    def _submitted(self, event: Input.Submitted) -> None:
        value = event.value.strip()
        field = self.query_one(Field)
        if not value:
            field.set_error("enter a path")
        elif not Path(value).expanduser().is_file():
            field.set_error(f"no such file: {value}")
        else:
            self.dismiss(value)

    def action_close(self) -> None:
        self.dismiss(None)
