"""Form pieces: a labelled field with its error shown inline, and file path completion."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.suggester import Suggester
from textual.widget import Widget
from textual.widgets import Label, Static


class Field(Vertical):
    """A label and a control on one row, an optional help line, and an error line under them.

    ``key`` is the recipe path the control edits (``train.steps``), so a recipe validation error
    naming that path lands next to this field.
    """

    def __init__(self, label: str, control: Widget, *, key: str | None = None, help: str | None = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.label = label
        self.control = control
        self.key = key
        self.help = help
        self.error: str | None = None

    def compose(self) -> ComposeResult:
        with Horizontal(classes="field-row"):
            yield Label(self.label, classes="field-label")
            yield self.control
        if self.help:
            yield Static(self.help, classes="field-help", markup=False)
        yield Static("", classes="field-error", markup=False)

    def set_error(self, message: str | None) -> None:
        """Show ``message`` under the control (None clears it)."""
        self.error = message
        error = self.query_one(".field-error", Static)
        error.update(f"✗ {message}" if message else "")
        self.set_class(bool(message), "-has-error")
        self.control.set_class(bool(message), "-invalid")


class PathSuggester(Suggester):
    """Completes file and folder names as you type (accept with →); ``extra`` values such as
    ``builtin:skill`` are offered too. Relative paths start at ``base``."""

    def __init__(self, *, base: Path | None = None, extra: Iterable[str] = (), suffixes: Iterable[str] = ()) -> None:
        super().__init__(use_cache=False, case_sensitive=True)
        self.base = base
        self.extra = tuple(extra)
        self.suffixes = tuple(s.lower() for s in suffixes)

    async def get_suggestion(self, value: str) -> str | None:
        if not value:
            return None
        for candidate in self.extra:
            if candidate.startswith(value) and candidate != value:
                return candidate
        return self.complete(value)

    def complete(self, value: str) -> str | None:
        """The first entry of the folder ``value`` points into that extends ``value``."""
        typed = Path(value).expanduser()
        folder, prefix = (typed, "") if value.endswith("/") else (typed.parent, typed.name)
        root = folder if folder.is_absolute() or self.base is None else self.base / folder
        try:
            entries = sorted(root.iterdir(), key=lambda p: p.name)
        except OSError:
            return None
        for entry in entries:
            name = entry.name
            if not name.startswith(prefix) or (name.startswith(".") and not prefix.startswith(".")):
                continue
            is_dir = entry.is_dir()
            if not is_dir and self.suffixes and entry.suffix.lower() not in self.suffixes:
                continue
            completion = name[len(prefix):] + ("/" if is_dir else "")
            if completion:
                return value + completion
        return None
