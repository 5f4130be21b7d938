"""The template browser (``fntui browse TEMPLATE``, or from the wizard) and the compare view."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from fnapi.errors import FnapiError
from fntui.widgets.template_view import TemplateView


def _iou_style(value: float) -> str:
    return "bold green" if value >= 0.5 else "green" if value >= 0.2 else "dim"


class BrowserScreen(Screen):
    """Browse one template; ``c`` compares it with another. ``standalone`` when it is the whole app."""

    BINDINGS = [
        Binding("c", "compare", "Compare"),
        Binding("escape", "close", "Back"),
    ]

    def __init__(self, path: Path, *, compare: Path | None = None, standalone: bool = False) -> None:
        super().__init__()
        self.path = Path(path)
        self.compare_path = compare
        self.standalone = standalone
        self.template: Any = None
        self.problem: str | None = None

    def compose(self) -> ComposeResult:
        yield Static(f"Template browser · {self.path}", id="step-title", markup=False)
        try:
            self.template, _ = self.app.engine.load_template(self.path)
        except FnapiError as exc:
            self.problem = exc.message
            yield Static(exc.message + "\n\nesc goes back, ctrl+q quits.", id="banner", markup=False)
        else:
            yield TemplateView(self.template, title=str(self.path), id="browser-view")
        yield Footer()

    def on_mount(self) -> None:
        if self.compare_path is not None and self.template is not None:
            self.call_after_refresh(self._open_compare, self.compare_path)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "compare":
            return self.template is not None
        if action == "close":
            return not self.standalone
        return True

    def action_close(self) -> None:
        self.dismiss()

    def action_compare(self) -> None:
        from fntui.screens.prompt import PathPrompt

        def chosen(path: str | None) -> None:
            if path:
                self._open_compare(Path(path))

        self.app.push_screen(PathPrompt("Compare with which template?", suffixes=(".json",)), chosen)

    def _open_compare(self, other: Path) -> None:
        try:
            template, _ = self.app.engine.load_template(other)
            comparison = self.app.engine.compare_templates(self.template, template)
        except FnapiError as exc:
            self.app.notify(exc.message, severity="error", timeout=8)
            return
        self.app.push_screen(CompareScreen(self.path, other, comparison))


class CompareScreen(Screen):
    """IoU between every component of template A (rows) and of template B (columns)."""

    BINDINGS = [Binding("escape", "close", "Back")]

    def __init__(self, path_a: Path, path_b: Path, comparison: Any) -> None:
        super().__init__()
        self.path_a, self.path_b, self.comparison = path_a, path_b, comparison

    def compose(self) -> ComposeResult:
        c = self.comparison
        yield Static(f"Compare · A {self.path_a} · B {self.path_b}", id="step-title", markup=False)
        best = ", ".join(f"#{m['component']}→#{m['match']} {m['iou']:.2f}" for m in c.best_matches)
        summary = Text.assemble(("mean best IoU ", "bold"), f"{c.mean_best_iou:.3f}", "  ·  best matches: ", best)
        for warning in c.warnings:
            summary.append(f"\n! {warning}", style="yellow")
        yield Static(summary, id="compare-summary")
        yield DataTable(id="iou-table", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        c = self.comparison
        table.add_column("A \\ B", key="a")
        for j in c.ids_b:
            table.add_column(f"#{j}", key=str(j))
        for i, row in zip(c.ids_a, c.iou):
            best = max(row) if row else 0.0
            cells = [Text(f"{v:.2f}", style=_iou_style(v) + (" reverse" if v == best and v > 0 else "")) for v in row]
            table.add_row(f"#{i}", *cells)
        table.focus()

    def action_close(self) -> None:
        self.dismiss()
